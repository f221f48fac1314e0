"""`sharpshift pretrain --resume RUN_DIR`: the run continues with the config it was started with.

Only keys that do not change what is trained may differ (trainer.* and eval.*: threads, devices, progress
bar, checkpoint frequency...). Changing trainer.max_epochs or max_steps is allowed, but it changes the
learning-rate and momentum schedules, so the result is no longer that of one uninterrupted run."""
from __future__ import annotations

from pathlib import Path

from sharpshift.errors import UserError

RESUMABLE_KEYS = ("trainer.", "eval.")


def resume_config(run_dir: Path, config: str | None, overrides: list[str], out_dir: str | None):
    from sharpshift.config import load_config

    if config is not None or out_dir is not None:
        raise UserError(f"--resume continues {run_dir} with its own config.yaml; drop the config name/--out-dir")
    if not Path(run_dir).is_dir():
        raise UserError(f"run folder {run_dir} does not exist; pass a folder made by `sharpshift pretrain`")
    if not (Path(run_dir) / "config.yaml").is_file():
        raise UserError(f"{run_dir} has no config.yaml; pass a folder made by `sharpshift pretrain`")
    for item in overrides:
        key = item.split("=", 1)[0].strip()
        if not key.startswith(RESUMABLE_KEYS):
            raise UserError(f"cannot change {key!r} when resuming (it changes what is trained); only trainer.* and "
                            "eval.* keys may differ, start a new run for the rest")
    return load_config(str(Path(run_dir) / "config.yaml"), overrides)


def appending_csv_logger(run_dir: Path):
    """Lightning's CSVLogger deletes an existing metrics.csv when it starts; a resumed run appends to it."""
    from lightning.pytorch.loggers import CSVLogger
    from lightning.pytorch.loggers.csv_logs import ExperimentWriter

    class AppendingWriter(ExperimentWriter):
        def _check_log_dir_exists(self) -> None:
            # keep the file and its columns: later rows are appended, new columns rewrite the header
            if self._fs.isfile(self.metrics_file_path):
                with self._fs.open(self.metrics_file_path, "r") as f:
                    header = f.readline().strip()
                self.metrics_keys = sorted(k for k in header.split(",") if k)

    class AppendingCSVLogger(CSVLogger):
        @property
        def experiment(self):
            if self._experiment is None:
                self._fs.makedirs(self.root_dir, exist_ok=True)
                self._experiment = AppendingWriter(log_dir=self.log_dir)
            return self._experiment

    return AppendingCSVLogger(run_dir, name="", version="logs")
