"""The evaluation protocol the grid's claims rest on: the validation split, rows made on identical splits,
rows from another protocol refused, the paired interval, and no training or choice reading the test split."""
import json
import math
import statistics

import pytest
import torch
from typer.testing import CliRunner

from sharpshift.bench import grid, protocol
from sharpshift.bench.curves import read_curve
from sharpshift.bench.paired import Comparison, compare, paired_interval, render_comparisons
from sharpshift.cli import app
from sharpshift.data.registry import load_dataset
from sharpshift.data.splits import split_validation, val_indices
from sharpshift.errors import UserError

# a grid budget on digits: the protocol's settings, a seconds-long run
TINY = [*protocol.PROTOCOL, "data.dataset=digits", "data.subset=600", "data.batch_size=64", "trainer.max_epochs=2",
        "model.width=8", "eval.knn_k=5", "eval.knn_monitor_train=300", "method.proj_hidden_dim=32",
        "method.proj_output_dim=16"]


def test_validation_split_is_disjoint_stable_and_independent_of_the_seed():
    full = load_dataset("digits", "train")
    first, again = val_indices(len(full), 0.1), val_indices(len(full), 0.1)
    assert torch.equal(first, again) and len(first) == round(0.1 * len(full))
    rest, val = split_validation(full, 0.1)
    assert len(rest) + len(val) == len(full)
    # by content: every training image is either in the hold-out or in the rest, never in both
    key = lambda ds: {bytes(img.numpy().tobytes()) + bytes([int(y)]) for img, y in zip(ds.images, ds.labels)}  # noqa: E731
    assert not key(rest) & key(val)
    # the hold-out is in the train file, so it cannot be the test split (which is another file)
    assert val.digest() != load_dataset("digits", "test").subset(len(val)).digest()
    # the pretraining subset of any seed is drawn from the rest only
    for seed in (0, 1):
        assert not key(rest.subset(300, seed=seed)) & key(val)
    with pytest.raises(UserError, match="val_fraction"):
        val_indices(5, 0.95)  # nothing left to train on
    with pytest.warns(UserWarning, match="holds out none"):
        assert split_validation(full.select(torch.arange(4)), 0.1)[1] is None  # too few images: no hold-out


def test_floor_row_and_cell_row_of_a_seed_use_identical_splits(tmp_path):
    cell = grid.run_cell(grid.cell_named("simclr"), 1, TINY, tmp_path / "runs", record=tmp_path / "rec")
    floor = grid.run_cell(grid.cell_named("random-encoder"), 1, TINY, tmp_path / "runs", record=tmp_path / "rec")
    pixels = grid.run_cell(grid.cell_named("raw-pixels"), 1, TINY, tmp_path / "runs", record=tmp_path / "rec")
    assert set(cell["splits"]) == {"pretrain", "probe_train", "val", "test"}
    assert cell["splits"] == floor["splits"] == pixels["splits"]
    # ... and those are the splits the protocol defines: the rest of the train file, its seeded subset, the
    # fixed hold-out, the whole test file
    rest, val = split_validation(load_dataset("digits", "train"), 0.1)
    assert cell["splits"] == {"pretrain": rest.subset(600, seed=1).digest(), "probe_train": rest.digest(),
                              "val": val.digest(), "test": load_dataset("digits", "test").digest()}
    other_seed = grid.run_cell(grid.cell_named("random-encoder"), 2, TINY, tmp_path / "runs")
    assert other_seed["splits"]["pretrain"] != cell["splits"]["pretrain"]
    assert other_seed["splits"]["test"] == cell["splits"]["test"]  # the full test split for every seed
    assert cell["protocol"] == floor["protocol"] == protocol.fingerprint(TINY)
    # a learning curve: the validation kNN after each of the 2 epochs, the last one equal to the monitor's value
    assert len(cell["val_knn_curve"]) == 2 and all(0 < v <= 1 for v in cell["val_knn_curve"])


def test_rows_from_another_protocol_are_refused_with_one_line_naming_the_cell(tmp_path):
    fp = protocol.fingerprint(protocol.budget_overrides("reduced"))
    rec = tmp_path / "rec" / "reduced"
    for cell, p in (("simclr", fp), ("moco", "0123456789ab")):
        (rec / cell).mkdir(parents=True)
        (rec / cell / "seed0.json").write_text(json.dumps({"cell": cell, "seed": 0, "protocol": p,
                                                          "linear_top1": 0.8, "knn_top1": 0.7}))
    result = CliRunner().invoke(app, ["bench", "accuracy", "--collect-only", "--budget", "reduced", "--cells",
                                      "simclr,moco", "--seeds", "0", "--record", str(tmp_path / "rec"), "--root",
                                      str(tmp_path / "runs"), "--doc", str(tmp_path / "r.md")])
    assert isinstance(result.exception, UserError)  # main() prints it as "error: ..." and exits with 1
    message = str(result.exception)
    assert "\n" not in message and message.startswith("moco seed 0:") and "0123456789ab" in message
    assert fp in message and not (tmp_path / "r.md").exists()  # nothing tabulated
    # the same for a row made by another definition of its cell (other overrides)
    row = json.loads((rec / "simclr" / "seed0.json").read_text())
    row["cell_spec"] = {**grid.cell_spec(grid.cell_named("simclr")), "overrides": ["optim.lr=9"]}
    (rec / "simclr" / "seed0.json").write_text(json.dumps(row))
    result = CliRunner().invoke(app, ["bench", "accuracy", "--collect-only", "--budget", "reduced", "--cells",
                                      "simclr", "--seeds", "0", "--record", str(tmp_path / "rec"), "--root",
                                      str(tmp_path / "runs"), "--doc", str(tmp_path / "r.md")])
    message = str(result.exception)
    assert isinstance(result.exception, UserError) and "\n" not in message
    assert message.startswith("simclr seed 0:") and "optim.lr=9" in message


def test_a_row_trained_in_another_precision_is_refused(tmp_path):
    """`auto` would pick bf16 on AMX/AVX512-BF16 CPUs and fp32 elsewhere: rows of both must never be paired."""
    fp = protocol.fingerprint(protocol.budget_overrides("reduced"))
    row = {"cell": "simclr", "seed": 0, "protocol": fp, "precision": "bf16-mixed"}
    with pytest.raises(UserError, match="^simclr seed 0: .*bf16-mixed, the protocol's precision is 32-true"):
        protocol.check_row(row, fp, tmp_path / "seed0.json")
    protocol.check_row({**row, "precision": "32-true"}, fp, tmp_path / "seed0.json")
    protocol.check_row({"cell": "raw-pixels", "seed": 0, "protocol": fp}, fp, tmp_path / "seed0.json")  # a floor


def test_fingerprint_follows_the_protocol_settings_and_ignores_the_data_folder():
    reduced = protocol.budget_overrides("reduced")
    fp = protocol.fingerprint(reduced)
    assert protocol.fingerprint([*reduced, "data.data_dir=/elsewhere"]) == fp
    for change in ("data.val_fraction=0.2", "data.test_subset=5000", "eval.linear_max_iter=200",
                   "trainer.max_epochs=4", "model.width=16"):
        assert protocol.fingerprint([*reduced, change]) != fp, change
    assert len({protocol.fingerprint(protocol.budget_overrides(b)) for b in protocol.BUDGETS}) == len(protocol.BUDGETS)
    with pytest.raises(UserError, match="unknown budget"):
        protocol.budget_overrides("huge")


def test_paired_interval_against_a_hand_computation():
    diffs = [1.0, 2.0, 4.0]
    mean = 7 / 3
    sd = math.sqrt(((1 - mean) ** 2 + (2 - mean) ** 2 + (4 - mean) ** 2) / 2)
    t_975_df2 = 4.302652729911275  # Student t, 97.5% quantile, 2 degrees of freedom (printed tables: 4.303)
    half = t_975_df2 * sd / math.sqrt(3)
    iv = paired_interval(diffs)
    assert iv.mean == pytest.approx(mean) and iv.low == pytest.approx(mean - half) and iv.high == pytest.approx(mean + half)
    assert iv.low < 0 < iv.high and iv.verdict == "not shown"
    assert paired_interval([-0.50, -0.60, -0.38]).verdict == "lower"  # consistent on every seed: excludes 0
    assert paired_interval([2.66, 1.48, 1.10]).verdict == "not shown"  # round 1's "AMCL helps SimCLR" kNN gain


def test_comparisons_pair_by_seed_and_render_the_count():
    rows = [{"cell": c, "seed": s, "linear_top1": v, "knn_top1": v} for c, s, v in
            [("a", 0, 0.80), ("a", 1, 0.82), ("a", 2, 0.90), ("b", 0, 0.79), ("b", 1, 0.80), ("b", 3, 0.5)]]
    [(c, seeds, ivs)] = compare(rows, [Comparison("a", "b", "equal epochs"), Comparison("a", "zzz", "x")])
    assert seeds == [0, 1]  # seed 2 has no b, seed 3 no a: left out, not mixed
    assert ivs["linear"].diffs == pytest.approx((1.0, 2.0))
    text = render_comparisons([(c, seeds, ivs)])
    assert text.startswith("1 comparisons x 2 metrics") and "| a | b | equal epochs | 0,1 | +1.00 / +2.00 |" in text
    t = 12.706204736174698  # t 97.5%, 1 degree of freedom
    half = t * statistics.stdev([1.0, 2.0]) / math.sqrt(2)
    assert f"+1.50 [{1.5 - half:+.2f}, {1.5 + half:+.2f}]" in text


def test_equal_cost_cells_scale_the_steps_by_the_measured_ratio():
    costs = {"sam": 1.936, "fourier": 0.991, "amcl": 1.105, "saf": 0.98}
    assert grid.equal_cost_name(grid.CELLS["ssa-clr"], costs) == "simclr@1.9x"
    assert grid.equal_cost_name(grid.CELLS["amcl-moco"], costs) == "moco-clip@1.1x"  # its base has its grad clip
    assert grid.equal_cost_name(grid.CELLS["saf-simclr"], costs) is None  # rounds to 1: equal epochs is equal cost
    assert grid.equal_cost_name(grid.CELLS["mesa-simclr"], costs) is None  # not measured
    cell = grid.cell_named("simclr@1.9x")
    assert (cell.config, cell.overrides, cell.steps_scale) == ("simclr", [], 1.9)
    cell = grid.cell_named("moco-clip@1.1x")
    assert (cell.config, cell.overrides, cell.steps_scale) == ("moco", ["optim.grad_clip=1.0"], 1.1)
    reduced = protocol.budget_overrides("reduced")  # 10,000 images / 256 = 39 steps, 3 epochs
    assert grid.scaled_budget(reduced, 1.9) == ["trainer.max_epochs=6", f"trainer.max_steps={round(3 * 39 * 1.9)}"]
    names = grid.grid_cells(["simclr", "ssa-clr", "simclr-clip", "amcl-simclr"], costs, equal_compute=True)
    assert names == ["raw-pixels", "random-encoder", "simclr", "ssa-clr", "simclr-clip", "amcl-simclr", "simclr@1.9x",
                     "simclr-clip@1.1x"]
    kinds = {(c.a, c.b): c.kind for c in grid.comparisons(names, costs)}
    assert kinds[("ssa-clr", "simclr")] == "equal epochs" and kinds[("ssa-clr", "simclr@1.9x")] == "equal cost (x1.9)"
    assert kinds[("amcl-simclr", "simclr-clip")] == "equal epochs" and ("amcl-simclr", "simclr") not in kinds
    assert kinds[("simclr-clip@1.1x", "random-encoder")] == kinds[("ssa-clr", "raw-pixels")] == "against the floor"
    assert ("raw-pixels", "random-encoder") not in kinds
    assert grid.comparisons(["simclr", "byol"], costs)[0] == Comparison("byol", "simclr", "equal epochs")


def test_training_never_reads_the_test_split(monkeypatch, tmp_path):
    """Pretraining (kNN monitor on) and the grid's choices read only the train file; the test file is read by
    the final evaluation alone."""
    import sharpshift.data.registry as registry
    import sharpshift.train as train

    reads = []
    real = registry.load_dataset

    def spy(name, split, *a, **k):
        reads.append(split)
        return real(name, split, *a, **k)

    monkeypatch.setattr(registry, "load_dataset", spy)  # every loader call goes through the registry
    from sharpshift.config import load_config

    cfg = load_config("simclr", [*TINY, "eval.after_training=false", "report.after_training=false",
                                 f"out_dir={tmp_path}", "trainer.progress_bar=false"])
    run_dir = train.pretrain(cfg)
    assert reads and set(reads) == {"train"}
    assert len(read_curve(run_dir)) == 2  # the kNN monitor ran after both epochs, on the hold-out
    # without a hold-out there is no monitor at all (it would otherwise have to read the test split)
    cfg = load_config("simclr", [*TINY, "data.val_fraction=0", "eval.after_training=false",
                                 "report.after_training=false", f"out_dir={tmp_path}", "trainer.progress_bar=false"])
    reads.clear()
    train.pretrain(cfg)
    assert set(reads) == {"train"}
