"""Per-run reports (report.md + a self-contained report.html) and side-by-side comparisons of runs.

Light on purpose: the heavy parts (matplotlib, torch) are imported only when a report is written."""
from __future__ import annotations

from pathlib import Path

__all__ = ["write_report", "write_report_or_warn", "write_comparison"]


def _write(out_dir: Path, title: str, sections) -> Path:
    from sharpshift.export import atomic_write_text
    from sharpshift.report.document import render_html, render_markdown
    from sharpshift.report.run_data import ASSET_DIR

    out_dir.mkdir(parents=True, exist_ok=True)
    markdown, assets = render_markdown(title, sections, ASSET_DIR)
    (out_dir / ASSET_DIR).mkdir(exist_ok=True)
    for rel, data in assets.items():
        (out_dir / rel).write_bytes(data)
    atomic_write_text(out_dir / "report.md", markdown)
    atomic_write_text(out_dir / "report.html", render_html(title, sections))
    return out_dir / "report.html"


def write_report(run_dir: str | Path, data_dir: str | None = None) -> Path:
    """RUN_DIR/report.md (+ report_files/*.png) and RUN_DIR/report.html; returns the HTML path."""
    from sharpshift.report.run_data import load_run
    from sharpshift.report.sections import run_sections

    run = load_run(run_dir)
    return _write(run.path, f"sharpshift run report: {run.label}", run_sections(run, data_dir))


def write_comparison(run_dirs: list[str | Path], out_dir: str | Path, data_dir: str | None = None) -> Path:
    """OUT_DIR/report.md and report.html comparing the runs side by side; returns the HTML path."""
    from sharpshift.report.compare import comparison_sections
    from sharpshift.report.run_data import load_run

    runs = [load_run(p) for p in run_dirs]
    title = f"sharpshift comparison of {len(runs)} runs"
    return _write(Path(out_dir), title, comparison_sections(runs, data_dir))


def write_report_or_warn(run_dir: str | Path, data_dir: str | None = None) -> Path | None:
    """write_report for the end of `sharpshift pretrain`: a failing report must not fail a finished run."""
    import warnings

    try:
        return write_report(run_dir, data_dir)
    except Exception as e:  # noqa: BLE001 (anything: the run itself is done and saved)
        warnings.warn(f"report not written ({type(e).__name__}: {e}); retry with `sharpshift report {run_dir}`",
                      stacklevel=2)
        return None
