"""`sharpshift diagnose views`: light to import (the CLI validates configs before torch is loaded)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer


def views_command(
    args: Optional[list[str]] = typer.Argument(None, help="[CONFIG] [key=value ...], e.g. simclr data.test_subset=2000"),
    reference: Optional[Path] = typer.Option(None, "--reference", help="Folder of the reference classifier: loaded "
                                             "if it holds one, else trained and saved there."),
    epochs: int = typer.Option(3, "--epochs", help="Epochs of supervised training of the reference classifier."),
    repeats: int = typer.Option(1, "--repeats", help="Passes of random views over the test set per recipe."),
    fourier_p: float = typer.Option(1.0, "--fourier-p", help="Probability of the Fourier transform in the "
                                    "'with Fourier' rows (variant and alpha come from the config)."),
    data_dir: Optional[str] = typer.Option(None, "--data-dir", help="Folder with the dataset files."),
    out: Optional[Path] = typer.Option(None, "--out", help="Also write the result as JSON here."),
) -> None:
    """Semantic-shift rate and view distances of every augmentation recipe, with and without Fourier."""
    from sharpshift.cli_args import split_args
    from sharpshift.config import load_config
    from sharpshift.errors import UserError

    if epochs < 1 or repeats < 1 or not 0 <= fourier_p <= 1:
        raise UserError("--epochs and --repeats must be >= 1 and --fourier-p in [0, 1]")
    config, overrides = split_args(args)
    cfg = load_config(config, overrides)
    from sharpshift.diagnostics.semantic_shift import diagnose_views, render_table

    result = diagnose_views(cfg, reference, epochs, repeats, fourier_p, data_dir,
                            log=lambda msg: typer.echo(msg, err=True))
    typer.echo(render_table(result))
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2))
        typer.echo(f"result: {out}")
