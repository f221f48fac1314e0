"""`sharpshift bench study`: the five papers' claims, each tested by named grid cells at one budget.

A claim names its arms (grid cells: its rows are the grid's rows, docs/grid/<budget>/, so `--collect-only`
rebuilds every table on a fresh machine), the paired comparisons that test it (the first one or two are the
headline: equal epochs, then equal cost), the check that its mechanism was on in these very runs, and the
readouts its section shows. The verdict follows from the numbers by one rule (`outcome`); the docs add the
reading around the generated sections.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from sharpshift.amcl.mechanism import SPREAD_MIN, tau_spread
from sharpshift.bench import grid_tables
from sharpshift.bench.curves import render_curves
from sharpshift.bench.grid import (PAIRED_FIGURES, cell_named, kept_rows, parse_seeds, recorded_row, recorded_seeds,
                                   refresh_headlines, run_cell, same_spec)
from sharpshift.bench.paired import ACCURACY, KEPT, Comparison, Interval, Metric, Partners, by_seed, compare, \
    paired_interval, render_comparisons
from sharpshift.bench.protocol import budget_overrides, check_row, fingerprint
from sharpshift.errors import UserError

HEADLINE = Metric("linear", ("linear_top1",), 100.0)  # the papers report linear-probe top-1 (test split)
# the encoder's generalisation gap: kNN top-1 of its own pretraining images less that of the hold-out, both
# against the probe images it never saw (evaluation.run.pretraining_gap; only where it pretrained on a subset)
GAP = Metric("encoder gap (pretrain - val kNN)", ("encoder_gap",), 100.0)
PROBE_GAP = Metric("probe gap (train - val)", ("probe_gap",), 100.0)
TRACE = PAIRED_FIGURES["sharpness"][0]
TOP_EIG = PAIRED_FIGURES["sharpness"][1]
# claims 1 and 4's robustness readouts: corrupted top-1, relative mCE against the same seed's SimCLR, and PGD
# top-1 at one radius, 2/255, fixed before the rows were seen (the tables show all four radii)
ROBUSTNESS = (*PAIRED_FIGURES["robustness"],
              Metric("PGD top-1 at 2/255 (pts)", ("diagnostics", "robustness", "pgd_top1", "2/255"), 100.0))


@dataclass(frozen=True)
class Check:
    """The mechanism is on when a - b (per seed, paired) lies on the stated side of 0 with 95% confidence.
    b is another cell's figure (b_cell, b_metric), the same row's (b_metric only) or a constant (value)."""

    label: str
    cell: str
    metric: Metric
    side: str  # "lower" or "higher"
    b_cell: str | None = None
    b_metric: Metric | None = None
    value: float = 0.0

    def interval(self, rows: list[dict]) -> tuple[list[int], Interval] | None:
        a, partners = by_seed(rows).get(self.cell, {}), Partners(rows)
        diffs, seeds = [], []
        for seed in sorted(a):
            x = self.metric.of(a[seed])
            b = partners.of(self.b_cell or self.cell, seed, a[seed])
            y = self.value if self.b_metric is None else (self.b_metric.of(b) if b is not None else None)
            if x is not None and y is not None:
                diffs.append(x - y)
                seeds.append(seed)
        return (seeds, paired_interval(diffs)) if diffs else None


@dataclass(frozen=True)
class GapClosed:
    """The share of the base-to-reference gap an arm closes, (arm - base) / (reference - base), seed by seed: 0 is
    the base's accuracy, 1 the reference's (the supervised one). Its interval is Student's t over the per-seed
    shares; a seed whose reference does not beat its base (no gap to close) is left out and said so."""

    base: str
    reference: str
    arms: tuple[str, ...]

    def shares(self, rows: list[dict], arm: str, metric: Metric) -> tuple[dict[int, float], list[int]]:
        """{seed: share} over the seeds with all three rows, and the seeds left out for want of a gap."""
        partners = Partners(rows)
        figures = {s: (metric.of(r), *(metric.of(b) if b else None for b in
                                       (partners.of(self.base, s, r), partners.of(self.reference, s, r))))
                   for s, r in sorted(by_seed(rows).get(arm, {}).items())}
        seeds = [s for s, f in figures.items() if None not in f]
        gap = {s: figures[s][2] - figures[s][1] for s in seeds}
        return ({s: (figures[s][0] - figures[s][1]) / gap[s] for s in seeds if gap[s] > 0},
                [s for s in seeds if gap[s] <= 0])

    def table(self, rows: list[dict], metrics: tuple[Metric, ...] = ACCURACY) -> str:
        lines = []
        for arm in self.arms:
            cols, seeds = [], set()
            for m in metrics:
                shares, left_out = self.shares(rows, arm, m)
                if len(shares) < 2:
                    break
                seeds |= set(shares)
                cols += [" / ".join(f"{v:+.2f}" for v in shares.values()), _ci(paired_interval(list(shares.values())))
                         + (f" (seed {','.join(map(str, left_out))} left out: no gap)" if left_out else "")]
            if len(cols) == 2 * len(metrics):
                lines.append(f"| {arm} | {','.join(map(str, sorted(seeds)))} | " + " | ".join(cols) + " |")
        if not lines:
            return ""
        head = " | ".join(f"{m.label}: per seed | {m.label}: mean [95% CI]" for m in metrics)
        return (f"\n**Share of the {self.base}-to-{self.reference} gap closed**, (arm - {self.base}) / "
                f"({self.reference} - {self.base}) on test top-1, seed by seed (0: the base's accuracy, 1: the "
                "reference's); 95% Student-t interval over the seeds' shares, not adjusted for the number of "
                "arms.\n\n| arm | seeds | " + head + " |\n" + "|---" * (2 + 2 * len(metrics)) + "|\n"
                + "\n".join(lines) + "\n")


@dataclass(frozen=True)
class Claim:
    key: str  # results section "study-KEY"
    title: str
    paper: str  # the claim in one sentence, with the paper's own number
    budget: str
    arms: tuple[str, ...]
    headline: tuple[Comparison, ...]  # equal epochs, then (where the add-on costs more) equal cost
    more: tuple[Comparison, ...] = ()  # the other comparisons of the section
    check: Check | None = None  # None: on by construction (said in `by_construction`)
    by_construction: str = ""
    diagnose: tuple[str, ...] = ()
    readouts: tuple[Metric, ...] = ()  # paired over the section's comparisons, besides the accuracies
    mechanisms: tuple[str, ...] = ()  # add-ons whose mechanisms.json summaries the section tabulates
    precondition: Check | None = None  # what the setting must show for the claim to be testable at all
    gap_closed: GapClosed | None = None  # the share of the gap to a reference that the arms close
    more_checks: tuple[Check, ...] = ()  # further conditions the mechanism must meet, all of them, to be on

    @property
    def checks(self) -> tuple[Check, ...]:
        return () if self.check is None else (self.check, *self.more_checks)


def ee(a: str, b: str) -> Comparison:
    return Comparison(a, b, "equal epochs")


def ec(a: str, b: str) -> Comparison:
    return Comparison(a, b, f"equal cost (x{b.rsplit('@', 1)[1][:-1]})")


def tau_differs(cell: str) -> Check:
    """AMCL's temperatures must differ between pairs, or its per-pair weights are uniform (amcl.mechanism)."""
    return Check(f"the temperatures differ between pairs: 5-95% spread over the median above {SPREAD_MIN}", cell,
                 Metric("temperature spread", ("amcl_tau_spread",)), "higher", value=SPREAD_MIN)


SAM_FLATTENS = Check("SAM lowers the Hessian trace on the reference views (sam-simclr - simclr)", "sam-simclr", TRACE,
                     "lower", b_cell="simclr", b_metric=TRACE)
SSA_ARMS = ("simclr", "sam-simclr", "fourier-simclr", "ssa-clr", "simclr@1.9x")
SSA_MORE = (ee("sam-simclr", "simclr"), ec("sam-simclr", "simclr@1.9x"), ee("fourier-simclr", "simclr"),
            ee("ssa-clr", "fourier-simclr"), ee("ssa-clr", "sam-simclr"))
SSA_PAPER = ("SSA-CLR: minimising the feature extractor's sharpness (SAM) plus Fourier views \"remarkably boost[s] the "
             "performance\" and gives more robust features than the baselines (the paper's tables are not public: "
             "no number to set ours against)")

# AMCL's measured cost at the long budget (1.2-1.7x SimCLR-clip's train time, median x1.59) is above the x1.1 its
# equal-cost arm assumes: SimCLR trained 1.5x longer (unclipped: the clip alone changes nothing shown), and the
# clipped base at the measured x1.6
AMCL_MEASURED_COST = {"simclr": ("simclr@1.5x", "simclr-clip@1.6x")}
# an AMCL arm compared with the shipped one: Barlow Twins' phi in the encoder's LARS, whose weight decay erases phi
# (every temperature equal), which is why amcl-barlow gives phi its own Adam
AMCL_VARIANTS = {"barlow": "amcl-barlow-phi-lars"}
# controls for what an arm's gain may come from besides AMCL: the official SimSiam losses sit at tau_min = 1e-5,
# where the loss is scaled by 1e5, the clip binds on every step and SGD takes normalised steps; the same steps
# with one head and no temperature
AMCL_CONTROLS = {"simsiam": "simsiam-unit-steps"}


# the paper's explanation of AMCL's gain: several heads separate positive from negative pairs better than one
SEPARATION = PAIRED_FIGURES["separation"]


def amcl_claim(m: str, name: str) -> Claim:
    """Base, base + the clip, the official losses, the adaptive form (and a variant of it), the clipped base at
    x1.1 (and at AMCL's measured cost where there is one), and a control for the official form's steps."""
    shipped = f"amcl-{m}"
    variant = (AMCL_VARIANTS[m],) if m in AMCL_VARIANTS else ()
    control = (AMCL_CONTROLS[m],) if m in AMCL_CONTROLS else ()
    return Claim(
        f"amcl-{m}", f"AMCL on {name}", "AMCL: several projection heads with per-pair adaptive temperatures give "
        "consistent gains for SimCLR, MoCo and Barlow Twins (the paper's tables are not public)", "long",
        (m, f"{m}-clip", f"amcl-{m}-official", shipped, *variant, f"{m}-clip@1.1x", *AMCL_MEASURED_COST.get(m, ()),
         *control),
        (ee(shipped, f"{m}-clip"), ec(shipped, f"{m}-clip@1.1x")),
        (ee(f"amcl-{m}-official", f"{m}-clip"), ee(shipped, f"amcl-{m}-official"), ee(f"{m}-clip", m),
         *[ee(shipped, v) for v in variant], *[ec(shipped, b) for b in AMCL_MEASURED_COST.get(m, ())],
         *[c for b in control for c in (ee(f"amcl-{m}-official", b), ee(b, m))]),
        Check("the adaptive temperatures stay interior: share at tau_min less 0.5", shipped,
              Metric("share at tau_min", ("mechanisms", "amcl", "share_at_tau_min")), "lower", value=0.5),
        diagnose=("separation",), readouts=SEPARATION, mechanisms=("amcl",), more_checks=(tau_differs(shipped),))


CLAIMS = {c.key: c for c in [
    Claim("ssa", "SSA-CLR, sharpness part (all 54k images)", SSA_PAPER, "long", SSA_ARMS,
          (ee("ssa-clr", "simclr"), ec("ssa-clr", "simclr@1.9x")), SSA_MORE, SAM_FLATTENS,
          diagnose=("sharpness", "robustness"), readouts=(PROBE_GAP, TRACE, TOP_EIG, *ROBUSTNESS),
          mechanisms=("sam",)),
    Claim("ssa-small", "SSA-CLR, sharpness part, small data (3,000 images, 40 epochs)", SSA_PAPER, "small", SSA_ARMS,
          (ee("ssa-clr", "simclr"), ec("ssa-clr", "simclr@1.9x")), SSA_MORE, SAM_FLATTENS,
          diagnose=("sharpness",), readouts=(GAP, TRACE, TOP_EIG), mechanisms=("sam",),
          precondition=Check("a generalisation gap exists: SimCLR's encoder gap above 0", "simclr", GAP, "higher")),
    Claim("shift", "SSA-CLR, shift part: Fourier views", "SSA-CLR: a Fourier-based augmentation \"relieve[s] the data "
          "shift\" between ideal and practical positive pairs (no number published)", "long",
          ("simclr", "fourier-simclr"), (ee("fourier-simclr", "simclr"),),
          by_construction="the Fourier transform is applied to half the views (p 0.5); whether it moves pairs toward "
          "label-preserving ones is the views diagnostic below", readouts=(PROBE_GAP,)),
    Claim("rsa", "RSA: aggressive pairs weighted early, less later", "RSA: with the same aggressive views, weighting "
          "the aggressive pairs by a decaying beta beats a fixed beta, which beats the plain aggressive baseline "
          "(ResNet-18, CIFAR-10, 200 epochs: 92.2 decay / 91.5 fixed / 90.3 BYOL aggr-aggr)", "long",
          ("byol", "byol-aa", "rsa-byol-constant", "rsa-byol"),
          (ee("rsa-byol", "byol-aa"),), (ee("rsa-byol-constant", "byol-aa"), ee("rsa-byol", "rsa-byol-constant"),
                                         ee("byol-aa", "byol")),
          by_construction="beta follows its schedule by construction (cosine 0.3 -> 0, or 0.3 throughout)",
          readouts=(PROBE_GAP,)),
    Claim("saf", "SAF and MESA: sharpness-aware training at almost no cost", "SAF/MESA (supervised): SAM's accuracy "
          "at SGD's cost (ResNet-18, CIFAR-100: SGD 78.32, SAM 80.18, SAF 80.06 at 97.6% of SGD's speed, MESA 79.79 "
          "at 84.5%); for SSL the transfer is ours", "long",
          ("simclr", "saf-simclr-e2", "mesa-simclr", "sam-simclr", "simclr@1.3x", "simclr@1.9x"),
          (ee("saf-simclr-e2", "simclr"),),
          (ee("mesa-simclr", "simclr"), ec("mesa-simclr", "simclr@1.3x"), ee("sam-simclr", "simclr"),
           ec("sam-simclr", "simclr@1.9x"), ee("saf-simclr-e2", "sam-simclr")),
          Check("SAF lowers the Hessian trace on the reference views (saf-simclr-e2 - simclr)", "saf-simclr-e2",
                TRACE, "lower", b_cell="simclr", b_metric=TRACE),
          diagnose=("sharpness", "robustness"), readouts=(PROBE_GAP, TRACE, TOP_EIG, *ROBUSTNESS),
          mechanisms=("saf", "mesa")),
    *[amcl_claim(m, name) for m, name in (("simclr", "SimCLR"), ("moco", "MoCo v2"), ("barlow", "Barlow Twins"),
                                          ("simsiam", "SimSiam"))],
    *[Claim(f"dsa-{m}", f"DSA on {name}", "DSA: learned relations that aggregate similar samples and separate "
            "dissimilar ones relieve the crowding problem (the paper's tables are not public)", "long",
            (m, f"dsa-{m}-uniform", f"dsa-{m}-official", f"dsa-{m}", f"{m}@1.5x", "supervised"),
            (ee(f"dsa-{m}", m), ec(f"dsa-{m}", f"{m}@1.5x")),
            (ee(f"dsa-{m}", f"dsa-{m}-uniform"), ee(f"dsa-{m}-official", m), ee(f"dsa-{m}-uniform", m)),
            Check("the relations put more of their mass on same-class pairs than the base rate", f"dsa-{m}",
                  Metric("same-class mass", ("mechanisms", "dsa", "same_class_mass")), "higher",
                  b_metric=Metric("base rate", ("mechanisms", "dsa", "same_class_base_rate"))),
            diagnose=("discriminability",), readouts=PAIRED_FIGURES["discriminability"], mechanisms=("dsa",),
            gap_closed=GapClosed(m, "supervised", (f"dsa-{m}", f"dsa-{m}-official", f"dsa-{m}-uniform")))
      for m, name in (("simclr", "SimCLR"), ("byol", "BYOL"))],
    # do the add-ons add up? AMCL (the one that passed) with the cheapest flattening add-on, against each alone
    Claim("composition", "Composition: AMCL + SAF on SimCLR", "None: the papers make no claim about combining their "
          "add-ons; the issue asks whether the working ones add up", "long",
          ("simclr-clip", "amcl-simclr", "saf-simclr-e2-clip", "amcl-saf-simclr", "simclr-clip@1.1x"),
          (ee("amcl-saf-simclr", "amcl-simclr"), ec("amcl-saf-simclr", "simclr-clip@1.1x")),
          (ee("amcl-saf-simclr", "saf-simclr-e2-clip"), ee("amcl-simclr", "simclr-clip"),
           ee("saf-simclr-e2-clip", "simclr-clip"), ee("amcl-saf-simclr", "simclr-clip")),
          Check("the adaptive temperatures stay interior with SAF on: share at tau_min less 0.5", "amcl-saf-simclr",
                Metric("share at tau_min", ("mechanisms", "amcl", "share_at_tau_min")), "lower", value=0.5),
          diagnose=("separation",), readouts=SEPARATION, mechanisms=("amcl", "saf"),
          more_checks=(tau_differs("amcl-saf-simclr"),)),
]}


def with_derived(row: dict) -> dict:
    """The figures a study derives from a row: the probe's and the encoder's generalisation gaps."""
    out = dict(row)
    if row.get("linear_train_top1") is not None and row.get("val_linear_top1") is not None:
        out["probe_gap"] = row["linear_train_top1"] - row["val_linear_top1"]
    if row.get("pretrain_knn_top1") is not None and row.get("heldout_knn_top1") is not None:
        out["encoder_gap"] = row["pretrain_knn_top1"] - row["heldout_knn_top1"]
    if "amcl" in row.get("mechanisms", {}):  # from the recorded quantiles, so that earlier rows have it too
        out["amcl_tau_spread"] = tau_spread(row["mechanisms"]["amcl"])
    return out


@dataclass
class Outcome:
    mechanism: str  # "on", "not shown", "not run", or "by construction"
    mechanism_text: str
    effect: str
    verdict: str
    cost: str = "none"  # the equal-cost arm's assumed ratio and the measured one ("x1.1 assumed, x1.59 measured")


# an equal-cost arm is taken as matching its add-on's cost while the median measured train-time ratio exceeds
# the assumed one by at most this: `bench speed` rounds to 0.1 and a 2-core machine's wall clock varies ~10%
COST_SLACK = 0.2


def measured_costs(rows: list[dict], c: Comparison) -> list[float]:
    """An equal-cost comparison's add-on train time over its base's, seed by seed (each seed paired with the
    base's row of its own machine type); empty for an equal-epochs comparison."""
    base, _, _ = c.b.rpartition("@")
    if not base:
        return []
    cells, partners = by_seed(rows), Partners(rows)
    return [r["train_seconds"] / b["train_seconds"] for s, r in sorted(cells.get(c.a, {}).items())
            if r.get("train_seconds") and (b := partners.of(base, s, r)) is not None and b.get("train_seconds")]


def _assumed_cost(c: Comparison) -> float:
    return float(c.b.rsplit("@", 1)[1][:-1])


def _ci(iv: Interval, digits: int = 2) -> str:
    if len(iv.diffs) < 2:
        return f"{iv.mean:+.{digits}f} (one seed)"
    return f"{iv.mean:+.{digits}f} [{iv.low:+.{digits}f}, {iv.high:+.{digits}f}]"


def outcome(claim: Claim, rows: list[dict]) -> Outcome:
    """Mechanism on?, the headline effect and the verdict, by one rule: supported when the mechanism was on and
    the headline's interval on test linear top-1 lies above 0 at equal epochs and, where the claim has an
    equal-cost arm, at equal cost too; not supported when an interval does not; not run when rows are missing.
    A support whose equal-cost arm assumes less than the measured cost (beyond COST_SLACK) says so."""
    if claim.check is None:
        mechanism, text = "by construction", claim.by_construction
    else:
        states, texts = [], []
        for check in claim.checks:
            found = check.interval(rows)
            if found is None:
                states.append("not run")
                texts.append(check.label)
            else:
                seeds, iv = found
                states.append("on" if iv.verdict == check.side else "not shown")
                texts.append(f"{check.label}: {_ci(iv, 4)} over seeds {','.join(map(str, seeds))}")
        mechanism = next((s for s in ("not shown", "not run") if s in states), "on")  # one not shown decides
        text = "; ".join(texts)
    results = compare(rows, list(claim.headline), (HEADLINE,))
    if len(results) < len(claim.headline) or any(len(s) < 2 for _, s, _ in results):
        return Outcome(mechanism, text, "not run (yet)", "not run (yet)")
    effect = "; ".join(f"{c.kind}: {_ci(iv['linear'])}" for c, _, iv in results)
    verdicts = [iv["linear"].verdict for _, _, iv in results]
    costs = [(c, statistics.median(m)) for c, _, _ in results if (m := measured_costs(rows, c))]
    cost = "; ".join(f"x{_assumed_cost(c):.1f} assumed, x{m:.2f} measured" for c, m in costs) or "none"
    underpriced = [(c, m) for c, m in costs if m > _assumed_cost(c) + COST_SLACK]
    found = claim.precondition.interval(rows) if claim.precondition else None
    if claim.precondition and (found is None or found[1].verdict != claim.precondition.side):
        verdict = f"cannot be tested at our scale: not shown that {claim.precondition.label.split(':')[0]}"
        text += f"; precondition, {claim.precondition.label}: " + (_ci(found[1]) if found else "no rows")
    elif mechanism == "not shown":
        verdict = "cannot be tested at our scale: the mechanism was not shown on"
    elif mechanism == "not run":
        verdict = "not run (yet): the mechanism check's rows are missing"
    elif all(v == "higher" for v in verdicts) and underpriced:
        c, m = underpriced[0]
        verdict = (f"supported at equal epochs and at the assumed cost x{_assumed_cost(c):.1f}, which is below the "
                   f"measured x{m:.2f}")
    elif all(v == "higher" for v in verdicts):
        verdict = "supported at our scale"
    elif verdicts[0] == "higher":
        verdict = "supported at equal epochs, not at equal cost"
    elif "lower" in verdicts:
        verdict = "not supported at our scale (lower)"
    else:
        verdict = "not supported at our scale"
    return Outcome(mechanism, text, effect, verdict, cost)


def study_rows(claim: Claim, seeds: list[int], root: Path, record: Path, collect_only: bool, extra: list[str],
               log: Callable[[str], None]) -> tuple[list[dict], list[str]]:
    overrides = budget_overrides(claim.budget)
    expected = fingerprint([*overrides, *extra])
    rows, missing = [], []
    for arm in claim.arms:
        cell = cell_named(arm)
        # seeds beyond those asked for are read too where rows are recorded (a claim run with more seeds than
        # the others keeps them in every rebuild, --collect-only --claims all included)
        for seed in sorted({*seeds, *recorded_seeds(arm, record / claim.budget)}):
            if collect_only or seed not in seeds:
                row = recorded_row(arm, seed, record / claim.budget)
                if row is None:
                    missing.append(f"{arm} seed {seed}")
                    continue
                check_row(row, expected, record / claim.budget / arm / f"seed{seed}.json")
                if not same_spec(row, cell):
                    raise UserError(f"{arm} seed {seed}: recorded under another cell definition; run "
                                    f"`sharpshift bench study --claims {claim.key}` to make it again")
                row = refresh_headlines(row, root / claim.budget)
            else:
                row = run_cell(cell, seed, overrides, root / claim.budget, extra, record=record / claim.budget,
                               diagnostics=list(claim.diagnose), log=log)
            rows.append(with_derived(row))
            for other in kept_rows(arm, seed, record / claim.budget):  # the cell's rows of other machine types
                if other.get("protocol") == row["protocol"] and other.get("precision") == row.get("precision") \
                        and same_spec(other, cell):  # one kept from another protocol or definition pairs nothing
                    rows.append(with_derived({**other, KEPT: True}))
    return rows, missing


def _mechanism_table(rows: list[dict], addons: tuple[str, ...]) -> str:
    """Each add-on's mechanism summary, mean ± std over seeds (per-head lists as their mean over heads)."""
    flat = []
    for r in rows:
        figures = {a: {k: (statistics.mean(v) if isinstance(v, list) and v else v) for k, v in s.items()}
                   for a, s in r.get("mechanisms", {}).items() if a in addons}
        flat.append({**r, "diagnostics": {f"mechanisms: {a}": s for a, s in figures.items()}})
    return grid_tables.render_diagnostics(flat, [f"mechanisms: {a}" for a in addons])


def machine_note(rows: list[dict], pairs: list[Comparison]) -> str:
    """Which machine type made each arm's rows (and the rows kept from other types), and the comparisons that
    still pair rows of two types: an fp32 row repeats bit for bit on its type, not across types, so such a
    pair's difference carries the machines' variation too."""
    cells, partners = by_seed(rows), Partners(rows)
    kept = {}
    for r in rows:
        if r.get(KEPT):
            kept.setdefault(r["cell"], set()).add(r.get("machine"))
    arms = "; ".join(f"{arm}: {' and '.join(sorted({r.get('machine') or 'not recorded' for r in seeds.values()}))}"
                     + (f" (kept for pairing: {' and '.join(sorted(kept[arm]))})" if arm in kept else "")
                     for arm, seeds in cells.items())
    mixed = []
    for c in pairs:
        seeds = [s for s, r in sorted(cells.get(c.a, {}).items()) if (b := partners.of(c.b, s, r)) is not None
                 and None not in (r.get("machine"), b.get("machine")) and r["machine"] != b["machine"]]
        if seeds:
            mixed.append(f"{c.a} - {c.b} (seed {','.join(map(str, seeds))})")
    return (f"\n**Machine types** (an fp32 row repeats bit for bit on its type, not across types; each comparison "
            f"pairs rows of one type where the base's row of that type is kept): {arms}. Comparisons that pair rows "
            f"of two types: {', '.join(mixed) or 'none'}.\n")


def cost_note(rows: list[dict], pairs: list[Comparison]) -> str:
    """For each equal-cost comparison, the add-on's train time over its base's, seed by seed, beside the ratio
    its equal-cost arm assumes (`bench speed`'s step costs, taken at another width and batch)."""
    parts = []
    for c in pairs:
        if ratios := measured_costs(rows, c):
            base, _, assumed = c.b.rpartition("@")
            parts.append(f"{c.a} over {base}: {' / '.join(f'{x:.2f}' for x in ratios)}x ({c.b} assumes {assumed})")
    return ("\n**Measured cost** (train time over the base's, per seed; wall clock, so a run that shared the CPU "
            "with another job reads slow): " + "; ".join(parts) + ".\n") if parts else ""


def render_claim(claim: Claim, rows: list[dict], missing: list[str], result: Outcome, doc: Path, command: str,
                 protocol: str) -> str:
    own = [r for r in rows if not r.get(KEPT)]  # the arms' own rows; the kept ones only pair
    summary = grid_tables.summarise(own)
    plot = doc.parent / "results" / f"study-{claim.key}.png"
    curves = doc.parent / "results" / f"study-{claim.key}_curves.png"
    if summary:
        grid_tables.render_plot(summary, plot)
    has_curves = render_curves(own, curves)
    pairs = [*claim.headline, *claim.more]
    paired = render_comparisons(compare(rows, pairs, ACCURACY))
    readouts = render_comparisons(compare(rows, pairs, claim.readouts), unit="the figure's units", digits=4) \
        if claim.readouts else ""
    out = [f"**The paper's claim.** {claim.paper}.\n",
           f"**Arms** ({claim.budget} budget): {', '.join(claim.arms)}. Command: `{command}` (protocol {protocol}).\n",
           "\n" + grid_tables.render_table(summary) if summary else "",
           f"![linear and kNN top-1 per arm](results/{plot.name})\n" if summary else "",
           f"\nNot run (yet): {', '.join(missing)}.\n" if missing else "",
           f"\n**Comparisons, paired**: {paired}" if paired else "",
           machine_note(rows, pairs) if rows else "",
           cost_note(rows, pairs),
           f"\n**Readouts, paired**: {readouts}" if readouts else "",
           claim.gap_closed.table(rows) if claim.gap_closed else "",
           f"\n![kNN on the validation hold-out per epoch](results/{curves.name})\n" if has_curves else "",
           grid_tables.render_diagnostics(own, list(claim.diagnose)) if claim.diagnose else "",
           _mechanism_table(own, claim.mechanisms) if claim.mechanisms else "",
           f"\n**Mechanism on?** {result.mechanism}: {result.mechanism_text}.\n",
           f"\n**Headline** (test linear top-1, points): {result.effect}. **Verdict: {result.verdict}.**\n"]
    return "".join(out)


def render_summary(claims: list[Claim], outcomes: dict[str, Outcome]) -> str:
    lines = ["| claim | budget | mechanism on? | effect on test linear top-1, points (paired 95% CI) | equal-cost arm "
             "(median train-time ratio) | verdict |", "|---|---|---|---|---|---|"]
    for c in claims:
        o = outcomes[c.key]
        lines.append(f"| {c.title} | {c.budget} | {o.mechanism} | {o.effect} | {o.cost} | {o.verdict} |")
    return "\n".join(lines) + "\n"


def run_study(keys: str, seeds: str, root: Path, doc: Path, record: Path, collect_only: bool, data_dir: str | None,
              command: str, log: Callable[[str], None] = print) -> dict[str, Outcome]:
    chosen = list(CLAIMS) if keys == "all" else [k for k in keys.split(",") if k]
    unknown = [k for k in chosen if k not in CLAIMS]
    if unknown:
        raise UserError(f"unknown claim(s) {', '.join(unknown)}; use all or some of {', '.join(CLAIMS)}")
    seed_list = parse_seeds(seeds)
    extra = [f"data.data_dir={data_dir}"] if data_dir else []
    outcomes = {}
    for key in chosen:
        claim = CLAIMS[key]
        rows, missing = study_rows(claim, seed_list, root, record, collect_only, extra, log)
        outcomes[key] = outcome(claim, rows)
        protocol = fingerprint([*budget_overrides(claim.budget), *extra])
        grid_tables.replace_section(doc, f"study-{key}", render_claim(
            claim, rows, missing, outcomes[key], doc, f"{command} --claims {key}", protocol))
        log(f"{key}: mechanism {outcomes[key].mechanism}; {outcomes[key].effect}; {outcomes[key].verdict}")
    if keys == "all":
        table = render_summary(list(CLAIMS.values()), outcomes)
        grid_tables.replace_section(doc, "study-summary", f"`{command} --claims all`\n\n" + table)
        readme = doc.resolve().parent.parent / "README.md"
        if readme.is_file() and "<!-- readme-study:start -->" in readme.read_text():
            grid_tables.replace_section(readme, "readme-study", table)
    return outcomes
