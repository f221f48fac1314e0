import os
from pathlib import Path

import pytest

from sharpshift.config import load_config

FASHION = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")

# The suite's precision switch: SHARPSHIFT_TEST_PRECISION=bf16-mixed (or 32) makes every run whose config
# leaves trainer.precision at auto use that precision, in this process and in the CLI and DDP processes the
# tests start. Tests whose assertions depend on learning pin trainer.precision=32 or carry margins measured
# under both precisions. Unset: auto decides, as for a user (sharpshift.precision_choice).
if os.environ.get("SHARPSHIFT_TEST_PRECISION"):
    os.environ["SHARPSHIFT_AUTO_PRECISION"] = os.environ["SHARPSHIFT_TEST_PRECISION"]


def tiny_config(method: str = "simclr", *overrides: str, out_dir: str = "runs"):
    """A seconds-long run on scikit-learn's digits."""
    return load_config(None, [f"method.name={method}", "data.dataset=digits", "data.batch_size=32",
                              "trainer.max_epochs=1", "trainer.max_steps=4", "trainer.progress_bar=false",
                              "eval.knn_every_n_epochs=0", "eval.after_training=false", "model.width=8",
                              "method.proj_hidden_dim=32", "method.proj_output_dim=16", f"out_dir={out_dir}",
                              *(["method.queue_size=64"] if method == "moco" else []),
                              *(["method.pred_hidden_dim=16"] if method in ("byol", "simsiam") else []),
                              *overrides])


@pytest.fixture
def fashion_available():
    if not FASHION.is_file() and not os.environ.get("SHARPSHIFT_DATA"):
        if os.environ.get("CI"):
            pytest.fail("Fashion-MNIST missing in CI: scripts/bootstrap.sh should have installed it")
        pytest.skip("Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")


@pytest.fixture
def one_thread():
    """One intra-op thread: for tiny tensors on a shared 2-core machine, thread hand-offs cost more than the work."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _isolated_run_dir(monkeypatch):
    # every pretrain in a test picks its own run folder
    monkeypatch.delenv("SHARPSHIFT_RUN_DIR", raising=False)
