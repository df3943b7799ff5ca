"""Command line of galvatron-cost (``galvatron-cost fit --help`` shows these examples).

    galvatron-cost fit hw.json model.json -o cost.json
    { galvatron-probe bandwidth; galvatron-probe compute --model gpt2-small; } | galvatron-cost fit - --explain
    galvatron-cost fit profiles.json --nodes 128 --gpus-per-node 8 --seq-len 2048 -o cost.json
    galvatron-cost calibrate cost.json r1.json r2.json -o cost2.json

The cost model goes to stdout or ``-o FILE`` (written atomically); the --explain tables, the closing summary line,
warnings and errors go to stderr. Exit codes: 0 ok, 1 runtime failure, 2 usage, 3 invalid or disagreeing input
documents (calibrate: a run-report of another cluster, model or training, or without a measured breakdown).
"""
from __future__ import annotations

import time

import click

from galvatron_contracts.documents import DocumentError, exits_cleanly, output_path, read_named, write_document
from galvatron_contracts.limits import MAX_MEMORY_GIB, MAX_RANKS, MAX_SEQ
from galvatron_contracts.models import load_model_spec
from galvatron_contracts.options import Finite

from . import __version__
from .calibrate import calibrate as calibrate_documents
from .costmodel import fit as fit_documents
from .explain import explain

PROFILES = ("hardware-profile", "model-profile")

@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="galvatron-cost")
def main():
    """Fit time and memory models of every candidate layer strategy (Galvatron microtools).

    Examples:

    \b
    The cost model of a hardware-profile and a model-profile:
        galvatron-cost fit hw.json model.json -o cost.json

    \b
    Its terms refined from run-reports of galvatron-run on the cluster:
        galvatron-cost calibrate cost.json r1.json r2.json -o cost2.json

    The cost model goes to stdout or -o FILE; --explain tables, the closing summary line, warnings and errors to
    stderr. Exit codes: 0 ok, 1 runtime failure, 2 usage, 3 invalid or disagreeing input documents.
    """


@main.command("fit")
@click.argument("docs", nargs=-1)
@click.option("--nodes", type=click.IntRange(1, MAX_RANKS), help="Target nodes (default: the profiled cluster's).")
@click.option("--gpus-per-node", type=click.IntRange(1, MAX_RANKS),
              help="Target ranks per node (default: profiled).")
@click.option("--seq-len", type=click.IntRange(1, MAX_SEQ),
              help="Training sequence length (default: longest profiled).")
@click.option("--dtype", type=click.Choice(["fp32", "bf16"]), help="Compute dtype (default: the profile's).")
@click.option("--optimizer", type=click.Choice(["adamw", "sgd"]), default="adamw", show_default=True)
@click.option("--max-tp", type=click.IntRange(1, MAX_RANKS), help="Largest TP degree (default: gpus per node).")
@click.option("--max-pp", type=click.IntRange(1, MAX_RANKS),
              help="Largest pipeline degree (default: the model's layers).")
@click.option("--runtime-overhead-mib", type=Finite(0, MAX_MEMORY_GIB * 1024),
              help="Per-rank memory the runtime holds regardless of the plan (default: what the hardware profile "
                   "measured, its runtime_memory; 0 for profiles without one).")
@click.option("--model", "model_name", help="Check the model-profile is of this preset or config.json (exit 3).")
@click.option("--explain", "show", is_flag=True, help="Print the fits and a few strategies' costs on stderr.")
@click.option("-o", "--output", default="-", metavar="FILE", help="Write the cost model to FILE (default: stdout).")
@exits_cleanly
def fit_cmd(docs, nodes, gpus_per_node, seq_len, dtype, optimizer, max_tp, max_pp, runtime_overhead_mib,
            model_name, show, output):
    """Read a hardware-profile and a model-profile (DOCS: paths, '-' for stdin, or one stream holding both) and
    write the cost model of every candidate layer strategy on the target cluster.

    Examples:

    \b
    Two profiles from galvatron-probe, the cost model in cost.json:
        galvatron-cost fit hw.json model.json -o cost.json

    \b
    Straight from the probe, the fits and a few strategies' costs on stderr:
        { galvatron-probe bandwidth; galvatron-probe compute --model gpt2-small; } \\
            | galvatron-cost fit - --explain -o cost.json

    \b
    Profiles of 2 nodes priced for 128 nodes of 8 ranks, sequence length 2048:
        galvatron-cost fit hw.json model.json --nodes 128 --gpus-per-node 8 --seq-len 2048 -o cost.json
    """
    if output != "-":
        output_path(output)
    sources = list(docs) or ["-"]
    named = read_named(sources, kinds=PROFILES)
    found = {kind: [(name, doc) for name, doc in named if doc["kind"] == kind] for kind in PROFILES}
    for kind in PROFILES:
        if len(found[kind]) != 1:
            raise DocumentError(", ".join(sources), f"expected exactly one {kind} document, got {len(found[kind])}")
    (hw_name, hw), (mp_name, mp) = found["hardware-profile"][0], found["model-profile"][0]
    model = load_model_spec(model_name) if model_name else None
    start = time.perf_counter()
    doc = fit_documents(hw, mp, nodes=nodes, gpus_per_node=gpus_per_node, seq_len=seq_len, dtype=dtype,
                        optimizer=optimizer, max_tp=max_tp, max_pp=max_pp,
                        runtime_overhead_bytes=None if runtime_overhead_mib is None else int(runtime_overhead_mib
                                                                                             * 2**20), model=model,
                        sources={"hardware-profile": hw_name, "model-profile": mp_name})
    elapsed = time.perf_counter() - start
    write_document(doc, output)
    if show:
        click.echo(explain(doc), err=True, nl=False)
    n = sum(len(p["strategies"]) for p in doc["pipelines"])
    click.echo(f"galvatron-cost: fitted {n} strategies over {len(doc['pipelines'])} pipeline degrees in "
               f"{elapsed:.2f} s -> {'stdout' if output == '-' else output}", err=True)


@main.command("calibrate")
@click.argument("cost_model", metavar="COST_MODEL")
@click.argument("reports", nargs=-1, required=True, metavar="RUN_REPORT...")
@click.option("-o", "--output", default="-", metavar="FILE", help="Write the cost model to FILE (default: stdout).")
@exits_cleanly
def calibrate_cmd(cost_model, reports, output):
    """Refine the terms of COST_MODEL that run-reports of its cluster measured (RUN_REPORT...: paths, '-' for
    stdin, or streams of several) and write the calibrated cost model.

    Each measured term (compute per layer kind, tp, sp, recompute and phase; each collective fit; the optimizer
    step; the per-step overhead) is refined from its measurements by least squares where they have several
    sizes, else by the ratio measured / predicted; unmeasured terms stay as they are. The document records the
    reports and every term before and after in `calibration`.

    Examples:

    \b
    Two runs of searched plans, then the cost model they refine:
        galvatron-run plan1.json --report r1.json
        galvatron-run plan2.json --report r2.json
        galvatron-cost calibrate cost.json r1.json r2.json -o cost2.json
    """
    if output != "-":
        output_path(output)
    found = read_named([cost_model], kinds=("cost-model",))
    if len(found) != 1:
        raise DocumentError(found[0][0], f"expected exactly one cost-model document, got {len(found)}")
    (cm_name, cm), named = found[0], read_named(list(reports), kinds=("run-report",))
    doc = calibrate_documents(cm, [d for _, d in named], [n for n, _ in named], source=cm_name)
    write_document(doc, output)
    terms = doc["calibration"]["terms"][len(cm.get("calibration", {}).get("terms", [])):]
    for t in terms:
        click.echo(f"  {t['term']}: {t['note']}", err=True)
    changed = sum(t["before"] != t["after"] for t in terms)
    click.echo(f"galvatron-cost: calibrated from {len(named)} run-report(s): {len(terms)} measured terms, "
               f"{changed} changed -> {'stdout' if output == '-' else output}", err=True)
