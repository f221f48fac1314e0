"""The bad-input corpus: every entry goes through the real CLI in its own process and must give its
expected one-line error and exit code, and leave no half-written file behind.

The entries run in one batch (tests/cli_driver.py forks a process per entry after importing torch and
Lightning once); `test_forked_runs_match_real_command_lines` checks that a fork prints exactly what a
fresh `python -m sharpshift.cli` prints. The in-process tests of the same loaders live in
tests/test_data_formats.py and tests/test_config_cli.py, whose file writers are reused here.
"""
from __future__ import annotations

import gzip
import json
import os
import pickle
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import yaml

from sharpshift.checkpoint import CKPT_DIR, LAST, candidates, save_checkpoint, step_name, verify
from tests.test_config_cli import cli
from tests.test_data_formats import _Evil, _png, _write_cifar10, _write_folder, _write_stl

TINY = ["data.dataset=digits", "data.batch_size=32", "trainer.max_steps=2", "trainer.max_epochs=1", "model.width=4",
        "method.proj_hidden_dim=16", "method.proj_output_dim=8", "trainer.num_threads=1", "trainer.progress_bar=false",
        "eval.knn_every_n_epochs=0", "eval.after_training=false", "trainer.precision=32"]


def pretrain(*extra: str) -> list[str]:
    return ["pretrain", "simclr", *TINY, *extra]


# --- input writers -------------------------------------------------------------------------------------------
def write_idx(path: Path, arr: np.ndarray, magic: bytes = b"\x00\x00\x08", cut: int = 0) -> None:
    raw = magic + bytes([arr.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in arr.shape) + arr.tobytes()
    with gzip.open(path, "wb") as f:
        f.write(raw[:len(raw) - cut])


def fashion(d: Path, images_cut: int = 0, magic: bytes = b"\x00\x00\x08", n_labels: int = 20) -> list[str]:
    rng = np.random.default_rng(0)
    write_idx(d / "train-images-idx3-ubyte.gz", rng.integers(0, 256, (20, 28, 28), dtype=np.uint8), magic,
              images_cut)
    write_idx(d / "train-labels-idx1-ubyte.gz", rng.integers(0, 10, n_labels, dtype=np.uint8))
    return pretrain("data.dataset=fashion-mnist", "--data-dir", str(d))


def folder(d: Path, *extra: str) -> list[str]:
    return pretrain("data.dataset=folder", "data.batch_size=2", "--data-dir", str(d / "images"), *extra)


def images(d: Path, n: int, **kw) -> Path:
    for i in range(n):
        _png(d / "images" / f"{i}.png", color=(i * 20, 0, 0), **kw)
    return d / "images"


def mixed_folder(d: Path) -> list[str]:
    _png(d / "images" / "a.png", (10, 10), 50, mode="L")
    _png(d / "images" / "b.png", (10, 10), 60, mode="L")
    _png(d / "images" / "c.png", (20, 16), (1, 2, 3))
    _png(d / "images" / "d.png", (7, 9), (1, 2, 3, 4), mode="RGBA")
    return folder(d)


def yaml_file(d: Path, text: str) -> list[str]:
    (d / "bad.yaml").write_text(text)
    return ["pretrain", str(d / "bad.yaml"), *TINY]


def run_copy(d: Path, base: Path, edit: Callable[[dict], None] | None = None) -> Path:
    """A copy of a real finished run, its config.yaml edited, its exported files removed."""
    run = d / "run"
    shutil.copytree(base, run)
    if edit is not None:
        cfg = yaml.safe_load((run / "config.yaml").read_text())
        edit(cfg)
        (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    return run


def resume(run: Path, *extra: str) -> list[str]:
    return ["pretrain", "--resume", str(run), "trainer.num_threads=1", *extra]


def malicious(d: Path, base: Path) -> list[str]:
    run = run_copy(d, base)
    path = run / CKPT_DIR / step_name(99)
    save_checkpoint({"global_step": 99, "epoch": 0, "payload": _Evil(d / "pwned")}, path)  # with a valid record
    return resume(run)


def all_corrupt(d: Path, base: Path) -> list[str]:
    run = run_copy(d, base)
    for p in (run / CKPT_DIR).glob("*.ckpt"):
        p.write_bytes(p.read_bytes()[:-1])
    return resume(run)


def read_only_out_dir(d: Path) -> list[str]:
    out = d / "read-only"
    out.mkdir()
    out.chmod(0o555)
    if os.access(out, os.W_OK):  # root ignores permissions; sysfs refuses new folders to everyone
        out = Path("/sys/sharpshift-runs")
    return ["pretrain", "simclr", *TINY, "--out-dir", str(out)]


def no_config(d: Path, base: Path) -> list[str]:
    run = run_copy(d, base)
    (run / "config.yaml").unlink()
    return resume(run)


def no_checkpoints(d: Path, base: Path) -> list[str]:
    run = run_copy(d, base)
    shutil.rmtree(run / CKPT_DIR)
    return resume(run)


def no_backbone(d: Path, base: Path) -> list[str]:
    run = run_copy(d, base)
    (run / "backbone.safetensors").unlink()
    return ["evaluate", str(run)]


def cifar_pickle_bomb(d: Path) -> list[str]:
    folder_, _ = _write_cifar10(d / "cifar")
    with open(folder_ / "data_batch_1", "wb") as f:
        pickle.dump({b"data": _Evil(d / "pwned"), b"labels": [0]}, f, protocol=2)
    return pretrain("data.dataset=cifar10", "--data-dir", str(d / "cifar"))


def stl_truncated(d: Path) -> list[str]:
    folder_, _ = _write_stl(d / "stl")
    with open(folder_ / "train_X.bin", "r+b") as f:
        f.truncate(27648 * 3 + 5)
    return pretrain("data.dataset=stl10", "--data-dir", str(d / "stl"))


# --- the corpus ---------------------------------------------------------------------------------------------
@dataclass
class Entry:
    id: str
    setup: Callable  # (folder) or (folder, finished run) -> argv after `sharpshift`
    fragment: str  # expected in the one `error:` line (exit 2), or in stderr/stdout (exit 0)
    code: int = 2
    makes_run: bool = False  # the error comes after the run folder was created (or it is not an error)
    job: dict = field(default_factory=dict)  # extra driver options


ENTRIES = [
    # data files
    Entry("idx-truncated", lambda d: fashion(d, images_cut=100), "is truncated or padded: expected 15680 data bytes"),
    Entry("idx-wrong-magic", lambda d: fashion(d, magic=b"\x1f\x8b\x08"), "is not an IDX file (bad magic number)"),
    Entry("idx-header-cut", lambda d: fashion(d, images_cut=15690), "is truncated (header cut short)"),
    Entry("idx-labels-mismatch", lambda d: fashion(d, n_labels=19), "do not match (shapes (20, 28, 28), (19,))"),
    Entry("idx-missing", lambda d: pretrain("data.dataset=mnist", "--data-dir", str(d)), "mnist train files not found"),
    Entry("cifar-pickle-runs-code", cifar_pickle_bomb, "refusing to unpickle"),
    Entry("stl10-truncated", stl_truncated, "truncated"),
    Entry("folder-corrupt-image-fail", lambda d: (_write_folder(d / "images"), folder(d, "data.on_bad_image=fail"))[1],
          "cannot read image"),
    Entry("folder-non-image-fail", lambda d: (images(d, 3), (d / "images" / "notes.txt").write_text("hi"),
                                              folder(d, "data.on_bad_image=fail"))[2], "notes.txt"),
    Entry("folder-corrupt-skipped-and-counted", lambda d: (_write_folder(d / "images"), folder(d))[1],
          "skipped 2 unreadable file(s)", code=0, makes_run=True),
    Entry("folder-only-bad-files", lambda d: ((d / "images").mkdir(), (d / "images" / "a.png").write_bytes(b"\x89PNG"),
                                              folder(d))[2], "no readable images"),
    Entry("folder-empty", lambda d: ((d / "images").mkdir(), folder(d))[1], "no image files in"),
    Entry("folder-missing", lambda d: folder(d), "does not exist; pass --data-dir"),
    Entry("folder-single-image", lambda d: (images(d, 1), folder(d))[1], "larger than the dataset (1 images)"),
    Entry("folder-mixed-sizes-and-modes", lambda d: mixed_folder(d), "run folder:", code=0, makes_run=True),
    Entry("batch-larger-than-dataset", lambda d: pretrain("data.batch_size=5000"), "larger than the dataset"),
    # config
    Entry("unknown-key", lambda d: pretrain("optim.lrr=0.1"), "unknown config key 'optim.lrr'"),
    Entry("unknown-key-in-yaml", lambda d: yaml_file(d, "optim:\n  lrr: 0.1\n"), "unknown config key 'optim.lrr'"),
    Entry("wrong-type-float", lambda d: pretrain("optim.lr=fast"), "bad value for 'optim.lr'"),
    Entry("wrong-type-int", lambda d: pretrain("data.batch_size=1.5"), "bad value for 'data.batch_size'"),
    Entry("negative-lr", lambda d: pretrain("optim.lr=-1"), "optim.lr must be > 0"),
    Entry("zero-epochs", lambda d: pretrain("trainer.max_epochs=0"), "trainer.max_epochs must be >= 1"),
    Entry("zero-batch", lambda d: pretrain("data.batch_size=0"), "data.batch_size must be at least 2"),
    Entry("negative-checkpoint-interval", lambda d: pretrain("trainer.checkpoint_every_n_steps=-5"),
          "trainer.checkpoint_every_n_steps must be >= 0"),
    Entry("bad-nonfinite-policy", lambda d: pretrain("trainer.on_nonfinite=ignore"), "trainer.on_nonfinite must be"),
    Entry("yaml-syntax", lambda d: yaml_file(d, "optim: [1, 2\n"), "cannot parse"),
    Entry("config-not-found", lambda d: ["pretrain", "no-such-config"], "config 'no-such-config' not found"),
    Entry("override-without-equals", lambda d: pretrain("lr"), "is not key=value"),
    # run folders and checkpoints
    Entry("evaluate-missing-run", lambda d: ["evaluate", str(d / "nope")], "does not exist"),
    Entry("evaluate-run-without-backbone", no_backbone, "no backbone at"),
    Entry("resume-missing-run", lambda d: resume(d / "nope"), "does not exist; pass a folder made by"),
    Entry("resume-without-config", no_config, "has no config.yaml"),
    Entry("resume-without-checkpoints", no_checkpoints, "no checkpoint in"),
    Entry("resume-checkpoint-of-another-method",
          lambda d, b: resume(run_copy(d, b, lambda c: c["method"].update(name="byol"))),
          "written by another model: method='simclr' (this run: 'byol')"),
    Entry("resume-checkpoint-of-another-backbone",
          lambda d, b: resume(run_copy(d, b, lambda c: c["model"].update(backbone="resnet18"))),
          "backbone='convnet' (this run: 'resnet18')"),
    Entry("resume-checkpoint-that-runs-code", malicious, "would run code when unpickled"),
    Entry("resume-all-checkpoints-corrupt", all_corrupt, "no complete checkpoint"),
    Entry("resume-changes-the-method", lambda d, b: resume(run_copy(d, b), "optim.lr=0.1"),
          "cannot change 'optim.lr' when resuming"),
    # output and numerics
    Entry("read-only-output-folder", read_only_out_dir, "cannot create run folder"),
    Entry("disk-full-mid-save", lambda d: pretrain(), "No space left on device", makes_run=True,
          job={"enospc_after_bytes": 4096}),
    Entry("nonfinite-loss", lambda d: pretrain("optim.lr=1e30", "optim.warmup_epochs=0",
                                               "trainer.checkpoint_every_n_steps=1"),
          "non-finite loss at step 1: term 'nt_xent' is nan", makes_run=True),
]


def snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    from sharpshift.config import load_config
    from sharpshift.train import pretrain as train

    out = tmp_path_factory.mktemp("base")
    return train(load_config("simclr", [*TINY, "model.width=8", "trainer.checkpoint_every_n_steps=1",
                                        f"out_dir={out}"]))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, finished_run):
    root = tmp_path_factory.mktemp("corpus")
    jobs, before = [], {}
    for e in ENTRIES:
        d = root / e.id
        d.mkdir()
        args = e.setup(d, finished_run) if e.setup.__code__.co_argcount == 2 else e.setup(d)
        if args[0] == "pretrain" and "--resume" not in args and "--out-dir" not in args:
            args = [*args, "--out-dir", str(d / "runs")]
        before[e.id] = snapshot(d)
        jobs.append({"id": e.id, "args": args, "cwd": str(d), "stdout": str(root / f"{e.id}.out"),
                     "stderr": str(root / f"{e.id}.err"), **e.job})
    (root / "jobs.json").write_text(json.dumps(jobs))
    driver = Path(__file__).with_name("cli_driver.py")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(driver.parents[1]), str(driver.parents[1] / "src")]))
    r = subprocess.run([sys.executable, str(driver), str(root / "jobs.json"), str(root / "codes.json")],
                       capture_output=True, text=True, env=env, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    results = json.loads((root / "codes.json").read_text())
    yield root, {k: v["code"] for k, v in results.items()}, before
    ro = root / "read-only-output-folder" / "read-only"
    if ro.exists():
        ro.chmod(0o755)


def test_corpus_is_large_enough():
    assert len(ENTRIES) >= 20 and len({e.id for e in ENTRIES}) == len(ENTRIES)


@pytest.mark.parametrize("entry", ENTRIES, ids=[e.id for e in ENTRIES])
def test_bad_input_gives_its_error_and_leaves_nothing_half_written(corpus, entry):
    root, codes, before = corpus
    d = root / entry.id
    stderr = (root / f"{entry.id}.err").read_text()
    stdout = (root / f"{entry.id}.out").read_text()
    assert codes[entry.id] == entry.code, stderr[-3000:]
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    if entry.code == 2:
        assert len(errors) == 1 and entry.fragment in errors[0], stderr[-3000:]
        assert stderr.strip().splitlines()[-1] == errors[0]  # the last word, after any warnings
    else:
        assert not errors and entry.fragment in stderr + stdout
    assert not [p for p in d.rglob("*") if ".tmp" in p.name]  # no temporary file left behind
    if entry.makes_run:  # every checkpoint on disk is complete and matches its record
        for ckpt in d.rglob("*.ckpt"):
            verify(ckpt)
    else:
        assert snapshot(d) == before[entry.id]  # nothing created, changed or removed
    assert not (d / "pwned").exists()  # and no code from an input ever ran


def test_disk_full_keeps_no_checkpoint_without_a_record(corpus):
    root, _, _ = corpus
    (run,) = (root / "disk-full-mid-save" / "runs").iterdir()
    assert (run / "config.yaml").is_file() and candidates(run / CKPT_DIR) == []
    assert not (run / "backbone.safetensors").exists()


def test_nonfinite_stop_keeps_the_checkpoint_before_it(corpus):
    root, _, _ = corpus
    (run,) = (root / "nonfinite-loss" / "runs").iterdir()
    assert [p.name for p in candidates(run / CKPT_DIR)] == [step_name(1)]
    assert not (run / CKPT_DIR / LAST).exists()


@pytest.mark.parametrize("entry_id", ["unknown-key", "evaluate-missing-run"])
def test_forked_runs_match_real_command_lines(corpus, entry_id):
    """The driver's forked processes print exactly what a fresh `python -m sharpshift.cli` prints."""
    root, codes, _ = corpus
    entry = next(e for e in ENTRIES if e.id == entry_id)
    job = next(j for j in json.loads((root / "jobs.json").read_text()) if j["id"] == entry_id)
    r = cli(*job["args"], cwd=job["cwd"])
    assert r.returncode == codes[entry_id] == entry.code
    assert r.stderr == (root / f"{entry_id}.err").read_text()
