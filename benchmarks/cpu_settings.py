"""CPU settings, measured: precision x denormal flushing in one process, and a step with and without a
competing 2-thread job, before and after the CLI's wait-policy setting (sharpshift.process_env).

    .venv/bin/python benchmarks/cpu_settings.py            # writes docs/results/cpu_settings.json

Every figure is the median of the timed steps of sharpshift's own training loop (the demo's SimCLR, batch
256, 28x28, online probe and kNN monitor off). Part 1 runs in this process, the four settings interleaved
over rounds. Part 2 needs a fresh process per setting (OpenMP reads its wait policy once, at start); the
competing job is a second Python process running 2-thread matmuls for the whole measurement.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

OUT = Path("docs/results/cpu_settings.json")
STEPS, ROUNDS = 10, 3
HOG = "import torch, time\ntorch.set_num_threads(2)\na = torch.randn(1024, 1024)\nwhile True: torch.mm(a, a)\n"


def step_times(precision: str, steps: int) -> list[float]:
    from sharpshift.bench.timing import quiet_lightning, run_steps
    from sharpshift.config import load_config
    from sharpshift.data.registry import load_dataset

    train = load_dataset("fashion-mnist", "train").subset(512, seed=0)
    cfg = load_config("default", [f"trainer.precision={precision}", "eval.knn_every_n_epochs=0",
                                  "eval.online_probe=false", "trainer.progress_bar=false"])
    with quiet_lightning(), tempfile.TemporaryDirectory() as tmp:
        return run_steps(cfg, train, steps + 2, Path(tmp)).times[2:]


def precision_and_denormals() -> dict:
    import torch

    times: dict[str, list[float]] = {}
    for _ in range(ROUNDS):
        for precision in ("32", "bf16-mixed"):
            for flush in (False, True):
                torch.set_flush_denormal(flush)
                times.setdefault(f"{precision} flush_denormal={flush}", []).extend(step_times(precision, STEPS))
    torch.set_flush_denormal(False)
    return {k: round(statistics.median(v), 4) for k, v in times.items()}


def one_setting(precision: str, env: dict) -> float:
    """Median step in a fresh process with these variables."""
    code = (f"import statistics, sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import cpu_settings as c; "
            f"print(statistics.median(c.step_times({precision!r}, {STEPS})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    return round(float(out.stdout.strip().splitlines()[-1]), 4)


def contention() -> dict:
    from sharpshift.process_env import MALLOC_TUNING

    base = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    base.update(GLIBC_TUNABLES=MALLOC_TUNING, SHARPSHIFT_NO_ENV_TUNING="1")
    rows = {}
    for precision in ("32", "bf16-mixed"):
        for policy in ("default (spin)", "PASSIVE"):
            env = dict(base, **({"OMP_WAIT_POLICY": "PASSIVE"} if policy == "PASSIVE" else {}))
            quiet = one_setting(precision, env)
            hog = subprocess.Popen([sys.executable, "-c", HOG], env=base)
            try:
                time.sleep(1.0)
                busy = one_setting(precision, env)
            finally:
                hog.kill()
                hog.wait()
            rows[f"{precision}, OpenMP {policy}"] = {"quiet_s": quiet, "with_2_thread_job_s": busy,
                                                     "slowdown": round(busy / quiet, 2)}
    return rows


def main() -> None:
    from sharpshift.precision_choice import bf16_units, cpu_name

    import torch

    t0 = time.time()
    result = {"command": "python benchmarks/cpu_settings.py", "cpu": cpu_name(), "bf16_units": bf16_units(),
              "torch": torch.__version__, "threads": torch.get_num_threads(), "steps": STEPS,
              "precision_x_denormals": precision_and_denormals(), "contention": contention()}
    result["seconds"] = round(time.time() - t0, 1)
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    if "GLIBC_TUNABLES" not in os.environ:  # measure as the CLI runs: with its allocator setting
        from sharpshift.process_env import MALLOC_TUNING

        os.execve(sys.executable, [sys.executable, *sys.argv], dict(os.environ, GLIBC_TUNABLES=MALLOC_TUNING))
    main()
