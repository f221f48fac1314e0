"""The `diagnose sharpness` command; light to import (the work is in diagnostics/sharpness.py)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer


def sharpness_command(
    run_dir: Path = typer.Argument(..., help="A run folder made by `sharpshift pretrain` (needs checkpoints/last.ckpt)."),
    data_dir: Optional[str] = typer.Option(None, "--data-dir", help="Folder with the dataset files."),
    batches: int = typer.Option(2, help="Fixed batches in the objective."),
    batch_size: int = typer.Option(256, help="Images per batch."),
    seed: int = typer.Option(0, help="Seed of the batches, views, probe vectors and directions."),
    power_iters: int = typer.Option(20, help="Power iterations for the top Hessian eigenvalue."),
    hutchinson: int = typer.Option(20, help="Rademacher probes for the Hessian trace."),
    points_1d: int = typer.Option(21, help="Points of the 1-D landscape."),
    points_2d: int = typer.Option(11, help="Points per side of the 2-D landscape."),
    span: float = typer.Option(1.0, help="Landscapes cover [-span, span] along each direction."),
    landscapes: bool = typer.Option(True, "--landscapes/--no-landscapes", help="Compute the 1-D and 2-D landscapes."),
    plots: bool = typer.Option(True, "--plots/--no-plots", help="Write the landscape PNGs."),
    num_threads: int = typer.Option(0, help="torch intra-op threads (0 = torch's default)."),
    views: str = typer.Option("own", help="own: the run's view generator; reference: the plain SimCLR recipe "
                                          "with --seed, the same for every run."),
    out: Optional[Path] = typer.Option(None, help="JSON to write (PNGs next to it, named after it); default "
                                                  "RUN_DIR/sharpness.json, or sharpness_reference.json with "
                                                  "--views reference."),
) -> None:
    """SAM-sharpness (rho 0.01/0.05/0.1), top Hessian eigenvalue, Hessian trace and loss landscapes of the
    extractor; writes RUN_DIR/sharpness.json (and PNGs)."""
    from sharpshift.errors import UserError

    for name, value in (("batches", batches), ("batch-size", batch_size), ("power-iters", power_iters),
                        ("hutchinson", hutchinson), ("points-1d", points_1d), ("points-2d", points_2d)):
        if value < 1:
            raise UserError(f"--{name} must be >= 1, got {value}")
    if span <= 0:
        raise UserError(f"--span must be > 0, got {span}")
    import torch

    from sharpshift.diagnostics.sharpness import diagnose_sharpness

    if num_threads:
        torch.set_num_threads(num_threads)
    r = diagnose_sharpness(run_dir, data_dir, batches, batch_size, seed, power_iters, hutchinson, points_1d,
                           points_2d, span, plots, landscapes, views, out)
    summary = {k: r[k] for k in ("loss", "sam_sharpness", "hessian_top_eigenvalue", "hessian_trace",
                                 "hessian_trace_stderr", "seconds")}
    typer.echo(json.dumps(summary))
