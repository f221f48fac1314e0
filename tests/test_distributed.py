"""Two gloo processes on CPU give the loss and every parameter gradient of one process on the concatenated
batch (fp32, tolerance 1e-5), for every loss, every method and every add-on that changes the loss; a real
2-process DDP run through the CLI works and checkpoints each process's own random streams; and under real
DDP, SAM's ascent gradient is the all-reduced one."""
import json
import os
import subprocess
import sys

import pytest
import torch

from tests import dist_cases
from sharpshift.checkpoint import LAST, load_checkpoint

TOL = dict(rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    return dist_cases.run_workers(tmp_path_factory.mktemp("dist") / "results.pt", world=2)


def reference(kind, label):
    return dist_cases.run_case(kind, label, rank=0, world=1)


def _params():
    for kind, label in dist_cases.all_cases():
        case = next((c for c in dist_cases.METHOD_CASES if c.label == label), None) if kind == "method" else None
        marks = [pytest.mark.xfail(reason=case.per_process, strict=True)] if case and case.per_process else []
        yield pytest.param(kind, label, id=f"{kind}:{label}", marks=marks)


@pytest.mark.parametrize("kind, label", list(_params()))
def test_two_processes_equal_one_on_the_concatenated_batch(two_processes, kind, label):
    ref, got = reference(kind, label), two_processes[f"{kind}:{label}"]
    torch.testing.assert_close(got["loss"], ref["loss"], **TOL)
    assert got["terms"].keys() == ref["terms"].keys()
    for name, value in ref["terms"].items():
        torch.testing.assert_close(got["terms"][name], value, **TOL, msg=lambda m: f"{label} term {name}: {m}")
    assert got["grads"].keys() == ref["grads"].keys() and ref["grads"]
    for name, g in ref["grads"].items():
        torch.testing.assert_close(got["grads"][name], g, **TOL, msg=lambda m: f"{label} grad {name}: {m}")
    for name, value in ref["extra"].items():  # MoCo's queue, SAF's buffer, ...: the global batch's writes
        torch.testing.assert_close(got["extra"][name], value, **TOL, msg=lambda m: f"{label} {name}: {m}")


def test_the_comparison_catches_a_gather_without_all_reduce(two_processes):
    """lightly #1528: a gather whose backward skips the all-reduce. Same loss, wrong gradients."""
    ref, bad = reference("loss", "simclr"), two_processes["broken:simclr"]
    torch.testing.assert_close(bad["loss"], ref["loss"], **TOL)
    worst = max(float((bad["grads"][k] - g).abs().max()) for k, g in ref["grads"].items())
    assert worst > 1e-3


def test_sampler_shards_are_disjoint_and_cover_the_epoch():
    from sharpshift.data.loader import ShardedBatchSampler

    shards = [list(ShardedBatchSampler(100, 8, seed=3, rank=r, world=2)) for r in range(2)]
    seen = [int(i) for s in shards for b in s for i in b]
    assert len(seen) == len(set(seen)) == 2 * 6 * 8  # 50 per process, 6 whole batches of 8 each


@pytest.mark.slow
def test_ddp_two_cpu_processes_through_the_cli(tmp_path):
    env = dict(os.environ, SHARPSHIFT_NO_ENV_TUNING="1")
    env.pop("SHARPSHIFT_RUN_DIR", None)
    args = ["simclr", "data.dataset=digits", "data.batch_size=16", "trainer.max_steps=3", "trainer.max_epochs=1",
            "model.width=4", "method.proj_hidden_dim=16", "method.proj_output_dim=8", "trainer.precision=32",
            "trainer.num_threads=1", "trainer.progress_bar=false", "eval.knn_every_n_epochs=0",
            "eval.after_training=false", "trainer.devices=2", "trainer.accelerator=cpu", "trainer.strategy=ddp",
            "trainer.checkpoint_every_n_steps=2"]
    r = subprocess.run([sys.executable, "-m", "sharpshift.cli", "pretrain", *args, "--out-dir", str(tmp_path)],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    (run,) = tmp_path.iterdir()
    assert json.loads((run / "train.json").read_text())["steps"] == 3
    ckpt = load_checkpoint(run / "checkpoints" / LAST)
    assert ckpt["sharpshift"]["world_size"] == 2
    rng = ckpt["callbacks"]["CheckpointEvery"]["rng"]
    assert len(rng) == 2  # each process's own streams, so that a resume is exact on every process
    views = [r["generators"]["views"]["state"] for r in rng]
    assert not torch.equal(views[0], views[1])  # different views per process
    assert (run / "checkpoints" / "step-0000002.ckpt").is_file() and (run / "backbone.safetensors").is_file()


SAM_SPY = """
import os, sys
import sharpshift.sharpness.sam as sam
real = sam.sam_perturbation
def spy(params, grads, *a, **k):  # record the ascent gradient each process is about to use
    with open(os.path.join(os.environ["SPY_DIR"], f"ascent-{os.environ.get('LOCAL_RANK', '0')}.txt"), "a") as f:
        f.write(" ".join(f"{float(g.double().sum()):.12e}" for g in grads) + "\\n")
    return real(params, grads, *a, **k)
sam.sam_perturbation = spy
from sharpshift.cli import main
main()
"""


@pytest.mark.slow
def test_sam_ascent_gradient_is_synchronised_under_ddp(tmp_path):
    """Real DDP through Lightning: each process sees other views, so only an all-reduced first-pass gradient
    is the same in both; SAM must perturb with that one (Lightning prepares DDP's reducer before every
    manual_backward), or the processes would ascend to different points."""
    script = tmp_path / "sam_spy.py"  # a file: Lightning relaunches the other process with the same argv
    script.write_text(SAM_SPY)
    env = dict(os.environ, SHARPSHIFT_NO_ENV_TUNING="1", SPY_DIR=str(tmp_path))
    env.pop("SHARPSHIFT_RUN_DIR", None)
    args = ["pretrain", "simclr", "data.dataset=digits", "data.batch_size=16", "trainer.max_steps=2",
            "trainer.max_epochs=1", "model.width=4", "method.proj_hidden_dim=16", "method.proj_output_dim=8",
            "trainer.precision=32", "trainer.num_threads=1", "trainer.progress_bar=false",
            "eval.knn_every_n_epochs=0", "eval.after_training=false", "report.after_training=false",
            "trainer.devices=2", "trainer.accelerator=cpu", "trainer.strategy=ddp", "sam.enabled=true",
            "trainer.checkpoint_every_n_steps=0", "--out-dir", str(tmp_path / "runs")]
    r = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    ascent = [(tmp_path / f"ascent-{rank}.txt").read_text().splitlines() for rank in (0, 1)]
    assert len(ascent[0]) == 2 and ascent[0] == ascent[1]
