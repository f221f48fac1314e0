"""Sharpness measures of a fixed objective (a mean of per-batch loss closures) with respect to given parameters.

- SAM-sharpness: L(theta + eps*) - L(theta), eps* = rho * g / ||g|| (the SAF paper's Eq. 5 measure);
- the top Hessian eigenvalue by power iteration on Hessian-vector products (double backward). Power iteration
  finds the eigenvalue of largest magnitude; we report its signed Rayleigh quotient;
- the Hutchinson estimate of the Hessian trace, E[v^T H v] over Rademacher v, with its standard error;
- loss along filter-normalised random directions (Li et al., 2018): each filter (slice along dim 0) of the
  direction has the norm of the same filter of theta; biases and norm-layer parameters (ndim <= 1) get zero
  direction, their default ("ignore biasbn").
Parameters are always restored by copy, bit for bit.
"""
from __future__ import annotations

import contextlib
import math
from typing import Callable, Iterator

import torch

from sharpshift.sharpness.sam import sam_perturbation

Vec = list[torch.Tensor]


def dot(a: Vec, b: Vec) -> torch.Tensor:
    return sum((x.double() * y.double()).sum() for x, y in zip(a, b))


def norm(a: Vec) -> torch.Tensor:
    return dot(a, a).sqrt()


class Objective:
    """The mean of fixed loss closures as a function of `params` (the other parameters stay fixed)."""

    def __init__(self, closures: list[Callable[[], torch.Tensor]], params: list[torch.Tensor]):
        self.closures = closures
        self.params = params

    def loss(self) -> float:
        with torch.no_grad():
            return sum(float(c()) for c in self.closures) / len(self.closures)

    def grad(self) -> Vec:
        total = [torch.zeros_like(p) for p in self.params]
        for c in self.closures:
            g = torch.autograd.grad(c(), self.params, allow_unused=True)
            torch._foreach_add_(total, [gi if gi is not None else torch.zeros_like(p) for gi, p in zip(g, self.params)])
        return [t / len(self.closures) for t in total]

    def hvp(self, vec: Vec) -> Vec:
        """H v, by differentiating <grad L, v> once more (per closure, to keep one graph in memory)."""
        total = [torch.zeros_like(p) for p in self.params]
        for c in self.closures:
            g = torch.autograd.grad(c(), self.params, create_graph=True, allow_unused=True)
            pairs = [(gi, v) for gi, v in zip(g, vec) if gi is not None]
            hv = torch.autograd.grad(sum((gi * v).sum() for gi, v in pairs), self.params, allow_unused=True)
            torch._foreach_add_(total, [h if h is not None else torch.zeros_like(p) for h, p in zip(hv, self.params)])
        return [t / len(self.closures) for t in total]

    @contextlib.contextmanager
    def shifted(self, delta: Vec) -> Iterator[None]:
        """Evaluate at params + delta; put the parameters back exactly afterwards."""
        saved = [p.detach().clone() for p in self.params]
        with torch.no_grad():
            torch._foreach_add_(self.params, delta)
        try:
            yield
        finally:
            with torch.no_grad():
                torch._foreach_copy_(self.params, saved)


def sam_sharpness(objective: Objective, rhos: list[float]) -> dict[float, float]:
    base = objective.loss()
    grads = objective.grad()
    result = {}
    for rho in rhos:
        with objective.shifted(sam_perturbation(objective.params, grads, rho)):
            result[rho] = objective.loss() - base
    return result


def _random_like(params: list[torch.Tensor], g: torch.Generator, rademacher: bool = False) -> Vec:
    out = []
    for p in params:
        if rademacher:
            v = torch.randint(0, 2, p.shape, generator=g, dtype=torch.float32) * 2 - 1
        else:
            v = torch.randn(p.shape, generator=g)
        out.append(v.to(device=p.device, dtype=p.dtype))
    return out


def hessian_top_eigenvalue(objective: Objective, iters: int = 20, tol: float = 1e-3, seed: int = 0) -> dict:
    """Power iteration; stops when the Rayleigh quotient changes by less than tol (relative)."""
    g = torch.Generator().manual_seed(seed)
    v = _random_like(objective.params, g)
    n = norm(v)
    v = [x / n for x in v]
    value, steps = 0.0, 0
    for steps in range(1, iters + 1):
        hv = objective.hvp(v)
        new = float(dot(v, hv))
        hv_norm = float(norm(hv))
        if hv_norm == 0:
            value = 0.0
            break
        v = [x / hv_norm for x in hv]
        converged = steps > 1 and abs(new - value) <= tol * abs(new)
        value = new
        if converged:
            break
    return {"value": value, "iterations": steps}


def hutchinson_trace(objective: Objective, samples: int = 20, seed: int = 0) -> dict:
    """tr(H) ~ mean of v^T H v over Rademacher v; also the standard error of that mean."""
    g = torch.Generator().manual_seed(seed)
    values = []
    for _ in range(samples):
        v = _random_like(objective.params, g, rademacher=True)
        values.append(float(dot(v, objective.hvp(v))))
    mean = sum(values) / len(values)
    var = sum((x - mean) ** 2 for x in values) / max(1, len(values) - 1)
    return {"value": mean, "stderr": math.sqrt(var / len(values)), "samples": len(values)}


def filter_normalized_direction(params: list[torch.Tensor], g: torch.Generator) -> Vec:
    out = []
    for p in params:
        if p.ndim <= 1:
            out.append(torch.zeros_like(p))
            continue
        d = torch.randn(p.shape, generator=g).to(device=p.device, dtype=p.dtype)
        dims = tuple(range(1, p.ndim))
        p_norm = torch.linalg.vector_norm(p.detach(), dim=dims, keepdim=True)
        d = d * (p_norm / (torch.linalg.vector_norm(d, dim=dims, keepdim=True) + 1e-10))
        out.append(d)
    return out


def landscape_1d(objective: Objective, direction: Vec, alphas: list[float]) -> list[float]:
    losses = []
    for a in alphas:
        with objective.shifted([d * a for d in direction]):
            losses.append(objective.loss())
    return losses


def landscape_2d(objective: Objective, d1: Vec, d2: Vec, alphas: list[float], betas: list[float]) -> list[list[float]]:
    """losses[i][j] at theta + betas[i] * d2 + alphas[j] * d1."""
    rows = []
    for b in betas:
        row = []
        for a in alphas:
            with objective.shifted([x * a + y * b for x, y in zip(d1, d2)]):
                row.append(objective.loss())
        rows.append(row)
    return rows
