"""Discriminability metrics against known geometry, and the supervised reference as a run folder."""
import json
import math

import pytest
import torch

from sharpshift.diagnostics.discriminability import alignment, class_geometry, uniformity
from tests.conftest import tiny_config


def test_metrics_recover_known_variances_and_distances_of_gaussian_classes():
    g = torch.Generator().manual_seed(0)
    d, n, sigma = 8, 4000, 0.3
    centres = torch.stack([torch.zeros(d), torch.zeros(d), torch.zeros(d)])
    centres[1, 0], centres[2, 1] = 3.0, 4.0  # pairwise centre distances 3, 4, 5
    y = torch.arange(3).repeat_interleave(n)
    x = centres[y] + sigma * torch.randn(3 * n, d, generator=g)
    r = class_geometry(x, y, normalize=False)
    assert r["intra_class_variance"] == pytest.approx(d * sigma**2, rel=0.03)  # E||x - mu||^2 = d sigma^2
    assert r["inter_class_distance"] == pytest.approx((3 + 4 + 5) / 3, rel=0.01)
    assert r["min_inter_class_distance"] == pytest.approx(3.0, rel=0.01)
    assert r["variance_ratio"] == pytest.approx(d * sigma**2 / ((9 + 16 + 25) / 3), rel=0.03)
    assert r["crowding"] < 0.01  # 3 / (2 * 0.3) = 5 sigma apart: nobody is nearer another centroid
    far = class_geometry(centres[y] * 0.05 + sigma * torch.randn(3 * n, d, generator=g), y, normalize=False)
    assert far["crowding"] > 0.3  # the same classes squeezed together crowd


def test_crowding_and_variance_on_a_hand_example():
    # class 0 at 0, 0, 3 (centroid 1); class 1 at 4, 4, 4 (centroid 4): the sample at 3 is nearer to 4
    x = torch.tensor([[0.0], [0.0], [3.0], [4.0], [4.0], [4.0]])
    y = torch.tensor([0, 0, 0, 1, 1, 1])
    r = class_geometry(x, y, normalize=False)
    assert r["crowding"] == pytest.approx(1 / 6)
    assert r["per_class_variance"] == pytest.approx([(1 + 1 + 4) / 3, 0.0])
    assert r["inter_class_distance"] == pytest.approx(3.0)
    assert r["variance_ratio"] == pytest.approx(((6 / 3) / 2) / 9)


def test_alignment_and_uniformity_against_formulas():
    f1 = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    f2 = torch.tensor([[0.0, 1.0], [0.0, 5.0]])
    assert alignment(f1, f2) == pytest.approx((2.0 + 0.0) / 2)  # ||e1 - e2||^2 = 2, identical directions 0
    f = torch.randn(50, 3, generator=torch.Generator().manual_seed(1))
    fn = torch.nn.functional.normalize(f, dim=1)
    terms = [math.exp(-2 * float((fn[i] - fn[j]).pow(2).sum())) for i in range(50) for j in range(50) if i != j]
    assert uniformity(f, chunk=7) == pytest.approx(math.log(sum(terms) / len(terms)), rel=1e-5)


def test_supervised_run_folder_works_with_evaluate_and_diagnose(tmp_path):
    from sharpshift.diagnostics.discriminability import diagnose_run
    from sharpshift.export import load_backbone
    from sharpshift.supervised import train_supervised

    cfg = tiny_config("simclr", "trainer.max_steps=6", "eval.after_training=true", "eval.linear_max_iter=20",
                      out_dir=str(tmp_path))
    run = train_supervised(cfg)
    assert run.name.startswith("run-supervised-")
    for name in ("config.yaml", "backbone.safetensors", "backbone.json", "train.json", "eval.json"):
        assert (run / name).is_file(), name
    assert load_backbone(run).arch["method"] == "supervised"
    ev = json.loads((run / "eval.json").read_text())
    assert ev["linear_top1"] > 0.5  # ten digit classes after six labelled steps: well above chance
    result = diagnose_run(run, tsne_points=60)
    assert (run / "tsne.png").stat().st_size > 1000
    assert json.loads((run / "discriminability.json").read_text())["crowding"] == result["crowding"]
    assert 0 <= result["crowding"] <= 1 and result["alignment"] >= 0 and result["uniformity"] <= 0


def test_cli_registers_both_commands():
    from typer.testing import CliRunner

    from sharpshift.cli import app

    runner = CliRunner()
    r = runner.invoke(app, ["diagnose", "discriminability", "--help"])
    assert r.exit_code == 0 and "crowding" in r.output
    r = runner.invoke(app, ["supervised", "--help"])
    assert r.exit_code == 0 and "labels" in r.output
