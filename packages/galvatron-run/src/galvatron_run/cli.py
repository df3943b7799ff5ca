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

from galvatron_contracts.documents import UsageError, exits_cleanly, read_one
from galvatron_contracts.models import load_model_spec

from . import __version__
from .plan import check_plan, prepared_plan, uniform_plan
from .runner import LongRun, run_rank


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
@click.option("--data", "data_path", type=click.Path(), help="Training data: a token file (with a PATH.json sidecar "
              "or --data-dtype), a .npy array, UTF-8 text (byte-level) or a directory with train.* and val.* "
              "(default: seeded random tokens).")
@click.option("--data-dtype", type=click.Choice(["uint8", "uint16", "uint32"]), help="Dtype of a raw token file.")
@click.option("--data-format", type=click.Choice(["tokens", "text", "npy"]), help="Override format detection.")
@click.option("--val-fraction", type=click.FloatRange(0, 1, max_open=True), default=0.1, show_default=True,
              help="Tail of the data held out for validation (unless a val file is given).")
@click.option("--eval-every", type=click.IntRange(1), help="Validation loss every K steps (in the run-report).")
@click.option("--eval-batches", type=click.IntRange(1), default=4, show_default=True,
              help="Validation batches per evaluation.")
@click.option("--checkpoint-dir", type=click.Path(file_okay=False), help="Sharded checkpoints go here.")
@click.option("--save-every", type=click.IntRange(1), help="Save every K steps (and at the end, and on SIGTERM).")
@click.option("--keep", type=click.IntRange(1), help="Keep only the newest N complete checkpoints.")
@click.option("--resume", is_flag=True, help="Continue from the newest complete checkpoint in --checkpoint-dir "
              "(under any plan: the state is resharded on load).")
@click.option("--init-from", type=click.Path(dir_okay=False), help="Start from a single-file full state dict "
              "(written by --export or `python -m galvatron_run.checkpoint export`).")
@click.option("--export", "export_path", type=click.Path(dir_okay=False),
              help="At the end, write the model as one full (unsharded) state dict file.")
@click.version_option(__version__, prog_name="galvatron-run")
@exits_cleanly
def main(plan_path, nproc, steps, warmup_steps, dtype, seq_len, report_path, peak_tflops, timeout_s, model, tp, pp,
         dp_mode, recompute, sp, tp_layout, schedule, global_batch, micro_batches, world, data_path, data_dtype,
         data_format, val_fraction, eval_every, eval_batches, checkpoint_dir, save_every, keep, resume, init_from,
         export_path):
    """Train with PLAN (a plan document, '-' for stdin) on torch.distributed and write a run-report."""
    if (resume or save_every or keep) and not checkpoint_dir:
        raise UsageError("--resume, --save-every and --keep need --checkpoint-dir")
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
    run_plan = prepared_plan(plan, dtype=dtype, seq_len=seq_len)
    check_plan(run_plan, world_size, plan_path or "global plan")
    long_run = LongRun(data_path=data_path, data_dtype=data_dtype, data_format=data_format, val_fraction=val_fraction,
                       eval_every=eval_every, eval_batches=eval_batches, checkpoint_dir=checkpoint_dir,
                       save_every=save_every, keep=keep, resume=resume, init_from=init_from, export_path=export_path)
    data = long_run.data_source(run_plan)          # bad data exits 3 here, before any rank starts
    if eval_every and data.num_validation_batches == 0:
        raise UsageError("--eval-every needs a validation split (--data with --val-fraction > 0, or a val file)")
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
    run_rank(plan, plan_path=plan_path, steps=steps, warmup_steps=warmup_steps, dtype=dtype, report_path=report_path,
             peak_tflops=peak_tflops, timeout_s=timeout_s, seq_len=seq_len, long_run=long_run)
