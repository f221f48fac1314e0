"""The shared training loop for every base method: small on purpose.

A method subclass builds its heads (each through `self.head`), its non-parameter state (`build_state`), computes
its loss (`compute_loss`), and says what to do once per optimizer step (`after_optimizer_step`: EMA targets,
queues). Add-ons plug in through sharpshift.plugins without touching methods:
- an objective (AMCL, RSA) replaces `compute_loss` for the (add-on, method) pairs it registers, and a head
  builder and extra modules (AMCL's C heads and temperature network) replace or add to the heads;
- regularisers (SAF, MESA, DSA, ...) add weighted loss terms from the step's outputs;
- a stepper (plain, SAM, ...) owns zero_grad/backward/clip/step and may call the closure twice,
  which is why every once-per-step side effect lives in `after_optimizer_step`, never in the forward.
Optimisation is manual (Lightning's manual optimisation), which is what two-pass steppers need.
"""
from __future__ import annotations

import warnings
from typing import ClassVar

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from sharpshift.config import Config, MethodConfig
from sharpshift.data.views import ViewGenerator, view_params
from sharpshift.losses.dist import average_gradients
from sharpshift.mechanisms import MechanismLog
from sharpshift.models import build_backbone
from sharpshift.models.heads import mlp
from sharpshift.nonfinite import NonFiniteLoss, check_finite
from sharpshift.optim import build_optimizer, cosine_momentum, warmup_cosine
import sharpshift.addons  # noqa: F401  (every add-on registers with sharpshift.plugins, once)
from sharpshift import plugins
from sharpshift.steps import StepContext, StepOutput, Stepper, plain_step


class SSLMethod(L.LightningModule):
    name: ClassVar[str] = ""
    recipe: ClassVar[str] = "symmetric"  # the default view recipe (its MethodConfig defaults: config.METHOD_DEFAULTS)

    def __init__(self, cfg: Config, in_channels: int, image_size: int, num_classes: int,
                 mean: list[float], std: list[float], total_steps: int, steps_per_epoch: int, seed_offset: int = 0):
        super().__init__()
        plugins.check_compatible(cfg)  # before anything is built: one line naming the fix
        self.cfg = cfg
        self.mcfg: MethodConfig = cfg.method
        self.automatic_optimization = False
        self.total_steps = total_steps
        self.steps_per_epoch = steps_per_epoch
        self.backbone = build_backbone(cfg.model.backbone, in_channels, cfg.model.width, cfg.model.cifar_stem)
        self.feat_dim: int = self.backbone.feat_dim
        self.views = ViewGenerator(view_params(cfg.views, self.recipe, image_size), mean, std, image_size,
                                   seed=cfg.seed * 1000 + seed_offset)
        self.views = plugins.wrap_views(cfg, self, self.views)  # add-ons may extend the views (Fourier, RSA)
        self.probe = nn.Linear(self.feat_dim, num_classes) if cfg.eval.online_probe and num_classes else None
        if self.probe is not None:  # its loss never goes through DDP's forward: DDP must not wait for its grads
            self._ddp_params_and_buffers_to_ignore = [f"probe.{n}" for n, _ in self.probe.named_parameters()]
        self.build_heads()
        self.addon_modules = plugins.modules(cfg)  # right after the heads: the same init order
        for attribute, module in self.addon_modules.items():
            setattr(self, attribute, module)
        self.build_state()
        self._objective = plugins.objective(cfg, self.name)  # an add-on's loss for this method, or None
        if cfg.model.channels_last:
            self.to(memory_format=torch.channels_last)
        self.mechanisms = MechanismLog(cfg.trainer.log_every_n_steps)  # before the regularisers: they read it
        self.regularisers = nn.ModuleList(plugins.regularisers(cfg, self))
        self.stepper: Stepper = plugins.stepper(cfg, self, plain_step)
        self.monitor: tuple[torch.Tensor, ...] | None = None  # (train_x, train_y, test_x, test_y) for kNN
        self._probe_hits = torch.zeros(2)
        self.skipped_steps = 0  # non-finite losses skipped (trainer.on_nonfinite=skip)
        self.grad_norms: list[torch.Tensor] = []  # each step's gradient norm before optim.grad_clip, where it is on
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

    def build_state(self) -> None:
        """Buffers that are not parameters (MoCo's queue), built after the heads and the add-ons' modules."""

    def compute_loss(self, ctx: StepContext) -> StepOutput:
        raise NotImplementedError

    # --- what the loop calls -------------------------------------------------------------------
    def head(self, make_head) -> nn.Module:
        """One head: make_head(), or what an enabled add-on builds from it (AMCL: C independent heads)."""
        return plugins.head(self.cfg, make_head)

    def projector_head(self, layers: int, last_bn: bool = False) -> nn.Module:
        """The projector every method has: backbone features -> proj_hidden_dim -> proj_output_dim."""
        m = self.mcfg
        return self.head(lambda: mlp(self.feat_dim, m.proj_hidden_dim, m.proj_output_dim, layers=layers,
                                     last_bn=last_bn))

    def objective(self, ctx: StepContext) -> StepOutput:
        """The loss of a step: the method's own, or the enabled add-on's objective for this method."""
        return self._objective(self, ctx) if self._objective is not None else self.compute_loss(ctx)

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
    def own_optimizers(self) -> list[torch.optim.Optimizer]:
        """Optimisers that regularisers and add-on modules bring for their own parameters (DSA's adjuster: the
        official Adam; AMCL's phi with amcl.phi_lr). Their parameters are outside the main optimiser and its clip."""
        carriers = [*self.regularisers, *self.addon_modules.values()]
        built = (c.build_optimizer() for c in carriers if hasattr(c, "build_optimizer"))
        return [o for o in built if o is not None]

    def configure_optimizers(self):
        extra = self.own_optimizers()
        owned = {id(p) for o in extra for g in o.param_groups for p in g["params"]}
        opt = build_optimizer(self.online_modules(), self.cfg.optim, skip=owned)
        warmup = int(round(self.cfg.optim.warmup_epochs * self.steps_per_epoch))
        total, min_ratio = self.total_steps, self.cfg.optim.min_lr_ratio
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, warmup, total, min_ratio))
        opts = [opt]
        if self.probe is not None:
            opts.append(torch.optim.Adam(self.probe.parameters(), lr=self.cfg.optim.probe_lr))
        self._first_own_optimizer = len(opts)
        return opts + extra, [{"scheduler": sched, "interval": "step"}]

    def training_step(self, batch, batch_idx):
        images, labels, indices = batch
        ctx = StepContext(images, labels, indices, self.views(images), self.global_step, self.current_epoch)
        self.views_per_image = len(ctx.views)
        opts = self.optimizers()
        opts = opts if isinstance(opts, list) else [opts]
        own = opts[getattr(self, "_first_own_optimizer", len(opts)):]
        for o in own:  # their gradients come from the same backward (both of SAM's passes, summed)
            o.zero_grad(set_to_none=True)

        def closure() -> StepOutput:
            out = self.objective(ctx)
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
        for o in own:
            o.optimizer.step()  # the raw optimizer: Lightning counts global_step on the main optimizer only
        self.after_optimizer_step(ctx, out)
        for reg in self.regularisers:
            if hasattr(reg, "after_step"):
                reg.after_step(self, ctx, out)
        if self.mechanisms.due(ctx.step):
            for addon in plugins.active(self.cfg, plugins.MECHANISMS):
                figures = plugins.MECHANISMS[addon].probe(self, ctx, out)
                if figures:
                    self.mechanisms.record(addon, ctx.step, figures)
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
