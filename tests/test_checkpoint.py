"""Checkpoints: atomic writes with a record, detection of corrupt and truncated files with fallback,
weights-only loading that refuses code, full disks, RNG and sampler state, non-finite losses."""
import errno
import json
import os
import pickle
import random
import warnings

import numpy as np
import pytest
import torch

from sharpshift import checkpoint as ck
from sharpshift.data.loader import ShardedBatchSampler
from sharpshift.errors import UserError
from tests.conftest import tiny_config


def fake_ckpt(step: int, method: str = "simclr", width: int = 8) -> dict:
    return {"global_step": step, "epoch": 0, "state_dict": {"w": torch.full((3,), float(step))},
            "sharpshift": {"method": method, "backbone": "convnet", "width": width, "cifar_stem": True}}


def expected(method="simclr", width=8):
    return {"method": method, "backbone": "convnet", "width": width, "cifar_stem": True}


def write_run(tmp_path, steps=(2, 4, 6)):
    folder = tmp_path / "run" / ck.CKPT_DIR
    for s in steps:
        ck.save_checkpoint(fake_ckpt(s), folder / ck.step_name(s))
    return tmp_path / "run"


def leftovers(folder):
    return [p.name for p in folder.rglob("*") if ".tmp" in p.name]


def test_save_writes_file_and_record_atomically(tmp_path):
    path = tmp_path / "c" / "step-0000005.ckpt"
    record = ck.save_checkpoint(fake_ckpt(5), path)
    on_disk = json.loads(ck.record_path(path).read_text())
    assert on_disk == record and record["size"] == path.stat().st_size and record["step"] == 5
    assert record["sharpshift"]["method"] == "simclr"
    assert torch.equal(ck.load_checkpoint(path)["state_dict"]["w"], torch.full((3,), 5.0))
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("damage, reason", [
    (lambda p: p.write_bytes(p.read_bytes()[:-10]), "truncated"),
    (lambda p: p.write_bytes(p.read_bytes() + b"x"), "truncated or padded"),
    (lambda p: p.write_bytes(bytes([p.read_bytes()[0] ^ 1]) + p.read_bytes()[1:]), "sha256 does not match"),
    (lambda p: ck.record_path(p).unlink(), "has no record"),
    (lambda p: ck.record_path(p).write_text("{not json"), "record"),
])
def test_damage_is_detected_before_unpickling(tmp_path, damage, reason):
    path = tmp_path / "x.ckpt"
    ck.save_checkpoint(fake_ckpt(1), path)
    damage(path)
    with pytest.raises(ck.CorruptCheckpoint, match=reason):
        ck.load_checkpoint(path)


def test_resume_falls_back_past_corrupt_checkpoints_with_a_warning(tmp_path):
    run = write_run(tmp_path)
    newest = run / ck.CKPT_DIR / ck.step_name(6)
    newest.write_bytes(newest.read_bytes()[:100])  # killed mid-copy, or a bad disk
    (run / ck.CKPT_DIR / ".step-0000008.ckpt.tmp-123").write_bytes(b"half")  # a save that was killed: ignored
    with pytest.warns(UserWarning) as rec:
        path, loaded = ck.find_resume_checkpoint(run, expected())
    assert path.name == ck.step_name(4) and loaded["global_step"] == 4
    messages = " | ".join(str(w.message) for w in rec)
    assert "step-0000006.ckpt is corrupt or incomplete: it is truncated" in messages
    assert "resuming from step-0000004.ckpt (step 4) instead of the newer step-0000006.ckpt" in messages


def test_resume_errors_are_one_line(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        ck.find_resume_checkpoint(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no checkpoint in .* to resume from"):
        ck.find_resume_checkpoint(tmp_path / "empty")
    run = write_run(tmp_path, steps=(2,))
    with pytest.raises(UserError, match=r"written by another model: method='simclr' \(this run: 'byol'\)"):
        ck.find_resume_checkpoint(run, expected(method="byol"))
    with pytest.raises(UserError, match=r"width=8 \(this run: 16\)"):
        ck.find_resume_checkpoint(run, expected(width=16))
    only = run / ck.CKPT_DIR / ck.step_name(2)
    only.write_bytes(b"garbage")
    with pytest.warns(UserWarning), pytest.raises(UserError, match=r"no complete checkpoint .*all 1 are corrupt") as e:
        ck.find_resume_checkpoint(run)
    assert "\n" not in str(e.value)


class Evil:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("with_record", [True, False])
def test_malicious_checkpoint_is_refused_and_its_code_never_runs(tmp_path, with_record):
    marker = tmp_path / "pwned"
    path = tmp_path / "run" / ck.CKPT_DIR / ck.step_name(9)
    path.parent.mkdir(parents=True)
    evil = fake_ckpt(9) | {"payload": Evil(marker)}
    torch.save(evil, path)  # a real torch checkpoint, with a pickled call to os.system inside
    if with_record:  # a forger can write a matching record: the checksum passes, weights_only still refuses
        ck.save_checkpoint(evil, path)
        with pytest.raises(UserError, match=r"refusing to load .*system.* would run code") as e:
            ck.find_resume_checkpoint(tmp_path / "run", expected())
    else:
        with pytest.raises(UserError, match=r"refusing to load .*system") as e:
            ck.load_checkpoint(path, check=False)
    assert "\n" not in str(e.value)
    assert not marker.exists()
    with pytest.raises(UserError, match="refusing to load"):
        ck.AtomicCheckpointIO().load_checkpoint(path) if with_record else ck.load_checkpoint(path, check=False)
    assert not marker.exists()
    # an old-style plain pickle (not a torch zip) is refused too
    path.write_bytes(pickle.dumps(Evil(marker)))
    with pytest.raises(UserError, match="refusing to load"):
        ck.load_checkpoint(path, check=False)
    assert not marker.exists()


def _failing_open(err_no, after_bytes=0):
    real_open = open

    class Failing:
        def __init__(self, f):
            self.f, self.written = f, 0

        def write(self, data):
            if self.written + len(data) > after_bytes:
                self.f.write(bytes(data)[:max(after_bytes - self.written, 0)])
                raise OSError(err_no, os.strerror(err_no))
            self.written += len(data)
            return self.f.write(data)

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    return lambda path, mode="r", *a, **k: Failing(real_open(path, mode, *a, **k))


@pytest.mark.parametrize("err_no, words", [(errno.ENOSPC, "No space left on device"),
                                           (errno.EACCES, "Permission denied"),
                                           (errno.EROFS, "Read-only file system")])
def test_disk_full_or_read_only_mid_save_leaves_no_half_file(tmp_path, monkeypatch, err_no, words):
    run = write_run(tmp_path, steps=(2,))
    folder = run / ck.CKPT_DIR
    before = sorted(p.name for p in folder.iterdir())
    monkeypatch.setattr(ck.files, "open", _failing_open(err_no, after_bytes=500), raising=False)
    with pytest.raises(UserError, match=f"cannot write checkpoint .*step-0000004.ckpt: {words}; .*earlier checkpoints "
                                        "are kept") as e:
        ck.save_checkpoint(fake_ckpt(4), folder / ck.step_name(4))
    assert "\n" not in str(e.value)
    assert sorted(p.name for p in folder.iterdir()) == before  # nothing half-written, nothing lost
    monkeypatch.undo()
    assert ck.find_resume_checkpoint(run)[0].name == ck.step_name(2)


def test_prune_keeps_the_newest_and_last(tmp_path):
    run = write_run(tmp_path, steps=(1, 2, 3, 10))
    ck.save_checkpoint(fake_ckpt(10), run / ck.CKPT_DIR / ck.LAST)
    ck.prune(run / ck.CKPT_DIR, keep=2)
    names = sorted(p.name for p in (run / ck.CKPT_DIR).glob("*.ckpt"))
    assert names == ["last.ckpt", ck.step_name(3), ck.step_name(10)]
    assert len(list((run / ck.CKPT_DIR).glob("*.json"))) == 3
    assert [p.name for p in ck.candidates(run / ck.CKPT_DIR)] == ["last.ckpt", ck.step_name(10), ck.step_name(3)]


def test_rng_states_round_trip_through_a_weights_only_checkpoint(tmp_path):
    from sharpshift.data.views import ViewGenerator, ViewParams

    params = [ViewParams((0.2, 1.0), (0.75, 1.33), 0.5, 0.8, 0.4, 0.4, 0.2, 0.1, 0.2, 0.5, (0.1, 2.0), 0.0)]
    views = ViewGenerator(params, [0.5], [0.25], 8, seed=3)
    holder = torch.nn.Module()
    holder.views = views
    images = torch.randint(0, 256, (4, 1, 8, 8), dtype=torch.uint8)
    views(images)  # advance the generator
    ck.save_checkpoint({"rng": ck.capture_rng(holder)}, tmp_path / "r.ckpt")
    draws = lambda: (random.random(), np.random.rand(), torch.rand(1), views(images)[0])  # noqa: E731
    first = draws()
    state = ck.load_checkpoint(tmp_path / "r.ckpt")["rng"]
    assert ck.restore_rng(state, holder) == []
    second = draws()
    assert first[0] == second[0] and first[1] == second[1]
    assert torch.equal(first[2], second[2]) and torch.equal(first[3], second[3])


def test_sampler_resumes_mid_epoch_with_the_same_order():
    full = ShardedBatchSampler(100, 10, seed=7, rank=1, world=2)
    full.set_epoch(3)
    straight = list(full)
    state = full.position(2)
    assert state == {"epoch": 3, "served": 2}
    resumed = ShardedBatchSampler(100, 10, seed=7, rank=1, world=2)
    resumed.load_position(state)
    resumed.set_epoch(3)  # Lightning sets the same epoch again: the skip survives it
    assert [b.tolist() for b in resumed] == [b.tolist() for b in straight[2:]]
    assert [b.tolist() for b in resumed] == [b.tolist() for b in straight]  # the skip applies once
    assert full.position(len(full)) == {"epoch": 4, "served": 0}  # a finished epoch points at the next


# --- non-finite losses ------------------------------------------------------------------------------------
@pytest.fixture
def nan_at_step_3(monkeypatch):
    from sharpshift.methods import METHODS

    cls = METHODS["simclr"]
    original = cls.compute_loss
    calls = []

    def compute_loss(self, ctx):  # the 4th batch (step 3) gives NaN, once
        out = original(self, ctx)
        calls.append(self.global_step)
        if len(calls) == 4:
            out.loss = out.loss * float("nan")
            out.terms["nt_xent"] = out.loss.detach()
        return out

    monkeypatch.setattr(cls, "compute_loss", compute_loss)


def test_nonfinite_loss_stops_naming_step_and_term_and_keeps_the_last_good_checkpoint(tmp_path, nan_at_step_3):
    from sharpshift.train import pretrain

    cfg = tiny_config("simclr", "trainer.max_steps=6", "trainer.checkpoint_every_n_steps=2", out_dir=str(tmp_path))
    with pytest.raises(UserError) as e:
        pretrain(cfg)
    msg = str(e.value)
    assert msg.startswith("non-finite loss at step 3: term 'nt_xent' is nan") and "\n" not in msg
    assert "trainer.on_nonfinite=skip" in msg and "the last checkpoint before it is" in msg and "step-0000002.ckpt" in msg
    (run,) = tmp_path.iterdir()
    names = sorted(p.name for p in (run / ck.CKPT_DIR).glob("*.ckpt"))
    assert names == [ck.step_name(2)]  # no last.ckpt of the broken state
    weights = ck.load_checkpoint(run / ck.CKPT_DIR / ck.step_name(2))["state_dict"]
    assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())


def test_nonfinite_loss_skipped_when_configured(tmp_path, nan_at_step_3):
    from sharpshift.train import pretrain

    cfg = tiny_config("simclr", "trainer.max_steps=5", "trainer.on_nonfinite=skip", out_dir=str(tmp_path))
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        run = pretrain(cfg)
    assert any("skipped step 3: term 'nt_xent' is nan (1 skipped)" in str(w.message) for w in rec)
    summary = json.loads((run / "train.json").read_text())
    assert summary["steps"] == 5 and summary["skipped_nonfinite_steps"] == 1
    weights = ck.load_checkpoint(run / ck.CKPT_DIR / ck.LAST)["state_dict"]
    assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())


def test_checkpoint_of_another_model_shape_is_refused(tmp_path):
    from sharpshift.data.registry import load_dataset
    from sharpshift.train import build_module

    cfg = tiny_config("simclr")
    module = build_module(cfg, load_dataset("digits", "train"))
    state = dict(module.state_dict())
    state["projector.0.weight"] = torch.zeros(3, 3)
    with pytest.raises(UserError, match=r"does not fit this run's model \(1 mismatches, first: 'projector.0.weight'"):
        ck.check_state_matches(state, module, tmp_path / "x.ckpt")


@pytest.mark.parametrize("method, overrides, needed", [
    ("moco", [], ["queue", "queue_ptr", "target_backbone.features.0.weight", "target_projector.0.weight"]),
    ("byol", ["mesa.enabled=true"], ["target_backbone.features.0.weight", "regularisers.0.teacher.backbone."]),
    ("simclr", ["amcl.enabled=true"], ["amcl_phi."]),
    ("simclr", ["saf.enabled=true"], ["regularisers.0.past", "regularisers.0.written"]),
    ("simclr", ["dsa.enabled=true", "dsa.prior=random"], ["regularisers.0.adjuster."]),
])
def test_checkpointed_module_state_holds_every_addon(method, overrides, needed):
    """What a checkpoint holds is the module's state_dict: EMA targets, queues, SAF's buffer (a registered,
    persistent buffer), AMCL's temperature net, MESA's teacher, DSA's adjuster."""
    from sharpshift.data.registry import load_dataset
    from sharpshift.train import build_module

    cfg = tiny_config(method, *overrides)
    keys = list(build_module(cfg, load_dataset("digits", "train")).state_dict())
    for prefix in needed:
        assert any(k.startswith(prefix) for k in keys), (prefix, keys[-8:])


def test_no_code_path_unpickles_files_except_the_guarded_ones():
    """Every torch.load in the package is weights_only=True (checkpoints go through sharpshift.checkpoint;
    weights are safetensors); the only pickle reader is the CIFAR loader's allow-listed Unpickler."""
    import ast
    from pathlib import Path

    import sharpshift

    root = Path(sharpshift.__file__).parent
    offenders = []
    for path in root.rglob("*.py"):
        rel = path.relative_to(root).as_posix()
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and isinstance(node.func.value, ast.Name)):
                continue
            name = f"{node.func.value.id}.{node.func.attr}"
            safe = any(k.arg == "weights_only" and getattr(k.value, "value", None) is True for k in node.keywords)
            if name == "torch.load" and not safe:
                offenders.append(f"{rel}:{node.lineno} torch.load without weights_only=True")
            if name in ("pickle.load", "pickle.loads", "np.load", "numpy.load") and rel != "data/cifar.py":
                offenders.append(f"{rel}:{node.lineno} {name}")
    assert not offenders
