"""Command line of galvatron-probe.

    galvatron-probe bandwidth --nproc 4 [--quick] [-o hw.json]
    torchrun --nproc-per-node 8 -m galvatron_probe bandwidth -o hw.json
    galvatron-probe compute --model tiny-llama --tp 1,2 --micro-batch-sizes 1,2,4 [--nproc 2] [-o model.json]
    galvatron-probe summary hw.json model.json [-o tables.txt]

Every command writes its result to stdout or ``-o FILE`` (atomically; under torchrun by rank 0 only) and nothing
else to stdout. stderr carries the rest, one line each: ``error: ...`` (then the exit code), ``warning: ...``, and
rank 0's progress ``<command> [####......] done/total elapsed what`` (``--no-progress`` silences it).
Exit codes: 0 ok, 1 runtime failure, 2 impossible request, 3 invalid input document (a bad config.json).
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import click

from galvatron_contracts.documents import (
    GalvatronError,
    UsageError,
    exits_cleanly,
    output_path,
    write_document,
    write_text,
)
from galvatron_contracts.limits import MAX_BATCH, MAX_RANKS, MAX_REPEATS, MAX_SEQ, MAX_TIMEOUT_S
from galvatron_contracts.options import Finite

from . import __version__

_UNITS = {"": 1, "b": 1, "k": 1024, "kb": 1000, "kib": 1024, "m": 1024 ** 2, "mb": 1000 ** 2, "mib": 1024 ** 2,
          "g": 1024 ** 3, "gb": 1000 ** 3, "gib": 1024 ** 3}


class Bytes(click.ParamType):
    """A byte count: 4096, 4KiB, 32MiB, 1GiB (K/M/G alone are binary)."""

    name = "bytes"

    def convert(self, value, param, ctx):
        if isinstance(value, int):
            return value
        m = re.fullmatch(r"\s*(\d+)\s*([a-zA-Z]*)\s*", str(value))
        if not m or m.group(2).lower() not in _UNITS:
            self.fail(f"expected a byte count like 4096, 4KiB or 32MiB, got {value!r}", param, ctx)
        return int(m.group(1)) * _UNITS[m.group(2).lower()]


class IntList(click.ParamType):
    """Comma-separated positive integers up to ``maximum`` (limits.py): 1,2,4."""

    name = "ints"

    def __init__(self, maximum: int):
        self.maximum = maximum

    def convert(self, value, param, ctx):
        if isinstance(value, list):
            return value
        try:
            out = [int(v) for v in str(value).split(",") if v.strip()]
        except ValueError:
            self.fail(f"expected comma-separated integers like 1,2,4, got {value!r}", param, ctx)
        if not out or min(out) < 1 or max(out) > self.maximum:
            self.fail(f"expected positive integers up to {self.maximum}, got {value!r}", param, ctx)
        return out


def _check_output(output: str) -> None:
    """Fail before the probe runs (minutes) when the result could not be written."""
    if output == "-":
        return
    path = Path(output)
    if path.is_dir():
        raise UsageError(f"-o {output}: is a directory; expected a file path")
    parent = next((p for p in [path.parent, *path.parent.parents] if p.exists()), Path("."))
    if not parent.is_dir():
        raise UsageError(f"-o {output}: {parent} is not a directory")
    if not os.access(parent, os.W_OK):
        raise UsageError(f"-o {output}: {parent} is not writable")
    output_path(output)                 # a device or a pipe: exit 2


def _write(result: dict | str | None, output: str) -> None:
    """A document (validated) or text to stdout or ``output``; None (not rank 0) writes nothing."""
    if result is None:
        return
    try:
        if isinstance(result, dict):
            write_document(result, output)
        else:
            write_text(result + "\n", output)
    except OSError as e:
        raise GalvatronError(f"-o {output}: cannot write the result ({e})") from None


_OUTPUT = click.option("-o", "--output", default="-", show_default=True, help="Output file ('-': stdout).")


def _common(fn):
    for opt in reversed([
        click.option("--nproc", type=click.IntRange(1, MAX_RANKS), default=None,
                     help="Launch N local ranks (torch's launcher). Leave out under torchrun."),
        click.option("--quick", is_flag=True, help="A reduced sweep (tests, quickstart)."),
        click.option("--warmup", type=click.IntRange(0, MAX_REPEATS), default=None,
                     help="Warm-up iterations per point."),
        click.option("--repeats", type=click.IntRange(1, MAX_REPEATS), default=None, help="Timed repeats per point."),
        click.option("--timeout", "timeout_s", type=Finite(1, MAX_TIMEOUT_S), default=60.0, show_default=True,
                     help="Process-group timeout in seconds: a stuck collective fails after this long."),
        click.option("--progress/--no-progress", default=True, help="Progress bar on stderr (rank 0)."),
        _OUTPUT,
    ]):
        fn = opt(fn)
    return fn


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="galvatron-probe")
def main():
    """Measure a cluster's collectives (bandwidth) and a model's per-layer time and memory (compute).

    \b
    Examples:
      galvatron-probe bandwidth --nproc 4 -o hw.json
      galvatron-probe compute --model tiny-llama --nproc 2 -o model.json
      galvatron-probe summary hw.json model.json
      { galvatron-probe bandwidth --nproc 4; galvatron-probe compute --model mini-gpt; } | galvatron-cost fit

    Results go to stdout or -o FILE; progress, warnings and errors to stderr. Exit codes: 0 ok, 1 runtime failure,
    2 impossible request, 3 invalid input document.
    """


@main.command()
@click.option("--backend", type=click.Choice(["gloo", "nccl"]), default=None,
              help="Default: nccl with CUDA, else gloo.")
@click.option("--no-overlap", is_flag=True, help="Skip the compute/communication overlap measurement.")
@click.option("--min-bytes", type=Bytes(), default=None, help="Smallest message (default 4KiB).")
@click.option("--max-bytes", type=Bytes(), default=None,
              help="Largest message (default 32MiB on CPU, 256MiB on GPU, 1MiB with --quick).")
@click.option("--group-sizes", type=IntList(MAX_RANKS), default=None,
              help="Group sizes to probe (default: every power of two dividing the world).")
@click.option("--gpus-per-node", "ranks_per_node", type=click.IntRange(1, MAX_RANKS), default=None,
              help="Ranks per node (default: LOCAL_WORLD_SIZE, or --nproc).")
@click.option("--dtype", type=click.Choice(["fp32", "bf16"]), default="fp32", show_default=True)
@_common
@exits_cleanly
def bandwidth(nproc, backend, quick, no_overlap, min_bytes, max_bytes, group_sizes, ranks_per_node, dtype, warmup,
              repeats, timeout_s, progress, output):
    """Collectives, p2p and overlap of the launched world -> a hardware-profile document.

    \b
    Examples:
      galvatron-probe bandwidth --nproc 4 -o hw.json          # 4 local ranks
      galvatron-probe bandwidth --nproc 2 --quick             # reduced sweep, to stdout
      galvatron-probe bandwidth --nproc 8 --gpus-per-node 4 --group-sizes 2,4 --max-bytes 64MiB
      torchrun --nnodes 2 --nproc-per-node 8 ... -m galvatron_probe bandwidth -o hw.json
    """
    from .api import probe_bandwidth

    _check_output(output)
    doc = probe_bandwidth(nproc=nproc, backend=backend, quick=quick, overlap=not no_overlap, min_bytes=min_bytes,
                          max_bytes=max_bytes, group_sizes=group_sizes, ranks_per_node=ranks_per_node, dtype=dtype,
                          warmup=warmup, repeats=repeats, timeout_s=timeout_s, progress=progress)
    _write(doc, output)


@main.command()
@click.option("--model", required=True, help="A preset name (tiny-gpt, llama2-7b, ...) or a config.json path.")
@click.option("--seq-len", "seq_lens", type=IntList(MAX_SEQ), default=None,
              help="Sequence lengths (default: max_seq_len).")
@click.option("--micro-batch-sizes", type=IntList(MAX_BATCH), default=None, help="Default 1,2,4 (--quick: 1,2).")
@click.option("--tp", "tp_degrees", type=IntList(MAX_RANKS), default=None,
              help="TP shard degrees (default: powers of two up to 8 that the model allows).")
@click.option("--layers", default=None, help="Comma-separated layer kinds (default decoder,embedding,head).")
@click.option("--dtype", type=click.Choice(["fp32", "bf16"]), default="fp32", show_default=True)
@_common
@exits_cleanly
def compute(model, seq_lens, micro_batch_sizes, tp_degrees, layers, dtype, nproc, quick, warmup, repeats,
            timeout_s, progress, output):
    """Per-layer time and exact memory of the model's TP shards -> a model-profile document.

    \b
    Examples:
      galvatron-probe compute --model tiny-llama --quick
      galvatron-probe compute --model gpt2-small --layers decoder --tp 1,2,4 -o model.json
      galvatron-probe compute --model path/to/config.json --seq-len 512,1024 --nproc 4 -o model.json
      torchrun --nproc-per-node 8 -m galvatron_probe compute --model llama2-7b --dtype bf16 -o model.json
    """
    from .api import probe_compute

    _check_output(output)
    doc = probe_compute(model, nproc=nproc, seq_lens=seq_lens, micro_batch_sizes=micro_batch_sizes,
                        tp_degrees=tp_degrees, layers=[x.strip() for x in layers.split(",")] if layers else None,
                        dtype=dtype, quick=quick, warmup=warmup, repeats=repeats, timeout_s=timeout_s,
                        progress=progress)
    _write(doc, output)


@main.command()
@click.argument("documents", nargs=-1, required=True)
@_OUTPUT
@exits_cleanly
def summary(documents, output):
    """Tables of hardware-profile and model-profile DOCUMENTS (paths, '-' for stdin).

    \b
    Examples:
      galvatron-probe summary hw.json model.json
      galvatron-probe compute --model tiny-gpt --quick | galvatron-probe summary -
      galvatron-probe summary hw.json -o hw.txt
    """
    from galvatron_contracts.documents import read_documents, route

    from .summary import summarize

    _check_output(output)
    docs = read_documents(documents)
    route(docs, {"hardware-profile", "model-profile"})
    _write("\n\n".join(summarize(d) for d in docs), output)
