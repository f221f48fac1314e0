"""`diagnose views`: the semantic-shift numbers against loops over single images, and the CLI round trip."""
import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from sharpshift.errors import UserError
from sharpshift.diagnostics import semantic_shift as D


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def tiny_reference(seed=0):
    torch.manual_seed(seed)
    model = D.ReferenceClassifier("convnet", 1, 4, 10).eval()
    model.arch.update(mean=[0.3], std=[0.3])
    return model


def normalise(x):
    return (x.float() / 255 - 0.3) / 0.3


def test_clean_rows_are_the_classifiers_error_and_match_a_loop():
    model = tiny_reference()
    images = (torch.rand(50, 1, 8, 8) * 255).to(torch.uint8)
    labels = torch.randint(0, 10, (50,))
    r = D.semantic_shift(model, images, labels, None, batch_size=16)
    with torch.no_grad():
        wrong = sum(int(model(normalise(images[i:i + 1]))[1].argmax(1) != labels[i]) for i in range(50))
    assert r["shift_rate"] == pytest.approx(wrong / 50) and r["flip_rate"] == 0 and r["clean_distance"] < 1e-6


def test_shift_numbers_match_a_per_image_loop():
    model = tiny_reference(1)
    images = (torch.rand(30, 1, 8, 8) * 255).to(torch.uint8)
    labels = torch.randint(0, 10, (30,))
    views = lambda x: [normalise(x.flip(-1)), normalise(x)]  # noqa: E731  (view 2 is the clean image)
    r = D.semantic_shift(model, images, labels, views, repeats=2, batch_size=7)
    shifted = flipped = kept = 0
    dist = 0.0
    with torch.no_grad():
        for i in range(30):
            f_c, l_c = model(normalise(images[i:i + 1]))
            f_v, l_v = model(normalise(images[i:i + 1].flip(-1)))
            shifted += int(l_v.argmax() != labels[i]) + int(l_c.argmax() != labels[i])
            kept += int(l_v.argmax() == labels[i] and l_c.argmax() == labels[i])  # both views keep the label
            flipped += int(l_v.argmax() != l_c.argmax())
            dist += float(1 - F.cosine_similarity(f_v, f_c))
    assert r["views"] == 2 * 2 * 30
    assert r["shift_rate"] == pytest.approx(shifted / 60) and r["flip_rate"] == pytest.approx(flipped / 60)
    assert r["view_distance"] == pytest.approx(dist / 30, abs=1e-5)
    assert r["pair_kept_rate"] == pytest.approx(kept / 30) and 0 < kept < 30  # same draws on both repeats
    assert r["clean_distance"] == pytest.approx(dist / 60, abs=1e-5)


def test_recipes_differ_as_named():
    from tests.conftest import tiny_config

    cfg = tiny_config("simclr")
    weak = D.recipe_views(cfg, "weak", "symmetric", 8, [0.3], [0.3])
    aggressive = D.recipe_views(cfg, "aggressive", "symmetric", 8, [0.3], [0.3], fourier_p=1.0)
    assert weak.params[0].jitter_p == 0 and weak.params[0].blur_p == 0
    assert aggressive.params[0].crop_scale == (0.08, 1.0) and aggressive.params[1].blur_p == 1.0
    assert aggressive.fourier.views == [0, 1] and aggressive.fourier.p == 1.0


def test_cli_trains_saves_then_loads_the_reference(tmp_path):
    from sharpshift.cli import app

    ref, out = tmp_path / "ref", tmp_path / "shift.json"
    args = ["diagnose", "views", "simclr", "data.dataset=digits", "model.width=4", "data.test_subset=60",
            "trainer.num_threads=1", "--epochs", "1", "--reference", str(ref), "--out", str(out)]
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    assert "| aggressive | mix a=1 p=1 |" in first.output and (ref / D.WEIGHTS).is_file()
    second = CliRunner().invoke(app, args)
    assert second.exit_code == 0 and "loaded from" in second.output
    import json

    rows = json.loads(out.read_text())["rows"]
    assert len(rows) == 7 and all(0 <= r["shift_rate"] <= 1 for r in rows)


def test_missing_reference_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no reference classifier"):
        D.load_reference(tmp_path)
