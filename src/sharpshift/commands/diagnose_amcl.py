"""`sharpshift diagnose amcl`: light to import (the CLI validates configs before torch is loaded)."""
from __future__ import annotations

import json
from pathlib import Path

import typer


def amcl_command(
    runs: list[str] = typer.Argument(..., help="Run folders with checkpoints/last.ckpt, each optionally LABEL=FOLDER."),
    out: Path = typer.Option(Path("amcl_similarity.png"), help="Where to write the histogram plot."),
    images: int = typer.Option(512, help="Held-out test images to pair up."),
    plot: bool = typer.Option(True, help="Write the histogram plot (--no-plot: only each run's JSON)."),
) -> None:
    """Per-head positive/negative similarity histograms of trained runs (AMCL or single-head baselines); each
    run's figures (separation = AUC per head, and their mean over heads) also go to RUN/amcl_similarity.json."""
    from sharpshift.diagnostics.amcl_similarity import FILE, plot_histograms, run_similarities, summary
    from sharpshift.export import atomic_write_text

    folders = [tuple(r.split("=", 1)) if "=" in r else (Path(r).name, r) for r in runs]
    rows = {label: run_similarities(Path(folder), images) for label, folder in folders}
    figures = {label: summary(heads) for label, heads in rows.items()}
    for label, folder in folders:
        atomic_write_text(Path(folder) / FILE, json.dumps({**figures[label], "images": images}, indent=2))
    typer.echo(json.dumps(figures, indent=2))
    if plot:
        plot_histograms(rows, out)
        typer.echo(f"plot: {out}")
