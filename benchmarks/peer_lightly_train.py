"""SimCLR with lightly 1.6.0, written the way a lightly user writes it: torchvision's FashionMNIST dataset,
lightly's SimCLRTransform per image in a DataLoader with worker processes, lightly's projection head and
NT-Xent, a plain PyTorch loop. Runs in the peer environment that benchmarks/peer_lightly.py builds (never in
sharpshift's). The backbone is sharpshift's default ConvNet so that both libraries train the same network;
it is saved as a sharpshift backbone so that both are evaluated by the same probe.

    python peer_lightly_train.py OUT_DIR --data RAW_DIR --epochs 5 --batch-size 256 --precision bf16-mixed
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from contextlib import nullcontext
from pathlib import Path

import torch

# torchvision's PyPI build is a CUDA build whose compiled ops do not load against the CPU torch; it then fails
# at import on the two op schemas it registers unconditionally. Defining them first lets its pure-Python parts
# (datasets, transforms), and lightly, import and work.
_ops = torch.library.Library("torchvision", "DEF")
_ops.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
_ops.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")

import torchvision  # noqa: E402
from lightly.loss import NTXentLoss  # noqa: E402
from lightly.models.modules import SimCLRProjectionHead  # noqa: E402
from lightly.transforms import SimCLRTransform  # noqa: E402

from sharpshift.export import export_backbone  # noqa: E402
from sharpshift.models import backbone_arch, build_backbone  # noqa: E402

MEAN, STD = 0.2860, 0.3530  # Fashion-MNIST train split, in [0, 1] units


def warmup_cosine(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path)
    ap.add_argument("--data", type=Path, required=True, help="folder with FashionMNIST/raw/*-ubyte")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--precision", default="32", choices=["32", "bf16-mixed"])
    ap.add_argument("--lr", type=float, default=0.3)
    ap.add_argument("--limit-steps", type=int, default=0, help="stop after this many steps (a smoke test)")
    args = ap.parse_args()
    torch.manual_seed(0)

    # sharpshift's SimCLR recipe in lightly's terms: crops 0.2-1, flip 0.5, jitter 0.8 (brightness and
    # contrast 0.4), blur 0.5 with sigma 0.1-2; grey images, so no grayscale, saturation or hue effect
    transform = SimCLRTransform(input_size=28, min_scale=0.2, cj_prob=0.8, cj_strength=0.5, cj_bright=0.8,
                                cj_contrast=0.8, cj_sat=0.0, cj_hue=0.0, random_gray_scale=0.0, gaussian_blur=0.5,
                                sigmas=(0.1, 2.0), vf_prob=0.0, hf_prob=0.5, rr_prob=0.0,
                                normalize={"mean": [MEAN], "std": [STD]})
    dataset = torchvision.datasets.FashionMNIST(str(args.data), train=True, download=False, transform=transform)
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, shuffle=True, drop_last=True,
                                         num_workers=args.workers, persistent_workers=args.workers > 0)
    backbone = build_backbone("convnet", 1, 32).to(memory_format=torch.channels_last)
    head = SimCLRProjectionHead(input_dim=backbone.feat_dim, hidden_dim=512, output_dim=128)
    criterion = NTXentLoss(temperature=0.5)
    params = list(backbone.parameters()) + list(head.parameters())
    opt = torch.optim.SGD(params, lr=args.lr, momentum=0.9, weight_decay=1e-4)
    steps_per_epoch = len(loader)
    total = args.epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, steps_per_epoch, total))
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if args.precision == "bf16-mixed" else nullcontext

    ends, t0 = [], time.perf_counter()
    for _ in range(args.epochs):
        for (x0, x1), _, in loader:
            x = torch.cat([x0, x1]).to(memory_format=torch.channels_last)
            with autocast():
                z0, z1 = head(backbone(x)).chunk(2)
                loss = criterion(z0.float(), z1.float())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            ends.append(time.perf_counter())
            if len(ends) == args.limit_steps:
                break
        if len(ends) == args.limit_steps:
            break
    seconds = time.perf_counter() - t0
    periods = [b - a for a, b in zip([t0, *ends[:-1]], ends)][10:]
    arch = backbone_arch("convnet", 1, 32, True)
    arch.update(mean=[MEAN], std=[STD], image_size=28, method="lightly-simclr", dataset="fashion-mnist")
    args.out.mkdir(parents=True, exist_ok=True)
    export_backbone(backbone, arch, args.out)
    images = len(ends) * args.batch_size
    (args.out / "train.json").write_text(json.dumps({
        "library": "lightly 1.6.0", "train_seconds": round(seconds, 1), "steps": len(ends),
        "final_loss": float(loss.detach()),
        "whole_run_images_per_second": round(images / seconds, 1),
        "steady_images_per_second": round(args.batch_size / statistics.median(periods), 1),
        "precision": args.precision, "workers": args.workers, "torch": torch.__version__,
        "torchvision": torchvision.__version__}, indent=2))


if __name__ == "__main__":
    main()
