"""Cases for tests/test_distributed.py: each computes a loss and its gradients on a batch, in one process
on the whole batch (the reference) and in W gloo processes on its slice of the batch (the workers).

Kept free of pytest so that forked workers import nothing they do not need."""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from sharpshift.losses import barlow_twins_loss, byol_loss, infonce_queue, nt_xent, simsiam_loss
from sharpshift.losses.dist import gather_no_grad

N = 8  # global batch; every process gets N / W rows
DIM_IN, DIM_OUT = 6, 5


def batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(N, DIM_IN, generator=g), torch.randn(N, DIM_IN, generator=g)


def tiny_net(seed: int, d_in: int = DIM_IN, d_out: int = DIM_OUT) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d_in, 16), nn.ReLU(), nn.Linear(16, d_out))


# --- loss-level cases: a tiny network, fixed tensors --------------------------------------------------------
def loss_case(name: str, x1: torch.Tensor, x2: torch.Tensor):
    """-> (loss, {param name: module}, extra tensors to compare). x1, x2 are this process's rows."""
    net = tiny_net(1)
    mods = {"net": net}
    extra = {}
    if name == "simclr":
        loss = nt_xent(net(x1), net(x2), 0.5)
    elif name == "barlow":
        loss = barlow_twins_loss(net(x1), net(x2), 0.005, 0.1)
    elif name in ("byol", "simsiam"):
        pred = mods["pred"] = tiny_net(2, DIM_OUT, DIM_OUT)
        fn = byol_loss if name == "byol" else simsiam_loss
        z1, z2 = net(x1), net(x2)
        loss = fn(pred(z1), z2) + fn(pred(z2), z1)
    elif name == "moco":
        key_net = tiny_net(3)
        queue = F.normalize(torch.randn(12, DIM_OUT, generator=torch.Generator().manual_seed(4)), dim=1)
        with torch.no_grad():
            k = key_net(x2)
        loss = infonce_queue(net(x1), k, queue, 0.2)
        extra["enqueued_keys"] = gather_no_grad(F.normalize(k, dim=1))  # what MoCo writes into its queue
    else:
        raise KeyError(name)
    return loss, mods, extra


LOSS_CASES = ("simclr", "moco", "barlow", "byol", "simsiam")


# --- method-level cases: the real modules (BN in eval mode: per-sample, so a split batch is exact) ---------
def method_module(name: str, overrides: tuple[str, ...] = ()):
    from sharpshift.config import load_config
    from sharpshift.methods import METHODS

    cfg = load_config(None, [f"method.name={name}", "data.dataset=digits", "model.width=4",
                             "method.proj_hidden_dim=16", "method.proj_output_dim=8", "eval.online_probe=false",
                             "model.channels_last=false",
                             *(["method.queue_size=16"] if name == "moco" else []),
                             *(["method.pred_hidden_dim=8"] if name in ("byol", "simsiam") else []), *overrides])
    torch.manual_seed(0)
    module = METHODS[name](cfg, 1, 8, 10, [0.5], [0.25], total_steps=10, steps_per_epoch=5)
    return module.eval()


def method_views(seed: int = 5, count: int = 2) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (N, 1, 8, 8), dtype=torch.uint8, generator=g)
    views = [torch.randn(N, 1, 8, 8, generator=g) for _ in range(count)]
    return images, views, torch.arange(N)


def prefill_saf(module, epoch: int) -> None:
    """Give SAF's buffer an output for every sample from `epoch`, so that its term acts at once."""
    g = torch.Generator().manual_seed(6)
    for reg in module.regularisers:
        if hasattr(reg, "past"):
            reg.write(torch.arange(N), torch.randn(N, module.mcfg.proj_output_dim, generator=g), epoch)


def method_case(case: "MethodCase", lo: int, hi: int, world: int):
    """The method's loss on rows lo:hi and its gradients (or, with a stepper, the parameters after one step),
    then its once-per-step updates (queues, buffers, EMA targets)."""
    from sharpshift.steps import StepContext

    module = method_module(case.method, case.overrides)
    if case.saf_epoch is not None:
        prefill_saf(module, case.saf_epoch - 1)
    if case.move_teacher:
        move_teacher(module)
    images, views, indices = method_views(count=case.views)
    ctx = StepContext(images[lo:hi], torch.full((hi - lo,), -1), indices[lo:hi], [v[lo:hi] for v in views], 0,
                      case.saf_epoch or 0)

    def closure():
        out = module.objective(ctx)
        for reg in module.regularisers:
            out.add(reg(module, ctx, out))
        return out

    if case.stepper:  # run the add-on's stepper (SAM) with DDP's gradient averaging, compare the parameters after
        module.manual_backward = lambda loss: (loss.backward(), average_grads(module.parameters(), world))
        opt = torch.optim.SGD([p for p in module.parameters() if p.requires_grad], lr=0.5)
        out = module.stepper(module, opt, closure)
        grads = {k: p.grad for k, p in module.named_parameters() if p.grad is not None}
        extra = {f"after_step.{k}": p.detach().clone() for k, p in module.named_parameters()}
    else:
        out = closure()
        out.loss.backward()
        grads = {k: p.grad for k, p in module.named_parameters() if p.grad is not None}
        extra = {}
    with torch.no_grad():
        module.after_optimizer_step(ctx, out)
        for reg in module.regularisers:
            if hasattr(reg, "after_step"):
                reg.after_step(module, ctx, out)
    extra.update({k: b.clone() for k, b in module.named_buffers() if not k.endswith("num_batches_tracked")})
    return out.loss.detach(), grads, extra, {k: v.detach().float() for k, v in out.terms.items()}


@torch.no_grad()
def move_teacher(module) -> None:
    g = torch.Generator().manual_seed(7)
    for reg in module.regularisers:
        for p in getattr(reg, "teacher", nn.Module()).parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g))


def average_grads(params, world: int) -> None:
    if world > 1:
        for p in params:
            if p.grad is not None:
                dist.all_reduce(p.grad)
                p.grad /= world


@dataclass
class MethodCase:
    label: str
    method: str
    overrides: tuple[str, ...] = ()
    saf_epoch: int | None = None  # SAF: the step runs in this epoch, its buffer filled one epoch before
    stepper: bool = False  # compare the parameters after the stepper's update (SAM)
    move_teacher: bool = False  # MESA: a teacher equal to the student gives a zero term; move it away first
    per_process: str = ""  # why this case is, by design, not equal to one process (then the test is xfail)
    views: int = 2  # views per image in the step (RSA: [a1, a2, w1, w2])


# the base methods, then each add-on on a method that supports it. Not here: AMCL on Barlow Twins, whose
# temperature network reads each process's batch (its input size is the per-process batch), so one process
# on the concatenated batch is a different network (sharpshift.amcl.losses.amcl_barlow_twins); and Fourier
# views, which change only how views are made (each process from its own batch and generator), not the loss.
METHOD_CASES: list[MethodCase] = [MethodCase(m, m) for m in LOSS_CASES] + [
    MethodCase("simclr+amcl", "simclr", ("amcl.enabled=true", "amcl.heads=2", "amcl.phi_hidden=8")),
    MethodCase("moco+amcl", "moco", ("amcl.enabled=true", "amcl.heads=2", "amcl.phi_hidden=8")),
    MethodCase("simsiam+amcl", "simsiam", ("amcl.enabled=true", "amcl.heads=2", "amcl.phi_hidden=8")),
    MethodCase("simclr+saf", "simclr", ("saf.enabled=true", "saf.epochs_ago=1", "saf.start_epoch=1"), saf_epoch=1),
    MethodCase("byol+mesa", "byol", ("mesa.enabled=true", "mesa.start_epoch=0"), move_teacher=True),
    MethodCase("simclr+sam", "simclr", ("sam.enabled=true", "sam.rho=0.5"), stepper=True),
    MethodCase("byol+asam", "byol", ("sam.enabled=true", "sam.adaptive=true", "sam.perturb=all"), stepper=True),
    # RSA (rsa.enabled): its own loss on [a1, a2, w1, w2], weak views as keys/targets; beta_k > 0 at step 0,
    # so both the aggressive-weak and the aggressive-aggressive terms act
    MethodCase("simclr+rsa", "simclr", ("rsa.enabled=true",), views=4),
    MethodCase("moco+rsa", "moco", ("rsa.enabled=true",), views=4),
    MethodCase("byol+rsa", "byol", ("rsa.enabled=true",), views=4),
    MethodCase("simclr+dsa", "simclr", ("dsa.enabled=true", "dsa.prior=random", "dsa.neighbours=2",
                                        "dsa.hidden_dim=8"),
               per_process="DSA's N x N relations and losses are per process (sharpshift.dsa.regulariser)"),
]


# --- running a case ----------------------------------------------------------------------------------------
def run_case(kind: str, label: str, rank: int, world: int) -> dict:
    """Loss, gradients and compared extras of one case on this process's slice (all of it when world=1)."""
    per = N // world
    lo, hi = rank * per, (rank + 1) * per
    terms = {}
    if kind == "loss":
        x1, x2 = batch()
        loss, mods, extra = loss_case(label, x1[lo:hi], x2[lo:hi])
        loss.backward()
        grads = {f"{m}.{k}": p.grad for m, mod in mods.items() for k, p in mod.named_parameters()}
    else:
        case = next(c for c in METHOD_CASES if c.label == label)
        loss, grads, extra, terms = method_case(case, lo, hi, world)
    return {"loss": loss.detach(), "grads": grads, "extra": extra, "terms": terms}


def average(result: dict, world: int) -> dict:
    """What DDP does with gradients (the mean over processes); the loss and its terms are averaged too.
    `extra` (queues, buffers, parameters after a step) is the first process's: they must agree anyway."""
    if world == 1:
        return result

    def mean(t: torch.Tensor) -> torch.Tensor:
        t = t.clone()
        dist.all_reduce(t)
        return t / world

    return {"loss": mean(result["loss"]), "grads": {k: mean(g) for k, g in result["grads"].items()},
            "terms": {k: mean(v) for k, v in result["terms"].items()}, "extra": result["extra"]}


def all_cases() -> list[tuple[str, str]]:
    return [("loss", c) for c in LOSS_CASES] + [("method", c.label) for c in METHOD_CASES]


class _GatherNoReduce(torch.autograd.Function):
    """The bug of lightly #1528: the backward keeps only this process's gradient, without the all-reduce."""

    @staticmethod
    def forward(ctx, x):  # type: ignore[override]
        out = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(out, x.contiguous())
        return tuple(out)

    @staticmethod
    def backward(ctx, *grads):  # type: ignore[override]
        return grads[dist.get_rank()]


def broken_simclr(rank: int, world: int) -> dict:
    """The SimCLR loss case with the buggy gather: the test must see its gradients differ."""
    import sharpshift.losses.contrastive as contrastive

    original = contrastive.gather
    contrastive.gather = lambda x: torch.cat(_GatherNoReduce.apply(x), 0)
    try:
        return run_case("loss", "simclr", rank, world)
    finally:
        contrastive.gather = original


def worker(rank: int, world: int, port: int, out: str) -> None:
    torch.set_num_threads(1)  # forked from a process that may have used threads: stay single-threaded
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        results = {f"{kind}:{label}": average(run_case(kind, label, rank, world), world)
                   for kind, label in all_cases()}
        results["broken:simclr"] = average(broken_simclr(rank, world), world)
        if rank == 0:
            torch.save(results, out)
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_workers(out: Path, world: int = 2) -> dict:
    import torch.multiprocessing as mp

    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    os.environ.pop("SHARPSHIFT_RUN_DIR", None)
    mp.start_processes(worker, args=(world, free_port(), str(out)), nprocs=world, start_method=method)
    return torch.load(out, weights_only=True)
