"""Robustness of a run's frozen features: corrupted test sets and white-box attacks -> RUN_DIR/robustness.json.

Protocol (the evaluation protocol of evaluation/run.py plus corrupted inputs):
  1. Fit the linear probe exactly as `sharpshift evaluate` does (train split, clean images), or on a
     seeded subset of the train split (`robustness.probe_train_subset`) to save time.
  2. Corruptions: for each type and severity, corrupt the test images on the fly (deterministic,
     evaluation/corruptions.py), report the probe's top-1 and the cosine stability: the mean cosine
     similarity between a test image's backbone features clean and corrupted.
  3. Mean corruption top-1 = the mean over all types and severities. With a reference run: the
     corruption error CE_c = sum_s err(c, s) / sum_s err_ref(c, s), mCE = mean_c CE_c, and the relative
     mCE, which first subtracts each run's clean error (Hendrycks & Dietterich, 2019, section 3).
  4. Attacks: FGSM and PGD (L-inf) on backbone + probe for each epsilon (evaluation/adversarial.py).
"""
from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from sharpshift.config import Config, load_config
from sharpshift.errors import UserError
from sharpshift.evaluation.adversarial import ProbedBackbone, attack_accuracy
from sharpshift.evaluation.corruptions import CORRUPTIONS, corrupt
from sharpshift.evaluation.features import extract_features
from sharpshift.evaluation.linear import linear_probe
from sharpshift.config.robustness import RobustnessConfig
from sharpshift.evaluation.run import labelled_splits
from sharpshift.export import atomic_write_text, load_backbone

RESULT_FILE = "robustness.json"
CORRUPTION_CHUNK = 512  # images corrupted per call; fixed so that the noise does not depend on batch_size


def corrupted_features(backbone, images, name: str, severity: int, seed: int, batch_size: int, **feature_kw):
    """Backbone features of a corrupted copy of `images`, corrupted in fixed chunks (offset-seeded)."""
    feats = []
    for start in range(0, len(images), CORRUPTION_CHUNK):
        chunk = corrupt(images[start : start + CORRUPTION_CHUNK], name, severity, seed, offset=start)
        feats.append(extract_features(backbone, chunk, batch_size=batch_size, **feature_kw))
    return torch.cat(feats)


def robustness_of_backbone(backbone: torch.nn.Module, cfg: Config, train, test,
                           log: Callable[[str], None] = lambda s: None) -> dict:
    """The numbers of the module docstring for one backbone; `test` is the evaluation test split."""
    rcfg: RobustnessConfig = cfg.robustness
    arch = getattr(backbone, "arch", {})
    kw = dict(mean=arch.get("mean"), std=arch.get("std"))
    t0 = time.time()
    train = train.subset(rcfg.probe_train_subset, seed=rcfg.seed)
    f_train = extract_features(backbone, train.images, batch_size=rcfg.batch_size, **kw)
    probe = linear_probe(f_train, train.labels, iterations=cfg.eval.linear_max_iter,
                         weight_decay=cfg.eval.linear_weight_decay, seed=cfg.seed)
    test = test.subset(rcfg.test_subset, seed=rcfg.seed)
    f_clean = extract_features(backbone, test.images, batch_size=rcfg.batch_size, **kw)
    labels = test.labels
    clean = (probe.predict(f_clean) == labels).float().mean().item()
    seconds = {"probe": round(time.time() - t0, 1)}

    t0 = time.time()
    per_type = {}
    for name in rcfg.names():
        top1, cosine = [], []
        for severity in rcfg.severities:
            f = corrupted_features(backbone, test.images, name, severity, rcfg.seed, rcfg.batch_size, **kw)
            top1.append((probe.predict(f) == labels).float().mean().item())
            cosine.append(F.cosine_similarity(f_clean, f, dim=1).mean().item())
        per_type[name] = {"family": CORRUPTIONS[name].family, "top1": top1, "cosine": cosine,
                          "mean_top1": sum(top1) / len(top1), "mean_cosine": sum(cosine) / len(cosine)}
        log(f"{name}: top1 {' '.join(f'{a:.3f}' for a in top1)}")
    seconds["corruptions"] = round(time.time() - t0, 1)

    t0 = time.time()
    adv_set = test.subset(rcfg.adversarial_subset, seed=rcfg.seed)
    adversarial = attack_accuracy(ProbedBackbone(backbone, probe), adv_set.images, adv_set.labels, rcfg.epsilons,
                                  rcfg.pgd_steps, rcfg.pgd_step_ratio, rcfg.pgd_random_start, rcfg.seed,
                                  rcfg.batch_size)
    seconds["adversarial"] = round(time.time() - t0, 1)
    log(f"pgd top1 at eps {adversarial['epsilons_255']}/255: {adversarial['pgd_top1']}")

    all_top1 = [a for r in per_type.values() for a in r["top1"]]
    all_cos = [c for r in per_type.values() for c in r["cosine"]]
    return {
        "clean_top1": clean,
        "mean_corruption_top1": sum(all_top1) / len(all_top1),
        "mean_cosine": sum(all_cos) / len(all_cos),
        "severities": list(rcfg.severities),
        "corruptions": per_type,
        "adversarial": adversarial,
        "protocol": {"train_size": len(train), "test_size": len(test), "seed": rcfg.seed,
                     "probe": "linear probe of `sharpshift evaluate` (train split, clean)",
                     "image_size": int(test.images.shape[-1]), "channels": int(test.images.shape[1])},
        "seconds": seconds,
    }


def corruption_errors(result: dict, reference: dict) -> dict:
    """CE per type, mCE and relative mCE of `result` against `reference` (both robustness.json dicts).

    Relative CE of a type is undefined (None) where the reference loses no accuracy under it."""
    names = [n for n in result["corruptions"] if n in reference["corruptions"]]
    if not names or result["severities"] != reference["severities"]:
        raise UserError("the reference run's robustness.json has other corruption types or severities; "
                        "evaluate both runs with the same robustness.* settings")
    ce, rel = {}, {}
    clean_err, ref_clean_err = 1 - result["clean_top1"], 1 - reference["clean_top1"]
    for n in names:
        err = [1 - a for a in result["corruptions"][n]["top1"]]
        ref = [1 - a for a in reference["corruptions"][n]["top1"]]
        ce[n] = sum(err) / max(sum(ref), 1e-12)
        ref_gap = sum(e - ref_clean_err for e in ref)
        rel[n] = sum(e - clean_err for e in err) / ref_gap if ref_gap > 1e-12 else None
    defined = [v for v in rel.values() if v is not None]
    return {"ce": ce, "mce": sum(ce.values()) / len(ce), "relative_ce": rel,
            "relative_mce": sum(defined) / len(defined) if defined else None}


def read_result(path: str | Path) -> dict:
    """robustness.json of a run folder (or the file itself)."""
    p = Path(path)
    file = p / RESULT_FILE if p.is_dir() else p
    if not file.is_file():
        raise UserError(f"no {RESULT_FILE} in {p}; run `sharpshift evaluate {p} --robustness` first")
    return json.loads(file.read_text())


def robustness_request(run_dir: Path, overrides: Sequence[str] = (),
                       reference: str | Path | None = None) -> tuple[Config, dict | None]:
    """The run's config with the overrides, and the reference's result: the cheap checks, done first."""
    if not (run_dir / "config.yaml").is_file():
        raise UserError(f"{run_dir} has no config.yaml; pass a run folder made by `sharpshift pretrain`")
    bad = [o for o in overrides if not o.startswith("robustness.")]
    if bad:
        raise UserError(f"only robustness.* keys can be changed at evaluation time, got {bad}")
    ref = read_result(reference) if reference else None
    return load_config(str(run_dir / "config.yaml"), list(overrides)), ref


def robustness_run(run_dir: str | Path, overrides: Sequence[str] = (), reference: str | Path | None = None,
                   data_dir: str | None = None, log: Callable[[str], None] = lambda s: None) -> dict:
    """Measure a finished run; writes RUN_DIR/robustness.json. `overrides`: robustness.* keys only."""
    run_dir = Path(run_dir)
    cfg, ref = robustness_request(run_dir, overrides, reference)
    backbone = load_backbone(run_dir)
    train, test = labelled_splits(cfg, data_dir)
    result = robustness_of_backbone(backbone, cfg, train, test, log)
    if ref is not None:
        result["reference"] = {"run": str(reference), **corruption_errors(result, ref)}
    atomic_write_text(run_dir / RESULT_FILE, json.dumps(result, indent=2))
    return result


def summary(result: dict) -> dict:
    """The headline numbers (what the CLI prints)."""
    adv = result["adversarial"]
    out = {"clean_top1": round(result["clean_top1"], 4),
           "mean_corruption_top1": round(result["mean_corruption_top1"], 4),
           "mean_cosine": round(result["mean_cosine"], 4),
           "pgd_top1": {f"{e:g}/255": round(a, 4) for e, a in zip(adv["epsilons_255"], adv["pgd_top1"])}}
    if "reference" in result:
        out["mce"] = round(result["reference"]["mce"], 4)
    return out
