"""galvatron_contracts.ranks against the convention's definition, exhaustively on small stages."""
import pytest

from galvatron_contracts.plan import plan_errors
from galvatron_contracts.ranks import local_coords, rank_groups, sample_range, stage_ranks


@pytest.mark.parametrize("size", [1, 2, 4, 8, 16])
@pytest.mark.parametrize("layout", ["consecutive", "strided"])
def test_groups_partition_the_stage_and_meet_once(size, layout):
    for tp in (t for t in (1, 2, 4, 8, 16) if size % t == 0):
        ranks = list(range(3 * size, 4 * size))
        tp_groups, dp_groups = rank_groups(ranks, tp, layout)
        assert len(tp_groups) == size // tp and all(len(g) == tp for g in tp_groups)
        assert len(dp_groups) == tp and all(len(g) == size // tp for g in dp_groups)
        assert sorted(r for g in tp_groups for r in g) == ranks == sorted(r for g in dp_groups for r in g)
        for d, tg in enumerate(tp_groups):
            for t, dg in enumerate(dp_groups):
                assert set(tg) & set(dg) == {tg[t]} == {dg[d]}
        if layout == "consecutive":  # tp groups are adjacent ranks
            assert all(g == list(range(g[0], g[0] + tp)) for g in tp_groups)
        else:  # dp groups are adjacent ranks
            assert all(g == list(range(g[0], g[0] + size // tp)) for g in dp_groups)


def test_worked_examples():
    assert stage_ranks(16, 2, 1) == list(range(8, 16))
    assert rank_groups(range(8), 2, "strided") == ([[0, 4], [1, 5], [2, 6], [3, 7]], [[0, 1, 2, 3], [4, 5, 6, 7]])
    assert rank_groups([4, 5, 6, 7], 2, "consecutive") == ([[4, 5], [6, 7]], [[4, 6], [5, 7]])
    assert local_coords(5, 8, 2, "consecutive") == (1, 2)
    assert local_coords(5, 8, 2, "strided") == (1, 1)
    assert [sample_range(r, 4, 8) for r in range(4)] == [(0, 2), (2, 4), (4, 6), (6, 8)]


def test_bad_arguments_raise():
    with pytest.raises(ValueError):
        rank_groups(range(6), 4, "consecutive")
    with pytest.raises(ValueError):
        local_coords(0, 4, 2, "diagonal")


def test_plan_errors_accepts_the_examples_and_lists_several_problems(tmp_path):
    import json
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "plan" / "examples" / "valid"
    plan = json.loads((root / "mixed.json").read_text())
    assert plan_errors(plan) == []
    plan["stages"][1]["index"] = 5
    plan["layers"][0]["sp"] = True
    errors = plan_errors(plan)
    assert errors == ["$.layers[0].sp: sequence parallelism needs tp > 1", "$.stages[1].index: expected 1, got 5"]
