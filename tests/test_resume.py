"""Exact resume: a pretraining killed with SIGKILL mid-epoch and resumed ends bit-identical to an
uninterrupted run of the same length (fp32, CPU); resuming from an epoch boundary and past a corrupt
newest checkpoint does too."""
import csv
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sharpshift.checkpoint import LAST, load_checkpoint, step_name

# MoCo: EMA target, queue, probe optimizer, LR schedule and views all have to come back exactly.
# digits: 1437 train images / 64 = 22 steps per epoch, 44 in all; a checkpoint every 5 steps.
RUN = ["moco", "data.dataset=digits", "data.batch_size=64", "trainer.max_epochs=2", "model.width=8",
       "method.proj_hidden_dim=32", "method.proj_output_dim=16", "method.queue_size=128", "trainer.precision=32",
       "trainer.num_threads=1", "trainer.progress_bar=false", "eval.knn_every_n_epochs=0",
       "eval.after_training=false", "trainer.checkpoint_every_n_steps=5", "trainer.keep_checkpoints=10",
       "data.val_fraction=0"]  # all 1,437 digits: 22 batches an epoch, as the step numbers below assume
KILL_AT = 27  # in epoch 1 (steps 23-44), two steps after the checkpoint of step 25

# The CLI, with one change: the process kills itself with SIGKILL once step KILL_AT has finished.
KILLER = """
import os, signal, sys
from sharpshift.methods.base import SSLMethod
def die(self, outputs, batch, batch_idx):
    if self.global_step == int(os.environ["KILL_AT_STEP"]):
        os.kill(os.getpid(), signal.SIGKILL)
SSLMethod.on_train_batch_end = die
sys.argv = ["sharpshift", *sys.argv[1:]]
from sharpshift.cli import main
main()
"""


def sharpshift(*args, kill_at=None, cwd=None):
    env = dict(os.environ, SHARPSHIFT_NO_ENV_TUNING="1", PYTHONPATH=str(Path(__file__).parents[1] / "src"))
    env.pop("SHARPSHIFT_RUN_DIR", None)
    if kill_at is not None:
        env["KILL_AT_STEP"] = str(kill_at)
        cmd = [sys.executable, "-c", KILLER, *args]
    else:
        cmd = [sys.executable, "-m", "sharpshift.cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd, timeout=600)


def final_state(run: Path) -> dict:
    return load_checkpoint(run / "checkpoints" / LAST)["state_dict"]


def assert_identical(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:5]}"


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The same run without interruption (in this process: the CLI adds nothing to the numbers)."""
    from sharpshift.config import load_config
    from sharpshift.train import pretrain

    out = tmp_path_factory.mktemp("straight")
    return pretrain(load_config(RUN[0], [*RUN[1:], "trainer.checkpoint_every_n_steps=11", f"out_dir={out}"]))


def test_sigkill_mid_epoch_then_resume_is_bit_identical(uninterrupted, tmp_path):
    r = sharpshift("pretrain", *RUN, "--out-dir", str(tmp_path), kill_at=KILL_AT)
    assert r.returncode == -signal.SIGKILL, r.stderr[-3000:]
    (run,) = tmp_path.iterdir()
    ckpts = run / "checkpoints"
    assert not (ckpts / LAST).exists() and (ckpts / step_name(25)).exists() and not (ckpts / step_name(30)).exists()
    # the sampler stood mid-epoch: epoch 1, 3 of its 22 batches served
    assert load_checkpoint(ckpts / step_name(25))["loops"]["fit_loop"]["state_dict"]["combined_loader"] == \
        [{"epoch": 1, "served": 3}]

    r = sharpshift("pretrain", "--resume", str(run), "trainer.num_threads=1")
    assert r.returncode == 0, r.stderr[-3000:]
    assert load_checkpoint(ckpts / LAST)["global_step"] == 44
    assert_identical(final_state(run), final_state(uninterrupted))
    assert (run / "backbone.safetensors").is_file()
    assert not list(run.rglob("*.tmp*"))
    # the logs were flushed with each checkpoint and the resumed run appended to them
    with open(run / "logs" / "metrics.csv") as f:
        steps = [int(row["step"]) for row in csv.DictReader(f)]
    assert min(steps) < 25 < max(steps)


def _truncate_history(src: Path, dst: Path, keep_up_to: int) -> Path:
    """A copy of a finished run as if it had died right after the checkpoint of step `keep_up_to`."""
    shutil.copytree(src, dst)
    for p in (dst / "checkpoints").glob("*.ckpt"):
        if p.name == LAST or int(p.stem.split("-")[1]) > keep_up_to:
            p.unlink()
            p.with_name(p.name + ".json").unlink()
    for name in ("backbone.safetensors", "backbone.json", "train.json"):
        (dst / name).unlink()
    return dst


def test_resume_past_a_corrupt_checkpoint_from_an_epoch_boundary(uninterrupted, tmp_path):
    from sharpshift.resume import resume_config
    from sharpshift.train import pretrain

    # the uninterrupted run saved steps 11, 22, 33, 44: pretend it died after 33, whose file a disk error
    # then truncated; resume must warn, fall back to 22 (the end of epoch 0) and still end identical
    run = _truncate_history(uninterrupted, tmp_path / "run", keep_up_to=33)
    corrupt = run / "checkpoints" / step_name(33)
    corrupt.write_bytes(corrupt.read_bytes()[:-100])
    assert load_checkpoint(run / "checkpoints" / step_name(22))["loops"]["fit_loop"]["state_dict"][
        "combined_loader"] == [{"epoch": 1, "served": 0}]
    cfg = resume_config(run, None, ["trainer.num_threads=1"], None)
    with pytest.warns(UserWarning, match=r"step-0000033.ckpt is corrupt or incomplete: it is truncated"):
        pretrain(cfg, resume=run)
    assert_identical(final_state(run), final_state(uninterrupted))


ADDONS = ["simclr", "data.dataset=digits", "data.batch_size=128", "trainer.max_epochs=2", "model.width=4",
          "method.proj_hidden_dim=16", "method.proj_output_dim=8", "trainer.precision=32", "trainer.num_threads=1",
          "trainer.progress_bar=false", "eval.knn_every_n_epochs=0", "eval.after_training=false",
          "trainer.checkpoint_every_n_steps=4", "trainer.keep_checkpoints=10",
          "saf.enabled=true", "saf.epochs_ago=1", "saf.start_epoch=1", "mesa.enabled=true", "mesa.start_epoch=0",
          "sam.enabled=true", "dsa.enabled=true", "dsa.prior=random", "dsa.neighbours=3", "dsa.hidden_dim=8"]


def test_addons_state_resumes_exactly(tmp_path):
    """SAF's buffer, MESA's teacher, DSA's adjuster and SAM's two passes: all in the module's state or
    stateless, so a run resumed mid-epoch (11 steps per epoch, resumed at 16) is exact. (AMCL's temperature
    net is checked in test_checkpoint.)"""
    from sharpshift.config import load_config
    from sharpshift.resume import resume_config
    from sharpshift.train import pretrain

    straight = pretrain(load_config(ADDONS[0], [*ADDONS[1:], f"out_dir={tmp_path / 'straight'}"]))
    state = final_state(straight)
    assert any(k.endswith(".past") for k in state) and any(".teacher." in k for k in state)
    run = _truncate_history(straight, tmp_path / "resumed", keep_up_to=16)
    pretrain(resume_config(run, None, [], None), resume=run)
    assert_identical(final_state(run), state)
