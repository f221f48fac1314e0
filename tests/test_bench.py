"""The benchmark machinery (not the benchmarks): grid resume, statistics, table rendering."""
import json
import shutil
import statistics
from pathlib import Path

import pytest
import torch

from sharpshift.bench import grid, grid_tables, protocol
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
    rows[-1]["val_knn_top1"] = 0.3
    (a, b) = grid_tables.summarise(rows)
    assert a["n"] == 3 and a["linear_mean"] == pytest.approx(0.85)
    assert a["linear_std"] == pytest.approx(statistics.stdev([0.8, 0.9, 0.85]))
    table = grid_tables.render_table([a, b])
    assert "| a | 3 | 85.00 ± 5.00 | 42.50 ± 2.50 | - | - | 10 |" in table
    assert "| b | 1 | 50.00 | 40.00 | - | 30.00 | 0 |" in table


def test_replace_section_rewrites_only_its_block(tmp_path):
    doc = tmp_path / "r.md"
    doc.write_text("# Results\n\nintro\n")
    grid_tables.replace_section(doc, "grid", "one\n")
    grid_tables.replace_section(doc, "other", "x\n")
    grid_tables.replace_section(doc, "grid", "two\n")
    text = doc.read_text()
    assert "intro" in text and "two" in text and "one" not in text and "x\n" in text
    assert text.count("<!-- grid:start -->") == 1


def test_recorded_row_is_reused_without_a_run_folder(tmp_path, monkeypatch):
    cell = grid.Cell("simclr", "simclr")
    row = grid.run_cell(cell, 0, TINY, tmp_path / "runs", record=tmp_path / "rec")
    assert (tmp_path / "rec" / "simclr" / "seed0.json").is_file()

    import sharpshift.train

    shutil.rmtree(tmp_path / "runs")
    monkeypatch.setattr(sharpshift.train, "pretrain", lambda *a, **k: (_ for _ in ()).throw(AssertionError("rerun")))
    again = grid.run_cell(cell, 0, TINY, tmp_path / "runs", record=tmp_path / "rec")
    assert again["linear_top1"] == row["linear_top1"] and "run_dir" not in again


def test_row_and_run_folder_from_another_protocol_are_made_again(tmp_path):
    cell, runs, rec = grid.Cell("simclr", "simclr"), tmp_path / "runs", tmp_path / "rec"
    first = grid.run_cell(cell, 0, TINY, runs, record=rec)
    row_file = rec / "simclr" / "seed0.json"
    old = json.loads(row_file.read_text())
    old.update(protocol="0123456789ab", linear_top1=-1.0)
    row_file.write_text(json.dumps(old))
    (runs / "simclr" / "seed0" / grid.GRID_FILE).write_text(json.dumps({"protocol": "0123456789ab"}))
    logged = []
    again = grid.run_cell(cell, 0, TINY, runs, record=rec, log=logged.append)
    assert again["protocol"] == first["protocol"] and again["linear_top1"] != -1.0
    assert json.loads(row_file.read_text())["protocol"] == first["protocol"]
    assert len(logged) == 1 and "0123456789ab" in logged[0] and "made again" in logged[0]
    # a row trained in another precision (bf16 on a bf16 CPU) is made again under the protocol's fp32
    bf16 = {**json.loads(row_file.read_text()), "precision": "bf16-mixed", "linear_top1": -1.0}
    row_file.write_text(json.dumps(bf16))
    logged.clear()
    again = grid.run_cell(cell, 0, TINY, runs, record=rec, log=logged.append)
    assert again["precision"] == "32-true" and again["linear_top1"] != -1.0 and "bf16-mixed" in logged[0]
    # a cell redefined (other overrides) is made again too, not read back under its old definition
    clipped = grid.Cell("simclr", "simclr", ["optim.grad_clip=1.0"])
    logged.clear()
    redone = grid.run_cell(clipped, 0, TINY, runs, record=rec, log=logged.append)
    assert redone["cell_spec"]["overrides"] == ["optim.grad_clip=1.0"] and "now defined as" in logged[0]
    assert "grad_clip: 1.0" in (runs / "simclr" / "seed0" / "config.yaml").read_text()


def test_dsa_cells_use_the_same_seeds_simclr_run_as_prior_and_supervised_cell_trains_with_labels(tmp_path,
                                                                                                    monkeypatch):
    import yaml

    trained = []
    real_train = grid._train
    monkeypatch.setattr(grid, "_train", lambda cell, ov, d, p: (trained.append(cell.name), real_train(cell, ov, d, p)))
    grid.run_cell(grid.CELLS["dsa-simclr"], 0, TINY, tmp_path, record=tmp_path / "rec")
    grid.run_cell(grid.CELLS["dsa-byol"], 0, TINY, tmp_path, record=tmp_path / "rec")
    assert trained == ["simclr", "dsa-simclr", "dsa-byol"]  # the prior is the SimCLR cell, trained once
    assert (tmp_path / "rec" / "simclr" / "seed0.json").is_file()  # ... and recorded as that cell's row
    for name in ("dsa-simclr", "dsa-byol"):
        cfg = yaml.safe_load((tmp_path / name / "seed0" / "config.yaml").read_text())
        assert cfg["dsa"]["enabled"] and Path(cfg["dsa"]["prior_path"]) == tmp_path / "simclr" / "seed0"
    row = grid.run_cell(grid.CELLS["supervised"], 0, TINY, tmp_path)
    arch = (tmp_path / "supervised" / "seed0" / "backbone.json").read_text()
    assert '"supervised"' in arch and 0 <= row["linear_top1"] <= 1


def test_diagnostics_are_added_to_a_recorded_row_once(tmp_path, monkeypatch):
    cell, runs, rec = grid.Cell("simclr", "simclr"), tmp_path / "runs", tmp_path / "rec"
    grid.run_cell(cell, 0, TINY, runs, record=rec)  # recorded without diagnostics
    row = grid.run_cell(cell, 0, TINY, runs, record=rec, diagnostics=["discriminability"])
    figures = row["diagnostics"]["discriminability"]
    assert 0 <= figures["crowding"] <= 1 and figures["intra_class_variance"] > 0
    monkeypatch.setattr(grid, "diagnose", lambda *a: (_ for _ in ()).throw(AssertionError("diagnosed twice")))
    assert grid.run_cell(cell, 0, TINY, runs, record=rec, diagnostics=["discriminability"]) == row


def test_diagnostics_are_never_taken_on_a_run_folder_of_another_protocol(tmp_path):
    """A recorded row whose folder was trained under another protocol (or is gone): the folder is trained again
    before a diagnostic measures it, and a stale folder's figures never reach the row."""
    cell, runs, rec = grid.Cell("simclr", "simclr"), tmp_path / "runs", tmp_path / "rec"
    first = grid.run_cell(cell, 0, TINY, runs, record=rec)
    folder = runs / "simclr" / "seed0"
    (folder / grid.GRID_FILE).write_text(json.dumps({"protocol": "0123456789ab"}))  # stale
    (folder / "discriminability.json").write_text(json.dumps({"crowding": 99.0}))
    row_file = rec / "simclr" / "seed0.json"  # a recorded figure the retrained model will not reproduce
    row_file.write_text(json.dumps({**json.loads(row_file.read_text()), "linear_top1": -1.0,
                                    "machine": "Other CPU, bf16 units: none"}))
    stale = grid.refresh_headlines({**first, "diagnostics": {"discriminability": {}}}, runs)
    assert stale["diagnostics"]["discriminability"] == {}  # crowding 99 was not read
    logged = []
    row = grid.run_cell(cell, 0, TINY, runs, record=rec, diagnostics=["discriminability"], log=logged.append)
    assert any("training it again" in m for m in logged)
    assert json.loads((folder / grid.GRID_FILE).read_text())["protocol"] == first["protocol"]
    assert row["diagnostics"]["discriminability"]["crowding"] <= 1
    # the row is the retrained folder's, accuracy and diagnostics from one model
    assert row["linear_top1"] == json.loads((folder / "eval.json").read_text())["linear_top1"] != -1.0
    # the replaced row named another machine type: it is kept, to pair with rows of that type
    assert row["machine"] == grid.machine_type(json.loads((folder / "train.json").read_text()))
    kept = rec / "simclr" / grid.KEPT_ROWS / "other-cpu-bf16-units-none" / "seed0.json"
    assert json.loads(kept.read_text())["linear_top1"] == -1.0
    assert [r["linear_top1"] for r in grid.kept_rows("simclr", 0, rec)] == [-1.0]


def test_a_row_retrained_for_a_new_diagnostic_keeps_its_other_diagnostics_measured_again(tmp_path):
    """Robustness asked of a recorded row whose folder is gone: the row becomes the retrained folder's, and the
    diagnostics the old row had (here discriminability) are measured again on it, not dropped, nor kept from
    the old model."""
    cell, runs, rec = grid.Cell("simclr", "simclr"), tmp_path / "runs", tmp_path / "rec"
    grid.run_cell(cell, 0, TINY, runs, record=rec)
    shutil.rmtree(runs / "simclr")
    row_file = rec / "simclr" / "seed0.json"
    row_file.write_text(json.dumps({**json.loads(row_file.read_text()),
                                    "diagnostics": {"discriminability": {"crowding": 99.0}}}))
    row = grid.run_cell(cell, 0, TINY, runs, record=rec, diagnostics=["separation"])
    assert set(row["diagnostics"]) == {"separation", "discriminability"}
    assert row["diagnostics"]["separation"]["heads"] == 1
    assert 0 <= row["diagnostics"]["discriminability"]["crowding"] <= 1  # the new folder's, not 99
    folder = runs / "simclr" / "seed0"
    measured = json.loads((folder / "discriminability.json").read_text())["crowding"]
    assert row["diagnostics"]["discriminability"]["crowding"] == measured


def test_a_prior_remade_on_another_machine_type_becomes_the_simclr_row_and_the_old_row_is_kept(tmp_path):
    """DSA's prior is SimCLR's run folder; where runs/ is empty it is trained again. On another machine type that
    folder is another model than the recorded row: the row must become the folder's (its diagnostics measured
    again on it), or the row's accuracy and the folder's diagnostics would mix two models."""
    runs, rec = tmp_path / "runs", tmp_path / "rec"
    row_file = rec / "simclr" / "seed0.json"
    grid.run_cell(grid.CELLS["simclr"], 0, TINY, runs, record=rec)
    shutil.rmtree(runs / "simclr")  # a fresh checkout: rows, no run folders
    row_file.write_text(json.dumps({**json.loads(row_file.read_text()), "linear_top1": -1.0,
                                    "machine": "Other CPU, bf16 units: none",
                                    "diagnostics": {"discriminability": {"crowding": 99.0}}}))
    logged = []
    grid.run_cell(grid.CELLS["dsa-simclr"], 0, TINY, runs, record=rec, log=logged.append)
    folder = runs / "simclr" / "seed0"
    row = json.loads(row_file.read_text())
    assert row["linear_top1"] == json.loads((folder / "eval.json").read_text())["linear_top1"] != -1.0
    assert row["machine"] == grid.folder_machine(folder) and any("the row is the folder's" in m for m in logged)
    assert 0 <= row["diagnostics"]["discriminability"]["crowding"] <= 1  # measured again, on the folder
    assert [r["linear_top1"] for r in grid.kept_rows("simclr", 0, rec)] == [-1.0]
    logged.clear()  # read back: the same row, nothing replaced or trained again
    assert grid.run_cell(grid.CELLS["simclr"], 0, TINY, runs, record=rec, log=logged.append) == row and not logged


def test_diagnostics_table_flattens_and_averages():
    rows = [{"cell": "a", "diagnostics": {"sharpness": {"loss": v, "sam_sharpness": {"0.05": v / 10}}}}
            for v in (1.0, 3.0)] + [{"cell": "b", "diagnostics": {}}]
    table = grid_tables.render_diagnostics(rows, list(grid.DIAGNOSTICS))
    assert "| cell | seeds | loss | sam_sharpness 0.05 |" in table
    assert f"| a | 2 | 2 ± {statistics.stdev([1.0, 3.0]):.2g} | 0.2 ± {statistics.stdev([0.1, 0.3]):.2g} |" in table
    assert "| b |" not in table and "robustness" not in table


# --- sharpshift bench speed: the machinery, not the benchmark --------------------------------------------
def test_flops_of_known_layers():
    from torch import nn

    from sharpshift.bench.flops import count_flops

    conv = nn.Conv2d(3, 8, kernel_size=3, padding=1)  # 8 x 10 x 10 outputs, 3 x 3 x 3 multiply-adds each
    assert count_flops(conv, torch.zeros(2, 3, 10, 10)) == 2 * (2 * 8 * 10 * 10) * (3 * 3 * 3)
    grouped = nn.Conv2d(4, 4, kernel_size=3, groups=4)  # depthwise: 1 x 3 x 3 per output
    assert count_flops(grouped, torch.zeros(1, 4, 5, 5)) == 2 * (4 * 3 * 3) * 9
    linear = nn.Linear(10, 5)
    assert count_flops(linear, torch.zeros(4, 10)) == 2 * 4 * 5 * 10
    net = nn.Sequential(conv, nn.ReLU(), nn.Flatten(), nn.Linear(800, 7))
    assert count_flops(net, torch.zeros(1, 3, 10, 10)) == 2 * (800 * 27 + 7 * 800)


def test_case_list_covers_every_base_method_and_add_on():
    from dataclasses import fields

    from sharpshift.bench.speed import ADDONS, CASES, case_config
    from sharpshift.config import Config
    from sharpshift.methods import METHODS

    add_on_groups = {f.name for f in fields(Config) if hasattr(getattr(Config(), f.name), "enabled")}
    switched_on = {o.split(".")[0] for c in ADDONS for o in c.overrides if o.endswith(".enabled=true")}
    assert add_on_groups == switched_on and "asam" in CASES
    assert set(METHODS) <= set(CASES) and {"bare", "split"} <= set(CASES)
    for case in CASES.values():  # every case's overrides are valid keys and values
        case_config(case, 32)


def test_bad_speed_settings_are_user_errors():
    from sharpshift.bench.speed import check_settings, parse_cases
    from sharpshift.errors import UserError

    with pytest.raises(UserError, match="unknown case"):
        parse_cases("simclr,nope")
    with pytest.raises(UserError, match="--steps"):
        check_settings(0, 1, 32)
    assert parse_cases("sam,bare") == ["bare", "simclr", "sam"]
    assert parse_cases("all")[0] == "bare"


def test_speed_markdown_table():
    from sharpshift.bench.speed_markdown import render_markdown

    case = {"base": "simclr", "note": "plain step", "step_s": 0.4, "images_per_s": 640.0, "ratio_to": "simclr",
            "ratio": 1.0}
    result = {
        "command": "sharpshift bench speed --steps 6",
        "machine": {"cpu": "Test CPU", "cores": 2, "threads": 2, "torch": "2.x", "platform": "Linux"},
        "settings": {"dataset": "fashion-mnist", "image_size": 28, "backbone": "convnet", "width": 32,
                     "batch_size": 256, "precision": "32-true", "steps_per_round": 6, "rounds": 3, "warmup_steps": 2,
                     "wall_s": 250.0},
        "peak": {"dtype": "float32", "matmul_n": 2048, "flops_per_s": 100e9},
        "flops": {"forward_per_image": 40_000_000, "step": 30e9, "how": "hooks"},
        "achieved": {"simclr": {"flops_per_s": 75e9, "of_peak": 0.75}},
        "cases": {"bare": {**case, "note": "bare loop", "step_s": 0.32, "images_per_s": 800.0, "ratio": 0.8},
                  "simclr": case,
                  "sam": {**case, "note": "SAM", "step_s": 0.8, "images_per_s": 320.0, "ratio": 2.0}},
        "split": {"views": 0.01, "forward": 0.1, "backward": 0.25, "optimizer": 0.02, "logging": 0.01, "other": 0.01},
    }
    md = render_markdown(result)
    assert "| simclr | 400.0 | 640 | 1 (reference) | plain step |" in md
    assert "| simclr + sam | 800.0 | 320 | 2.00x simclr | SAM |" in md
    assert "| bare | 320.0 | 800 | 0.80x simclr | bare loop |" in md
    assert "**+25.0%**" in md  # 0.4 s against 0.32 s
    assert "**100.0 GFLOP/s** (float32" in md and "| sharpshift SimCLR step | 75.0 | 75% |" in md
    assert "| backward | 250.0 | 62.5% |" in md and "| total | 400.0 | 100% |" in md
    assert "Test CPU, 2 cores" in md and "`sharpshift bench speed --steps 6`" in md


def test_collect_only_tabulates_recorded_rows_and_lists_the_missing(tmp_path):
    import json

    from typer.testing import CliRunner

    from sharpshift.cli import app

    fp = protocol.fingerprint(protocol.budget_overrides("reduced"))
    row = {"cell": "simclr", "seed": 0, "protocol": fp, "linear_top1": 0.8, "knn_top1": 0.7, "train_seconds": 5.0,
           "diagnostics": {"discriminability": {"crowding": 0.25}}}
    floor = {"cell": "random-encoder", "seed": 0, "protocol": fp, "linear_top1": 0.75, "knn_top1": 0.71,
             "train_seconds": 0.0}
    for r in (row, floor):
        (tmp_path / "rec" / "reduced" / r["cell"]).mkdir(parents=True)
        (tmp_path / "rec" / "reduced" / r["cell"] / "seed0.json").write_text(json.dumps(r))
    doc = tmp_path / "docs" / "results.md"
    (tmp_path / "README.md").write_text("# x\n<!-- readme-results:start -->\nold\n<!-- readme-results:end -->\n")
    result = CliRunner().invoke(app, ["bench", "accuracy", "--collect-only", "--budget", "reduced", "--cells", "simclr",
                                      "--seeds", "0,1", "--record", str(tmp_path / "rec"), "--root",
                                      str(tmp_path / "runs"), "--doc", str(doc)])
    assert result.exit_code == 0, result.output
    text = doc.read_text()
    assert "| simclr | 1 | 80.00 | 70.00 | - | - | 5 |" in text and "simclr seed 1" in text.split("Not run (yet)")[1]
    floors = text.split("**Against the floors, paired**")[1]
    assert "| simclr | random-encoder | against the floor | 0 | +5.00 | +5.00 | one seed | -1.00 |" in floors
    assert (tmp_path / "docs" / "results" / "grid-reduced.png").stat().st_size > 1000
    readme = (tmp_path / "README.md").read_text()  # the README next to the doc's folder gets the base methods
    assert "old" not in readme and "| simclr | 1 | 80.00 | 70.00 | - | - | 5 |" in readme
    assert not (tmp_path / "runs" / "reduced" / "simclr").exists()  # nothing was trained
    assert "**discriminability**" in text and "| simclr | 1 | 0.25 |" in text  # recorded diagnostics by default
    result = CliRunner().invoke(app, ["bench", "accuracy", "--collect-only", "--budget", "reduced", "--cells", "simclr",
                                      "--seeds", "0", "--diagnose", "none", "--record", str(tmp_path / "rec"),
                                      "--root", str(tmp_path / "runs"), "--doc", str(doc)])
    assert result.exit_code == 0, result.output
    assert "**discriminability**" not in doc.read_text()


def test_learning_curve_read_from_metrics_and_averaged_over_seeds(tmp_path):
    from sharpshift.bench.curves import mean_curves, read_curve, render_curves

    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "metrics.csv").write_text(  # a resumed run logged epoch 1 twice: the later one counts
        "epoch,step,train/loss,val/knn_top1\n0,10,5.0,\n0,19,,0.5\n1,29,,0.6\n1,29,,0.65\n2,39,4.0,0.7\n")
    assert read_curve(tmp_path) == [0.5, 0.65, 0.7]
    assert read_curve(tmp_path / "nothing") == []
    rows = [{"cell": "a", "val_knn_curve": [0.5, 0.7]}, {"cell": "a", "val_knn_curve": [0.7, 0.9, 1.0]},
            {"cell": "b", "val_knn_curve": []}]
    assert mean_curves(rows) == {"a": pytest.approx([0.6, 0.8])}  # up to the shortest curve; b has none
    assert render_curves(rows, tmp_path / "c.png") and (tmp_path / "c.png").stat().st_size > 1000
    assert not render_curves(rows[2:], tmp_path / "none.png") and not (tmp_path / "none.png").exists()


def test_a_rows_machine_type_is_its_cpu_and_bf16_units_and_unknown_before_they_were_recorded():
    assert grid.machine_type({"cpu": "AMD EPYC", "bf16_units": ["avx512_bf16"]}) == "AMD EPYC, bf16 units: avx512_bf16"
    assert grid.machine_type({"cpu": "AMD EPYC", "bf16_units": []}) == "AMD EPYC, bf16 units: none"
    assert grid.machine_type({"cpu": "AMD EPYC"}) is None  # a train.json from before the field


def test_a_comparison_pairs_each_row_with_the_bases_row_of_its_machine_type_where_one_is_kept():
    from sharpshift.bench.paired import KEPT, Comparison, Partners, compare
    x, y = "CPU, bf16 units: none", "CPU, bf16 units: avx512_bf16"
    rows = [{"cell": "simclr", "seed": s, "machine": x, "linear_top1": 0.80, "knn_top1": 0.70} for s in range(3)]
    rows += [{"cell": "simclr", "seed": s, "machine": y, "linear_top1": 0.60, "knn_top1": 0.50, KEPT: True}
             for s in (0, 1)]  # seed 2 of type y was never made
    rows += [{"cell": "sam-simclr", "seed": s, "machine": y, "linear_top1": 0.61, "knn_top1": 0.52} for s in range(3)]
    (c, seeds, iv), = compare(rows, [Comparison("sam-simclr", "simclr", "equal epochs")])
    # seeds 0 and 1 pair with the kept rows of type y; seed 2 falls back on simclr's own row (type x)
    assert seeds == [0, 1, 2] and iv["linear"].diffs == pytest.approx((1.0, 1.0, -19.0))
    assert iv["kNN"].diffs == pytest.approx((2.0, 2.0, -18.0))
    partners = Partners(rows)
    assert partners.of("simclr", 0, {"machine": x})["linear_top1"] == 0.80  # its own row, of the same type
    assert partners.of("simclr", 5, {"machine": y}) is None
    # the kept rows pair only: simclr against itself compares its own rows, and they are not counted as seeds
    (_, seeds, iv), = compare(rows, [Comparison("simclr", "simclr", "x")])
    assert seeds == [0, 1, 2] and iv["linear"].diffs == (0.0, 0.0, 0.0)
