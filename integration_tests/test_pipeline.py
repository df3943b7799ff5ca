"""The README's pipe, run as a user types it: the four console scripts, documents flowing through stdin/stdout.

    tox -e integration
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator
from referencing import Registry, Resource

ROOT = Path(__file__).resolve().parent.parent
TOOLS = ("galvatron-probe", "galvatron-cost", "galvatron-search", "galvatron-run")

pytestmark = pytest.mark.skipif(any(shutil.which(t) is None for t in TOOLS),
                                reason="needs the four console scripts installed (tox -e integration)")


def schema_errors(doc: dict) -> list:
    """What the schema of the document's own kind and version (read from the repository's schemas/) says of it."""
    schemas = [json.loads(p.read_text()) for p in ROOT.glob("schemas/*/*.schema.json")]
    registry = Registry().with_resources((s["$id"], Resource.from_contents(s)) for s in schemas)
    schema = json.loads((ROOT / "schemas" / doc["kind"] / f"{doc['schema_version']}.schema.json").read_text())
    return list(Draft202012Validator(schema, registry=registry).iter_errors(doc))


def bash(script: str, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(["bash", "-o", "pipefail", "-c", script], cwd=cwd, env=env, text=True,
                          capture_output=True, timeout=timeout)


@pytest.fixture(scope="module")
def piped(tmp_path_factory) -> Path:
    """Probe, profile, fit and search in one shell pipe, as in the README; then train with the plan."""
    work = tmp_path_factory.mktemp("pipe")
    done = bash("{ galvatron-probe bandwidth --nproc 2 --quick; "
                "galvatron-probe compute --model tiny-gpt --nproc 2 --quick; } "
                "| galvatron-cost fit | galvatron-search --memory 0.5 --global-batch 8 > plan.json", work)
    assert done.returncode == 0, done.stderr[-3000:]
    done = bash("galvatron-run plan.json --nproc 2 --steps 3 --warmup-steps 1 --report report.json", work)
    assert done.returncode == 0, done.stderr[-3000:]
    return work


def test_the_pipe_writes_a_valid_plan_for_the_profiled_world(piped):
    plan = json.loads((piped / "plan.json").read_text())
    assert schema_errors(plan) == []
    assert plan["cluster"]["world_size"] == 2
    assert plan["model"]["name"] == "tiny-gpt"
    assert plan["global_batch"] == 8 == plan["micro_batch_size"] * plan["micro_batches"]
    assert sorted(r for s in plan["stages"] for r in s["ranks"]) == [0, 1]
    assert plan["predictions"]["iteration_time_s"] > 0


def test_training_with_the_plan_reports_against_its_predictions(piped):
    plan = json.loads((piped / "plan.json").read_text())
    report = json.loads((piped / "report.json").read_text())
    assert schema_errors(report) == []
    assert [s["step"] for s in report["steps"]] == [0, 1, 2]
    assert all(s["loss"] > 0 for s in report["steps"])
    assert report["comparison"]["iteration_time"]["predicted"] == pytest.approx(
        plan["predictions"]["iteration_time_s"])
    assert {m["stage"] for m in report["comparison"]["memory"]} == {s["index"] for s in plan["stages"]}
    assert all(r["peak_bytes"] > 0 for r in report["memory"]["ranks"])


def test_evaluate_reproduces_the_searched_prediction(piped):
    """The plan round-trips through `galvatron-search evaluate` with the cost model from the same pipe."""
    done = bash("{ galvatron-probe bandwidth --nproc 2 --quick; "
                "galvatron-probe compute --model tiny-gpt --nproc 2 --quick; } | galvatron-cost fit -o cost.json "
                "&& galvatron-search --memory 0.5 --global-batch 8 cost.json -o plan2.json "
                "&& galvatron-search evaluate plan2.json cost.json", piped)
    assert done.returncode == 0, done.stderr[-3000:]
    plan = json.loads((piped / "plan2.json").read_text())
    evaluated = json.loads(done.stdout)
    predictions = evaluated.get("predictions", evaluated)
    assert predictions["iteration_time_s"] == pytest.approx(plan["predictions"]["iteration_time_s"], rel=1e-9)


def test_a_document_of_the_wrong_kind_stops_the_pipe_with_exit_3(piped):
    done = bash("galvatron-search --memory 1 plan.json", piped)
    assert done.returncode == 3
    assert "plan.json" in done.stderr and "$.kind" in done.stderr
    assert "Traceback" not in done.stderr
