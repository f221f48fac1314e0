"""Settings that must be in the environment before Python (and OpenMP) start: the CLI re-executes itself once
with them. Measured in docs/benchmarks.md ("CPU settings"):

- glibc's mmap/trim thresholds raised: large-tensor allocations stop returning memory to the kernel after
  every step (1.4-1.8x per step).
- OpenMP's wait policy: by default idle OpenMP threads spin, which is fastest on idle cores, but when another
  job shares the cores the spinning threads take turns with it and a step slows 3x or more.
  OMP_WAIT_POLICY=PASSIVE (threads sleep) costs ~20% on idle cores and halves that slowdown, so it is set
  only when other processes already keep the cores busy as the command starts.
"""
from __future__ import annotations

import os
import sys
import time

MALLOC_TUNING = "glibc.malloc.mmap_threshold=4294967296:glibc.malloc.trim_threshold=17179869184"
THREAD_NOTE_ENV = "SHARPSHIFT_THREAD_SETTING"  # what was decided, for pretrain's first lines and train.json
BUSY_ENV = "SHARPSHIFT_CPU_BUSY"  # "1" when other processes kept the cores busy at start (no timing is cached then)
BUSY_CORES = 0.5  # other processes using at least this many cores at start -> passive OpenMP threads
SAMPLE_SECONDS = 0.25
COMPUTING_COMMANDS = ("pretrain", "supervised", "evaluate", "diagnose", "bench")


def cpu_times() -> tuple[int, int] | None:
    """(busy, total) jiffies over all CPUs since boot, from /proc/stat; None where it cannot be read."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


def busy_cores(seconds: float = SAMPLE_SECONDS) -> float | None:
    """How many cores other processes keep busy, sampled while this one sleeps."""
    before = cpu_times()
    time.sleep(seconds)
    after = cpu_times()
    if before is None or after is None or after[1] == before[1]:
        return None
    return (after[0] - before[0]) / (after[1] - before[1]) * (os.cpu_count() or 1)


def wait_policy(environ: dict, busy: float | None) -> tuple[dict, str]:
    """(variables to add, a note saying what was decided and why)."""
    if environ.get("OMP_WAIT_POLICY"):
        return ({BUSY_ENV: "1"} if busy is not None and busy >= BUSY_CORES else {},
                f"OMP_WAIT_POLICY={environ['OMP_WAIT_POLICY']} (set by the user)")
    if busy is None:
        return {}, "OpenMP threads spin (CPU load unknown)"
    if busy >= BUSY_CORES:
        return ({"OMP_WAIT_POLICY": "PASSIVE", BUSY_ENV: "1"},
                f"OMP_WAIT_POLICY=PASSIVE: other processes kept {busy:.1f} cores busy at start")
    return {}, f"OpenMP threads spin: the cores were idle at start ({busy:.1f} busy)"


def tuned_environment(environ: dict, argv: list[str]) -> tuple[dict, bool]:
    """(the environment to run with, whether the process must re-execute to get it)."""
    if THREAD_NOTE_ENV in environ or environ.get("SHARPSHIFT_NO_ENV_TUNING") == "1" \
            or not sys.platform.startswith("linux"):
        return environ, False  # done already (this is the re-executed process), or not wanted
    add = {}
    if not environ.get("GLIBC_TUNABLES") and environ.get("SHARPSHIFT_NO_MALLOC_TUNING") != "1":
        add["GLIBC_TUNABLES"] = MALLOC_TUNING
    computing = bool(argv[1:2]) and argv[1] in COMPUTING_COMMANDS
    policy, note = wait_policy(environ, busy_cores()) if computing else ({}, "not a training command")
    add.update(policy)
    return dict(environ, **add, **{THREAD_NOTE_ENV: note}), bool(add)


def reexec_tuned() -> None:
    env, reexec = tuned_environment(dict(os.environ), sys.argv)
    if reexec:
        os.execve(sys.executable, [sys.executable, "-m", "sharpshift.cli", *sys.argv[1:]], env)
    os.environ.update(env)
