"""Precision: auto's choice and its reasons, bf16-mixed training tracking fp32, and what train.json says
about speed."""
import json
import statistics

import lightning as L
import pytest

from sharpshift import precision_choice as P
from sharpshift.data.loader import PretrainData
from sharpshift.data.registry import load_dataset
from sharpshift.throughput import slowdown, speed_summary
from sharpshift.train import build_module, build_trainer, pretrain
from tests.conftest import tiny_config


@pytest.fixture
def unforced(monkeypatch, tmp_path):
    """auto as a user meets it: no forcing switch, no choice inherited, an empty cache."""
    for var in (P.FORCE_ENV, P.CHOICE_ENV):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv(P.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(P.torch.cuda, "is_available", lambda: False)


def test_explicit_precision_is_kept_and_forcing_applies_to_auto_only(monkeypatch, unforced):
    assert P.choose_precision("32") == P.PrecisionChoice("32-true", "set by trainer.precision")
    monkeypatch.setenv(P.FORCE_ENV, "bf16-mixed")
    assert P.choose_precision("32").precision == "32-true"
    forced = P.choose_precision("auto")
    assert forced.precision == "bf16-mixed" and P.FORCE_ENV in forced.reason


def test_no_bf16_units_means_fp32_without_probing(monkeypatch, unforced):
    monkeypatch.setattr(P, "cpu_flags", lambda: {"avx2", "fma"})
    monkeypatch.setattr(P, "probe_step_seconds", lambda *a: pytest.fail("probed a CPU without bf16 units"))
    choice = P.choose_precision("auto")
    assert choice.precision == "32-true" and "no bf16 matrix units" in choice.reason


@pytest.mark.parametrize("bf16_s, expect", [(0.05, "bf16-mixed"), (0.095, "32-true"), (2.5, "32-true")])
def test_bf16_units_take_bf16_only_when_the_probe_finds_it_faster(monkeypatch, unforced, bf16_s, expect):
    monkeypatch.setattr(P, "cpu_flags", lambda: {"avx512_bf16"})
    calls = []
    monkeypatch.setattr(P, "probe_step_seconds", lambda b, w: calls.append(b) or {"32-true": 0.1, "bf16-mixed": bf16_s})
    first = P.choose_precision("auto")
    assert first.precision == expect and "avx512_bf16" in first.reason and f"{bf16_s:.3f} s" in first.reason
    second = P.choose_precision("auto")  # from the cache: no second probe
    assert second.precision == expect and second.reason.startswith(first.reason.split(";")[0])
    assert "cached probe" in second.reason and calls == ["convnet"]
    cache = json.loads(P.cache_file().read_text())
    assert len(cache) == 1 and "torch" in next(iter(cache)) and "convnet-32" in next(iter(cache))
    P.choose_precision("auto", backbone="convnet", width=16)  # another model: its own probe
    assert len(calls) == 2
    monkeypatch.setenv("SHARPSHIFT_CPU_BUSY", "1")  # timed on busy cores: used, not cached
    P.choose_precision("auto", backbone="convnet", width=8)
    assert len(calls) == 3 and len(json.loads(P.cache_file().read_text())) == 2


def test_the_first_process_choice_reaches_the_processes_ddp_launches(monkeypatch, unforced):
    monkeypatch.setattr(P, "cpu_flags", lambda: {"amx_bf16"})
    monkeypatch.setattr(P, "probe_step_seconds", lambda b, w: {"32-true": 0.2, "bf16-mixed": 0.1})
    cfg = tiny_config("simclr")
    chosen = P.choose_for(cfg)
    assert chosen.precision == "bf16-mixed"
    monkeypatch.setattr(P, "probe_step_seconds", lambda b, w: pytest.fail("a launched process probed again"))
    monkeypatch.setattr(P, "cache_file", lambda: pytest.fail("a launched process read the cache"))
    assert P.choose_for(cfg) == chosen


def test_the_probe_times_both_precisions():
    seconds = P.probe_step_seconds("convnet", 4, steps=1)
    assert set(seconds) == {"32-true", "bf16-mixed"} and all(s > 0 for s in seconds.values())


class Losses(L.Callback):
    def __init__(self):
        self.values = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.values.append(float(trainer.callback_metrics["loss"]))


def loss_curve(precision, tmp_path, steps=40):
    cfg = tiny_config("simclr", f"trainer.precision={precision}", "trainer.log_every_n_steps=1", "model.width=16",
                      f"trainer.max_steps={steps}")
    L.seed_everything(0, verbose=False)
    train = load_dataset("digits", "train")
    module, losses = build_module(cfg, train), Losses()
    trainer = build_trainer(cfg, tmp_path, max_epochs=-1, logger=False, enable_checkpointing=False, callbacks=[losses])
    trainer.fit(module, datamodule=PretrainData(train, cfg.data.batch_size, cfg.seed))
    return losses.values


def test_bf16_mixed_training_tracks_fp32(tmp_path):
    fp32, bf16 = loss_curve("32", tmp_path), loss_curve("bf16-mixed", tmp_path)
    assert len(fp32) == len(bf16) == 40
    # bf16 really ran: the first losses differ (measured 0.0013-0.0057 over seeds 0-4), fp32 twice would be equal
    assert abs(fp32[0] - bf16[0]) > 1e-4
    tail32, tail16 = statistics.mean(fp32[-10:]), statistics.mean(bf16[-10:])
    # both learn, and end close: relative gap of the last-10-step means measured 0.0018-0.0182 over seeds 0-4
    # (width 16, 40 steps, the AVX512-BF16 CPU of docs/benchmarks.md); 0.05 leaves ~2.7x that
    assert fp32[0] - tail32 > 0.1 and bf16[0] - tail16 > 0.1
    assert abs(tail16 - tail32) / tail32 < 0.05


def test_speed_summary_separates_warm_up_steady_state_and_a_slow_stretch():
    start, period, ends, t = 0.0, 0.1, [], 0.0
    for step in range(60):
        t += 1.0 if step < 10 else (0.5 if 30 <= step < 40 else period)  # slow start, then a contended stretch
        ends.append(t)
    s = speed_summary(start, ends, images_per_step=100, views_per_image=2, train_seconds=t + 2.0)
    assert s["warmup_steps"] == 10 and s["warmup_seconds"] == pytest.approx(10.0)
    assert s["steady_images_per_second"] == pytest.approx(1000.0) and s["steady_views_per_second"] == pytest.approx(2000)
    assert s["whole_run_images_per_second"] == pytest.approx(6000 / (t + 2.0), rel=1e-3)
    worst = s["slowest_stretch"]
    assert worst["steps"] == 20 and 20 <= worst["first_step"] <= 30 and worst["seconds"] == pytest.approx(6.0)
    assert speed_summary(0.0, [], 100, 2, 1.0)["steps"] == 0


def test_pretrain_reports_the_precision_choice_first_and_the_speed_in_train_json(tmp_path, capsys):
    run = pretrain(tiny_config("simclr", "trainer.precision=32", f"out_dir={tmp_path}"))
    first = capsys.readouterr().out.splitlines()[:2]
    assert first[0] == "precision: 32-true (set by trainer.precision)" and first[1].startswith("cpu: ")
    summary = json.loads((run / "train.json").read_text())
    assert summary["precision"] == "32-true" and summary["precision_reason"] == "set by trainer.precision"
    assert summary["bf16_units"] == P.bf16_units() and summary["cpu"] == P.cpu_name()  # the machine type
    speed = summary["speed"]
    assert speed["steps"] == summary["steps"] == 4 and speed["images_per_step"] == 32 and speed["views_per_image"] == 2
    assert speed["whole_run_views_per_second"] == pytest.approx(2 * speed["whole_run_images_per_second"], rel=1e-3)
    assert speed["warmup_steps"] == 2 and speed["steady_images_per_second"] > 0 and "slowest_stretch" in speed


def test_two_pretrain_calls_in_one_process_make_two_run_folders(tmp_path):
    first = pretrain(tiny_config("simclr", "trainer.precision=32", f"out_dir={tmp_path}", "trainer.max_steps=1"))
    second = pretrain(tiny_config("moco", "trainer.precision=32", f"out_dir={tmp_path}", "trainer.max_steps=1"))
    assert first != second and "moco" in second.name and "simclr" in first.name


def test_a_stretch_of_slow_steps_is_told_apart_from_a_steady_run():
    steady = [0.1 * i for i in range(61)]
    assert slowdown(steady) == pytest.approx(1.0)
    contended = steady + [steady[-1] + 1.2 * i for i in range(1, 21)]  # 12x slower for 20 steps, as measured
    assert slowdown(contended) == pytest.approx(12.0, rel=1e-6)
    assert slowdown(steady[:30]) == 1.0  # too short to judge
