"""The shared training loop for every base method: small on purpose.

A method subclass builds its heads and computes its loss (`compute_loss`), and says what to do once per
optimizer step (`after_optimizer_step`: EMA targets, queues). Add-ons plug in without touching methods:
- regularisers (SAF, MESA, DSA, ...) add weighted loss terms from the step's outputs;
- a stepper (plain, SAM, ...) owns zero_grad/backward/clip/step and may call the closure twice,
  which is why every once-per-step side effect lives in `after_optimizer_step`, never in the forward.
Optimisation is manual (Lightning's manual optimisation), which is what two-pass steppers need.
"""
from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass, field
from typing import Callable, ClassVar

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from sharpshift.config import Config, MethodConfig
from sharpshift.data.views import ViewGenerator, view_params
from sharpshift.losses.dist import average_gradients
from sharpshift.models import build_backbone
from sharpshift.nonfinite import NonFiniteLoss, check_finite
from sharpshift.optim import build_optimizer, cosine_momentum, warmup_cosine


@dataclass
class StepContext:
    """What a step sees: the raw batch, its views, and where training stands."""

    images: torch.Tensor  # uint8 originals (N, C, H, W)
    labels: torch.Tensor  # int64, -1 where unknown
    indices: torch.Tensor  # dataset indices of the batch (SAF's buffer needs them)
    views: list[torch.Tensor]
    step: int
    epoch: int


@dataclass
class StepOutput:
    """One forward pass: the loss to backpropagate, its named parts, and the tensors add-ons reuse."""

    loss: torch.Tensor
    terms: dict[str, torch.Tensor] = field(default_factory=dict)
    feats: list[torch.Tensor] = field(default_factory=list)  # backbone features per view
    proj: list[torch.Tensor] = field(default_factory=list)  # projector outputs per view
    extra: dict = field(default_factory=dict)  # method-specific, e.g. MoCo's keys to enqueue

    def add(self, terms: dict[str, torch.Tensor]) -> None:
        """Add already-weighted terms to the loss."""
        for name, value in terms.items():
            self.terms[name] = value
            self.loss = self.loss + value


Stepper = Callable[["SSLMethod", torch.optim.Optimizer, Callable[[], StepOutput]], StepOutput]


def plain_step(module: "SSLMethod", opt, closure: Callable[[], StepOutput]) -> StepOutput:
    opt.zero_grad(set_to_none=True)
    out = closure()
    module.manual_backward(out.loss)
    if module.cfg.optim.grad_clip > 0:
        module.clip_gradients(opt, gradient_clip_val=module.cfg.optim.grad_clip, gradient_clip_algorithm="norm")
    opt.step()
    return out


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, decay: float) -> None:
    """target <- decay * target + (1 - decay) * online, for parameters; buffers are copied."""
    t_params = [p for p in target.parameters()]
    o_params = [p.detach() for p in online.parameters()]
    torch._foreach_lerp_(t_params, o_params, 1.0 - decay)
    for tb, ob in zip(target.buffers(), online.buffers()):
        tb.copy_(ob)


def frozen_copy(module: nn.Module) -> nn.Module:
    target = copy.deepcopy(module)
    for p in target.parameters():
        p.requires_grad_(False)
    return target


class SSLMethod(L.LightningModule):
    name: ClassVar[str] = ""
    recipe: ClassVar[str] = "symmetric"  # the default view recipe
    defaults: ClassVar[dict] = {}  # values for MethodConfig fields left empty

    def __init__(self, cfg: Config, in_channels: int, image_size: int, num_classes: int,
                 mean: list[float], std: list[float], total_steps: int, steps_per_epoch: int, seed_offset: int = 0):
        super().__init__()
        self.cfg = cfg
        self.mcfg: MethodConfig = cfg.method
        self.automatic_optimization = False
        self.total_steps = total_steps
        self.steps_per_epoch = steps_per_epoch
        self.backbone = build_backbone(cfg.model.backbone, in_channels, cfg.model.width, cfg.model.cifar_stem)
        self.feat_dim: int = self.backbone.feat_dim
        self.views = ViewGenerator(view_params(cfg.views, self.recipe, image_size), mean, std, image_size,
                                   seed=cfg.seed * 1000 + seed_offset)
        from sharpshift.methods.hooks import wrap_views

        self.views = wrap_views(cfg, self, self.views)  # add-ons may extend the views (Fourier, RSA)
        self.probe = nn.Linear(self.feat_dim, num_classes) if cfg.eval.online_probe and num_classes else None
        if self.probe is not None:  # its loss never goes through DDP's forward: DDP must not wait for its grads
            self._ddp_params_and_buffers_to_ignore = [f"probe.{n}" for n, _ in self.probe.named_parameters()]
        self.build_heads()
        if cfg.model.channels_last:
            self.to(memory_format=torch.channels_last)
        from sharpshift.methods.hooks import build_regularisers, build_stepper

        self.regularisers = nn.ModuleList(build_regularisers(cfg, self))
        self.stepper: Stepper = build_stepper(cfg, self)
        self.monitor: tuple[torch.Tensor, ...] | None = None  # (train_x, train_y, test_x, test_y) for kNN
        self._probe_hits = torch.zeros(2)
        self.skipped_steps = 0  # non-finite losses skipped (trainer.on_nonfinite=skip)
        self.views_per_image = cfg.views.num_views  # the views a step really made (RSA makes more), for train.json

    def setup(self, stage: str) -> None:
        # The global rank is known now, however the processes were launched (Lightning, torchrun, SLURM):
        # one view stream per process. A resumed run then restores the stream it had reached.
        if self.trainer is not None and self.trainer.world_size > 1:
            self.views.seed = self.cfg.seed * 1000 + self.trainer.global_rank
            self.views._gen = None

    # --- what a method defines -------------------------------------------------------------------
    def build_heads(self) -> None:
        raise NotImplementedError

    def compute_loss(self, ctx: StepContext) -> StepOutput:
        raise NotImplementedError

    def after_optimizer_step(self, ctx: StepContext, out: StepOutput) -> None:
        """Once per optimizer step, after it: EMA targets, queues."""

    def online_modules(self) -> list[nn.Module]:
        """Modules the main optimizer trains: everything but the probe and frozen targets."""
        skip = {id(self.probe)} | {id(m) for m in self.target_modules()}
        return [m for m in self.children() if id(m) not in skip and m is not self.views]

    def target_modules(self) -> list[nn.Module]:
        return []

    # --- shared helpers --------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def encode(self, views: list[torch.Tensor], backbone: nn.Module, head: nn.Module):
        """Run all views as one batch (one pass is faster than V), split the results back per view."""
        feats = backbone(torch.cat(views))
        proj = head(feats)
        n = len(views)
        return list(feats.chunk(n)), list(proj.chunk(n))

    def momentum(self) -> float:
        return cosine_momentum(self.global_step, self.total_steps, self.mcfg.momentum_base, self.mcfg.momentum_final)

    # --- the loop --------------------------------------------------------------------------------
    def configure_optimizers(self):
        opt = build_optimizer(self.online_modules(), self.cfg.optim)
        warmup = int(round(self.cfg.optim.warmup_epochs * self.steps_per_epoch))
        total, min_ratio = self.total_steps, self.cfg.optim.min_lr_ratio
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, warmup, total, min_ratio))
        opts = [opt]
        if self.probe is not None:
            opts.append(torch.optim.Adam(self.probe.parameters(), lr=self.cfg.optim.probe_lr))
        return opts, [{"scheduler": sched, "interval": "step"}]

    def training_step(self, batch, batch_idx):
        images, labels, indices = batch
        ctx = StepContext(images, labels, indices, self.views(images), self.global_step, self.current_epoch)
        self.views_per_image = len(ctx.views)
        opts = self.optimizers()
        opts = opts if isinstance(opts, list) else [opts]

        def closure() -> StepOutput:
            out = self.compute_loss(ctx)
            for reg in self.regularisers:
                out.add(reg(self, ctx, out))
            check_finite(out, self.global_step)  # before backward: a NaN never reaches the weights
            return out

        try:
            out = self.stepper(self, opts[0], closure)
        except NonFiniteLoss as e:
            if self.cfg.trainer.on_nonfinite != "skip":
                raise
            opts[0].zero_grad(set_to_none=True)
            self.skipped_steps += 1
            warnings.warn(f"skipped step {e.step}: term {e.term!r} is {e.value} ({self.skipped_steps} skipped)",
                          stacklevel=1)
            return None
        self.after_optimizer_step(ctx, out)
        for reg in self.regularisers:
            if hasattr(reg, "after_step"):
                reg.after_step(self, ctx, out)
        self.lr_schedulers().step()
        if self.probe is not None:
            self._probe_step(opts[1], out.feats[0].detach(), labels)
        if self.global_step % self.cfg.trainer.log_every_n_steps == 0:
            logs = {"train/loss": out.loss.detach(), "train/lr": opts[0].param_groups[0]["lr"]}
            logs.update({f"train/{k}": v.detach() for k, v in out.terms.items()})
            self.log_dict(logs, on_step=True, on_epoch=False, batch_size=len(images))
            self.log("loss", out.loss.detach(), prog_bar=True, logger=False, batch_size=len(images))

    def _probe_step(self, opt, feats: torch.Tensor, labels: torch.Tensor) -> None:
        known = labels >= 0
        if not bool(known.any()):
            return
        logits = self.probe(feats[known].float())
        loss = F.cross_entropy(logits, labels[known])
        opt.zero_grad(set_to_none=True)
        loss.backward()  # outside DDP (see __init__); the processes average the probe's gradients themselves
        average_gradients(self.probe.parameters())
        opt.optimizer.step()  # the raw optimizer: Lightning counts global_step on the main optimizer only
        hits = torch.stack([(logits.argmax(1) == labels[known]).sum(), known.sum()]).float().cpu()
        self._probe_hits += hits

    def on_train_epoch_end(self) -> None:
        if self._probe_hits[1] > 0:
            self.log("train/online_probe_top1", float(self._probe_hits[0] / self._probe_hits[1]), prog_bar=True)
            self._probe_hits.zero_()
        every = self.cfg.eval.knn_every_n_epochs
        if every and self.monitor is not None and (self.current_epoch + 1) % every == 0:
            self.log("val/knn_top1", self.knn_monitor(), prog_bar=True)

    @torch.no_grad()
    def knn_monitor(self) -> float:
        from sharpshift.evaluation.features import extract_features
        from sharpshift.evaluation.knn import knn_top1

        train_x, train_y, test_x, test_y = self.monitor
        kw = dict(device=self.device, mean=self.views.mean.flatten().tolist(), std=self.views.std.flatten().tolist())
        f_train = extract_features(self.backbone, train_x, **kw)
        f_test = extract_features(self.backbone, test_x, **kw)
        return knn_top1(f_train, train_y, f_test, test_y, k=self.cfg.eval.knn_k,
                        temperature=self.cfg.eval.knn_temperature)
