"""The streaming path: `sharpshift prepare` writes WebDataset shards with an index and a checksum manifest;
training reads them by index and gets the in-memory path's pixels, order, DDP shards and exact resume, with
memory that does not grow with the number of images."""
import json
import os
import signal
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sharpshift.data import stream
from sharpshift.data.loader import PretrainData, ShardedBatchSampler, IndexedBatches, ResumableLoader
from sharpshift.data.registry import load_dataset
from sharpshift.errors import UserError
from tests.test_resume import KILLER, assert_identical, final_state, sharpshift

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def digits_stream(tmp_path_factory):
    return stream.prepare("digits", tmp_path_factory.mktemp("s") / "digits", log=lambda m: None)


def test_streamed_pixels_labels_and_selections_equal_the_in_memory_dataset(digits_stream):
    s, m = stream.load_stream(digits_stream, "train", "digits"), load_dataset("digits", "train")
    assert len(s) == len(m) and s.images.shape == m.images.shape and s.classes == m.classes
    assert torch.equal(s.images[:], m.images) and torch.equal(s.labels, m.labels)
    idx = torch.tensor([7, 0, 1000, 7])
    assert torch.equal(s.select(idx).images[:], m.images[idx]) and torch.equal(s.images[idx], m.images[idx])
    sub = s.subset(100, seed=3)  # lazy: a selection of rows, nothing decoded
    assert isinstance(sub.images, stream.StreamImages) and torch.equal(sub.images[:], m.subset(100, seed=3).images)
    assert sub.digest() == s.subset(100, seed=3).digest() != s.subset(100, seed=4).digest()
    assert torch.equal(s.images[5], m.images[5])


def test_webdatasets_own_reader_reads_the_same_samples(digits_stream):
    import webdataset as wds

    m = load_dataset("digits", "test")
    shards = sorted(str(p) for p in (digits_stream / "test").glob("shard-*.tar"))
    samples = list(wds.WebDataset(shards, shardshuffle=False).decode("l8").to_tuple("__key__", "png", "cls"))
    assert len(samples) == len(m)
    for key, image, label in samples[:50]:
        i = int(key)
        assert np.array_equal(np.asarray(image), m.images[i, 0].numpy()) and label == int(m.labels[i])


def test_the_manifest_checksums_the_shards_and_a_changed_shard_is_caught(digits_stream, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(digits_stream, copy)
    manifest = json.loads((copy / stream.MANIFEST).read_text())
    assert manifest["format"] == stream.FORMAT and manifest["splits"]["train"]["images"] == 1437
    assert stream.verify(copy) == []
    shard = copy / manifest["splits"]["test"]["shards"][0]["file"]
    data = bytearray(shard.read_bytes())
    data[2000] ^= 0xFF  # same size: only the hash sees it
    shard.write_bytes(bytes(data))
    assert stream.verify(copy) == [manifest["splits"]["test"]["shards"][0]["file"]]
    shard.write_bytes(bytes(data[:-512]))
    with pytest.raises(UserError, match="changed size"):
        stream.load_stream(copy, "test")


def test_prepare_refuses_a_folder_that_is_not_its_own_and_replaces_its_own(digits_stream, tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(UserError, match="was not made by `sharpshift prepare`"):
        stream.prepare("digits", foreign, log=lambda m: None)
    assert (foreign / "notes.txt").read_text() == "keep me" and not list(tmp_path.glob("*.partial-*"))
    again = stream.prepare("digits", tmp_path / "d", log=lambda m: None)
    stream.prepare("digits", again, log=lambda m: None)  # its own: replaced
    assert stream.verify(again) == [] and not list(tmp_path.glob("*.old-*"))
    with pytest.raises(UserError, match="holds 'digits'"):
        stream.load_stream(again, "train", "mnist")


def write_folder(root: Path, n: int, size: int = 16, seed: int = 0, fmt: str = "png") -> None:
    rng = np.random.default_rng(seed)
    for c in ("a", "b"):
        (root / c).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        px = (rng.random((size, size, 3)) * 255).astype(np.uint8)
        Image.fromarray(px).save(root / ("a", "b")[i % 2] / f"{i:06d}.{fmt}", quality=95)


def test_bad_files_are_skipped_and_counted_or_refused(tmp_path):
    root = tmp_path / "imgs"
    write_folder(root, 20)
    (root / "a" / "notes.png").write_text("not an image")
    good = (root / "b" / "000001.png").read_bytes()
    (root / "b" / "truncated.png").write_bytes(good[: len(good) // 2])
    (root / "a" / "noise.jpg").write_bytes(os.urandom(300))
    with pytest.raises(UserError, match="cannot read image"):
        stream.prepare("folder", tmp_path / "fail", str(root), on_bad="fail", log=lambda m: None)
    assert not (tmp_path / "fail").exists() and not list(tmp_path.glob("fail.partial-*"))
    out = stream.prepare("folder", tmp_path / "skip", str(root), log=lambda m: None)
    info = json.loads((out / stream.MANIFEST).read_text())["splits"]["train"]
    assert info["images"] == 20 and info["skipped"] == 3
    with pytest.warns(UserWarning, match="skipped 3 unreadable"):
        s = stream.load_stream(out, "train", "folder")
    with pytest.warns(UserWarning):  # the in-memory folder loader skips the same files
        m = load_dataset("folder", "train", str(root))
    assert torch.equal(s.images[:], m.images) and torch.equal(s.labels, m.labels)


def test_image_size_resizes_in_the_reader_as_the_in_memory_loader_does(tmp_path):
    root = tmp_path / "imgs"
    write_folder(root, 6, size=20, fmt="jpg")
    out = stream.prepare("folder", tmp_path / "s", str(root), log=lambda m: None)
    with pytest.warns(UserWarning):
        m = load_dataset("folder", "train", str(root), image_size=12)
    s = stream.load_stream(out, "train", "folder", image_size=12)
    assert s.images.shape == (6, 3, 12, 12) and torch.equal(s.images[:], m.images)


def loader_batches(data, workers, seed=0, epoch=0, rank=0, world=1):
    sampler = ShardedBatchSampler(len(data), 64, seed, rank, world)
    sampler.set_epoch(epoch)
    loader = ResumableLoader(IndexedBatches(data), sampler, lambda: 0, num_workers=workers)
    return [(x.clone(), y.clone(), i.clone()) for x, y, i in loader]


def test_worker_processes_give_the_in_memory_batches_in_the_same_order(digits_stream):
    s, m = stream.load_stream(digits_stream, "train", "digits"), load_dataset("digits", "train")
    mem, two, again = loader_batches(m, 0, epoch=1), loader_batches(s, 2, epoch=1), loader_batches(s, 2, epoch=1)
    assert len(mem) == len(two) == 1437 // 64
    for (xm, ym, im), (x2, y2, i2), (xa, _, _) in zip(mem, two, again):
        assert torch.equal(xm, x2) and torch.equal(ym, y2) and torch.equal(im, i2) and torch.equal(x2, xa)
    assert PretrainData(m, 64, 0, num_workers=2).num_workers == 0  # no workers for in-memory batches


def test_ddp_shards_of_the_stream_are_disjoint_and_cover_the_epoch(digits_stream):
    s = stream.load_stream(digits_stream, "train", "digits")
    seen = [loader_batches(s, 1, seed=5, rank=r, world=2) for r in range(2)]
    indices = [int(i) for shard in seen for _, _, idx in shard for i in idx]
    assert len(indices) == len(set(indices)) == 2 * (718 // 64) * 64
    m = load_dataset("digits", "train")
    for shard in seen:
        for x, _, idx in shard:
            assert torch.equal(x, m.images[idx])


RUN = ["simclr", "data.dataset=digits", "data.batch_size=64", "trainer.max_epochs=2", "model.width=8",
       "method.proj_hidden_dim=32", "method.proj_output_dim=16", "trainer.precision=32", "trainer.num_threads=1",
       "trainer.progress_bar=false", "eval.knn_every_n_epochs=0", "eval.after_training=false",
       "trainer.checkpoint_every_n_steps=5", "trainer.keep_checkpoints=10", "data.val_fraction=0"]


@pytest.mark.slow
def test_streamed_training_equals_in_memory_training_and_resumes_bit_identically_after_sigkill(digits_stream,
                                                                                                tmp_path):
    streamed = [*RUN, "data.storage=stream", f"data.stream_dir={digits_stream}", "data.num_workers=2"]
    r = sharpshift("pretrain", *RUN, "--out-dir", str(tmp_path / "memory"))
    assert r.returncode == 0, r.stderr[-3000:]
    r = sharpshift("pretrain", *streamed, "--out-dir", str(tmp_path / "killed"), kill_at=27)
    assert r.returncode == -signal.SIGKILL, r.stderr[-3000:]
    (run,) = (tmp_path / "killed").iterdir()
    r = sharpshift("pretrain", "--resume", str(run), "trainer.num_threads=1")
    assert r.returncode == 0, r.stderr[-3000:]
    (memory,) = (tmp_path / "memory").iterdir()
    assert_identical(final_state(run), final_state(memory))


DDP_SPY = """
import os, sys, json
from sharpshift.methods.base import SSLMethod
def record(self, outputs, batch, batch_idx):  # the dataset indices each process trained on
    with open(os.environ["SPY_DIR"] + f"/rank{self.global_rank}.jsonl", "a") as f:
        f.write(json.dumps(batch[2].tolist()) + "\\n")
SSLMethod.on_train_batch_end = record
from sharpshift.cli import main
main()
"""


@pytest.mark.slow
def test_two_gloo_processes_train_on_disjoint_streamed_shards(digits_stream, tmp_path):
    env = dict(os.environ, SHARPSHIFT_NO_ENV_TUNING="1", SPY_DIR=str(tmp_path),
               PYTHONPATH=str(Path(__file__).parents[1] / "src"))
    env.pop("SHARPSHIFT_RUN_DIR", None)
    args = ["simclr", "data.dataset=digits", "data.batch_size=32", "trainer.max_epochs=1", "model.width=4",
            "method.proj_hidden_dim=16", "method.proj_output_dim=8", "trainer.precision=32", "trainer.num_threads=1",
            "trainer.progress_bar=false", "eval.knn_every_n_epochs=0", "eval.after_training=false",
            "trainer.devices=2", "trainer.accelerator=cpu", "trainer.strategy=ddp", "data.val_fraction=0",
            "data.storage=stream", f"data.stream_dir={digits_stream}", "data.num_workers=1"]
    script = tmp_path / "spy.py"  # a file: Lightning relaunches the other process with the same argv
    script.write_text(DDP_SPY)
    r = subprocess.run([sys.executable, str(script), "pretrain", *args, "--out-dir", str(tmp_path / "runs")],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    ranks = [[i for line in (tmp_path / f"rank{k}.jsonl").read_text().splitlines() for i in json.loads(line)]
             for k in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == (1437 // 2 // 32) * 32
    assert not set(ranks[0]) & set(ranks[1])
    expected = torch.randperm(1437, generator=torch.Generator().manual_seed(0))  # the sampler's epoch-0 order
    assert ranks[0] + ranks[1] == expected[:718][:len(ranks[0])].tolist() + expected[718:1436][:len(ranks[1])].tolist()


RSS_CHILD = """
import json, sys
from sharpshift.config import load_config
from sharpshift.train import pretrain
cfg = load_config("simclr", sys.argv[1:])
pretrain(cfg)
# VmHWM: this process's peak resident set since exec (ru_maxrss would start at the forking parent's)
peak_kb = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"peak_rss_mb": peak_kb / 1024}))
"""


@pytest.mark.slow
def test_a_20000_file_folder_streams_with_memory_that_does_not_grow_with_the_images(tmp_path):
    """20,000 JPEGs (64 px RGB: 235 MB decoded) and a 10,000-file subset, each trained for 6 steps through the
    stream and in memory: the in-memory peak grows with the decoded size, the streamed one stays flat
    (docs/benchmarks.md: 1,074 -> 1,267 MB in memory, 561 -> 565 MB streamed). Both sizes are above the
    10,000 images channel_stats reads, whose float copy is chunked for streams of this size."""
    big, small = tmp_path / "big", tmp_path / "small"
    rng = np.random.default_rng(0)
    base = np.linspace(0, 255, 64, dtype=np.float32)
    for c in ("a", "b"):
        (big / c).mkdir(parents=True)
        (small / c).mkdir(parents=True)
    for i in range(20000):
        px = (base[None, :, None] * rng.random(3)[None, None] + rng.random((64, 64, 3)) * 40).clip(0, 255)
        path = big / ("a", "b")[i % 2] / f"{i:05d}.jpg"
        Image.fromarray(px.astype(np.uint8)).save(path, quality=85)
        if i < 10000:
            os.link(path, small / ("a", "b")[i % 2] / path.name)
    peaks = {}
    for name, root in (("small", small), ("big", big)):
        shards = stream.prepare("folder", tmp_path / f"{name}-shards", str(root), log=lambda m: None)
        for storage in ("stream", "memory"):
            args = ["data.dataset=folder", f"data.data_dir={root}", f"data.storage={storage}",
                    f"data.stream_dir={shards}", "data.num_workers=0", "data.batch_size=64", "trainer.max_steps=6",
                    "trainer.max_epochs=1", "model.width=4", "method.proj_hidden_dim=16", "method.proj_output_dim=8",
                    "trainer.precision=32", "trainer.num_threads=1", "trainer.progress_bar=false",
                    "eval.knn_every_n_epochs=0", "eval.after_training=false", "report.after_training=false",
                    "data.val_fraction=0", f"out_dir={tmp_path / 'runs'}"]
            env = dict(os.environ, SHARPSHIFT_NO_ENV_TUNING="1", PYTHONPATH=str(Path(__file__).parents[1] / "src"))
            env.pop("SHARPSHIFT_RUN_DIR", None)
            r = subprocess.run([sys.executable, "-c", RSS_CHILD, *args], capture_output=True, text=True, env=env,
                               timeout=600)
            assert r.returncode == 0, r.stderr[-3000:]
            peaks[name, storage] = json.loads(r.stdout.strip().splitlines()[-1])["peak_rss_mb"]
    decoded_mb = 10000 * 3 * 64 * 64 / 2 ** 20  # what 10,000 more images take in memory: 117 MB
    assert peaks["big", "memory"] - peaks["small", "memory"] > 0.6 * decoded_mb, peaks  # the measure can see it
    assert peaks["big", "stream"] - peaks["small", "stream"] < 25, peaks  # the index: 32 bytes an image
    with tarfile.open(sorted((tmp_path / "big-shards" / "train").glob("*.tar"))[0]) as tar:
        assert tar.getmembers()[1].name.endswith(".jpg")  # the original bytes, not re-encoded


def test_auto_storage_streams_only_over_the_memory_budget_and_says_how_to_prepare(tmp_path):
    from sharpshift.config import load_config
    from sharpshift.data.storage import decoded_bytes, open_split, streams

    root = tmp_path / "imgs"
    write_folder(root, 10, size=16)
    auto = ["data.dataset=folder", f"data.data_dir={root}", "data.storage=auto"]
    assert decoded_bytes(load_config("simclr", auto)) == 10 * 3 * 16 * 16
    assert not streams(load_config("simclr", [*auto, "data.memory_budget_gb=1"]))
    tight = [*auto, "data.memory_budget_gb=0.000001"]  # 1 KiB: the 7.5 KiB of pixels are over it
    with pytest.raises(UserError, match="sharpshift prepare folder --out DIR"):
        streams(load_config("simclr", tight))
    shards = stream.prepare("folder", tmp_path / "s", str(root), log=lambda m: None)
    data = open_split(load_config("simclr", [*tight, f"data.stream_dir={shards}"]), "train")
    assert isinstance(data, stream.StreamDataset) and len(data) == 10
    with pytest.raises(UserError, match="data.storage must be memory, stream or auto"):
        load_config("simclr", ["data.storage=disk"])


def test_the_prepare_command_refuses_a_foreign_folder_in_one_line_and_verifies_its_own(digits_stream, tmp_path):
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "a.txt").write_text("mine")
    bad = sharpshift("prepare", "digits", "--out", str(foreign))
    assert bad.returncode != 0 and bad.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "was not made by `sharpshift prepare`" in bad.stderr and (foreign / "a.txt").read_text() == "mine"
    ok = sharpshift("prepare", "digits", "--out", str(digits_stream), "--verify")
    assert ok.returncode == 0 and "every shard matches" in ok.stdout
