"""What the profile did not measure: an inconsistent hardware profile is a warning or an error naming its entries
(never a silent clamp), and the cost model flags the strategies and p2p that rest on extrapolated fits.

The reference for every expectation is synthetic.py's two-level machine, written independently of the package."""
import json

import numpy as np
import pytest
import synthetic
from click.testing import CliRunner

from galvatron_contracts.documents import DocumentError, schema_errors
from galvatron_contracts.models import PRESETS
from galvatron_cost import fit
from galvatron_cost.cli import main
from galvatron_cost.comm import GROSS_RATIO, INTER_FLOOR, CommModel, Topology

TINY = PRESETS["tiny-gpt"]
# 10 TB/s per node: every cross-node entry with an intra-node phase leaves the inter-node phase under 10% of its
# time (the tightest, 4 ranks as 2 x 2 with 2 groups per node, at 1.8 TB/s), while the time of a group of one rank
# per node still shows its bandwidth (27 of the 67 us of the largest message)
FAST_NETWORK = dict(synthetic.LINKS, b_node=1e13)
NO_NETWORK = dict(synthetic.LINKS, b_node=1e18)       # the inter-node phase takes no time at all: ratio 1


def _w(op, x):
    return (2.0 if op == "all_reduce" else 1.0) * (x - 1) / x


def _hierarchical(hw):
    """Indices of the cross-node entries with more than one rank per node (the ones that have an intra-node
    phase), with their (nodes, per node, sharing) by synthetic's own group arithmetic."""
    cl = hw["cluster"]
    out = {}
    for i, c in enumerate(hw["collectives"]):
        m, k, g, _ = synthetic._group_shape(cl["world_size"], cl["gpus_per_node"], c["group_size"], c["stride"])
        if m > 1 and k > 1:
            out[i] = (m, k, g)
    return out


def _faster_across_nodes(hw, factor, quartiles=None):
    """The profile with every cross-node time divided by `factor` (and each point's quartiles set to
    median x (1 -+ quartiles), or removed with quartiles='none')."""
    for c in hw["collectives"]:
        for p in c["points"]:
            t = p["time"]
            if c["crosses_nodes"]:
                for key in [k for k in t if k.endswith("_s")]:
                    t[key] /= factor
            if quartiles == "none":
                t.pop("p25_s", None), t.pop("p75_s", None)
            elif quartiles is not None:
                t["p25_s"], t["p75_s"] = t["median_s"] * (1 - quartiles), t["median_s"] * (1 + quartiles)
    return hw


def _warned(text):
    """The $.collectives indices named first in each warning line."""
    return {int(line.split("$.collectives[")[1].split("]")[0]) for line in text.splitlines()
            if line.startswith("warning:")}


def test_a_consistent_profile_warns_nothing(capsys):
    notes = []
    CommModel(synthetic.hardware_profile(2, 4), "hw.json", notes)
    assert notes == [] and capsys.readouterr().err == ""


def test_the_clamp_warns_naming_every_entry_it_changes(capsys):
    hw = synthetic.hardware_profile(2, 4, links=FAST_NETWORK)
    notes = []
    model = CommModel(hw, "hw.json", notes)
    err = capsys.readouterr().err
    hier = _hierarchical(hw)
    assert hier and _warned(err) == set(hier)
    assert len(notes) == len(hier) and all(n in err for n in notes)
    for i in hier:
        line = next(n for n in notes if n.startswith(f"hw.json: in the cross-node fit $.collectives[{i}] "))
        c = hw["collectives"][i]
        assert f"({c['op']} of {c['group_size']}, {c['layout']}, {hier[i][0]} nodes x {hier[i][1]} per node" in line
        assert "GB/s)" in line and "intra-node link of $.collectives[" in line
        assert f"taken as {INTER_FLOOR:.0%} of its time" in line and "within the two entries' measurement noise" in line
    # what the model does afterwards, as the warning says: B_node per op is the median of the entries' estimates,
    # a floored entry estimating g w_inter / (0.1 time/M), from the true time of synthetic's machine
    for op in ("all_reduce", "all_gather"):
        est = []
        for i, c in enumerate(hw["collectives"]):
            if c["op"] != op or not c["crosses_nodes"]:
                continue
            m, k, g, _ = synthetic._group_shape(8, 4, c["group_size"], c["stride"])
            assert model.probed[i].identified
            per_byte = synthetic.true_collective_time(op, c["group_size"], m, k, g, 1.0, FAST_NETWORK) - \
                synthetic.true_collective_time(op, c["group_size"], m, k, g, 0.0, FAST_NETWORK)
            inter = per_byte - (_w(op, k) / FAST_NETWORK["bw_intra"] if k > 1 else 0.0)
            est.append(g * _w(op, m) / max(inter, INTER_FLOOR * per_byte))
        assert model.links[op].b_node == pytest.approx(float(np.median(est)), rel=1e-3)


def test_the_noise_threshold_comes_from_the_points_spread(capsys):
    hier = _hierarchical(synthetic.hardware_profile(2, 4))
    # 1.5x faster across nodes than the intra-node phase alone: beyond a noise of 2 x 5%, under the error limit
    notes = []
    CommModel(_faster_across_nodes(synthetic.hardware_profile(2, 4, links=NO_NETWORK), 1.5, 0.10), "hw", notes)
    assert len(notes) == len(hier)
    assert all("would take 1.500x" in n and "(cross-node faster than intra-node)" in n for n in notes)
    assert all("beyond the two entries' measurement noise (+-20.0%)" in n for n in notes)
    # without quartiles, half the min-max range: synthetic's (1.05 - 0.97) / 2 = 4% per entry
    notes = []
    CommModel(_faster_across_nodes(synthetic.hardware_profile(2, 4, links=NO_NETWORK), 1.0, "none"), "hw", notes)
    assert notes and all("within the two entries' measurement noise (+-8.0%)" in n for n in notes)
    # 3x faster is an error, unless the entries are noisier than that (half-IQR 150% each: noise 300%)
    notes = []
    CommModel(_faster_across_nodes(synthetic.hardware_profile(2, 4, links=NO_NETWORK), 3.0, 1.5), "hw", notes)
    assert len(notes) == len(hier) and all("within the two entries' measurement noise (+-300.0%)" in n for n in notes)
    with pytest.raises(DocumentError, match=rf"expected at most {GROSS_RATIO:g}x"):
        CommModel(_faster_across_nodes(synthetic.hardware_profile(2, 4, links=NO_NETWORK), 3.0), "hw")
    capsys.readouterr()


def test_a_gross_inconsistency_exits_3_naming_file_and_paths(tmp_path):
    hw = _faster_across_nodes(synthetic.hardware_profile(2, 4, links=NO_NETWORK), 2.5)
    (tmp_path / "hw.json").write_text(json.dumps(hw))
    (tmp_path / "mp.json").write_text(json.dumps(synthetic.model_profile(TINY)))
    r = CliRunner().invoke(main, ["fit", str(tmp_path / "hw.json"), str(tmp_path / "mp.json")])
    assert r.exit_code == 3 and r.stdout == "" and "Traceback" not in r.output
    errors = [line for line in r.stderr.splitlines() if "$.collectives[" in line]
    named = {int(line.split(": $.collectives[")[1].split("]")[0]) for line in errors}
    assert named == set(_hierarchical(hw))
    assert all(f"{tmp_path / 'hw.json'}: $.collectives[" in line and "would take 2.500x" in line for line in errors)


def test_fit_warns_on_stderr_and_in_the_notes(tmp_path):
    hw = synthetic.hardware_profile(2, 4, links=NO_NETWORK)
    (tmp_path / "hw.json").write_text(json.dumps(hw))
    (tmp_path / "mp.json").write_text(json.dumps(synthetic.model_profile(TINY)))
    r = CliRunner().invoke(main, ["fit", str(tmp_path / "hw.json"), str(tmp_path / "mp.json")])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    warnings = [line.removeprefix("warning: ") for line in r.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == len(_hierarchical(hw))
    assert all(w.startswith(f"{tmp_path / 'hw.json'}: in the cross-node fit $.collectives[") for w in warnings)
    assert set(warnings) <= set(doc["notes"])


def test_a_capped_p2p_share_is_explicit():
    """8 pairs leaving a node share 200 GB/s (25 each, probed); one pair alone would get 200, above the
    intra-node link's 50: the model's bound binds, and says so."""
    notes = []
    model = CommModel(synthetic.hardware_profile(2, 8, links=dict(synthetic.LINKS, p2p_node=200e9)), "hw", notes)
    ab, extrap, method = model.p2p(Topology(2, 2, 1, 1), " (one pair)")
    assert extrap and "capped at the intra-node p2p link" in method
    assert ab.bandwidth_gbps == pytest.approx(synthetic.LINKS["p2p_intra"] / 1e9, rel=1e-4)
    assert any("p2p across nodes (one pair)" in n and "capped" in n for n in notes)
    _, _, method = model.p2p(Topology(2, 2, 1, 8))          # the probed boundary: not capped
    assert "capped" not in method


def _layouts(pipe):
    return {lay["id"]: lay for lay in pipe["layouts"]}


def test_strategies_resting_on_extrapolated_fits_are_flagged():
    """A profile of one node of 4 (every op, groups of 2 and 4) priced for one node of 8: a group of 8 is the only
    shape it did not measure, so a strategy is flagged exactly when its tp or dp degree is 8."""
    doc = fit(synthetic.hardware_profile(1, 4), synthetic.model_profile(TINY, tp_degrees=(1, 2)), nodes=1,
              gpus_per_node=8)
    assert schema_errors(doc, "cost-model", doc["schema_version"]) == []
    flagged = 0
    for pipe in doc["pipelines"]:
        lays = _layouts(pipe)
        for s in pipe["strategies"]:
            lay = lays[s["layout"]]
            assert s.get("extrapolated", False) == (8 in (lay["tp"], lay["dp"])), (pipe["pp"], s["id"])
            assert s.get("extrapolated") is not False          # written only when true
            flagged += s.get("extrapolated", False)
        assert "extrapolated_p2p" not in pipe                   # every boundary is the probed intra-node link
    assert flagged > 0


def test_extrapolated_p2p_is_the_p2p_fit_of_the_pipeline():
    """2 x 4 priced for 4 x 4 with 8 layers: pp 2 crosses nodes as the probed pp 2 did (4 pairs per node), pp 8
    also with 2 pairs per node, a sharing the profile never measured."""
    eight = dict(TINY, layers=8)
    doc = fit(synthetic.hardware_profile(2, 4), synthetic.model_profile(eight), nodes=4, gpus_per_node=4)
    fits = {p["pp_degree"]: p for p in doc["fits"]["p2p"]}
    assert any(f["extrapolated"] for f in fits.values()) and not all(f["extrapolated"] for f in fits.values())
    for pipe in doc["pipelines"]:
        expected = pipe["pp"] > 1 and fits[pipe["pp"]]["extrapolated"]
        assert pipe.get("extrapolated_p2p", False) == expected, pipe["pp"]
