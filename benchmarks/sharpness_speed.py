"""Step time of SimCLR with SAM, ASAM, SAF and MESA against the plain SimCLR step, in one process.

Rounds interleave the cases (plain, SAM, ASAM, SAF, MESA, plain, ...) so that machine noise hits all alike;
each figure is the median of the post-warm-up steps over all rounds, and the ratio is to the plain median.
Each case trains on 2 batches' worth of images, so an epoch is 2 steps: the warm-up (2 epochs) fills SAF's
buffer, and every timed step of SAF and MESA has its trajectory term on. The online probe is off (it would
add the same cost to every case and pull the ratios towards 1).

    .venv/bin/python benchmarks/sharpness_speed.py [--threads 1] [--rounds 3] [--steps 8]

Writes docs/results/sharpness_speed.json and the `speed` section of docs/results/sharpness.md.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
from pathlib import Path

import torch

CASES = {
    "simclr": [],
    "+SAM (rho 0.05, extractor)": ["sam.enabled=true"],
    "+ASAM (rho 0.5, extractor)": ["sam.enabled=true", "sam.adaptive=true"],
    "+SAF (E=1, on)": ["saf.enabled=true", "saf.epochs_ago=1", "saf.start_epoch=1"],
    "+MESA (on)": ["mesa.enabled=true", "mesa.start_epoch=0"],
}
BOUNDS = {"+SAM": 2.1, "+ASAM": 2.1, "+SAF": 1.05, "+MESA": 1.3}  # the ceilings


def step_times(overrides: list[str], batch: int, steps: int, warmup: int, tmp: Path) -> list[float]:
    from sharpshift.bench.speed import sharpshift_steps
    from sharpshift.config import load_config
    from sharpshift.data.registry import load_dataset
    from sharpshift.methods import resolve_method_defaults

    cfg = load_config("simclr", [f"data.batch_size={batch}", f"data.subset={2 * batch}", "eval.knn_every_n_epochs=0",
                                 "eval.online_probe=false", "trainer.progress_bar=false", "trainer.precision=32",
                                 "trainer.max_epochs=1000", *overrides])
    resolve_method_defaults(cfg)
    train = load_dataset(cfg.data.dataset, "train").subset(cfg.data.subset, seed=0)
    return sharpshift_steps(cfg, train, steps + warmup, tmp)[warmup:]


def render(result: dict) -> str:
    lines = [
        "## Step time against the plain SimCLR step",
        "",
        f"Command: `.venv/bin/python benchmarks/sharpness_speed.py --threads {result['threads']} "
        f"--rounds {result['rounds']} --steps {result['steps_per_round']}`. Machine: {result['machine']}.",
        f"Fashion-MNIST 28x28, default ConvNet, batch {result['batch_size']}, fp32, online probe off; median of "
        f"{result['steps_each']} post-warm-up steps per case, cases interleaved in {result['rounds']} rounds, one process.",
        "",
        "| case | step (s) | ratio to plain | issue's ceiling |",
        "|---|---|---|---|",
    ]
    for label, t in result["step_s"].items():
        ratio = result["ratio"].get(label)
        bound = next((f"{v}x" for k, v in BOUNDS.items() if label.startswith(k + " ")), "")
        lines.append(f"| {label} | {t:.3f} | {f'{ratio:.2f}x' if ratio else '1.00x'} | {bound} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path("docs/results/sharpness_speed.json"))
    ap.add_argument("--doc", type=Path, default=Path("docs/results/sharpness.md"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    times: dict[str, list[float]] = {label: [] for label in CASES}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.rounds):
            for label, overrides in CASES.items():
                times[label] += step_times(overrides, args.batch, args.steps, args.warmup, Path(tmp))
    median = {k: statistics.median(v) for k, v in times.items()}
    base = median["simclr"]
    result = {"machine": f"{platform.machine()}, {args.threads} thread(s), torch {torch.__version__}",
              "batch_size": args.batch, "threads": args.threads, "rounds": args.rounds, "steps_per_round": args.steps,
              "steps_each": args.steps * args.rounds, "step_s": {k: round(v, 4) for k, v in median.items()},
              "ratio": {k: round(v / base, 3) for k, v in median.items() if k != "simclr"},
              "all_step_s": {k: [round(t, 4) for t in v] for k, v in times.items()}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    from sharpshift.bench.grid import replace_section

    replace_section(args.doc, "speed", render(result))
    print(json.dumps({k: result[k] for k in ("step_s", "ratio")}, indent=2))


if __name__ == "__main__":
    main()
