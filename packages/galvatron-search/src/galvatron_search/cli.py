"""Command line: `galvatron-search --memory GIB [COST_MODEL|-]` and `galvatron-search evaluate PLAN COST_MODEL`
(``--help`` of each shows these examples).

    galvatron-search --memory 32 cost.json -o plan.json
    galvatron-cost fit hw.json model.json | galvatron-search --memory 16 --global-batch 64 --explain -o plan.json
    galvatron-search evaluate hand.json cost.json -o hand-predicted.json
    galvatron-search show plan.json --report report.json -o plan.html     # a picture: .png, .svg or .html

The plan goes to stdout or ``-o FILE`` (written atomically); the --explain tables, the closing summary line,
warnings and errors go to stderr. Exit codes: 0 ok; 1 runtime failure; 2 usage; 3 invalid input document;
4 infeasible (no plan fits; a plan does not fit the cluster).
"""
from __future__ import annotations

import time

import click

from galvatron_contracts.documents import (
    UsageError,
    as_current,
    atomic_write_bytes,
    exits_cleanly,
    output_path,
    read_one,
    write_document,
)
from galvatron_contracts.limits import MAX_BATCH, MAX_MEMORY_GIB, MAX_RANKS
from galvatron_contracts.names import plan_summary
from galvatron_contracts.options import Finite

from . import __version__, show
from .costs import SHARDINGS, CostTables
from .document import baselines, plan_document
from .evaluate import evaluate_spec, plan_spec, predictions
from .explain import explain as explain_text
from .explain import robustness, robustness_text
from .planner import DEFAULT_MEMORY_MARGIN, Options, require, run_search


class DefaultGroup(click.Group):
    """A group whose default command is `search`: `galvatron-search --memory 36 cm.json` works."""

    def parse_args(self, ctx, args):
        if not args or (args[0] not in self.commands and args[0] not in ("--help", "-h", "--version")):
            args = ["search", *args]
        return super().parse_args(ctx, args)


@click.group(cls=DefaultGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="galvatron-search")
def main():
    """Find the fastest hybrid-parallel plan under a memory budget (default command: search).

    Examples:

    \b
    The fastest plan under 32 GiB per GPU:
        galvatron-search --memory 32 cost.json -o plan.json

    \b
    The predictions of any plan, hand-written ones too:
        galvatron-search evaluate plan.json cost.json

    \b
    A picture of a plan (PNG, SVG or one HTML page):
        galvatron-search show plan.json -o plan.html

    The plan goes to stdout or -o FILE; --explain tables, the closing summary line, warnings and errors to stderr.
    Exit codes: 0 ok, 1 runtime failure, 2 usage, 3 invalid input document, 4 infeasible.
    """


@main.command("search")
@click.argument("cost_model", default="-", metavar="[COST_MODEL|-]")
@click.option("--memory", "memory", type=Finite(0, MAX_MEMORY_GIB, min_open=True), required=True,
              help="Per-GPU memory budget in GiB.")
@click.option("--global-batch", type=click.IntRange(1, MAX_BATCH), help="Fix the global batch (default: search a "
              "range).")
@click.option("--min-global-batch", type=click.IntRange(1, MAX_BATCH), help="Range searched without --global-batch "
              "(powers of two; default world size).")
@click.option("--max-global-batch", type=click.IntRange(1, MAX_BATCH), help="Default 8 x world size.")
@click.option("--max-tp", type=click.IntRange(1, MAX_RANKS), help="Largest tensor-parallel degree.")
@click.option("--max-pp", type=click.IntRange(1, MAX_RANKS), help="Largest pipeline degree.")
@click.option("--no-recompute", is_flag=True, help="Never recompute activations.")
@click.option("--dp-only", is_flag=True, help="Data parallel only (tp 1), pipeline still searched unless --max-pp 1.")
@click.option("--sharding", "shardings", multiple=True, type=click.Choice(SHARDINGS),
              help="Allowed data-parallel shardings (repeatable; default all).")
@click.option("--uniform", is_flag=True, help="One strategy for every layer, layers split evenly (Megatron-style).")
@click.option("--schedule", "schedule", type=click.Choice(["1f1b", "gpipe"]), help="Fix the schedule (default: both).")
@click.option("--buckets", type=click.IntRange(min=8, max=65536), default=256, show_default=True,
              help="Memory buckets per stage in the DP (quantisation, rounded up).")
@click.option("--memory-margin", type=Finite(0, 0.9), default=DEFAULT_MEMORY_MARGIN, show_default=True,
              help="Share of --memory kept free for what the memory model cannot know (allocator fragmentation, "
                   "buffers of other libraries); plans fit in the rest. 0 trusts the model to the byte.")
@click.option("--no-baselines", is_flag=True, help="Skip the baselines in the search record.")
@click.option("--explain", is_flag=True, help="Print the baselines, the plan per stage and what it rests on that the "
              "profile did not measure (searched again at 0.5x and 2x the extrapolated bandwidth) on stderr.")
@click.option("-o", "--output", default="-", metavar="FILE", help="Write the plan to FILE (default: stdout).")
@exits_cleanly
def search_cmd(cost_model, memory, global_batch, min_global_batch, max_global_batch, max_tp, max_pp, no_recompute,
               dp_only, shardings, uniform, schedule, buckets, memory_margin, no_baselines, explain, output):
    """Search the fastest plan for COST_MODEL (a cost-model document; '-' reads stdin) under --memory GiB per GPU.

    Examples:

    \b
    The fastest plan under 32 GiB per GPU over a range of global batches:
        galvatron-search --memory 32 cost.json -o plan.json

    \b
    Straight from galvatron-cost, a fixed global batch, the plan and the baselines per stage on stderr:
        galvatron-cost fit hw.json model.json | galvatron-search --memory 16 --global-batch 64 --explain -o plan.json

    \b
    The Megatron-style baseline: one strategy for every layer, layers split evenly:
        galvatron-search --memory 32 cost.json --uniform --schedule 1f1b -o uniform.json
    """
    if output != "-":
        output_path(output)
    cm = read_one(cost_model, "cost-model")
    t0 = time.perf_counter()
    tables = CostTables(cm, _name(cost_model))
    opts = Options(memory_bytes=memory * 2 ** 30, global_batch=global_batch, min_global_batch=min_global_batch,
                   max_global_batch=max_global_batch, max_tp=max_tp, max_pp=max_pp, recompute=not no_recompute,
                   dp_only=dp_only, uniform=uniform, buckets=buckets, memory_margin=memory_margin,
                   shardings=tuple(shardings) or SHARDINGS,
                   schedules=(schedule,) if schedule else ("1f1b", "gpipe"))
    result, _ = run_search(tables, opts)
    require(result, tables, opts)
    base = None if no_baselines else baselines(tables, opts)
    doc = plan_document(tables, result.spec, opts, time.perf_counter() - t0, result.candidates, base)
    if explain:
        click.echo(explain_text(doc), err=True)
        click.echo(robustness_text(robustness(tables, result.spec, opts)), err=True)
    write_document(doc, output)
    done(doc, output, f"searched {result.candidates} candidates in {doc['search']['time_s']:.2f} s")


@main.command("evaluate")
@click.argument("plan")
@click.argument("cost_model")
@click.option("--explain", is_flag=True, help="Print the plan per stage and what it rests on that the profile did "
              "not measure (its throughput at 0.5x and 2x the extrapolated bandwidth) on stderr.")
@click.option("-o", "--output", default="-", metavar="FILE",
              help="Write the plan with its predictions to FILE (default: stdout).")
@exits_cleanly
def evaluate_cmd(plan, cost_model, explain, output):
    """Predictions for PLAN (any plan, hand-written too) under COST_MODEL; the plan is written back with them.

    Examples:

    \b
    A hand-written plan's predicted time and memory per stage, on stderr:
        galvatron-search evaluate hand.json cost.json --explain -o hand-predicted.json

    \b
    A plan searched under another cost model (say, of another cluster's profile):
        galvatron-search evaluate plan.json other-cost.json
    """
    if plan == "-" and cost_model == "-":
        raise UsageError("only one of PLAN and COST_MODEL can be stdin")
    if output != "-":
        output_path(output)
    doc = read_one(plan, "plan")
    tables = CostTables(read_one(cost_model, "cost-model"), _name(cost_model))
    spec = plan_spec(doc, tables, _name(plan))
    doc = as_current(doc, _name(plan))
    doc["predictions"] = predictions(tables, spec, evaluate_spec(tables, spec))
    if explain:
        click.echo(explain_text(doc), err=True)
        click.echo(robustness_text(robustness(tables, spec, None)), err=True)
    write_document(doc, output)
    done(doc, output, "evaluated")


@main.command("show")
@click.argument("plan")
@click.option("-o", "--output", metavar="FILE.png|.svg|.html",
              help="The picture; its suffix picks the format (default: beside PLAN with .png, plan.json -> "
                   "plan.png; plan.png from stdin). .png and .svg need matplotlib (pip install "
                   "'galvatron-search[plot]'); .html is one self-contained page and needs nothing.")
@click.option("--report", metavar="RUN_REPORT",
              help="A run report of the plan (galvatron-run --report): measured memory and step time beside the "
                   "predicted.")
@exits_cleanly
def show_cmd(plan, output, report):
    """Draw PLAN (a plan document; '-' reads stdin): layers x stages with each layer's strategy, memory per stage
    against the budget, the predicted pipeline timeline and where the step goes.

    Examples:

    \b
    The plan as a PNG beside it (plan.png):
        galvatron-search show plan.json

    \b
    One HTML page (no matplotlib needed; hover a box for its numbers), with what a run measured:
        galvatron-search show plan.json --report report.json -o plan.html

    \b
    Straight from the search:
        galvatron-search --memory 32 cost.json | galvatron-search show - -o plan.svg

    Exit codes: 0 ok, 1 cannot write, 2 usage (unknown suffix, .png/.svg without matplotlib), 3 invalid input
    document (not a plan or run report, a report of another world or stage count).
    """
    target = output or show.default_output(plan)
    fmt = show.output_format(target)
    if fmt != "html":
        show.require_matplotlib(fmt)
    output_path(target)
    if plan == "-" and report == "-":
        raise UsageError("only one of PLAN and --report can be stdin")
    doc = read_one(plan, "plan")
    run_report = read_one(report, "run-report") if report else None
    warnings = show.check_pair(doc, run_report, _name(plan), _name(report or "-"))
    for line in warnings:
        click.echo(f"warning: {line}", err=True)
    atomic_write_bytes(target, show.render(doc, run_report, fmt, warnings))
    click.echo(f"galvatron-search: drew {plan_summary(doc)}{' with its run report' if report else ''} -> {target}",
               err=True)


def _name(path: str) -> str:
    """How messages name an input: its path, or <stdin>."""
    return "<stdin>" if path == "-" else path


def done(plan: dict, output: str, what: str) -> None:
    """The closing line on stderr: what was done, the plan in one line, its predicted throughput, where it went."""
    pred = plan["predictions"]
    click.echo(f"galvatron-search: {what}: {plan_summary(plan)}; predicted {pred['iteration_time_s']:.4g} s per "
               f"iteration, {pred['samples_per_s']:.4g} samples/s -> {'stdout' if output == '-' else output}",
               err=True)
