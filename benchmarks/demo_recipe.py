"""Choose the demo's recipe on the validation split, never on the test split.

Each candidate is the demo as it was before this choice (configs/default.yaml with tau 0.5; "default" below)
with a few keys changed, pretrained with
data.val_fraction=0.1 (the fixed hold-out of sharpshift.data.splits) and scored by the linear probe and kNN
on that hold-out. Rows go to docs/results/demo_recipe.json as they finish; a recorded candidate is not rerun.

    .venv/bin/python benchmarks/demo_recipe.py [CANDIDATE ...] [--precision 32|bf16-mixed] [--seed N]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

OUT = Path("docs/results/demo_recipe.json")
CANDIDATES = {
    "default": [],
    "tau0.2": ["method.temperature=0.2"],
    "fourier": ["fourier.enabled=true"],
    "lr0.6": ["optim.lr=0.6"],
    "tau0.2-fourier": ["method.temperature=0.2", "fourier.enabled=true"],
    "epochs6": ["trainer.max_epochs=6"],
}


def run(name: str, precision: str, root: Path, seed: int) -> dict:
    keys = ["data.val_fraction=0.1", "method.temperature=0.5", f"trainer.precision={precision}",
            "trainer.progress_bar=false",
            "report.after_training=false", f"name=recipe-{name}", f"seed={seed}", *CANDIDATES[name]]
    out = subprocess.run([".venv/bin/sharpshift", "pretrain", "default", *keys, "--out-dir", str(root)],
                         capture_output=True, text=True, env=dict(os.environ))
    if out.returncode:
        sys.exit(f"candidate {name} failed:\n{out.stderr[-2000:]}")
    run_dir = Path(out.stdout.strip().splitlines()[-1].split(": ", 1)[1])
    ev, tr = (json.loads((run_dir / f).read_text()) for f in ("eval.json", "train.json"))
    return {"candidate": name, "keys": CANDIDATES[name], "precision": precision, "seed": seed, "run": str(run_dir),
            "val_linear_top1": ev["val_linear_top1"], "val_knn_top1": ev["val_knn_top1"],
            "train_seconds": tr["train_seconds"], "steps": tr["steps"]}


def summary(rows: list[dict], precision: str) -> str:
    """Per candidate: mean validation top-1 over its seeds, and the paired difference to the default recipe on
    the seeds both have, with a 95% t interval (scipy; df = pairs - 1)."""
    from scipy import stats

    by = {}
    for r in rows:
        if r["precision"] == precision:
            by.setdefault(r["candidate"], {})[r.get("seed", 0)] = r
    lines = ["| candidate | seeds | val linear (%) | val kNN (%) | paired linear diff vs default (95% CI) |",
             "|---|---|---|---|---|"]
    for name, seeds in by.items():
        lin = [100 * r["val_linear_top1"] for r in seeds.values()]
        knn = [100 * r["val_knn_top1"] for r in seeds.values()]
        pairs = [100 * (seeds[s]["val_linear_top1"] - by["default"][s]["val_linear_top1"])
                 for s in seeds if s in by.get("default", {})]
        if name == "default" or not pairs:
            diff = ""
        elif len(pairs) == 1:
            diff = f"{pairs[0]:+.2f} (one pair: no interval)"
        else:
            mean, sem = sum(pairs) / len(pairs), stats.sem(pairs)
            half = stats.t.ppf(0.975, len(pairs) - 1) * sem
            per_seed = ", ".join(f"{d:+.2f}" for d in pairs)
            diff = f"{mean:+.2f} [{mean - half:+.2f}, {mean + half:+.2f}] (per seed {per_seed})"
        lines.append(f"| {name} | {','.join(map(str, sorted(seeds)))} | {sum(lin) / len(lin):.2f} | "
                     f"{sum(knn) / len(knn):.2f} | {diff} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("candidates", nargs="*", default=list(CANDIDATES))
    parser.add_argument("--precision", default="bf16-mixed")
    parser.add_argument("--root", default="runs/demo-recipe")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--summary", action="store_true", help="print the table of recorded rows and stop")
    args = parser.parse_args()
    rows = json.loads(OUT.read_text()) if OUT.is_file() else []
    if args.summary:
        print(summary(rows, args.precision))
        return
    for name in args.candidates:
        if any(r["candidate"] == name and r["precision"] == args.precision and r.get("seed", 0) == args.seed
               for r in rows):
            continue
        rows.append(run(name, args.precision, Path(args.root), args.seed))
        print(json.dumps(rows[-1]), flush=True)
        OUT.parent.mkdir(parents=True, exist_ok=True)
        OUT.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
