"""The bandwidth probe on 4 local CPU ranks (gloo), launched once for the file."""
import pytest

from galvatron_contracts.documents import GalvatronError, validate
from galvatron_probe import probe_bandwidth
from galvatron_probe.bandwidth import OPS, Timer

WORLD = 4


@pytest.fixture(scope="module")
def profile():
    # --quick sizes (x4 steps) but up to 16 MiB, so that the largest message clearly outlasts scheduling noise
    return probe_bandwidth(nproc=WORLD, quick=True, max_bytes=16 << 20, repeats=5, ranks_per_node=2, timeout_s=60,
                           progress=False)


def test_document_validates(profile):
    assert validate(profile, "profile") is profile
    assert profile["cluster"] == {**profile["cluster"], "nodes": 2, "gpus_per_node": 2, "world_size": WORLD,
                                  "backend": "gloo"}
    assert profile["settings"]["quick"] is True


def test_every_collective_group_size_and_layout_is_present(profile):
    found = {(c["op"], c["group_size"], c["layout"]): c for c in profile["collectives"]}
    expected = {(op, n, layout) for op in OPS for n, layouts in ((2, ["consecutive", "strided"]), (4, ["consecutive"]))
                for layout in layouts}
    assert set(found) == expected
    sizes = [4 << 10, 16 << 10, 64 << 10, 256 << 10, 1 << 20, 4 << 20, 16 << 20]
    for (_op, n, layout), entry in found.items():
        assert [p["message_bytes"] for p in entry["points"]] == sizes
        assert entry["stride"] == (1 if layout == "consecutive" else WORLD // n)
        assert entry["concurrent_groups"] == WORLD // n
        # 2 ranks per node: {0,1} stays inside a node, {0,2} and the whole world cross
        assert entry["crosses_nodes"] == (n == 4 or layout == "strided")


def test_p2p_for_every_pipeline_degree(profile):
    by_pp = {e["pp_degree"]: e for e in profile["p2p"]}
    assert set(by_pp) == {2, 4}
    assert by_pp[2]["concurrent_pairs"] == 2 and by_pp[2]["crosses_nodes"] is True   # 0->2, 1->3
    assert by_pp[4]["concurrent_pairs"] == 1
    assert len(profile["p2p"]) == 3   # pp 4: boundary 0->1 inside node 0, boundary 1->2 across nodes
    assert {e["crosses_nodes"] for e in profile["p2p"] if e["pp_degree"] == 4} == {False, True}


def _all_series(profile):
    return [(f"{c['op']} n={c['group_size']} {c['layout']}", c["points"]) for c in profile["collectives"]] + \
           [(f"p2p pp={e['pp_degree']}", e["points"]) for e in profile["p2p"]]


def test_spread_is_recorded(profile):
    for name, points in _all_series(profile):
        for p in points:
            t = p["time"]
            assert t["repeats"] == 5, name
            assert 0 < t["min_s"] <= t["p25_s"] <= t["median_s"] <= t["p75_s"] <= t["max_s"], name


def test_times_increase_with_message_size(profile):
    """4 KiB vs 16 MiB (4096x the bytes), compared by the fastest repeat (least scheduling noise) and the median."""
    for name, points in _all_series(profile):
        small, large = points[0]["time"], points[-1]["time"]
        assert large["min_s"] > small["min_s"], name
        assert large["median_s"] > small["median_s"], name


def test_overlap_is_measured(profile):
    o = profile["overlap"]
    for key in ("compute_alone_s", "comm_alone_s", "compute_overlapped_s", "comm_overlapped_s"):
        assert o[key] > 0
    assert o["compute_slowdown"] == pytest.approx(o["compute_overlapped_s"] / o["compute_alone_s"])
    assert o["comm_slowdown"] == pytest.approx(o["comm_overlapped_s"] / o["comm_alone_s"])
    assert "all_reduce" in o["method"]


def test_a_failed_collective_names_its_group_and_size():
    import torch

    timer = Timer(torch.device("cpu"), timeout_s=5, distributed=False)
    with pytest.raises(GalvatronError, match=r"all_reduce over ranks \[0, 2\].*4096 bytes.*timeout 5 s"):
        with timer.named("all_reduce over ranks [0, 2] (strided, group size 2) with 4096 bytes"):
            raise RuntimeError("[gloo] Timed out waiting 5000ms for recv operation to complete")


def test_summary_has_a_row_per_series(profile):
    from galvatron_probe.summary import summarize

    text = summarize(profile)
    rows = [line for line in text.splitlines() if line.split() and line.split()[0] in (*OPS, "p2p")]
    assert len(rows) == len(profile["collectives"]) + len(profile["p2p"])
    assert "overlap: compute x" in text
