"""The per-run report and the comparison: every section when the run has the data, self-contained HTML,
and a real headless browser (Debian's chromium) that loads the page and decodes every image."""
import base64
import json
import os
import re
import shutil
import subprocess
import warnings

import pytest

from sharpshift.report import write_comparison, write_report, write_report_or_warn
from tests.conftest import tiny_config
from tests.test_robustness import make_run_folder

ALL_SECTIONS = ["overview", "config", "training", "evaluation", "embedding", "robustness", "sharpness",
                "discriminability", "diagnostics"]
PNG = b"\x89PNG\r\n\x1a\n"


def tiny_png() -> bytes:
    from matplotlib.figure import Figure

    from sharpshift.report.plots import png

    fig = Figure(figsize=(1, 1))
    fig.add_subplot(1, 1, 1).plot([0, 1], [1, 0])
    return png(fig, dpi=30)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A real tiny pretraining (digits, 2 epochs of 10 steps), then robustness and fake diagnostics."""
    from sharpshift.evaluation.robustness import robustness_run
    from sharpshift.train import pretrain

    os.environ.pop("SHARPSHIFT_RUN_DIR", None)
    out = tmp_path_factory.mktemp("report-runs")
    cfg = tiny_config("simclr", "data.subset=320", "trainer.max_epochs=2", "trainer.max_steps=-1",
                      "trainer.log_every_n_steps=2", "eval.knn_every_n_epochs=1", "eval.knn_monitor_train=200",
                      "eval.after_training=true", "eval.linear_max_iter=30", "report.embedding_points=200",
                      out_dir=str(out))
    run_dir = pretrain(cfg)
    os.environ.pop("SHARPSHIFT_RUN_DIR", None)
    made_by_pretrain = {name: (run_dir / name).is_file() for name in ("report.html", "report.md")}
    robustness_run(run_dir, ["robustness.corruptions=[fog,pixelate]", "robustness.severities=[1,3,5]",
                             "robustness.epsilons=[2,8]", "robustness.adversarial_subset=64", "robustness.pgd_steps=2"])
    (run_dir / "sharpness.json").write_text(json.dumps({"sam_sharpness": 0.12, "hessian": {"top_eigenvalue": 3.4}}))
    (run_dir / "landscape_1d.png").write_bytes(tiny_png())
    (run_dir / "discriminability.json").write_text(json.dumps({"fisher_ratio": 1.7, "per_class": [0.1] * 10}))
    (run_dir / "tsne_discriminability.png").write_bytes(tiny_png())
    (run_dir / "diagnostics").mkdir()
    (run_dir / "diagnostics" / "mystery.json").write_text(json.dumps({"zeta_unknown": {"a": [1, 2]}}))
    (run_dir / "diagnostics" / "mystery.png").write_bytes(tiny_png())
    (run_dir / "broken.json").write_text("{not json")
    write_report(run_dir)
    return run_dir, made_by_pretrain


def html_images(text: str) -> list[bytes]:
    srcs = re.findall(r'<img [^>]*src="([^"]*)"', text)
    assert all(s.startswith("data:image/png;base64,") for s in srcs), "every image must be embedded"
    return [base64.b64decode(s.split(",", 1)[1]) for s in srcs]


def test_pretrain_ends_with_a_report(run):
    assert run[1] == {"report.html": True, "report.md": True}


def test_report_has_every_section_and_is_self_contained(run):
    run_dir, _ = run
    html = (run_dir / "report.html").read_text()
    md = (run_dir / "report.md").read_text()
    for key in ALL_SECTIONS:
        assert f'<section id="{key}">' in html and f'<a id="{key}"></a>' in md, key
    for fragment in ["nt_xent", "train/lr", "train/online_probe_top1", "val/knn_top1", "linear_top1", "pixelate", "PGD", "top_eigenvalue",
                     "fisher_ratio", "diagnostics/mystery.json", "zeta_unknown.a", "diagnostics/mystery.png",
                     "broken.json"]:
        assert fragment in html and fragment in md, fragment
    images = html_images(html)
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert len(images) == len(links) >= 8  # curves, embedding, 3 robustness, 4 diagnostics
    assert all(img.startswith(PNG) for img in images)
    assert all((run_dir / link).read_bytes().startswith(PNG) for link in links)
    assert not re.search(r'(src|href)="(?!data:|#)', html), "no external resources"


def test_report_of_a_bare_run_has_only_what_it_has(tmp_path):
    run_dir = make_run_folder(tmp_path / "bare")
    html = write_report(run_dir).read_text()
    for key in ["overview", "config", "training", "evaluation", "embedding"]:
        assert f'<section id="{key}">' in html
    for key in ["robustness", "sharpness", "discriminability", "diagnostics"]:
        assert f'<section id="{key}">' not in html
    assert "No logs/metrics.csv" in html and "sharpshift evaluate RUN_DIR" in html
    assert len(html_images(html)) == 1  # the embedding


def other_run(run_dir, tmp_path):
    """A second (untrained) run folder whose robustness.json loses half of run_dir's corrupted accuracy."""
    other = make_run_folder(tmp_path / "other", "seed=1")
    rob = json.loads((run_dir / "robustness.json").read_text())
    for c in rob["corruptions"].values():
        c["top1"] = [a / 2 for a in c["top1"]]
    (other / "robustness.json").write_text(json.dumps(rob))
    return other, rob


def test_comparison_side_by_side_and_cli(run, tmp_path):
    from typer.testing import CliRunner

    from sharpshift.cli import app
    from sharpshift.evaluation.robustness import corruption_errors
    from sharpshift.report.document import fmt

    other, rob = other_run(run[0], tmp_path)
    html = write_comparison([run[0], other], tmp_path / "cmp").read_text()
    for key in ["runs", "config", "evaluation", "training", "robustness", "embedding", "diagnostics"]:
        assert f'<section id="{key}">' in html, key
    assert "<td>seed</td><td>0</td><td>1</td>" in html  # the config difference
    assert len(html_images(html)) >= 4
    # mCE against the first run: 1 for itself, above 1 for the run that loses more under corruption
    mce = corruption_errors(rob, json.loads((run[0] / "robustness.json").read_text()))["mce"]
    assert mce > 1 and re.search(rf"<td>mCE vs [^<]*</td><td>{re.escape(fmt(1.0))}</td><td>{re.escape(fmt(mce))}</td>",
                                 html)
    r = CliRunner().invoke(app, ["report", str(run[0]), str(other), "--out", str(tmp_path / "cli")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "cli" / "report.html").is_file() and (tmp_path / "cli" / "report.md").is_file()


def test_a_failing_report_only_warns(monkeypatch, tmp_path):
    import sharpshift.report as report

    def boom(*a, **k):
        raise RuntimeError("no disk")

    monkeypatch.setattr(report, "write_report", boom)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert write_report_or_warn(tmp_path) is None
    assert any("report not written" in str(w.message) and "no disk" in str(w.message) for w in caught)


# ---------------------------------------------------------------- a real browser


@pytest.fixture
def chromium():
    path = next((shutil.which(n) for n in ("chromium", "chromium-browser") if shutil.which(n)), None)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("chromium missing in CI: `bash scripts/bootstrap.sh test` should have installed it")
        pytest.skip("chromium not installed (apt-get install chromium): the browser check of report.html needs it")
    return path


def page_status(chromium: str, page, tmp_path) -> dict:
    """Load `page` headless and return the attributes the page's own check wrote into #report-status."""
    profile = tmp_path / f"profile-{page.stem}-{page.parent.name}"
    cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={profile}", "--virtual-time-budget=10000", "--dump-dom", page.resolve().as_uri()]
    dom = subprocess.run(cmd, capture_output=True, text=True, timeout=180).stdout
    tag = re.search(r'<p id="report-status"[^>]*>(.*?)</p>', dom, re.S)
    assert tag, f"no status element in the dumped DOM: {dom[:300]!r}"
    attrs = dict(re.findall(r'(data-[a-z]+)="([^"]*)"', tag.group(0)))
    return {**attrs, "text": tag.group(1)}


def test_report_loads_in_headless_chromium(run, chromium, tmp_path):
    page = run[0] / "report.html"
    status = page_status(chromium, page, tmp_path)
    assert status["data-status"] == "ok", status
    assert int(status["data-images"]) == len(html_images(page.read_text())) >= 8
    # the comparison page too
    other, _ = other_run(run[0], tmp_path)
    cmp_page = write_comparison([run[0], other], tmp_path / "cmp")
    status = page_status(chromium, cmp_page, tmp_path)
    assert status["data-status"] == "ok", status
    assert int(status["data-images"]) == len(html_images(cmp_page.read_text())) >= 4
    # the check can fail: the same page with one image's bytes broken
    broken = tmp_path / "broken.html"
    broken.write_text(page.read_text().replace("base64,iVBORw0KGgo", "base64,AAAAAAAA", 1))
    status = page_status(chromium, broken, tmp_path)
    assert status["data-status"] == "error" and "1 of" in status["text"], status
