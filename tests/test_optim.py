import math

import torch

from sharpshift.config import OptimConfig
from sharpshift.optim import LARS, build_optimizer, cosine_momentum, warmup_cosine


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
