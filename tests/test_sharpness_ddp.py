"""SAM under a real 2-process DDP run (gloo, CPU): the ascent gradient is the synchronised one, and the
descent one too (the parameters stay equal across processes).

Each process sees its own shard and its own views, so unsynchronised gradients would differ. The CLI runs with
one change: `sam_perturbation` also saves the gradient it is given, per process and step."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

DRIVER = """
import os, sys, torch
import sharpshift.sharpness.sam as sam
original, calls = sam.sam_perturbation, []
def spy(params, grads, *args, **kwargs):
    calls.append(1)
    rank = os.environ.get("LOCAL_RANK", "0")
    saved = {"grads": [g.detach().clone() for g in grads], "params": [p.detach().clone() for p in params]}
    torch.save(saved, os.path.join(os.environ["SPY_DIR"], f"rank{rank}-{len(calls)}.pt"))
    return original(params, grads, *args, **kwargs)
sam.sam_perturbation = spy
from sharpshift.cli import main
main()
"""


@pytest.mark.slow
def test_sam_ascent_gradient_is_synchronised_under_ddp(tmp_path):
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    spy = tmp_path / "spy"
    spy.mkdir()
    env = dict(os.environ, SHARPSHIFT_NO_ENV_TUNING="1", SPY_DIR=str(spy),
               PYTHONPATH=str(Path(__file__).parents[1] / "src"))
    env.pop("SHARPSHIFT_RUN_DIR", None)
    args = ["pretrain", "simclr", "sam.enabled=true", "data.dataset=digits", "data.batch_size=16", "trainer.max_steps=2",
            "trainer.max_epochs=1", "model.width=4", "method.proj_hidden_dim=16", "method.proj_output_dim=8",
            "trainer.precision=32", "trainer.num_threads=1", "trainer.progress_bar=false", "eval.online_probe=false",
            "eval.knn_every_n_epochs=0", "eval.after_training=false", "trainer.devices=2", "trainer.accelerator=cpu",
            "trainer.strategy=ddp", "--out-dir", str(tmp_path / "runs")]
    r = subprocess.run([sys.executable, str(driver), *args], capture_output=True, text=True, env=env, timeout=300,
                       cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    for step in (1, 2):
        r0 = torch.load(spy / f"rank0-{step}.pt", weights_only=True)
        r1 = torch.load(spy / f"rank1-{step}.pt", weights_only=True)
        assert len(r0["grads"]) == len(r1["grads"]) > 0
        for key in ("grads", "params"):
            for a, b in zip(r0[key], r1[key]):
                torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
        assert any(float(a.abs().max()) > 0 for a in r0["grads"])
    first = torch.load(spy / "rank0-1.pt", weights_only=True)["params"]
    second = torch.load(spy / "rank0-2.pt", weights_only=True)["params"]
    assert any(not torch.equal(a, b) for a, b in zip(first, second))  # a step happened in between
