import json
import math
from types import SimpleNamespace

import pytest
import torch

from sharpshift.config import OptimConfig
from sharpshift.optim import LARS, build_optimizer, cosine_momentum, warmup_cosine
from sharpshift.steps import StepOutput, clip_summary, plain_step


def test_warmup_cosine_schedule_points():
    assert warmup_cosine(0, 10, 110) == 0.1
    assert warmup_cosine(9, 10, 110) == 1.0
    assert abs(warmup_cosine(60, 10, 110) - 0.5) < 1e-9
    assert abs(warmup_cosine(110, 10, 110, min_ratio=0.1) - 0.1) < 1e-9


def test_cosine_momentum_goes_from_base_to_final():
    assert cosine_momentum(0, 100, 0.99, 1.0) == 0.99
    assert abs(cosine_momentum(50, 100, 0.99, 1.0) - 0.995) < 1e-9
    assert cosine_momentum(100, 100, 0.99, 1.0) == 1.0


def test_lars_step_uses_trust_ratio():
    w = torch.nn.Parameter(torch.tensor([3.0, 4.0]))
    w.grad = torch.tensor([0.6, 0.8])
    opt = LARS([{"params": [w], "weight_decay": 0.0}], lr=1.0, momentum=0.0, eta=0.1)
    opt.step()
    trust = 0.1 * 5.0 / 1.0
    assert torch.allclose(w.detach(), torch.tensor([3.0, 4.0]) - trust * torch.tensor([0.6, 0.8]))


def test_bias_and_norm_params_get_no_weight_decay():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    opt = build_optimizer([model], OptimConfig(name="sgd", weight_decay=0.1))
    decays = sorted((g["weight_decay"], len(g["params"])) for g in opt.param_groups)
    assert decays == [(0.0, 3), (0.1, 1)]
    assert math.isclose(opt.param_groups[0]["lr"], 0.3)


class _Clipped(torch.nn.Module):
    """What plain_step needs of a method: its config, manual_backward and Lightning's clip_gradients."""

    def __init__(self, clip):
        super().__init__()
        torch.manual_seed(0)
        self.lin = torch.nn.Linear(5, 3)
        self.cfg = SimpleNamespace(optim=SimpleNamespace(grad_clip=clip))
        self.grad_norms: list[torch.Tensor] = []

    def manual_backward(self, loss):
        loss.backward()

    def clip_gradients(self, opt, gradient_clip_val, gradient_clip_algorithm):
        torch.nn.utils.clip_grad_norm_(self.parameters(), gradient_clip_val)

    def closure(self):
        return StepOutput(self.lin(torch.ones(4, 5)).pow(2).sum())


def test_plain_step_records_the_gradient_norm_before_the_clip_and_steps_with_the_clipped_one():
    m = _Clipped(0.01)
    m.closure().loss.backward()
    g = {n: p.grad.clone() for n, p in m.named_parameters()}
    norm = math.sqrt(sum(float((v ** 2).sum()) for v in g.values()))
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    plain_step(m, torch.optim.SGD(m.parameters(), lr=1.0), m.closure)
    assert norm > 1.0 and [float(n) for n in m.grad_norms] == [pytest.approx(norm, rel=1e-6)]
    for n, p in m.named_parameters():  # the step is lr * the gradient scaled to the clip's norm
        assert torch.allclose(p.detach(), before[n] - g[n] * (0.01 / norm), atol=1e-7), n
    unclipped = _Clipped(0.0)
    plain_step(unclipped, torch.optim.SGD(unclipped.parameters(), lr=1.0), unclipped.closure)
    assert unclipped.grad_norms == []  # no clip, nothing measured


def test_clip_summary_counts_the_steps_the_clip_bound():
    s = clip_summary([0.5, 2.0, 3.0, 1.0], 1.0)  # 1.0 is at the clip, not above it: not clipped
    assert (s["steps"], s["share_clipped"], s["max_norm"]) == (4, 0.5, 1.0)
    assert s["grad_norm_q50"] == pytest.approx(1.5) and s["grad_norm_q05"] < 0.65 and s["grad_norm_q95"] > 2.8


@pytest.mark.parametrize("clip, share", [(1e-6, 1.0), (1e6, 0.0)])
def test_train_json_says_how_often_the_clip_bound(tmp_path, clip, share):
    from sharpshift.train import pretrain
    from tests.conftest import tiny_config

    run = pretrain(tiny_config("simclr", "trainer.precision=32", f"out_dir={tmp_path}", f"optim.grad_clip={clip}"))
    summary = json.loads((run / "train.json").read_text())["grad_clip"]
    assert (summary["steps"], summary["share_clipped"], summary["max_norm"]) == (4, share, clip)
    assert 1e-6 < summary["grad_norm_q05"] <= summary["grad_norm_q50"] <= summary["grad_norm_q95"] < 1e6
