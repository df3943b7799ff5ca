"""The GPU check under pytest: skipped without a CUDA GPU.

    pytest -q integration_tests/gpu          # with all four packages installed (tox -e integration)
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

SCRIPT = Path(__file__).resolve().parent / "gpu_check.py"

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")


def test_gpu_check_runs_both_models_with_and_without_recompute(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path)], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["failed"] == []
    runs = {(r["model"], r["recompute"]) for r in summary["rows"]}
    assert runs == {(m, rc) for m in ("gpt-1b", "llama-1b") for rc in (False, True)}
    for r in summary["rows"]:
        assert r["t_meas"] > 0 and r["mem_meas"] > 0
        assert r["mfu"] is None or 0 < r["mfu"] < 1
        assert "max_memory_allocated" in r["memory_method"]
    by = {(r["model"], r["recompute"]): r for r in summary["rows"]}
    for m in ("gpt-1b", "llama-1b"):      # full recompute keeps less and takes longer than none
        assert by[(m, True)]["mem_meas"] < by[(m, False)]["mem_meas"]
        assert by[(m, True)]["t_meas"] > by[(m, False)]["t_meas"]
