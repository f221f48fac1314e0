"""`sharpshift diagnose amcl`: light to import (the CLI validates configs before torch is loaded)."""
from __future__ import annotations

import json
from pathlib import Path

import typer


def amcl_command(
    runs: list[str] = typer.Argument(..., help="Run folders with checkpoints/last.ckpt, each optionally LABEL=FOLDER."),
    out: Path = typer.Option(Path("amcl_similarity.png"), help="Where to write the histogram plot."),
    images: int = typer.Option(512, help="Held-out test images to pair up."),
) -> None:
    """Per-head positive/negative similarity histograms of trained runs (AMCL or single-head baselines)."""
    from sharpshift.diagnostics.amcl_similarity import plot_histograms, run_similarities

    folders = [tuple(r.split("=", 1)) if "=" in r else (Path(r).name, r) for r in runs]
    rows = {label: run_similarities(Path(folder), images) for label, folder in folders}
    plot_histograms(rows, out)
    summary = {name: [{k: v for k, v in h.items() if k not in ("pos", "neg")} for h in heads]
               for name, heads in rows.items()}
    typer.echo(json.dumps(summary, indent=2))
    typer.echo(f"plot: {out}")
