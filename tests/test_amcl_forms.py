"""AMCL's two forms. `official`: equal to a transcription of the official v2.0 code (LeiWangR/cl, amcl/losses.py,
as ../shared/reference/audits.md describes it) in value and gradient, and degenerate on a toy run (this documents
the degeneracy). `adaptive`: the temperatures stay interior, spread over pairs and rise for harder positives; a
constant temperature gives back each base loss."""
import copy

import pytest
import torch
import torch.nn.functional as F

from sharpshift.amcl.adaptive import (adaptive_barlow_twins, adaptive_infonce_queue, adaptive_nt_xent,
                                      adaptive_simsiam, optimal_temperature, temperature_fit)
from sharpshift.amcl.heads import TemperatureNet
from sharpshift.amcl.losses import (amcl_barlow_twins, amcl_infonce_queue, amcl_nt_xent, amcl_simsiam,
                                    pair_temperature)
from sharpshift.amcl.mechanism import SPREAD_MIN
from sharpshift.losses import barlow_twins_loss, nt_xent, simsiam_loss
from tests import amcl_toy
from tests.test_amcl import constant_phi  # phi = 0: every pair at (tau_min + tau_max) / 2

pytestmark = pytest.mark.usefixtures("one_thread")
TMIN, TMAX = 1e-5, 2.0


# --- a transcription of the official v2.0 code: per head, float64, the code's own operations -------------------
def _tau(phi64, a, b):
    return TMIN + (TMAX - TMIN) * torch.sigmoid(-(phi64(a) @ phi64(b).T))


def _omega(tau, d):
    return (d / 2) * torch.log(tau) + 1 / tau


def official_simclr(z1, z2, phi64, beta, k):
    n, heads, d = z1.shape
    total = 0
    for c in range(heads):
        z = F.normalize(torch.cat([z1[:, c], z2[:, c]]), dim=1)
        sim, tau = z @ z.T, _tau(phi64, z, z)
        rows = torch.arange(2 * n)
        pos = (rows + n) % (2 * n)
        pos_sim, tau_pos = sim[rows, pos], tau[rows, pos]
        mask = torch.eye(2 * n, dtype=torch.bool)
        mask[rows, pos] = True
        vals, idx = sim.masked_fill(mask, float("-inf")).topk(min(k, 2 * n - 2), dim=1)
        tau_top = tau.gather(1, idx)
        neg = (vals / tau_top).mean(1)
        reg_pos = beta * _omega(tau_pos, d)
        reg_neg = beta * (torch.log(tau_top).sum(1) + (1 / tau_top).sum(1))
        total = total + (-pos_sim / tau_pos + neg + reg_pos - reg_neg).mean()
    return total


def official_moco(q, key, queue, phi64, beta, k):
    n, heads, d = q.shape
    total = 0
    for c in range(heads):
        qn, kn, bank = F.normalize(q[:, c], dim=1), F.normalize(key[:, c], dim=1).detach(), queue[:, c]
        pos_sim = (qn * kn).sum(1)
        tau_pos = TMIN + (TMAX - TMIN) * torch.sigmoid(-(phi64(qn) * phi64(kn)).sum(1))
        vals, idx = (qn @ bank.T).topk(min(k, len(bank)), dim=1)
        tau_top = _tau(phi64, qn, bank).gather(1, idx)
        neg = (vals / tau_top).mean(1)
        reg_neg = beta * (torch.log(tau_top).sum(1) + (1 / tau_top).sum(1))
        total = total + (-pos_sim / tau_pos + neg + beta * _omega(tau_pos, d) - reg_neg).mean()
    return total


def official_simsiam(p1, p2, z1, z2, phi64, beta):
    _, heads, d = p1.shape
    total = 0
    for c in range(heads):
        terms = 0
        for p, z in ((p1[:, c], z2[:, c]), (p2[:, c], z1[:, c])):
            p, z = F.normalize(p, dim=1), F.normalize(z.detach(), dim=1)
            tau = TMIN + (TMAX - TMIN) * torch.sigmoid(-(phi64(p) * phi64(z)).sum(1))
            terms = terms - 0.5 * (p * z).sum(1) / tau + beta * _omega(tau, d)
        total = total + terms.mean()
    return total


def official_barlow(z1, z2, phi64, lambd, beta):
    n, heads, d = z1.shape
    total = 0
    for c in range(heads):
        x, y = z1[:, c], z2[:, c]
        xs = (x - x.mean(0)) / x.std(0, unbiased=False)  # the official code with the biased std, scale 1
        ys = (y - y.mean(0)) / y.std(0, unbiased=False)
        corr = xs.T @ ys / n
        tau = _tau(phi64, x.T, y.T)  # phi reads a channel's raw values over the batch
        off = 1 - torch.eye(d, dtype=z1.dtype)
        diag, tau_diag = torch.diagonal(corr), torch.diagonal(tau)
        total = total + ((1 - diag / tau_diag).pow(2).sum() + lambd * (corr.pow(2) / tau * off).sum()
                         + beta * _omega(tau_diag, d).sum() - beta * (_omega(tau, d) * off).sum())
    return total


def _phi(dim, seed):
    torch.manual_seed(seed)
    return TemperatureNet(dim, 16)


def _rel(a, b):
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def _compare(ours_fn, ref_fn, tensors, phi) -> float:
    """The largest relative difference of ours in fp32 against the transcription in float64: the value, then the
    gradients on the inputs and on phi's parameters (the same inputs detached in both: inf if not)."""
    ours_in = [t.clone().requires_grad_(True) for t in tensors]
    loss, _ = ours_fn(*ours_in, phi)
    grads = torch.autograd.grad(loss, ours_in + list(phi.parameters()), allow_unused=True)
    phi64 = copy.deepcopy(phi).double()
    ref_in = [t.double().clone().requires_grad_(True) for t in tensors]
    ref = ref_fn(*ref_in, phi64.net)
    ref_grads = torch.autograd.grad(ref, ref_in + list(phi64.parameters()), allow_unused=True)
    errors = [abs(loss.item() - ref.item()) / abs(ref.item())]
    for g, r in zip(grads, ref_grads):  # MoCo's keys and SimSiam's projections are detached in both
        errors.append(0.0 if g is None and r is None else float("inf") if g is None or r is None
                      else _rel(g.double(), r))
    return max(errors)


def test_official_simclr_equals_the_transcription():
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(16, 3, 12, generator=g), torch.randn(16, 3, 12, generator=g)
    assert _compare(lambda a, b, phi: amcl_nt_xent(a, b, phi, beta=1e-4, topk=10, tau_min=TMIN, tau_max=TMAX),
             lambda a, b, phi: official_simclr(a, b, phi, 1e-4, 10), [z1, z2], _phi(12, 0)) <= 1e-6


def test_official_moco_both_directions_equals_the_transcription():
    g = torch.Generator().manual_seed(1)
    q1, q2, k1, k2 = (torch.randn(8, 3, 12, generator=g) for _ in range(4))
    queue = F.normalize(torch.randn(40, 3, 12, generator=g), dim=-1)
    q, k = torch.cat([q1, q2]), torch.cat([k2, k1])  # as amcl.steps feeds it: both directions in one batch
    assert _compare(lambda a, b, phi: amcl_infonce_queue(a, b, queue, phi, beta=1e-4, topk=10, tau_min=TMIN, tau_max=TMAX),
             lambda a, b, phi: official_moco(a, b, queue.double(), phi, 1e-4, 10), [q, k], _phi(12, 1)) <= 1e-6


def test_official_simsiam_equals_the_transcription():
    g = torch.Generator().manual_seed(2)
    tensors = [torch.randn(16, 3, 12, generator=g) for _ in range(4)]
    assert _compare(lambda *a: amcl_simsiam(*a[:4], a[4], beta=1e-4, tau_min=TMIN, tau_max=TMAX),
             lambda *a: official_simsiam(*a[:4], a[4], 1e-4), tensors, _phi(12, 2)) <= 1e-6


def test_official_barlow_equals_the_transcription():
    g = torch.Generator().manual_seed(3)
    z1, z2 = torch.randn(16, 3, 12, generator=g), torch.randn(16, 3, 12, generator=g)
    assert _compare(lambda a, b, phi: amcl_barlow_twins(a, b, phi, lambd=0.005, scale=1.0, beta=1e-6, tau_min=TMIN,
                                                 tau_max=TMAX),
             lambda a, b, phi: official_barlow(a, b, phi, 0.005, 1e-6), [z1, z2], _phi(16, 3)) <= 1e-6


def test_pair_temperature_midpoint_and_strictly_decreasing():
    assert pair_temperature(torch.zeros(()), TMIN, TMAX).item() == pytest.approx((TMIN + TMAX) / 2, rel=1e-7)
    tau = pair_temperature(torch.linspace(-10, 10, 201, dtype=torch.float64), TMIN, TMAX)
    assert bool((tau[1:] < tau[:-1]).all())


def test_official_form_drives_the_temperature_to_tau_min():
    """The degeneracy, documented: on the toy run every positive's temperature reaches tau_min (step 20 on the
    recording machine, seed 0) and stays there."""
    run = amcl_toy.run("simclr", "official", steps=300, seed=0)
    at_min = [i for i, t in enumerate(run.tau_pos_median) if t <= TMIN * 1.01]
    assert at_min and at_min[0] < 300
    assert max(run.tau_pos_median[-50:]) <= TMIN * 1.01


# --- the adaptive form ----------------------------------------------------------------------------------------
def test_the_fit_has_its_minimum_at_the_optimal_temperature():
    s = torch.tensor([-0.5, 0.0, 0.6, 0.99], dtype=torch.float64)
    grid = torch.logspace(-4, 1, 20001, dtype=torch.float64)
    values = temperature_fit(grid[:, None], s[None], kappa=2.0, delta=0.1)
    best = grid[values.argmin(0)]
    assert torch.allclose(best, optimal_temperature(s, 2.0, 0.1), rtol=1e-3)
    assert bool((best[1:] < best[:-1]).all())  # a harder pair (lower s) has the higher optimum


MID = (TMIN + TMAX) / 2
KW = dict(beta=0.0, kappa=2.0, delta=0.1, tau_min=TMIN, tau_max=TMAX)  # beta 0: the encoder's loss alone


def test_adaptive_simclr_with_a_constant_temperature_is_nt_xent_per_head():
    g = torch.Generator().manual_seed(4)
    z1, z2 = torch.randn(10, 2, 8, generator=g), torch.randn(10, 2, 8, generator=g)
    loss, _ = adaptive_nt_xent(z1, z2, constant_phi(8), **KW)
    expected = sum(nt_xent(z1[:, c], z2[:, c], MID) for c in range(2))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_adaptive_moco_with_a_constant_temperature_is_infonce_per_head():
    from sharpshift.losses import infonce_queue

    g = torch.Generator().manual_seed(5)
    q, k = torch.randn(6, 2, 8, generator=g), torch.randn(6, 2, 8, generator=g)
    queue = F.normalize(torch.randn(20, 2, 8, generator=g), dim=-1)
    loss, _ = adaptive_infonce_queue(q, k, queue, constant_phi(8), **KW)
    expected = sum(infonce_queue(q[:, c], k[:, c], queue[:, c], MID) for c in range(2))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_adaptive_simsiam_and_barlow_with_a_constant_temperature_are_the_base_losses():
    g = torch.Generator().manual_seed(6)
    p1, p2, z1, z2 = (torch.randn(12, 2, 8, generator=g) for _ in range(4))
    loss, _ = adaptive_simsiam(p1, p2, z1, z2, constant_phi(8), **KW)
    expected = sum(0.5 * simsiam_loss(p1[:, c], z2[:, c]) + 0.5 * simsiam_loss(p2[:, c], z1[:, c]) for c in range(2))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    loss, _ = adaptive_barlow_twins(z1, z2, constant_phi(12), lambd=0.005, scale=0.5, **KW)
    expected = sum(barlow_twins_loss(z1[:, c], z2[:, c], 0.005, 0.5) for c in range(2))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_adaptive_barlow_cannot_cancel_the_invariance_term():
    """Whatever the temperatures, the diagonal's weights average 1: a channel pair with C_ll = 0 costs at least
    the base loss's share. (The official form's (1 - C/tau)^2 is 0 at tau = C.)"""
    z = torch.randn(32, 1, 4, generator=torch.Generator().manual_seed(7))
    uncorrelated = torch.randn(32, 1, 4, generator=torch.Generator().manual_seed(8))
    for seed in range(3):
        phi = _phi(32, seed)
        loss, _ = adaptive_barlow_twins(z, uncorrelated, phi, lambd=0.0, scale=1.0, **KW)
        corr = torch.diagonal(F.normalize(z[:, 0] - z[:, 0].mean(0), dim=0).T
                              @ F.normalize(uncorrelated[:, 0] - uncorrelated[:, 0].mean(0), dim=0))
        assert loss.item() >= (1 - corr).pow(2).min().item() * 4 - 1e-5


def test_the_encoder_gets_no_gradient_through_the_temperature():
    """phi reads detached embeddings and tau enters the encoder's loss detached: the encoder's gradient is that of
    the contrastive loss at fixed temperatures, whatever beta."""
    g = torch.Generator().manual_seed(9)
    z1, z2 = torch.randn(10, 2, 8, generator=g), torch.randn(10, 2, 8, generator=g)
    phi = _phi(8, 4)
    grads = []
    for beta in (0.0, 10.0):
        a = z1.clone().requires_grad_(True)
        loss, _ = adaptive_nt_xent(a, z2, phi, **dict(KW, beta=beta))
        grads.append(torch.autograd.grad(loss, a)[0])
    assert torch.equal(grads[0], grads[1])


def test_adaptive_form_keeps_temperatures_interior_spread_and_ordered():
    """The seeded toy run: median tau of positives >= 10 x tau_min at the end (0.163 measured, seed 0), a spread
    across pairs, and harder positives (lower similarity) at higher temperatures (Spearman -0.78 measured)."""
    from scipy.stats import spearmanr

    run = amcl_toy.run("simclr", "adaptive", steps=300, seed=0)
    assert min(run.tau_pos_median[-100:]) >= 10 * TMIN
    assert min(run.tau_pos_median[-100:]) >= 0.05  # the fit's floor delta / kappa, well above tau_min
    assert float(run.last_tau_pos.std()) > 0.01
    assert spearmanr(run.last_sim_pos.numpy(), run.last_tau_pos.numpy()).statistic < -0.3


def test_adaptive_barlow_is_not_below_plain_barlow_by_more_than_its_seed_spread():
    """5 seeds of the toy run (5-NN accuracy on 397 held-out digits). Measured (fp32): plain 0.9043/0.9043/0.8992/
    0.8866/0.8892, adaptive 0.8992/0.8942/0.8841/0.8942/0.8791 (paired mean -0.0065; plain's seed range 0.0177)."""
    plain = [amcl_toy.run("barlow", "base", seed=s).knn for s in range(5)]
    adaptive = [amcl_toy.run("barlow", "adaptive", seed=s).knn for s in range(5)]
    paired = sum(a - p for a, p in zip(adaptive, plain)) / 5
    assert paired >= -(max(plain) - min(plain))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_lars_weight_decay_erases_phi_and_its_own_adam_keeps_the_temperatures_apart(seed):
    """The toy Barlow run under LARS (lr 0.3, weight decay 1e-4, clip 1.0, fp32). phi in the encoder's LARS: its
    gradient is far below weight decay x w, the trust ratio makes every update a shrink, and the positives'
    temperatures end equal (5-95% spread over the median, measured 0.0 / 0.031 / 0.0 for seeds 0-2). phi on
    its own Adam (lr 1e-3): 0.268 / 0.213 / 0.213, as under plain SGD (0.280 / 0.306 / 0.205)."""
    def spread(run) -> float:
        q = torch.quantile(run.last_tau_pos, torch.tensor([0.05, 0.5, 0.95]))
        return float((q[2] - q[0]) / q[1])

    erased = spread(amcl_toy.run("barlow", "adaptive", seed=seed, optimizer="lars"))
    kept = spread(amcl_toy.run("barlow", "adaptive", seed=seed, optimizer="lars", phi_lr=1e-3))
    assert erased < 0.5 * SPREAD_MIN and kept > 1.5 * SPREAD_MIN
