"""Faults of a real ``galvatron-run --nproc 2`` (tiny-gpt): every one a documented exit code and one message.

* a path the ranks would use that is wrong: refused by the parent, no rank started (exit 2 for an output, 3 for an
  input or nothing to resume);
* SIGTERM, SIGINT or SIGHUP to the launcher, or SIGTERM to its torchrun: every rank stops at a step boundary after
  a checkpoint, the launcher exits 0 after them, no process of the run is left;
* two runs on one checkpoint directory: the second refused (exit 2) naming the first; the lock dies with its holder;
* a full disk during a save: one line naming the checkpoint and the space it needs (exit 1), nothing left behind;
* --resume with only damaged checkpoints: exit 3 naming each one's fault; --resume-or-start starts from step 0.

Waits follow the run: a test acts when the log line it needs has appeared, and only a hung run meets a deadline.
"""
from __future__ import annotations

import errno
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from torch import nn

from galvatron_contracts.documents import GalvatronError, UsageError
from galvatron_run import checkpoint as ck

SRC = Path(__file__).parent.parent / "src"
ENV = dict(os.environ, PYTHONPATH=str(SRC), OMP_NUM_THREADS="1")
TINY = ["--model", "tiny-gpt", "--global-batch", "4", "--seq-len", "16", "--timeout", "60"]
FOREVER = ["--steps", "1000000", "--warmup-steps", "0"]  # a run that ends only when it is stopped
DEADLINE_S = 300  # only a hung run gets here


class Run:
    """``python -m galvatron_run ARGS`` in the background, its stderr collected line by line."""

    def __init__(self, *args: str):
        self.proc = subprocess.Popen([sys.executable, "-m", "galvatron_run", *TINY, *args], env=ENV,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.lines.put(line)
        self.lines.put(None)  # the run closed its stderr: it has ended

    def wait_for(self, needle: str) -> None:
        deadline = time.monotonic() + DEADLINE_S
        while not any(needle in line for line in self.seen):
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                line = None
            if line is None:
                raise AssertionError(f"no {needle!r} in:\n{''.join(self.seen)[-3000:]}")
            self.seen.append(line)

    def finish(self) -> tuple[int, str]:
        code = self.proc.wait(timeout=DEADLINE_S)
        self.reader.join(timeout=DEADLINE_S)
        while (line := self.lines.get_nowait() if not self.lines.empty() else None) is not None:
            self.seen.append(line)
        return code, "".join(self.seen)


@pytest.fixture
def background():
    """Start a ``Run``; one a failed test leaves running is killed at the end (its torchrun then stops the ranks)."""
    runs: list[Run] = []

    def start(*args: str) -> Run:
        runs.append(Run(*args))
        return runs[-1]

    yield start
    for r in runs:
        if r.proc.poll() is None:
            r.proc.kill()
            r.proc.wait()


def run(*args: str) -> tuple[int, str]:
    done = subprocess.run([sys.executable, "-m", "galvatron_run", *TINY, *args], env=ENV, capture_output=True,
                          text=True, timeout=DEADLINE_S)
    return done.returncode, done.stderr


def children() -> dict[int, list[int]]:
    """{pid: child pids} of every process (from /proc)."""
    out: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        out.setdefault(ppid, []).append(int(stat.parent.name))
    return out


def descendants(pid: int) -> list[int]:
    tree, out, todo = children(), [], [pid]
    while todo:
        kids = tree.get(todo.pop(), [])
        out += kids
        todo += kids
    return out


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def no_rank_started(stderr: str) -> bool:
    return "[rank" not in stderr and "torch.distributed" not in stderr


needs_proc = pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="finds the run's processes in /proc")


# --- paths, in the parent ----------------------------------------------------------------------------------------

BAD_PATHS = {  # what is given ({T}: the test's directory, {F}: a file in it), the exit code, the message
    "init-from-missing": (["--init-from", "{T}/model.pt"], 3, "{T}/model.pt: no such file (given as --init-from)"),
    "report-under-a-file": (["-o", "{F}/run.json"], 2, "--report {F}/run.json: not a file path"),
    "checkpoint-dir-under-a-file": (["--checkpoint-dir", "{F}/ckpt"], 2,
                                    "--checkpoint-dir {F}/ckpt: {F} is not a directory"),
    "export-under-a-file": (["--export", "{F}/model.pt"], 2, "--export {F}/model.pt: not a file path"),
    "resume-from-nothing": (["--checkpoint-dir", "{T}/none", "--resume"], 3,
                            "{T}/none: nothing to resume: no such directory (--resume-or-start starts from step 0"),
}


@pytest.mark.parametrize("case", BAD_PATHS)
def test_a_bad_path_is_refused_before_any_rank_starts(tmp_path, case):
    a_file = tmp_path / "a-file"
    a_file.write_text("not a directory")
    given, code, message = BAD_PATHS[case]
    args = [a.format(T=tmp_path, F=a_file) for a in given]
    message = message.format(T=tmp_path, F=a_file)
    got, err = run(*args, "--nproc", "2", *FOREVER)  # refused after the training would never end
    assert got == code, err[-3000:]
    [line] = errors(err)
    assert line.startswith(f"error: {message}"), err[-3000:]
    assert no_rank_started(err) and "Traceback" not in err


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only directory")
def test_an_unwritable_report_directory_is_refused_first(tmp_path):
    (tmp_path / "ro").mkdir(mode=0o500)
    got, err = run("-o", str(tmp_path / "ro" / "run.json"), "--nproc", "2", *FOREVER)
    assert got == 2 and "cannot create files in" in err and no_rank_started(err), err[-3000:]


# --- signals -----------------------------------------------------------------------------------------------------

@needs_proc
@pytest.mark.parametrize("to,sig", [pytest.param(to, sig, id=f"{sig.name}-to-{to}") for to, sig in
                                    [("launcher", signal.SIGTERM), ("launcher", signal.SIGINT),
                                     ("launcher", signal.SIGHUP), ("torchrun", signal.SIGTERM)]])
def test_a_signal_stops_every_rank_at_a_step_boundary(tmp_path, background, to, sig):
    ckpt, report = tmp_path / "ckpt", tmp_path / "run.json"
    r = background("--nproc", "2", *FOREVER, "--checkpoint-dir", str(ckpt), "--save-every", "1000000",
                   "-o", str(report))
    r.wait_for("[rank 0] step 2:")                   # training, both ranks in their loop
    torchrun, *ranks = tree = descendants(r.proc.pid)
    assert len(ranks) == 2 and descendants(torchrun) == ranks
    os.kill(r.proc.pid if to == "launcher" else torchrun, sig)
    code, err = r.finish()
    assert code == 0, err[-3000:]
    assert "Traceback" not in err and errors(err) == []
    deadline = time.monotonic() + 10                 # the bound; in fact they are gone before the launcher
    while any(alive(p) for p in tree) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(alive(p) for p in tree), [p for p in tree if alive(p)]
    stopped = int(re.search(r"stop requested: leaving after step (\d+)", err).group(1))
    assert ck.latest_complete(ckpt) == ckpt / f"step-{stopped}"     # saved at the step boundary it stopped at
    assert ck.read_train_state(ckpt / f"step-{stopped}")["step"] == stopped
    steps = [s["step"] for s in json.loads(report.read_text())["steps"]]
    assert steps == list(range(stopped))             # and reported every step it ran
    assert re.search(r"rank [01]: SIGTERM received: stopping after this step", err)


# --- two runs, one checkpoint directory -------------------------------------------------------------------------

@needs_proc
def test_a_second_run_on_a_checkpoint_directory_is_refused_naming_the_first(tmp_path, background):
    ckpt = tmp_path / "ckpt"
    first = background("--nproc", "2", *FOREVER, "--checkpoint-dir", str(ckpt), "--save-every", "1000000")
    try:
        first.wait_for("[rank 0] step 1:")
        holder = json.loads((ckpt / ck.LOCK).read_text())
        assert holder["pid"] in descendants(first.proc.pid)       # rank 0 of the first run holds it
        code, err = run("--nproc", "2", *FOREVER, "--checkpoint-dir", str(ckpt))
        assert code == 2, err[-3000:]
        assert errors(err) == [f"error: --checkpoint-dir {ckpt}: in use by another run (pid {holder['pid']} on host "
                               f"{holder['host']}, started {holder['started_at']}; lock {ckpt / ck.LOCK}): two runs "
                               "would write the same step-N checkpoints; wait for it to end, or give another "
                               "directory"]
        assert no_rank_started(err)
    finally:
        first.proc.send_signal(signal.SIGTERM)
        code, err = first.finish()
    assert code == 0, err[-3000:]
    assert (ckpt / ck.LOCK).read_text() == ""       # released: the next run may take it
    ck.check_unlocked(ckpt)


def test_the_lock_names_its_holder_and_is_released(tmp_path):
    lock = ck.lock_directory(tmp_path)
    try:
        with pytest.raises(UsageError, match=f"in use by another run \\(pid {os.getpid()} on host ") as e:
            ck.check_unlocked(tmp_path)  # another open file description: flock refuses it even in this process
        assert e.value.exit_code == 2
        with pytest.raises(UsageError, match="in use by another run"):
            ck.lock_directory(tmp_path)
    finally:
        lock.release()
    ck.check_unlocked(tmp_path)
    ck.lock_directory(tmp_path).release()


def test_a_stale_lock_file_does_not_block(tmp_path):
    (tmp_path / ck.LOCK).write_text(json.dumps({"host": "elsewhere", "pid": 1, "started_at": "yesterday"}))
    lock = ck.lock_directory(tmp_path)  # nobody holds the flock: the file is taken over
    assert json.loads((tmp_path / ck.LOCK).read_text())["pid"] == os.getpid()
    lock.release()


def test_the_lock_dies_with_its_holder(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from galvatron_run import checkpoint as ck; "
                               "ck.lock_directory(sys.argv[1]); print('locked', flush=True); time.sleep(600)",
         str(tmp_path)], env=ENV, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "locked\n"
        with pytest.raises(UsageError, match=f"pid {holder.pid} on host "):
            ck.check_unlocked(tmp_path)
    finally:
        holder.kill()
        holder.wait()
    ck.check_unlocked(tmp_path)  # SIGKILL left the file, not the lock


# --- a full disk during a save -----------------------------------------------------------------------------------

@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs (needs root and the right to mount: otherwise skipped; the in-process test below runs)."""
    mount = tmp_path / "small"
    mount.mkdir()
    if not shutil.which("mount"):
        pytest.skip("no mount command here")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({done.stderr.decode().strip()})")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_a_full_disk_during_a_save_is_one_line(small_disk, tmp_path):
    ckpt = small_disk / "ckpt"
    code, err = run("--nproc", "2", "--steps", "2", "--checkpoint-dir", str(ckpt), "-o", str(tmp_path / "run.json"))
    assert code == 1, err[-3000:]
    assert "Traceback" not in err and "Errno" not in err
    [line] = errors(err)                             # once, for both ranks
    assert re.fullmatch(rf"error: cannot save checkpoint {ckpt / 'step-2'}: no space left on the device: it needs "
                        r"more than \d+\.\d MiB \(its tensors alone\), and 1\.0 MiB were free when the save began "
                        r"\(free some space, or give another --checkpoint-dir\)", line), line
    assert sorted(p.name for p in ckpt.iterdir()) == [ck.LOCK]   # nothing complete-looking, nothing half-written
    assert not (tmp_path / "run.json").exists()


def test_a_failed_write_in_a_save_is_one_error_and_leaves_nothing(tmp_path, monkeypatch):
    """The writer raising ENOSPC as a full disk makes it, in one process (no mount needed)."""
    def full(state, path, group):
        (Path(path) / "__0_0.distcp").write_bytes(b"half a shard")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ck, "_dcp_save", full)
    with pytest.raises(GalvatronError) as e:
        ck.save_checkpoint(tmp_path, 7, [nn.Linear(4, 4)])
    assert e.value.exit_code == 1
    assert str(e.value).startswith(f"cannot save checkpoint {tmp_path / 'step-7'}: no space left on the device: it "
                                   "needs more than ")
    assert list(tmp_path.iterdir()) == []

    def denied(state, path, group):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(ck, "_dcp_save", denied)
    with pytest.raises(GalvatronError, match="step-7: PermissionError: \\[Errno 13\\] Permission denied$"):
        ck.save_checkpoint(tmp_path, 7, [nn.Linear(4, 4)])
    assert list(tmp_path.iterdir()) == []


# --- resume with only damaged checkpoints ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    """step-1 and step-2 of a one-process run (checkpoints reshard: the 2-rank runs below resume them)."""
    ckpt = tmp_path_factory.mktemp("saved") / "ckpt"
    code, err = run("--steps", "2", "--checkpoint-dir", str(ckpt), "--save-every", "1")
    assert code == 0, err[-3000:]
    assert [s for s, _ in ck.list_checkpoints(ckpt)] == [1, 2]
    return ckpt


def copy(saved: Path, tmp_path: Path) -> Path:
    shutil.copytree(saved, tmp_path / "ckpt")
    return tmp_path / "ckpt"


def flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_resume_refuses_when_every_checkpoint_is_damaged_in_the_parent(saved, tmp_path):
    ckpt = copy(saved, tmp_path)
    (ckpt / "step-1" / ck.MARKER).unlink()
    shard = ckpt / "step-2" / "__0_0.distcp"
    os.truncate(shard, 100)
    code, err = run("--nproc", "2", *FOREVER, "--checkpoint-dir", str(ckpt), "--resume")
    assert code == 3, err[-3000:]
    assert no_rank_started(err)
    assert err[err.index("error:"):].splitlines() == [
        f"error: {ckpt}: nothing to resume: every checkpoint in it is incomplete or damaged (--resume-or-start "
        "starts from step 0 instead)",
        f"{ckpt}: step-2: __0_0.distcp: 100 bytes, expected {(saved / 'step-2' / '__0_0.distcp').stat().st_size} "
        "(truncated or damaged)",
        f"{ckpt}: step-1: incomplete: no COMPLETE marker (the save was interrupted or is still running)"]


def test_resume_refuses_when_the_ranks_find_every_checkpoint_damaged(saved, tmp_path):
    ckpt = copy(saved, tmp_path)
    for step in (1, 2):
        flip_a_byte(ckpt / f"step-{step}" / "__0_0.distcp")  # sizes intact: only the CRC-32 the ranks check says it
    code, err = run("--nproc", "2", *FOREVER, "--checkpoint-dir", str(ckpt), "--resume")
    assert code == 3, err[-3000:]
    assert "Traceback" not in err and "warning" not in err
    assert err[err.index("error:"):].splitlines() == [  # once, for both ranks
        f"error: {ckpt}: nothing to resume: every checkpoint in it is incomplete or damaged (--resume-or-start "
        "starts from step 0 instead)",
        f"{ckpt}: step-2: __0_0.distcp: CRC-32 mismatch (the file is damaged)",
        f"{ckpt}: step-1: __0_0.distcp: CRC-32 mismatch (the file is damaged)"]


def test_resume_or_start_starts_over_when_nothing_is_usable(saved, tmp_path):
    ckpt = copy(saved, tmp_path)
    for step in (1, 2):
        flip_a_byte(ckpt / f"step-{step}" / "__0_0.distcp")
    code, err = run("--steps", "1", "--checkpoint-dir", str(ckpt), "--resume-or-start", "-o", str(tmp_path / "r.json"))
    assert code == 0, err[-3000:]
    assert f"warning: skipping checkpoint {ckpt / 'step-2'}: __0_0.distcp: CRC-32 mismatch" in err
    assert f"warning: {ckpt}: no usable checkpoint: starting from step 0" in err
    assert [s["step"] for s in json.loads((tmp_path / "r.json").read_text())["steps"]] == [0]


def test_nothing_to_resume_in_one_process(tmp_path):
    with pytest.raises(ck.CheckpointError, match="nothing to resume: it holds no checkpoint") as e:
        ck.check_resumable(tmp_path)
    assert e.value.exit_code == 3
    model = nn.Linear(4, 4)
    assert ck.resume(tmp_path, [model]) is None                      # without required: start from scratch
    with pytest.raises(ck.CheckpointError, match="nothing to resume"):
        ck.resume(tmp_path, [model], required=True)
    ck.save_checkpoint(tmp_path, 3, [model])
    ck.check_resumable(tmp_path)
    assert ck.resume(tmp_path, [model], required=True)["step"] == 3
