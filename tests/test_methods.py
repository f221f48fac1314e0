"""Every base method trains on real (tiny) data; once-per-step semantics of EMA targets and queues."""
import pytest
import torch

from sharpshift.data.loader import PretrainData
from sharpshift.data.registry import load_dataset
from sharpshift.methods import METHODS
from sharpshift.steps import ema_update
from sharpshift.train import build_module, build_trainer
from tests.conftest import tiny_config


def fit(cfg, tmp_path, steps=4):
    train = load_dataset("digits", "train")
    module = build_module(cfg, train)
    before = {k: v.clone() for k, v in module.state_dict().items()}
    trainer = build_trainer(cfg, tmp_path, max_steps=steps, logger=False, enable_checkpointing=False, callbacks=[])
    trainer.fit(module, datamodule=PretrainData(train, cfg.data.batch_size, cfg.seed))
    return module, before, trainer


@pytest.mark.parametrize("name", sorted(METHODS))
def test_method_trains_and_changes_backbone(name, tmp_path):
    cfg = tiny_config(name)
    module, before, trainer = fit(cfg, tmp_path)
    assert trainer.global_step == 4
    changed = [k for k, v in module.backbone.state_dict().items() if not torch.equal(v, before[f"backbone.{k}"])]
    assert any("weight" in k for k in changed)
    for name_, p in module.named_parameters():
        assert torch.isfinite(p).all(), name_


@pytest.mark.parametrize("name", ["byol", "moco"])
def test_target_follows_ema_once_per_step(name, tmp_path, monkeypatch):
    calls = []
    original = METHODS[name].after_optimizer_step

    def counting(self, ctx, out):
        calls.append(self.global_step)
        return original(self, ctx, out)

    monkeypatch.setattr(METHODS[name], "after_optimizer_step", counting)
    module, before, trainer = fit(tiny_config(name), tmp_path, steps=3)
    assert len(calls) == trainer.global_step == 3
    # the target moved away from its initial copy, but did not become the online network
    t = module.target_backbone.features[0].weight
    assert not torch.equal(t, before["target_backbone.features.0.weight"])
    assert not torch.equal(t, module.backbone.features[0].weight)


def test_ema_update_formula():
    online, target = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    expect = 0.9 * target.weight.detach().clone() + 0.1 * online.weight.detach()
    ema_update(target, online, 0.9)
    assert torch.allclose(target.weight, expect)


def test_moco_queue_advances_by_the_batch_each_step(tmp_path):
    module, before, trainer = fit(tiny_config("moco"), tmp_path, steps=3)
    assert int(module.queue_ptr) == (3 * 2 * 32 // 2) % 64  # 32 keys per step, queue of 64
    assert not torch.equal(module.queue, before["queue"])
    assert torch.allclose(module.queue.norm(dim=1), torch.ones(64), atol=1e-4)


def test_enqueue_wraps_around():
    cfg = tiny_config("moco")
    module = build_module(cfg, load_dataset("digits", "train"))
    keys = torch.nn.functional.normalize(torch.randn(40, 16), dim=1)
    module.queue_ptr.fill_(50)
    module.enqueue(keys)
    assert torch.equal(module.queue[50:64], keys[:14]) and torch.equal(module.queue[:26], keys[14:])
    assert int(module.queue_ptr) == 26


def test_config_knows_every_method():
    from sharpshift.config import METHOD_DEFAULTS

    assert set(METHOD_DEFAULTS) == set(METHODS)
