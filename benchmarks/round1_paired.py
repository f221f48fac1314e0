"""Round 1's reduced-grid rows (protocol 1: no hold-out, per-seed 5,000-image test subsets, floors from a
stale cache), re-read with paired statistics: which of round 1's claims survive pairing by seed.

    .venv/bin/python benchmarks/round1_paired.py

The rows are kept in docs/grid/archive/reduced-protocol1; `sharpshift bench accuracy` refuses them (their
protocol is not the current one), so this script reads them directly. docs/results.md, "Round 1, paired"
quotes its output.
"""
from __future__ import annotations

import json
from pathlib import Path

from sharpshift.bench.grid import PAIRED_FIGURES
from sharpshift.bench.paired import Comparison, compare, render_comparisons

ROWS = Path("docs/grid/archive/reduced-protocol1")
AGAINST_BASE = [("amcl-simclr", "simclr"), ("amcl-moco", "moco"), ("amcl-barlow", "barlow"),
                ("amcl-simsiam", "simsiam"), ("dsa-simclr", "simclr"), ("dsa-byol", "byol"),
                ("ssa-clr", "simclr"), ("fourier-simclr", "simclr"), ("ssa-clr", "fourier-simclr"),
                ("saf-simclr", "simclr"), ("mesa-simclr", "simclr"), ("rsa-simclr", "simclr"), ("rsa-byol", "byol")]
EQUAL_COST = [("ssa-clr", "simclr-5ep")]  # simclr-5ep: 5/3 the epochs, about SSA-CLR's 1.94x step cost
ROBUSTNESS = [(m, "simclr") for m in ("moco", "byol", "barlow", "simsiam", "ssa-clr", "fourier-simclr")]


def main() -> None:
    rows = [json.loads(f.read_text()) for f in sorted(ROWS.glob("*/seed*.json"))]
    pairs = ([Comparison(a, b, "equal epochs") for a, b in AGAINST_BASE]
             + [Comparison(a, b, "about equal cost") for a, b in EQUAL_COST])
    print("## accuracy\n\n" + render_comparisons(compare(rows, pairs), unit="points of top-1 on the seed's "
                                                   "5,000-image test subset"))
    print("## sharpness\n\n" + render_comparisons(compare(rows, pairs, PAIRED_FIGURES["sharpness"]),
                                                  unit="the figure's units", digits=4))
    print("## discriminability\n\n" + render_comparisons(compare(rows, pairs, PAIRED_FIGURES["discriminability"]),
                                                         unit="the figure's units", digits=4))
    robust = [Comparison(a, b, "equal epochs") for a, b in ROBUSTNESS]
    print("## robustness\n\n" + render_comparisons(compare(rows, robust, PAIRED_FIGURES["robustness"]),
                                                   unit="the figure's units", digits=4))


if __name__ == "__main__":
    main()
