"""The environment the CLI re-executes with: the allocator setting, OpenMP's wait policy by the CPU load at
start, and the program name users typed."""
import subprocess
import sys

from sharpshift import process_env as E


def test_wait_policy_goes_passive_only_when_other_processes_keep_the_cores_busy():
    assert E.wait_policy({}, 1.8)[0] == {"OMP_WAIT_POLICY": "PASSIVE", E.BUSY_ENV: "1"}
    assert "1.8 cores busy" in E.wait_policy({}, 1.8)[1]
    assert E.wait_policy({}, 0.1)[0] == {} and "idle" in E.wait_policy({}, 0.1)[1]
    assert E.wait_policy({}, None)[0] == {}
    kept, note = E.wait_policy({"OMP_WAIT_POLICY": "ACTIVE"}, 2.0)
    assert kept == {E.BUSY_ENV: "1"} and "set by the user" in note


def test_tuned_environment_for_a_training_command(monkeypatch):
    monkeypatch.setattr(E, "busy_cores", lambda: 2.0)
    env, reexec = E.tuned_environment({}, ["sharpshift", "pretrain", "default"])
    assert reexec and env["GLIBC_TUNABLES"] == E.MALLOC_TUNING and env["OMP_WAIT_POLICY"] == "PASSIVE"
    assert env[E.BUSY_ENV] == "1"
    assert "PASSIVE" in env[E.THREAD_NOTE_ENV]
    # the re-executed process finds the note and does not loop
    assert E.tuned_environment(env, ["sharpshift", "pretrain"]) == (env, False)


def test_tuned_environment_leaves_other_commands_and_user_settings_alone(monkeypatch):
    monkeypatch.setattr(E, "busy_cores", lambda: (_ for _ in ()).throw(AssertionError("sampled the load")))
    env, reexec = E.tuned_environment({}, ["sharpshift", "configs"])
    assert reexec and "OMP_WAIT_POLICY" not in env
    env, reexec = E.tuned_environment({"GLIBC_TUNABLES": "x"}, ["sharpshift", "configs"])
    assert not reexec and env["GLIBC_TUNABLES"] == "x"
    assert E.tuned_environment({"SHARPSHIFT_NO_ENV_TUNING": "1"}, ["sharpshift", "pretrain"])[1] is False


def test_busy_cores_reads_the_load_of_the_machine():
    busy = E.busy_cores(0.05)
    assert busy is None or 0 <= busy <= (E.os.cpu_count() or 1) + 1e-6


def test_help_names_the_command_the_user_typed():
    out = subprocess.run([sys.executable, "-c", "import sys; sys.argv = ['sharpshift', '--help']; "
                          "from sharpshift.cli import main; main()"], capture_output=True, text=True)
    assert out.returncode == 0 and "Usage: sharpshift " in out.stdout and "python -m" not in out.stdout
