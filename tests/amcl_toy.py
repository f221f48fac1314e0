"""A seeded toy AMCL run, shared by the tests of the two forms and by benchmarks/amcl_forms.py.

scikit-learn's digits (1,797 x 64, standardised), an MLP encoder, C MLP heads, views = Gaussian noise plus a
random feature mask; SGD on encoder, heads and phi together (the official code's single optimiser), or LARS
with weight decay (our Barlow Twins recipe), or phi on its own Adam (amcl.phi_lr) outside the clip.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from sharpshift.amcl.adaptive import adaptive_barlow_twins, adaptive_nt_xent
from sharpshift.amcl.heads import TemperatureNet
from sharpshift.amcl.losses import amcl_barlow_twins, amcl_nt_xent
from sharpshift.config import OptimConfig
from sharpshift.losses import barlow_twins_loss, nt_xent
from sharpshift.models.heads import MultiHead
from sharpshift.optim import build_optimizer

TAU_MIN, TAU_MAX = 1e-5, 2.0


def digits() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.data, dtype=torch.float32)
    return (x - x.mean(0)) / x.std(0).clamp_min(1e-3), torch.tensor(d.target)


def views(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    keep = (torch.rand(x.shape, generator=g) > 0.3).float()
    return x * keep + 0.5 * torch.randn(x.shape, generator=g)


@dataclass
class ToyRun:
    tau_pos_median: list[float] = field(default_factory=list)  # per step, head 0
    last_sim_pos: torch.Tensor | None = None  # (m,) head 0's positive similarities at the last step
    last_tau_pos: torch.Tensor | None = None  # (m,) their temperatures
    last_corr_diag: torch.Tensor | None = None  # barlow: (D,) head 0's C_ll at the last step
    knn: float = 0.0  # 5-NN accuracy of the encoder features, fitted on the first 1,400 digits


def knn_accuracy(feats: torch.Tensor, labels: torch.Tensor, split: int = 1400, k: int = 5) -> float:
    f = F.normalize(feats, dim=1)
    sim = f[split:] @ f[:split].T
    votes = labels[:split][sim.topk(k, dim=1).indices]
    pred = torch.mode(votes, dim=1).values
    return float((pred == labels[split:]).float().mean())


def run(loss: str, form: str, steps: int = 300, seed: int = 0, batch: int = 128, heads: int = 3,
        dim: int = 32, optimizer: str = "sgd", phi_lr: float | None = None) -> ToyRun:
    """loss: simclr or barlow; form: official, adaptive, or base (the method's own loss, no AMCL).
    optimizer: sgd (lr 0.05, no weight decay) or lars (lr 0.3, weight decay 1e-4, eta 0.02: configs/barlow.yaml).
    phi_lr: phi's own Adam, unclipped (amcl.phi_lr); None: phi is trained with the rest."""
    x, y = digits()
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    encoder = nn.Sequential(nn.Linear(64, 128), nn.BatchNorm1d(128), nn.ReLU(), nn.Linear(128, 64))
    make_head = (lambda: nn.Sequential(nn.Linear(64, 64), nn.BatchNorm1d(64), nn.ReLU(), nn.Linear(64, dim)))
    head = MultiHead([make_head() for _ in range(heads)]) if form != "base" else make_head()
    phi = TemperatureNet(batch if loss == "barlow" else dim, 128, phi_lr)
    own = phi.build_optimizer()
    modules = [encoder, head] if own else [encoder, head, phi]
    params = [p for m in modules for p in m.parameters()]
    if optimizer == "lars":
        opt = build_optimizer(modules, OptimConfig(name="lars", lr=0.3, weight_decay=1e-4, lars_eta=0.02))
    else:
        opt = torch.optim.SGD(params, lr=0.05, momentum=0.9)
    out = ToyRun()
    for _ in range(steps):
        idx = torch.randperm(len(x), generator=g)[:batch]
        z1, z2 = (head(encoder(views(x[idx], g))) for _ in range(2))
        if form == "base":
            value = nt_xent(z1, z2, 0.2) if loss == "simclr" else barlow_twins_loss(z1, z2, 0.005)
            stats = None
        elif loss == "simclr":
            fn = amcl_nt_xent if form == "official" else adaptive_nt_xent
            kw = dict(beta=1e-4, topk=100) if form == "official" else dict(beta=1.0, kappa=2.0, delta=0.1)
            value, stats = fn(z1, z2, phi, tau_min=TAU_MIN, tau_max=TAU_MAX, **kw)
        else:
            fn = amcl_barlow_twins if form == "official" else adaptive_barlow_twins
            kw = dict(beta=1e-6) if form == "official" else dict(beta=1.0, kappa=2.0, delta=1.0)  # barlow's default
            value, stats = fn(z1, z2, phi, lambd=0.005, scale=1.0, tau_min=TAU_MIN, tau_max=TAU_MAX, **kw)
        opt.zero_grad()
        if own:
            own.zero_grad()
        value.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)  # the official code's safeguard, on every arm alike
        opt.step()
        if own:
            own.step()
        if stats is not None:
            out.tau_pos_median.append(float(stats["tau_pos_all"][0].median()))
            if loss == "simclr":
                with torch.no_grad():
                    a, b = F.normalize(z1[:, 0], dim=1), F.normalize(z2[:, 0], dim=1)
                    out.last_sim_pos = torch.cat([(a * b).sum(1), (a * b).sum(1)])
            out.last_tau_pos = stats["tau_pos_all"][0]
            if loss == "barlow":
                with torch.no_grad():
                    a, b = (F.batch_norm(z[:, 0], None, None, training=True) for z in (z1, z2))
                    out.last_corr_diag = (a * b).mean(0)
    encoder.eval()
    with torch.no_grad():
        out.knn = knn_accuracy(encoder(x), y)
    return out
