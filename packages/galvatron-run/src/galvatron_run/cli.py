"""Command line of galvatron-run.

    galvatron-run plan.json --nproc 4 --steps 20 --report run.json      # launches 4 local ranks itself
    torchrun --nproc-per-node 4 -m galvatron_run plan.json --steps 20    # under torchrun
    galvatron-run --model tiny-gpt --tp 2 --pp 2 --dp-mode zero3 --global-batch 8 --micro-batches 4 --nproc 4
"""
from __future__ import annotations

import os
import subprocess
import sys

import click

from . import __version__
from ._contracts.documents import UsageError, exits_cleanly, read_one
from ._contracts.models import load_model_spec
from .plan import check_plan, prepared_plan, uniform_plan


def _without_nproc(argv: list[str]) -> list[str]:
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a == "--nproc":
            skip = True
            continue
        if a.startswith("--nproc="):
            continue
        out.append(a)
    return out


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("plan_path", required=False, metavar="PLAN")
@click.option("--nproc", type=click.IntRange(1), help="Launch this many local ranks (through torch's launcher).")
@click.option("--steps", type=click.IntRange(1), default=10, show_default=True, help="Optimizer steps.")
@click.option("--warmup-steps", type=click.IntRange(0), default=2, show_default=True,
              help="Steps excluded from the time statistics (flagged in the report).")
@click.option("--dtype", type=click.Choice(["fp32", "bf16"]), help="Override the plan's dtype.")
@click.option("--seq-len", type=click.IntRange(1), help="Override the sequence length (<= the model's max_seq_len).")
@click.option("--report", "report_path", type=click.Path(dir_okay=False), help="Write the run-report here "
              "(default: stdout).")
@click.option("--peak-tflops", type=click.FloatRange(min=0, min_open=True), help="Device peak for MFU.")
@click.option("--timeout", "timeout_s", type=click.FloatRange(min=1), default=300.0, show_default=True,
              help="Process-group timeout in seconds: a stalled collective fails after this long.")
@click.option("--model", help="Global mode: a preset or config.json; builds a uniform plan (no PLAN).")
@click.option("--tp", type=click.IntRange(1), default=1, show_default=True, help="Global mode: tensor parallel degree.")
@click.option("--pp", type=click.IntRange(1), default=1, show_default=True, help="Global mode: pipeline stages.")
@click.option("--dp-mode", type=click.Choice(["ddp", "zero2", "zero3"]), default="ddp", show_default=True)
@click.option("--recompute", is_flag=True, help="Global mode: full recompute of every decoder layer.")
@click.option("--sp", is_flag=True, help="Global mode: sequence parallelism (tp > 1).")
@click.option("--tp-layout", type=click.Choice(["consecutive", "strided"]), default="consecutive", show_default=True)
@click.option("--schedule", type=click.Choice(["1f1b", "gpipe"]), default="1f1b", show_default=True)
@click.option("--global-batch", type=click.IntRange(1), help="Global mode: samples per step.")
@click.option("--micro-batches", type=click.IntRange(1), default=1, show_default=True)
@click.option("--world", type=click.IntRange(1), help="Global mode: world size (default --nproc or WORLD_SIZE).")
@click.version_option(__version__, prog_name="galvatron-run")
@exits_cleanly
def main(plan_path, nproc, steps, warmup_steps, dtype, seq_len, report_path, peak_tflops, timeout_s, model, tp, pp,
         dp_mode, recompute, sp, tp_layout, schedule, global_batch, micro_batches, world):
    """Train with PLAN (a plan document, '-' for stdin) on torch.distributed and write a run-report."""
    if plan_path and model:
        raise UsageError("give either PLAN or --model (global mode), not both")
    if not plan_path and not model:
        raise UsageError("missing PLAN (a plan document) or --model NAME (global mode); see --help")
    world_size = world or nproc or int(os.environ.get("WORLD_SIZE", "1"))
    if model:
        if global_batch is None:
            raise UsageError("global mode needs --global-batch")
        spec = load_model_spec(model)
        plan = uniform_plan(spec, world_size, tp=tp, pp=pp, dp_mode=dp_mode, recompute=recompute, sp=sp,
                            tp_layout=tp_layout, global_batch=global_batch, micro_batches=micro_batches,
                            seq_len=seq_len, dtype=dtype or "fp32", schedule=schedule, version=__version__)
    else:
        plan = read_one(plan_path, "plan")
    check_plan(prepared_plan(plan, dtype=dtype, seq_len=seq_len), world_size, plan_path or "global plan")
    if nproc is not None and "RANK" not in os.environ:
        args = _without_nproc(sys.argv[1:])
        if model and world is None:
            args += ["--world", str(nproc)]
        if plan_path == "-":
            raise UsageError("--nproc cannot forward a plan read from stdin; give a file")
        env = dict(os.environ)
        env.setdefault("OMP_NUM_THREADS", "1")
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               "-m", "galvatron_run", *args]
        sys.exit(subprocess.call(cmd, env=env))
    from .runner import run_rank
    run_rank(plan, plan_path=plan_path, steps=steps, warmup_steps=warmup_steps, dtype=dtype, report_path=report_path,
             peak_tflops=peak_tflops, timeout_s=timeout_s, seq_len=seq_len)
