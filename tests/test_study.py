"""`bench study`: the claims' arms are real cells, the mechanism check and the verdict follow their rule on rows
whose answer is known, and --collect-only rebuilds the sections and the summary from recorded rows."""
import json
import shutil

import pytest

from sharpshift.bench import study
from sharpshift.bench.grid import CELLS, cell_named, cell_spec
from sharpshift.bench.protocol import budget_overrides, fingerprint
from sharpshift.config import list_configs, load_config
from sharpshift.errors import UserError


def row(cell, seed, linear, trace=None, train=None, budget="long", **extra):  # noqa: PLR0913
    r = {"cell": cell, "seed": seed, "protocol": fingerprint(budget_overrides(budget)),
         "cell_spec": cell_spec(cell_named(cell)), "linear_top1": linear, "knn_top1": linear - 0.02,
         "val_linear_top1": linear + 0.001, "val_knn_top1": linear - 0.01, "train_seconds": 1.0, "diagnostics": {},
         **extra}
    if trace is not None:
        r["diagnostics"]["sharpness"] = {"hessian_trace": trace, "hessian_top_eigenvalue": trace / 10}
    if train is not None:
        r["linear_train_top1"] = train
    return r


def ssa_rows(ssa_gain, cost_gain, sam_trace_drop=50.0, budget="long"):
    """SimCLR at 0.80 + seed noise; ssa-clr `ssa_gain` above it and `cost_gain` above simclr@1.9x."""
    rows = []
    for s, noise in enumerate((0.0, 0.002, -0.001)):
        base = 0.80 + noise
        rows += [row("simclr", s, base, trace=100.0 + s, budget=budget),
                 row("sam-simclr", s, base, trace=100.0 + s - sam_trace_drop, budget=budget),
                 row("fourier-simclr", s, base, budget=budget),
                 row("ssa-clr", s, base + ssa_gain + 0.001 * s, budget=budget),
                 row("simclr@1.9x", s, base + ssa_gain - cost_gain, budget=budget)]
    return rows


def test_every_arm_is_a_cell_of_a_shipped_config_and_every_comparison_uses_arms():
    configs = list_configs()
    for claim in study.CLAIMS.values():
        for arm in claim.arms:
            cell = cell_named(arm)
            assert cell.config in configs, (claim.key, arm)
            assert arm in CELLS or "@" in arm, (claim.key, arm)  # no silent fallback to a config name
        for c in (*claim.headline, *claim.more):
            assert c.a in claim.arms and c.b in claim.arms, (claim.key, c)
        for check in claim.checks:
            assert check.cell in claim.arms and check.b_cell in (None, *claim.arms)


def test_check_is_the_paired_interval_of_the_stated_difference():
    rows = [row("sam-simclr", s, 0.8, trace=t) for s, t in enumerate((40.0, 44.0, 39.0))]
    rows += [row("simclr", s, 0.8, trace=t) for s, t in enumerate((100.0, 90.0, 95.0))]
    seeds, iv = study.SAM_FLATTENS.interval(rows)
    assert seeds == [0, 1, 2] and iv.diffs == (-60.0, -46.0, -56.0) and iv.verdict == "lower"
    against_constant = study.Check("x", "sam-simclr", study.TRACE, "higher", value=42.0)
    assert against_constant.interval(rows)[1].diffs == (-2.0, 2.0, -3.0)
    same_row = study.Check("x", "sam-simclr", study.TRACE, "higher", b_metric=study.TOP_EIG)
    assert same_row.interval(rows)[1].diffs == pytest.approx((36.0, 39.6, 35.1))


@pytest.mark.parametrize("ssa_gain, cost_gain, drop, verdict", [
    (0.02, 0.01, 50.0, "supported at our scale"),
    (0.02, -0.01, 50.0, "supported at equal epochs, not at equal cost"),
    (0.0, 0.0, 50.0, "not supported at our scale"),
    (-0.02, -0.01, 50.0, "not supported at our scale (lower)"),
    (0.02, 0.01, 0.0, "cannot be tested at our scale: the mechanism was not shown on"),
])
def test_verdict_follows_the_rule(ssa_gain, cost_gain, drop, verdict):
    result = study.outcome(study.CLAIMS["ssa"], ssa_rows(ssa_gain, cost_gain, drop))
    assert result.verdict == verdict
    assert result.mechanism == ("on" if drop else "not shown")


@pytest.mark.parametrize("ssa_seconds, verdict, cost", [
    ((200.0, 210.0, 190.0), "supported at our scale", "x1.9 assumed, x2.00 measured"),  # within COST_SLACK
    ((250.0, 240.0, 500.0),  # the median, not the one slow seed, decides
     "supported at equal epochs and at the assumed cost x1.9, which is below the measured x2.50",
     "x1.9 assumed, x2.50 measured"),
])
def test_a_support_whose_equal_cost_arm_is_cheaper_than_the_measured_cost_says_so(ssa_seconds, verdict, cost):
    rows = [{**r, "train_seconds": {"ssa-clr": ssa_seconds[r["seed"]]}.get(r["cell"], 100.0)}
            for r in ssa_rows(0.02, 0.01)]
    result = study.outcome(study.CLAIMS["ssa"], rows)
    assert (result.verdict, result.cost) == (verdict, cost)
    assert "| x1.9 assumed" in study.render_summary([study.CLAIMS["ssa"]], {"ssa": result})


@pytest.mark.parametrize("spread, mechanism", [(0.5, "on"), (1e-4, "not shown")])
def test_amcl_is_on_only_when_its_temperatures_stay_interior_and_differ_between_pairs(spread, mechanism):
    """AMCL-Barlow's long rows: no step at tau_min, yet every pair's temperature 0.7795 +- 1e-4 (uniform weights)."""
    def amcl(seed):
        q50 = 0.2 + 0.001 * seed
        return {"share_at_tau_min": 0.0, **{f"tau_{k}_q{q}_last": [q50 * (1 + f * spread / 2)] * 3
                                            for k in ("pos", "neg") for q, f in (("05", -1), ("50", 0), ("95", 1))}}
    rows = []
    for s in range(3):
        rows += [row("barlow-clip", s, 0.80), row("barlow-clip@1.1x", s, 0.80 + 0.001 * s),
                 row("amcl-barlow", s, 0.82 + 0.001 * s, mechanisms={"amcl": amcl(s)})]
    result = study.outcome(study.CLAIMS["amcl-barlow"], [study.with_derived(r) for r in rows])
    assert result.mechanism == mechanism and "spread over the median above 0.1" in result.mechanism_text
    assert result.verdict == ("supported at our scale" if mechanism == "on"
                              else "cannot be tested at our scale: the mechanism was not shown on")


def test_the_barlow_claim_tests_the_shipped_phi_on_its_own_adam_against_phi_in_lars():
    """In LARS, phi's weight decay erases it: the shipped amcl-barlow gives phi its own Adam and carries the claim's
    headline and both mechanism checks; phi in LARS (the official code's single optimiser, and the shipped
    config before its rows showed every temperature equal) is an arm compared with it."""
    claim = study.CLAIMS["amcl-barlow"]
    assert [(c.a, c.b) for c in claim.headline] == [("amcl-barlow", "barlow-clip"), ("amcl-barlow", "barlow-clip@1.1x")]
    assert ("amcl-barlow", "amcl-barlow-phi-lars") in [(c.a, c.b) for c in claim.more]
    assert {check.cell for check in claim.checks} == {"amcl-barlow"}
    assert load_config("amcl-barlow").amcl.phi_lr == pytest.approx(1e-3)
    for cell in ("amcl-barlow-phi-lars", "amcl-barlow-official"):  # the official code's single optimiser
        assert load_config("amcl-barlow", CELLS[cell].overrides).amcl.phi_lr is None
    simclr = study.CLAIMS["amcl-simclr"]
    assert simclr.headline[0].a == "amcl-simclr" and {check.cell for check in simclr.checks} == {"amcl-simclr"}


def test_the_simsiam_claim_controls_the_official_forms_normalised_steps():
    """At tau_min = 1e-5 the official SimSiam loss is 1e5 times SimSiam's, so the clip at 1.0 binds on every step:
    the control takes the same steps with one head (clip 1e-4, lr x 1e4, weight decay x 1e-4, so that lr times
    the clipped gradient and lr times the decay are the shipped ones), and the claim compares both ways."""
    control = CELLS["simsiam-unit-steps"]
    shipped = cell_named("simsiam")
    cfg = load_config(control.config, control.overrides)
    ref = load_config(shipped.config, ["optim.grad_clip=1.0"])
    assert cfg.optim.lr * cfg.optim.grad_clip == pytest.approx(ref.optim.lr * ref.optim.grad_clip)
    assert cfg.optim.lr * cfg.optim.weight_decay == pytest.approx(ref.optim.lr * ref.optim.weight_decay)
    assert cfg.amcl.enabled is False and load_config("amcl-simsiam").optim.grad_clip == ref.optim.grad_clip
    claim = study.CLAIMS["amcl-simsiam"]
    pairs = [(c.a, c.b) for c in claim.more]
    assert ("amcl-simsiam-official", "simsiam-unit-steps") in pairs and ("simsiam-unit-steps", "simsiam") in pairs
    assert "simsiam-unit-steps" not in study.CLAIMS["amcl-simclr"].arms
    assert ("amcl-simclr", "simclr-clip@1.6x") in [(c.a, c.b) for c in study.CLAIMS["amcl-simclr"].more]


def test_a_claim_whose_precondition_is_not_shown_cannot_be_tested():
    """ssa-small needs a generalisation gap in SimCLR's encoder; with none, even a clear gain is untestable."""
    def with_gap(gap):
        return [{**r, "pretrain_knn_top1": 0.8 + gap + 0.002 * r["seed"], "heldout_knn_top1": 0.8}
                for r in ssa_rows(0.02, 0.01, budget="small")]

    claim = study.CLAIMS["ssa-small"]
    assert study.outcome(claim, [study.with_derived(r) for r in with_gap(0.05)]).verdict == "supported at our scale"
    flat = study.outcome(claim, [study.with_derived(r) for r in with_gap(-0.002)])
    assert flat.verdict == "cannot be tested at our scale: not shown that a generalisation gap exists"


def test_a_gain_without_the_mechanism_checks_rows_is_not_run_yet():
    rows = [{**r, "diagnostics": {}} for r in ssa_rows(0.02, 0.01)]  # no Hessian measured anywhere
    result = study.outcome(study.CLAIMS["ssa"], rows)
    assert result.mechanism == "not run" and result.verdict.startswith("not run (yet)")


def test_missing_headline_rows_are_not_run_whatever_else_is_there():
    rows = [r for r in ssa_rows(0.02, 0.01) if r["cell"] != "simclr@1.9x"]
    assert study.outcome(study.CLAIMS["ssa"], rows).verdict == "not run (yet)"
    one_seed = [r for r in ssa_rows(0.02, 0.01) if r["seed"] == 0]
    assert study.outcome(study.CLAIMS["ssa"], one_seed).verdict == "not run (yet)"


def test_the_gaps_are_train_less_validation():
    r = study.with_derived(row("simclr", 0, 0.8, train=0.9, pretrain_knn_top1=0.95, heldout_knn_top1=0.85))
    assert r["probe_gap"] == pytest.approx(0.9 - 0.801) and r["encoder_gap"] == pytest.approx(0.10)
    assert "probe_gap" not in study.with_derived(row("simclr", 0, 0.8))


def test_the_encoder_gap_queries_the_runs_own_pretraining_images_against_unseen_ones():
    """The pretraining images evaluation.run.pretraining_gap picks are the ones the run trained on; on features
    that memorise exactly those images the gap is the memorised share, and 0 on features that memorise none."""
    import torch

    from sharpshift.data.splits import pretraining_split
    from sharpshift.evaluation.run import labelled_splits, pretraining_gap
    from tests.conftest import tiny_config

    cfg = tiny_config("simclr", "data.subset=300", "seed=4", "eval.knn_k=5")
    pretrain, _ = pretraining_split(cfg)
    probe_train, _, val = labelled_splits(cfg, None, with_val=True)
    seen = torch.zeros(len(probe_train), dtype=torch.bool)
    seen[study_positions(len(probe_train), 300, 4)] = True
    assert torch.equal(probe_train.images[study_positions(len(probe_train), 300, 4)], pretrain.images)
    g = torch.Generator().manual_seed(0)
    noise = lambda n: torch.randn(n, 16, generator=g)  # noqa: E731
    f_train, f_val = noise(len(probe_train)), noise(len(val))
    none = pretraining_gap(cfg, f_train, probe_train.labels, f_val, val.labels)
    assert abs(none["pretrain_knn_top1"] - none["heldout_knn_top1"]) < 0.15  # chance level, both
    f_train[seen] = torch.nn.functional.one_hot(probe_train.labels[seen], 16).float() * 10  # memorised ...
    f_train[~seen] = torch.nn.functional.one_hot(probe_train.labels[~seen], 16).float() * 10 + noise(int((~seen).sum())) * 5
    memorised = pretraining_gap(cfg, f_train, probe_train.labels, f_val, val.labels)
    assert memorised["pretrain_knn_top1"] > memorised["heldout_knn_top1"] + 0.3
    assert pretraining_gap(tiny_config("simclr"), f_train, probe_train.labels, f_val, val.labels) == {}


def study_positions(total, n, seed):
    from sharpshift.data.base import subset_indices

    return subset_indices(total, n, seed)


def test_collect_only_rebuilds_sections_summary_and_readme(tmp_path):
    record = tmp_path / "docs" / "grid"
    for r in ssa_rows(0.02, 0.01):
        path = record / "long" / r["cell"] / f"seed{r['seed']}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(r))
    doc = tmp_path / "docs" / "results.md"
    (tmp_path / "README.md").write_text("x\n<!-- readme-study:start -->\nold\n<!-- readme-study:end -->\n")
    outcomes = study.run_study("all", "0,1,2", tmp_path / "runs", doc, record, True, None, "cmd", log=lambda m: None)
    assert outcomes["ssa"].verdict == "supported at our scale"
    assert outcomes["rsa"].verdict == "not run (yet)"
    text = doc.read_text()
    for key in study.CLAIMS:
        assert f"<!-- study-{key}:start -->" in text
    assert "| SSA-CLR, sharpness part (all 54k images) | long | on | equal epochs: +2." in text
    readme = (tmp_path / "README.md").read_text()
    assert "old" not in readme and "supported at our scale" in readme
    assert (tmp_path / "docs" / "results" / "study-ssa.png").is_file()


def test_unknown_claim_and_a_row_of_another_protocol_are_refused(tmp_path):
    with pytest.raises(UserError, match="unknown claim"):
        study.run_study("ssa,sharp", "0", tmp_path, tmp_path / "r.md", tmp_path, True, None, "cmd")
    stale = {**row("simclr", 0, 0.8), "protocol": "000000000000"}
    (tmp_path / "long" / "simclr").mkdir(parents=True)
    (tmp_path / "long" / "simclr" / "seed0.json").write_text(json.dumps(stale))
    with pytest.raises(UserError, match="simclr"):
        study.run_study("ssa", "0", tmp_path, tmp_path / "r.md", tmp_path, True, None, "cmd")


def test_gap_closed_is_the_per_seed_share_of_the_base_to_reference_gap_with_its_t_interval():
    from sharpshift.bench.paired import ACCURACY, paired_interval
    base, ref, arm = (0.80, 0.81, 0.79, 0.80), (0.90, 0.89, 0.91, 0.80), (0.85, 0.81, 0.82, 0.83)
    rows = [row(c, s, v[s]) for c, v in (("simclr", base), ("supervised", ref), ("dsa-simclr", arm)) for s in range(4)]
    gap = study.CLAIMS["dsa-simclr"].gap_closed
    shares, left_out = gap.shares(rows, "dsa-simclr", ACCURACY[0])
    # by hand: (arm - base) / (ref - base) = 5/10, 0/8, 3/12; seed 3 has no gap (reference = base) and is left out
    assert list(shares) == [0, 1, 2] and shares == pytest.approx({0: 0.5, 1: 0.0, 2: 0.25}) and left_out == [3]
    iv = paired_interval([0.5, 0.0, 0.25])
    table = gap.table(rows)
    assert f"{iv.mean:+.2f} [{iv.low:+.2f}, {iv.high:+.2f}] (seed 3 left out: no gap)" in table
    assert "| dsa-simclr | 0,1,2 | +0.50 / +0.00 / +0.25 |" in table
    assert "dsa-simclr-official" not in table  # an arm without rows gets no line
    assert gap.table([r for r in rows if r["cell"] != "supervised"]) == ""


def test_machine_note_names_each_arms_machine_types_and_the_pairs_that_span_two():
    a, b = "CPU, bf16 units: none", "CPU, bf16 units: avx512_bf16"
    rows = [row("simclr", s, 0.8, machine=a) for s in range(3)]
    rows += [row("sam-simclr", 0, 0.8, machine=a), row("sam-simclr", 1, 0.8, machine=b), row("sam-simclr", 2, 0.8)]
    rows += [row("fourier-simclr", s, 0.8, machine=a) for s in range(3)]
    note = study.machine_note(rows, [study.ee("sam-simclr", "simclr"), study.ee("fourier-simclr", "simclr")])
    assert f"simclr: {a};" in note and f"sam-simclr: {b} and {a} and not recorded" in note
    # seed 1 pairs two types; seed 2's type is not recorded, so it is not said to differ
    assert note.endswith("Comparisons that pair rows of two types: sam-simclr - simclr (seed 1).\n")
    assert study.machine_note(rows[:3] + rows[-3:], [study.ee("fourier-simclr", "simclr")]).endswith(": none.\n")


def test_collect_only_pairs_each_arm_with_the_base_rows_kept_from_its_own_machine_type(tmp_path):
    x, y = "CPU, bf16 units: none", "CPU, bf16 units: avx512_bf16"
    record, files = tmp_path / "grid", {}
    for r in ssa_rows(0.02, 0.01):  # every arm made on type y ...
        files[(r["cell"], r["seed"])] = {**r, "machine": y}
    for s in range(3):  # ... SimCLR retrained on type x, 5 points higher there; its type-y rows kept
        kept = files[("simclr", s)]
        files[("simclr", s)] = {**kept, "machine": x, "linear_top1": kept["linear_top1"] + 0.05}
        files[("simclr-kept", s)] = kept
    for (cell, seed), r in files.items():
        path = record / "long" / (f"simclr/machines/type-y/seed{seed}.json" if cell == "simclr-kept"
                                  else f"{cell}/seed{seed}.json")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(r))
    stale = record / "long" / "simclr" / "machines" / "old-protocol" / "seed0.json"  # pairs nothing, refused never
    stale.parent.mkdir()
    stale.write_text(json.dumps({**files[("simclr", 0)], "machine": "z", "protocol": "000000000000"}))
    doc = tmp_path / "results.md"
    outcome, = study.run_study("ssa", "0,1,2", tmp_path / "runs", doc, record, True, None, "cmd",
                               log=lambda m: None).values()
    assert outcome.verdict == "supported at our scale" and outcome.effect.startswith("equal epochs: +2.")
    text = doc.read_text()
    assert f"simclr: {x} (kept for pairing: {y})" in text and "pair rows of two types: none" in text
    assert "| simclr | 3 | 85." in text  # the table shows SimCLR's own rows (80 + 5), not the kept ones
    shutil.rmtree(record / "long" / "simclr" / "machines")
    outcome, = study.run_study("ssa", "0,1,2", tmp_path / "runs", doc, record, True, None, "cmd",
                               log=lambda m: None).values()
    assert outcome.effect.startswith("equal epochs: -2.") and "sam-simclr - simclr (seed 0,1,2)" in doc.read_text()


def test_cost_note_gives_each_equal_cost_arms_measured_train_time_ratio_beside_the_assumed_one():
    rows = [{**row("simclr", s, 0.8), "train_seconds": t} for s, t in enumerate((100.0, 200.0))]
    rows += [{**row("dsa-simclr", s, 0.8), "train_seconds": t} for s, t in enumerate((250.0, 380.0))]
    rows += [row("simclr@1.5x", s, 0.8) for s in range(2)]
    note = study.cost_note(rows, [study.ee("dsa-simclr", "simclr"), study.ec("dsa-simclr", "simclr@1.5x")])
    assert "dsa-simclr over simclr: 2.50 / 1.90x (simclr@1.5x assumes 1.5x)" in note
    assert study.cost_note(rows, [study.ee("dsa-simclr", "simclr")]) == ""  # no equal-cost arm, no note


def test_collect_only_reads_the_seeds_recorded_beyond_those_asked_for(tmp_path):
    """A claim run with more seeds than the others (AMCL-SimCLR with 5) keeps them in every rebuild: its extra
    rows are read and paired, and only the seeds asked for are listed as missing."""
    record = tmp_path / "grid"
    extra = [row("simclr", 3, 0.79, trace=103.0), row("ssa-clr", 3, 0.75)]  # seed 3: ssa-clr 4 points lower
    for r in [*ssa_rows(0.02, 0.01), *extra]:
        path = record / "long" / r["cell"] / f"seed{r['seed']}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(r))
    doc = tmp_path / "results.md"
    outcome, = study.run_study("ssa", "0,1,2", tmp_path / "runs", doc, record, True, None, "cmd",
                               log=lambda m: None).values()
    # by hand, ssa-clr - simclr per seed: +2.0, +2.1, +2.2, -4.0 points; 4 seeds, so the interval is wide
    from sharpshift.bench.paired import paired_interval
    rows = {(r["cell"], r["seed"]): r["linear_top1"] for r in [*ssa_rows(0.02, 0.01), *extra]}
    diffs = [rows[("ssa-clr", s)] - rows[("simclr", s)] for s in range(4)]
    assert diffs == pytest.approx([0.020, 0.021, 0.022, -0.04])
    iv = paired_interval(diffs)
    assert outcome.effect.startswith(f"equal epochs: {iv.mean * 100:+.2f} [{iv.low * 100:+.2f}, {iv.high * 100:+.2f}]")
    assert outcome.verdict == "not supported at our scale"
    text = doc.read_text()
    assert "| ssa-clr | 4 |" in text and "| sam-simclr | 3 |" in text and "sam-simclr seed 3" not in text


def _flat(cell_name: str) -> dict:
    """A cell's config under the long budget, as {"group.key": value}."""
    from omegaconf import OmegaConf

    from sharpshift.config import load_config
    cell = cell_named(cell_name)
    cfg = OmegaConf.to_container(OmegaConf.structured(load_config(cell.config, [*budget_overrides("long"),
                                                                                *cell.overrides])))

    def flat(node: dict, prefix: str = "") -> dict:
        return {k: v for key, value in node.items() for k, v in
                (flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value}).items()}
    return flat(cfg)


@pytest.mark.parametrize(("a", "b", "addon"), [("amcl-saf-simclr", "amcl-simclr", "saf"),
                                               ("amcl-saf-simclr", "saf-simclr-e2-clip", "amcl"),
                                               ("saf-simclr-e2-clip", "simclr-clip", "saf"),
                                               ("amcl-simclr", "simclr-clip", "amcl")])
def test_each_composition_comparison_changes_one_add_on_and_nothing_else(a, b, addon):
    comparisons = {(c.a, c.b) for c in (*study.CLAIMS["composition"].headline, *study.CLAIMS["composition"].more)}
    assert (a, b) in comparisons
    fa, fb = _flat(a), _flat(b)
    changed = {k.split(".")[0] for k in fa.keys() | fb.keys() if fa.get(k) != fb.get(k)} - {"name"}
    assert changed == {addon}, changed
    assert fa[f"{addon}.enabled"] and not fb[f"{addon}.enabled"]
    assert not fa["saf.enabled"] or fa["saf.epochs_ago"] == 2  # the long budget's E = 2 wherever SAF is on


def test_amcl_claims_pair_the_heads_separation_seed_by_seed(tmp_path):
    """Claim 5's readout "similarity separation per head": the grid's separation diagnostic, paired like the
    accuracies (AMCL's mean over 3 heads against the base's one head)."""
    claim = study.CLAIMS["amcl-simclr"]
    assert claim.diagnose == ("separation",) and study.CLAIMS["composition"].diagnose == ("separation",)
    rows = []
    for s in range(3):
        for cell, sep in (("simclr-clip", 0.90), ("amcl-simclr", 0.93 + 0.01 * s)):
            r = row(cell, s, 0.8)
            r["diagnostics"]["separation"] = {"heads": 1 if cell == "simclr-clip" else 3, "separation_mean": sep,
                                              "separation_min": sep - 0.01}
            rows.append(r)
    diffs = study.compare(rows, [study.ee("amcl-simclr", "simclr-clip")], claim.readouts)
    text = study.render_comparisons(diffs, unit="the figure's units", digits=4)
    assert "separation (AUC), mean over heads" in text and "+0.0300 / +0.0400 / +0.0500" in text


def test_sharpness_claims_pair_corruption_and_pgd_robustness_seed_by_seed():
    """Claims 1 and 4's readout "corruption and PGD robustness": the grid's robustness diagnostic, paired like
    the accuracies, PGD at the one radius fixed beforehand (2/255), the other radii left to the tables."""
    for key in ("ssa", "saf"):
        assert study.CLAIMS[key].diagnose == ("sharpness", "robustness")
        assert set(study.ROBUSTNESS) <= set(study.CLAIMS[key].readouts)
    rows = []
    for s in range(3):
        for cell, corrupted, pgd in (("simclr", 0.60, 0.30), ("sam-simclr", 0.62 + 0.01 * s, 0.25)):
            r = row(cell, s, 0.8)
            r["diagnostics"]["robustness"] = {"mean_corruption_top1": corrupted, "relative_mce_vs_simclr":
                                              1.0 if cell == "simclr" else 0.9,
                                              "pgd_top1": {"1/255": 0.5, "2/255": pgd, "4/255": 0.1}}
            rows.append(r)
    diffs = study.compare(rows, [study.ee("sam-simclr", "simclr")], study.ROBUSTNESS)
    text = study.render_comparisons(diffs, unit="the figure's units", digits=4)
    assert "corrupted top-1 (pts)" in text and "+2.0000 / +3.0000 / +4.0000" in text
    assert "relative mCE vs SimCLR" in text and "-0.1000 / -0.1000 / -0.1000" in text
    assert "PGD top-1 at 2/255 (pts)" in text and "-5.0000 / -5.0000 / -5.0000" in text
