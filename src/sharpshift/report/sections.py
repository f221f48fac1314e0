"""The sections of one run's report. Each builder returns a Section, or None when the run lacks its data;
a figure that cannot be made (data set missing, backbone unreadable) becomes a line saying why."""
from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable

import numpy as np

from sharpshift.errors import UserError
from sharpshift.report import plots
from sharpshift.report.document import Code, Image, Section, Table, Text
from sharpshift.report.run_data import RunData, flatten_json

# Diagnostics other sessions write, with their own section: (key, title, JSON file, PNG name pattern).
KNOWN_DIAGNOSTICS = [
    ("sharpness", "Sharpness and loss landscape", "sharpness.json", r"sharp|landscape|hessian"),
    ("discriminability", "Discriminability", "discriminability.json", r"discrimin|tsne|t-sne"),
]


class RunAssets:
    """The backbone and the test split, loaded on first use and shared by the figures that need them."""

    def __init__(self, run: RunData, data_dir: str | None = None):
        self.run, self.data_dir = run, data_dir
        self._backbone = self._test = None

    def backbone(self):
        if self._backbone is None:
            from sharpshift.export import load_backbone

            self._backbone = load_backbone(self.run.path)
        return self._backbone

    def test(self):
        if self._test is None:
            from sharpshift.data.storage import open_split

            cfg = self.run.config
            if cfg is None:
                raise UserError(f"config.yaml unreadable: {self.run.config_error}")
            if self.data_dir:
                cfg.data.data_dir = self.data_dir
            test = open_split(cfg, "test")
            if test.labels is None:
                raise UserError(f"dataset {cfg.data.dataset!r} has no test labels")
            self._test = test.subset(cfg.data.test_subset, seed=cfg.seed)
        return self._test


def _try(make: Callable[[], list], what: str) -> list:
    try:
        return make()
    except (UserError, OSError, RuntimeError, ValueError) as e:
        return [Text(f"{what} not available: {str(e).splitlines()[0] if str(e) else type(e).__name__}")]


# ---------------------------------------------------------------- overview, config


def overview(run: RunData) -> Section:
    cfg = run.config
    rows = [["run folder", str(run.path)]]
    if cfg is not None:
        rows += [["method", cfg.method.name], ["dataset", cfg.data.dataset], ["backbone", cfg.model.backbone],
                 ["seed", cfg.seed], ["epochs", cfg.trainer.max_epochs], ["batch size", cfg.data.batch_size]]
        addons = [f.name for f in dataclasses.fields(cfg) if getattr(getattr(cfg, f.name), "enabled", False) is True]
        rows.append(["add-ons enabled", ", ".join(addons) or "none"])
    for key in ("linear_top1", "knn_top1", "val_linear_top1", "val_knn_top1"):
        if key in run.eval:
            rows.append([key, run.eval[key]])
    for key in ("train_seconds", "images_per_second", "precision", "precision_reason", "thread_setting"):
        if key in run.train:
            rows.append([key, run.train[key]])
    speed = run.train.get("speed", {})
    for key in ("steady_images_per_second", "warmup_seconds"):
        if key in speed:
            rows.append([key, speed[key]])
    if "slowest_stretch" in speed:
        worst = speed["slowest_stretch"]
        rows.append(["slowest stretch", f"{worst['images_per_second']} images/s over steps {worst['first_step']}-"
                                        f"{worst['first_step'] + worst['steps'] - 1}"])
    if run.robustness:
        rows.append(["mean corruption top-1", run.robustness.get("mean_corruption_top1")])
    return Section("overview", "Overview", [Table(["", "value"], rows)])


def config_section(run: RunData) -> Section | None:
    if not run.config_text:
        return None
    blocks = []
    if run.config is not None:
        from sharpshift.config import Config
        from sharpshift.report.run_data import flatten_dataclass

        defaults = flatten_dataclass(Config())
        diff = [[k, v, defaults.get(k)] for k, v in run.flat_config().items()
                if v != defaults.get(k) and k not in ("name", "out_dir")]
        blocks.append(Table(["key", "this run", "default"], diff, "Keys that differ from the defaults"))
    else:
        blocks.append(Text(f"config.yaml could not be validated: {run.config_error}"))
    blocks.append(Code(run.config_text))
    return Section("config", "Configuration", blocks)


# ---------------------------------------------------------------- training curves


def metric_panels(metrics: dict) -> dict[str, dict]:
    """Group logged columns into panels: loss terms, learning rate, online probe, kNN, anything else."""
    panels: dict[str, dict] = {"loss terms": {}, "learning rate": {}, "online linear probe (train batches)": {},
                               "kNN monitor (test)": {}, "other logged metrics": {}}
    for name, series in metrics.items():
        if name.endswith("lr") or "lr-" in name:
            panels["learning rate"][name] = series
        elif "online_probe" in name:
            panels["online linear probe (train batches)"][name] = series
        elif "knn" in name:
            panels["kNN monitor (test)"][name] = series
        elif name.startswith("train/"):
            panels["loss terms"][name] = series
        else:
            panels["other logged metrics"][name] = series
    return {k: v for k, v in panels.items() if v}


def training_section(run: RunData) -> Section:
    if not run.metrics:
        return Section("training", "Training curves", [Text("No logs/metrics.csv in this run folder.")])
    panels = metric_panels(run.metrics)
    last = [[name, int(xs[-1]), ys[-1], min(ys), max(ys)] for name, (xs, ys) in sorted(run.metrics.items())]
    return Section("training", "Training curves", [
        Image("training_curves", plots.curves(panels), "Logged metrics against the optimizer step (logs/metrics.csv)"),
        Table(["metric", "last step", "last value", "min", "max"], last),
    ])


# ---------------------------------------------------------------- evaluation, embedding


def evaluation_section(run: RunData) -> Section:
    blocks = []
    if run.eval:
        blocks.append(Table(["metric", "value"], [[k, v] for k, v in run.eval.items()], "eval.json"))
    else:
        blocks.append(Text("No eval.json: run `sharpshift evaluate RUN_DIR`."))
    if run.train:
        blocks.append(Table(["metric", "value"], [[k, v] for k, v in run.train.items()], "train.json"))
    return Section("evaluation", "Evaluation", blocks)


def embedding_image(run: RunData, assets: RunAssets) -> Image:
    from sharpshift.evaluation.features import extract_features
    from sharpshift.report.embedding import explained_variance, project_2d

    cfg = run.config
    rcfg = cfg.report
    test = assets.test()
    sub = test.subset(rcfg.embedding_points, seed=cfg.seed)
    backbone = assets.backbone()
    arch = getattr(backbone, "arch", {})
    feats = extract_features(backbone, sub.images, mean=arch.get("mean"), std=arch.get("std"))
    points = project_2d(feats, rcfg.embedding, cfg.seed)
    title = f"{rcfg.embedding.upper()} of {len(sub)} test embeddings ({feats.shape[1]}-d), {run.label}"
    if rcfg.embedding == "pca":
        share = explained_variance(feats)
        title += f"\nPC1 {share[0]:.0%}, PC2 {share[1]:.0%} of the variance"
    caption = (f"{rcfg.embedding.upper()} of standardised backbone features of {len(sub)} seeded test images, "
               "coloured by class")
    return Image("embedding", plots.embedding(points, sub.labels.numpy(), test.classes, title), caption)


def embedding_section(run: RunData, assets: RunAssets) -> Section:
    if run.config is None:
        return Section("embedding", "Test embeddings", [Text("Needs a readable config.yaml.")])
    return Section("embedding", "Test embeddings", _try(lambda: [embedding_image(run, assets)], "The embedding plot"))


# ---------------------------------------------------------------- robustness


def corruption_examples(assets: RunAssets, names: list[str], seed: int) -> Image:
    from sharpshift.evaluation.corruptions import corrupt

    image = assets.test().images[:1]
    rows = []
    for name in names:
        imgs = [corrupt(image, name, s, seed)[0] for s in range(6)]
        rows.append((name, [i[0].numpy() if i.shape[0] == 1 else i.permute(1, 2, 0).numpy() for i in imgs]))
    return Image("corruption_examples", plots.image_grid(rows, ["clean"] + [f"severity {s}" for s in range(1, 6)]),
                 "One test image under each corruption and severity")


def robustness_section(run: RunData, assets: RunAssets | None) -> Section | None:
    r = run.robustness
    if not r:
        return None
    sev = r["severities"]
    corr = r["corruptions"]
    head = [["clean top-1", r["clean_top1"]], ["mean corruption top-1", r["mean_corruption_top1"]],
            ["mean cosine stability (clean vs corrupted features)", r["mean_cosine"]],
            ["test images", r.get("protocol", {}).get("test_size")]]
    if "reference" in r:
        head += [["mCE vs reference", r["reference"]["mce"]], ["relative mCE", r["reference"]["relative_mce"]],
                 ["reference", r["reference"]["run"]]]
    blocks = [Table(["", "value"], head)]
    rows = [[n, c.get("family", ""), *c["top1"], c["mean_top1"], c["mean_cosine"]] for n, c in corr.items()]
    means = [float(np.mean([c["top1"][i] for c in corr.values()])) for i in range(len(sev))]
    rows.append(["mean", "", *means, r["mean_corruption_top1"], r["mean_cosine"]])
    blocks.append(Table(["corruption", "family", *[f"s{s}" for s in sev], "mean", "cosine"], rows,
                        "Linear-probe top-1 per corruption and severity"))
    blocks.append(Image("robustness_severity", plots.severity_lines(
        sev, {n: c["top1"] for n, c in corr.items()}, {"mean": means}, f"Corruption robustness, {run.label}"),
        "Top-1 against severity: one thin line per corruption, the mean in bold"))
    adv = r.get("adversarial")
    if adv:
        eps = adv["epsilons_255"]
        blocks.append(Table(["epsilon (/255)", "FGSM top-1", "PGD top-1"],
                            [[f"{e:g}", f, p] for e, f, p in zip(eps, adv["fgsm_top1"], adv["pgd_top1"])],
                            f"White-box L-inf attacks on backbone + linear probe, {adv['size']} test images, "
                            f"PGD {adv['pgd_steps']} steps (clean top-1 on these images {adv['clean_top1']:.4f})"))
        blocks.append(Image("robustness_attacks", plots.attack_lines(
            [0.0, *eps], {"FGSM": [adv["clean_top1"], *adv["fgsm_top1"]], "PGD": [adv["clean_top1"], *adv["pgd_top1"]]},
            f"Adversarial robustness, {run.label}"), "Top-1 under attack against the L-inf radius"))
    if assets is not None and run.config is not None:
        blocks += _try(lambda: [corruption_examples(assets, list(corr), r.get("protocol", {}).get("seed", 0))],
                       "The corruption examples")
    return Section("robustness", "Robustness", blocks)


# ---------------------------------------------------------------- diagnostics


def _image_blocks(run: RunData, paths: list[str]) -> list[Image]:
    blocks = []
    for rel in paths:
        name = "diag_" + re.sub(r"[^A-Za-z0-9_-]+", "_", rel.rsplit(".", 1)[0])
        blocks.append(Image(name, (run.path / rel).read_bytes(), rel))
    return blocks


def _json_block(rel: str, data: dict) -> Table:
    return Table(["key", "value"], [list(row) for row in flatten_json(data)], rel)


def diagnostics_sections(run: RunData) -> list[Section]:
    """Known diagnostics get their own section; every other JSON and PNG lands in 'Other diagnostics'."""
    sections, used_json, used_png = [], set(), set()
    for key, title, file, pattern in KNOWN_DIAGNOSTICS:
        jsons = [p for p in run.diagnostics if p.rsplit("/", 1)[-1] == file]
        pngs = [p for p in run.images if re.search(pattern, p.lower()) and p not in used_png]
        if not jsons and not pngs:
            continue
        used_json.update(jsons)
        used_png.update(pngs)
        blocks = [_json_block(p, run.diagnostics[p]) for p in jsons] + _image_blocks(run, pngs)
        if not jsons:
            blocks.insert(0, Text(f"No {file}; the figures found are shown."))
        sections.append(Section(key, title, blocks))
    other_json = [p for p in run.diagnostics if p not in used_json]
    other_png = [p for p in run.images if p not in used_png]
    if other_json or other_png or run.unreadable:
        blocks = [_json_block(p, run.diagnostics[p]) for p in other_json] + _image_blocks(run, other_png)
        blocks += [Text(f"`{p}` not shown: {why}") for p, why in run.unreadable.items()]
        sections.append(Section("diagnostics", "Other diagnostics", blocks))
    return sections


def mechanisms_section(run: RunData) -> Section | None:
    """Per add-on: whether its mechanism was on (the warnings), and the summary of its recorded figures."""
    if not run.mechanisms:
        return None
    blocks = []
    for addon, result in run.mechanisms.items():
        warnings = result.get("warnings", [])
        blocks.append(Text(f"{addon}: " + ("; ".join(warnings) if warnings else "mechanism on (no warning)")))
        rows = [[k, v] for k, v in result.get("summary", {}).items()]
        blocks.append(Table(["figure", "value"], rows, f"mechanisms.json: {addon}"))
    return Section("mechanisms", "Mechanism checks", blocks)


def run_sections(run: RunData, data_dir: str | None = None) -> list[Section]:
    assets = RunAssets(run, data_dir)
    sections = [overview(run), config_section(run), training_section(run), mechanisms_section(run),
                evaluation_section(run),
                embedding_section(run, assets), robustness_section(run, assets), *diagnostics_sections(run)]
    return [s for s in sections if s is not None]
