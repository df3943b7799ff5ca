"""The bounds a document and a command line are held to, so no number overflows and no loop outgrows its means.

Every value a reader gets (``value_errors``, before the schema; documents.validate):
  - nested at most MAX_DEPTH containers deep (the deepest field of any document, a plan's tp_groups, is 7);
  - every number finite (``1e400`` parses to infinity: refused like NaN) and at most MAX_MAGNITUDE in size,
    a bound no time, size, rate or FLOP count of a training run comes near, and under which sums and products
    of a few numbers stay finite in float64;
  - every integer within int64 (the arrays the tools compute with).
Every count (``count_errors``, with the semantic checks): a field named in COUNT_LIMITS, wherever it is in a
document, at most its bound, far above any real run and small enough for every loop over it to finish in
seconds. The same bounds cap the command lines' options (MAX_RANKS, MAX_BATCH, MAX_MEMORY_GIB, ...).
"""
from __future__ import annotations

import json
import math
from typing import Any

MAX_DEPTH = 32
TOO_DEEP = f"nested more than {MAX_DEPTH} containers deep (the deepest field of a document, a plan's tp_groups, is 7)"
MAX_MAGNITUDE = 1e30
INT64 = 2 ** 63

MAX_RANKS = 2 ** 17          # 131,072 ranks: above the largest single jobs reported (~100k GPUs); fits in ~20 s here
MAX_LAYERS = 2 ** 12         # 4,096 decoder layers (the deepest published models have ~130)
MAX_HEADS = 2 ** 12          # attention heads (published: <= 128)
MAX_HIDDEN = 2 ** 18         # 262,144 (published: <= ~25,600)
MAX_FFN = 2 ** 20            # 1,048,576 (published: <= ~73,728)
MAX_VOCAB = 2 ** 22          # 4,194,304 tokens (published: <= ~256k)
MAX_SEQ = 2 ** 24            # 16,777,216 tokens (the longest contexts: ~10M)
MAX_BATCH = 2 ** 24          # samples in a global batch, a micro-batch or micro-batches (real runs: <= ~16k)
MAX_REPEATS = 2 ** 20        # a probe's warm-up and timed repeats per point
MAX_THREADS = 2 ** 12        # threads per rank
MAX_SEED = 2 ** 32 - 1       # a training seed (the runtime mixes it with the step into a 64-bit generator seed)
MAX_MEMORY_GIB = 2 ** 20     # a per-GPU memory budget or overhead in GiB: 1 PiB
MAX_TIMEOUT_S = 2 ** 20      # a process-group timeout: about 12 days
MAX_PEAK_TFLOPS = 1e6        # a device's peak: an exaFLOP/s (an H200: ~1e3 dense bf16)

_RANKS = "ranks"
COUNT_LIMITS: dict[str, tuple[int, str]] = {
    **{key: (MAX_RANKS, _RANKS) for key in (
        "world_size", "nodes", "gpus_per_node", "stage_ranks", "pp", "tp", "dp", "pp_degree", "group_size", "stride",
        "concurrent_groups", "concurrent_pairs", "concurrent_ranks", "nodes_spanned", "ranks_per_node",
        "groups_per_node", "tp_degrees", "rank", "stage")},
    "layers": (MAX_LAYERS, "decoder layers"),
    "heads": (MAX_HEADS, "heads"), "kv_heads": (MAX_HEADS, "heads"),
    "hidden": (MAX_HIDDEN, "hidden width"), "ffn_hidden": (MAX_FFN, "MLP width"),
    "vocab_size": (MAX_VOCAB, "tokens"),
    **{key: (MAX_SEQ, "tokens") for key in ("max_seq_len", "seq_len", "seq_lens")},
    **{key: (MAX_BATCH, "samples") for key in (
        "global_batch", "micro_batch_size", "micro_batches", "micro_batch_sizes")},
    "warmup": (MAX_REPEATS, "repeats"), "repeats": (MAX_REPEATS, "repeats"),
    "threads_per_rank": (MAX_THREADS, "threads"),
    "seed": (MAX_SEED, "a 32-bit seed"),
}


def child_path(path: str, key: str) -> str:
    """'$.a' + 'b' -> '$.a.b'; a key that is not a name is quoted: '$.a["b c"]'."""
    return f"{path}.{key}" if key.isidentifier() else f"{path}[{json.dumps(key)}]"


def _shown(value: int) -> str:
    digits = len(str(abs(value)))
    return str(value) if digits <= 30 else f"an integer of {digits} digits"


def value_errors(value: Any, path: str = "$", depth: int = 1) -> list[str]:
    """'$.path: message' for every container nested too deep and every number out of bounds under ``value``."""
    if isinstance(value, (dict, list, tuple)):
        if depth > MAX_DEPTH:
            return [f"{path}: {TOO_DEEP}"]
        items = ((child_path(path, str(k)), v) for k, v in value.items()) if isinstance(value, dict) else \
            ((f"{path}[{i}]", v) for i, v in enumerate(value))
        return [e for at, v in items for e in value_errors(v, at, depth + 1)]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return []
    if isinstance(value, int):
        return [] if -INT64 <= value < INT64 else [f"{path}: expected an integer within int64 (|n| < 2**63), "
                                                   f"got {_shown(value)}"]
    if not math.isfinite(value):
        return [f"{path}: expected a finite number, got {value} (documents carry no NaN or Infinity; a literal "
                f"like 1e400 overflows to infinity)"]
    if abs(value) > MAX_MAGNITUDE:
        return [f"{path}: expected a number of magnitude at most {MAX_MAGNITUDE:g}, got {value:g}"]
    return []


def count_errors(value: Any, path: str = "$") -> list[str]:
    """'$.path: message' for every count above its COUNT_LIMITS bound, anywhere in a schema-valid document."""
    errors: list[str] = []
    if isinstance(value, dict):
        for key, v in value.items():
            at = child_path(path, key)
            if key in COUNT_LIMITS:
                errors += _over(at, v, *COUNT_LIMITS[key])
            errors += count_errors(v, at)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            errors += count_errors(v, f"{path}[{i}]")
    return errors


def _over(path: str, value: Any, bound: int, unit: str) -> list[str]:
    """The count at ``path`` (or each count of a list there) above ``bound``."""
    counts = [(f"{path}[{i}]", v) for i, v in enumerate(value)] if isinstance(value, list) else [(path, value)]
    return [f"{at}: expected at most {bound} ({unit}; far above any real run), got {_shown(n)}"
            for at, n in counts if isinstance(n, int) and not isinstance(n, bool) and n > bound]
