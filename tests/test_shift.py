"""Shift-aware views: Fourier amplitude transforms against loops written from the formula, RSA's schedule,
loss and routing, and the wiring into the methods."""
import math

import numpy as np
import pytest
import torch

from sharpshift.data.views import ViewGenerator, ViewParams
from sharpshift.errors import UserError
from sharpshift.shift import fourier as Fr
from sharpshift.shift import rsa as R
from sharpshift.config.shift import FourierConfig
from sharpshift.shift.views import ShiftViews


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def slow_amplitude_mix(x, partner, lam):
    """x' = IFFT(((1-lam)|F(x)| + lam|F(x')|) exp(i angle F(x))), one image and channel at a time."""
    out = np.zeros(x.shape)
    for n in range(x.shape[0]):
        for c in range(x.shape[1]):
            f, fp = np.fft.fft2(x[n, c].double().numpy()), np.fft.fft2(partner[n, c].double().numpy())
            amp = (1 - float(lam[n])) * np.abs(f) + float(lam[n]) * np.abs(fp)
            out[n, c] = np.real(np.fft.ifft2(amp * np.exp(1j * np.angle(f))))
    return torch.tensor(out, dtype=torch.float32)


# --- Fourier ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(3, 1, 28, 28), (2, 3, 7, 10)])
def test_amplitude_mix_matches_the_formula_loop(shape):
    x, partner, lam = torch.rand(shape), torch.rand(shape), torch.rand(shape[0])
    assert torch.allclose(Fr.amplitude_mix(x, partner, lam), slow_amplitude_mix(x, partner, lam), atol=1e-5)


@pytest.mark.parametrize("shape", [(4, 1, 28, 28), (2, 3, 9, 8)])
def test_lam_zero_leaves_the_image_unchanged(shape):
    x = torch.rand(shape)
    assert torch.allclose(Fr.amplitude_mix(x, torch.rand(shape), torch.zeros(shape[0])), x, atol=1e-5)


def test_phase_is_kept_where_the_amplitude_is_not_zero():
    x, partner = torch.rand(4, 3, 16, 12), torch.rand(4, 3, 16, 12)
    y = Fr.amplitude_mix(x, partner, torch.tensor([0.2, 0.5, 0.9, 1.0]))
    fx, fy = torch.fft.fft2(x.double()), torch.fft.fft2(y.double())
    ok = (fy.abs() > 1e-3) & (fx.abs() > 1e-3)
    # compare unit phasors, so that angles of -pi and pi agree
    assert torch.allclose((fy / fy.abs())[ok], (fx / fx.abs())[ok], atol=1e-3)
    assert not torch.allclose(y, x, atol=1e-2)  # and the image did change


def test_lam_one_gives_the_partners_amplitude():
    x, partner = torch.rand(3, 1, 28, 28), torch.rand(3, 1, 28, 28)
    y = Fr.amplitude_mix(x, partner, torch.ones(3))
    assert torch.allclose(torch.fft.fft2(y).abs(), torch.fft.fft2(partner).abs(), atol=1e-3)


def test_amplitude_scale_keeps_phase_and_mean_and_scales_amplitude():
    x = torch.rand(2, 3, 10, 10)
    factor = 1 + 0.5 * (2 * torch.rand(2, 1, 10, 10) - 1)
    y = Fr.amplitude_scale(x, factor)
    fx, fy = torch.fft.fft2(x.double()), torch.fft.fft2(y.double())
    want = fx.abs() * Fr.symmetrise(factor.double())
    want[..., 0, 0] = fx.abs()[..., 0, 0]
    assert torch.allclose(fy.abs(), want, atol=1e-3)
    assert torch.allclose(y.mean(dim=(2, 3)), x.mean(dim=(2, 3)), atol=1e-5)


def test_symmetrise_matches_a_loop():
    a = torch.rand(5, 6)
    b = Fr.symmetrise(a)
    for i in range(5):
        for j in range(6):
            assert math.isclose(b[i, j], (a[i, j] + a[-i % 5, -j % 6]) / 2, abs_tol=1e-6)


def test_partner_is_another_image_and_every_image_is_used_once():
    p = Fr.random_partner(50, gen(), "cpu")
    assert sorted(p.tolist()) == list(range(50)) and bool((p != torch.arange(50)).all())


@pytest.mark.parametrize("variant", ["mix", "swap", "scale"])
def test_no_nan_and_no_out_of_range_pixel_over_many_batches(variant):
    cfg, g = FourierConfig(enabled=True, variant=variant, alpha=1.0, p=1.0), gen(1)
    for i in range(40):
        c, h, w = [(1, 28, 28), (3, 32, 32), (3, 7, 5), (1, 1, 1)][i % 4]
        x = torch.rand(16, c, h, w, generator=g)
        if i % 5 == 0:  # extremes: black, white and constant images in the batch
            x[:4] = 0.0
            x[4:8] = 1.0
            x[8:12] = 0.37
        y = Fr.fourier_augment(x, cfg, g)
        assert y.shape == x.shape and torch.isfinite(y).all() and y.min() >= 0 and y.max() <= 1


def test_probability_and_determinism():
    x = torch.rand(64, 1, 28, 28)
    off = FourierConfig(enabled=True, p=0.0)
    assert torch.equal(Fr.fourier_augment(x, off, gen()), x)
    cfg = FourierConfig(enabled=True, p=0.5)
    y1, y2, y3 = (Fr.fourier_augment(x, cfg, gen(s)) for s in (7, 7, 8))
    assert torch.equal(y1, y2) and not torch.equal(y1, y3)
    changed = (y1 - x).abs().flatten(1).amax(1) > 1e-4
    assert 16 < int(changed.sum()) < 48  # about half the images


def test_alpha_bounds_the_mix_and_swap_ignores_it():
    """mix draws lam ~ U(0, alpha): alpha 0 leaves every image as it was, and the same draws with a smaller
    alpha move it less (x' - x is linear in lam before the clip); swap is lam = 1 whatever alpha."""
    x = torch.rand(16, 1, 28, 28)
    assert torch.allclose(Fr.fourier_augment(x, FourierConfig(enabled=True, alpha=0.0, p=1.0), gen()), x, atol=1e-5)
    small, large = (Fr.fourier_augment(x, FourierConfig(enabled=True, alpha=a, p=1.0), gen()) for a in (0.1, 1.0))
    assert 0 < float((small - x).abs().mean()) < 0.5 * float((large - x).abs().mean())
    swap = Fr.fourier_augment(x, FourierConfig(enabled=True, variant="swap", alpha=0.0, p=1.0), gen())
    g = gen()  # the same draws as fourier_augment: apply-or-not first, then the partners
    torch.rand(16, generator=g)
    partner = x[Fr.random_partner(16, g, "cpu")]
    assert torch.allclose(swap, Fr.amplitude_mix(x, partner, torch.ones(16)).clamp(0, 1), atol=1e-6)
    assert not torch.allclose(swap, x, atol=1e-2)


def params(**kw):
    base = dict(crop_scale=(0.2, 1.0), crop_ratio=(0.75, 4 / 3), flip_p=0.5, jitter_p=1.0, brightness=0.4,
                contrast=0.4, saturation=0.4, hue=0.1, grayscale_p=0.2, blur_p=0.5, blur_sigma=(0.1, 2.0),
                solarize_p=0.0)
    base.update(kw)
    return ViewParams(**base)


def test_fourier_touches_only_the_chosen_views():
    images = (torch.rand(32, 1, 28, 28) * 255).to(torch.uint8)
    base = ViewGenerator([params(), params()], [0.5], [0.25], 28, seed=3)
    plain = base(images)
    shifted = ShiftViews(ViewGenerator([params(), params()], [0.5], [0.25], 28, seed=3),
                         FourierConfig(enabled=True, p=1.0, views=[1]))(images)
    assert torch.equal(shifted[0], plain[0]) and not torch.allclose(shifted[1], plain[1])


# --- RSA views and schedule --------------------------------------------------------------------------
def test_weak_views_are_crop_and_flip_only_and_aggressive_views_build_on_them():
    x = torch.zeros(8, 3, 16, 16)
    x[:] = torch.tensor([0.8, 0.2, 0.4]).view(1, 3, 1, 1)  # one flat colour: crop and flip cannot change it
    a1, a2, w1, w2 = R.multi_stage_views(x, [params(), params()], gen(), 16)
    assert torch.allclose(w1, x, atol=1e-5) and torch.allclose(w2, x, atol=1e-5)
    assert not torch.allclose(a1, x, atol=1e-2)  # jitter p=1 changed the colour
    # with every photometric op off, the aggressive view is exactly its weak view (same crop)
    z = torch.rand(8, 1, 16, 16)
    a1, a2, w1, w2 = R.multi_stage_views(z, [params(jitter_p=0, blur_p=0), params(jitter_p=0, blur_p=0)], gen(), 16)
    assert torch.equal(a1, w1) and torch.equal(a2, w2) and not torch.equal(w1, w2)


def test_beta_schedule():
    assert R.beta_k(0, 100, 0.3) == pytest.approx(0.3)
    assert R.beta_k(50, 100, 0.3) == pytest.approx(0.15)
    assert R.beta_k(100, 100, 0.3) == pytest.approx(0.0, abs=1e-12)
    assert R.beta_k(25, 100, 0.4) == pytest.approx(0.4 * (1 + math.cos(math.pi / 4)) / 2)
    assert R.beta_k(70, 100, 0.3, "constant") == 0.3


def test_byol_rsa_loss_by_hand():
    p1 = torch.tensor([[1.0, 0.0]], requires_grad=True)
    p2 = torch.tensor([[0.0, 1.0]], requires_grad=True)
    zt1, zt2 = torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 1.0]])
    aw, aa = R.byol_rsa_terms([p1, p2], [zt1, zt2])
    # aw = (2 - 2 cos(p1, zt2)) + (2 - 2 cos(p2, zt1)) = (2 - sqrt 2) + 2; aa = (2 - 0) + (2 - 0)
    assert aw.item() == pytest.approx(4 - math.sqrt(2), abs=1e-6) and aa.item() == pytest.approx(4.0)
    assert R.mix(aw, aa, 0.3).item() == pytest.approx(0.7 * (4 - math.sqrt(2)) + 0.3 * 4, abs=1e-6)
    # stop-gradient: d/dp1 of aa comes from 2 - 2 cos(p1, sg p2) alone = -2 (p2/|p2| - cos p1/|p1|) = (0, -2)
    aa.backward()
    assert torch.allclose(p1.grad, torch.tensor([[0.0, -2.0]])) and torch.allclose(p2.grad, torch.tensor([[-2.0, 0.0]]))


def test_moco_rsa_loss_by_hand():
    q1, q2 = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    k1, k2 = torch.tensor([[0.0, 1.0]]), torch.tensor([[1.0, 0.0]])
    queue = torch.tensor([[-1.0, 0.0]])
    aw, aa = R.moco_rsa_terms([q1, q2], [k1, k2], queue, temperature=1.0)
    # -log(e^pos / (e^pos + e^neg)) = log(1 + e^(neg - pos))
    assert aw.item() == pytest.approx((math.log(1 + math.exp(-2)) + math.log(1 + math.exp(-1))) / 2, abs=1e-6)
    assert aa.item() == pytest.approx((math.log(1 + math.exp(-1)) + math.log(2)) / 2, abs=1e-6)


def test_simclr_rsa_pairs_each_aggressive_view_with_the_other_crops_weak_view():
    z1, z2 = torch.randn(6, 4), torch.randn(6, 4)
    w1, w2 = torch.randn(6, 4), z1.clone()  # w2 equals a1: the aggressive-weak pair a1-w2 is perfect
    from sharpshift.losses import nt_xent

    aw, aa = R.simclr_rsa_terms([z1, z2], [w1, w2], 0.5)
    assert aw.item() == pytest.approx(((nt_xent(z1, z1, 0.5) + nt_xent(z2, w1, 0.5)) / 2).item(), abs=1e-6)
    assert aa.item() == pytest.approx(nt_xent(z1, z2, 0.5).item(), abs=1e-6)


# --- wiring into the methods --------------------------------------------------------------------------
def _module(method, *overrides):
    from sharpshift.data.registry import load_dataset
    from sharpshift.train import build_module
    from tests.conftest import tiny_config

    cfg = tiny_config(method, "rsa.enabled=true", *overrides)
    return build_module(cfg, load_dataset("digits", "train"))


@pytest.mark.parametrize("method", ["byol", "moco", "simclr"])
def test_weak_views_never_reach_the_online_branch_and_aggressive_never_the_target(method):
    from sharpshift.steps import StepContext

    m = _module(method)
    images = (torch.rand(8, 1, 8, 8) * 255).to(torch.uint8)
    views = m.views(images)
    assert len(views) == 4
    seen = []  # (branch, input, gradient on)
    m.backbone.register_forward_pre_hook(lambda mod, inp: seen.append(("online", inp[0], torch.is_grad_enabled())))
    if hasattr(m, "target_backbone"):
        m.target_backbone.register_forward_pre_hook(lambda mod, inp: seen.append(("target", inp[0], False)))
    out = m.objective(StepContext(images, torch.full((8,), -1), torch.arange(8), views, step=0, epoch=0))
    aggressive, weak = torch.cat(views[:2]), torch.cat(views[2:])
    with_grad = [x for branch, x, grad in seen if branch == "online" and grad]
    stop_grad = [x for branch, x, grad in seen if not (branch == "online" and grad)]
    assert len(with_grad) == 1 and torch.equal(with_grad[0], aggressive)
    assert len(stop_grad) == 1 and torch.equal(stop_grad[0], weak)
    if method != "simclr":  # BYOL and MoCo: the weak views go through the target network only
        assert [b for b, x, g in seen] == ["online", "target"]
    assert set(out.terms) == {"rsa_aggr_weak", "rsa_aggr_aggr"} and out.extra["rsa_beta"] == pytest.approx(0.3)
    assert len(out.feats) == 2 and torch.isfinite(out.loss)


@pytest.mark.parametrize("method", ["byol", "simclr", "moco"])
def test_rsa_and_fourier_train_every_supported_method(method, tmp_path):
    from tests.conftest import tiny_config
    from tests.test_methods import fit

    module, before, trainer = fit(tiny_config(method, "rsa.enabled=true", "fourier.enabled=true"), tmp_path, steps=2)
    assert isinstance(module.views, ShiftViews) and trainer.global_step == 2
    assert all(torch.isfinite(p).all() for p in module.parameters())


def test_impossible_settings_are_user_errors():
    from sharpshift.config import load_config

    with pytest.raises(UserError, match="fourier.variant"):
        load_config(None, ["fourier.variant=phase"])
    with pytest.raises(UserError, match="rsa.beta_base"):
        load_config(None, ["rsa.beta_base=1.5"])
    with pytest.raises(UserError, match="rsa supports"):
        _module("barlow")
    with pytest.raises(UserError, match="fourier.views"):
        _module("byol", "fourier.enabled=true", "fourier.views=[4]")
