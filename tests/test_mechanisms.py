"""Mechanism checks: every check warns on a known-off state and stays quiet on a known-on one; a training run
writes mechanisms.json with a figure series per enabled add-on; SAF/MESA's default form is scale-free and MESA's
first term is 0."""
import json
from types import SimpleNamespace

import pytest
import torch

from sharpshift import plugins
from sharpshift.config.sharpness import MESAConfig, SAFConfig
from sharpshift.mechanisms import MechanismLog
from sharpshift.sharpness.trajectory import SAF, views_kl
from sharpshift.steps import StepOutput
from tests.conftest import tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")
import sharpshift.addons  # noqa: E402,F401  (registers the checks)


def series(**figures):
    """{figure: [(step, value), ...]} from per-step value lists."""
    return {k: list(enumerate(v)) for k, v in figures.items()}


def warnings_of(addon, s):
    return plugins.MECHANISMS[addon].check(s)[1]


def test_amcl_check_warns_when_the_median_temperature_sits_at_tau_min():
    bounds = dict(tau_min=[1e-5] * 4, tau_max=[2.0] * 4)
    off = series(tau_pos_q50=[[1e-5, 1e-5, 1e-5]] * 4, **bounds)
    on = series(tau_pos_q50=[[0.2, 0.15, 0.3]] * 4, **bounds)
    assert any("at tau_min" in w and "adaptive mechanism is off" in w for w in warnings_of("amcl", off))
    assert warnings_of("amcl", on) == []
    at_max = series(tau_pos_q50=[[2.0, 0.3, 0.3]] * 4, **bounds)
    assert any("at tau_max" in w for w in warnings_of("amcl", at_max))


def test_amcl_check_warns_when_every_pair_gets_the_same_temperature():
    """AMCL-Barlow's long runs: interior (no step at a bound), yet q05..q95 = 0.77953..0.77958 on every head."""
    bounds = dict(tau_min=[0.05] * 2, tau_max=[2.0] * 2)
    uniform = series(tau_pos_q05=[[0.77953] * 3] * 2, tau_pos_q50=[[0.77955] * 3] * 2,
                     tau_pos_q95=[[0.77958] * 3] * 2, **bounds)
    summary, warnings = plugins.MECHANISMS["amcl"].check(uniform)
    assert summary["tau_spread_last"] == pytest.approx(0.00005 / 0.77955)
    assert any("same for every pair" in w and "mechanism is off" in w for w in warnings)
    adapting = series(tau_pos_q05=[[0.09] * 3] * 2, tau_pos_q50=[[0.12] * 3] * 2, tau_pos_q95=[[0.21] * 3] * 2,
                      tau_neg_q05=[[0.23] * 3] * 2, tau_neg_q50=[[0.57] * 3] * 2, tau_neg_q95=[[0.86] * 3] * 2,
                      **bounds)
    summary, warnings = plugins.MECHANISMS["amcl"].check(adapting)
    assert summary["tau_spread_last"] == pytest.approx(min(0.12 / 0.12, 0.63 / 0.57)) and warnings == []


def test_dsa_check_warns_on_uniform_relations_and_a_vanishing_gradient_through_m():
    off = series(n_max_m=[1.0, 1.0], share_above_half=[0.0, 0.0], grad_through_m_ratio=[3e-9, 3e-9])
    on = series(n_max_m=[200.0, 210.0], share_above_half=[0.09, 0.1], grad_through_m_ratio=[0.05, 0.04])
    w = warnings_of("dsa", off)
    assert len(w) == 2 and "uniform" in w[0] and "through M" in w[1]
    assert warnings_of("dsa", on) == []


@pytest.mark.parametrize("addon", ["saf", "mesa"])
def test_trajectory_checks_warn_on_a_zero_term_or_a_negligible_gradient(addon):
    assert "off" in warnings_of(addon, series(term=[0.0, 0.0], z_norm=[3.0, 3.0], grad_share=[0.0, 0.0]))[0]
    assert "negligible" in warnings_of(addon, series(term=[0.1, 0.1], grad_share=[0.001, 0.002]))[0]
    assert warnings_of(addon, series(term=[0.1, 0.2], grad_share=[0.1, 0.2], z_norm=[3.0, 3.0])) == []


def test_rsa_and_sam_checks():
    assert "differ" in warnings_of("rsa", series(beta=[0.3, 0.2], aggressive_minus_weak=[0.01, 0.02]))[0]
    assert warnings_of("rsa", series(beta=[0.3, 0.2], aggressive_minus_weak=[0.2, 0.2])) == []
    assert "0 on every" in warnings_of("sam", series(eps_norm=[0.0, 0.0], perturbed_minus_clean=[0.0, 0.0]))[0]
    assert "not ascending" in warnings_of("sam", series(eps_norm=[0.05] * 4, perturbed_minus_clean=[-1, -1, 1, -1]))[0]
    assert warnings_of("sam", series(eps_norm=[0.05] * 4, perturbed_minus_clean=[0.1, 0.2, 0.1, -0.01])) == []


def test_the_log_records_on_due_steps_only():
    log = MechanismLog(every=5)
    assert [s for s in range(12) if log.due(s)] == [0, 5, 10]
    assert not MechanismLog(every=0).due(0)


@pytest.mark.parametrize("form", ["normalised", "logits"])
def test_the_default_trajectory_form_is_scale_free(form):
    g = torch.Generator().manual_seed(0)
    now, past = [torch.randn(8, 16, generator=g)], torch.randn(8, 16, generator=g)
    temperature = 0.1 if form == "normalised" else 5.0
    base = views_kl(now, past, temperature, form)
    for c in (0.1, 0.5, 3.0):
        scaled = views_kl([now[0] * c], past, temperature, form)
        if form == "normalised":
            assert float(scaled) == pytest.approx(float(base), rel=1e-6)
        else:  # the official form is not: shrinking z lowers it (the audit's scale escape)
            assert (float(scaled) < float(base)) == (c < 1)
    assert SAFConfig().form == "normalised" and MESAConfig().form == "normalised"


def mesa_first_step(form: str, log_every: int = 0):
    """A tiny SimCLR + MESA module after one objective on 32 digits, its BatchNorm running statistics moved off
    the batch's (as after some training): (module, the step's output, the weighted MESA term)."""
    from sharpshift.data.registry import load_dataset
    from sharpshift.steps import StepContext
    from sharpshift.train import build_module

    cfg = tiny_config("simclr", "mesa.enabled=true", "mesa.start_epoch=0", f"mesa.form={form}")
    train = load_dataset("digits", "train")
    torch.manual_seed(0)
    module = build_module(cfg, train)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.add_(0.5)
    module.train()
    if log_every:
        module.mechanisms = MechanismLog(every=log_every)
    images = train.images[:32]
    ctx = StepContext(images, train.labels[:32], torch.arange(32), module.views(images), 0, 0)
    out = module.objective(ctx)
    return module, out, module.regularisers[0](module, ctx, out)["mesa"]


def test_mesa_first_term_with_identical_weights_is_zero_in_the_default_form():
    terms = {form: float(mesa_first_step(form)[2]) for form in ("normalised", "logits")}
    assert terms["normalised"] == pytest.approx(0.0, abs=1e-6)
    assert terms["logits"] > 1e-3  # the official form's step-0 term measures the train/eval mismatch


@pytest.mark.parametrize("overrides, addons", [
    (("amcl.enabled=true", "amcl.form=official", "optim.grad_clip=1.0"), {"amcl"}),
    (("saf.enabled=true", "saf.epochs_ago=1", "saf.start_epoch=0", "sam.enabled=true"), {"saf", "sam"}),
    (("dsa.enabled=true", "dsa.prior=random", "mesa.enabled=true", "mesa.start_epoch=0"), {"dsa", "mesa"}),
])
def test_a_run_writes_mechanisms_json(overrides, addons, tmp_path, capsys):
    from sharpshift.train import pretrain

    cfg = tiny_config("simclr", "trainer.log_every_n_steps=1", "trainer.max_steps=-1", "trainer.max_epochs=2",
                      "data.subset=128", *overrides, out_dir=str(tmp_path))
    run = pretrain(cfg)
    data = json.loads((run / "mechanisms.json").read_text())
    assert set(data) == addons
    for addon in addons:
        assert data[addon]["series"] and isinstance(data[addon]["warnings"], list)
    printed = capsys.readouterr().out
    for addon in addons:
        for w in data[addon]["warnings"]:
            assert f"warning: {w}" in printed
    if "saf" in addons:
        assert {"term", "z_norm", "grad_share"} <= set(data["saf"]["series"])
        assert {"eps_norm", "perturbed_minus_clean"} <= set(data["sam"]["series"])
    if "dsa" in addons:
        assert {"n_max_m", "share_above_half", "same_class_mass", "grad_through_m_ratio"} <= set(data["dsa"]["series"])
    if "amcl" in addons:
        heads = data["amcl"]["series"]["tau_pos_q50"][0][1]
        assert len(heads) == 3  # one median per head


def test_the_report_shows_the_mechanism_checks(tmp_path):
    from sharpshift.report.run_data import load_run
    from sharpshift.report.sections import mechanisms_section

    (tmp_path / "mechanisms.json").write_text(json.dumps({"amcl": {"summary": {"share_at_tau_min": 1.0},
                                                                   "warnings": ["AMCL temperatures are at tau_min"],
                                                                   "series": {}}}))
    run = load_run(tmp_path)
    assert "mechanisms.json" not in run.diagnostics  # its own section, not "Other diagnostics"
    section = mechanisms_section(run)
    assert section.title == "Mechanism checks"
    assert "AMCL temperatures are at tau_min" in section.blocks[0].text
    assert section.blocks[1].rows == [["share_at_tau_min", 1.0]]


def test_the_trajectory_terms_gradient_share_matches_a_hand_computed_one():
    """grad_share = ||d term / d backbone weights|| / ||d base loss / d backbone weights||, computed here by
    plain backward passes; it read 0 when it was taken on the chunked features, which the loss never reaches."""
    module, out, term = mesa_first_step("logits", log_every=1)  # a non-zero term (the train/eval mismatch)
    mesa = module.regularisers[0]
    weights = [p for p in module.backbone.parameters() if p.requires_grad]

    def norm(loss):
        for p in weights:
            p.grad = None
        loss.backward(retain_graph=True)
        return sum(float((p.grad ** 2).sum()) for p in weights if p.grad is not None) ** 0.5

    expected = norm(term) / norm(out.loss)
    assert expected > 1e-4  # the term does reach the backbone
    assert mesa.pending[1]["grad_share"] == pytest.approx(expected, rel=1e-4)


def test_shipped_saf_and_mesa_configs_use_the_normalised_forms_own_temperature():
    """The paper's tau 5 belongs to the logits form: on unit vectors it makes both softmaxes nearly uniform, and
    the term (measured 4.8e-5 on a digits run, gradient share 2.4e-5) is off. The shipped configs take tau 0.1."""
    from sharpshift.config import load_config
    from sharpshift.config.sharpness import resolved_temperature

    for name, group in (("saf-simclr", "saf"), ("mesa-simclr", "mesa")):
        cfg = getattr(load_config(name, []), group)
        assert cfg.form == "normalised" and resolved_temperature(cfg) == 0.1
    torch.manual_seed(0)
    now = torch.randn(256, 128)
    past = now + 0.5 * torch.randn(256, 128)  # cosine ~0.9, as outputs two epochs apart
    at = {tau: float(views_kl([now], past, tau, "normalised")) for tau in (0.1, 5.0)}
    assert at[5.0] < 1e-3 * at[0.1]
