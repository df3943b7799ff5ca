"""Pipeline rules every tool shares: micro-batches in flight per stage, and the even layer split.

    in_flight("1f1b", 0, 4, 8)      # 4: stage 0 of 4 holds 4 micro-batches of activations at its peak
    in_flight("gpipe", 0, 4, 8)     # 8: GPipe runs every forward before the first backward
    even_split(10, 4)               # [3, 3, 2, 2]
"""
from __future__ import annotations

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
