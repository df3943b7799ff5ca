"""The command line's long-run options together: text data, validation through any schedule, export.

    pytest tests/test_cli_long_run.py
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch

from galvatron_run.data import CORPUS

ENV = dict(os.environ, OMP_NUM_THREADS="1")


def cli(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "galvatron_run", "--model", "tiny-gpt", "--global-batch", "4", "--micro-batches", "2",
           "--seq-len", "32", "--warmup-steps", "0", "--nproc", "2", "--steps", "2", "--data", str(CORPUS),
           "--eval-every", "1", "--eval-batches", "2", *args]
    return subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("long-run")
    dp = cli("--report", str(out / "dp.json"), "--export", str(out / "model.pt"))
    assert dp.returncode == 0, dp.stderr[-3000:]
    pp = cli("--pp", "2", "--schedule", "gpipe", "--report", str(out / "pp.json"))
    assert pp.returncode == 0, pp.stderr[-3000:]
    return out


def test_validation_loss_is_reported_every_k_steps_on_text_data(runs):
    report = json.loads((runs / "dp.json").read_text())
    assert report["settings"]["data"] == {"kind": "text", "path": str(CORPUS)}
    assert [v["step"] for v in report["validation"]] == [1, 2]
    assert all(0 < v["loss"] < math.log(256) + 1 for v in report["validation"])
    assert all(v["tokens"] == 2 * 4 * 32 for v in report["validation"])


def test_validation_through_the_pipeline_schedule_equals_data_parallel(runs):
    """Same model, same held-out tokens: forward-only passes through gpipe stages give the same loss."""
    dp = json.loads((runs / "dp.json").read_text())["validation"]
    pp = json.loads((runs / "pp.json").read_text())["validation"]
    assert [v["step"] for v in pp] == [v["step"] for v in dp]
    for a, b in zip(dp, pp):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)


def test_export_writes_every_parameter_of_the_model_in_one_file(runs):
    state = torch.load(runs / "model.pt", weights_only=True)
    assert any(k.startswith("embedding.") for k in state) and any(k.startswith("head.") for k in state)
    assert {k.split(".")[1] for k in state if k.startswith("layers.")} == {"0", "1", "2", "3"}
    assert all(torch.isfinite(v).all() for v in state.values())
