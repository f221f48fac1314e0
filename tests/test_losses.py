"""Each loss against a slow loop written straight from its paper's formula."""
import math

import torch
import torch.nn.functional as F

from sharpshift.losses import barlow_twins_loss, byol_loss, infonce_queue, nt_xent, simsiam_loss


def slow_nt_xent(z1, z2, t):
    z = F.normalize(torch.cat([z1, z2]), dim=1).double()
    n2 = len(z)
    n = n2 // 2
    total = 0.0
    for i in range(n2):
        pos = (i + n) % n2
        num = math.exp(float(z[i] @ z[pos]) / t)
        den = sum(math.exp(float(z[i] @ z[k]) / t) for k in range(n2) if k != i)
        total += -math.log(num / den)
    return total / n2


def test_nt_xent_matches_loop():
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    for t in (0.1, 0.5):
        assert abs(float(nt_xent(z1, z2, t)) - slow_nt_xent(z1, z2, t)) < 1e-5


def test_nt_xent_is_low_for_identical_views_and_high_for_random():
    z = torch.randn(32, 16)
    assert float(nt_xent(z, z, 0.1)) < float(nt_xent(z, torch.randn(32, 16), 0.1))


def test_infonce_queue_matches_loop():
    g = torch.Generator().manual_seed(1)
    q, k = torch.randn(4, 8, generator=g), torch.randn(4, 8, generator=g)
    queue = F.normalize(torch.randn(10, 8, generator=g), dim=1)
    t = 0.2
    qn, kn = F.normalize(q, dim=1), F.normalize(k, dim=1)
    expect = 0.0
    for i in range(4):
        pos = math.exp(float(qn[i] @ kn[i]) / t)
        neg = sum(math.exp(float(qn[i] @ queue[j]) / t) for j in range(10))
        expect += -math.log(pos / (pos + neg))
    assert abs(float(infonce_queue(q, k, queue, t)) - expect / 4) < 1e-5


def test_infonce_gives_no_gradient_to_keys():
    q, k = torch.randn(4, 8, requires_grad=True), torch.randn(4, 8, requires_grad=True)
    infonce_queue(q, k, F.normalize(torch.randn(5, 8), dim=1), 0.2).backward()
    assert q.grad is not None and k.grad is None


def test_byol_and_simsiam_match_formula_and_stop_gradient():
    g = torch.Generator().manual_seed(2)
    p, z = torch.randn(5, 7, generator=g, requires_grad=True), torch.randn(5, 7, generator=g, requires_grad=True)
    cos = [float(p[i] @ z[i] / (p[i].norm() * z[i].norm())) for i in range(5)]
    assert abs(float(byol_loss(p, z)) - sum(2 - 2 * c for c in cos) / 5) < 1e-5
    loss = simsiam_loss(p, z)
    assert abs(float(loss) + sum(cos) / 5) < 1e-5
    loss.backward()
    assert z.grad is None and p.grad is not None


def test_barlow_twins_matches_loop():
    g = torch.Generator().manual_seed(3)
    z1, z2 = torch.randn(8, 4, generator=g), torch.randn(8, 4, generator=g)
    lambd, scale = 0.005, 0.1
    n, d = z1.shape
    a = (z1 - z1.mean(0)) / z1.std(0, unbiased=False)
    b = (z2 - z2.mean(0)) / z2.std(0, unbiased=False)
    expect = 0.0
    for i in range(d):
        for j in range(d):
            c = sum(float(a[k, i] * b[k, j]) for k in range(n)) / n
            expect += (1 - c) ** 2 if i == j else lambd * c**2
    assert abs(float(barlow_twins_loss(z1, z2, lambd, scale)) - scale * expect) < 1e-5


def test_barlow_is_zero_for_decorrelated_identical_views():
    # orthogonal standardised columns: C = I exactly
    q, _ = torch.linalg.qr(torch.randn(64, 4))
    z = q - q.mean(0)
    assert float(barlow_twins_loss(z, z, 0.005)) < 0.2  # centring perturbs orthogonality only slightly


def test_losses_stay_fp32_under_bf16_autocast():
    z1, z2 = torch.randn(8, 16).bfloat16(), torch.randn(8, 16).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = nt_xent(z1, z2, 0.5)
    assert out.dtype == torch.float32
    assert abs(float(out) - float(nt_xent(z1.float(), z2.float(), 0.5))) < 1e-5
