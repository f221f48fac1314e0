"""`sharpshift supervised CONFIG [key=value ...]`: light to import (the CLI loads it at start-up)."""
from __future__ import annotations

import json
from typing import Optional

import typer


def supervised_command(
    args: Optional[list[str]] = typer.Argument(None, help="[CONFIG] [key=value ...], e.g. simclr trainer.max_epochs=3"),
    data_dir: Optional[str] = typer.Option(None, "--data-dir", help="Folder with the dataset files."),
    out_dir: Optional[str] = typer.Option(None, "--out-dir", help="Parent folder of run folders (default ./runs)."),
) -> None:
    """Train the same backbone with labels (cross-entropy on the same views): the supervised reference,
    saved as a run folder that `evaluate` and `diagnose` accept."""
    from sharpshift.cli_args import split_args
    from sharpshift.config import load_config
    from sharpshift.supervised import train_supervised

    config, overrides = split_args(args)
    cfg = load_config(config, overrides + ([f"out_dir={out_dir}"] if out_dir else []))
    run_dir = train_supervised(cfg, data_dir)
    result = run_dir / "eval.json"
    if result.is_file():
        ev = json.loads(result.read_text())
        typer.echo(f"linear_top1={ev['linear_top1']:.4f} knn_top1={ev['knn_top1']:.4f}")
    typer.echo(f"run folder: {run_dir}")
