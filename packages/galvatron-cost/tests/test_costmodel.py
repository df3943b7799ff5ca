"""End to end: synthetic profiles -> cost-model document, checked against the schema and by hand."""
import copy
import json

import pytest
import synthetic

from galvatron_contracts.documents import DocumentError, UsageError, dumps, schema_errors
from galvatron_contracts.models import PRESETS
from galvatron_cost import fit

TINY = PRESETS["tiny-gpt"]            # 4 layers, h 64, 4 heads, vocab 256, tied
L = synthetic.LINKS


def _doc(nodes=1, gpn=2, spec=TINY, **kw):
    return fit(synthetic.hardware_profile(nodes, gpn), synthetic.model_profile(spec), **kw)


def _strategy(doc, pp, sid):
    pipe = next(p for p in doc["pipelines"] if p["pp"] == pp)
    return next(s for s in pipe["strategies"] if s["id"] == sid)


@pytest.fixture(scope="module")
def two_ranks():
    return _doc(1, 2)


def test_two_ranks_validates_and_enumerates(two_ranks):
    doc = two_ranks
    assert schema_errors(doc, "cost-model", doc["schema_version"]) == []
    dumps(doc)                                            # finite, schema-valid, semantic checks
    assert [p["pp"] for p in doc["pipelines"]] == [1, 2]
    pipe = doc["pipelines"][0]
    assert [lay["id"] for lay in pipe["layouts"]] == ["tp1 dp2", "tp2 dp1", "tp2+sp dp1"]
    assert len(pipe["transitions"]) == 3 * 2
    # tp1 (dp 2): 4 shardings x 2 recompute for decoder and head, 4 for embedding; tp2 (dp 1): ddp only
    assert len(pipe["strategies"]) == 8 + 4 + 8 + 2 * (2 + 1 + 2)
    assert doc["overlap"] == {"compute_slowdown": 1.1, "comm_slowdown": 1.25, "measured": True}
    assert [i["kind"] for i in doc["inputs"]] == ["hardware-profile", "model-profile"]


def test_tensor_parallel_comm_by_hand(two_ranks):
    s, h = 32, 64
    st = _strategy(two_ranks, 1, "decoder tp2 dp1 ddp")
    # two all-reduces of s*h*4 bytes per sample over the intra-node pair: alpha = 2(n-1) a_intra each
    assert st["time"]["forward_comm"]["fixed_s"] == pytest.approx(2 * 2 * L["a_intra"], rel=1e-5)
    assert st["time"]["forward_comm"]["per_sample_s"] == pytest.approx(2 * 1.0 * s * h * 4 / L["bw_intra"], rel=1e-5)
    assert st["time"]["backward_comm"] == st["time"]["forward_comm"]
    rc = _strategy(two_ranks, 1, "decoder tp2 dp1 ddp rc")
    assert rc["time"]["backward_comm"]["per_sample_s"] == pytest.approx(2 * st["time"]["forward_comm"]["per_sample_s"])
    sp = _strategy(two_ranks, 1, "decoder tp2+sp dp1 ddp")
    # each all-reduce becomes all-gather + reduce-scatter of the same buffer: (n-1)/n + (n-1)/n = 2(n-1)/n wire
    assert sp["time"]["forward_comm"]["per_sample_s"] == pytest.approx(2 * (0.5 + 0.5) * s * h * 4 / L["bw_intra"],
                                                                       rel=1e-5)
    assert sp["time"]["forward_comm"]["fixed_s"] == pytest.approx(4 * 1 * L["a_intra"], rel=1e-5)   # 4 x (n-1) steps
    assert sp["memory"]["activation"]["per_sample_bytes"] < st["memory"]["activation"]["per_sample_bytes"]


def test_data_parallel_comm_and_memory_by_hand(two_ranks):
    P = 12 * 64 * 64 + 13 * 64                          # one gpt2 block, h = 64
    ddp = _strategy(two_ranks, 1, "decoder tp1 dp2 ddp")
    assert ddp["time"]["grad_sync_s"] == pytest.approx(2 * L["a_intra"] + 4 * P / L["bw_intra"], rel=1e-5)
    assert ddp["memory"]["param_bytes"] == 4 * P and ddp["memory"]["grad_bytes"] == 4 * P
    assert ddp["memory"]["optimizer_bytes"] == 8 * P
    z3 = _strategy(two_ranks, 1, "decoder tp1 dp2 zero3")
    assert z3["time"]["grad_sync_s"] == 0
    # every dim 0 of the block is even: P_d = P / 2; all-gather of 4 P bytes moves half of it
    assert z3["time"]["param_gather_forward_s"] == pytest.approx(L["a_intra"] + 0.5 * 4 * P / L["bw_intra"], rel=1e-5)
    assert z3["time"]["param_gather_backward_s"] == z3["time"]["param_gather_forward_s"]
    assert z3["time"]["grad_reduce_per_microbatch_s"] == pytest.approx(z3["time"]["param_gather_forward_s"])
    assert z3["memory"]["param_bytes"] + z3["memory"]["grad_bytes"] + z3["memory"]["optimizer_bytes"] == 16 * P // 2
    # zero1: once per iteration, the reduce-scatter of the accumulated fp32 gradients and the all-gather of the
    # updated fp32 parameters (each moves half of 4 P bytes on 2 ranks); nothing per micro-batch
    z1 = _strategy(two_ranks, 1, "decoder tp1 dp2 zero1")
    assert z1["time"]["grad_sync_s"] == pytest.approx(2 * z3["time"]["param_gather_forward_s"], rel=1e-12)
    assert z1["time"]["param_gather_forward_s"] == z1["time"]["param_gather_backward_s"] == 0
    assert z1["time"]["grad_reduce_per_microbatch_s"] == 0
    assert (z1["memory"]["param_bytes"], z1["memory"]["grad_bytes"], z1["memory"]["optimizer_bytes"]) == (
        4 * P // 2 + 4 * P, 4 * P, 8 * P // 2)
    # compute: b samples over dp 2, s = 32 tokens each, synthetic per-token 4e-7 at tp1
    assert ddp["time"]["forward"]["per_sample_s"] == pytest.approx(4e-7 * 32 / 2, rel=1e-4)
    assert ddp["time"]["backward"]["per_sample_s"] == pytest.approx(4e-7 * 32 / 2 * synthetic.BACKWARD, rel=1e-4)


def test_recompute_memory(two_ranks):
    s, h = 32, 64
    full = _strategy(two_ranks, 1, "decoder tp1 dp2 ddp")["memory"]
    rc = _strategy(two_ranks, 1, "decoder tp1 dp2 ddp rc")["memory"]
    assert rc["activation"]["per_sample_bytes"] == s * h * 4 / 2          # only the layer input, b/2 per rank
    extra = rc["workspace"]["per_sample_bytes"] - full["workspace"]["per_sample_bytes"]
    assert extra == pytest.approx(full["activation"]["per_sample_bytes"] - rc["activation"]["per_sample_bytes"])


def all_reduce_2(nbytes):
    """A 2-rank all-reduce inside a node (synthetic links): 2 latency steps, (n-1)/n * 2 = 1 byte on the wire."""
    return 2 * L["a_intra"] + nbytes / L["bw_intra"]


def test_tied_embeddings_one_stage_share_the_table(two_ranks):
    """pp = 1: the head uses the embedding's table: no copy in memory, no optimizer step on it, no gradient sum;
    the table's gradient is synchronised once, by the embedding's data-parallel all-reduce."""
    h, v, positions = 64, 256, 64
    head, emb = _strategy(two_ranks, 1, "head tp1 dp2 ddp"), _strategy(two_ranks, 1, "embedding tp1 dp2 ddp")
    assert head["memory"]["param_bytes"] == head["memory"]["grad_bytes"] == 4 * 2 * h      # the final LayerNorm
    assert head["memory"]["optimizer_bytes"] == 8 * 2 * h
    assert head["time"]["grad_sync_s"] == pytest.approx(all_reduce_2(4 * 2 * h), rel=1e-5)
    assert emb["memory"]["param_bytes"] == 4 * (v + positions) * h
    assert emb["time"]["grad_sync_s"] == pytest.approx(all_reduce_2(4 * (v + positions) * h), rel=1e-5)


def test_tied_embeddings_across_stages_sum_the_copies_once(two_ranks):
    """pp > 1: the last stage holds a copy of the table; one all-reduce between the first and the last stage sums
    the two gradients each iteration. Both ends wait for it, so both strategies count that one collective."""
    h, v, positions = 64, 256, 64
    head, emb = _strategy(two_ranks, 2, "head tp1 dp1 ddp"), _strategy(two_ranks, 2, "embedding tp1 dp1 ddp")
    assert head["memory"]["param_bytes"] == head["memory"]["grad_bytes"] == 4 * (2 * h + v * h)
    assert head["memory"]["optimizer_bytes"] == 8 * (2 * h + v * h)
    assert emb["memory"]["param_bytes"] == 4 * (v + positions) * h                 # its own table, unchanged
    tied = all_reduce_2(4 * v * h)                                                 # dp 1: nothing else to sync
    assert head["time"]["grad_sync_s"] == pytest.approx(tied, rel=1e-5)
    assert emb["time"]["grad_sync_s"] == pytest.approx(tied, rel=1e-5)
    # 4 ranks, 2 stages of 2: under zero3 each rank sums its half of the table with its peer's (ranks 0-2, 1-3)
    doc = _doc(1, 4)
    for layer in ("head", "embedding"):
        z3 = _strategy(doc, 2, f"{layer} tp1 dp2 zero3")
        assert z3["time"]["grad_sync_s"] == pytest.approx(all_reduce_2(4 * v * h // 2), rel=1e-5)


def test_untied_embeddings_hold_their_own_head_and_sum_nothing():
    spec = PRESETS["tiny-llama"]
    h, v = spec["hidden"], spec["vocab_size"]
    doc = _doc(1, 2, spec=spec)
    assert _strategy(doc, 1, "head tp1 dp2 ddp")["memory"]["param_bytes"] == 4 * (v * h + h)
    for layer in ("head", "embedding"):
        assert _strategy(doc, 2, f"{layer} tp1 dp1 ddp")["time"]["grad_sync_s"] == 0.0


def test_pipeline_p2p(two_ranks):
    pipe = two_ranks["pipelines"][1]
    lay = pipe["layouts"][0]
    assert (pipe["pp"], pipe["stage_ranks"], lay["id"]) == (2, 1, "tp1 dp1")
    assert lay["p2p"]["fixed_s"] == pytest.approx(L["p2p_alpha"], rel=1e-5)
    assert lay["p2p"]["per_sample_s"] == pytest.approx(32 * 64 * 4 / L["p2p_intra"], rel=1e-5)
    assert two_ranks["pipelines"][0]["layouts"][0]["p2p"] == {"fixed_s": 0.0, "per_sample_s": 0.0}


def test_four_ranks_layouts_and_transitions():
    doc = _doc(1, 4)
    dumps(doc)
    pipe = doc["pipelines"][0]
    ids = [lay["id"] for lay in pipe["layouts"]]
    assert ids == ["tp1 dp4", "tp2 dp2", "tp2+sp dp2", "tp2s dp2", "tp2s+sp dp2", "tp4 dp1", "tp4+sp dp1"]
    tr = {(t["from"], t["to"]): t for t in pipe["transitions"]}
    assert len(tr) == 7 * 6
    # tp1 -> tp2-c: a batch all-gather of a quarter of the micro-batch forward; free backward
    t = tr[("tp1 dp4", "tp2 dp2")]
    assert t["forward"]["per_sample_s"] == pytest.approx(0.25 * 32 * 64 * 4 / L["bw_intra"], rel=1e-5)
    assert t["backward"] == {"fixed_s": 0.0, "per_sample_s": 0.0}
    assert tr[("tp2 dp2", "tp1 dp4")]["forward"] == {"fixed_s": 0.0, "per_sample_s": 0.0}
    # tp4 was not profiled: derived and flagged
    tp4 = [c for c in doc["fits"]["compute"] if c["tp"] == 4]
    assert tp4 and all(c["extrapolated"] for c in tp4)
    assert any("decoder tp=4" in n for n in doc["notes"])


def test_two_by_eight_extrapolated_to_128_nodes():
    spec = PRESETS["llama2-7b"]
    hw = synthetic.hardware_profile(2, 8)
    mp = synthetic.model_profile(spec, tp_degrees=(1, 2, 4, 8), seq_lens=(512,), mbs=(1, 2))
    doc = fit(hw, mp, nodes=128, gpus_per_node=8)
    text = dumps(doc)
    assert len(text) < 4e6                               # no per-rank lists
    assert doc["cluster"] == {"nodes": 128, "gpus_per_node": 8, "world_size": 1024,
                              "device": hw["cluster"]["device"], "backend": "gloo"}
    assert [p["pp"] for p in doc["pipelines"]] == [1, 2, 4, 8, 16, 32]
    extrap = [c for c in doc["fits"]["collectives"] if c["extrapolated"]]
    assert any(c["group_size"] == 1024 and c["nodes_spanned"] == 128 for c in extrap)
    assert all(not c["extrapolated"] for c in doc["fits"]["collectives"] if "quality" in c)
    # tp8 within a node reuses the probed intra-node fit; the dp group of 128 nodes (one rank each) is the
    # node link shared by 8 groups
    z = _strategy(doc, 1, "decoder tp8 dp128 zero3")
    P_d = z["memory"]["param_bytes"] // 4
    ag = z["time"]["param_gather_forward_s"]
    wire = 127 / 128 * 4 * P_d * 128
    # bus bandwidth (127/128) / (8 * (127/128) / B_node) = B_node / 8; latency 127 inter-node steps
    assert ag == pytest.approx(127 * L["a_inter"] + wire / (L["b_node"] / 8), rel=1e-3)
    assert "target cluster 128x8 extrapolated from the profiled 2x8" in doc["notes"]


def test_settings_and_model_check():
    hw, mp = synthetic.hardware_profile(1, 2), synthetic.model_profile(TINY, seq_lens=(16, 32))
    doc = fit(hw, mp, seq_len=24, optimizer="sgd", runtime_overhead_bytes=123)
    assert doc["training"] == {"seq_len": 24, "dtype": "fp32", "optimizer": "sgd", "runtime_overhead_bytes": 123}
    ddp = _strategy(doc, 1, "decoder tp1 dp2 ddp")["memory"]
    assert ddp["optimizer_bytes"] == ddp["param_bytes"]         # SGD's one fp32 momentum per fp32 parameter
    fit(hw, mp, model=copy.deepcopy(TINY))                # same architecture: fine
    with pytest.raises(DocumentError, match="not the asked 'tiny-llama'"):
        fit(hw, mp, model=PRESETS["tiny-llama"])


@pytest.mark.parametrize("case,match", [
    ("no_tp1", "no 'decoder' entry with tp=1"),
    ("seq", "seq_len 64 was not profiled"),
    ("dtype", "profiled in fp32"),
    ("device", "profiled on cuda"),
    ("cluster", "no group that crosses nodes"),
])
def test_disagreeing_inputs_exit_3(case, match):
    hw, mp, kw = synthetic.hardware_profile(1, 2), synthetic.model_profile(TINY), {}
    if case == "no_tp1":
        mp["layers"] = [e for e in mp["layers"] if not (e["layer"] == "decoder" and e["tp"] == 1)]
    elif case == "seq":
        kw["seq_len"] = 64
    elif case == "dtype":
        kw["dtype"] = "bf16"
    elif case == "device":
        mp = synthetic.model_profile(TINY, device="cuda")
    elif case == "cluster":
        kw["nodes"] = 2
    with pytest.raises(DocumentError, match=match) as err:
        fit(hw, mp, **kw)
    assert err.value.exit_code == 3


def test_bad_settings_are_usage_errors():
    with pytest.raises(UsageError):
        _doc(1, 2, max_tp=3)
    with pytest.raises(UsageError, match="max_seq_len 64"):
        _doc(1, 2, seq_len=128)


def test_document_is_deterministic(two_ranks):
    assert json.dumps(_doc(1, 2), sort_keys=True) == json.dumps(two_ranks, sort_keys=True)


@pytest.mark.parametrize("ranks", [2, 4])
def test_real_gloo_profiles_end_to_end(ranks):
    # documents written by galvatron-probe on this 2-core machine (tiny-gpt; committed as data, not imported)
    from pathlib import Path

    from galvatron_contracts.documents import read_documents, route

    data = Path(__file__).parent / "data"
    docs = route(read_documents([str(data / f"hardware-gloo-{ranks}.json"), str(data / f"model-gloo-{ranks}.json")]),
                 ["hardware-profile", "model-profile"])
    doc = fit(docs["hardware-profile"][0], docs["model-profile"][0])
    dumps(doc)
    assert doc["cluster"]["world_size"] == ranks and doc["cluster"]["backend"] == "gloo"
    probed = [c for c in doc["fits"]["collectives"] if not c["extrapolated"]]
    assert {c["op"] for c in probed} == {"all_reduce", "all_gather", "reduce_scatter", "all_to_all"}
    assert all(c["quality"]["points"] >= 2 for c in probed)
    assert [p["pp"] for p in doc["pipelines"]] == [p for p in (1, 2, 4) if ranks % p == 0]


def test_single_rank_profile():
    hw, mp = synthetic.hardware_profile(1, 1), synthetic.model_profile(TINY, tp_degrees=(1,))
    doc = fit(hw, mp)
    dumps(doc)
    assert [(p["pp"], len(p["strategies"])) for p in doc["pipelines"]] == [(1, 5)]    # tp1 ddp, rc on/off
    with pytest.raises(DocumentError, match="no intra-node group"):
        fit(hw, mp, gpus_per_node=2)                   # several ranks per node from one rank per node


def test_optimizer_step_by_hand():
    """The profile's fit times the parameters each rank updates: all of the shard under ddp, 1/dp under zero1/2/3."""
    fixed, per_param = synthetic.OPTIMIZER
    doc = fit(synthetic.hardware_profile(1, 2), synthetic.model_profile(TINY, optimizer=True))
    assert schema_errors(doc, "cost-model", doc["schema_version"]) == []
    assert doc["optimizer_step"] == {"fixed_s": fixed, "per_param_s": per_param, "measured": True,
                                     "optimizer": "adamw"}
    P = 12 * 64 * 64 + 13 * 64                          # one gpt2 block, h = 64; every dim 0 even
    for sharding, held in (("ddp", P), ("zero1", P // 2), ("zero2", P // 2), ("zero3", P // 2)):
        for rc in ("", " rc"):
            st = _strategy(doc, 1, f"decoder tp1 dp2 {sharding}{rc}")
            assert st["time"]["optimizer_step_s"] == pytest.approx(per_param * held, rel=1e-12)
    tp2 = _strategy(doc, 1, "decoder tp2 dp1 ddp")          # tp 2, dp 1: the tp shard (replicated norms/biases whole)
    count, _ = synthetic.shard_params(TINY, "decoder", 2)
    assert tp2["time"]["optimizer_step_s"] == pytest.approx(per_param * count, rel=1e-12)
    assert _strategy(doc, 1, "head tp1 dp2 ddp")["time"]["optimizer_step_s"] == pytest.approx(per_param * 2 * 64)
    assert _strategy(doc, 2, "head tp1 dp1 ddp")["time"]["optimizer_step_s"] == pytest.approx(
        per_param * (2 * 64 + 256 * 64))                 # the last stage's copy of the tied table at pp = 2


def test_a_profile_without_optimizer_step_counts_it_as_zero(two_ranks):
    assert two_ranks["optimizer_step"] == {"fixed_s": 0.0, "per_param_s": 0.0, "measured": False}
    assert any("no optimizer_step" in n for n in two_ranks["notes"])
    for pipe in two_ranks["pipelines"]:
        assert all(s["time"]["optimizer_step_s"] == 0.0 for s in pipe["strategies"])


def test_only_decoder_layers_are_priced_as_recomputed():
    """The runtime and the probe recompute decoder layers only (Block.recompute): a head 'rc' strategy has its
    plain twin's numbers exactly, while a decoder's recompute costs time and saves activations."""
    hw, mp = synthetic.hardware_profile(1, 2), synthetic.model_profile(TINY, seq_lens=(16, 32))
    doc = fit(hw, mp, seq_len=32)
    for pipe in doc["pipelines"]:
        by = {(s["layer"], s["layout"], s["dp_sharding"], s["recompute"]): s for s in pipe["strategies"]}
        heads = [k for k in by if k[0] == "head" and k[3]]
        assert heads
        for layer, layout, sharding, _ in heads:
            rc, plain = by[(layer, layout, sharding, True)], by[(layer, layout, sharding, False)]
            assert (rc["time"], rc["memory"]) == (plain["time"], plain["memory"]) and rc["id"].endswith(" rc")
        dec = [k for k in by if k[0] == "decoder" and k[3]]
        for layer, layout, sharding, _ in dec:
            rc, plain = by[(layer, layout, sharding, True)], by[(layer, layout, sharding, False)]
            assert rc["time"]["backward"]["per_sample_s"] > plain["time"]["backward"]["per_sample_s"]
            assert rc["memory"]["activation"]["per_sample_bytes"] < plain["memory"]["activation"]["per_sample_bytes"]
