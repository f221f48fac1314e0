"""Run many `sharpshift ...` command lines, each in its own process, paying for the imports once.

`python tests/cli_driver.py JOBS.json RESULTS.json`: imports the CLI and the training stack, then for every
job forks a child that runs the real entry point (`sharpshift.cli.main`) with the job's argv, working
folder and environment, its stdout/stderr going to files, and records the child's exit status. A child
is a separate process like `sharpshift ...` from a shell, minus the 3-10 s of importing torch and Lightning
again (tests/test_bad_inputs.py checks that both give the same output).

A job may ask its child to simulate a full disk: `"enospc_after_bytes": N` makes every checkpoint write
fail with OSError(ENOSPC) once N bytes of a file are written.
"""
from __future__ import annotations

import errno
import json
import os
import sys
import time
import traceback


def failing_open(after_bytes: int):
    real_open = open

    class DiskFull:
        def __init__(self, f):
            self.f, self.written = f, 0

        def write(self, data):
            if self.written + len(data) > after_bytes:
                self.f.write(bytes(data)[:max(after_bytes - self.written, 0)])
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            self.written += len(data)
            return self.f.write(data)

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    return lambda path, mode="r", *a, **k: DiskFull(real_open(path, mode, *a, **k))


def child(job: dict) -> int:
    import sharpshift.checkpoint.files
    import sharpshift.cli

    out = os.open(job["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    err = os.open(job["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(out, 1)
    os.dup2(err, 2)
    os.chdir(job["cwd"])
    os.environ.update(job.get("env", {}))
    if "enospc_after_bytes" in job:
        sharpshift.checkpoint.files.open = failing_open(job["enospc_after_bytes"])
    sys.argv = ["sharpshift", *job["args"]]
    try:
        sharpshift.cli.main()
        return 0
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:  # noqa: BLE001  (a crash is a test failure: show it)
        traceback.print_exc()
        return 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()


def main() -> None:
    jobs = json.loads(open(sys.argv[1]).read())
    os.environ["SHARPSHIFT_NO_ENV_TUNING"] = "1"  # no re-exec: the child must stay this process
    os.environ.pop("SHARPSHIFT_RUN_DIR", None)
    import sharpshift.cli  # noqa: F401  (heavy imports once, inherited by every child)
    import sharpshift.train  # noqa: F401

    results = {}
    for job in jobs:
        t0 = time.perf_counter()
        pid = os.fork()
        if pid == 0:
            os._exit(child(job))
        _, status = os.waitpid(pid, 0)
        results[job["id"]] = {"code": os.waitstatus_to_exitcode(status), "seconds": time.perf_counter() - t0}
    with open(sys.argv[2], "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
