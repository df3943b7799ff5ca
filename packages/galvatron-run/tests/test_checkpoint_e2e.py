"""End to end with the real runtime: a run saves, and runs under the same plan, a tensor-parallel plan, a
pipeline-parallel plan and a ZeRO-1 plan resume from its checkpoint; a ZeRO-1 run saves and resumes under its own
plan; a model exported under one plan imports into another.

Part one drives the runtime's seams (``runner.run_rank(make_data=, callback=, build_hook=)``) in one 2-rank launch,
wired exactly as the README-data-checkpoints.md "Wiring" section says. Part two drives the command line
(``--checkpoint-dir/--save-every/--resume``); it is skipped until the CLI has those options.
"""
from __future__ import annotations

import inspect
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import galvatron_run
from galvatron_contracts.launch import run_as_rank
from galvatron_run import checkpoint as ck
from galvatron_run.data import make_data_source

PKG_ROOT = str(Path(galvatron_run.__file__).resolve().parents[1])
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=PKG_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
STEPS, SAVE_AT, SEQ, BATCH = 6, 3, 16, 4


def _seams() -> str | None:
    try:
        from galvatron_run.plan import uniform_plan  # noqa: F401
        from galvatron_run.runner import run_rank
    except ImportError as e:
        return f"the runtime is not there yet ({e})"
    missing = {"make_data", "callback", "build_hook"} - set(inspect.signature(run_rank).parameters)
    return f"runner.run_rank lacks {sorted(missing)}" if missing else None


def _cli_has(option: str) -> bool:
    try:
        from galvatron_run.cli import main
    except ImportError:
        return False
    return any(option in getattr(p, "opts", ()) for p in main.params)


# --- the worker: several runs in one 2-rank world ----------------------------------------------------------------

def worker(out: Path, corpus: str):
    import torch.distributed as dist

    from galvatron_contracts.models import load_model_spec
    from galvatron_run.failures import init_process_group
    from galvatron_run.plan import uniform_plan
    from galvatron_run.runner import run_rank

    init_process_group("gloo", 120)
    rank = dist.get_rank()
    spec = load_model_spec("tiny-gpt")
    shapes = {"dp2": {"dp_mode": "zero3"}, "tp2": {"tp": 2}, "pp2": {"pp": 2, "schedule": "1f1b"},
              "zero1": {"dp_mode": "zero1"}}
    plans = {name: uniform_plan(spec, 2, global_batch=BATCH, micro_batches=2, seq_len=SEQ, **kw)
             for name, kw in shapes.items()}
    results = {}

    def run(name, plan, resume_from=None, export_at=None, import_from=None):
        """One run, wired the documented way: resume (or import) after building, data state from the
        checkpoint, a save at step SAVE_AT and an export at the end."""
        root = out / f"ckpt-{name}"
        holder = {}

        def build_hook(state):
            if import_from is not None:
                ck.import_model(import_from, state.model_parts)
                ck.export_full(out / f"{name}-imported.pt", state.model_parts)
            if resume_from is not None:
                info = ck.load_checkpoint(resume_from, state.model_parts, state.optimizers, state.scheduler)
                state.step = info["step"]
                holder["resumed"] = info

        def make_data(run_plan):
            spec_, tr = run_plan["model"], run_plan["training"]
            source = make_data_source(corpus, vocab_size=spec_["vocab_size"], seq_len=tr["seq_len"],
                                      global_batch=run_plan["global_batch"], seed=tr.get("seed", 1234))
            if resume_from is not None:
                source.load_state(ck.read_train_state(resume_from)["data"])
            holder["data"] = source
            return source

        def callback(state, record):
            if state.step in (SAVE_AT, STEPS - 1):
                ck.save_checkpoint(root, state.step, state.model_parts, state.optimizers, state.scheduler,
                                   holder["data"], keep=2)
            if export_at is not None and state.step == export_at:
                ck.export_full(out / f"{name}-final.pt", state.model_parts)

        doc = run_rank(plan, plan_path=None, steps=STEPS if import_from is None else 1, warmup_steps=0, dtype=None,
                       report_path=str(out / f"{name}.report.json"), peak_tflops=None, timeout_s=120,
                       make_data=make_data, callback=callback, build_hook=build_hook)
        if rank == 0:
            results[name] = {"losses": {r["step"]: r["loss"] for r in doc["steps"]},
                             "resumed": holder.get("resumed", {}).get("step")}

    run("A", plans["dp2"], export_at=STEPS)                                    # uninterrupted, saves at step 3
    a_ckpt = out / "ckpt-A" / f"step-{SAVE_AT}"
    run("B", plans["dp2"], resume_from=a_ckpt)                                 # same plan
    run("C", plans["tp2"], resume_from=a_ckpt)                                 # another tp
    run("D", plans["pp2"], resume_from=a_ckpt)                                 # another pp
    run("E", plans["pp2"], import_from=out / "A-final.pt")                     # export (dp2) -> import (pp2)
    run("F", plans["zero1"], resume_from=a_ckpt)                               # another sharding (zero3 -> zero1)
    run("Z", plans["zero1"])                                                   # zero1 uninterrupted, saves at 3
    run("Z2", plans["zero1"], resume_from=out / "ckpt-Z" / f"step-{SAVE_AT}")  # zero1 resumes its own
    if rank == 0:
        (out / "results.json").write_text(json.dumps(results))
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    reason = _seams()
    if reason:
        pytest.skip(reason)
    out = tmp_path_factory.mktemp("e2e")
    corpus = out / "corpus.txt"
    corpus.write_text("It was a bright cold day in April, and the clocks were striking thirteen. " * 60)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           __file__, "--worker", str(out), str(corpus)], env=ENV, capture_output=True, text=True,
                          timeout=400)
    assert proc.returncode == 0, proc.stderr[-6000:]
    return out, json.loads((out / "results.json").read_text())


@pytest.mark.parametrize("first, resumed", [("A", "B"), ("Z", "Z2")], ids=["zero3", "zero1"])
def test_resume_under_the_same_plan_is_exact(runs, first, resumed):
    _, r = runs
    a, b = r[first]["losses"], r[resumed]["losses"]
    assert r[resumed]["resumed"] == SAVE_AT and sorted(b, key=int) == [str(s) for s in range(SAVE_AT, STEPS)]
    assert [b[s] for s in sorted(b, key=int)] == [a[s] for s in sorted(b, key=int)]  # bit for bit


@pytest.mark.parametrize("run", ["C", "D", "F"], ids=["tp2", "pp2", "zero1"])
def test_resume_under_another_plan_continues_the_losses(runs, run):
    _, r = runs
    a, other = r["A"]["losses"], r[run]["losses"]
    assert r[run]["resumed"] == SAVE_AT and sorted(other, key=int) == [str(s) for s in range(SAVE_AT, STEPS)]
    for s in other:
        assert other[s] == pytest.approx(a[s], rel=1e-5), s


@pytest.mark.parametrize("run", ["B", "C", "D", "F", "Z"], ids=["dp2", "tp2", "pp2", "zero1-resumed", "zero1"])
def test_checkpoints_saved_under_other_plans_hold_the_same_model(runs, run, tmp_path):
    out, _ = runs
    ref = ck.export_model(out / "ckpt-A" / f"step-{STEPS - 1}", tmp_path / "a.pt")
    got = ck.export_model(out / f"ckpt-{run}" / f"step-{STEPS - 1}", tmp_path / "x.pt")
    assert got["tensors"] == ref["tensors"]
    a, x = torch.load(tmp_path / "a.pt", weights_only=True), torch.load(tmp_path / "x.pt", weights_only=True)
    assert sorted(a) == sorted(x) and any(k.startswith("head.") for k in x)  # every stage's part is there
    for k in a:
        if run == "B":
            assert torch.equal(a[k], x[k]), k
        else:
            torch.testing.assert_close(x[k], a[k], rtol=1e-4, atol=1e-5, msg=k)


def test_export_under_one_plan_imports_under_another(runs):
    out, _ = runs
    exported = torch.load(out / "A-final.pt", weights_only=True)
    imported = torch.load(out / "E-imported.pt", weights_only=True)
    assert sorted(exported) == sorted(imported) and any(k.startswith("layers.3.") for k in exported)
    for k in exported:
        assert torch.equal(exported[k], imported[k]), k


# --- the command line (once wired) ---------------------------------------------------------------------------------

def needs_cli(*options):
    missing = [o for o in options if not _cli_has(o)]
    return pytest.mark.skipif(bool(missing), reason=f"the CLI has no {', '.join(missing)} yet (wiring: "
                                                    "README-data-checkpoints.md); this test runs once it has")


def cli(*args, timeout=300):
    cmd = [sys.executable, "-m", "galvatron_run", "--model", "tiny-gpt", "--global-batch", "4", "--micro-batches",
           "2", "--seq-len", str(SEQ), "--warmup-steps", "0", "--nproc", "2", *args]
    return subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=timeout)


def losses(report: Path) -> dict[int, float]:
    return {s["step"]: s["loss"] for s in json.loads(report.read_text())["steps"]}


@needs_cli("--checkpoint-dir", "--save-every", "--keep", "--resume")
def test_cli_resume_exact_and_under_tp(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    full = cli("--steps", "4", "--checkpoint-dir", str(a), "--save-every", "2", "--keep", "2",
               "--report", str(tmp_path / "full.json"))
    assert full.returncode == 0, full.stderr[-3000:]
    assert [s for s, _ in ck.list_checkpoints(a)] == [2, 4]
    shutil.rmtree(a / "step-4")  # resume from step 2
    shutil.copytree(a, b)
    resumed = cli("--steps", "4", "--checkpoint-dir", str(a), "--resume", "--report", str(tmp_path / "same.json"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    ref, got = losses(tmp_path / "full.json"), losses(tmp_path / "same.json")
    assert sorted(got) == [2, 3] and all(got[s] == ref[s] for s in got)
    tp = cli("--steps", "4", "--tp", "2", "--checkpoint-dir", str(b), "--resume", "--report", str(tmp_path / "tp.json"))
    assert tp.returncode == 0, tp.stderr[-3000:]
    got = losses(tmp_path / "tp.json")
    assert sorted(got) == [2, 3] and all(got[s] == pytest.approx(ref[s], rel=1e-5) for s in got)


@needs_cli("--data")
def test_cli_bad_data_exits_3(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    proc = cli("--steps", "1", "--data", str(tmp_path / "empty.txt"))
    assert proc.returncode == 3 and "empty file" in proc.stderr and "Traceback" not in proc.stderr


if __name__ == "__main__" and "--worker" in sys.argv:
    torch.set_num_threads(1)
    i = sys.argv.index("--worker")
    run_as_rank(lambda: worker(Path(sys.argv[i + 1]), sys.argv[i + 2]))
