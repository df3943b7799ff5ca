"""One text for a layout, a layer strategy and a plan."""
import itertools

from galvatron_contracts.names import layout_name, plan_summary, runs, strategy_name


def S(tp=1, dp=2, layout="consecutive", sp=False, sharding="ddp", rc=False):
    return {"tp": tp, "tp_layout": layout, "sp": sp, "dp": dp, "dp_sharding": sharding, "recompute": rc}


def test_strategy_and_layout_names():
    assert strategy_name(S(2, 2, sharding="zero3", rc=True)) == "tp2 dp2 zero3 rc"
    assert strategy_name(S(2, 2, "strided", True, "zero2")) == "tp2s+sp dp2 zero2"
    assert strategy_name(S(1, 8)) == "tp1 dp8 ddp"
    assert layout_name(4, "consecutive", True, 1) == "tp4+sp dp1"
    # strided equals consecutive where tp or dp is 1, and sp needs tp > 1: such layouts read as the plain one
    assert layout_name(1, "strided", False, 8) == layout_name(1, "consecutive", False, 8) == "tp1 dp8"
    assert layout_name(8, "strided", False, 1) == "tp8 dp1"
    assert layout_name(1, "consecutive", True, 8) == "tp1 dp8"


def test_distinct_layouts_and_strategies_have_distinct_names():
    """The cost model uses the names as ids: within a stage of S ranks they must tell every candidate apart."""
    for size in (1, 2, 4, 8, 16):
        seen = {}
        for tp in (t for t in (1, 2, 4, 8, 16) if size % t == 0):
            dp = size // tp
            for layout, sp, sharding, rc in itertools.product(("consecutive", "strided"), (False, True),
                                                              ("ddp", "zero2", "zero3"), (False, True)):
                key = (tp, layout if 1 < tp < size else "consecutive", sp and tp > 1, sharding, rc)
                name = strategy_name(S(tp, dp, layout, sp, sharding, rc))
                assert seen.setdefault(name, key) == key, (name, key, seen[name])


def test_runs_and_plan_summary():
    assert runs(["a", "a", "b", "a"]) == "2x a, 1x b, 1x a"
    assert runs([]) == ""
    plan = {"model": {"name": "tiny-gpt"}, "training": {"seq_len": 64, "dtype": "bf16"},
            "stages": [{"layer_start": 0, "layer_end": 3}, {"layer_start": 3, "layer_end": 5}],
            "layers": [S(2, 2, sharding="zero3", rc=True)] * 3 + [S(1, 4)] * 2,
            "embedding": S(2, 2, sharding="zero3"), "head": S(1, 4),
            "micro_batch_size": 4, "micro_batches": 8, "schedule": "1f1b"}
    assert plan_summary(plan) == ("tiny-gpt: pp2 [3+2] layers 3x tp2 dp2 zero3 rc, 2x tp1 dp4 ddp; "
                                  "emb tp2 dp2 zero3, head tp1 dp4 ddp; b=4 x m=8 (1f1b), seq 64, bf16")
