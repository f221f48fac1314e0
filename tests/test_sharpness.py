"""SAM/ASAM stepper, SAF/MESA regularisers: formulas against loops written from the papers, and the
once-per-step invariants (one optimizer step, BN statistics, EMA targets, queues, schedules)."""
import copy
import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from sharpshift.errors import UserError
from sharpshift.methods import METHODS
from sharpshift.steps import StepOutput
from sharpshift.config.sharpness import MESAConfig, SAFConfig, SAMConfig
from sharpshift.sharpness.sam import SAMStepper, frozen_bn_stats, sam_perturbation
from sharpshift.sharpness.trajectory import SAF, ema_parameters_and_buffers, trajectory_kl
from tests.conftest import tiny_config
from tests.test_methods import fit


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def fit_epochs(cfg, root, n_images=256, ckpt_path=None, **trainer_kw):
    """Fit on the first n_images digits (so that an epoch is a few steps)."""
    from sharpshift.data.loader import PretrainData
    from sharpshift.data.registry import load_dataset
    from sharpshift.train import build_module, build_trainer

    train = load_dataset("digits", "train").subset(n_images, seed=0)
    module = build_module(cfg, train)
    trainer = build_trainer(cfg, root, logger=False, **trainer_kw)
    trainer.fit(module, datamodule=PretrainData(train, cfg.data.batch_size, cfg.seed), ckpt_path=ckpt_path)
    return module, trainer


# --- the perturbation ----------------------------------------------------------------------------

def test_sam_perturbation_is_rho_g_over_norm():
    g = torch.Generator().manual_seed(0)
    params = [torch.randn(3, 4, generator=g), torch.randn(5, generator=g)]
    grads = [torch.randn(3, 4, generator=g), torch.randn(5, generator=g)]
    eps = sam_perturbation(params, grads, rho=0.05)
    total = math.sqrt(sum(float(x) ** 2 for gr in grads for x in gr.flatten()))
    for e, gr in zip(eps, grads):
        for a, b in zip(e.flatten().tolist(), gr.flatten().tolist()):
            assert a == pytest.approx(0.05 * b / total, rel=1e-5)
    assert math.sqrt(sum(float((e ** 2).sum()) for e in eps)) == pytest.approx(0.05, rel=1e-6)


def test_asam_perturbation_formula():
    """Kwon et al.: eps = rho T^2 g / ||T g||, T = |w| + eta for weights, T = 1 for biases (official code)."""
    g = torch.Generator().manual_seed(1)
    w, b = torch.randn(2, 3, generator=g), torch.randn(2, generator=g)
    gw, gb = torch.randn(2, 3, generator=g), torch.randn(2, generator=g)
    rho, eta = 0.5, 0.01
    tg = [(abs(float(wi)) + eta) * float(gi) for wi, gi in zip(w.flatten(), gw.flatten())] + gb.tolist()
    n = math.sqrt(sum(x * x for x in tg))
    expect_w = [rho * (abs(float(wi)) + eta) ** 2 * float(gi) / n for wi, gi in zip(w.flatten(), gw.flatten())]
    expect_b = [rho * float(gi) / n for gi in gb]
    eps = sam_perturbation([w, b], [gw, gb], rho, adaptive=True, eta=eta, scaled=[True, False])
    assert eps[0].flatten().tolist() == pytest.approx(expect_w, rel=1e-5)
    assert eps[1].tolist() == pytest.approx(expect_b, rel=1e-5)


def test_zero_gradient_gives_no_perturbation():
    p = [torch.ones(3)]
    assert torch.equal(sam_perturbation(p, [torch.zeros(3)], 0.05)[0], torch.zeros(3))
    assert torch.equal(sam_perturbation(p, [torch.full((3,), float("nan"))], 0.05)[0], torch.zeros(3))


# --- the stepper on a tiny model, without Lightning ------------------------------------------------

class TinyMethod(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.backbone = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU())
        self.projector = nn.Linear(6, 3)
        self.cfg = SimpleNamespace(optim=SimpleNamespace(grad_clip=0.0))
        self.grad_norms: list[torch.Tensor] = []
        self.x = torch.randn(8, 4)
        self.seen: list[dict] = []  # parameters as each closure call saw them

    def manual_backward(self, loss):
        loss.backward()

    def closure(self):
        self.seen.append({k: v.detach().clone() for k, v in self.named_parameters()})
        z = self.projector(self.backbone(self.x))
        return StepOutput((z.sin() ** 2).mean() + (z[:, 0] * z[:, 1]).mean())

    def loss_at(self, params: dict) -> torch.Tensor:
        """The same loss on a copy with the given parameters (BN in train mode, as in the closure)."""
        twin = copy.deepcopy(self)
        twin.load_state_dict({**twin.state_dict(), **params})
        z = twin.projector(twin.backbone(self.x))
        return (z.sin() ** 2).mean() + (z[:, 0] * z[:, 1]).mean(), twin


class CountingSGD(torch.optim.SGD):
    steps = 0

    def step(self, closure=None):
        self.steps += 1
        return super().step(closure)


def grads_at(method: TinyMethod, params: dict) -> dict:
    loss, twin = method.loss_at(params)
    loss.backward()
    return {k: p.grad.clone() for k, p in twin.named_parameters()}


@pytest.mark.parametrize("perturb", ["extractor", "all"])
def test_sam_step_perturbs_then_descends_with_the_perturbed_gradient(perturb):
    m = TinyMethod()
    theta = {k: v.detach().clone() for k, v in m.named_parameters()}
    lr, rho = 0.1, 0.05
    opt = CountingSGD(m.parameters(), lr=lr)
    SAMStepper(SAMConfig(enabled=True, rho=rho, perturb=perturb))(m, opt, m.closure)
    assert opt.steps == 1 and len(m.seen) == 2
    # the second pass saw theta + rho g / ||g||, g restricted to the perturbed parameters
    g = grads_at(m, theta)
    keys = [k for k in theta if perturb == "all" or k.startswith("backbone.")]
    g_norm = math.sqrt(sum(float((g[k] ** 2).sum()) for k in keys))
    for k in theta:
        expect = theta[k] + rho * g[k] / g_norm if k in keys else theta[k]
        assert torch.allclose(m.seen[1][k], expect, atol=1e-7), k
    # the update is theta - lr * grad L(theta + eps)
    g_pert = grads_at(m, m.seen[1])
    for k, p in m.named_parameters():
        assert torch.allclose(p.detach(), theta[k] - lr * g_pert[k], atol=1e-6), k


@pytest.mark.parametrize("adaptive", [False, True])
def test_sam_restores_parameters_bit_for_bit(adaptive):
    m = TinyMethod()
    theta = {k: v.detach().clone() for k, v in m.named_parameters()}
    opt = CountingSGD(m.parameters(), lr=0.0)  # lr 0: the step changes nothing, so only the restore remains
    # a large rho, so that theta + eps - eps would differ from theta in the last bits
    SAMStepper(SAMConfig(enabled=True, rho=3.0, adaptive=adaptive, perturb="all"))(m, opt, m.closure)
    assert not torch.equal(m.seen[1]["backbone.0.weight"], theta["backbone.0.weight"])
    for k, p in m.named_parameters():
        assert torch.equal(p.detach(), theta[k]), k


def test_sam_under_bf16_autocast():
    """Tiny tensors only (bf16 is slow on this CPU): fp32 parameters, an fp32 eps, an exact restore."""
    m = TinyMethod()
    theta = {k: v.detach().clone() for k, v in m.named_parameters()}
    opt = CountingSGD(m.parameters(), lr=0.0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = SAMStepper(SAMConfig(enabled=True, rho=0.05))(m, opt, m.closure)
    assert out.loss.dtype == torch.bfloat16 and opt.steps == 1
    moved = m.seen[1]["backbone.0.weight"] - theta["backbone.0.weight"]
    assert moved.dtype == torch.float32 and 0 < float(moved.norm()) <= 0.05 + 1e-6
    for k, p in m.named_parameters():
        assert p.dtype == torch.float32 and torch.equal(p.detach(), theta[k]), k


def test_sam_clips_the_descent_gradient():
    """optim.grad_clip acts on the gradient taken at theta + eps, just before the step."""
    m = TinyMethod()
    m.cfg.optim.grad_clip = 1e-3  # far below the gradient's norm, so the clip binds
    clipped = []

    def clip_gradients(opt, gradient_clip_val, gradient_clip_algorithm):
        clipped.append(gradient_clip_val)
        torch.nn.utils.clip_grad_norm_(m.parameters(), gradient_clip_val)

    m.clip_gradients = clip_gradients
    theta = {k: v.detach().clone() for k, v in m.named_parameters()}
    lr = 0.1
    SAMStepper(SAMConfig(enabled=True, rho=0.05))(m, CountingSGD(m.parameters(), lr=lr), m.closure)
    g_pert = grads_at(m, m.seen[1])
    total = math.sqrt(sum(float((g ** 2).sum()) for g in g_pert.values()))
    assert clipped == [1e-3] and total > 1e-2 and [float(n) for n in m.grad_norms] == [pytest.approx(total, rel=1e-5)]
    for k, p in m.named_parameters():
        assert torch.allclose(p.detach(), theta[k] - lr * g_pert[k] * (1e-3 / total), atol=1e-7), k


def test_sam_restores_parameters_when_the_second_pass_fails():
    m = TinyMethod()
    theta = {k: v.detach().clone() for k, v in m.named_parameters()}
    stats = m.backbone[1].running_mean.clone()
    original = m.closure

    def failing():
        out = original()
        if len(m.seen) == 2:
            raise FloatingPointError("non-finite loss")  # as trainer.on_nonfinite=skip does
        return out

    with pytest.raises(FloatingPointError):
        SAMStepper(SAMConfig(enabled=True, rho=3.0))(m, CountingSGD(m.parameters(), lr=0.1), failing)
    for k, p in m.named_parameters():
        assert torch.equal(p.detach(), theta[k]), k
    assert not torch.equal(m.backbone[1].running_mean, stats)  # the first pass's update stays


def test_sam_second_pass_leaves_bn_statistics_alone():
    m = TinyMethod()
    ref = copy.deepcopy(m)
    ref.closure()  # one forward at theta: what the running statistics should be after the step
    SAMStepper(SAMConfig(enabled=True, rho=0.5))(m, CountingSGD(m.parameters(), lr=0.1), m.closure)
    bn, bn_ref = m.backbone[1], ref.backbone[1]
    assert torch.equal(bn.running_mean, bn_ref.running_mean) and torch.equal(bn.running_var, bn_ref.running_var)
    assert int(bn.num_batches_tracked) == 1


def test_frozen_bn_stats_restores_on_error():
    bn = nn.BatchNorm1d(3)
    with pytest.raises(RuntimeError), frozen_bn_stats(bn):
        bn(torch.randn(5, 3) + 4)
        raise RuntimeError
    assert torch.equal(bn.running_mean, torch.zeros(3)) and int(bn.num_batches_tracked) == 0


# --- SAM inside Lightning's manual optimisation ----------------------------------------------------

@pytest.mark.parametrize("name,extra", [("simclr", ["optim.grad_clip=1.0"]), ("byol", ["sam.adaptive=true"]),
                                        ("moco", ["sam.perturb=all"])])
def test_sam_in_lightning_advances_everything_once_per_step(name, extra, tmp_path, monkeypatch):
    calls = []
    original = METHODS[name].after_optimizer_step

    def counting(self, ctx, out):
        calls.append(self.global_step)
        return original(self, ctx, out)

    monkeypatch.setattr(METHODS[name], "after_optimizer_step", counting)
    closures = []
    original_compute = METHODS[name].compute_loss
    monkeypatch.setattr(METHODS[name], "compute_loss", lambda self, ctx: closures.append(1) or original_compute(self, ctx))
    module, before, trainer = fit(tiny_config(name, "sam.enabled=true", *extra), tmp_path, steps=3)
    assert isinstance(module.stepper, SAMStepper)
    assert trainer.global_step == 3 and len(calls) == 3 and len(closures) == 6
    assert trainer.lr_scheduler_configs[0].scheduler.last_epoch == 3  # the LR schedule stepped once per step
    if name == "moco":
        assert int(module.queue_ptr) == (3 * 32) % 64  # one batch of keys per step, not two
    for p in module.parameters():
        assert torch.isfinite(p).all()


@pytest.mark.parametrize("name", sorted(METHODS))
def test_sam_saf_and_mesa_together_with_every_base_method(name, tmp_path, monkeypatch):
    """One config key each, on any base method: 2 epochs of 2 steps, SAF's term on in the second."""
    from sharpshift.sharpness.trajectory import MESA

    on = []  # (epoch, term, value) of every term added; SAM calls the closure twice per step

    def spy(cls, key):
        original = cls.forward

        def forward(self, method, ctx, out):
            terms = original(self, method, ctx, out)
            if key in terms:
                on.append((ctx.epoch, key, float(terms[key].detach())))
            return terms

        monkeypatch.setattr(cls, "forward", forward)

    spy(SAF, "saf")
    spy(MESA, "mesa")
    cfg = tiny_config(name, "sam.enabled=true", "saf.enabled=true", "saf.epochs_ago=1", "mesa.enabled=true",
                      "mesa.start_epoch=0", "trainer.max_epochs=2", "trainer.max_steps=-1")
    module, trainer = fit_epochs(cfg, tmp_path, n_images=64, enable_checkpointing=False, callbacks=[])
    assert isinstance(module.stepper, SAMStepper) and trainer.global_step == 4
    assert sorted((e, k) for e, k, _ in on) == [(0, "mesa")] * 2 * 2 + [(1, "mesa")] * 2 * 2 + [(1, "saf")] * 2 * 2
    assert all(math.isfinite(v) and v >= 0 for _, _, v in on)
    assert all(torch.isfinite(p).all() for p in module.parameters())


def test_saf_and_mesa_read_every_amcl_head(tmp_path):
    """AMCL's projector gives (n, C, d): SAF stores every head and MESA's teacher (a copy of that projector)
    is compared head by head, not with head 0's `proj` alone."""
    from sharpshift.steps import StepContext

    cfg = tiny_config("simclr", "amcl.enabled=true", "amcl.heads=3", "saf.enabled=true", "saf.epochs_ago=1",
                      "mesa.enabled=true", "mesa.start_epoch=0", "trainer.max_epochs=2", "trainer.max_steps=-1")
    module, trainer = fit_epochs(cfg, tmp_path, n_images=64, enable_checkpointing=False, callbacks=[])
    saf, mesa = module.regularisers
    assert trainer.global_step == 4 and saf.past.shape == (64, 2, 3, 16) and int(saf.written.max()) == 1
    images = (torch.rand(8, 1, 8, 8) * 255).to(torch.uint8)
    ctx = StepContext(images, torch.full((8,), -1), torch.arange(8), module.views(images), step=4, epoch=1)
    out = module.objective(ctx)
    assert out.extra["heads"][0].shape == (8, 3, 16) and set(saf(module, ctx, out)) == {"saf"}
    assert set(mesa(module, ctx, out)) == {"mesa"}


def test_sam_checkpoint_resume(tmp_path):
    cfg = tiny_config("simclr", "sam.enabled=true", "saf.enabled=true", "saf.epochs_ago=1", "saf.start_epoch=1",
                      "data.batch_size=64", "trainer.max_epochs=3", "trainer.max_steps=-1")
    fit_epochs(cfg, tmp_path, max_epochs=2)  # 4 steps per epoch
    second, trainer = fit_epochs(cfg, tmp_path / "resumed", ckpt_path=tmp_path / "checkpoints" / "last.ckpt")
    assert trainer.global_step == 12
    saf = second.regularisers[0]
    assert saf.past.shape[0] >= 250 and int(saf.written.max()) == 2 and int(saf.written[saf.written >= 0].min()) == 1


# --- SAF ---------------------------------------------------------------------------------------------

def test_trajectory_kl_matches_hand_computation():
    g = torch.Generator().manual_seed(2)
    now, past, tau = torch.randn(4, 5, generator=g), torch.randn(4, 5, generator=g), 5.0
    total = 0.0
    for i in range(4):
        p = [math.exp(float(v) / tau) for v in past[i]]
        q = [math.exp(float(v) / tau) for v in now[i]]
        p = [x / sum(p) for x in p]
        q = [x / sum(q) for x in q]
        total += sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
    assert float(trajectory_kl(now, past, tau)) == pytest.approx(tau**2 * total / 4, rel=1e-5)
    assert float(trajectory_kl(now, now, tau)) == pytest.approx(0.0, abs=1e-6)
    now.requires_grad_(True)
    past.requires_grad_(True)
    trajectory_kl(now, past, tau).backward()
    assert now.grad is not None and past.grad is None  # the target is a constant


def test_saf_ring_buffer_slots():
    saf = SAF(SAFConfig(enabled=True, epochs_ago=2, start_epoch=0), max_epochs=10)
    assert saf.start_epoch == 2  # never before E epochs are recorded
    idx = torch.tensor([0, 3, 5])
    for epoch in range(4):
        saf.write(idx, torch.full((3, 2), float(epoch)) + idx.view(-1, 1), epoch)
        assert saf.written[5, epoch % 3] == epoch  # slot epoch % (E+1)
    saf.write(torch.tensor([7]), torch.full((1, 2), 9.0), 3)  # index 7 only seen in epoch 3
    target, valid = saf.read(torch.tensor([0, 3, 5, 7, 100]), epoch=4)  # reads epoch 2's slot
    assert valid.tolist() == [True, True, True, False, False]
    assert target[:3, 0].tolist() == [2.0, 5.0, 7.0]
    _, valid = saf.read(idx, epoch=6)  # epoch 4 was never written: nothing to compare with
    assert not valid.any()


def test_saf_buffer_state_dict_roundtrip_and_float16():
    saf = SAF(SAFConfig(enabled=True, epochs_ago=1, buffer_dtype="float16"), max_epochs=3)
    saf.write(torch.tensor([1, 4]), torch.tensor([[0.5, 1.5], [2.5, 3.5]]), 0)
    assert saf.past.dtype == torch.float16 and saf.past.shape == (5, 2, 2)
    fresh = SAF(SAFConfig(enabled=True, epochs_ago=1, buffer_dtype="float16"), max_epochs=3)
    fresh.load_state_dict(saf.state_dict())
    target, valid = fresh.read(torch.tensor([4, 0]), epoch=1)
    assert valid.tolist() == [True, False] and target[0].tolist() == [2.5, 3.5]


def test_saf_term_is_weighted_kl_on_samples_with_a_target():
    saf = SAF(SAFConfig(enabled=True, form="logits", weight=0.3, temperature=5.0, epochs_ago=1, start_epoch=0),
              max_epochs=5)
    g = torch.Generator().manual_seed(3)
    past = torch.randn(2, 4, generator=g)
    saf.write(torch.tensor([0, 1]), past, epoch=0)
    proj = [torch.randn(3, 4, generator=g), torch.randn(3, 4, generator=g)]
    ctx = SimpleNamespace(indices=torch.tensor([1, 2, 0]), epoch=1)  # sample 2 has no past output
    terms = saf(None, ctx, StepOutput(torch.zeros(()), proj=proj))
    expect = 0.3 * sum(trajectory_kl(z[[0, 2]], past[[1, 0]], 5.0) for z in proj) / 2
    assert float(terms["saf"]) == pytest.approx(float(expect), rel=1e-6)
    assert saf(None, SimpleNamespace(indices=torch.tensor([2]), epoch=1), StepOutput(torch.zeros(()), proj=proj)) == {}
    # after_step stores the mean of the views' outputs, in the slot of the current epoch
    saf.after_step(None, ctx, StepOutput(torch.zeros(()), proj=proj))
    target, valid = saf.read(torch.tensor([1, 2, 0]), epoch=2)
    assert valid.all() and torch.allclose(target, (proj[0] + proj[1]) / 2)


def test_saf_term_in_training(tmp_path):
    cfg = tiny_config("simclr", "saf.enabled=true", "saf.epochs_ago=1", "data.batch_size=64",
                      "trainer.max_epochs=2", "trainer.max_steps=-1")
    seen = []
    original = SAF.forward

    def spy(self, method, ctx, out):
        terms = original(self, method, ctx, out)
        seen.append((ctx.epoch, "saf" in terms))
        return terms

    SAF.forward = spy
    try:
        fit_epochs(cfg, tmp_path, enable_checkpointing=False, callbacks=[])
    finally:
        SAF.forward = original
    assert {e for e, on in seen if on} == {1} and not any(on for e, on in seen if e == 0)


# --- MESA --------------------------------------------------------------------------------------------

def test_mesa_teacher_is_an_ema_updated_once_per_step(tmp_path, monkeypatch):
    from sharpshift.sharpness.trajectory import MESA

    updates = []
    original = MESA.after_step
    monkeypatch.setattr(MESA, "after_step", lambda self, *a: updates.append(1) or original(self, *a))
    cfg = tiny_config("simclr", "mesa.enabled=true", "mesa.decay=0.9", "mesa.start_epoch=0", "sam.enabled=true")
    module, before, trainer = fit(cfg, tmp_path, steps=3)
    mesa = module.regularisers[0]
    assert len(updates) == 3
    assert not any(p.requires_grad for p in mesa.teacher.parameters())
    assert all(id(p) not in {id(q) for g in trainer.optimizers[0].param_groups for q in g["params"]}
               for p in mesa.teacher.parameters())
    w0 = before["backbone.features.0.weight"]
    t = mesa.teacher["backbone"].features[0].weight
    assert not torch.equal(t, w0) and not torch.equal(t, module.backbone.features[0].weight)


def test_mesa_term_uses_the_teacher_in_eval_mode_on_the_same_views():
    from sharpshift.data.registry import load_dataset
    from sharpshift.steps import StepContext
    from sharpshift.sharpness.trajectory import views_kl
    from sharpshift.train import build_module

    cfg = tiny_config("simclr", "mesa.enabled=true", "mesa.start_epoch=0", "mesa.weight=0.8", "mesa.form=logits")
    module = build_module(cfg, load_dataset("digits", "train"))
    mesa = module.regularisers[0]
    with torch.no_grad():  # a teacher that differs from the online network
        for p in mesa.teacher.parameters():
            p.add_(0.05 * torch.randn_like(p))
    module.train()  # as Lightning does at the start of fit: the teacher is in train mode now
    images = (torch.rand(16, 1, 8, 8) * 255).to(torch.uint8)
    ctx = StepContext(images, torch.full((16,), -1), torch.arange(16), module.views(images), step=0, epoch=0)
    out = module.objective(ctx)
    term = mesa(module, ctx, out)["mesa"].detach()
    assert not mesa.teacher.training
    with torch.no_grad():
        _, target = module.encode(ctx.views, mesa.teacher["backbone"], mesa.teacher["projector"])
    expect = 0.8 * views_kl(out.proj, target, 5.0).detach()
    assert float(term) == pytest.approx(float(expect), rel=1e-5) and float(term) > 0


def test_ema_of_parameters_and_buffers():
    online, target = nn.BatchNorm1d(3), nn.BatchNorm1d(3)
    online(torch.randn(6, 3) + 2)
    with torch.no_grad():
        online.weight.fill_(3.0)
    ema_parameters_and_buffers(target, online, 0.75)
    assert torch.allclose(target.weight, torch.full((3,), 0.75 * 1 + 0.25 * 3))
    assert torch.allclose(target.running_mean, 0.25 * online.running_mean)
    assert int(target.num_batches_tracked) == 1


def test_mesa_decay_scales_with_run_length():
    cfg = MESAConfig(enabled=True)
    assert cfg.resolved_decay(28_000) == pytest.approx(0.9998, abs=1e-5)  # the paper's ImageNet run
    assert 1 / (1 - cfg.resolved_decay(117)) == pytest.approx(0.18 * 117)
    assert MESAConfig(decay=0.99).resolved_decay(10) == 0.99


@pytest.mark.parametrize("override", ["sam.rho=0", "sam.perturb=head", "saf.epochs_ago=0", "saf.buffer_dtype=int8",
                                      "mesa.decay=1.0", "mesa.temperature=0", "saf.start_epoch=-2"])
def test_impossible_values_are_user_errors(override):
    with pytest.raises(UserError):
        tiny_config("simclr", override)


def test_rho_defaults():
    assert SAMConfig().resolved_rho() == 0.05 and SAMConfig(adaptive=True).resolved_rho() == 0.5
