"""`sharpshift diagnose discriminability RUN_DIR`; light to import (the work is in discriminability.py)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer


def discriminability_command(
    run_dir: Path = typer.Argument(..., help="A run folder (pretrain or supervised) with backbone.safetensors."),
    data_dir: Optional[str] = typer.Option(None, "--data-dir", help="Folder with the dataset files."),
    tsne_points: int = typer.Option(2000, help="Test images in the t-SNE plot (0 = no plot)."),
    seed: int = typer.Option(0, help="Seed of the alignment views and the t-SNE subset."),
    num_threads: int = typer.Option(0, help="torch intra-op threads (0 = torch's default)."),
) -> None:
    """Intra-class variance, inter-class centroid distance and their ratio, crowding, alignment and uniformity
    of the test-set features; writes RUN_DIR/discriminability.json and RUN_DIR/tsne.png."""
    from sharpshift.errors import UserError

    if tsne_points < 0:
        raise UserError(f"--tsne-points must be >= 0, got {tsne_points}")
    import torch

    from sharpshift.diagnostics.discriminability import diagnose_run

    if num_threads:
        torch.set_num_threads(num_threads)
    result = diagnose_run(run_dir, data_dir, tsne_points, seed)
    result.pop("per_class_variance", None)
    typer.echo(json.dumps(result, indent=2))
