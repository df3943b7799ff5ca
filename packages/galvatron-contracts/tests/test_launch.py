"""galvatron_contracts.launch without torch: the path checks, and ``supervise`` over a stand-in for torchrun (a
Python child that starts its ranks and passes SIGTERM on, as torchrun does) whose ranks are ``python -c`` children
decorated with ``reports_to_launcher``."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from galvatron_contracts.documents import DocumentError, UsageError
from galvatron_contracts.launch import check_input_file, check_output_dir, check_output_file, supervise

# torchrun's part: start the ranks, pass SIGTERM on, report the ranks that died as the real one's wrapper does
TORCHRUN = r"""
import json, os, signal, subprocess, sys
ranks = [subprocess.Popen([sys.executable, "-c", sys.argv[2]], env=dict(os.environ, RANK=str(r), BEHAVIOUR=b))
         for r, b in enumerate(sys.argv[1].split(","))]
signal.signal(signal.SIGTERM, lambda s, f: [p.send_signal(s) for p in ranks])
codes = [p.wait() for p in ranks]
died = {r: {"exit_code": c, "signal": signal.Signals(-c).name if c < 0 else None} for r, c in enumerate(codes) if c}
if died:
    with open(os.path.join(os.environ["GALVATRON_LAUNCH_DIR"], "torchrun.json"), "w") as f:
        json.dump({"failures": died}, f)
sys.exit(1 if died else 0)
"""

# a rank: BEHAVIOUR says what it does; 'train' runs until SIGTERM, then stops (exit 0), like a training rank
RANK = r"""
import os, signal, sys, time
from galvatron_contracts.documents import DocumentError, GalvatronError, exits_cleanly
from galvatron_contracts.launch import reports_to_launcher

terms = []
signal.signal(signal.SIGTERM, lambda s, f: terms.append(s))

@exits_cleanly
@reports_to_launcher
def main():
    rank, does = int(os.environ["RANK"]), os.environ["BEHAVIOUR"]
    sys.stdout.write(f"started {rank} {os.getpid()}\n")  # one write: the ranks share the pipe
    sys.stdout.flush()
    if does == "bad-input":
        raise DocumentError("plan.json", "$.layers: expected 4 items")
    if does == "late-failure":
        time.sleep(0.5)
        raise GalvatronError("rank 1: a peer rank exited")
    if does == "killed":
        os.kill(os.getpid(), signal.SIGKILL)
    said = False
    while does in ("train", "stubborn") and len(terms) < (1 if does == "train" else 2):
        if terms and not said:
            sys.stdout.write(f"stopping {rank}\n")
            sys.stdout.flush()
            said = True
        time.sleep(0.02)
    if len(terms) > 1:  # a second signal: stop at once
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)

main()
"""

SUPERVISE = ("import sys; from galvatron_contracts.launch import supervise; "
             "sys.exit(supervise([sys.executable, '-c', sys.argv[1], sys.argv[2], sys.argv[3]], "
             "len(sys.argv[2].split(',')), stop_timeout_s=30))")
ENV = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))


@pytest.fixture
def supervised():
    """Start ``supervise`` over ranks that do ``behaviours`` ('train,ok'); whatever a failed test leaves running is
    killed at the end (SIGKILL to the parent: the stand-in gets SIGTERM from the kernel and stops its ranks)."""
    procs = []

    def start(behaviours: str) -> subprocess.Popen:
        procs.append(subprocess.Popen([sys.executable, "-c", SUPERVISE, TORCHRUN, behaviours, RANK], env=ENV,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        return procs[-1]

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def started(proc: subprocess.Popen, n: int) -> list[int]:
    """The pids of the ranks, once each has said it started (its first line)."""
    return [int(proc.stdout.readline().split()[2]) for _ in range(n)]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def gone_within(pids: list[int], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while any(alive(p) for p in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


# --- outcomes --------------------------------------------------------------------------------------------------------

def test_every_rank_well_is_exit_0(supervised):
    proc = supervised("ok,ok")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0 and errors(err) == [], err


def test_a_ranks_error_comes_back_once_with_its_exit_code(supervised):
    proc = supervised("bad-input,bad-input")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 3, err
    assert errors(err) == ["error: plan.json: $.layers: expected 4 items"]  # once, not once per rank
    assert "Traceback" not in err


def test_the_first_failure_in_time_is_the_message(supervised):
    proc = supervised("bad-input,late-failure")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 3
    assert errors(err) == ["error: plan.json: $.layers: expected 4 items (rank 0, the first of 2 ranks to fail)"]


def test_a_rank_that_dies_without_a_message_is_named(supervised):
    proc = supervised("ok,killed")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert errors(err) == ["error: rank 1 was killed by SIGKILL without a message; see the output above"]


# --- signals -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_a_signal_to_the_parent_stops_every_rank_and_the_parent_exits_after_them(supervised, sig):
    proc = supervised("train,train")
    pids = started(proc, 2)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert f"launcher: {sig.name} received" in err and f"stopped by {sig.name}: every rank stopped" in err
    assert not any(alive(p) for p in pids)  # gone before the parent exited


def test_a_second_signal_stops_the_ranks_at_once(supervised):
    proc = supervised("stubborn,stubborn")  # they ignore the first SIGTERM (a long step) and stop on the second
    pids = started(proc, 2)
    proc.send_signal(signal.SIGTERM)
    assert sorted(proc.stdout.readline() for _ in pids) == ["stopping 0\n", "stopping 1\n"]  # the first reached them
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert "SIGINT received again: stopping the ranks at once" in err
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "error: stopped by SIGTERM before rank(s) 0, 1 could stop at a step boundary" in err
    assert not any(alive(p) for p in pids)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
def test_no_rank_outlives_a_killed_parent(supervised):
    proc = supervised("train,train")
    pids = started(proc, 2)
    proc.kill()  # SIGKILL: no handler runs; torchrun gets SIGTERM from the kernel and stops the ranks
    proc.communicate(timeout=60)
    assert gone_within(pids, 10)


# --- the paths the ranks will use -----------------------------------------------------------------------------------

def test_output_paths_are_checked_before_any_work(tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    check_output_file(tmp_path / "new" / "deeper" / "run.json", "--report")   # directories that will be made
    check_output_file(a_file, "--report")                                     # an existing file is replaced
    check_output_dir(tmp_path / "ckpt", "--checkpoint-dir")
    assert not (tmp_path / "new").exists() and not (tmp_path / "ckpt").exists()  # checked, nothing left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]
    with pytest.raises(UsageError, match=f"--report {a_file}/run.json: not a file path"):
        check_output_file(a_file / "run.json", "--report")
    with pytest.raises(UsageError, match="--report .*: not a regular file \\(a directory\\)"):
        check_output_file(tmp_path, "--report")
    with pytest.raises(UsageError, match=f"--checkpoint-dir {a_file}: not a directory"):
        check_output_dir(a_file, "--checkpoint-dir")
    with pytest.raises(UsageError, match=f"--checkpoint-dir {a_file}/ckpt: {a_file} is not a directory"):
        check_output_dir(a_file / "ckpt", "--checkpoint-dir")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only directory")
def test_a_directory_without_write_permission(tmp_path):
    (tmp_path / "ro").mkdir(mode=0o500)
    with pytest.raises(UsageError, match="--report .*: cannot create files in .*ro \\(Permission denied\\)"):
        check_output_file(tmp_path / "ro" / "run.json", "--report")


def test_input_files_are_checked(tmp_path):
    with pytest.raises(DocumentError, match="model.pt: no such file \\(given as --init-from\\)") as e:
        check_input_file(tmp_path / "model.pt", "--init-from")
    assert e.value.exit_code == 3
    with pytest.raises(DocumentError, match="a directory, not a file"):
        check_input_file(tmp_path, "--init-from")
    (tmp_path / "model.pt").write_bytes(b"x")
    check_input_file(tmp_path / "model.pt", "--init-from")


def test_a_rank_outside_the_launcher_prints_its_own_error():
    env = {k: v for k, v in ENV.items() if k != "GALVATRON_LAUNCH_DIR"}
    done = subprocess.run([sys.executable, "-c", RANK], env={**env, "RANK": "0", "BEHAVIOUR": "bad-input"},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 3 and errors(done.stderr) == ["error: plan.json: $.layers: expected 4 items"]


def test_the_launch_directory_is_removed(capfd):
    code = supervise([sys.executable, "-c", "import os; print(os.environ['GALVATRON_LAUNCH_DIR'])"], 0)
    directory = Path(capfd.readouterr().out.strip())
    assert code == 0 and directory.name.startswith("galvatron-launch-") and not directory.exists()


# a rank's entry point under run_as_rank: it prints (buffered: stdout is a pipe), then ends as BEHAVIOUR says
ENDING = r"""
import atexit, os, sys
from galvatron_contracts.launch import run_as_rank
atexit.register(lambda: print("finalized", flush=True))

def main():
    print("work done")
    behaviour = os.environ["BEHAVIOUR"]
    if behaviour == "return":
        return None
    if behaviour == "return-4":
        return 4
    if behaviour == "exit-3":
        sys.exit(3)
    if behaviour == "exit-message":
        sys.exit("cannot go on")
    raise RuntimeError("a bug")

run_as_rank(main)
"""


@pytest.mark.parametrize("behaviour,code", [("return", 0), ("return-4", 4), ("exit-3", 3), ("exit-message", 1),
                                            ("raise", 1)])
@pytest.mark.parametrize("in_rank", [True, False])
def test_run_as_rank_ends_a_rank_without_finalization(behaviour, code, in_rank):
    env = {k: v for k, v in os.environ.items() if k != "RANK"}
    env.update(BEHAVIOUR=behaviour, **({"RANK": "0"} if in_rank else {}))
    done = subprocess.run([sys.executable, "-c", ENDING], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == code, done.stderr
    # the buffered output was flushed; the interpreter's exit handlers ran only outside a rank
    assert done.stdout.splitlines() == (["work done"] if in_rank else ["work done", "finalized"])
    if behaviour == "exit-message":
        assert done.stderr.strip() == "cannot go on"
    if behaviour == "raise":
        assert "RuntimeError: a bug" in done.stderr and "Traceback" in done.stderr
