"""The pipeline schedule of one step: each stage's order of forwards and backwards (1F1B, GPipe) and, from
per-stage times, when every forward and backward of every micro-batch runs.

    stage_order("1f1b", 0, 4, 8)            # [('F', 0), ('F', 1), ('F', 2), ('F', 3), ('B', 0), ('F', 4), ...]
    simulate("gpipe", [f0, f1], [b0, b1], 8)  # a Slot (stage, kind, micro-batch, start, end) per box

With equal stages the step lasts (m + pp - 1) x (forward + backward), the cost model's composition; with unequal
ones it differs from it (show draws both). The in-flight micro-batches of each order are those of
galvatron_contracts.pipeline.in_flight, which the memory prediction uses.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Slot:
    """One forward ("F") or backward ("B") of one micro-batch on one stage, from start to end (seconds)."""

    stage: int
    kind: str                 # "F" or "B"
    micro_batch: int
    start: float
    end: float


def stage_order(schedule: str, stage: int, stages: int, micro_batches: int) -> list[tuple[str, int]]:
    """The order a stage runs its forwards and backwards in.

    GPipe: every forward, then every backward. 1F1B: stages - stage - 1 warm-up forwards, then one forward and
    one backward in turn, then the remaining backwards (so it holds at most min(stages - stage, m) in flight)."""
    m = micro_batches
    if schedule == "gpipe":
        return [("F", j) for j in range(m)] + [("B", j) for j in range(m)]
    warm = min(stages - stage - 1, m)
    order = [("F", j) for j in range(warm)]
    for j in range(m - warm):
        order += [("F", warm + j), ("B", j)]
    return order + [("B", j) for j in range(m - warm, m)]


def simulate(schedule: str, forward_s: list[float], backward_s: list[float], micro_batches: int) -> list[Slot]:
    """Every forward and backward of one step, each started as soon as its stage is free and its input is there:
    forward j of stage i after forward j of stage i - 1, backward j of stage i after backward j of stage i + 1
    (the last stage's after its own forward j, which its order puts first). Times are the plan's per-stage
    predictions, which include the p2p transfers, so a box ends when its output has arrived."""
    p = len(forward_s)
    orders = [stage_order(schedule, i, p, micro_batches) for i in range(p)]
    done: dict[tuple[str, int, int], float] = {}
    clock, pos, slots = [0.0] * p, [0] * p, []
    while len(slots) < 2 * p * micro_batches:
        progressed = False
        for i in range(p):
            while pos[i] < len(orders[i]):
                kind, j = orders[i][pos[i]]
                after = (kind, i - 1, j) if kind == "F" else (kind, i + 1, j)
                if 0 <= after[1] < p and after not in done:
                    break
                start = max(clock[i], done.get(after, 0.0))
                end = start + (forward_s[i] if kind == "F" else backward_s[i])
                done[(kind, i, j)], clock[i], pos[i] = end, end, pos[i] + 1
                slots.append(Slot(i, kind, j, start, end))
                progressed = True
        if not progressed:
            raise RuntimeError(f"internal error: the {schedule} order deadlocks over {p} stages")
    return slots

