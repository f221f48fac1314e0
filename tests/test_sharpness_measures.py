"""Sharpness measures against closed forms on quadratics, and `diagnose sharpness` end to end on a tiny run."""
import json
import math

import pytest
import torch

from sharpshift.diagnostics.sharpness_measures import (Objective, filter_normalized_direction, hessian_top_eigenvalue,
                                           hutchinson_trace, landscape_1d, landscape_2d, sam_sharpness)


def rotated(eigenvalues, seed=0):
    """A dense symmetric matrix with these eigenvalues."""
    g = torch.Generator().manual_seed(seed)
    n = len(eigenvalues)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    return q @ torch.diag(torch.tensor(eigenvalues, dtype=torch.float64)) @ q.T


def quadratic(a, seed=0):
    """L(x, y) = 1/2 [x y]^T A [x y] + b^T [x y] over two parameter tensors, as the mean of two closures."""
    g = torch.Generator().manual_seed(seed)
    n = a.shape[0]
    b = torch.randn(n, generator=g, dtype=torch.float64)
    x = torch.randn(n - 3, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randn(3, generator=g, dtype=torch.float64, requires_grad=True)

    def loss():
        v = torch.cat([x, y])
        return 0.5 * v @ a @ v + b @ v

    return Objective([loss, loss], [x, y]), a, b


def test_top_eigenvalue_of_a_known_hessian():
    obj, _, _ = quadratic(rotated([9.0, 4.0, 2.5, 1.0, 0.5, -0.3, 0.1, 2.0]))
    result = hessian_top_eigenvalue(obj, iters=200, tol=1e-6)
    assert result["value"] == pytest.approx(9.0, rel=0.01)
    assert result["iterations"] < 200  # it converged


def test_hutchinson_trace_of_a_known_hessian():
    # diagonal plus a small dense symmetric part: Hutchinson's variance is 2 sum_{i != j} A_ij^2
    g = torch.Generator().manual_seed(1)
    noise = torch.randn(8, 8, generator=g, dtype=torch.float64) * 0.03
    a = torch.diag(torch.tensor([9.0, 4.0, 2.5, 1.0, 0.5, -0.3, 0.1, 2.0], dtype=torch.float64)) + noise + noise.T
    obj, _, _ = quadratic(a, seed=1)
    result = hutchinson_trace(obj, samples=200, seed=0)
    assert result["value"] == pytest.approx(float(torch.trace(a)), rel=0.01)
    off = float((a**2).sum() - (torch.diag(a) ** 2).sum())
    assert result["stderr"] == pytest.approx(math.sqrt(2 * off / 200), rel=0.3)
    assert result["stderr"] < 0.0033 * abs(float(torch.trace(a)))  # so the 1% check is three standard errors wide


def test_sam_sharpness_of_a_quadratic():
    obj, a, b = quadratic(rotated([3.0, 2.0, 1.0, 0.5], seed=2), seed=2)
    v = torch.cat([p.detach() for p in obj.params])
    g = a @ v + b
    before = [p.detach().clone() for p in obj.params]
    result = sam_sharpness(obj, [0.01, 0.1])
    for rho, value in result.items():
        eps = rho * g / g.norm()
        assert value == pytest.approx(float(g @ eps + 0.5 * eps @ a @ eps), rel=1e-6)
    assert all(torch.equal(p, q) for p, q in zip(obj.params, before))  # restored exactly


def test_filter_normalised_direction():
    conv = torch.randn(4, 3, 3, 3)
    bias = torch.randn(4)
    d_conv, d_bias = filter_normalized_direction([conv, bias], torch.Generator().manual_seed(0))
    assert torch.allclose(d_conv.flatten(1).norm(dim=1), conv.flatten(1).norm(dim=1), rtol=1e-5)
    assert torch.equal(d_bias, torch.zeros(4))  # biases and norm layers are not moved


def test_landscapes_trace_the_quadratic():
    obj, a, b = quadratic(rotated([2.0, 1.0, 1.0, 0.5], seed=3), seed=3)
    d1 = [torch.ones_like(p) for p in obj.params]
    d2 = [torch.zeros_like(obj.params[0]), torch.ones_like(obj.params[1])]
    v = torch.cat([p.detach() for p in obj.params])
    u1, u2 = torch.cat(d1), torch.cat(d2)

    def f(w):
        return float(0.5 * w @ a @ w + b @ w)

    assert landscape_1d(obj, d1, [-1.0, 0.0, 0.5]) == pytest.approx([f(v - u1), f(v), f(v + 0.5 * u1)])
    grid = landscape_2d(obj, d1, d2, [0.0, 1.0], [-1.0, 2.0])
    assert grid[1][0] == pytest.approx(f(v + 2 * u2)) and grid[0][1] == pytest.approx(f(v + u1 - u2))


def test_diagnose_sharpness_on_a_tiny_run(tmp_path):
    from typer.testing import CliRunner

    from sharpshift.cli import app
    from sharpshift.diagnostics.sharpness import diagnose_sharpness
    from sharpshift.train import pretrain
    from tests.conftest import tiny_config

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_dir = pretrain(tiny_config("simclr", "sam.enabled=true", "trainer.max_steps=2", out_dir=str(tmp_path)))
        args = ["diagnose", "sharpness", str(run_dir), "--batches", "2", "--batch-size", "32", "--power-iters", "3",
                "--hutchinson", "2", "--points-1d", "3", "--points-2d", "3"]
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, result.output
        figures = json.loads((run_dir / "sharpness.json").read_text())
        # fixed batches and fixed views: a second call measures the same function at the same point
        again = diagnose_sharpness(run_dir, batches=2, batch_size=32, power_iters=1, hutchinson=1, landscapes=False)
    finally:
        torch.set_num_threads(threads)
    assert again["loss"] == pytest.approx(figures["loss"], rel=1e-6)
    assert again["sam_sharpness"] == pytest.approx(figures["sam_sharpness"], rel=1e-5)
    assert set(figures["sam_sharpness"]) == {"0.01", "0.05", "0.1"}
    assert figures["landscape_1d"]["losses"][1] == pytest.approx(figures["loss"], rel=1e-5)  # alpha = 0 is theta
    assert len(figures["landscape_2d"]["losses"]) == 3 and figures["settings"]["batches"] == 2
    assert (run_dir / "sharpness_1d.png").stat().st_size > 0 and (run_dir / "sharpness_2d.png").stat().st_size > 0
    bad = CliRunner().invoke(app, ["diagnose", "sharpness", str(tmp_path / "nowhere")])
    assert bad.exit_code != 0


def test_reference_views_are_the_same_for_every_run_and_out_keeps_figures_apart(tmp_path):
    """--views reference measures a Fourier run and a plain run on the same views: with identical weights (seed 0,
    2 steps differ only in their views), the reference objective differs only by the weights; and --out writes
    its own JSON and PNGs, leaving sharpness.json alone."""
    from sharpshift.diagnostics.sharpness import diagnose_sharpness, load_module, reference_views
    from sharpshift.train import pretrain
    from tests.conftest import tiny_config

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        plain = pretrain(tiny_config("simclr", "trainer.max_steps=1", out_dir=str(tmp_path / "a")))
        fourier = pretrain(tiny_config("simclr", "fourier.enabled=true", "trainer.max_steps=1",
                                       out_dir=str(tmp_path / "b")))
        images = load_module(plain)[1].images[:8]
        views = [reference_views(load_module(run)[0], 8, seed=3)(images) for run in (plain, fourier)]
        assert all(torch.equal(a, b) for a, b in zip(*views))  # the Fourier run's own generator is not used
        out = tmp_path / "figures" / "ref.json"
        result = diagnose_sharpness(fourier, batches=1, batch_size=16, power_iters=1, hutchinson=1, points_1d=3,
                                    points_2d=3, views="reference", out=out)
    finally:
        torch.set_num_threads(threads)
    assert json.loads(out.read_text())["settings"]["views"] == "reference" == result["settings"]["views"]
    assert (out.parent / "ref_1d.png").is_file() and (out.parent / "ref_2d.png").is_file()
    assert not (fourier / "sharpness.json").exists()
    with pytest.raises(Exception, match="--views"):
        diagnose_sharpness(fourier, views="mine")
