"""Rank failures: a killed rank under torchrun --max-restarts resumes to the uninterrupted result; a stalled
collective and a hung rank become clear errors naming the phase and the operation; SIGTERM on rank 0 saves and
exits cleanly.

The worker (this file under torchrun) is a small training loop wired the way the runtime wires these modules:

    torchrun --standalone --nproc-per-node 2 --max-restarts 2 tests/test_failures.py train OUT --kills save@4,step@7
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch

import galvatron_run
from galvatron_contracts.documents import GalvatronError
from galvatron_contracts.launch import run_as_rank
from galvatron_run import checkpoint as ck
from galvatron_run.data import RandomTokens
from galvatron_run.failures import CollectiveError, StopRequest, Watchdog, describe_failure

sys.path.insert(0, str(Path(__file__).parent))
from test_checkpoint import BATCH, SEQ, VOCAB, Tiny, make_optim, train_step  # noqa: E402

PKG_ROOT = str(Path(galvatron_run.__file__).resolve().parents[1])
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=PKG_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))


# --- the worker ------------------------------------------------------------------------------------------------------

def train(a):
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    from galvatron_run.failures import enable_flight_recorder, init_process_group, restart_count

    out = Path(a.out)
    enable_flight_recorder()
    init_process_group("gloo", a.timeout)
    rank, attempt = dist.get_rank(), restart_count()
    mesh = init_device_mesh("cpu", (2,))
    model = Tiny()
    for layer in model.layers.values():
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    opt, sched = make_optim(model)
    data = RandomTokens(VOCAB, SEQ, BATCH, seed=5)
    half = slice(rank * BATCH // 2, (rank + 1) * BATCH // 2)
    watchdog, stop = Watchdog(a.timeout), StopRequest()

    # --kills save@4,step@7: on attempt 0 rank 1 dies inside the save of step 4 (its shards written, no marker
    # yet); on attempt 1 it dies at the start of step 7 (in the middle of training)
    kills = [k.split("@") for k in a.kills.split(",")] if a.kills else []
    kill = (kills[attempt][0], int(kills[attempt][1])) if attempt < len(kills) and rank == 1 else None
    current = {"step": 0}
    if kill and kill[0] == "save":
        checksums = ck._checksums

        def dying(*args, **kwargs):
            if current["step"] == kill[1]:
                os.kill(os.getpid(), signal.SIGKILL)
            return checksums(*args, **kwargs)

        ck._checksums = dying

    info = ck.resume(out / "ckpt", [model], [opt], sched, data, plan_digest="p") if a.save_every else None
    start = info["step"] + 1 if info else 1
    log = {"attempt": attempt, "resumed_from": info and info["step"], "losses": {}, "stopped": None}
    for step in range(start, a.steps + 1):
        current["step"] = step
        if kill == ("step", step):
            os.kill(os.getpid(), signal.SIGKILL)
        with watchdog.phase(f"step {step}: forward/backward/optimizer"):
            log["losses"][step] = train_step(model, opt, sched, data, step, half).item()
        if rank == 0:  # after every step, so that an attempt that dies leaves what it did
            (out / f"attempt{attempt}.json").write_text(json.dumps(log))
        if rank == 0 and a.step_sleep:
            (out / "progress").write_text(json.dumps({"step": step, "pid": os.getpid()}))
            time.sleep(a.step_sleep)
        stopping = stop.should_stop()
        if a.save_every and (step % a.save_every == 0 or stopping):
            with watchdog.phase(f"step {step}: checkpoint save"):
                ck.save_checkpoint(out / "ckpt", step, [model], [opt], sched, data, keep=2, plan_digest="p")
        if stopping:
            log["stopped"] = {"step": step, "by": stop.requested_by}
            break
    if a.with_reference:  # the uninterrupted run, from scratch, in the same world: what the resumed run must equal
        model = Tiny()
        for layer in model.layers.values():
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
        opt, sched = make_optim(model)
        log["reference"] = {step: train_step(model, opt, sched, data, step, half).item()
                            for step in range(1, a.steps + 1)}
    if rank == 0:
        (out / f"attempt{attempt}.json").write_text(json.dumps(log))
    watchdog.close()
    dist.destroy_process_group()


def stall(a):
    """Rank 1 hangs in its own phase; rank 0 waits for it in an all_reduce."""
    import torch.distributed as dist

    from galvatron_run.failures import enable_flight_recorder

    enable_flight_recorder()
    dist.init_process_group("gloo", timeout=timedelta(seconds=a.timeout))
    rank = dist.get_rank()
    dist.all_reduce(torch.ones(2))  # one collective that completes
    watchdog = Watchdog(a.timeout)  # fires at timeout + 5 s grace: after the backend's own timeout on rank 0
    try:
        if rank == 1:
            with watchdog.phase("step 2: data loading"):
                time.sleep(60)
        else:
            with watchdog.phase("step 2: gradient all-reduce"):
                dist.all_reduce(torch.ones(16, 8))
    except GalvatronError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        os._exit(e.exit_code)


# --- helpers -------------------------------------------------------------------------------------------------------

def torchrun(out, *args, restarts=0, timeout=180, wait=True):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "--max-restarts", str(restarts), "--monitor-interval", "0.5", __file__, "train", str(out), *args]
    if not wait:
        return subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=timeout)


def attempts(out):
    return {int(p.stem[len("attempt"):]): json.loads(p.read_text()) for p in sorted(out.glob("attempt*.json"))}


# --- the tests -----------------------------------------------------------------------------------------------------

def test_killed_ranks_restart_from_the_newest_complete_checkpoint(tmp_path):
    proc = torchrun(tmp_path, "--steps", "8", "--save-every", "2", "--kills", "save@4,step@7", "--with-reference",
                    restarts=2)
    assert proc.returncode == 0, proc.stderr[-4000:]
    runs = attempts(tmp_path)
    assert sorted(runs) == [0, 1, 2]
    # attempt 0 died inside the save of step 4: its step-4.tmp was ignored, attempt 1 resumed from step 2
    assert runs[0]["resumed_from"] is None and sorted(runs[0]["losses"], key=int) == ["1", "2", "3", "4"]
    assert runs[1]["resumed_from"] == 2 and sorted(runs[1]["losses"], key=int) == ["3", "4", "5", "6"]
    assert runs[2]["resumed_from"] == 6 and sorted(runs[2]["losses"], key=int) == ["7", "8"]
    reference = runs[2]["reference"]
    assert len(reference) == 8
    for run in runs.values():
        for step, loss in run["losses"].items():
            assert loss == reference[step], (run["attempt"], step)  # bit for bit: same plan, same batches
    assert [s for s, _ in ck.list_checkpoints(tmp_path / "ckpt")] == [6, 8]
    assert not list((tmp_path / "ckpt").glob("*.tmp"))


def test_sigterm_on_rank_0_saves_and_exits_cleanly(tmp_path):
    proc = torchrun(tmp_path, "--steps", "1000", "--save-every", "1000", "--step-sleep", "0.3", wait=False)
    progress, deadline = tmp_path / "progress", time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            if progress.exists():
                try:
                    seen = json.loads(progress.read_text())
                except json.JSONDecodeError:
                    seen = {"step": 0}
                if seen["step"] >= 2:
                    os.kill(seen["pid"], signal.SIGTERM)
                    break
            assert proc.poll() is None, proc.communicate()[1][-4000:]
            time.sleep(0.1)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-4000:]
    assert "SIGTERM received: stopping after this step" in err
    log = attempts(tmp_path)[0]
    stopped = log["stopped"]["step"]
    assert log["stopped"]["by"] == ["SIGTERM on rank 0"] and 2 <= stopped < 1000
    assert ck.latest_complete(tmp_path / "ckpt") == tmp_path / "ckpt" / f"step-{stopped}"
    assert json.loads((tmp_path / "ckpt" / f"step-{stopped}" / "train_state.json").read_text())["step"] == stopped


def test_stalled_collective_and_hung_rank_are_named(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    t0 = time.monotonic()
    for rank in range(2):
        env = dict(ENV, RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=str(port))
        procs.append(subprocess.Popen([sys.executable, __file__, "stall", str(tmp_path), "--timeout", "3"],
                                      env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    errs = [p.communicate(timeout=90)[1] for p in procs]
    elapsed = time.monotonic() - t0
    assert [p.returncode for p in procs] == [1, 1], errs
    assert elapsed < 45  # seconds, not a silent wait for the 60 s sleep or the default 30 min
    waiting, hung = errs
    assert "rank 0: another rank did not join in time" in waiting
    assert "during 'step 2: gradient all-reduce'" in waiting and "(collective timeout 3 s)" in waiting
    # the collective it waited in (gloo may already have retired it when the error is raised: 'last one recorded')
    assert "operation: all_reduce #2 on process group 0 (ranks [0, 1]), input [[16, 8]] Float, " in waiting
    assert "Traceback" not in waiting
    assert "error: rank 1: this rank is stuck" in hung and "during 'step 2: data loading'" in hung
    assert "the phase did not finish within 8 s" in hung
    assert "in stall" in hung  # the stack of the stuck thread, to see where it hangs


def test_watchdog_reports_a_late_phase_once():
    fired = []
    with Watchdog(0.2, rank=5, on_timeout=fired.append, poll_s=0.05, grace_s=0.1) as wd:
        with wd.phase("quick"):
            pass
        with wd.phase("unbounded", timeout_s=None):
            time.sleep(0.5)
        assert fired == []
        with wd.phase("step 7: optimizer"):
            assert wd.current == "step 7: optimizer"
            time.sleep(1.5)  # the deadline is 0.3 s: ample margin for a loaded machine
    assert len(fired) == 1
    assert fired[0].startswith("rank 5: this rank is stuck") and "during 'step 7: optimizer'" in fired[0]
    assert "did not finish within 0.3 s" in fired[0]


def test_communication_errors_in_a_phase_become_collective_errors():
    wd = Watchdog(None, rank=3)
    with pytest.raises(CollectiveError) as e:
        with wd.phase("step 4: pipeline send to stage 2"):
            raise RuntimeError("[../gloo/transport/tcp/pair.cc:553] Connection closed by peer [127.0.0.1]:943")
    assert e.value.exit_code == 1
    assert str(e.value).startswith("rank 3: a peer rank exited (crashed or was killed)")
    assert "during 'step 4: pipeline send to stage 2'" in str(e.value)
    assert "backend: Connection closed by peer" in str(e.value)
    with pytest.raises(ValueError, match="not a comm"):  # other errors pass through untouched
        with wd.phase("x"):
            raise ValueError("not a comm problem")
    msg = describe_failure("p", 2.0, 9, "Timed out waiting 9000ms for recv", rank=1)
    assert msg.startswith("rank 1: another rank did not join in time") and "(collective timeout 9 s)" in msg


def test_stop_request_without_a_process_group():
    with StopRequest() as stop:
        assert not stop.should_stop() and stop.requested_by == []
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.should_stop() and stop.requested_by == ["SIGTERM on rank 0"]
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def test_sighup_asks_for_a_stop_too():
    before = signal.getsignal(signal.SIGHUP)  # SIG_IGN under nohup
    with StopRequest() as stop:
        os.kill(os.getpid(), signal.SIGHUP)
        assert stop.should_stop() and stop.requested_by == ["SIGHUP on rank 0"]
    assert signal.getsignal(signal.SIGHUP) == before


def test_second_signal_stops_at_once(capsys):
    # A background job of a non-interactive shell starts with SIGINT ignored; install Python's handler so the
    # handler the stop request must hand the second signal back to is known.
    original = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        stop = StopRequest(signals=(signal.SIGINT,))
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.should_stop()
        with pytest.raises(KeyboardInterrupt):  # the previous handler (Python's) gets the second one
            os.kill(os.getpid(), signal.SIGINT)
        assert "second SIGINT: stopping at once" in capsys.readouterr().err
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, original)


if __name__ == "__main__":
    torch.set_num_threads(1)
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["train", "stall"])
    parser.add_argument("out")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--save-every", type=int, default=0)
    parser.add_argument("--kills", default="")
    parser.add_argument("--step-sleep", type=float, default=0.0)
    parser.add_argument("--timeout", type=float, default=60)
    parser.add_argument("--with-reference", action="store_true")
    args = parser.parse_args()
    run_as_rank(lambda: {"train": train, "stall": stall}[args.mode](args))
