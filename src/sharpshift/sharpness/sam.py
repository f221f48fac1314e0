"""SAM and ASAM as a stepper: ascend to theta + eps, take the gradient there, step from theta.

eps = rho * g / ||g|| (SAM, Foret et al., 2021) or rho * T^2 g / ||T g|| with T = |w| + eta on weights and
T = 1 on biases (ASAM, Kwon et al., 2021, as in their official code). g is the gradient of the first pass,
restricted to the perturbed parameters: the backbone only ("extractor", SSA-CLR's reading) or all of them.

Once-per-step semantics: the optimizer steps once (Lightning counts global_step on it), BatchNorm running
statistics are saved before the second pass and put back after it, and EMA targets, queues and the LR
schedule advance in the training loop after the stepper returns. The first pass's output is returned, so
logs, the online probe and SAF's buffer see the model at theta, not at theta + eps. Under DDP, Lightning
prepares DDP's reducer before every manual_backward, so both gradients (the ascent one included) are
all-reduced before they are used.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch
from torch import nn

from sharpshift.mechanisms import Mechanism, mean, values
from sharpshift.plugins import MECHANISMS, STEPPERS
from sharpshift.config.sharpness import SAMConfig
from sharpshift.steps import clip_gradients


@torch.no_grad()
def sam_perturbation(params: list[torch.Tensor], grads: list[torch.Tensor], rho: float, adaptive: bool = False,
                     eta: float = 0.01, scaled: list[bool] | None = None) -> list[torch.Tensor]:
    """The ascent step for each parameter. `scaled[i]` says whether ASAM's T = |w| + eta applies to parameter i
    (weights) or T = 1 (biases); ignored for SAM. A zero or non-finite gradient gives eps = 0."""
    g = [gr.float() for gr in grads]
    if adaptive:
        scaled = scaled if scaled is not None else [True] * len(params)
        t = [p.detach().float().abs().add_(eta) if s else None for p, s in zip(params, scaled)]
        tg = [gi * ti if ti is not None else gi for gi, ti in zip(g, t)]
        norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(tg))) if tg else torch.zeros(())
        direction = [tgi * ti if ti is not None else tgi for tgi, ti in zip(tg, t)]  # T^2 g
    else:
        norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(g))) if g else torch.zeros(())
        direction = g
    ok = torch.isfinite(norm) & (norm > 0)  # a tensor, not a Python bool: no device sync per step
    scale = rho / torch.where(ok, norm, torch.ones_like(norm))
    return [torch.where(ok, d * scale, torch.zeros_like(d)).to(p.dtype) for d, p in zip(direction, params)]


@contextlib.contextmanager
def frozen_bn_stats(module: nn.Module) -> Iterator[None]:
    """Put every BatchNorm's running statistics (and batch counter) back as they were on entry."""
    bns = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    saved = [[b.clone() for b in (m.running_mean, m.running_var, m.num_batches_tracked) if b is not None] for m in bns]
    try:
        yield
    finally:
        with torch.no_grad():
            for m, s in zip(bns, saved):
                for buf, val in zip([b for b in (m.running_mean, m.running_var, m.num_batches_tracked) if b is not None], s):
                    buf.copy_(val)


class SAMStepper:
    """Callable as `stepper(module, opt, closure)`; see the module docstring."""

    def __init__(self, cfg: SAMConfig):
        self.cfg = cfg
        self.rho = cfg.resolved_rho()

    def perturbed(self, module: nn.Module, opt) -> list[tuple[str, torch.Tensor]]:
        """(name, parameter) pairs to perturb that received a gradient."""
        if self.cfg.perturb == "extractor":
            named = [(n, p) for n, p in module.backbone.named_parameters()]
        else:
            in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
            named = [(n, p) for n, p in module.named_parameters() if id(p) in in_opt]
        return [(n, p) for n, p in named if p.requires_grad and p.grad is not None]

    def __call__(self, module, opt, closure: Callable):
        opt.zero_grad(set_to_none=True)
        out = closure()
        module.manual_backward(out.loss)
        named = self.perturbed(module, opt)
        params = [p for _, p in named]
        with torch.no_grad():
            saved = [p.detach().clone() for p in params]  # restored by copy: theta + eps - eps != theta in floats
            eps = sam_perturbation(params, [p.grad for p in params], self.rho, self.cfg.adaptive, self.cfg.eta,
                                   scaled=[n.endswith("weight") for n, _ in named])
            torch._foreach_add_(params, eps)
        opt.zero_grad(set_to_none=True)
        try:
            with frozen_bn_stats(module):
                perturbed_out = closure()
                module.manual_backward(perturbed_out.loss)
        finally:  # also when the second pass raises (a skipped non-finite step must leave theta as it was)
            with torch.no_grad():
                torch._foreach_copy_(params, saved)
        clip_gradients(module, opt)
        opt.step()
        out.terms["sam_perturbed_loss"] = perturbed_out.loss.detach()
        out.extra["sam"] = {"eps_norm": torch.linalg.vector_norm(torch.stack(torch._foreach_norm(eps))) if eps
                            else torch.zeros(()), "perturbed_minus_clean": (perturbed_out.loss - out.loss).detach()}
        return out


def build_sam(cfg, method) -> SAMStepper | None:
    return SAMStepper(cfg.sam) if cfg.sam.enabled else None


def probe(method, ctx, out) -> dict | None:
    figures = out.extra.get("sam")
    return {k: float(v) for k, v in figures.items()} if figures else None


def check(series: dict) -> tuple[dict, list[str]]:
    """Off: a zero perturbation, or one that lowers the loss as often as it raises it (no ascent)."""
    eps, rise = values(series, "eps_norm"), values(series, "perturbed_minus_clean")
    summary = {"eps_norm": mean(eps), "perturbed_minus_clean": mean(rise),
               "share_raised": sum(r > 0 for r in rise) / len(rise) if rise else None}
    warnings = []
    if eps and max(eps) == 0:
        warnings.append("SAM's perturbation ||eps|| is 0 on every recorded step: SAM is plain SGD here")
    elif rise and summary["share_raised"] <= 0.5:
        warnings.append(f"SAM's perturbation raised the loss on only {summary['share_raised']:.0%} of the recorded "
                        "steps: it is not ascending (try a smaller sam.rho)")
    return summary, warnings


STEPPERS.append(build_sam)
MECHANISMS["sam"] = Mechanism(probe, check)
