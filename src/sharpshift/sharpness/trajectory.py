"""SAF and MESA (Du et al., NeurIPS 2022) as loss regularisers for SSL.

Two forms (`saf.form`, `mesa.form`; docs/sharpness.md):
- normalised (ours, the default): lambda * KL(softmax(target^ / tau) || softmax(now^ / tau)), z^ = z / ||z||,
  tau 0.1. NT-Xent ignores ||z||, so a term on raw outputs can be lowered by shrinking z (the audit measured
  ||z|| 14.3 -> 7.7 under SAF); on normalised outputs it cannot: z -> c z leaves the term unchanged.
- logits (the official code's form): lambda * tau^2 * KL(softmax(target / tau) || softmax(now / tau)), tau 5.
The gradient flows through `now` only.
- SAF: the target is the sample's own output E epochs ago, kept in a per-sample ring buffer of E+1 slots.
- MESA: the target is an EMA copy of backbone + projector, in eval mode, on the same views.
The loss is averaged over the views; SAF stores the mean of a sample's view outputs (our choice). With AMCL
the outputs are every head's, (n, C, d), and the loss is averaged over the heads too.
Buffers and the EMA teacher are written in `after_step`, once per optimizer step, so they are safe
under SAM's two passes.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from sharpshift.losses.dist import gather_no_grad
from sharpshift.losses.precision import fp32
from sharpshift.models.heads import MultiHead
from sharpshift.plugins import REGULARISERS
from sharpshift.config.sharpness import MESAConfig, SAFConfig, auto_start_epoch, resolved_temperature
from sharpshift.mechanisms import Mechanism, mean, values
from sharpshift.plugins import MECHANISMS

NEVER = -(2**30)  # "epoch written" of an empty slot


@fp32
def trajectory_kl(now: torch.Tensor, target: torch.Tensor, temperature: float) -> torch.Tensor:
    """tau^2 * mean_i KL(softmax(target_i / tau) || softmax(now_i / tau)), as the official SAF/MESA code.
    The softmax is over the last dimension; any leading dimensions (samples, heads) are averaged."""
    log_p_now = F.log_softmax(now / temperature, dim=-1)
    log_p_target = F.log_softmax(target.detach() / temperature, dim=-1)
    kl = (log_p_target.exp() * (log_p_target - log_p_now)).sum(-1)
    return kl.mean() * temperature**2


def projections(out) -> list[torch.Tensor]:
    """The projector outputs per view: every head's (n, C, d) with AMCL (its `proj` keeps head 0 only), else (n, d)."""
    return out.extra.get("heads", out.proj)


@fp32
def normalised_trajectory_kl(now: torch.Tensor, target: torch.Tensor, temperature: float) -> torch.Tensor:
    """mean_i KL(softmax(target^_i / tau) || softmax(now^_i / tau)) on L2-normalised outputs: scale-free."""
    return trajectory_kl(F.normalize(now, dim=-1), F.normalize(target, dim=-1), temperature) / temperature**2


def views_kl(now: list[torch.Tensor], target: list[torch.Tensor] | torch.Tensor, temperature: float,
             form: str = "logits") -> torch.Tensor:
    """Mean over views; `target` is one tensor for all views or one per view."""
    targets = target if isinstance(target, list) else [target] * len(now)
    kl = normalised_trajectory_kl if form == "normalised" else trajectory_kl
    return sum(kl(n, t, temperature) for n, t in zip(now, targets)) / len(now)


class TrajectoryFigures:
    """The mechanism figures of SAF and MESA, taken on a due step's first pass: the weighted term, its gradient
    on the backbone's weights relative to the rest of the loss's, and the mean ||z|| of the projections.
    (The gradient is taken on the weights, not on `out.feats`: those are chunks of one concatenated tensor, and
    the loss reaches the whole tensor, not its chunks, so a gradient on them is None and the share read 0.)"""

    pending: tuple[int, dict] | None = None

    def take(self, method, ctx, out, term: torch.Tensor) -> None:
        log = getattr(method, "mechanisms", None)
        if log is None or not log.due(ctx.step) or (self.pending is not None and self.pending[0] == ctx.step):
            return
        z = projections(out)
        figures = {"term": float(term.detach()), "z_norm": float(torch.stack([v.detach().float().norm(dim=-1).mean()
                                                                              for v in z]).mean())}
        weights = [p for p in method.backbone.parameters() if p.requires_grad]
        if torch.is_grad_enabled() and weights and term.requires_grad:
            figures["grad_share"] = grad_norm(term, weights) / max(grad_norm(out.loss, weights), 1e-30)
        self.pending = (ctx.step, figures)


def grad_norm(loss: torch.Tensor, weights: list[torch.Tensor]) -> float:
    """||d loss / d weights||, the graph kept for the step's own backward."""
    grads = torch.autograd.grad(loss, weights, retain_graph=True, allow_unused=True)
    return float(sum((g.float() ** 2).sum() for g in grads if g is not None)) ** 0.5


class SAF(TrajectoryFigures, nn.Module):
    """Per-sample ring buffer of past projector outputs, E+1 slots indexed by dataset index.

    Epoch e writes slot e % (E+1) and reads slot (e - E) % (E+1); a slot counts only if it was written in epoch
    e - E exactly (a sample dropped with an incomplete batch that epoch has no target). Memory:
    N x (E+1) x D x (4 or 2 bytes) + N x (E+1) x 4 bytes, e.g. 60,000 x 4 x 128 x 4 B = 123 MB for
    Fashion-MNIST at E=3 in float32 (61 MB in float16). The training loop sizes the buffer to the dataset
    (`setup_dataset`) before a checkpoint loads into it, so a resumed run keeps its targets; used alone it
    grows with the largest index written. Under DDP every process writes the whole global batch, so each
    holds the full buffer whatever shard a sample lands in next epoch.
    """

    def __init__(self, cfg: SAFConfig, max_epochs: int, out_shape: tuple[int, ...] = ()):
        super().__init__()
        self.cfg = cfg
        self.temperature = resolved_temperature(cfg)
        self.slots = cfg.epochs_ago + 1
        self.start_epoch = max(auto_start_epoch(cfg.start_epoch, max_epochs), cfg.epochs_ago)
        self.dtype = torch.float16 if cfg.buffer_dtype == "float16" else torch.float32
        self.out_shape = tuple(out_shape)  # per sample and slot, e.g. (D,); () = learn it from the first write
        self.register_buffer("past", torch.zeros(0, self.slots, *self.out_shape, dtype=self.dtype))
        self.register_buffer("written", torch.zeros(0, self.slots, dtype=torch.int32))

    def setup_dataset(self, n: int) -> None:
        if self.out_shape:
            self.ensure_capacity(n, self.out_shape)

    def ensure_capacity(self, n: int, out_shape: tuple[int, ...]) -> None:
        """Grow (geometrically) to hold indices < n; keeps what is stored."""
        out_shape = tuple(out_shape)
        same = tuple(self.past.shape[2:]) == out_shape
        if same and self.past.shape[0] >= n:
            return
        size = max(n, int(self.past.shape[0] * 1.5)) if same else n
        past = torch.zeros(size, self.slots, *out_shape, dtype=self.dtype, device=self.past.device)
        written = torch.full((size, self.slots), NEVER, dtype=torch.int32, device=self.written.device)
        if same:
            past[: self.past.shape[0]] = self.past
            written[: self.written.shape[0]] = self.written
        self.past, self.written, self.out_shape = past, written, out_shape

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for name in ("past", "written"):  # take the checkpoint's size
            if prefix + name in state_dict:
                setattr(self, name, torch.empty_like(state_dict[prefix + name], device=getattr(self, name).device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def read(self, indices: torch.Tensor, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(targets, valid mask) for these samples: their outputs from epoch - E."""
        slot = (epoch - self.cfg.epochs_ago) % self.slots
        if self.past.shape[0] == 0:
            nothing = torch.zeros(len(indices), dtype=torch.bool, device=indices.device)
            return self.past.new_zeros(len(indices), *self.past.shape[2:]), nothing
        inside = indices < self.past.shape[0]
        idx = indices.clamp(max=self.past.shape[0] - 1)
        valid = inside & (self.written[idx, slot] == epoch - self.cfg.epochs_ago)
        return self.past[idx, slot], valid

    @torch.no_grad()
    def write(self, indices: torch.Tensor, outputs: torch.Tensor, epoch: int) -> None:
        self.ensure_capacity(int(indices.max()) + 1, tuple(outputs.shape[1:]))
        slot = epoch % self.slots
        self.past[indices, slot] = outputs.to(self.dtype)
        self.written[indices, slot] = epoch

    def forward(self, method, ctx, out) -> dict[str, torch.Tensor]:
        if ctx.epoch < self.start_epoch or self.cfg.weight == 0:
            return {}
        target, valid = self.read(ctx.indices, ctx.epoch)
        if not bool(valid.any()):
            return {}
        loss = self.cfg.weight * views_kl([z[valid] for z in projections(out)], target[valid], self.temperature,
                                          self.cfg.form)
        self.take(method, ctx, out, loss)
        return {"saf": loss}

    def after_step(self, method, ctx, out) -> None:
        mean_output = torch.stack([z.detach().float() for z in projections(out)]).mean(0)  # over views: our choice
        self.write(gather_no_grad(ctx.indices), gather_no_grad(mean_output), ctx.epoch)


@torch.no_grad()
def ema_parameters_and_buffers(target: nn.Module, online: nn.Module, decay: float) -> None:
    """timm's ModelEmaV2: every float parameter and buffer (BN running stats too) is averaged."""
    t = [v for v in target.state_dict().values() if v.is_floating_point()]
    o = [v.detach() for v in online.state_dict().values() if v.is_floating_point()]
    torch._foreach_lerp_(t, o, 1.0 - decay)
    for tv, ov in zip(target.state_dict().values(), online.state_dict().values()):
        if not tv.is_floating_point():
            tv.copy_(ov)


def batch_statistics_only(module: nn.Module) -> nn.Module:
    """BatchNorm layers that normalise with the batch's statistics and never update their running ones."""
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = 0.0  # running <- (1 - 0) running + 0 batch: unchanged
    return module


class MESA(TrajectoryFigures, nn.Module):
    """An EMA teacher (backbone + projector) whose outputs on the same views are the KL targets.

    logits form (official): the teacher is a copy of the initial student, EMA-updated from step 0 and run in eval
    mode (running BatchNorm statistics). At step 0 its targets then differ from the student's outputs by the
    train/eval mismatch alone (the audit measured 0.066), not by any trajectory.
    normalised form (ours): the teacher is (re)set to the student on the first step of start_epoch, EMA-updated
    from then on, and normalises with the batch's statistics like the student, so the first term is 0."""

    def __init__(self, cfg: MESAConfig, method, max_epochs: int):
        super().__init__()
        self.cfg = cfg
        self.temperature = resolved_temperature(cfg)
        self.decay = cfg.resolved_decay(method.total_steps)
        self.start_epoch = auto_start_epoch(cfg.start_epoch, max_epochs)
        self.teacher = nn.ModuleDict({"backbone": copy.deepcopy(method.backbone),
                                      "projector": copy.deepcopy(method.projector)})
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        if cfg.form == "normalised":
            batch_statistics_only(self.teacher)
        self.register_buffer("started", torch.zeros((), dtype=torch.bool))  # normalised: teacher set to the student

    @torch.no_grad()
    def start_from_student(self, method) -> None:
        for name, online in (("backbone", method.backbone), ("projector", method.projector)):
            for t, o in zip(self.teacher[name].state_dict().values(), online.state_dict().values()):
                t.copy_(o)
        self.started.fill_(True)

    def forward(self, method, ctx, out) -> dict[str, torch.Tensor]:
        if ctx.epoch < self.start_epoch or self.cfg.weight == 0:
            return {}
        normalised = self.cfg.form == "normalised"
        if normalised and not bool(self.started):
            self.start_from_student(method)
        # logits: always the running BN statistics, as timm's ModelEmaV2 (set here: Lightning calls train());
        # normalised: each layer in its student's mode (batch statistics in training), running ones untouched
        self.teacher.train(False)
        if normalised:
            for name, online in (("backbone", method.backbone), ("projector", method.projector)):
                for t, o in zip(self.teacher[name].modules(), online.modules()):
                    t.training = o.training
        with torch.no_grad():
            views = ctx.views[: len(out.proj)]  # the views the method projected (Barlow uses the first two)
            _, target = method.encode(views, self.teacher["backbone"], self.teacher["projector"])
        loss = self.cfg.weight * views_kl(projections(out), target, self.temperature, self.cfg.form)
        self.take(method, ctx, out, loss)
        return {"mesa": loss}

    def after_step(self, method, ctx, out) -> None:
        if self.cfg.form == "normalised" and not bool(self.started):
            return  # nothing to average before the teacher starts
        ema_parameters_and_buffers(self.teacher["backbone"], method.backbone, self.decay)
        ema_parameters_and_buffers(self.teacher["projector"], method.projector, self.decay)


def build_saf(cfg, method) -> SAF | None:
    if not cfg.saf.enabled:
        return None
    dim = method.mcfg.proj_output_dim
    projector = getattr(method, "projector", None)  # C heads (AMCL): outputs (N, C, D)
    heads = (len(projector.heads),) if isinstance(projector, MultiHead) else ()
    return SAF(cfg.saf, cfg.trainer.max_epochs, out_shape=(*heads, dim) if dim else ())


def build_mesa(cfg, method) -> MESA | None:
    return MESA(cfg.mesa, method, cfg.trainer.max_epochs) if cfg.mesa.enabled else None


def _probe(kind):
    def probe(method, ctx, out) -> dict | None:
        reg = next((r for r in method.regularisers if isinstance(r, kind)), None)
        return reg.pending[1] if reg is not None and reg.pending and reg.pending[0] == ctx.step else None
    return probe


def _check(name: str):
    def check(series: dict) -> tuple[dict, list[str]]:
        """Off: the term never acted (never recorded, or always 0), or its gradient share stayed below 1%."""
        summary = {k: mean(values(series, k)) for k in series}
        summary["steps_recorded"] = len(values(series, "term"))
        terms = values(series, "term")
        warnings = []
        if not terms or max(terms) == 0:
            warnings.append(f"the {name} term was zero on every recorded step: the trajectory mechanism is off")
        elif summary.get("grad_share", 1.0) < 0.01:
            warnings.append(f"the {name} term's gradient on the backbone is {summary['grad_share']:.1e} of the "
                            "loss's: the trajectory mechanism is negligible")
        return summary, warnings
    return check


REGULARISERS.extend([build_saf, build_mesa])
MECHANISMS["saf"] = Mechanism(_probe(SAF), _check("SAF"))
MECHANISMS["mesa"] = Mechanism(_probe(MESA), _check("MESA"))
