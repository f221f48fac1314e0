"""Direct tests for bugs a mutation run let through (each planted once in the code; these tests catch it):
a BYOL/SimSiam loss without its stop-gradient, SimSiam's predictor and target swapped, an EMA update applied
twice per step, RSA's beta frozen at step 0, MoCo keys enqueued before the loss, and a loader whose
load_state_dict does nothing."""
import lightning as L
import pytest
import torch
import torch.nn.functional as F

from sharpshift.data.loader import IndexedBatches, PretrainData, ResumableLoader, ShardedBatchSampler
from sharpshift.data.registry import load_dataset
from sharpshift.losses import byol_loss, simsiam_loss
from sharpshift.steps import StepContext
from sharpshift.shift.rsa import beta_k
from sharpshift.train import build_module, build_trainer
from tests.conftest import tiny_config


def module_for(method, *overrides):
    cfg = tiny_config(method, "trainer.precision=32", *overrides)
    return build_module(cfg, load_dataset("digits", "train"))


def context(module, step=0, n=16):
    images = load_dataset("digits", "train").images[:n]
    return StepContext(images, torch.full((n,), -1), torch.arange(n), module.views(images), step=step, epoch=0)


def fit(module, steps, tmp_path, callbacks=()):
    train = load_dataset("digits", "train")
    trainer = build_trainer(module.cfg, tmp_path, max_steps=steps, logger=False, enable_checkpointing=False,
                            callbacks=list(callbacks))
    trainer.fit(module, datamodule=PretrainData(train, module.cfg.data.batch_size, module.cfg.seed))
    return trainer


@pytest.mark.parametrize("loss_fn", [byol_loss, simsiam_loss])
def test_regression_losses_stop_the_gradient_at_the_target(loss_fn):
    p = torch.randn(6, 8, requires_grad=True)
    z = torch.randn(6, 8, requires_grad=True)
    loss_fn(p, z).backward()
    assert z.grad is None  # the target is a constant of the loss itself, whoever calls it
    assert p.grad is not None and p.grad.abs().sum() > 0


def test_simsiam_predictor_gets_the_gradient_and_the_loss_predicts_the_other_view():
    m = module_for("simsiam")
    ctx = context(m)
    out = m.objective(ctx)
    out.loss.backward()  # swapped (the target predicted by the prediction), the predictor would get no gradient
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in m.predictor.parameters())
    z = out.proj
    p = out.extra["pred"]
    expect = 0.5 * (simsiam_loss(p[0], z[1]) + simsiam_loss(p[1], z[0]))
    assert torch.allclose(out.loss, expect, atol=1e-6)
    assert torch.allclose(p[0], m.predictor(torch.cat(z))[:len(z[0])], atol=1e-5)  # from the predictor (one BN batch)


class EmaSpy(L.Callback):
    """Targets and online weights just before each step, and the decay the step used (read after it)."""

    def __init__(self):
        self.rows = []

    def on_train_batch_start(self, trainer, m, batch, batch_idx):
        self._before = [p.detach().clone() for p in m.target_backbone.parameters()]

    def on_train_batch_end(self, trainer, m, outputs, batch, batch_idx):
        online = [p.detach().clone() for p in m.backbone.parameters()]
        after = [p.detach().clone() for p in m.target_backbone.parameters()]
        self.rows.append((self._before, online, after, m.momentum()))


@pytest.mark.parametrize("method", ["byol", "moco"])
def test_ema_target_is_decay_times_before_plus_the_rest_times_online_once_per_step(method, tmp_path):
    m = module_for(method, "method.momentum_base=0.5", "method.momentum_final=0.5")  # large steps: easy to see
    spy = EmaSpy()
    fit(m, 3, tmp_path, [spy])
    assert len(spy.rows) == 3
    for before, online, after, decay in spy.rows:
        assert decay == pytest.approx(0.5)
        for b, o, a in zip(before, online, after):
            torch.testing.assert_close(a, decay * b + (1 - decay) * o, rtol=1e-5, atol=1e-6)
        # applied twice, the target would be decay^2 * before + ...: the rows must tell them apart
        assert any(not torch.allclose(b, o, atol=1e-4) for b, o in zip(before, online))


@pytest.mark.parametrize("method", ["byol", "simclr", "moco"])
def test_rsa_beta_follows_the_step_the_method_is_at(method):
    m = module_for(method, "rsa.enabled=true", "rsa.beta_base=0.8")
    late = m.total_steps * 3 // 4
    for step in (0, late):
        out = m.objective(context(m, step=step))
        beta = beta_k(step, m.total_steps, 0.8, m.cfg.rsa.schedule)
        assert out.extra["rsa_beta"] == pytest.approx(beta)
        mixed = (1 - beta) * out.terms["rsa_aggr_weak"] + beta * out.terms["rsa_aggr_aggr"]
        assert float(out.loss) == pytest.approx(float(mixed), rel=1e-5)
    assert beta_k(late, m.total_steps, 0.8, m.cfg.rsa.schedule) < 0.8 * 0.5  # the two steps differ


def test_moco_query_never_meets_its_own_key_among_the_negatives(tmp_path, monkeypatch):
    import sharpshift.methods.moco as moco

    seen = []
    original = moco.infonce_queue

    def spy(q, k, queue, t):
        seen.append((k.detach().clone(), queue.detach().clone()))
        return original(q, k, queue, t)

    monkeypatch.setattr(moco, "infonce_queue", spy)
    m = module_for("moco")
    fit(m, 3, tmp_path)
    assert len(seen) == 6  # two directions per step
    for k, queue in seen:
        overlap = (F.normalize(k.float(), dim=1) @ queue.T).max()
        assert overlap < 0.999, "a key of this step is already in the queue its query is contrasted with"
    # the step's keys do reach the queue afterwards
    last_keys = F.normalize(seen[-2][0].float(), dim=1)
    assert (last_keys @ m.queue.T).max() > 0.999


def test_loader_load_state_dict_continues_where_the_state_says():
    data = load_dataset("digits", "train")

    def loader(served):
        return ResumableLoader(IndexedBatches(data), ShardedBatchSampler(len(data), 32, seed=3), lambda: served)

    first = [idx for _, _, idx in loader(0)]
    state = loader(5).state_dict()
    assert state == {"epoch": 0, "served": 5}
    fresh = loader(0)
    fresh.load_state_dict(state)
    resumed = [idx for _, _, idx in fresh]
    assert len(resumed) == len(first) - 5
    assert all(torch.equal(a, b) for a, b in zip(resumed, first[5:]))
    fresh.load_state_dict({"epoch": 2, "served": 0})  # another epoch: another order
    assert not torch.equal(next(iter(fresh))[2], first[0])
