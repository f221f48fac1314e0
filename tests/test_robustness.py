"""Corruptions, FGSM/PGD and the robustness evaluation, checked against formulas and invariants."""
import colorsys
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter

from sharpshift.errors import UserError
from sharpshift.evaluation.adversarial import ProbedBackbone, attack_accuracy, fgsm, pgd
from sharpshift.evaluation.corruptions import CORRUPTIONS, corrupt
from sharpshift.evaluation.features import extract_features
from sharpshift.evaluation.linear import linear_probe
from sharpshift.evaluation.robustness import corruption_errors, robustness_run
from sharpshift.config.robustness import CORRUPTION_NAMES
from sharpshift.export import export_backbone
from sharpshift.models import backbone_arch, build_backbone
from sharpshift.config import to_yaml
from tests.conftest import tiny_config

RANDOM = {"gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise", "motion_blur", "fog", "frost",
          "elastic_transform"}


def grey_images(n=16, size=28):
    """sklearn digits blown up to `size` px: real strokes on a black background, uint8 (n, 1, size, size)."""
    from sklearn.datasets import load_digits

    x = torch.tensor(load_digits().images[:n], dtype=torch.float32).unsqueeze(1) / 16
    return (F.interpolate(x, size=size, mode="bilinear") * 255).round().to(torch.uint8)


def colour_images(n=8, size=32):
    x = F.interpolate(torch.rand(n, 3, 5, 5, generator=torch.Generator().manual_seed(0)), size=size, mode="bicubic")
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)


def change(a, b):
    return (a.float() - b.float()).abs().mean().item()


# ---------------------------------------------------------------- corruptions


def test_registry_has_at_least_12_types_and_matches_the_config_names():
    assert tuple(CORRUPTIONS) == CORRUPTION_NAMES and len(CORRUPTIONS) >= 12
    assert all(len(c.levels) == 5 for c in CORRUPTIONS.values())


@pytest.mark.parametrize("name", CORRUPTION_NAMES)
@pytest.mark.parametrize("make", [grey_images, colour_images], ids=["grey28", "rgb32"])
def test_corruption_grows_with_severity_and_keeps_shape_dtype_range(name, make):
    x = make()
    outs = [corrupt(x, name, s, seed=0) for s in range(6)]
    for o in outs:
        assert o.shape == x.shape and o.dtype == torch.uint8
    d = [change(o, x) for o in outs]
    assert d[0] == 0 and 0 < d[1] < d[5], d
    assert all(d[i] <= d[i + 1] + 1e-9 for i in range(1, 5)), f"{name} not monotone: {d}"
    xf = x.float() / 255  # float input: same dtype back, inside [0, 1], and the same result up to rounding
    of = corrupt(xf, name, 3, seed=0)
    assert of.dtype == torch.float32 and of.shape == x.shape and 0 <= of.min() and of.max() <= 1
    assert (of * 255 - outs[3].float()).abs().max() <= 1.0 + 1e-4


@pytest.mark.parametrize("name", CORRUPTION_NAMES)
def test_corruption_is_deterministic_under_a_seed(name):
    x = grey_images(8)
    assert torch.equal(corrupt(x, name, 4, seed=3), corrupt(x, name, 4, seed=3))
    other = corrupt(x, name, 4, seed=4)
    if name in RANDOM:
        assert not torch.equal(corrupt(x, name, 4, seed=3), other)
        assert not torch.equal(corrupt(x, name, 4, seed=3, offset=8), corrupt(x, name, 4, seed=3))
    else:
        assert torch.equal(corrupt(x, name, 4, seed=3), other)


def test_formulas_against_slow_references():
    x = grey_images(4).float() / 255
    # contrast: (x - per-image, per-channel mean) * c + mean
    c = CORRUPTIONS["contrast"].levels[2]
    out = corrupt(x, "contrast", 3)
    for i in range(len(x)):
        m = x[i, 0].mean()
        assert torch.allclose(out[i, 0], ((x[i, 0] - m) * c + m).clamp(0, 1), atol=1e-6)
    # Gaussian blur: scipy's filter with edge replication; sigma scaled by 28/32
    sigma = CORRUPTIONS["gaussian_blur"].levels[4] * 28 / 32
    ref = np.stack([gaussian_filter(img[0].numpy(), sigma, mode="nearest", truncate=4) for img in x])
    assert np.abs(corrupt(x, "gaussian_blur", 5)[:, 0].numpy() - ref).max() < 1e-3
    # brightness on colour = HSV value + c, hue and saturation kept (colorsys, pixel by pixel)
    rgb = colour_images(2, 8).float() / 255
    c = CORRUPTIONS["brightness"].levels[4]
    out = corrupt(rgb, "brightness", 5)
    for i in range(2):
        for yx in [(0, 0), (3, 5), (7, 7)]:
            h, s, v = colorsys.rgb_to_hsv(*rgb[i, :, yx[0], yx[1]].tolist())
            want = colorsys.hsv_to_rgb(h, s, min(1.0, v + c))
            assert np.allclose(out[i, :, yx[0], yx[1]].numpy(), want, atol=1e-5)
    # pixelate at severity 3 (factor 0.5) is made of constant 2x2 blocks
    p = corrupt(x, "pixelate", 3)
    assert torch.equal(p[..., ::2, ::2], p[..., 1::2, ::2]) and torch.equal(p[..., ::2, ::2], p[..., ::2, 1::2])
    # impulse noise sets about `amount` of the values to 0 or 1
    mid = torch.full((64, 1, 28, 28), 0.5)
    share = ((corrupt(mid, "impulse_noise", 5) != 0.5).float().mean()).item()
    assert abs(share - CORRUPTIONS["impulse_noise"].levels[4]) < 0.005


def test_bad_inputs_raise():
    with pytest.raises(ValueError):
        corrupt(torch.zeros(2, 2, 8, 8), "fog", 1)
    with pytest.raises(ValueError):
        corrupt(torch.zeros(2, 1, 8, 8), "fogg", 1)
    with pytest.raises(ValueError):
        corrupt(torch.zeros(2, 1, 8, 8), "fog", 6)


# ---------------------------------------------------------------- attacks


@pytest.fixture(scope="module")
def probed():
    """A random-init width-8 ConvNet on digits with a linear probe fitted on its features (~75% top-1)."""
    from sklearn.datasets import load_digits

    torch.manual_seed(0)
    digits = load_digits()
    images = torch.tensor(digits.images * 255 / 16).round().to(torch.uint8).unsqueeze(1)
    labels = torch.tensor(digits.target)
    backbone = build_backbone("convnet", 1, 8, True).eval()
    feats = extract_features(backbone, images)
    probe = linear_probe(feats[:1400], labels[:1400], feats[1400:], labels[1400:], iterations=100)
    return backbone, probe, images[1400:1560], labels[1400:1560]


def test_probed_backbone_matches_the_evaluation_pipeline(probed):
    backbone, probe, x, _ = probed
    logits = ProbedBackbone(backbone, probe)(x.float() / 255)
    assert torch.allclose(logits, probe.logits(extract_features(backbone, x)), atol=1e-4)


def test_fgsm_at_zero_changes_nothing_and_matches_a_per_image_loop(probed):
    backbone, probe, x, y = probed
    model = ProbedBackbone(backbone, probe)
    xf = x.float() / 255
    assert torch.equal(fgsm(model, xf, y, 0.0), xf)
    res = attack_accuracy(model, x, y, [0.0], steps=3)
    assert res["fgsm_top1"] == [res["clean_top1"]] == [res["pgd_top1"][0]]
    eps = 4 / 255
    batched = fgsm(model, xf[:6], y[:6], eps)
    for i in range(6):  # eval-mode BatchNorm: each image's gradient is its own
        xi = xf[i : i + 1].clone().requires_grad_(True)
        F.cross_entropy(model(xi), y[i : i + 1]).backward()
        assert torch.allclose(batched[i], (xf[i] + eps * xi.grad[0].sign()).clamp(0, 1))


def test_pgd_stays_in_the_ball_and_lowers_accuracy(probed):
    backbone, probe, x, y = probed
    model = ProbedBackbone(backbone, probe)
    xf = x.float() / 255
    for eps in (2 / 255, 8 / 255):
        adv = pgd(model, xf, y, eps, steps=5, generator=torch.Generator().manual_seed(0))
        assert (adv - xf).abs().max() <= eps + 1e-6 and adv.min() >= 0 and adv.max() <= 1
    res = attack_accuracy(model, x, y, [2.0, 8.0], steps=5, seed=0)
    assert res["clean_top1"] > 0.6  # far above chance (0.1), so a drop means something
    assert res["pgd_top1"][1] < res["clean_top1"] - 0.1
    assert res["pgd_top1"][1] <= res["pgd_top1"][0] + 1e-9  # a larger ball can only help the attacker here
    assert res["pgd_top1"][1] <= res["fgsm_top1"][1] + 0.02  # many steps beat one
    assert attack_accuracy(model, x[:32], y[:32], [8.0], steps=3) == attack_accuracy(model, x[:32], y[:32], [8.0], steps=3)


# ---------------------------------------------------------------- the run-level evaluation


def test_corruption_errors_follow_the_formula():
    run = {"clean_top1": 0.9, "severities": [1, 2],
           "corruptions": {"a": {"top1": [0.8, 0.6]}, "b": {"top1": [0.9, 0.9]}}}
    ref = {"clean_top1": 0.8, "severities": [1, 2],
           "corruptions": {"a": {"top1": [0.6, 0.4]}, "b": {"top1": [0.8, 0.8]}}}
    out = corruption_errors(run, ref)
    assert out["ce"]["a"] == pytest.approx((0.2 + 0.4) / (0.4 + 0.6))
    assert out["ce"]["b"] == pytest.approx(0.2 / 0.4)
    assert out["mce"] == pytest.approx((0.6 + 0.5) / 2)
    assert out["relative_ce"]["a"] == pytest.approx((0.1 + 0.3) / (0.2 + 0.4))
    assert out["relative_ce"]["b"] is None  # the reference loses nothing under b
    assert out["relative_mce"] == pytest.approx(out["relative_ce"]["a"])
    with pytest.raises(UserError):
        corruption_errors(run, {**ref, "severities": [1, 2, 3]})


def make_run_folder(path, *overrides):
    """A run folder without training: a random-init backbone exported next to a tiny config."""
    cfg = tiny_config("simclr", "eval.linear_max_iter=30", *overrides, out_dir=str(path.parent))
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(to_yaml(cfg))
    torch.manual_seed(0)
    arch = backbone_arch("convnet", 1, 8, True)
    arch.update(mean=[0.3], std=[0.38], image_size=8, method="simclr", dataset="digits")
    export_backbone(build_backbone("convnet", 1, 8, True), arch, path)
    return path


def test_robustness_run_writes_consistent_json_and_cli(tmp_path):
    from typer.testing import CliRunner

    from sharpshift.cli import app

    run = make_run_folder(tmp_path / "run")
    args = ["robustness.corruptions=[contrast,gaussian_noise]", "robustness.severities=[1,5]",
            "robustness.epsilons=[0,8]", "robustness.adversarial_subset=64", "robustness.pgd_steps=3"]
    res = robustness_run(run, args)
    saved = json.loads((run / "robustness.json").read_text())
    assert saved["corruptions"].keys() == {"contrast", "gaussian_noise"} and saved["severities"] == [1, 5]
    allacc = [a for c in saved["corruptions"].values() for a in c["top1"]]
    assert saved["mean_corruption_top1"] == pytest.approx(np.mean(allacc))
    assert all(0 <= a <= 1 for a in allacc) and all(-1 <= c <= 1 + 1e-6 for v in saved["corruptions"].values()
                                                     for c in v["cosine"])
    assert res["corruptions"]["contrast"]["top1"][1] < res["clean_top1"]  # contrast 0.15 hurts
    adv = saved["adversarial"]
    assert adv["size"] == 64 and adv["fgsm_top1"][0] == adv["clean_top1"] == adv["pgd_top1"][0]

    # the CLI: standard evaluation, then the same measurement against the first result as the reference
    r = CliRunner().invoke(app, ["evaluate", str(run), "--robustness", *args, "--reference", str(run)])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout.strip().splitlines()[-1])["mce"] == pytest.approx(1.0)  # same run, same numbers
    again = json.loads((run / "robustness.json").read_text())
    assert again["corruptions"] == saved["corruptions"]  # deterministic end to end
    # the clean accuracy is the standard evaluation's linear probe, on the same test split
    assert json.loads((run / "eval.json").read_text())["linear_top1"] == pytest.approx(res["clean_top1"], abs=1e-6)

    bad = CliRunner().invoke(app, ["evaluate", str(run), "robustness.pgd_steps=2"])
    assert bad.exit_code != 0 and "--robustness" in str(bad.exception)
    with pytest.raises(UserError, match="robustness.severities"):
        robustness_run(run, ["robustness.severities=[7]"])
    with pytest.raises(UserError, match="only robustness"):
        robustness_run(run, ["optim.lr=0.1"])
    with pytest.raises(UserError, match="no robustness.json"):
        robustness_run(run, args, reference=tmp_path)
