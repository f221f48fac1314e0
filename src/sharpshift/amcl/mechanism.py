"""AMCL's mechanism check: per head, the 5/50/95% quantiles of the positives' and negatives' temperatures over
training, the share of recorded steps whose median positive temperature sits at a bound (within 1% of
tau_min or tau_max), where the temperature no longer adapts to the pair, and the temperatures' spread over
pairs at the end, without which the per-pair weights are uniform."""
from __future__ import annotations

import torch

from sharpshift import plugins
from sharpshift.mechanisms import Mechanism, values

QUANTILES = (0.05, 0.5, 0.95)
AT_BOUND = 0.5  # warn when more than half the recorded steps have a head at a bound
# warn when the temperatures' 5-95% spread over pairs is below this share of their median: 1/tau weights that
# differ by under ~10% between pairs are a uniform weighting in all but name (AMCL-Barlow's end at 1e-4)
SPREAD_MIN = 0.1


def tau_spread(summary: dict) -> float | None:
    """How much the last recorded temperatures differ between pairs: (q95 - q05) / q50, the mean over heads,
    the smaller of the positives' and the negatives' (both must adapt); None without the quantiles."""
    spreads = []
    for kind in ("tau_pos", "tau_neg"):
        q = [summary.get(f"{kind}_{name}_last") for name in ("q05", "q50", "q95")]
        if all(q):
            spreads.append(sum((hi - lo) / mid for lo, mid, hi in zip(*q)) / len(q[1]))
    return min(spreads) if spreads else None


def probe(method, ctx, out) -> dict | None:
    taus = out.extra.get("amcl_taus")
    if not taus:
        return None
    q = torch.tensor(QUANTILES)
    figures = {}
    for kind, tau in taus.items():  # (C, m) per kind
        per_head = torch.quantile(tau.float(), q, dim=1)  # (3, C)
        for name, row in zip(("q05", "q50", "q95"), per_head):
            figures[f"{kind}_{name}"] = row.tolist()
    a = method.cfg.amcl
    figures.update(tau_min=a.tau_min, tau_max=a.tau_max)
    return figures


def check(series: dict) -> tuple[dict, list[str]]:
    medians = values(series, "tau_pos_q50")  # per step: one value per head
    if not medians:
        return {}, []
    tau_min, tau_max = values(series, "tau_min")[-1], values(series, "tau_max")[-1]
    at_min = [any(abs(m - tau_min) <= 0.01 * tau_min for m in step) for step in medians]
    at_max = [any(abs(m - tau_max) <= 0.01 * tau_max for m in step) for step in medians]
    summary = {"steps_recorded": len(medians), "share_at_tau_min": sum(at_min) / len(medians),
               "share_at_tau_max": sum(at_max) / len(medians), "tau_pos_median_last": medians[-1]}
    for kind in ("tau_pos", "tau_neg"):
        for q in ("q05", "q50", "q95"):
            if values(series, f"{kind}_{q}"):
                summary[f"{kind}_{q}_last"] = values(series, f"{kind}_{q}")[-1]
    summary["tau_spread_last"] = tau_spread(summary)
    warnings = []
    if summary["tau_spread_last"] is not None and summary["tau_spread_last"] < SPREAD_MIN:
        warnings.append(f"AMCL temperatures are the same for every pair (5-95% spread {summary['tau_spread_last']:.1e} "
                        "of their median): the weights are uniform and the adaptive mechanism is off (with LARS, "
                        "give phi its own optimiser: amcl.phi_lr=1e-3)")
    for bound in ("tau_min", "tau_max"):
        share = summary[f"share_at_{bound}"]
        if share > AT_BOUND:
            warnings.append(f"AMCL temperatures are at {bound} on {share:.0%} of the recorded steps: the adaptive "
                            "mechanism is off (amcl.form=adaptive keeps them interior)")
    return summary, warnings


plugins.MECHANISMS["amcl"] = Mechanism(probe, check)
