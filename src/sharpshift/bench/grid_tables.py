"""The grid's tables and figures: mean and sample std per cell, the diagnostics' tables, the bar plot, and
the marked sections of a Markdown file they are written into."""
from __future__ import annotations

import statistics
from pathlib import Path

NOT_FIGURES = ("seconds", "test_size", "val_size", "train_size", "images")  # bookkeeping in the diagnostics' JSON
COLUMNS = (("linear_top1", "linear top-1 (%)"), ("knn_top1", "kNN top-1 (%)"),
           ("val_linear_top1", "val linear (%)"), ("val_knn_top1", "val kNN (%)"))


def summarise(rows: list[dict]) -> list[dict]:
    """Mean and sample std per cell of each COLUMNS figure the rows have, in first-seen order."""
    cells: dict[str, list[dict]] = {}
    for r in rows:
        cells.setdefault(r["cell"], []).append(r)
    out = []
    for name, rs in cells.items():
        s = {"cell": name, "n": len(rs), "train_seconds": statistics.mean(r.get("train_seconds", 0.0) for r in rs)}
        for key, _ in COLUMNS:
            vals = [r[key] for r in rs if r.get(key) is not None]
            if vals:
                short = key.removesuffix("_top1")
                s[f"{short}_mean"] = statistics.mean(vals)
                s[f"{short}_std"] = statistics.stdev(vals) if len(vals) > 1 else 0.0
        out.append(s)
    return out


def render_table(summary: list[dict]) -> str:
    """Test figures (the final numbers) and validation figures (what choices read), mean ± std over seeds."""
    lines = ["| method | seeds | " + " | ".join(h for _, h in COLUMNS) + " | train time (s) |",
             "|---" * (len(COLUMNS) + 3) + "|"]
    for s in summary:
        cols = []
        for key, _ in COLUMNS:
            short = key.removesuffix("_top1")
            if f"{short}_mean" not in s:
                cols.append("-")
            elif s["n"] > 1:
                cols.append(f"{100 * s[f'{short}_mean']:.2f} ± {100 * s[f'{short}_std']:.2f}")
            else:
                cols.append(f"{100 * s[f'{short}_mean']:.2f}")
        lines.append(f"| {s['cell']} | {s['n']} | " + " | ".join(cols) + f" | {s['train_seconds']:.0f} |")
    return "\n".join(lines) + "\n"


def replace_section(doc: Path, marker: str, body: str) -> None:
    """Rewrite the text between <!-- marker:start --> and <!-- marker:end --> (appended if absent)."""
    start, end = f"<!-- {marker}:start -->", f"<!-- {marker}:end -->"
    text = doc.read_text() if doc.is_file() else ""
    block = f"{start}\n{body}{end}"
    if start in text and end in text:
        text = text[:text.index(start)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(text)


def _mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.4g}"
    return f"{statistics.mean(values):.4g} ± {statistics.stdev(values):.2g}"


def render_diagnostics(rows: list[dict], names: list[str]) -> str:
    """One table per diagnostic in `names` that the rows have: mean ± sample std over seeds of each numeric
    figure (nested dicts, e.g. sam_sharpness per rho, become one column each)."""
    out = []
    for name in names:
        per_cell: dict[str, list[dict]] = {}
        for r in rows:
            if name in r.get("diagnostics", {}):
                per_cell.setdefault(r["cell"], []).append(_flatten(r["diagnostics"][name]))
        if not per_cell:
            continue
        keys = list(dict.fromkeys(k for fs in per_cell.values() for f in fs for k in f))
        out += [f"\n**{name}** (mean ± std over seeds)\n", "| cell | seeds | " + " | ".join(keys) + " |",
                "|---" * (len(keys) + 2) + "|"]
        for cell, fs in per_cell.items():
            vals = [_mean_std([f[k] for f in fs if k in f]) if any(k in f for f in fs) else "-" for k in keys]
            out.append(f"| {cell} | {len(fs)} | " + " | ".join(vals) + " |")
    return "\n".join(out) + ("\n" if out else "")


def _flatten(d: dict, prefix: str = "") -> dict:
    flat = {}
    for k, v in d.items():
        if isinstance(v, dict):
            flat.update(_flatten(v, f"{prefix}{k} "))
        elif isinstance(v, (int, float)) and not isinstance(v, bool) and k not in NOT_FIGURES:
            flat[f"{prefix}{k}"] = float(v)
    return flat


def render_plot(summary: list[dict], path: Path) -> None:
    """Linear and kNN top-1 per cell, mean with the sample std as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [s["cell"] for s in summary]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.55 * len(names) + 2), 4))
    x = range(len(names))
    for shift, key, label in ((-0.2, "linear", "linear probe"), (0.2, "knn", "kNN")):
        ax.bar([i + shift for i in x], [100 * s[f"{key}_mean"] for s in summary], 0.4, label=label,
               yerr=[100 * s[f"{key}_std"] for s in summary], capsize=2)
    low = min(100 * min(s["linear_mean"], s["knn_mean"]) for s in summary)
    ax.set_ylim(max(0.0, low - 5), 100)
    ax.set_xticks(list(x), names, rotation=45, ha="right")
    ax.set_ylabel("top-1 (%)")
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


