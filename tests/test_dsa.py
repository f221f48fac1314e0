"""DSA: outlier scores, the learned relation, both loss terms and the regulariser in every method.

Reference implementations below are slow loops written from the official code / the formulas."""
import math

import pytest
import torch
import torch.nn.functional as F

from sharpshift.dsa.adjuster import PairAdjuster, cross_pair_l1, self_pair_l1
from sharpshift.dsa.loss import PAIRS, prior_relations, relation_regulariser, weighted_relation_loss
from sharpshift.dsa.outliers import good_neighbour_scores
from sharpshift.errors import UserError
from tests.conftest import tiny_config


# --- outlier scores ---------------------------------------------------------------------------------
def slow_good_neighbours(u, eta, mu):
    """The official triple loop (methods/dsa.py get_goodneighbor), self excluded explicitly."""
    z = F.normalize(u, dim=1)
    sim = z @ z.T
    sim.fill_diagonal_(-float("inf"))
    nb = {i: sim[i].topk(eta).indices.tolist() for i in range(len(u))}
    s = torch.zeros(len(u))
    for i in range(len(u)):
        good = sum(1 for j in nb[i] if sum(1 for l in nb[j] if i in nb[l]) > mu)
        s[i] = good / eta
    return s


def test_isolated_outlier_scores_zero_and_cluster_member_one():
    g = torch.Generator().manual_seed(0)
    eta = 20
    centre = torch.tensor([1.0, 0.0, 0.0])
    cluster = centre + 0.01 * torch.randn(eta + 1, 3, generator=g)  # 21 members: each one's 20 neighbours
    outlier = torch.tensor([[0.0, 1.0, 0.0]])  # far away, in nobody's neighbourhood
    s = good_neighbour_scores(torch.cat([cluster, outlier]), eta=eta, mu=1)
    assert torch.all(s[:-1] == 1.0)
    assert s[-1] == 0.0


def test_good_neighbours_match_the_official_loop():
    u = torch.randn(60, 8, generator=torch.Generator().manual_seed(1))
    for eta, mu in [(20, 1), (5, 0), (10, 3)]:
        assert torch.equal(good_neighbour_scores(u, eta, mu), slow_good_neighbours(u, eta, mu))


# --- the learned relation ---------------------------------------------------------------------------
def slow_relation(adj: PairAdjuster, h_a, h_b):
    """The official construction: all N^2 differences, L1-normalised per feature, scored, rows normalised."""
    n = len(h_a)
    delta = torch.cat([h_a[i].expand(len(h_b), -1) - h_b for i in range(n)])
    if adj.pair_norm == "l1":
        delta = F.normalize(delta, dim=0, p=1)
    score = F.relu(adj.second(F.relu(adj.first(delta)))).view(n, len(h_b))
    return F.normalize(score, dim=1, p=1)


def test_pair_l1_sums_match_brute_force():
    g = torch.Generator().manual_seed(2)
    a, b = torch.randn(13, 5, generator=g), torch.randn(13, 5, generator=g)
    brute_self = (a.unsqueeze(1) - a.unsqueeze(0)).abs().sum((0, 1))
    brute_cross = (a.unsqueeze(1) - b.unsqueeze(0)).abs().sum((0, 1))
    assert torch.allclose(self_pair_l1(a), brute_self, rtol=1e-5)
    assert torch.allclose(cross_pair_l1(a, b), brute_cross, rtol=1e-5)


@pytest.mark.parametrize("pair_norm", ["l1", "none"])
def test_relation_matches_official_construction_and_rows_sum_to_one(pair_norm):
    torch.manual_seed(3)
    adj = PairAdjuster(6, 8, pair_norm=pair_norm)
    h0, h1 = torch.randn(12, 6), torch.randn(12, 6)
    for a, b in [(h0, h0), (h0, h1), (h1, h0)]:
        m = adj(a, b)
        assert torch.allclose(m, slow_relation(adj, a, b), atol=1e-6)
        assert (m >= 0).all()
        assert torch.allclose(m.sum(1), torch.ones(12), atol=1e-5)


def test_chunked_relation_and_its_gradients_equal_plain_autograd():
    torch.manual_seed(4)
    adj = PairAdjuster(6, 8, chunk_mb=1e-5)  # one row per chunk, activations recomputed in the backward
    assert adj.rows_per_chunk(20) == 1 and PairAdjuster(6, 64).rows_per_chunk(1024) == 256
    h = torch.randn(20, 6)
    weights = torch.randn(20, 20)
    results = []
    for relation in (adj, lambda a, b: slow_relation(adj, a, b)):
        adj.zero_grad()
        x = h.clone().requires_grad_()
        m = relation(x, x * 0.5 + 1)
        (m * weights).sum().backward()
        results.append((m.detach(), x.grad, adj.first.weight.grad.clone(), adj.first.bias.grad.clone(),
                        adj.second.weight.grad.clone(), adj.second.bias.grad.clone()))
    for ours, plain in zip(*results):
        assert torch.allclose(ours, plain, atol=1e-5, rtol=1e-4)


def test_l1_relation_ignores_per_feature_affine_maps():
    """Why BN(h) (the paper) and h (ours) give the adjuster the same input."""
    torch.manual_seed(5)
    adj = PairAdjuster(6, 8)
    h0, h1 = torch.randn(10, 6), torch.randn(10, 6)
    gamma, beta = torch.rand(6) + 0.1, torch.randn(6)
    assert torch.allclose(adj(h0, h1), adj(h0 * gamma + beta, h1 * gamma + beta), atol=1e-5)


# --- the two loss terms -----------------------------------------------------------------------------
def test_weighted_loss_equals_hand_computation():
    e1, e2 = [1.0, 0.0], [0.0, 1.0]
    h0, h1 = torch.tensor([e1, e2]), torch.tensor([e2, e1])
    half, eye = torch.full((2, 2), 0.5), torch.eye(2)
    s = torch.tensor([1.0, 0.5])
    # M = 1/2 everywhere: every exponent is 0, so each term is 1 except the two masked diagonals
    assert torch.isclose(weighted_relation_loss(h0, h1, [half] * 4, s, 0.5), torch.tensor(math.log(1.75)))
    # cross relations = identity: the (i, i) pairs are sqrt(2) apart and get exponent s_i * sqrt(2) / 0.5
    r2 = math.sqrt(2)
    cross = (math.exp(2 * r2) + 1 + 1 + math.exp(r2)) / 4
    expect = math.log(1 + (0.5 + 0.5 + cross + cross) / 4)
    assert torch.isclose(weighted_relation_loss(h0, h1, [half, half, eye, eye], s, 0.5), torch.tensor(expect))


def slow_weighted_loss(h0, h1, rel, s, t):
    h = [F.normalize(h0, dim=1), F.normalize(h1, dim=1)]
    n, total = len(h0), 0.0
    for (a, b), m in zip(PAIRS, rel):
        acc = 0.0
        for i in range(n):
            for j in range(n):
                if a == b and i == j:
                    continue  # exp(-1e9) = 0, still counted in the mean
                d = float((h[a][i] - h[b][j]).norm())
                acc += math.exp(float(s[i]) * d * (2 * float(m[i, j]) - 1) / t)
        total += acc / n**2
    return math.log(1 + total / 4)


def test_weighted_loss_matches_loop_on_random_tensors():
    g = torch.Generator().manual_seed(6)
    h0, h1 = torch.randn(7, 4, generator=g), torch.randn(7, 4, generator=g)
    rel = [torch.rand(7, 7, generator=g) for _ in range(4)]
    s = torch.rand(7, generator=g)
    assert math.isclose(float(weighted_relation_loss(h0, h1, rel, s, 0.3)), slow_weighted_loss(h0, h1, rel, s, 0.3),
                        rel_tol=1e-5)


def test_regulariser_and_prior_relations_equal_hand_computation():
    half, eye, zero = torch.full((2, 2), 0.5), torch.eye(2), torch.zeros(2, 2)
    reg = relation_regulariser([half, half, eye, eye], [zero] * 4)
    assert torch.isclose(reg, torch.tensor(2 * 1.0 + 2 * math.sqrt(2)))
    u0, u1 = torch.tensor([[2.0, 0.0], [0.0, 3.0]]), torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    m00, m11, m01, m10 = prior_relations(u0, u1, tau=0.5)
    far = math.exp(-math.sqrt(2) / 0.5)
    assert torch.allclose(m00, torch.tensor([[1.0, far], [far, 1.0]]), atol=1e-5)
    assert torch.allclose(m11, torch.ones(2, 2), atol=1e-5)
    assert torch.allclose(m01, torch.tensor([[1.0, 1.0], [far, far]]), atol=1e-5)
    assert torch.allclose(m10, m01.T, atol=1e-5)


# --- the regulariser in every method ----------------------------------------------------------------
def _fit(cfg, tmp_path, steps=2):
    from tests.test_methods import fit

    return fit(cfg, tmp_path, steps=steps)


def _one_step(method, prior, *overrides):
    """compute_loss + every regulariser + backward, as the training closure does, without a Trainer."""
    from sharpshift.data.registry import load_dataset
    from sharpshift.steps import StepContext
    from sharpshift.train import build_module

    cfg = tiny_config(method, "dsa.enabled=true", f"dsa.prior={prior}", *overrides)
    train = load_dataset("digits", "train")
    torch.manual_seed(0)  # the same adjuster and heads for every call
    module = build_module(cfg, train)
    images = train.images[:32]
    ctx = StepContext(images, train.labels[:32], torch.arange(32), module.views(images), 0, 0)
    out = module.objective(ctx)
    base = out.loss.detach().clone()
    out.add(module.regularisers[0](module, ctx, out))
    out.loss.backward()
    return module, out, base


@pytest.mark.parametrize("method, prior", [("simclr", "random"), ("moco", "ema"), ("barlow", "random")])
def test_dsa_adds_its_terms_to_every_method(method, prior):
    module, out, base = _one_step(method, prior)
    reg = module.regularisers[0]
    assert torch.isclose(out.loss, base + out.terms["dsa_w"] + out.terms["dsa_reg"])
    assert 0 < float(reg.stats["dsa/s_mean"]) <= 1 and float(reg.stats["dsa/m_max"]) > 0
    grad = reg.adjuster.first.weight.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0  # the adjuster learns
    assert module.backbone.features[0].weight.grad.abs().sum() > 0
    if prior == "random":  # the frozen prior does not
        assert all(p.grad is None and not p.requires_grad for p in reg.prior.parameters())


def test_lambdas_default_to_1_and_0_01_and_scale_the_terms():
    from sharpshift.config import load_config

    cfg = load_config("simclr").dsa
    assert (cfg.weight, cfg.reg_weight) == (1.0, 0.01)
    _, unit, _ = _one_step("simclr", "random", "dsa.weight=1", "dsa.reg_weight=1")
    _, scaled, _ = _one_step("simclr", "random", "dsa.weight=2", "dsa.reg_weight=0.01")
    assert float(unit.terms["dsa_w"]) > 0 and float(unit.terms["dsa_reg"]) > 0
    assert torch.isclose(scaled.terms["dsa_w"], 2 * unit.terms["dsa_w"])
    assert torch.isclose(scaled.terms["dsa_reg"], 0.01 * unit.terms["dsa_reg"])


def test_dsa_trains_byol_with_its_momentum_encoder_as_prior(tmp_path):
    module, before, trainer = _fit(tiny_config("byol", "dsa.enabled=true", "dsa.prior=ema"), tmp_path)
    reg = module.regularisers[0]
    assert trainer.global_step == 2 and reg.prior.net is None  # the prior is the method's target_backbone
    assert not torch.equal(reg.adjuster.first.weight, before["regularisers.0.adjuster.first.weight"])


def test_checkpoint_prior_uses_its_own_normalisation_and_caches_originals(tmp_path):
    from sharpshift.data.registry import load_dataset
    from sharpshift.export import export_backbone
    from sharpshift.steps import StepContext
    from sharpshift.models import backbone_arch, build_backbone
    from sharpshift.train import build_module

    torch.manual_seed(7)
    prior_net = build_backbone("convnet", 1, 8).eval()
    arch = dict(backbone_arch("convnet", 1, 8, True), mean=[0.2], std=[0.4])
    export_backbone(prior_net, arch, tmp_path / "prior")
    cfg = tiny_config("simclr", "dsa.enabled=true", f"dsa.prior_path={tmp_path / 'prior'}")
    train = load_dataset("digits", "train")
    module = build_module(cfg, train)
    reg = module.regularisers[0]
    images, idx = train.images[:32], torch.arange(32)
    ctx = StepContext(images, train.labels[:32], idx, module.views(images), 0, 0)
    calls = []
    reg.prior.net.register_forward_hook(lambda m, i, o: calls.append(len(i[0])))
    u_orig, u0, _ = reg.prior_features(module, ctx)
    with torch.no_grad():
        expect = prior_net((images.float() / 255 - 0.2) / 0.4)
        unit0 = ctx.views[0] * module.views.std + module.views.mean
        expect0 = prior_net((unit0 - 0.2) / 0.4)
    assert torch.allclose(u_orig, expect, atol=1e-4) and torch.allclose(u0, expect0, atol=1e-4)
    again, _, _ = reg.prior_features(module, ctx)
    assert calls == [3 * 32, 2 * 32]  # the second time the originals come from the cache
    assert torch.equal(again, u_orig)


def test_dsa_config_errors_are_one_line():
    from sharpshift.config import load_config
    from sharpshift.data.registry import load_dataset
    from sharpshift.train import build_module

    with pytest.raises(UserError, match="dsa.prior_path"):
        load_config("simclr", ["dsa.enabled=true"])
    with pytest.raises(UserError, match="dsa.prior"):
        load_config("simclr", ["dsa.prior=imagenet"])
    for overrides, fragment in [(["dsa.prior=ema"], "no momentum encoder"),
                                (["dsa.prior=random", "dsa.neighbours=40"], "data.batch_size > 40")]:
        cfg = tiny_config("simclr", "dsa.enabled=true", *overrides)
        with pytest.raises(UserError, match=fragment):
            build_module(cfg, load_dataset("digits", "train"))


def test_uniform_control_is_lw_with_m_one_over_n_and_s_one():
    """dsa.form=uniform: L_w with every relation 1/N and every outlier score 1 (a loop over the pairs with those
    weights), no regulariser, and no gradient on the adjuster (nothing is learned)."""
    module, out, _ = _one_step("simclr", "random", "dsa.form=uniform")
    h = [F.normalize(p.detach().double(), dim=1) for p in out.proj[:2]]
    n, t = len(h[0]), module.cfg.dsa.temperature
    total = 0.0
    for a, b in ((0, 0), (1, 1), (0, 1), (1, 0)):  # the four relation pairs; weight 2 M - 1 = 2/N - 1
        for i in range(n):
            for j in range(n):
                if a != b or i != j:
                    total += math.exp(float((h[a][i] - h[b][j]).norm()) * (2.0 / n - 1) / t) / n ** 2
    reg = module.regularisers[0]
    assert float(out.terms["dsa_reg"]) == 0.0
    assert reg.adjuster.first.weight.grad is None
    assert float(reg.stats["dsa/m_max"]) == pytest.approx(1.0 / n) and float(reg.stats["dsa/s_mean"]) == 1.0
    assert float(out.terms["dsa_w"].detach()) == pytest.approx(module.cfg.dsa.weight * math.log1p(total / 4), rel=1e-5)
