"""The benchmark machinery (not the benchmarks): grid resume, statistics, table rendering."""
import statistics

import pytest

from sharpshift.bench import grid
from tests.conftest import tiny_config  # noqa: F401  (same tiny budget as the method tests)

TINY = ["data.dataset=digits", "data.batch_size=32", "trainer.max_epochs=1", "trainer.max_steps=2", "model.width=8",
        "eval.knn_k=5"]


def test_grid_cell_is_not_run_again(tmp_path, monkeypatch):
    cell = grid.Cell("simclr", "simclr")
    first = grid.run_cell(cell, 0, TINY, tmp_path)
    assert 0 <= first["linear_top1"] <= 1 and (tmp_path / "simclr" / "seed0" / "eval.json").is_file()

    import sharpshift.train

    def boom(cfg, data_dir=None):
        raise AssertionError("a finished cell must not be run again")

    monkeypatch.setattr(sharpshift.train, "pretrain", boom)
    assert grid.run_cell(cell, 0, TINY, tmp_path) == first


def test_unfinished_cell_is_restarted(tmp_path):
    stale = tmp_path / "simclr" / "seed1"
    stale.mkdir(parents=True)
    (stale / "junk.txt").write_text("half-written")
    row = grid.run_cell(grid.Cell("simclr", "simclr"), 1, TINY, tmp_path)
    assert row["seed"] == 1 and not (stale / "junk.txt").exists()


def test_summary_and_table():
    rows = [{"cell": "a", "seed": s, "linear_top1": v, "knn_top1": v / 2, "train_seconds": 10.0}
            for s, v in enumerate([0.8, 0.9, 0.85])]
    rows.append({"cell": "b", "seed": 0, "linear_top1": 0.5, "knn_top1": 0.4, "train_seconds": 0.0})
    (a, b) = grid.summarise(rows)
    assert a["n"] == 3 and a["linear_mean"] == pytest.approx(0.85)
    assert a["linear_std"] == pytest.approx(statistics.stdev([0.8, 0.9, 0.85]))
    table = grid.render_table([a, b])
    assert "| a | 3 | 85.00 ± 5.00 | 42.50 ± 2.50 | 10 |" in table
    assert "| b | 1 | 50.00 | 40.00 | 0 |" in table


def test_replace_section_rewrites_only_its_block(tmp_path):
    doc = tmp_path / "r.md"
    doc.write_text("# Results\n\nintro\n")
    grid.replace_section(doc, "grid", "one\n")
    grid.replace_section(doc, "other", "x\n")
    grid.replace_section(doc, "grid", "two\n")
    text = doc.read_text()
    assert "intro" in text and "two" in text and "one" not in text and "x\n" in text
    assert text.count("<!-- grid:start -->") == 1


def test_recorded_row_is_reused_without_a_run_folder(tmp_path, monkeypatch):
    cell = grid.Cell("simclr", "simclr")
    row = grid.run_cell(cell, 0, TINY, tmp_path / "runs", record=tmp_path / "rec")
    assert (tmp_path / "rec" / "simclr" / "seed0.json").is_file()
    import shutil

    import sharpshift.train

    shutil.rmtree(tmp_path / "runs")
    monkeypatch.setattr(sharpshift.train, "pretrain", lambda *a, **k: (_ for _ in ()).throw(AssertionError("rerun")))
    again = grid.run_cell(cell, 0, TINY, tmp_path / "runs", record=tmp_path / "rec")
    assert again["linear_top1"] == row["linear_top1"] and "run_dir" not in again
