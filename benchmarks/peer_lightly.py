"""sharpshift against lightly 1.6.0, side by side in one run: same ConvNet, data, batch, epochs, precision and
recipe; throughput of each, and both backbones scored by sharpshift's probe and kNN.

    .venv/bin/python benchmarks/peer_lightly.py [--epochs 5] [--precision auto|32|bf16-mixed]

lightly needs torchvision, which does not import against sharpshift's CPU torch; the script builds its own
environment for it (.venv-peer: torch 2.13.0, torchvision 0.28.0, lightly 1.6.0) and trains lightly there
(benchmarks/peer_lightly_train.py). sharpshift itself never depends on any of it. Writes
docs/results/peer_lightly.json and the "peer" section of docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PEER_VENV = ROOT / ".venv-peer"
PEER_PINS = ["torch==2.13.0", "torchvision==0.28.0", "lightly==1.6.0", "safetensors"]
FASHION = Path("/usr/share/datasets/fashion-mnist")
OUT = ROOT / "docs/results/peer_lightly.json"


def peer_python() -> Path:
    """The peer environment's Python, built once (a stamp names the pins it holds)."""
    python, stamp = PEER_VENV / "bin/python", PEER_VENV / ".pins"
    if not (python.is_file() and stamp.is_file() and stamp.read_text() == " ".join(PEER_PINS)):
        subprocess.run(["python3", "-m", "venv", str(PEER_VENV)], check=True)
        pip = [str(PEER_VENV / "bin/pip"), "install", "-q", "--disable-pip-version-check"]
        subprocess.run(pip + [PEER_PINS[0]], check=True)  # the CPU torch first, so torchvision does not pull CUDA
        subprocess.run(pip + PEER_PINS[1:], check=True)
        stamp.write_text(" ".join(PEER_PINS))
    return python


def raw_fashion(root: Path) -> Path:
    """torchvision's FashionMNIST layout (ROOT/FashionMNIST/raw/*-ubyte), decompressed from Debian's files."""
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for gz in FASHION.glob("*-ubyte.gz"):
        target = raw / gz.name[:-3]
        if not target.is_file():
            with gzip.open(gz) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst)
    return root


def run_lightly(work: Path, epochs: int, precision: str, workers: int) -> dict:
    out = work / "lightly"
    shutil.rmtree(out, ignore_errors=True)
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    t0 = time.time()
    subprocess.run([str(peer_python()), str(ROOT / "benchmarks/peer_lightly_train.py"), str(out), "--data",
                    str(raw_fashion(work / "data")), "--epochs", str(epochs), "--precision", precision,
                    "--workers", str(workers)], check=True, env=env)
    return {"run": out, "wall_seconds": round(time.time() - t0, 1), **json.loads((out / "train.json").read_text())}


def run_sharpshift(work: Path, epochs: int, precision: str) -> dict:
    t0 = time.time()
    # the shipped SimCLR config (tau 0.5, SGD lr 0.3, wd 1e-4): the recipe the lightly script mirrors, on the full
    # train split (the demo holds out a validation split and may use another recipe)
    out = subprocess.run([str(ROOT / ".venv/bin/sharpshift"), "pretrain", "simclr", f"trainer.max_epochs={epochs}",
                          "data.batch_size=256", "data.val_fraction=0",
                          f"trainer.precision={precision}", "trainer.progress_bar=false", "eval.after_training=false",
                          "report.after_training=false", "--out-dir", str(work)],
                         check=True, capture_output=True, text=True)
    run = Path(out.stdout.strip().splitlines()[-1].split(": ", 1)[1])
    train = json.loads((run / "train.json").read_text())
    return {"run": run, "wall_seconds": round(time.time() - t0, 1), "library": "sharpshift",
            "train_seconds": train["train_seconds"], "steps": train["steps"],
            "whole_run_images_per_second": train["speed"]["whole_run_images_per_second"],
            "steady_images_per_second": train["speed"]["steady_images_per_second"], "precision": train["precision"]}


def score(run: Path) -> dict:
    """Both backbones under sharpshift's probe and kNN, on the full train and test splits."""
    from sharpshift.config import load_config
    from sharpshift.evaluation.run import evaluate_backbone, labelled_splits
    from sharpshift.export import load_backbone

    cfg = load_config("default", ["data.val_fraction=0"])  # the full train split, as both trained on
    train, test = labelled_splits(cfg, None)
    ev = evaluate_backbone(load_backbone(run), cfg, train, test)
    return {"linear_top1": round(ev["linear_top1"], 4), "knn_top1": round(ev["knn_top1"], 4)}


def markdown(result: dict) -> str:
    s, lt = result["sharpshift"], result["lightly"]
    rows = "\n".join(
        f"| {r['library']} | {r['train_seconds']:.0f} | {r['whole_run_images_per_second']:.0f} "
        f"| {r['steady_images_per_second']:.0f} | {100 * r['linear_top1']:.2f} | {100 * r['knn_top1']:.2f} |"
        for r in (s, lt))
    return (f"## Peer: sharpshift vs lightly, side by side\n\nCommand: `{result['command']}` "
            f"({result['seconds']:.0f} s in all). CPU: {result['cpu']}; precision {result['precision']} for both.\n"
            f"Same ConvNet (width 32), Fashion-MNIST 60k, batch 256, {result['epochs']} epochs, SimCLR recipe "
            "(crops 0.2-1, flip, jitter 0.8, blur 0.5), 2-layer 512-128 projector, NT-Xent tau 0.5, SGD lr 0.3 "
            "with 1 warm-up epoch and cosine. lightly: its SimCLRTransform per image in a DataLoader with "
            f"{result['lightly']['workers']} workers, a plain PyTorch loop (no online monitor). sharpshift: "
            "`sharpshift pretrain simclr` (batched views on the training device, with its online probe and "
            "per-epoch kNN monitor on). Both backbones scored by sharpshift's linear probe and kNN (k 200) on "
            "the full train and test splits.\n\n"
            "| library | train s | images/s whole run | images/s steady | linear top-1 (%) | kNN top-1 (%) |\n"
            "|---|---|---|---|---|---|\n" + rows +
            f"\n\nThroughput ratio sharpshift / lightly: {result['ratio_whole_run']:.2f}x whole run, "
            f"{result['ratio_steady']:.2f}x steady.\n")


def main() -> None:
    sys.path.insert(0, str(ROOT / "src"))
    from sharpshift.bench.grid_tables import replace_section
    from sharpshift.precision_choice import choose_precision, cpu_name

    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--work", type=Path, default=ROOT / "runs/peer")
    args = ap.parse_args()
    precision = choose_precision(args.precision).precision.replace("32-true", "32")
    t0 = time.time()
    peer_python()  # build the environment before anything is timed
    lightly = run_lightly(args.work, args.epochs, precision, args.workers)
    ours = run_sharpshift(args.work, args.epochs, precision)
    for r in (lightly, ours):
        r.update(score(r.pop("run")))
    result = {"command": "python benchmarks/peer_lightly.py " + " ".join(sys.argv[1:]), "cpu": cpu_name(),
              "epochs": args.epochs, "precision": precision, "lightly": lightly, "sharpshift": ours,
              "ratio_whole_run": round(ours["whole_run_images_per_second"] / lightly["whole_run_images_per_second"], 2),
              "ratio_steady": round(ours["steady_images_per_second"] / lightly["steady_images_per_second"], 2),
              "seconds": round(time.time() - t0, 1)}
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    replace_section(ROOT / "docs/benchmarks.md", "peer", markdown(result))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
