"""Pipeline rules every tool shares: micro-batches in flight per stage, the even layer split, divisors.

    in_flight("1f1b", 0, 4, 8)      # 4: stage 0 of 4 holds 4 micro-batches of activations at its peak
    in_flight("gpipe", 0, 4, 8)     # 8: GPipe runs every forward before the first backward
    even_split(10, 4)               # [3, 3, 2, 2]
    divisors(12)                    # [1, 2, 3, 4, 6, 12]: the pipeline degrees of 12 ranks, the micro-batch sizes
"""
from __future__ import annotations

import math

SCHEDULES = ("1f1b", "gpipe")


def in_flight(schedule: str, stage: int, stages: int, micro_batches: int) -> int:
    """Micro-batches whose activations stage ``stage`` (0-based) of ``stages`` holds at its peak.

    1F1B: stage i runs stages - i forwards before its first backward, then alternates one backward and one
    forward, so it never holds more than min(stages - i, micro_batches). GPipe: every forward runs before the
    first backward, so every stage holds all micro_batches."""
    if schedule == "1f1b":
        return min(stages - stage, micro_batches)
    if schedule == "gpipe":
        return micro_batches
    raise ValueError(f"schedule: expected one of {', '.join(SCHEDULES)}, got {schedule!r}")


def even_split(layers: int, stages: int) -> list[int]:
    """Decoder layers per stage, as even as possible: the remainder goes to the first stages, one layer each.

    Why the first: the last stage holds the LM head (the vocabulary projection and the loss, in time several
    decoder layers' worth for a GPT-2 vocabulary, and the logits in memory) while the first holds only the
    embedding lookup, which costs next to nothing. The first stages are the lighter ones, so they take the extra
    layers. Under 1F1B the first stages also hold the most micro-batches in flight; the cost model prices that,
    and the search's own layer partition is free to be uneven in either direction."""
    if stages < 1 or layers < 0:
        raise ValueError(f"expected layers >= 0 and stages >= 1, got {layers} layers over {stages} stages")
    base, extra = divmod(layers, stages)
    return [base + (1 if k < extra else 0) for k in range(stages)]


def divisors(n: int) -> list[int]:
    """The divisors of n >= 1 in increasing order, in O(sqrt(n)) steps (pipeline degrees, micro-batch sizes)."""
    small = [d for d in range(1, math.isqrt(n) + 1) if n % d == 0]
    return small + [n // d for d in reversed(small) if d * d != n]
