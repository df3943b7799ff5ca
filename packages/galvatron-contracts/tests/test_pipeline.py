"""In-flight micro-batches against a simulation of the schedules' order; the even layer split."""
import pytest

from galvatron_contracts.pipeline import even_split, in_flight


def orders(schedule: str, stages: int, m: int, warmup_extra: int) -> list[list[tuple[str, int]]]:
    """Each stage's sequence of ("F"|"B", micro-batch). GPipe: every forward, then every backward. 1F1B: warm-up
    forwards, then one forward and one backward in turn, then the remaining backwards. Megatron's 1F1B warms up
    with stages - i - 1 forwards and starts each pair with a forward; torch's Schedule1F1B (warmup_extra = 1)
    warms up with stages - i and starts each pair with a backward."""
    out = []
    for i in range(stages):
        if schedule == "gpipe":
            out.append([("F", k) for k in range(m)] + [("B", k) for k in range(m)])
            continue
        warm = min(stages - i - 1 + warmup_extra, m)
        seq = [("F", k) for k in range(warm)]
        f, b = warm, 0
        steady = ("F", "B") if warmup_extra == 0 else ("B", "F")
        while b < m:
            for op in steady:
                if op == "F" and f < m:
                    seq.append(("F", f))
                    f += 1
                elif op == "B":
                    seq.append(("B", b))
                    b += 1
        out.append(seq)
    return out


def simulate(order: list[list[tuple[str, int]]]) -> list[int]:
    """Run every stage's order one op per tick under the data dependencies (a forward needs the previous stage's
    forward of that micro-batch, a backward the next stage's backward and its own forward); the peak number of
    micro-batches each stage holds activations of (forwards done minus backwards done)."""
    p = len(order)
    done: set[tuple[str, int, int]] = set()
    pos, held, peak = [0] * p, [0] * p, [0] * p
    total = sum(len(o) for o in order)
    for _ in range(4 * total):
        ready = []
        for i in range(p):
            if pos[i] == len(order[i]):
                continue
            op, k = order[i][pos[i]]
            need = [("F", i - 1, k)] if op == "F" and i > 0 else []
            if op == "B":
                need = [("F", i, k)] + ([("B", i + 1, k)] if i < p - 1 else [])
            if all(n in done for n in need):
                ready.append((i, op, k))
        for i, op, k in ready:                  # the ops of one tick see only what earlier ticks finished
            done.add((op, i, k))
            pos[i] += 1
            held[i] += 1 if op == "F" else -1
            peak[i] = max(peak[i], held[i])
        if len(done) == total:
            return peak
    raise AssertionError(f"the schedule deadlocks: {order}")


@pytest.mark.parametrize("stages", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("m", [1, 2, 3, 4, 6, 8])
def test_in_flight_matches_the_simulated_schedules(stages, m):
    for warmup_extra in (0, 1):
        peak = simulate(orders("1f1b", stages, m, warmup_extra))
        assert [in_flight("1f1b", i, stages, m) for i in range(stages)] == peak, warmup_extra
    peak = simulate(orders("gpipe", stages, m, 0))
    assert [in_flight("gpipe", i, stages, m) for i in range(stages)] == peak


def test_in_flight_closed_forms_and_errors():
    assert [in_flight("1f1b", i, 4, 8) for i in range(4)] == [4, 3, 2, 1]
    assert [in_flight("1f1b", i, 4, 2) for i in range(4)] == [2, 2, 2, 1]
    assert [in_flight("gpipe", i, 4, 8) for i in range(4)] == [8] * 4
    with pytest.raises(ValueError, match="1f1b, gpipe"):
        in_flight("interleaved", 0, 4, 8)


def test_even_split_covers_every_layer_evenly_remainder_first():
    for layers in range(0, 33):
        for stages in range(1, 9):
            sizes = even_split(layers, stages)
            assert len(sizes) == stages and sum(sizes) == layers
            assert max(sizes) - min(sizes) <= 1
            assert sizes == sorted(sizes, reverse=True)          # the extra layers on the first stages
    assert even_split(10, 4) == [3, 3, 2, 2]
    assert even_split(32, 4) == [8] * 4
    with pytest.raises(ValueError):
        even_split(4, 0)
