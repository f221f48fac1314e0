"""The streaming path's costs, written to the streaming section of docs/benchmarks.md:

1. decoded images/s from prepared shards per DataLoader worker count (random batches of 256);
2. the share of step time spent waiting for data, in memory and streamed, with the ConvNet on Fashion-MNIST
   (28 px) and with ResNet-18 on 32 px RGB JPEGs; and the streamed step's cost over the in-memory one;
3. peak memory (RSS) of a short training run against the number of images, in memory and streamed.

    python benchmarks/streaming.py [--steps 40] [--workers 0,1,2]

Every timing is taken in this process (ratios), except the memory runs (one subprocess each: peak RSS).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sharpshift.bench.grid_tables import replace_section  # noqa: E402
from sharpshift.config import load_config  # noqa: E402
from sharpshift.data import stream  # noqa: E402
from sharpshift.data.loader import IndexedBatches, ResumableLoader, ShardedBatchSampler  # noqa: E402
from sharpshift.precision_choice import cpu_name  # noqa: E402


class DataWait(L.Callback):
    """Seconds between one step's end and the next step's start (the loader's fetch), and whole step periods."""

    def __init__(self):
        self.waits, self.periods, self.last_end = [], [], None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.last_end is not None:
            self.waits.append(time.perf_counter() - self.last_end)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        now = time.perf_counter()
        if self.last_end is not None:
            self.periods.append(now - self.last_end)
        self.last_end = now


def decode_rate(shards: Path, workers: int, batches: int = 12) -> float:
    data = stream.load_stream(shards, "train")
    sampler = ShardedBatchSampler(len(data), 256, seed=0)
    loader = ResumableLoader(IndexedBatches(data), sampler, lambda: 0, num_workers=workers)
    it = iter(loader)
    next(it)  # workers started, first batch decoded
    t0 = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batches * 256 / (time.perf_counter() - t0)


def train_timing(config: list[str], steps: int, workers: int, storage: str, shards: Path) -> dict:
    from sharpshift.data.loader import PretrainData
    from sharpshift.train import build_module, build_trainer, prepare

    cfg = load_config("simclr", [*config, f"data.storage={storage}", f"data.stream_dir={shards}",
                                 f"data.num_workers={workers}", f"trainer.max_steps={steps}", "trainer.max_epochs=1",
                                 "eval.knn_every_n_epochs=0", "trainer.progress_bar=false", "data.val_fraction=0",
                                 "trainer.checkpoint_every_n_steps=0", "trainer.precision=32"])
    train, _, world = prepare(cfg)
    module = build_module(cfg, train, None, world)
    wait = DataWait()
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = build_trainer(cfg, Path(run_dir), extra_callbacks=(wait,), logger=False)
        trainer.fit(module, datamodule=PretrainData(train, cfg.data.batch_size, cfg.seed, cfg.data.num_workers))
    warm = slice(3, None)  # after the first steps (workers starting, allocator warming)
    return {"step_s": statistics.median(wait.periods[warm]), "wait_s": statistics.median(wait.waits[warm]),
            "wait_share": sum(wait.waits[warm]) / sum(wait.periods[warm])}


RSS_CHILD = """
import json, sys
from sharpshift.config import load_config
from sharpshift.train import pretrain
pretrain(load_config("simclr", sys.argv[1:]))
# VmHWM: this process's peak resident set since exec (ru_maxrss would start at the forking parent's)
peak_kb = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"peak_rss_mb": peak_kb / 1024}))
"""


def write_jpegs(root: Path, n: int, size: int, seed: int = 0) -> None:
    from PIL import Image

    rng = np.random.default_rng(seed)
    base = np.linspace(0, 255, size, dtype=np.float32)
    for c in ("a", "b"):
        (root / c).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        px = (base[None, :, None] * rng.random(3)[None, None] + rng.random((size, size, 3)) * 40).clip(0, 255)
        Image.fromarray(px.astype(np.uint8)).save(root / ("a", "b")[i % 2] / f"{i:06d}.jpg", quality=85)


def peak_rss(root: Path, shards: Path, storage: str, run_root: Path) -> float:
    args = ["data.dataset=folder", f"data.data_dir={root}", f"data.storage={storage}", f"data.stream_dir={shards}",
            "data.batch_size=64", "trainer.max_steps=6", "trainer.max_epochs=1", "model.width=4",
            "trainer.precision=32", "trainer.progress_bar=false", "eval.knn_every_n_epochs=0",
            "eval.after_training=false", "report.after_training=false", "data.val_fraction=0", f"out_dir={run_root}"]
    env = dict(os.environ, SHARPSHIFT_NO_ENV_TUNING="1", PYTHONPATH=str(ROOT / "src"))
    r = subprocess.run([sys.executable, "-c", RSS_CHILD, *args], capture_output=True, text=True, env=env, check=True)
    return json.loads(r.stdout.strip().splitlines()[-1])["peak_rss_mb"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--resnet-steps", type=int, default=10)
    parser.add_argument("--resnet-batch", type=int, default=128)
    parser.add_argument("--workers", default="0,1,2")
    parser.add_argument("--sizes", default="5000,10000,20000")
    args = parser.parse_args()
    workers = [int(w) for w in args.workers.split(",")]
    out: dict = {"command": "python benchmarks/streaming.py " + " ".join(sys.argv[1:]), "resnet_batch": args.resnet_batch,
                 "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "torch": torch.__version__,
                             "platform": platform.platform()}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        fashion = stream.prepare("fashion-mnist", tmp / "fashion", log=lambda m: None)
        out["prepare_fashion_s"] = round(time.perf_counter() - t0, 1)
        out["decode_images_per_s"] = {w: round(decode_rate(fashion, w)) for w in workers}
        print(json.dumps(out), flush=True)
        convnet = ["data.dataset=fashion-mnist"]
        out["convnet_fashion"] = {"memory": train_timing(convnet, args.steps, 0, "memory", fashion)}
        for w in workers:
            out["convnet_fashion"][f"stream, {w} workers"] = train_timing(convnet, args.steps, w, "stream", fashion)
        print(json.dumps(out), flush=True)
        jpegs = tmp / "jpegs32"
        write_jpegs(jpegs, 12000, 32)
        shards32 = stream.prepare("folder", tmp / "jpegs32-shards", str(jpegs), log=lambda m: None)
        resnet = ["data.dataset=folder", f"data.data_dir={jpegs}", "model.backbone=resnet18",
                  f"data.batch_size={args.resnet_batch}"]
        out["resnet18_32px"] = {"memory": train_timing(resnet, args.resnet_steps, 0, "memory", shards32)}
        for w in workers:
            out["resnet18_32px"][f"stream, {w} workers"] = train_timing(resnet, args.resnet_steps, w, "stream",
                                                                         shards32)
        print(json.dumps(out), flush=True)
        sizes = [int(s) for s in args.sizes.split(",")]
        big = tmp / "jpegs64"
        write_jpegs(big, max(sizes), 64, seed=1)
        out["peak_rss_mb"] = {}
        for n in sizes:
            root = tmp / f"jpegs64-{n}"
            for c in ("a", "b"):
                (root / c).mkdir(parents=True)
            for path in sorted(big.rglob("*.jpg"))[:n]:
                os.link(path, root / path.parent.name / path.name)
            shards = stream.prepare("folder", tmp / f"jpegs64-{n}-shards", str(root), log=lambda m: None)
            out["peak_rss_mb"][n] = {s: round(peak_rss(root, shards, s, tmp / "runs")) for s in ("memory", "stream")}
            print(json.dumps(out["peak_rss_mb"]), flush=True)
    (ROOT / "docs" / "streaming_benchmark.json").write_text(json.dumps(out, indent=2))
    replace_section(ROOT / "docs" / "benchmarks.md", "streaming", render(out))


def render(r: dict) -> str:
    m = r["machine"]
    lines = ["## Streaming: the data path's cost (`python benchmarks/streaming.py`)\n",
             f"{m['cpu']}, {m['cores']} cores, torch {m['torch']}; fp32. Preparing Fashion-MNIST (70,000 PNG-encoded "
             f"images into shards, checksums included): {r['prepare_fashion_s']} s.\n",
             "Decoded images/s from the shards (random batches of 256, 28 px grey PNG): "
             + ", ".join(f"{w} worker(s) {v:,}" for w, v in r["decode_images_per_s"].items()) + ".\n"]
    for key, title in (("convnet_fashion", "ConvNet (width 32), Fashion-MNIST 28 px, batch 256"),
                       ("resnet18_32px", f"ResNet-18, 32 px RGB JPEGs, batch {r['resnet_batch']}")):
        rows = r[key]
        base = rows["memory"]["step_s"]
        lines += [f"\n**{title}** (median over the steps after the third):\n",
                  "| data | step (s) | waiting for data (s) | share of step time waiting | step vs in memory |",
                  "|---|---|---|---|---|"]
        for name, t in rows.items():
            lines.append(f"| {name} | {t['step_s']:.3f} | {t['wait_s']:.4f} | {100 * t['wait_share']:.1f}% | "
                         f"{t['step_s'] / base:.2f}x |")
    lines += ["\n**Peak memory (RSS, MB) of a 6-step run** on 64 px RGB JPEGs (12 KB each decoded), one process per "
              "cell:\n", "| images | in memory | streamed |", "|---|---|---|"]
    for n, v in r["peak_rss_mb"].items():
        lines.append(f"| {int(n):,} | {v['memory']:,} | {v['stream']:,} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
