"""The run's loggers (trainer.loggers): CSV (always: `sharpshift report` and resume read it), TensorBoard and
MLflow (Lightning's MLFlowLogger on a local SQLite store by default; `pip install sharpshift[tracking]`).

MLflow gets the whole config as parameters, every metric Lightning logs, and, once the run is done, the
evaluation figures (eval/*), each add-on's mechanism summary (mechanisms/<addon>/*) and the run's JSON files
and config as artifacts. A resumed run logs into the same MLflow run (its id is kept in the run folder)."""
from __future__ import annotations

import json
from pathlib import Path

from sharpshift.errors import UserError

LOGGERS = ("csv", "tensorboard", "mlflow")
RUN_ID_FILE = "mlflow_run_id.txt"


def tracking_uri(cfg, run_dir: Path) -> str:
    """trainer.mlflow_uri, or an SQLite store in the runs' folder (out_dir/mlflow.db), shared by the runs there
    (MLflow 3 refuses new file stores)."""
    return cfg.trainer.mlflow_uri or f"sqlite:///{run_dir.resolve().parent / 'mlflow.db'}"


def flat_params(tree: dict, prefix: str = "") -> dict[str, str]:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flat_params(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = json.dumps(value) if isinstance(value, (list, tuple)) else str(value)
    return out


def build_loggers(cfg, run_dir: Path) -> list:
    from lightning.pytorch.loggers import TensorBoardLogger

    from sharpshift.resume import appending_csv_logger

    unknown = [name for name in cfg.trainer.loggers if name not in LOGGERS]
    if unknown:
        raise UserError(f"unknown trainer.loggers {unknown}; use some of {list(LOGGERS)}")
    loggers = [appending_csv_logger(run_dir)]
    if "tensorboard" in cfg.trainer.loggers:
        loggers.append(TensorBoardLogger(run_dir, name="", version="tensorboard"))
    if "mlflow" in cfg.trainer.loggers:
        loggers.append(mlflow_logger(cfg, run_dir))
    return loggers


def mlflow_logger(cfg, run_dir: Path):
    try:
        import mlflow  # noqa: F401
    except ModuleNotFoundError:
        raise UserError("trainer.loggers has mlflow but MLflow is not installed; pip install 'sharpshift[tracking]' "
                        "or drop mlflow from trainer.loggers") from None
    from lightning.pytorch.loggers import MLFlowLogger

    id_file = run_dir / RUN_ID_FILE
    run_id = id_file.read_text().strip() if id_file.is_file() else None
    # artifacts beside the runs, not in whatever folder the command was started from
    return MLFlowLogger(experiment_name=cfg.trainer.mlflow_experiment, run_name=run_dir.name,
                        tracking_uri=tracking_uri(cfg, run_dir), run_id=run_id,
                        artifact_location=(run_dir.resolve().parent / "mlartifacts").as_uri())


def start_mlflow_run(trainer, cfg, run_dir: Path) -> None:
    """Once per run (rank 0, before fit): the config as parameters and the run id in the run folder."""
    from lightning.pytorch.loggers import MLFlowLogger
    from omegaconf import OmegaConf

    for logger in trainer.loggers:
        if isinstance(logger, MLFlowLogger) and not (run_dir / RUN_ID_FILE).is_file():
            logger.log_hyperparams(flat_params(OmegaConf.to_container(OmegaConf.structured(cfg))))
            (run_dir / RUN_ID_FILE).write_text(logger.run_id)


def finish_mlflow_run(trainer, run_dir: Path) -> None:
    """After evaluation: eval.json's figures, the mechanism summaries and the run's files."""
    from lightning.pytorch.loggers import MLFlowLogger

    for logger in trainer.loggers:
        if not isinstance(logger, MLFlowLogger):
            continue
        client, run_id = logger.experiment, logger.run_id
        metrics = {}
        if (run_dir / "eval.json").is_file():
            metrics.update({f"eval/{k}": float(v) for k, v in json.loads((run_dir / "eval.json").read_text()).items()
                            if isinstance(v, (int, float)) and not isinstance(v, bool)})
        if (run_dir / "mechanisms.json").is_file():
            for addon, entry in json.loads((run_dir / "mechanisms.json").read_text()).items():
                for name, value in entry["summary"].items():
                    values = value if isinstance(value, list) else [value]
                    for head, v in enumerate(values):
                        if isinstance(v, (int, float)):
                            suffix = f"/head{head}" if isinstance(value, list) else ""
                            metrics[f"mechanisms/{addon}/{name}{suffix}"] = float(v)
        for key, value in metrics.items():
            client.log_metric(run_id, key, value, step=trainer.global_step)
        for name in ("config.yaml", "train.json", "eval.json", "mechanisms.json", "backbone.json"):
            if (run_dir / name).is_file():
                client.log_artifact(run_id, str(run_dir / name))
        client.set_terminated(run_id)
