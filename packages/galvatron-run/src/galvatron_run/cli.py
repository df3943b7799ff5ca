"""Command line of galvatron-run (``galvatron-run --help`` shows these examples).

    galvatron-run plan.json --nproc 4 --steps 20 -o run.json          # launches 4 local ranks itself
    torchrun --nproc-per-node 4 -m galvatron_run plan.json --steps 20   # under torchrun
    galvatron-run --model tiny-gpt --tp 2 --pp 2 --dp-mode zero3 --global-batch 8 --micro-batches 4 --nproc 4
    galvatron-run prepare-data docs.jsonl --tokenizer tokenizer.json -o data/train   # then --data data/train

The plan is checked once per process, by ``plan.checked_plan``, before data, launch or any process group. A
document that fails the checks was refused by ``read_one`` already (exit 3); what fails them after the command
line's overrides (``--seq-len``, ``--dtype``, global mode) is the flags' fault: exit 2. Every path the ranks will
use is checked then too (``_check_paths``), so a bad one fails in seconds, not after the training. With ``--nproc``
the ranks run under ``galvatron_contracts.launch``: one message and the ranks' own exit code come back, and
SIGTERM, SIGINT or SIGHUP stops them at a step boundary (after a checkpoint).
"""
from __future__ import annotations

import os
import sys

import click

from galvatron_contracts.documents import DocumentError, UsageError, exits_cleanly, read_one
from galvatron_contracts.launch import (
    check_input_file,
    check_output_dir,
    check_output_file,
    launch,
    reports_to_launcher,
)
from galvatron_contracts.limits import MAX_PEAK_TFLOPS, MAX_RANKS, MAX_TIMEOUT_S
from galvatron_contracts.models import load_model_spec
from galvatron_contracts.names import DP_SHARDINGS
from galvatron_contracts.options import Finite

from . import __version__
from . import checkpoint as ckpt
from .failures import restart_count
from .hf_io import HFCheckpoint, check_export_dir, check_exportable
from .plan import checked_plan, uniform_plan
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


def _check_paths(report_path: str | None, export_path: str | None, init_from: str | None,
                 checkpoint_dir: str | None, resume: bool, launching: bool, export_hf: str | None = None,
                 force: bool = False) -> None:
    """The paths the ranks will use, before any rank starts (under torchrun: on every rank, before its process
    group). An output that cannot be written exits 2, a missing input 3; a checkpoint directory another run holds
    exits 2 (checked here in the --nproc parent, and by rank 0 for the run's life); ``resume`` (--resume without
    --resume-or-start) with no usable checkpoint exits 3, naming what is wrong with each one; a non-empty
    --export-hf directory without --force exits 2."""
    if report_path and report_path != "-":
        check_output_file(report_path, "--report")
    if export_path:
        check_output_file(export_path, "--export")
    if export_hf:
        check_export_dir(export_hf, force)
    if init_from:
        check_input_file(init_from, "--init-from")
    if checkpoint_dir:
        check_output_dir(checkpoint_dir, "--checkpoint-dir")
        if launching:
            ckpt.check_unlocked(checkpoint_dir)
        if resume and restart_count() == 0:
            ckpt.check_resumable(checkpoint_dir)


def _dry_run(plan: dict, ranks: tuple[int, ...], source: str, dtype: str | None, seq_len: int | None,
             nproc: int | None) -> None:
    """--dry-run: the plan checked for its own world (after the flags' overrides: their fault is exit 2, as for a
    run), then each rank built and reported by dryrun.py (exit 3 or 4 on a fault it finds)."""
    from . import dryrun

    if nproc is not None:
        raise UsageError("--dry-run builds its ranks in this process: give --rank, not --nproc")
    try:
        checked = checked_plan(plan, plan["cluster"]["world_size"], source, dtype=dtype, seq_len=seq_len)
    except DocumentError as e:
        raise UsageError(str(e)) from None
    dryrun.run(checked, list(ranks) or sorted({0, checked.world_size - 1}))


class _RunCommand(click.Command):
    """``galvatron-run PLAN ...``, with one subcommand in front of PLAN: ``galvatron-run prepare-data ...``
    (prepare.py). A plan file named ``prepare-data`` is reached as ``./prepare-data``."""

    def main(self, args=None, prog_name=None, **extra):
        argv = list(sys.argv[1:] if args is None else args)
        if argv[:1] == ["prepare-data"]:
            from .prepare import command as prepare_data
            return prepare_data.main(argv[1:], f"{prog_name or 'galvatron-run'} prepare-data", **extra)
        return super().main(argv, prog_name, **extra)


@click.command(cls=_RunCommand, context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("plan_path", required=False, metavar="PLAN")
@click.option("--nproc", type=click.IntRange(1, MAX_RANKS),
              help="Launch this many local ranks (through torch's launcher).")
@click.option("--steps", type=click.IntRange(1), default=10, show_default=True, help="Optimizer steps.")
@click.option("--warmup-steps", type=click.IntRange(0), default=2, show_default=True,
              help="Steps excluded from the time statistics (flagged in the report).")
@click.option("--dtype", type=click.Choice(["fp32", "bf16"]), help="Override the plan's dtype.")
@click.option("--seq-len", type=click.IntRange(1), help="Override the sequence length (<= the model's max_seq_len).")
@click.option("-o", "--output", "--report", "report_path", type=click.Path(dir_okay=False), metavar="FILE",
              help="Write the run-report to FILE (default: stdout); --report is the older spelling.")
@click.option("--peak-tflops", type=Finite(0, MAX_PEAK_TFLOPS, min_open=True), help="Device peak for MFU.")
@click.option("--timeout", "timeout_s", type=Finite(1, MAX_TIMEOUT_S), default=300.0, show_default=True,
              help="Process-group timeout in seconds: a stalled collective fails after this long.")
@click.option("--model", help="Global mode: a preset or config.json; builds a uniform plan (no PLAN).")
@click.option("--tp", type=click.IntRange(1), default=1, show_default=True, help="Global mode: tensor parallel degree.")
@click.option("--pp", type=click.IntRange(1), default=1, show_default=True, help="Global mode: pipeline stages.")
@click.option("--dp-mode", type=click.Choice(DP_SHARDINGS), default="ddp", show_default=True)
@click.option("--recompute", is_flag=True, help="Global mode: full recompute of every decoder layer.")
@click.option("--sp", is_flag=True, help="Global mode: sequence parallelism (tp > 1).")
@click.option("--tp-layout", type=click.Choice(["consecutive", "strided"]), default="consecutive", show_default=True)
@click.option("--schedule", type=click.Choice(["1f1b", "gpipe"]), default="1f1b", show_default=True)
@click.option("--global-batch", type=click.IntRange(1), help="Global mode: samples per step.")
@click.option("--micro-batches", type=click.IntRange(1), default=1, show_default=True)
@click.option("--world", type=click.IntRange(1, MAX_RANKS),
              help="Global mode: world size (default --nproc or WORLD_SIZE).")
@click.option("--data", "data_path", type=click.Path(), help="Training data: a Megatron-LM indexed dataset PREFIX "
              "(PREFIX.bin + PREFIX.idx, as `galvatron-run prepare-data` writes), a token file (with a PATH.json "
              "sidecar or --data-dtype), a .npy array, UTF-8 text (byte-level) or a directory with train.* and val.* "
              "(default: seeded random tokens).")
@click.option("--data-dtype", type=click.Choice(["uint8", "uint16", "uint32"]), help="Dtype of a raw token file.")
@click.option("--data-format", type=click.Choice(["tokens", "text", "npy", "megatron"]),
              help="Override format detection.")
@click.option("--val-fraction", type=Finite(0, 1, max_open=True), default=0.1, show_default=True,
              help="Tail of the data held out for validation (unless a val file is given).")
@click.option("--eval-every", type=click.IntRange(1), help="Validation loss every K steps (in the run-report).")
@click.option("--eval-batches", type=click.IntRange(1), default=4, show_default=True,
              help="Validation batches per evaluation.")
@click.option("--checkpoint-dir", type=click.Path(file_okay=False), help="Sharded checkpoints go here.")
@click.option("--save-every", type=click.IntRange(1), help="Save every K steps (and at the end, and on SIGTERM).")
@click.option("--keep", type=click.IntRange(1), help="Keep only the newest N complete checkpoints.")
@click.option("--resume", is_flag=True, help="Continue from the newest complete checkpoint in --checkpoint-dir "
              "(under any plan: the state is resharded on load); exit 3 when it holds none that is usable.")
@click.option("--resume-or-start", is_flag=True, help="Like --resume, but start from step 0 when --checkpoint-dir "
              "holds no usable checkpoint (e.g. every launch of a job that is requeued).")
@click.option("--init-from", type=click.Path(dir_okay=False), help="Start from a single-file full state dict "
              "(written by --export or `python -m galvatron_run.checkpoint export`).")
@click.option("--export", "export_path", type=click.Path(dir_okay=False),
              help="At the end, write the model as one full (unsharded) state dict file.")
@click.option("--init-from-hf", type=click.Path(file_okay=False), metavar="DIR",
              help="Start from a Hugging Face GPT-2 or LLaMA checkpoint directory (config.json and model.safetensors "
              "or a sharded model.safetensors.index.json); each rank reads only the slices it holds. Its config "
              "must be the plan's model (exit 3 naming the field); without PLAN or --model it is the model, e.g. "
              "--init-from-hf ./gpt2 --tp 2 --global-batch 8 --nproc 2.")
@click.option("--export-hf", type=click.Path(file_okay=False), metavar="DIR",
              help="At the end, write the model as a Hugging Face checkpoint that transformers loads (config.json "
              "and model.safetensors, sharded with an index above 5 GiB), e.g. --export-hf ./tuned.")
@click.option("--force", is_flag=True, help="Let --export-hf replace the weights and config.json of a non-empty "
              "directory (other files stay).")
@click.option("--trace", "trace_path", type=click.Path(dir_okay=False), metavar="FILE",
              help="Write the timed step (the one the run-report's breakdown measured) as a Chrome / Perfetto trace: "
                   "per rank its phases, each plan entry's forward, backward and recompute, each collective.")
@click.option("--dry-run", is_flag=True, help="Pre-flight, no data or training: build --rank R of the plan's world "
              "in this process (meta device, fake process group), check its groups, shapes and tie, and print its "
              "model states beside the plan's prediction (dryrun.py).")
@click.option("--rank", "ranks", type=click.IntRange(0), multiple=True, metavar="R",
              help="With --dry-run: the global rank to build; repeat for several (default: the first and the last).")
@click.version_option(__version__, prog_name="galvatron-run")
@exits_cleanly
@reports_to_launcher
def main(plan_path, nproc, steps, warmup_steps, dtype, seq_len, report_path, peak_tflops, timeout_s, model, tp, pp,
         dp_mode, recompute, sp, tp_layout, schedule, global_batch, micro_batches, world, data_path, data_dtype,
         data_format, val_fraction, eval_every, eval_batches, checkpoint_dir, save_every, keep, resume,
         resume_or_start, init_from, export_path, init_from_hf, export_hf, force, trace_path, dry_run, ranks):
    """Train with PLAN (a plan document, '-' for stdin) on torch.distributed and write a run-report.

    Examples:

    \b
    A searched plan on 4 local ranks, the report in run.json:
        galvatron-run plan.json --nproc 4 --steps 20 -o run.json

    \b
    The same under torchrun (one command per node):
        torchrun --nproc-per-node 4 -m galvatron_run plan.json --steps 20 -o run.json

    \b
    Global mode, no PLAN: one strategy for every layer, layers split evenly:
        galvatron-run --model tiny-gpt --tp 2 --pp 2 --dp-mode zero3 \\
            --global-batch 8 --micro-batches 4 --nproc 4

    \b
    Tokenize JSONL with a tokenizer.json, then train on it (see prepare-data --help):
        galvatron-run prepare-data docs.jsonl --tokenizer tokenizer.json -o data/train
        galvatron-run --model tiny-gpt --global-batch 8 --nproc 2 --data data/train

    \b
    Fine-tune a Hugging Face checkpoint under tp 2 and write it back:
        galvatron-run --init-from-hf ./gpt2 --tp 2 --global-batch 8 \\
            --nproc 2 --steps 100 --export-hf ./gpt2-tuned

    \b
    The measured step as a trace to open in ui.perfetto.dev:
        galvatron-run plan.json --nproc 2 --steps 10 -o run.json --trace step.json

    \b
    Pre-flight ranks 0 and 1023 of a 1,024-GPU plan, in seconds on a laptop:
        galvatron-run plan.json --dry-run --rank 0 --rank 1023
    """
    if (resume or resume_or_start or save_every or keep) and not checkpoint_dir:
        raise UsageError("--resume, --resume-or-start, --save-every and --keep need --checkpoint-dir")
    if init_from and init_from_hf:
        raise UsageError("give either --init-from or --init-from-hf, not both")
    if force and not export_hf:
        raise UsageError("--force only applies to --export-hf")
    if plan_path and model:
        raise UsageError("give either PLAN or --model (global mode), not both")
    if not plan_path and not model and init_from_hf:
        model = init_from_hf                            # global mode with the checkpoint's own config.json
    if not plan_path and not model:
        raise UsageError("missing PLAN (a plan document) or --model NAME (global mode); see --help")
    world_size = world or nproc or int(os.environ.get("WORLD_SIZE", "1"))
    if model:
        if global_batch is None:
            raise UsageError("global mode needs --global-batch")
        if sp and tp == 1:
            raise UsageError("--sp needs --tp > 1 (sequence parallelism splits the sequence over the tp group)")
        # the checkpoint's own reading of its config (it knows transformers 5's rope_parameters)
        spec = HFCheckpoint.open(init_from_hf).spec if model == init_from_hf else load_model_spec(model)
        plan = uniform_plan(spec, world_size, tp=tp, pp=pp, dp_mode=dp_mode, recompute=recompute, sp=sp,
                            tp_layout=tp_layout, global_batch=global_batch, micro_batches=micro_batches,
                            seq_len=seq_len, dtype=dtype or "fp32", schedule=schedule, version=__version__)
    else:
        plan = read_one(plan_path, "plan")
    if ranks and not dry_run:
        raise UsageError("--rank needs --dry-run")
    if dry_run:
        _dry_run(plan, ranks, plan_path or f"the global-mode plan of --model {model}", dtype, seq_len, nproc)
        return
    launching = nproc is not None and "RANK" not in os.environ
    if launching and plan_path == "-":
        raise UsageError("--nproc cannot forward a plan read from stdin; give a file")
    _check_paths(report_path, export_path, init_from, checkpoint_dir, resume and not resume_or_start, launching,
                 export_hf, force)
    if trace_path:
        check_output_file(trace_path, "--trace")
    here = nproc if launching else int(os.environ.get("WORLD_SIZE", "1"))
    source = plan_path or f"the global-mode plan of --model {model}"
    try:
        checked = checked_plan(plan, here, source, dtype=dtype, seq_len=seq_len)
    except DocumentError as e:  # the document itself passed read_one: what fails now comes from the flags
        raise UsageError(str(e)) from None
    run_plan = checked.document
    if init_from_hf:                # config.json and the safetensors headers against the plan's model, exit 3
        HFCheckpoint.open(init_from_hf).check(run_plan["model"], source)
    if export_hf:
        check_exportable(run_plan["model"], source)
    long_run = LongRun(data_path=data_path, data_dtype=data_dtype, data_format=data_format, val_fraction=val_fraction,
                       eval_every=eval_every, eval_batches=eval_batches, checkpoint_dir=checkpoint_dir,
                       save_every=save_every, keep=keep, resume=resume or resume_or_start,
                       resume_or_start=resume_or_start, init_from=init_from, export_path=export_path,
                       init_from_hf=init_from_hf, export_hf=export_hf, trace_path=trace_path)
    data = long_run.data_source(run_plan)          # bad data exits 3 here, before any rank starts
    if eval_every and data.num_validation_batches == 0:
        raise UsageError("--eval-every needs a validation split (--data with --val-fraction > 0, or a val file)")
    if launching:
        args = _without_nproc(sys.argv[1:])
        if model and world is None:
            args += ["--world", str(nproc)]
        sys.exit(launch("galvatron_run", args, nproc, stop_timeout_s=timeout_s))  # the ranks get --timeout to stop
    run_rank(plan, plan_path=plan_path, steps=steps, warmup_steps=warmup_steps, dtype=dtype, report_path=report_path,
             peak_tflops=peak_tflops, timeout_s=timeout_s, seq_len=seq_len, long_run=long_run, checked=checked)
