"""Command line of galvatron-cost (``galvatron-cost fit --help`` shows these examples).

    galvatron-cost fit hw.json model.json -o cost.json
    { galvatron-probe bandwidth; galvatron-probe compute --model gpt2-small; } | galvatron-cost fit - --explain
    galvatron-cost fit profiles.json --nodes 128 --gpus-per-node 8 --seq-len 2048 -o cost.json

The cost model goes to stdout or ``-o FILE`` (written atomically); the --explain tables, the closing summary line,
warnings and errors go to stderr. Exit codes: 0 ok, 1 runtime failure, 2 usage, 3 invalid or disagreeing input
documents.
"""
from __future__ import annotations

import time

import click

from galvatron_contracts.documents import DocumentError, exits_cleanly, output_path, read_named, write_document
from galvatron_contracts.limits import MAX_MEMORY_GIB, MAX_RANKS, MAX_SEQ
from galvatron_contracts.models import load_model_spec
from galvatron_contracts.options import Finite

from . import __version__
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
@click.option("--runtime-overhead-mib", type=Finite(0, MAX_MEMORY_GIB * 1024), default=0.0, show_default=True,
              help="Per-rank memory the runtime holds regardless of the plan.")
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
                        runtime_overhead_bytes=int(runtime_overhead_mib * 2**20), model=model,
                        sources={"hardware-profile": hw_name, "model-profile": mp_name})
    elapsed = time.perf_counter() - start
    write_document(doc, output)
    if show:
        click.echo(explain(doc), err=True, nl=False)
    n = sum(len(p["strategies"]) for p in doc["pipelines"])
    click.echo(f"galvatron-cost: fitted {n} strategies over {len(doc['pipelines'])} pipeline degrees in "
               f"{elapsed:.2f} s -> {'stdout' if output == '-' else output}", err=True)
