"""Side-by-side sections for several runs: config differences, results, overlaid curves, robustness,
embeddings and the scalar values of every diagnostic any of them has."""
from __future__ import annotations

from sharpshift.errors import UserError
from sharpshift.report import plots
from sharpshift.report.document import Image, Section, Table, Text
from sharpshift.report.run_data import RunData, flatten_json
from sharpshift.report.sections import RunAssets, _try, embedding_image, metric_panels


def unique_labels(runs: list[RunData]) -> None:
    """Folder names, widened with the parent folder where two runs share a name."""
    names = [r.path.name for r in runs]
    for r in runs:
        r.label = r.path.name if names.count(r.path.name) == 1 else f"{r.path.parent.name}/{r.path.name}"


def runs_section(runs: list[RunData]) -> Section:
    rows = []
    for r in runs:
        c = r.config
        rows.append([r.label, c.method.name if c else "?", c.seed if c else "?", c.data.dataset if c else "?",
                     r.eval.get("linear_top1"), r.eval.get("knn_top1"), str(r.path)])
    return Section("runs", "Runs", [Table(["run", "method", "seed", "dataset", "linear top-1", "kNN top-1", "folder"],
                                          rows)])


def config_diff_section(runs: list[RunData]) -> Section:
    flats = [r.flat_config() for r in runs]
    keys = sorted({k for f in flats for k in f} - {"name", "out_dir"})
    rows = [[k, *[f.get(k) for f in flats]] for k in keys if len({repr(f.get(k)) for f in flats}) > 1]
    blocks = [Table(["key", *[r.label for r in runs]], rows)] if rows else [Text("The configs are identical.")]
    return Section("config", "Configuration differences", blocks)


def results_section(runs: list[RunData]) -> Section:
    keys = ["linear_top1", "knn_top1", "linear_train_top1"]
    train_keys = ["train_seconds", "images_per_second", "steps"]
    rows = [[k, *[r.eval.get(k) for r in runs]] for k in keys if any(k in r.eval for r in runs)]
    rows += [[k, *[r.train.get(k) for r in runs]] for k in train_keys if any(k in r.train for r in runs)]
    return Section("evaluation", "Evaluation", [Table(["metric", *[r.label for r in runs]], rows)])


def curves_section(runs: list[RunData]) -> Section:
    panels: dict[str, dict] = {}
    for r in runs:
        for lines in metric_panels(r.metrics).values():  # grouped order: losses first
            for name, series in lines.items():
                panels.setdefault(name, {})[r.label] = series  # one panel per column, one line per run
    if not panels:
        return Section("training", "Training curves", [Text("None of the runs has logs/metrics.csv.")])
    return Section("training", "Training curves", [
        Image("training_curves", plots.curves(panels), "Each logged metric, one line per run")])


def robustness_section(runs: list[RunData]) -> Section | None:
    from sharpshift.evaluation.robustness import corruption_errors

    have = [r for r in runs if r.robustness]
    if not have:
        return None
    ref = have[0]
    labels = [r.label for r in have]
    rows = [["clean top-1", *[r.robustness["clean_top1"] for r in have]],
            ["mean corruption top-1", *[r.robustness["mean_corruption_top1"] for r in have]],
            ["mean cosine stability", *[r.robustness["mean_cosine"] for r in have]]]
    try:
        errs = [corruption_errors(r.robustness, ref.robustness) for r in have]
        rows += [[f"mCE vs {ref.label}", *[e["mce"] for e in errs]],
                 [f"relative mCE vs {ref.label}", *[e["relative_mce"] for e in errs]]]
    except UserError as e:  # other corruption sets: show the rest
        rows.append(["mCE", f"not comparable: {e}", *[None] * (len(have) - 1)])
    blocks = [Table(["", *labels], rows)]
    names = sorted({n for r in have for n in r.robustness["corruptions"]})
    blocks.append(Table(["corruption (mean over severities)", *labels],
                        [[n, *[r.robustness["corruptions"].get(n, {}).get("mean_top1") for r in have]] for n in names]))
    sev = have[0].robustness["severities"]
    curves = {}
    for r in have:
        if r.robustness["severities"] == sev:
            per = list(r.robustness["corruptions"].values())
            curves[r.label] = [sum(c["top1"][i] for c in per) / len(per) for i in range(len(sev))]
    blocks.append(Image("robustness_severity", plots.severity_lines(sev, {}, curves, "Mean corruption top-1"),
                        "Mean top-1 over corruption types against severity, one line per run"))
    adv = [r for r in have if r.robustness.get("adversarial")]
    if adv:
        eps = adv[0].robustness["adversarial"]["epsilons_255"]
        same = [r for r in adv if r.robustness["adversarial"]["epsilons_255"] == eps]
        rows = []
        for attack in ("fgsm", "pgd"):
            for i, e in enumerate(eps):
                rows.append([f"{attack.upper()} {e:g}/255", *[r.robustness["adversarial"][f"{attack}_top1"][i]
                                                              for r in same]])
        blocks.append(Table(["attack", *[r.label for r in same]], rows, "Top-1 under white-box L-inf attacks"))
        lines = {f"{r.label} PGD": [r.robustness["adversarial"]["clean_top1"], *r.robustness["adversarial"]["pgd_top1"]]
                 for r in same}
        blocks.append(Image("robustness_attacks", plots.attack_lines([0.0, *eps], lines, "PGD, one line per run"),
                            "Top-1 under PGD against the L-inf radius"))
    return Section("robustness", "Robustness", blocks)


def embeddings_section(runs: list[RunData], data_dir: str | None) -> Section:
    blocks = []
    for i, r in enumerate(runs):
        if r.config is None:
            blocks.append(Text(f"{r.label}: config.yaml unreadable"))
            continue

        def make(r=r, i=i):
            img = embedding_image(r, RunAssets(r, data_dir))
            return [Image(f"embedding_{i}", img.png, f"{r.label}: {img.caption}")]

        blocks += _try(make, f"{r.label}: the embedding plot")
    return Section("embedding", "Test embeddings", blocks)


def diagnostics_section(runs: list[RunData]) -> Section | None:
    files = sorted({p for r in runs for p in r.diagnostics})
    if not files:
        return None
    blocks = []
    for f in files:
        flats = [dict(flatten_json(r.diagnostics[f])) if f in r.diagnostics else {} for r in runs]
        keys = list(dict.fromkeys(k for fl in flats for k in fl))
        blocks.append(Table(["key", *[r.label for r in runs]], [[k, *[fl.get(k) for fl in flats]] for k in keys], f))
    return Section("diagnostics", "Diagnostics", blocks)


def comparison_sections(runs: list[RunData], data_dir: str | None = None) -> list[Section]:
    unique_labels(runs)
    sections = [runs_section(runs), config_diff_section(runs), results_section(runs), curves_section(runs),
                robustness_section(runs), embeddings_section(runs, data_dir), diagnostics_section(runs)]
    return [s for s in sections if s is not None]
