"""Step time of a base method with DSA against the same method without it, batch 256, in one process.

Rounds alternate (base, +DSA variants, base, ...) so machine noise hits all alike; the figure is the
ratio of the medians of post-warm-up steps. Also: peak memory (resident-set high-water mark above the
start) of DSA's N x N part, forward and backward of all four relations and both losses, ours against the
official construction (each in a fresh process; the official one needs about 2 GB at N = 512).
`sharpshift bench speed` measures DSA on SimCLR (into docs/benchmarks.md); this script adds BYOL and the memory.

    .venv/bin/python benchmarks/dsa_speed.py [--threads 1] [--out FILE.json]
    .venv/bin/python benchmarks/dsa_speed.py --memory-only      # the memory figures alone, no training steps
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

# (label, method config, DSA overrides); None = the base method
CASES = [
    ("simclr", "simclr", None),
    ("simclr+dsa (frozen prior, originals cached)", "simclr", ["dsa.prior=random"]),
    ("simclr+dsa (frozen prior, no cache: first epoch)", "simclr", ["dsa.prior=random", "dsa.cache_originals=false"]),
    ("byol", "byol", None),
    ("byol+dsa (ema prior)", "byol", ["dsa.prior=ema"]),
]

MEMORY_PROBE = r"""
import sys, torch
from sharpshift.dsa.adjuster import PairAdjuster
from sharpshift.dsa.loss import PAIRS, weighted_relation_loss, relation_regulariser, prior_relations
torch.set_num_threads(1)
n, emb, mode = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
def status_kb(key):
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith(key))
h = [torch.randn(n, emb, requires_grad=True) for _ in range(2)]
adj = PairAdjuster(emb, 64)
u = [torch.randn(n, 256), torch.randn(n, 256)]
open("/proc/self/clear_refs", "w").write("5")  # reset the high-water mark
before = status_kb("VmRSS:")
def official(a, b):  # the official construction: N^2 x emb differences, then the MLP on all of them
    d = torch.nn.functional.normalize(torch.cat([a[i].expand(len(b), -1) - b for i in range(len(a))]), dim=0, p=1)
    s = torch.relu(adj.second(torch.relu(adj.first(d)))).view(len(a), len(b))
    return torch.nn.functional.normalize(s, dim=1, p=1)
rel = [(adj if mode == "ours" else official)(h[a], h[b]) for a, b in PAIRS]
pri = prior_relations(*u)
loss = weighted_relation_loss(h[0], h[1], rel, torch.rand(n)) + 0.01 * relation_regulariser(rel, pri)
loss.backward()
print((status_kb("VmHWM:") - before) / 1024)
"""


def step_times(method: str, dsa: list[str] | None, batch: int, steps: int, warmup: int, tmp: Path) -> list[float]:
    from sharpshift.bench.timing import sharpshift_steps
    from sharpshift.config import load_config
    from sharpshift.data.registry import load_dataset

    overrides = [f"data.batch_size={batch}", "eval.knn_every_n_epochs=0", "eval.online_probe=false",
                 "trainer.progress_bar=false", "trainer.precision=32", f"data.subset={batch * warmup}"]
    overrides += ["dsa.enabled=true", *dsa] if dsa else []
    cfg = load_config(method, overrides)
    train = load_dataset(cfg.data.dataset, "train").subset(cfg.data.subset, seed=0)
    return sharpshift_steps(cfg, train, steps + warmup, tmp)[warmup:]  # warm-up = one epoch: caches full


def peak_memory_mb(n: int, emb: int, mode: str) -> float:
    r = subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(n), str(emb), mode], capture_output=True, text=True,
                       check=True)
    return round(float(r.stdout.strip().splitlines()[-1]), 1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    ap.add_argument("--memory-only", action="store_true", help="only the peak memory of the N x N part")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    result: dict = {"threads": args.threads}
    if not args.memory_only:
        times: dict[str, list[float]] = {label: [] for label, _, _ in CASES}
        with tempfile.TemporaryDirectory() as tmp:
            for _ in range(args.rounds):
                for label, method, dsa in CASES:
                    times[label] += step_times(method, dsa, args.batch, args.steps, args.warmup, Path(tmp))
        median = {k: statistics.median(v) for k, v in times.items()}
        result.update({"batch_size": args.batch, "steps_each": args.steps * args.rounds,
                       "step_s": {k: round(v, 4) for k, v in median.items()},
                       "ratio_to_base": {k: round(v / median[k.split("+")[0]], 3)
                                         for k, v in median.items() if "+" in k}})
    # emb 128 = our SimCLR/MoCo/BYOL projector width; adjuster hidden 64 and chunk 64 MB, the defaults
    result["peak_mb_dsa_part"] = {f"ours N={n}": peak_memory_mb(n, 128, "ours") for n in (256, 1024)}
    result["peak_mb_dsa_part"].update({f"official construction N={n}": peak_memory_mb(n, 128, "official")
                                       for n in (256, 512)})
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
