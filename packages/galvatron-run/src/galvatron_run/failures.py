"""Rank failures: a stalled collective or a hung rank becomes a clear error naming the operation, and SIGTERM, SIGINT
or SIGHUP stops the run at a step boundary (after a checkpoint) instead of killing it mid-step.

    enable_flight_recorder()                              # before init_process_group: lets errors name the collective
    init_process_group(backend, collective_timeout_s)     # dist.init_process_group, safe across torchrun restarts
    watchdog, stop = Watchdog(collective_timeout_s), StopRequest()
    for step in range(start, steps + 1):
        with watchdog.phase(f"step {step}: forward/backward"):
            ...
        if stop.should_stop():                            # collective: every rank, once per step
            save_checkpoint(...); break

A collective that fails inside a phase (gloo's timeout, a peer that died) raises CollectiveError (exit 1) naming the
rank, the phase, the pending collective (from the process group's flight recorder: op, process group, ranks,
sizes) and the backend's message. A phase that outlives its timeout on a rank that is stuck (in a collective NCCL
never returns from, or in its own compute) is ended by the watchdog thread: it prints the same description and
every thread's stack, and exits the process with status 1 so torchrun can restart the job (``--max-restarts``),
which then resumes from the newest complete checkpoint. Under ``galvatron-run --nproc`` (galvatron_contracts.launch)
the parent gets that message too, and passes its own SIGTERM, SIGINT or SIGHUP on to every rank as SIGTERM.
"""
from __future__ import annotations

import contextlib
import faulthandler
import json
import os
import signal
import sys
import threading
import time
from datetime import timedelta

import torch
import torch.distributed as dist

from galvatron_contracts import launch
from galvatron_contracts.documents import GalvatronError

DEFAULT_COLLECTIVE_TIMEOUT_S = 600.0
_COMM_FAILURE_HINTS = ("timed out", "timeout", "connection closed by peer", "connection reset", "broken pipe",
                       "nccl", "gloo", "processgroup", "socket", "peer")


class CollectiveError(GalvatronError):
    """A collective failed or stalled (exit 1: a runtime failure torchrun may restart)."""

    exit_code = 1


def enable_flight_recorder(entries: int = 2000) -> None:
    """Keep the last ``entries`` collectives of every process group (op, group, sizes, state) so that an error can
    name the one that stalled. Call before ``init_process_group``; an explicit TORCH_FR_BUFFER_SIZE wins."""
    os.environ.setdefault("TORCH_FR_BUFFER_SIZE", str(entries))


def init_process_group(backend: str, timeout_s: float = DEFAULT_COLLECTIVE_TIMEOUT_S, **kwargs) -> None:
    """``dist.init_process_group`` with the collective timeout, safe across torchrun restarts.

    Under torchrun (c10d rendezvous, the default) the agent's key-value store outlives a failed attempt, so a
    restarted rank can read a dead rank's address left there and fail to connect ("Connection refused"). Each
    attempt therefore gets its own key prefix. Elsewhere this is the plain env:// initialisation."""
    timeout = timedelta(seconds=timeout_s)
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True" and "store" not in kwargs:
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        client = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world, is_master=False,
                               timeout=timeout)
        store = dist.PrefixStore(f"/galvatron/attempt_{restart_count()}", client)
        dist.init_process_group(backend, store=store, rank=rank, world_size=world, timeout=timeout, **kwargs)
    else:
        dist.init_process_group(backend, timeout=timeout, **kwargs)


def restart_count() -> int:
    """How many times torchrun has restarted this job (0 on the first attempt or outside torchrun)."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)


def pending_collective() -> str | None:
    """The oldest collective this rank started and has not seen finish, from the flight recorder (None if unknown)."""
    try:
        from torch._C._distributed_c10d import _dump_fr_trace_json
        trace = json.loads(_dump_fr_trace_json(True, True))
    except Exception:  # noqa: BLE001 - no recorder, no process group, or an older torch: nothing to name
        return None
    entries = trace.get("entries") or []
    if not entries:
        return None
    pending = [e for e in entries if not e.get("retired") and e.get("state") != "completed"]
    e = pending[0] if pending else entries[-1]
    op = str(e.get("profiling_name", "?")).split(":")[-1]
    pg = e.get("process_group") or ["?", "?"]
    ranks = (trace.get("pg_config", {}).get(pg[1] if len(pg) > 1 else "", {}) or {}).get("ranks")
    if ranks is None:
        ranks = next((c.get("ranks") for c in (trace.get("pg_config") or {}).values()), "?")
    sizes = e.get("input_sizes")
    dtypes = ",".join(sorted(set(e.get("input_dtypes") or [])))
    state = "not finished" if pending else "the last one recorded"
    return (f"{op} #{e.get('collective_seq_id', '?')} on process group {pg[0]} (ranks {ranks}), "
            f"input {sizes} {dtypes}, {state}")


def _is_comm_failure(err: BaseException) -> bool:
    if isinstance(err, getattr(dist, "DistError", ())):
        return True
    return isinstance(err, RuntimeError) and any(h in str(err).lower() for h in _COMM_FAILURE_HINTS)


def describe_failure(phase: str, elapsed_s: float, timeout_s: float | None, err: BaseException | str,
                     rank: int | None = None, cause: str | None = None) -> str:
    """One clear paragraph: which rank, which phase, which collective, what the backend said, what to look at."""
    rank = _rank() if rank is None else rank
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    text = text.split("] ", 1)[-1] if text.startswith("[") else text  # drop the backend's source location
    lower = text.lower()
    if cause is None:
        if "closed by peer" in lower or "connection reset" in lower or "broken pipe" in lower:
            cause = "a peer rank exited (crashed or was killed): see its log"
        elif "timed out" in lower or "timeout" in lower:
            cause = "another rank did not join in time (it hangs, is far behind, or died): see the other ranks' logs"
        else:
            cause = "the collective failed"
    limit = f" (collective timeout {timeout_s:g} s)" if timeout_s else ""
    op = pending_collective()
    return (f"rank {rank}: {cause}; during '{phase}' after {elapsed_s:.1f} s{limit}"
            + (f"; operation: {op}" if op else "") + f"; backend: {text}")


def _rank() -> int:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0"))


class Watchdog:
    """Names what this rank is doing (``with watchdog.phase(name)``) and turns failures in it into clear errors.

    A communication error raised inside a phase becomes CollectiveError. A phase running longer than its timeout
    (``timeout_s``, normally the collective timeout; None for none) plus ``grace_s`` (default: a quarter of it, at
    least 5 s, so that the backend's own timeout, which names the collective, fires first) is reported by a
    background thread, which then calls ``on_timeout(message)``: by default it prints the message and every
    thread's stack to stderr and ends the process with status 1."""

    def __init__(self, timeout_s: float | None = DEFAULT_COLLECTIVE_TIMEOUT_S, *, rank: int | None = None,
                 on_timeout=None, poll_s: float | None = None, grace_s: float | None = None):
        self.timeout_s, self.rank = timeout_s, rank
        self.grace_s = grace_s if grace_s is not None else max(5.0, 0.25 * (timeout_s or 0.0))
        self.on_timeout = on_timeout or self._exit
        self.poll_s = poll_s if poll_s is not None else min(1.0, (timeout_s or 10.0) / 10)
        self._stack: list[list] = []  # [name, start, collective limit, deadline] per open phase, innermost last
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closed = threading.Event()
        self.fired: str | None = None

    @contextlib.contextmanager
    def phase(self, name: str, timeout_s: float | None = ...):
        """Run the block as the named phase; ``timeout_s`` overrides the watchdog's (None: no deadline)."""
        limit = self.timeout_s if timeout_s is ... else timeout_s
        entry = [name, time.monotonic(), limit, None if limit is None else limit + self.grace_s]
        with self._lock:
            self._stack.append(entry)
        self._start()
        try:
            yield
        except GalvatronError:
            raise
        except Exception as e:
            if _is_comm_failure(e):
                raise CollectiveError(describe_failure(name, time.monotonic() - entry[1], limit, e, self.rank)) from e
            raise
        finally:
            with self._lock:
                self._stack.remove(entry)

    @property
    def current(self) -> str | None:
        with self._lock:
            return self._stack[-1][0] if self._stack else None

    def _start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._watch, name="galvatron-watchdog", daemon=True)
            self._thread.start()

    def _watch(self) -> None:
        while not self._closed.wait(self.poll_s):
            now = time.monotonic()
            with self._lock:
                late = [(n, now - t0, d) for n, t0, _, d in self._stack if d is not None and now - t0 > d]
            if late and self.fired is None:
                name, elapsed, deadline = late[0]
                self.fired = describe_failure(
                    name, elapsed, None, f"watchdog: the phase did not finish within {deadline:g} s", self.rank,
                    cause="this rank is stuck (in its own work, or waiting on a rank that is)")
                self.on_timeout(self.fired)

    def _exit(self, message: str) -> None:
        launch.report(exit_code=CollectiveError.exit_code, message=message)
        print(f"error: {message}", file=sys.stderr, flush=True)
        try:
            faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        except (OSError, ValueError):
            pass
        sys.stderr.flush()
        os._exit(CollectiveError.exit_code)

    def close(self) -> None:
        self._closed.set()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class StopRequest:
    """SIGTERM, SIGINT or SIGHUP (on any rank, e.g. rank 0) asks the run to stop at the next step boundary.

    ``should_stop()`` is collective (a tiny all_reduce): call it on every rank once per step, then save a
    checkpoint and leave the loop together. A second signal restores the default action and re-delivers itself
    (stop at once). ``requested_by`` lists '<SIGNAL> on rank <r>' after a stop."""

    def __init__(self, signals=(signal.SIGTERM, signal.SIGINT, signal.SIGHUP), group=None, device=None):
        self.group, self.device = group, device
        self.signal: str | None = None
        self.requested_by: list[str] = []
        self._previous: dict[int, object] = {}
        if threading.current_thread() is threading.main_thread():
            for sig in signals:
                self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if self.signal is not None:  # the second one: stop now
            self.close()
            print(f"rank {_rank()}: second {name}: stopping at once", file=sys.stderr, flush=True)
            os.kill(os.getpid(), signum)
            return
        self.signal = name
        with contextlib.suppress(OSError, ValueError):  # after SIGHUP the terminal may be gone
            print(f"rank {_rank()}: {name} received: stopping after this step, with a checkpoint when one is "
                  "configured (send it again to stop at once)", file=sys.stderr, flush=True)

    def should_stop(self) -> bool:
        """True on every rank when any rank has received a stop signal (collective)."""
        codes = {None: 0, "SIGINT": 1, "SIGTERM": 2, "SIGHUP": 3}
        if dist.is_available() and dist.is_initialized():
            world = dist.get_world_size(self.group)
            flags = torch.zeros(world, dtype=torch.int32, device=self.device)
            flags[dist.get_rank(self.group)] = codes.get(self.signal, 4)
            dist.all_reduce(flags, group=self.group)
            flags = flags.tolist()
        else:
            flags = [codes.get(self.signal, 4)]
        names = {1: "SIGINT", 2: "SIGTERM", 3: "SIGHUP", 4: "a signal"}
        self.requested_by = [f"{names[f]} on rank {r}" for r, f in enumerate(flags) if f]
        return bool(self.requested_by)

    def close(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
