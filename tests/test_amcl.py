"""AMCL: each loss against a slow loop written from its equation, constant-temperature reductions, bounds,
gradients to phi, 200 bf16 steps, and the four methods training with amcl.enabled."""
import json
import math

import pytest
import torch
import torch.nn.functional as F

from sharpshift.amcl.heads import TemperatureNet
from sharpshift.models.heads import MultiHead
from sharpshift.amcl.losses import (amcl_barlow_twins, amcl_infonce_queue, amcl_nt_xent, amcl_simsiam,
                                    pair_temperature)
from sharpshift.config import load_config
from sharpshift.errors import UserError
from sharpshift.losses import barlow_twins_loss, simsiam_loss
from sharpshift.models.heads import mlp
from tests.conftest import tiny_config

TMIN, TMAX = 0.05, 2.0


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def make_phi(dim, seed=0, scale=1.0):
    torch.manual_seed(seed)
    phi = TemperatureNet(dim, 7)
    with torch.no_grad():
        for p in phi.parameters():
            p.mul_(scale)
    return phi


def constant_phi(dim):
    """phi frozen to output 0: every pair gets tau = (tau_min + tau_max) / 2."""
    phi = TemperatureNet(dim, 7)
    with torch.no_grad():
        phi.net[2].weight.zero_()
        phi.net[2].bias.zero_()
    return phi


def tau_of(phi, a, b):
    """Eq. 3, one pair at a time."""
    score = float(torch.dot(phi(a), phi(b)).detach())
    return TMIN + (TMAX - TMIN) / (1 + math.exp(score))


def omega(tau, d):
    return d / 2 * math.log(tau) + 1 / tau


# --- slow loops, one scalar at a time, from the equations ---------------------------------------------
def loop_eq21(anchor, positive, negatives, phi, beta, k):
    """One anchor of Eq. (2.1) with the hard-negative max replaced by the mean over the top-k negatives."""
    d = len(anchor)
    t_pos = tau_of(phi, anchor, positive)
    sims = sorted(((float(torch.dot(anchor, n)), n) for n in negatives), key=lambda s: -s[0])[:k]
    neg = sum(s / tau_of(phi, anchor, n) for s, n in sims) / len(sims)
    reg_neg = sum(math.log(tau_of(phi, anchor, n)) + 1 / tau_of(phi, anchor, n) for _, n in sims)
    return -float(torch.dot(anchor, positive)) / t_pos + neg + beta * omega(t_pos, d) - beta * reg_neg


def loop_simclr(z1, z2, phi, beta, k):
    n, heads, _ = z1.shape
    total = 0.0
    for c in range(heads):
        views = [F.normalize(z1[i, c], dim=0) for i in range(n)] + [F.normalize(z2[i, c], dim=0) for i in range(n)]
        per_anchor = []
        for r in range(2 * n):
            pos = (r + n) % (2 * n)
            negatives = [views[j] for j in range(2 * n) if j not in (r, pos)]
            per_anchor.append(loop_eq21(views[r], views[pos], negatives, phi, beta, k))
        total += sum(per_anchor) / len(per_anchor)
    return total


def loop_moco(q, k, queue, phi, beta, topk):
    n, heads, _ = q.shape
    total = 0.0
    for c in range(heads):
        bank = [queue[j, c] for j in range(len(queue))]
        total += sum(loop_eq21(F.normalize(q[i, c], dim=0), F.normalize(k[i, c], dim=0), bank, phi, beta, topk)
                     for i in range(n)) / n
    return total


def loop_simsiam(p1, p2, z1, z2, phi, beta):
    n, heads, d = p1.shape
    total = 0.0
    for c in range(heads):
        per = []
        for i in range(n):
            term = 0.0
            for p, z in ((p1[i, c], z2[i, c]), (p2[i, c], z1[i, c])):
                p, z = F.normalize(p, dim=0), F.normalize(z, dim=0)
                t = tau_of(phi, p, z)
                term += -float(torch.dot(p, z)) / (2 * t) + beta * omega(t, d)
            per.append(term)
        total += sum(per) / n
    return total


def loop_barlow(z1, z2, phi, lambd, scale, beta):
    n, heads, dim = z1.shape
    total = 0.0
    for c in range(heads):
        x, y = z1[:, c], z2[:, c]
        xs = (x - x.mean(0)) / x.std(0, unbiased=False)
        ys = (y - y.mean(0)) / y.std(0, unbiased=False)
        loss = 0.0
        for l in range(dim):
            for m in range(dim):
                corr = float(sum(xs[b, l] * ys[b, m] for b in range(n))) / n
                t = tau_of(phi, x[:, l], y[:, m])  # phi reads channel vectors over the batch
                if l == m:
                    loss += (1 - corr / t) ** 2 + beta * omega(t, dim)
                else:
                    loss += lambd * corr ** 2 / t - beta * omega(t, dim)
        total += scale * loss
    return total


# --- the losses equal the loops ---------------------------------------------------------------------------
@pytest.mark.parametrize("topk", [3, 100])  # 100 > 2n-2: all negatives
def test_simclr_loss_matches_loop(topk):
    g = torch.Generator().manual_seed(1)
    z1, z2 = torch.randn(5, 2, 6, generator=g), torch.randn(5, 2, 6, generator=g)
    phi = make_phi(6)
    loss, _ = amcl_nt_xent(z1, z2, phi, beta=0.01, topk=topk, tau_min=TMIN, tau_max=TMAX)
    assert loss.item() == pytest.approx(loop_simclr(z1, z2, phi, 0.01, topk), rel=1e-4)


def test_moco_loss_matches_loop():
    g = torch.Generator().manual_seed(2)
    q, k = torch.randn(4, 2, 6, generator=g), torch.randn(4, 2, 6, generator=g)
    queue = F.normalize(torch.randn(9, 2, 6, generator=g), dim=-1)
    phi = make_phi(6, seed=1)
    loss, _ = amcl_infonce_queue(q, k, queue, phi, beta=0.01, topk=4, tau_min=TMIN, tau_max=TMAX)
    assert loss.item() == pytest.approx(loop_moco(q, k, queue, phi, 0.01, 4), rel=1e-4)


def test_simsiam_loss_matches_loop():
    g = torch.Generator().manual_seed(3)
    p1, p2, z1, z2 = (torch.randn(4, 2, 6, generator=g) for _ in range(4))
    phi = make_phi(6, seed=2)
    loss, _ = amcl_simsiam(p1, p2, z1, z2, phi, beta=0.01, tau_min=TMIN, tau_max=TMAX)
    assert loss.item() == pytest.approx(loop_simsiam(p1, p2, z1, z2, phi, 0.01), rel=1e-4)


def test_barlow_loss_matches_loop():
    g = torch.Generator().manual_seed(4)
    z1, z2 = torch.randn(6, 2, 4, generator=g), torch.randn(6, 2, 4, generator=g)
    phi = make_phi(6, seed=3)  # reads a channel over the batch of 6
    loss, _ = amcl_barlow_twins(z1, z2, phi, lambd=0.1, scale=0.5, beta=0.01, tau_min=TMIN, tau_max=TMAX)
    assert loss.item() == pytest.approx(loop_barlow(z1, z2, phi, 0.1, 0.5, 0.01), rel=1e-4)


# --- phi frozen to a constant: the constant-temperature form of the same equation ---------------------
def test_simclr_constant_tau_is_the_linear_contrastive_form():
    g = torch.Generator().manual_seed(5)
    z1, z2 = torch.randn(6, 1, 8, generator=g), torch.randn(6, 1, 8, generator=g)
    t, beta, n = (TMIN + TMAX) / 2, 1e-3, 6
    loss, stats = amcl_nt_xent(z1, z2, constant_phi(8), beta=beta, topk=1000, tau_min=TMIN, tau_max=TMAX)
    z = F.normalize(torch.cat([z1[:, 0], z2[:, 0]]), dim=1)
    sim = z @ z.T
    pos = torch.cat([sim.diagonal(n), sim.diagonal(-n)])
    mean_neg = (sim.sum(1) - sim.diagonal() - pos) / (2 * n - 2)  # all negatives
    k = 2 * n - 2
    expect = (-pos / t + mean_neg / t).mean() + beta * omega(t, 8) - beta * k * (math.log(t) + 1 / t)
    assert loss.item() == pytest.approx(expect.item(), rel=1e-5)
    assert stats["tau_pos"].item() == pytest.approx(t) and stats["tau_neg"].item() == pytest.approx(t)


def test_moco_constant_tau_with_the_whole_queue():
    g = torch.Generator().manual_seed(6)
    q, k = torch.randn(5, 1, 8, generator=g), torch.randn(5, 1, 8, generator=g)
    queue = F.normalize(torch.randn(7, 1, 8, generator=g), dim=-1)
    t = (TMIN + TMAX) / 2
    loss, _ = amcl_infonce_queue(q, k, queue, constant_phi(8), beta=0.0, topk=7, tau_min=TMIN, tau_max=TMAX)
    qn, kn = F.normalize(q[:, 0], dim=1), F.normalize(k[:, 0], dim=1)
    expect = (-(qn * kn).sum(1) / t + qn @ queue[:, 0].mean(0) / t).mean()  # mean over the queue = dot with its mean
    assert loss.item() == pytest.approx(expect.item(), rel=1e-5)


def test_simsiam_constant_tau_one_is_simsiam_per_head():
    g = torch.Generator().manual_seed(7)
    p1, p2, z1, z2 = (torch.randn(8, 2, 6, generator=g) for _ in range(4))
    loss, _ = amcl_simsiam(p1, p2, z1, z2, constant_phi(6), beta=0.0, tau_min=0.5, tau_max=1.5)  # tau = 1
    expect = sum(0.5 * (simsiam_loss(p1[:, c], z2[:, c]) + simsiam_loss(p2[:, c], z1[:, c])) for c in range(2))
    assert loss.item() == pytest.approx(expect.item(), rel=1e-5)


def test_barlow_constant_tau_one_is_barlow_twins_per_head():
    g = torch.Generator().manual_seed(8)
    z1, z2 = torch.randn(10, 2, 5, generator=g), torch.randn(10, 2, 5, generator=g)
    loss, _ = amcl_barlow_twins(z1, z2, constant_phi(10), lambd=0.05, scale=0.1, beta=0.0, tau_min=0.5, tau_max=1.5)
    expect = sum(barlow_twins_loss(z1[:, c], z2[:, c], 0.05, 0.1) for c in range(2))
    assert loss.item() == pytest.approx(expect.item(), rel=1e-5)


# --- bounds, gradients, precision ---------------------------------------------------------------------------
def test_temperature_stays_in_bounds_and_falls_with_the_score():
    score = torch.tensor([-1e30, -1e4, -3.0, 0.0, 3.0, 1e4, 1e30])
    tau = pair_temperature(score, 1e-5, 2.0)
    assert ((tau >= 1e-5) & (tau <= 2.0)).all()
    assert (tau[1:] <= tau[:-1]).all() and tau[0] == pytest.approx(2.0) and tau[-1] == pytest.approx(1e-5)


def _all_losses(phi_vec, phi_batch, z, g):
    queue = F.normalize(torch.randn(20, z.shape[1], z.shape[2], generator=g), dim=-1)
    kw = dict(beta=1e-4, tau_min=1e-5, tau_max=2.0)
    yield "simclr", amcl_nt_xent(z, z.flip(0) + 0.1 * z, phi_vec, topk=5, **kw)
    yield "moco", amcl_infonce_queue(z, z.roll(1, 0), queue, phi_vec, topk=5, **kw)
    yield "simsiam", amcl_simsiam(z, z * 2, z.roll(1, 0), z.flip(0), phi_vec, **kw)
    yield "barlow", amcl_barlow_twins(z, z.roll(1, 0), phi_batch, lambd=5e-3, scale=1.0, **kw)


@pytest.mark.parametrize("scale", [1.0, 30.0])  # 30: phi's scores saturate, tau pinned to its bounds
def test_losses_finite_taus_in_bounds_and_gradients_reach_phi(scale):
    g = torch.Generator().manual_seed(9)
    z = torch.randn(8, 3, 6, generator=g, requires_grad=True)
    phi_vec, phi_batch = make_phi(6, seed=4, scale=scale), make_phi(8, seed=5, scale=scale)
    for name, (loss, stats) in _all_losses(phi_vec, phi_batch, z, g):
        phi = phi_batch if name == "barlow" else phi_vec
        phi.zero_grad()
        z.grad = None
        loss.backward()
        assert torch.isfinite(loss), name
        assert all(0.99e-5 <= float(v.min()) and float(v.max()) <= 2.0 for v in stats.values()), (name, stats)
        assert torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0, name
        grads = [p.grad for p in phi.parameters()]
        assert all(gr is not None and torch.isfinite(gr).all() for gr in grads), name
        if scale == 1.0:  # unsaturated: phi really learns
            assert sum(gr.abs().sum() for gr in grads) > 0, name


def test_losses_return_fp32_under_bf16_autocast():
    g = torch.Generator().manual_seed(10)
    z = torch.randn(8, 2, 6, generator=g).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        for name, (loss, _) in _all_losses(make_phi(6), make_phi(8), z, g):
            assert loss.dtype == torch.float32 and torch.isfinite(loss), name


@pytest.mark.parametrize("method", ["simclr", "moco", "simsiam", "barlow"])
def test_200_bf16_steps_stay_finite(method):
    """A tiny encoder + 2 heads + phi, trained 200 steps under bf16 autocast with SGD and grad clipping at 1.0
    (what the amcl configs ship): losses and weights stay finite."""
    torch.manual_seed(0)
    n, d_in, d = 16, 12, 8
    encoder = torch.nn.Sequential(torch.nn.Linear(d_in, 32), torch.nn.ReLU())
    heads = MultiHead([mlp(32, 32, d, layers=2) for _ in range(2)])
    preds = MultiHead([mlp(d, 16, d, layers=2) for _ in range(2)])
    phi = TemperatureNet(n if method == "barlow" else d, 16)
    params = [*encoder.parameters(), *heads.parameters(), *preds.parameters(), *phi.parameters()]
    opt = torch.optim.SGD(params, lr=0.3, momentum=0.9)
    queue = F.normalize(torch.randn(64, 2, d), dim=-1)
    data = torch.randn(64, d_in)
    kw = dict(beta=1e-6 if method == "barlow" else 1e-4, tau_min=1e-5, tau_max=2.0)
    for step in range(200):
        x = data[torch.randint(0, 64, (n,))]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            z1, z2 = heads(encoder(x + 0.3 * torch.randn_like(x))), heads(encoder(x + 0.3 * torch.randn_like(x)))
            if method == "simclr":
                loss, _ = amcl_nt_xent(z1, z2, phi, topk=10, **kw)
            elif method == "moco":
                loss, _ = amcl_infonce_queue(z1, z2.detach(), queue, phi, topk=10, **kw)
            elif method == "simsiam":
                loss, _ = amcl_simsiam(preds(z1), preds(z2), z1, z2, phi, **kw)
            else:
                loss, _ = amcl_barlow_twins(z1, z2, phi, lambd=5e-3, scale=0.1, **kw)
        assert torch.isfinite(loss), (method, step)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if method == "moco":
            queue = torch.cat([F.normalize(z2.detach().float(), dim=-1), queue])[:64]
    assert all(torch.isfinite(p).all() for p in params), method


# --- the methods --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["simclr", "moco", "barlow", "simsiam"])
def test_methods_train_with_amcl(name, tmp_path):
    from tests.test_methods import fit

    cfg = tiny_config(name, "amcl.enabled=true", "amcl.heads=2", "amcl.topk=10")
    module, before, trainer = fit(cfg, tmp_path, steps=3)
    assert trainer.global_step == 3
    assert isinstance(module.projector, MultiHead) and len(module.projector.heads) == 2
    w0, w1 = (next(h.parameters()) for h in module.projector.heads)
    assert w0.data_ptr() != w1.data_ptr() and not torch.equal(w0, w1)  # independent weights
    phi_w = module.amcl_phi.net[0].weight
    assert not torch.equal(phi_w, before["amcl_phi.net.0.weight"])  # the optimizer trains phi
    assert any(not torch.equal(v, before[f"backbone.{k}"]) for k, v in module.backbone.state_dict().items())
    assert all(torch.isfinite(p).all() for p in module.parameters())
    x = torch.randn(4, 1, 8, 8)
    assert module.eval()(x).shape == (4, module.feat_dim)  # evaluation reads the backbone, not the heads
    if name == "moco":  # one queue per head, advanced once per step by the batch's keys
        assert module.queue.shape == (64, 2, 16)
        assert int(module.queue_ptr) == (3 * 32) % 64
        assert torch.allclose(module.queue.norm(dim=-1), torch.ones(64, 2), atol=1e-4)
        assert not torch.equal(module.queue[:, 1], before["queue"][:, 1])
    if name == "simsiam":
        assert isinstance(module.predictor, MultiHead)


def test_phi_with_its_own_lr_has_its_own_adam_outside_the_main_optimiser_and_its_clip(tmp_path):
    """amcl.phi_lr: phi's parameters leave the main (LARS) optimiser, so neither its weight decay nor the
    gradient clip touches them, and an Adam of that lr trains them."""
    from tests.test_methods import fit

    cfg = tiny_config("barlow", "amcl.enabled=true", "amcl.heads=2", "amcl.phi_lr=0.01", "optim.name=lars",
                      "optim.grad_clip=1.0")
    module, before, trainer = fit(cfg, tmp_path, steps=3)
    main, *rest = trainer.optimizers
    phi_ids = {id(p) for p in module.amcl_phi.parameters()}
    assert not phi_ids & {id(p) for g in main.param_groups for p in g["params"]}
    own = [o for o in rest if {id(p) for g in o.param_groups for p in g["params"]} == phi_ids]
    assert len(own) == 1 and isinstance(own[0], torch.optim.Adam) and own[0].param_groups[0]["lr"] == 0.01
    assert not own[0].param_groups[0]["weight_decay"]
    assert not torch.equal(module.amcl_phi.net[0].weight, before["amcl_phi.net.0.weight"])  # its Adam trains phi
    default = tiny_config("barlow", "amcl.enabled=true", "amcl.heads=2")
    module, _, trainer = fit(default, tmp_path / "default", steps=1)
    assert phi_ids and {id(p) for p in module.amcl_phi.parameters()} <= {
        id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]}  # null: the main optimiser


def test_amcl_off_leaves_the_method_unchanged():
    from sharpshift.data.registry import load_dataset
    from sharpshift.train import build_module

    cfg = tiny_config("moco")
    module = build_module(cfg, load_dataset("digits", "train"))
    assert not hasattr(module, "amcl_phi") and module.queue.shape == (64, 16)
    assert not any(k.startswith("amcl") for k in module.state_dict())


@pytest.mark.parametrize("overrides", [["method.name=byol"], ["rsa.enabled=true"]])
def test_unsupported_combinations_are_refused(overrides):
    from sharpshift.data.registry import load_dataset
    from sharpshift.train import build_module

    cfg = tiny_config("simclr", "amcl.enabled=true", *overrides)
    with pytest.raises(UserError, match="amcl"):
        build_module(cfg, load_dataset("digits", "train"))


@pytest.mark.parametrize("override", ["amcl.heads=0", "amcl.tau_min=3", "amcl.topk=0", "amcl.beta=-1", "amcl.phi_lr=0"])
def test_config_rejects_impossible_values(override):
    with pytest.raises(UserError, match="amcl"):
        load_config(None, [override])


def test_default_beta_per_method_and_override():
    cfg = load_config(None, ["amcl.enabled=true", "amcl.form=official"]).amcl
    assert cfg.heads == 3 and (cfg.tau_min, cfg.tau_max) == (1e-5, 2.0) and cfg.topk == 100
    assert [cfg.resolved_beta(m) for m in ("simclr", "moco", "simsiam", "barlow")] == [1e-4, 1e-4, 1e-4, 1e-6]
    adaptive = load_config(None, ["amcl.enabled=true"]).amcl  # the default form: the fit's weight is 1
    assert adaptive.form == "adaptive" and adaptive.resolved_beta("barlow") == 1.0
    assert (adaptive.resolved_delta("simclr"), adaptive.resolved_delta("barlow")) == (0.1, 1.0)
    assert load_config(None, ["amcl.beta=0.5"]).amcl.resolved_beta("barlow") == 0.5


@pytest.mark.parametrize("name", ["amcl-simclr", "amcl-moco", "amcl-barlow", "amcl-simsiam"])
def test_shipped_configs_turn_amcl_on(name):
    cfg = load_config(name)
    assert cfg.amcl.enabled and cfg.method.name == name.split("-")[1]


def test_similarity_histograms_per_head(tmp_path):
    from sharpshift.diagnostics.amcl_similarity import auc, head_similarities, plot_histograms
    from sharpshift.data.registry import load_dataset
    from sharpshift.train import build_module

    assert auc(torch.tensor([2.0, 3.0]), torch.tensor([0.0, 1.0, 2.5])) == pytest.approx(5 / 6)
    cfg = tiny_config("simclr", "amcl.enabled=true")
    data = load_dataset("digits", "train")
    heads = head_similarities(build_module(cfg, data), data.images[:20])
    assert len(heads) == 3 and heads[0]["pos"].shape == (20,) and heads[0]["neg"].shape == (20 * 19,)
    plot_histograms({"amcl": heads}, tmp_path / "h.png")
    assert (tmp_path / "h.png").stat().st_size > 1000


def test_cli_registers_the_histogram_command():
    from typer.testing import CliRunner

    from sharpshift.cli import app

    r = CliRunner().invoke(app, ["diagnose", "amcl", "--help"])
    assert r.exit_code == 0 and "histogram" in r.output


def test_separation_summary_is_over_heads_so_one_head_and_three_compare():
    from sharpshift.diagnostics.amcl_similarity import summary

    def head(sep, pos):
        return {"pos": torch.zeros(2), "neg": torch.zeros(2), "separation": sep, "pos_mean": pos, "neg_mean": 0.1,
                "pos_below_0.5": 0.25}
    three = summary([head(0.9, 0.8), head(0.7, 0.6), head(0.8, 0.7)])
    assert three["heads"] == 3 and three["separation_mean"] == pytest.approx(0.8)
    assert (three["separation_min"], three["separation_max"]) == (0.7, 0.9) and three["pos_mean"] == pytest.approx(0.7)
    assert "pos" not in three["per_head"][0] and len(three["per_head"]) == 3
    one = summary([head(0.75, 0.5)])
    assert one["heads"] == 1 and one["separation_mean"] == one["separation_min"] == 0.75


def test_diagnose_amcl_writes_each_runs_separation_into_its_folder(tmp_path, monkeypatch):
    """The grid's "separation" diagnostic: `diagnose amcl RUN --no-plot` writes RUN/amcl_similarity.json (the
    AUC of positive over negative similarities per head, and their mean), and no plot."""
    from typer.testing import CliRunner

    from sharpshift.bench.grid import DIAGNOSTICS
    from sharpshift.cli import app
    from sharpshift.diagnostics.amcl_similarity import FILE, auc, run_similarities
    from sharpshift.train import pretrain

    monkeypatch.chdir(tmp_path)
    runs = {name: pretrain(tiny_config("simclr", "trainer.precision=32", f"out_dir={tmp_path / name}", *extra))
            for name, extra in (("amcl", ("amcl.enabled=true", "optim.grad_clip=1.0")), ("base", ()))}
    command, args, out = DIAGNOSTICS["separation"]
    for name, run in runs.items():
        r = CliRunner().invoke(app, [*command, str(run), *args, "--images", "64"])
        assert r.exit_code == 0, r.output
        fig = json.loads((run / out).read_text())
        heads = run_similarities(run, 64)  # the same test images and views (seeded): the same figures
        assert out == FILE and fig["heads"] == (3 if name == "amcl" else 1) == len(heads)
        assert [h["separation"] for h in fig["per_head"]] == pytest.approx([auc(h["pos"], h["neg"]) for h in heads])
        assert fig["separation_mean"] == pytest.approx(sum(h["separation"] for h in heads) / len(heads))
    assert not list(tmp_path.glob("*.png"))
