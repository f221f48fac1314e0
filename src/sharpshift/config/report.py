"""Config group `report`: the per-run report written at the end of `sharpshift pretrain`."""
from __future__ import annotations

from dataclasses import dataclass

from sharpshift.errors import UserError


@dataclass
class ReportConfig:
    after_training: bool = True  # write RUN_DIR/report.md and report.html when pretraining ends
    embedding: str = "pca"  # pca (instant) or tsne (scikit-learn, ~10-30 s for 2,000 points on 2 cores)
    embedding_points: int = 2000  # test images drawn (seeded) for the embedding plot

    def check(self) -> None:
        if self.embedding not in ("pca", "tsne"):
            raise UserError(f"unknown report.embedding {self.embedding!r}; use pca or tsne")
        if self.embedding_points < 10:
            raise UserError(f"report.embedding_points must be >= 10, got {self.embedding_points}")
