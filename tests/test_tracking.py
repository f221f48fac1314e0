"""trainer.loggers with mlflow: a real run logged into a real local MLflow store, read back with MLflow's client."""
import json

import pytest

from sharpshift.errors import UserError
from tests.conftest import tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def test_a_run_logs_its_config_metrics_evaluation_and_files_to_mlflow(tmp_path):
    from mlflow.tracking import MlflowClient

    from sharpshift.train import pretrain

    uri = f"sqlite:///{tmp_path / 'store.db'}"
    cfg = tiny_config("simclr", "trainer.loggers=[csv,tensorboard,mlflow]", f"trainer.mlflow_uri={uri}",
                      "eval.after_training=true", "trainer.log_every_n_steps=1", "report.after_training=false",
                      "sam.enabled=true", out_dir=str(tmp_path / "runs"))
    run_dir = pretrain(cfg)
    client = MlflowClient(tracking_uri=uri)
    (experiment,) = [e for e in client.search_experiments() if e.name == "sharpshift"]
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_id == (run_dir / "mlflow_run_id.txt").read_text().strip()
    assert run.info.run_name == run_dir.name and run.info.status == "FINISHED"
    params = run.data.params
    assert params["method.name"] == "simclr" and params["data.dataset"] == "digits" and params["sam.enabled"] == "True"
    evaluation = json.loads((run_dir / "eval.json").read_text())
    assert run.data.metrics["eval/linear_top1"] == pytest.approx(evaluation["linear_top1"])
    assert run.data.metrics["eval/knn_top1"] == pytest.approx(evaluation["knn_top1"])
    mechanisms = json.loads((run_dir / "mechanisms.json").read_text())["sam"]["summary"]
    assert run.data.metrics["mechanisms/sam/share_raised"] == pytest.approx(mechanisms["share_raised"])
    history = client.get_metric_history(run.info.run_id, "train/loss")
    assert len(history) == 4  # every step of the 4 (log_every_n_steps=1)
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "train.json", "eval.json", "mechanisms.json"} <= artifacts
    assert (tmp_path / "runs" / "mlartifacts").is_dir()  # beside the runs, not in the working folder


def test_the_default_store_is_an_sqlite_file_beside_the_runs(tmp_path):
    from sharpshift.tracking import tracking_uri

    assert tracking_uri(tiny_config("simclr"), tmp_path / "runs" / "r1") == f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}"


def test_an_unknown_logger_is_refused_in_one_line(tmp_path):
    from sharpshift.tracking import build_loggers

    cfg = tiny_config("simclr", "trainer.loggers=[csv,wandb]")
    with pytest.raises(UserError, match=r"unknown trainer.loggers \['wandb'\]"):
        build_loggers(cfg, tmp_path)
