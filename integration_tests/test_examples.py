"""The scripts in examples/, run as a user runs them.

* examples/frontier.py end to end (the four Python APIs, then galvatron-run): its frontier table against what the
  search promises (a bigger budget never buys a slower plan, every plan fits its budget), its hand-edited plan
  against what recompute must do to memory and time, and a terminal without libkineto's USDT lines.
* examples/slurm/train.sbatch under a fake Slurm allocation of 2 nodes (stub ``scontrol`` and ``srun`` on PATH):
  the torchrun command it generates, read back by torchrun's own argument parser; then that command carried out
  here, the stub srun starting one torchrun per "node" on this machine, so 2 agents meet through the c10d
  rendezvous and train a 2 x 1 plan.

    tox -e integration -- integration_tests/test_examples.py
"""
from __future__ import annotations

import json
import os
import re
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("galvatron_probe", reason="needs the four tools installed (tox -e integration)")
pytest.importorskip("galvatron_search", reason="needs the four tools installed (tox -e integration)")
pytest.importorskip("galvatron_run", reason="needs the four tools installed (tox -e integration)")

import galvatron_search  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SBATCH = ROOT / "examples" / "slurm" / "train.sbatch"
ROW = re.compile(r"^\s*(?P<budget>[\d.]+)\s+(?P<batch>\S+)\s+(?P<samples>\S+)\s+(?P<mib>\S+)\s+(?P<plan>.+)$")


def env(**extra) -> dict:
    """This environment with one thread per rank and without the user's libkineto settings (which the launcher
    honours: with KINETO_LOG_LEVEL=0 the USDT lines would rightly be back)."""
    mine = {k: v for k, v in os.environ.items() if not k.startswith("KINETO_")}
    return {**mine, "OMP_NUM_THREADS": "1", **extra}


# --- examples/frontier.py ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def frontier(tmp_path_factory):
    out = tmp_path_factory.mktemp("frontier")
    done = subprocess.run([sys.executable, str(ROOT / "examples" / "frontier.py"), "--out", str(out),
                           "--train-steps", "2"], capture_output=True, text=True, env=env(), timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    return out, done


def table(stdout: str) -> list[dict]:
    """The frontier table's rows: from the header to the first blank line."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split()[:2] == ["budget", "MiB"])
    rows = []
    for line in lines[start + 1:]:
        if not line.strip():
            break
        rows.append(ROW.match(line).groupdict())
    return rows


def test_the_frontier_never_gets_slower_with_more_memory(frontier):
    rows = table(frontier[1].stdout)
    feasible = [r for r in rows if r["plan"] != "no plan fits"]
    assert len(feasible) >= 3, frontier[1].stdout
    budgets = [float(r["budget"]) for r in rows]
    assert budgets == sorted(budgets)
    first = rows.index(feasible[0])
    assert rows[first:] == feasible, "a budget above one that fits must fit too"
    speeds = [float(r["samples"]) for r in feasible]
    assert all(a <= b for a, b in zip(speeds, speeds[1:])), speeds
    assert all(float(r["mib"]) <= float(r["budget"]) for r in feasible)


def stage_of(plan: dict, layer: int) -> dict:
    index = next(s["index"] for s in plan["stages"] if s["layer_start"] <= layer < s["layer_end"])
    return next(s for s in plan["predictions"]["stages"] if s["index"] == index)


def test_the_edited_plan_is_evaluated_as_recompute_demands(frontier):
    """Recompute keeps only a layer's input and runs its forward again in the backward: switching it off on layer 0
    must raise that stage's activation bytes and lower its backward time (and switching it on, the reverse)."""
    out, done = frontier
    plan, edited = (json.loads((out / name).read_text()) for name in ("plan.json", "edited-plan.json"))
    flipped = [i for i, (a, b) in enumerate(zip(plan["layers"], edited["layers"])) if a != b]
    assert flipped == [0] and plan["layers"][0]["recompute"] != edited["layers"][0]["recompute"]
    sign = 1 if plan["layers"][0]["recompute"] else -1  # +1: the edit switched recompute off
    before, after = stage_of(plan, 0), stage_of(edited, 0)
    assert sign * (after["memory_bytes_per_rank"]["activations"] - before["memory_bytes_per_rank"]["activations"]) > 0
    assert sign * (before["backward_s"] - after["backward_s"]) > 0
    cost_model = json.loads((out / "cost-model.json").read_text())
    assert galvatron_search.evaluate(plan, cost_model)["samples_per_s"] == pytest.approx(
        plan["predictions"]["samples_per_s"], rel=1e-9)
    shown = re.search(r"^edited-plan: .*\n\s+([\d.]+) samples/s", done.stdout, re.M)
    assert shown and float(shown.group(1)) == round(edited["predictions"]["samples_per_s"], 2)


def test_the_best_plan_trains_without_profiler_noise(frontier):
    out, done = frontier
    report = json.loads((out / "run-report.json").read_text())
    assert [s["step"] for s in report["steps"]] == [0, 1]
    assert "trained best-plan: loss" in done.stdout
    assert "[rank 0] step 1:" in done.stderr
    assert "USDT:" not in done.stderr  # libkineto's profiler_start/stop, silenced by galvatron_contracts.launch


# --- examples/slurm/train.sbatch -----------------------------------------------------------------------------------

SRUN = """\
#!{python}
# stub srun: log the command line; with STUB_SRUN_RUN=1 run its torchrun once per task, as on --ntasks nodes
import json, os, subprocess, sys
args = sys.argv[1:]
with open(os.environ["STUB_LOG"], "a") as f:
    f.write(json.dumps(["srun", *args]) + "\\n")
if os.environ.get("STUB_SRUN_RUN") == "1":
    tasks = int(args[args.index("--ntasks") + 1])
    cmd = [sys.executable, "-m", "torch.distributed.run", *args[args.index("torchrun") + 1:]]
    procs = [subprocess.Popen(cmd, env={{**os.environ, "SLURM_PROCID": str(t), "SLURM_NODEID": str(t)}})
             for t in range(tasks)]
    sys.exit(max(p.wait() for p in procs))
"""
SCONTROL = """\
#!{python}
# stub scontrol: log the command line, print STUB_HOSTS one per line
import json, os, sys
with open(os.environ["STUB_LOG"], "a") as f:
    f.write(json.dumps(["scontrol", *sys.argv[1:]]) + "\\n")
print("\\n".join(os.environ["STUB_HOSTS"].split(",")))
"""


@pytest.fixture
def slurm(tmp_path):
    """A fake 2-node allocation: stub srun and scontrol first on PATH, Slurm's variables set; returns
    (environment, the stubs' log)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in [("srun", SRUN), ("scontrol", SCONTROL)]:
        (bin_dir / name).write_text(text.format(python=sys.executable))
        (bin_dir / name).chmod(0o755)
    log = tmp_path / "stub.log"
    variables = env(PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", STUB_LOG=str(log),
                    STUB_HOSTS="gpu017,gpu018", SLURM_NNODES="2", SLURM_JOB_NODELIST="gpu[017-018]",
                    SLURM_JOB_ID="4242", SLURM_GPUS_ON_NODE="8", SLURM_CPUS_PER_TASK="32")
    variables.pop("DRY_RUN", None)
    return variables, log


def calls(log: Path) -> list[list[str]]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def sbatch(args: list[str], variables: dict, cwd: Path, timeout: int = 60) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SBATCH), *args], env=variables, cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


def torchrun_args(srun: list[str]):
    """The torchrun part of an srun command line, parsed by torchrun's own parser."""
    from torch.distributed.run import get_args_parser

    return get_args_parser().parse_args(srun[srun.index("torchrun") + 1:])


def test_the_sbatch_script_launches_one_torchrun_per_node_meeting_at_the_first(slurm, tmp_path):
    variables, log = slurm
    (tmp_path / "plan.json").write_text("{}")
    user_args = ["--steps", "5", "--data", "my corpus.txt", "-o", "report.json"]
    dry = sbatch(["plan.json", *user_args], {**variables, "DRY_RUN": "1"}, tmp_path)
    assert dry.returncode == 0, dry.stderr
    printed = shlex.split(dry.stdout)
    assert calls(log) == [["scontrol", "show", "hostnames", "gpu[017-018]"]]  # DRY_RUN: no srun

    srun = printed[:printed.index("torchrun")]
    assert srun[0] == "srun"
    pairs = {a: b for a, b in zip(srun, srun[1:]) if a.startswith("--") and not b.startswith("--")}
    assert (pairs["--nodes"], pairs["--ntasks"], pairs["--ntasks-per-node"]) == ("2", "2", "1")
    assert "--cpus-per-task=32" in srun  # Slurm's default would put the node's ranks on one core
    run = torchrun_args(printed)
    assert (run.nnodes, run.nproc_per_node, run.rdzv_backend) == ("2", "8", "c10d")
    assert (run.rdzv_endpoint, run.rdzv_id, run.max_restarts) == ("gpu017:29500", "4242", 0)
    assert run.module and run.training_script == "galvatron_run"
    assert run.training_script_args == [str(tmp_path / "plan.json"), *user_args]

    log.unlink()
    real = sbatch(["plan.json", *user_args], {**variables, "MASTER_PORT": "31000"}, tmp_path)
    assert real.returncode == 0, real.stderr
    ran = calls(log)[-1]
    assert ran[:ran.index("torchrun")] == srun
    assert torchrun_args(ran).rdzv_endpoint == "gpu017:31000"
    assert torchrun_args(ran).training_script_args == run.training_script_args


def test_the_sbatch_script_refuses_what_cannot_run(slurm, tmp_path):
    variables, log = slurm
    missing = sbatch(["nowhere/plan.json"], variables, tmp_path)
    assert missing.returncode == 3 and "nowhere/plan.json: no such file" in missing.stderr
    (tmp_path / "plan.json").write_text("{}")
    outside = sbatch(["plan.json"], {k: v for k, v in variables.items() if not k.startswith("SLURM_")}, tmp_path)
    assert outside.returncode != 0 and "not inside a Slurm allocation" in outside.stderr
    no_gpus = sbatch(["plan.json"], {k: v for k, v in variables.items() if k != "SLURM_GPUS_ON_NODE"}, tmp_path)
    assert no_gpus.returncode != 0 and "set GPUS_PER_NODE" in no_gpus.stderr
    assert sbatch([], variables, tmp_path).returncode == 2
    assert not any(c[0] == "srun" for c in calls(log))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_sbatch_command_trains_a_two_node_plan_here(slurm, tmp_path):
    """Two torchrun agents on this machine, one per "node", one rank each: the command as generated rendezvouses,
    and galvatron-run sees a world of 2 nodes x 1 rank."""
    variables, _ = slurm
    plan = json.loads((ROOT / "schemas" / "plan" / "examples" / "valid" / "tiny.json").read_text())
    assert plan["cluster"]["world_size"] == 2
    plan["cluster"].update(nodes=2, gpus_per_node=1)
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    variables = {**variables, "STUB_SRUN_RUN": "1", "STUB_HOSTS": "127.0.0.1,127.0.0.1", "GPUS_PER_NODE": "1",
                 "MASTER_PORT": str(free_port())}
    done = sbatch(["plan.json", "--steps", "2", "--warmup-steps", "1", "--timeout", "60", "-o", "report.json"],
                  variables, tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert (report["environment"]["world_size"], report["environment"]["nodes"]) == (2, 2)
    assert [s["step"] for s in report["steps"]] == [0, 1]
