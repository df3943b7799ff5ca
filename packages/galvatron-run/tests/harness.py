"""Shared by the distributed test files: launch the ranks once per file (torchrun), then compare every case with the
single-process reference."""
from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
import traceback
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

HERE = Path(__file__).parent
SRC = HERE.parent / "src"


def launch(cases: list[dict], nproc: int, out: Path, timeout: float = 400) -> None:
    """Run every case in one torchrun world of ``nproc`` ranks; raise with the log tail on failure."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "cases.json").write_text(json.dumps(cases))
    path = os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=path)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           str(HERE / "dist_worker.py"), str(out / "cases.json"), str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        errors = "".join(Path(p).read_text()[-3000:] for p in sorted(glob.glob(str(out / "*.error.rank0"))))
        raise AssertionError(f"ranks failed (rc {proc.returncode}):\n{errors or proc.stderr[-5000:]}")


def launch_file(program: str, out: Path, nproc: int = 2, timeout: float = 400, **env_extra: str) -> None:
    """``program`` (a test file that is also a rank program) in a torchrun world of ``nproc`` ranks, given ``out``;
    ``env_extra``: more environment variables. Raise with rank 0's error file or the log tail on failure."""
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(SRC), str(HERE),
                                                                            os.environ.get("PYTHONPATH", "")]),
               **env_extra)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", program,
           str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        errors = "".join(p.read_text()[-3000:] for p in sorted(out.glob("*.error.rank0")))
        raise AssertionError(f"ranks failed (rc {proc.returncode}):\n{errors or proc.stderr[-5000:]}")


def rank_jobs(out_dir: str, jobs) -> None:
    """A test rank program's body (the other side of ``launch_file``): join a gloo world (60 s timeout), run
    ``jobs(out)`` ({name: callable}) in order, each failure written to ``<name>.error.rank<R>`` before it is raised,
    then leave the world."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", timeout=timedelta(seconds=60))
    out = Path(out_dir)
    for name, job in jobs(out).items():
        try:
            job()
        except Exception:
            (out / f"{name}.error.rank{dist.get_rank()}").write_text(traceback.format_exc())
            raise
    dist.destroy_process_group()


def result(out: Path, name: str) -> tuple[dict, dict[str, torch.Tensor]]:
    got = json.loads((out / f"{name}.losses.json").read_text())
    params: dict[str, torch.Tensor] = {}
    for f in sorted(glob.glob(str(out / f"{name}.stage*.pt"))):
        params.update(torch.load(f))
    return got, params


def assert_matches_reference(got: dict, params: dict, ref: tuple, loss_rtol: float = 1e-5,
                             param_atol: float = 1e-4) -> None:
    """Each step's loss and gradient norm within ``loss_rtol`` relative, every parameter within ``param_atol``.

    The issue asks for 1e-4 relative on the losses; the runtime reaches ~1e-7, so 1e-5 is used (a wrong tied-copy
    norm once hid at 1e-5)."""
    ref_losses, ref_params, ref_norms = ref
    assert len(got["losses"]) == len(ref_losses)
    for step, (a, b) in enumerate(zip(got["norms"], ref_norms, strict=True)):
        assert abs(a - b) <= loss_rtol * abs(b), f"step {step}: gradient norm {a} vs reference {b}"
    for step, (a, b) in enumerate(zip(got["losses"], ref_losses, strict=True)):
        assert abs(a - b) <= loss_rtol * abs(b), f"step {step}: loss {a} vs reference {b}"
    assert set(params) == set(ref_params), (set(params) ^ set(ref_params))
    for name, ref in ref_params.items():
        diff = (params[name] - ref).abs().max().item()
        assert diff <= param_atol, f"{name}: max |diff| {diff:.2e} after {len(ref_losses)} steps"
