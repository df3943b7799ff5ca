"""``--nproc N``: local ranks under torchrun as a subprocess, the caller's signals passed on, one outcome back.

    check_output_file(report, "--report")        # in the parent, before any rank starts: exit 2 (outputs) ...
    check_input_file(init_from, "--init-from")   # ... or exit 3 (inputs), naming the path
    sys.exit(launch("galvatron_run", args, nproc=4, stop_timeout_s=300))

    @exits_cleanly
    @reports_to_launcher                         # each rank's command: its exit code and message go to the parent
    def main(...): ...

``launch`` runs torchrun (``torch.distributed.run --standalone``; its own ``main``, in a child interpreter: this
module imports no torch) in a session of its own, with ``GALVATRON_LAUNCH_DIR`` naming a fresh directory. Every
rank decorated with ``reports_to_launcher`` writes ``rank<R>.json`` there: its pid when it starts, its exit code
and message when it ends, and prints nothing itself; torchrun writes ``torchrun.json`` (the ranks it saw die, or
the signal it got) instead of its traceback. The parent then prints one line and exits with the ranks' code:

* a rank's own failure: its message (the first in time) and exit code;
* a rank that died without a message (killed, crashed): exit 1 naming the rank and its signal or exit code;
* SIGTERM, SIGINT or SIGHUP to the parent: SIGTERM goes to torchrun, which passes it to every rank; the ranks stop
  at the next step boundary (after a checkpoint) and the parent exits 0 after them. A rank that has not stopped
  within ``stop_timeout_s`` is killed by torchrun, and a stop that is not clean exits 128 + the signal's number.
  A second signal goes to the ranks directly: they stop at once. SIGTERM sent to torchrun itself (e.g. by a
  scheduler) is a stop too; on Linux torchrun also gets SIGTERM if the parent dies, so no rank outlives it.
"""
from __future__ import annotations

import functools
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

from .documents import DocumentError, GalvatronError, UsageError, output_path

LAUNCH_DIR = "GALVATRON_LAUNCH_DIR"
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)

# libkineto, the CPU profiler galvatron-run's ranks measure memory with, writes "USDT:... profiler_start" and
# "profiler_stop" to stderr at every profiled step. USDT is its highest severity (5, above ERROR 4): only level 6
# hides it, and libkineto's own ERROR lines with it. Those come from its config file, daemon, trace files and GPU
# buffers, none of which the ranks' in-memory CPU profiling uses unless the user configured libkineto (then it is
# left as the user set it); Python's, torch's and gloo's messages do not pass through libkineto.
QUIET_KINETO_LOG_LEVEL = "6"
KINETO_SETTINGS = ("KINETO_LOG_LEVEL", "KINETO_CONFIG", "KINETO_USE_DAEMON")

# The child torchrun: torch's own launcher, reporting to the launch directory instead of logging and raising.
_TORCHRUN = """\
# torchrun, reporting to galvatron_contracts.launch
import json, logging, os, sys
from torch.distributed.elastic.multiprocessing.api import SignalException
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.run import main

logging.disable(logging.CRITICAL)
report = os.path.join(os.environ["GALVATRON_LAUNCH_DIR"], "torchrun.json")
try:
    main(sys.argv[1:])
except ChildFailedError as e:
    died = {r: {"exit_code": f.exitcode, "signal": f.signal_name() if f.exitcode < 0 else None}
            for r, f in e.failures.items()}
    with open(report, "w") as f:
        json.dump({"failures": died}, f)
    sys.exit(1)
except SignalException as e:
    with open(report, "w") as f:
        json.dump({"signal": e.sigval.name}, f)
    sys.exit(128 + int(e.sigval))
"""


# --- the paths ranks will use, checked in the parent ---------------------------------------------------------------

def _check_creatable(directory: Path, what: str) -> None:
    """A file can be created in ``directory`` (or, while it does not exist, in its nearest existing ancestor)."""
    existing = next((p for p in [directory, *directory.parents] if p.exists()), Path("."))
    if not existing.is_dir():
        raise UsageError(f"{what}: {existing} is not a directory")
    try:
        fd, probe = tempfile.mkstemp(dir=existing, prefix=".galvatron-write-check-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise UsageError(f"{what}: cannot create files in {existing} ({e.strerror or e})") from None


def check_output_file(path: str | os.PathLike, option: str) -> None:
    """UsageError (exit 2) now, naming the option and the path, when ``path`` could not be written at the end: not
    a regular file (``output_path``), or a directory where no file can be created."""
    try:
        target = output_path(path)
    except UsageError as e:
        raise UsageError(f"{option} {e}") from None
    _check_creatable(target.parent, f"{option} {path}")


def check_output_dir(path: str | os.PathLike, option: str) -> None:
    """UsageError (exit 2) unless ``path`` is a directory where files can be created, or can become one."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UsageError(f"{option} {path}: not a directory")
    _check_creatable(path, f"{option} {path}")


def check_input_file(path: str | os.PathLike, option: str) -> None:
    """DocumentError (exit 3) naming the path unless it is a file this process can read."""
    try:
        with open(path, "rb"):
            pass
    except FileNotFoundError:
        raise DocumentError(str(path), f"no such file (given as {option})") from None
    except IsADirectoryError:
        raise DocumentError(str(path), f"a directory, not a file (given as {option})") from None
    except OSError as e:
        raise DocumentError(str(path), f"cannot read ({e.strerror or e}; given as {option})") from None


# --- in each rank ----------------------------------------------------------------------------------------------------

def launched() -> bool:
    """True in a rank that ``launch`` started (it reports to the parent instead of printing its error)."""
    return bool(os.environ.get(LAUNCH_DIR)) and "RANK" in os.environ


def report(**fields) -> bool:
    """Write this rank's ``rank<R>.json`` (pid, time and ``fields``) for the parent; False if not launched or the
    file could not be written (then the rank says what happened itself)."""
    if not launched():
        return False
    rank = int(os.environ["RANK"])
    path = Path(os.environ[LAUNCH_DIR]) / f"rank{rank}.json"
    try:
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps({"rank": rank, "pid": os.getpid(), "at": time.time(), **fields}))
        os.replace(tmp, path)
    except OSError:
        return False
    return True


def reports_to_launcher(fn: Callable) -> Callable:
    """Decorate a rank's command, inside ``exits_cleanly``: in a launched rank, a GalvatronError goes to the parent
    (which prints it once for all ranks) and the rank exits with its code silently; any other exception is reported
    as exit 1 and raised as before. Outside ``launch`` the command runs unchanged."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if not launched():
            return fn(*args, **kwargs)
        report(state="running")
        try:
            result = fn(*args, **kwargs)
        except GalvatronError as e:
            if report(exit_code=e.exit_code, message=str(e)):
                sys.exit(e.exit_code)
            raise
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            report(exit_code=code, message=e.code if isinstance(e.code, str) else None)
            raise
        except Exception as e:
            report(exit_code=1, message=f"{type(e).__name__}: {e}")
            raise
        report(exit_code=0)
        return result

    return wrapper


def exit_rank(code: int = 0) -> NoReturn:
    """End this rank's process now with ``code``: flush stdout and stderr, then ``os._exit`` (no interpreter
    finalization). Call it last, after the rank's outputs are written and its process groups destroyed.

    Why: a rank that leaves through the interpreter's normal exit can abort there with "terminate called without an
    active exception" (SIGABRT), about once in 30-50 runs of a 2-rank FSDP job on this 2-core machine (faulthandler
    showed no Python frame left). Process-group objects still referenced at exit (FSDP states, DeviceMeshes, group
    caches: destroy_process_group only drops its own maps) keep gloo's worker threads alive while the interpreter
    finalizes; a worker that then drops the last reference to a tensor with a Python object needs the GIL, which a
    finalizing interpreter answers by ending the thread, and that unwinds through a noexcept frame (the mechanism
    is described in pytorch/pytorch#179291). torchrun then reports a finished run as failed. Skipping
    finalization removes the window; nothing a rank needs runs in it (files are closed, reports written)."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError, AttributeError):  # closed, or the terminal is gone
            pass
    os._exit(code)


def run_as_rank(main: Callable[[], object]) -> NoReturn:
    """Run a command's ``main`` (a click command in standalone mode, or any callable; an int it returns is the exit
    code) and end the process with its exit code: in a torchrun rank (RANK set) through ``exit_rank``, elsewhere
    through the normal exit."""
    try:
        result = main()
        code = result if isinstance(result, int) else 0
    except SystemExit as e:
        if isinstance(e.code, int) or e.code is None:
            code = e.code or 0
        else:
            print(e.code, file=sys.stderr)
            code = 1
    except KeyboardInterrupt:
        code = 128 + signal.SIGINT
    except BaseException:
        import traceback
        traceback.print_exc()
        code = 1
    if "RANK" not in os.environ:
        sys.exit(code)
    exit_rank(code)


# --- in the parent ---------------------------------------------------------------------------------------------------

def _say(text: str) -> None:
    try:
        print(text, file=sys.stderr, flush=True)
    except (OSError, ValueError):  # the terminal is gone (SIGHUP): the exit code still says it
        pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie nobody reaps (torchrun died first, in a container without an init) has stopped
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _parent_death_signal() -> Callable[[], None] | None:
    """For the child before exec (Linux): SIGTERM it when the parent dies, so torchrun stops its ranks then too.
    Resolved here, in the parent: the child between fork and exec only calls it."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    prctl = ctypes.CDLL(None, use_errno=True).prctl
    return lambda: prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG


class _Launch:
    """One supervised torchrun: its launch directory, the ranks' reports, the signals received."""

    def __init__(self, directory: Path, ranks: int):
        self.dir, self.ranks = directory, ranks
        self.proc: subprocess.Popen | None = None
        self.signal: str | None = None

    def reports(self) -> dict[int, dict]:
        out = {}
        for path in self.dir.glob("rank*.json"):
            try:
                doc = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            out[doc["rank"]] = doc
        return out

    def running_ranks(self) -> list[int]:
        """Pids of ranks that started and have neither reported an end nor died."""
        return [r["pid"] for r in self.reports().values() if "exit_code" not in r and _alive(r["pid"])]

    def on_signal(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if self.signal is None:
            self.signal = name
            _say(f"launcher: {name} received: the ranks stop after this step, with a checkpoint where one is "
                 "configured (send it again to stop at once)")
            self.stop()
            return
        _say(f"launcher: {name} received again: stopping the ranks at once")
        self.signal_ranks()

    def stop(self) -> None:
        """SIGTERM to torchrun (which passes it to every rank), or to the ranks once torchrun has gone."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        else:
            self.signal_ranks()

    def signal_ranks(self, sig: signal.Signals = signal.SIGTERM) -> None:
        for pid in self.running_ranks():
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    def wait_for_ranks(self, timeout_s: float) -> None:
        """After torchrun: no rank it started may outlive the parent (killed after ``timeout_s``)."""
        deadline = time.monotonic() + timeout_s
        while self.running_ranks() and time.monotonic() < deadline:
            time.sleep(0.1)
        self.signal_ranks(signal.SIGKILL)

    def outcome(self, returncode: int) -> int:
        """Print the one line that says how the run ended; return the exit code."""
        reports = self.reports()
        try:
            torchrun = json.loads((self.dir / "torchrun.json").read_text())
        except (OSError, ValueError):
            torchrun = {}
        stop = self.signal or torchrun.get("signal")
        unreported = sorted(set(range(self.ranks)) - {r for r, d in reports.items() if "exit_code" in d})
        failed = sorted((d for d in reports.values() if d.get("exit_code")), key=lambda d: d["at"])
        died = {int(r): f for r, f in torchrun.get("failures", {}).items()
                if int(r) not in reports or "exit_code" not in reports[int(r)]}
        deaths = "; ".join(f"rank {r} " + (f"was killed by {f['signal']}" if f["signal"] else
                                           f"exited with code {f['exit_code']}") + " without a message"
                           for r, f in sorted(died.items()))
        if stop and unreported and returncode != 0:
            _say(f"error: stopped by {stop} before rank(s) {', '.join(map(str, unreported))} could stop at a step "
                 "boundary: nothing was saved for this stop" + (f" ({deaths})" if deaths else ""))
            return 128 + signal.Signals[stop].value
        if failed:
            first = failed[0]
            message = first.get("message") or f"rank {first['rank']} exited with code {first['exit_code']}"
            if len({d.get("message") for d in failed}) > 1:
                message += f" (rank {first['rank']}, the first of {len(failed)} ranks to fail)"
            _say(f"error: {message}" + (f"; {deaths}" if deaths else ""))
            return first["exit_code"]
        if stop:
            _say(f"launcher: stopped by {stop}: every rank stopped at a step boundary")
            return 0
        if returncode != 0:
            _say(f"error: {deaths or f'torchrun exited with code {returncode}'}; see the output above")
            return 1
        return 0


def supervise(cmd: Sequence[str], ranks: int, *, stop_timeout_s: float = 30.0, env: dict | None = None) -> int:
    """Run ``cmd`` (a torchrun command line) as described above and return the exit code the caller should exit
    with; ``ranks``: how many ranks it starts (each reports once)."""
    with tempfile.TemporaryDirectory(prefix="galvatron-launch-") as directory:
        run = _Launch(Path(directory), ranks)
        env = {**os.environ, **(env or {}), LAUNCH_DIR: directory}
        previous = {s: signal.signal(s, run.on_signal) for s in STOP_SIGNALS}
        try:
            run.proc = subprocess.Popen(list(cmd), env=env, start_new_session=True,
                                        preexec_fn=_parent_death_signal())
            if run.signal:  # a signal before torchrun existed
                run.stop()
            returncode = run.proc.wait()
            run.wait_for_ranks(stop_timeout_s)
        finally:
            if run.proc is not None and run.proc.poll() is None:  # the parent itself failed: take torchrun along
                run.proc.send_signal(signal.SIGTERM)
                run.proc.wait()
            for s, handler in previous.items():
                signal.signal(s, handler)
        return run.outcome(returncode)


def launch(module: str, args: Sequence[str], nproc: int, *, stop_timeout_s: float = 30.0) -> int:
    """``python -m torch.distributed.run --standalone --nproc-per-node nproc -m module args``, supervised; returns
    the exit code. ``stop_timeout_s``: how long the ranks get to stop (finish the step, save) after a signal.
    The ranks run with one OpenMP thread and, unless the caller configured libkineto, without its per-step
    "USDT: profiler_start/stop" lines (QUIET_KINETO_LOG_LEVEL)."""
    cmd = [sys.executable, "-c", _TORCHRUN, "--standalone", f"--nproc-per-node={nproc}", "-m", module, *args]
    env = {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),  # torchrun's default, set: it does not warn
           # its wait between SIGTERM and SIGKILL to the ranks (an older torch ignores it and waits 30 s)
           "TORCH_ELASTIC_SHUTDOWN_TIMEOUT": str(math.ceil(stop_timeout_s))}
    if not any(name in os.environ for name in KINETO_SETTINGS):
        env["KINETO_LOG_LEVEL"] = QUIET_KINETO_LOG_LEVEL
    return supervise(cmd, nproc, stop_timeout_s=stop_timeout_s, env=env)
