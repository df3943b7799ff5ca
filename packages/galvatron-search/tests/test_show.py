"""`galvatron-search show`: the schedule it draws against its definition (a longest-path reference, the closed form
and the shared in-flight rule), the scene against the plan's numbers, and the written PNG, SVG and HTML files
(parsed: one cell per layer in its stage's row, memory bars and the budget line at the right lengths), the
missing-matplotlib path, a plan without predictions, a run report beside the plan, and the exit codes."""
import functools
import json
import random
import struct
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest
from click.testing import CliRunner
from synth import cost_model

from galvatron_contracts.documents import digest, known_versions, load_schema, validate
from galvatron_contracts.names import strategy_name
from galvatron_contracts.pipeline import in_flight
from galvatron_search import search
from galvatron_search.cli import main
from galvatron_search.show import render
from galvatron_search.show_scene import scene
from galvatron_search.show_timeline import simulate, stage_order

SVG = "{http://www.w3.org/2000/svg}"
NEWEST_REPORT = known_versions()["run-report"][-1]
RUN_REPORT = "{}.{}".format(*NEWEST_REPORT)


def run(args, input=None):
    return CliRunner().invoke(main, args, input=input, catch_exceptions=False)


@functools.cache
def _plan(schedule: str) -> str:
    cm = cost_model(5, 1, 4, 4, False)
    return json.dumps(search(cm, memory_gib=16, global_batch=8, pp=(2,), schedules=(schedule,),
                             with_baselines=True))


def pp2_plan(schedule: str = "1f1b") -> dict:
    """A searched plan of 4 layers over 2 stages of 2 ranks (a random cost model), with predictions."""
    return json.loads(_plan(schedule))


def write(tmp_path, name, doc) -> str:
    path = tmp_path / name
    path.write_text(json.dumps(doc))
    return str(path)


def run_report(plan: dict, *, time_factor=1.3, peak_factor=1.1, breakdown=False) -> dict:
    """A schema-valid run report of `plan`: every rank measured at peak_factor x its stage's predicted total,
    the step at time_factor x the predicted; with `breakdown`, rank-by-rank components (run-report 1.2)."""
    pred, world = plan["predictions"], plan["cluster"]["world_size"]
    T = pred["iteration_time_s"] * time_factor
    ranks = []
    for st in plan["stages"]:
        mem = pred["stages"][st["index"]]["memory_bytes_per_rank"]
        for n, r in enumerate(st["ranks"]):
            ranks.append({"rank": r, "stage": st["index"], "peak_bytes": int(mem["total"] * peak_factor) + n,
                          "accounting": {"param_bytes": int(mem["params"]), "grad_bytes": int(mem["grads"]),
                                         "optimizer_bytes": int(mem["optimizer"]),
                                         "activation_bytes": int(mem["activations"])}})
    tr, B = plan["training"], plan["global_batch"]
    doc = {"kind": "run-report", "schema_version": RUN_REPORT, "producer": {"name": "test", "version": "0"},
           "plan": {"sha256": digest(plan), "summary": "test", "model_name": plan["model"]["name"]},
           "environment": {"torch_version": "2.13.0", "python_version": "3.11", "backend": "gloo",
                           "world_size": world, "device": {"type": "cpu", "name": "test"}},
           "settings": {"steps": 3, "warmup_steps": 1, "dtype": tr["dtype"], "seq_len": tr["seq_len"],
                        "global_batch": B, "micro_batches": plan["micro_batches"], "data": {"kind": "random"}},
           "steps": [{"step": s, "loss": 5.0, "time_s": T, "tokens": B * tr["seq_len"]} for s in range(3)],
           "throughput": {"measured_steps": 2, "iteration_time_s": T,
                          "iteration_time_spread_s": {"p25_s": 0.9 * T, "p75_s": 1.1 * T},
                          "samples_per_s": B / T, "tokens_per_s": B * tr["seq_len"] / T, "achieved_tflops": 0.0,
                          "mfu": None},
           "memory": {"method": "test", "ranks": ranks}}
    if breakdown:
        schema = load_schema("run-report", RUN_REPORT)["properties"]["breakdown"]["properties"]["ranks"]["items"]
        required = schema["properties"]["components"].get("required", [])
        doc["breakdown"] = {"method": "test", "profiled_step": 1, "ranks": [
            {"rank": r["rank"], "stage": r["stage"], "step_s": T * (1 + r["rank"] / 100),
             "components": {**dict.fromkeys(required, 0.0), "forward_compute_s": 0.3 * T,
                            "backward_compute_s": 0.5 * T, "pipeline_idle_s": 0.1 * T,
                            "other_s": T * (0.1 + r["rank"] / 100)}}
            for r in ranks]}
    return validate(doc, "test report", "run-report")


# --- the schedule ----------------------------------------------------------------------------------------------

def reference_starts(schedule, f, b, m):
    """Start times by the definition, as a longest path: an op starts when its stage's previous op and its input
    (the neighbour's same micro-batch) are done."""
    p = len(f)
    orders = [stage_order(schedule, i, p, m) for i in range(p)]
    index = {(i, op): n for i in range(p) for n, op in enumerate(orders[i])}

    @functools.cache
    def end(i, kind, j):
        return start(i, kind, j) + (f[i] if kind == "F" else b[i])

    @functools.cache
    def start(i, kind, j):
        n = index[(i, (kind, j))]
        t = end(i, *orders[i][n - 1]) if n else 0.0
        if kind == "F" and i > 0:
            t = max(t, end(i - 1, "F", j))
        if kind == "B" and i < p - 1:
            t = max(t, end(i + 1, "B", j))
        return t

    return {(i, kind, j): start(i, kind, j) for i in range(p) for kind, j in orders[i]}


@pytest.mark.parametrize("schedule", ["1f1b", "gpipe"])
def test_schedule_matches_its_definition_the_closed_form_and_the_in_flight_rule(schedule):
    rng = random.Random(7)
    for _ in range(60):
        p, m = rng.randint(1, 6), rng.randint(1, 9)
        f = [rng.uniform(0.1, 2.0) for _ in range(p)]
        b = [rng.uniform(0.1, 4.0) for _ in range(p)]
        slots = simulate(schedule, f, b, m)
        ref = reference_starts(schedule, f, b, m)
        assert len(slots) == 2 * p * m == len(ref)
        for s in slots:
            assert s.start == pytest.approx(ref[(s.stage, s.kind, s.micro_batch)], abs=1e-9)
        # every stage runs each forward and backward once, forwards and backwards in micro-batch order, and
        # holds at its peak exactly the micro-batches the shared rule says (the memory the plan predicts)
        for i in range(p):
            order = stage_order(schedule, i, p, m)
            assert sorted(order) == sorted([("F", j) for j in range(m)] + [("B", j) for j in range(m)])
            held = peak = 0
            for kind, _ in order:
                held += 1 if kind == "F" else -1
                peak = max(peak, held)
            assert peak == in_flight(schedule, i, p, m)
        # equal stages: the cost model's (m + p - 1) x (f + b); any stages: no shorter than one stage's own work,
        # nor than one micro-batch's way down and back up
        uniform = simulate(schedule, [f[0]] * p, [b[0]] * p, m)
        assert max(s.end for s in uniform) == pytest.approx((m + p - 1) * (f[0] + b[0]))
        makespan = max(s.end for s in slots)
        assert makespan >= max(m * (x + y) for x, y in zip(f, b)) - 1e-9 and makespan >= sum(f) + sum(b) - 1e-9


# --- the scene -------------------------------------------------------------------------------------------------

def test_scene_cells_memory_and_timeline_follow_the_plan():
    plan = pp2_plan()
    pic = scene(plan)
    panels = {p.key: p for p in pic.panels}
    assert list(panels) == ["layout", "memory", "timeline", "breakdown"]
    cells = panels["layout"].boxes
    units = [("embedding", plan["embedding"], 0)]
    for st in plan["stages"]:
        units += [(f"layer{j}", plan["layers"][j], st["index"]) for j in range(st["layer_start"], st["layer_end"])]
    units.append(("head", plan["head"], len(plan["stages"]) - 1))
    assert [c.gid for c in cells] == [f"cell-{u}-stage{k}" for u, _, k in units]
    for cell, (_, strategy, stage) in zip(cells, units, strict=True):
        assert int(cell.y) == stage and cell.hatch == strategy["recompute"]
    for (c1, u1), (c2, u2) in zip(zip(cells, units), zip(cells[1:], units[1:])):
        assert (c1.fill == c2.fill) == (strategy_name(u1[1]) == strategy_name(u2[1]))
    memory = panels["memory"]
    for st in plan["predictions"]["stages"]:
        parts = [b for b in memory.boxes if b.gid.startswith(f"mem-pred-s{st['index']}-")]
        assert sum(b.w for b in parts) == pytest.approx(st["memory_bytes_per_rank"]["total"], rel=1e-12)
    (budget,) = [r for r in memory.rules if r.gid == "budget"]
    assert budget.x0 == plan["search"]["memory_budget_bytes"]
    (predicted,) = [r for r in panels["timeline"].rules if r.gid == "predicted-step"]
    assert predicted.x0 == plan["predictions"]["iteration_time_s"]
    boxes = [b for b in panels["timeline"].boxes if b.label]
    assert len(boxes) == 2 * len(plan["stages"]) * plan["micro_batches"]


# --- written files ---------------------------------------------------------------------------------------------

def page(path) -> ET.Element:
    return ET.parse(path).getroot()


def rects(root, prefix):
    return [r for r in root.iter(f"{SVG}rect") if r.get("id", "").startswith(prefix)]


def test_html_is_one_well_formed_page_with_a_cell_per_layer_and_the_budget_at_its_length(tmp_path):
    plan = pp2_plan()
    out = tmp_path / "plan.html"
    r = run(["show", write(tmp_path, "plan.json", plan), "-o", str(out)])
    assert r.exit_code == 0, r.stderr
    assert r.stderr.strip().endswith(f"-> {out}") and r.stdout == ""
    root = page(out)
    text = out.read_text()
    assert "<script" not in text and "http" not in text.replace("http://www.w3.org/", "")   # nothing fetched
    cells = rects(root, "cell-")
    assert len(cells) == len(plan["layers"]) + 2
    rows = {}                                    # a stage's cells share one row: same y, and rows go downwards
    for c in cells:
        rows.setdefault(int(c.get("id").rsplit("stage", 1)[1]), set()).add(c.get("y"))
    assert all(len(ys) == 1 for ys in rows.values())
    ys = [float(next(iter(rows[k]))) for k in sorted(rows)]
    assert len(ys) == len(plan["stages"]) and all(a < b for a, b in zip(ys, ys[1:]))
    (budget,) = [e for e in root.iter(f"{SVG}line") if e.get("id") == "budget"]
    budget_x = float(budget.get("x1"))
    budget_bytes = plan["search"]["memory_budget_bytes"]
    for st in plan["predictions"]["stages"]:
        bars = rects(root, f"mem-pred-s{st['index']}-")
        x0 = min(float(b.get("x")) for b in bars)
        right = max(float(b.get("x")) + float(b.get("width")) for b in bars)
        expected = x0 + (budget_x - x0) * st["memory_bytes_per_rank"]["total"] / budget_bytes
        assert abs(right - expected) <= 0.05      # 2-decimal pixel coordinates of at most 7 rects
    assert len([t for t in root.iter(f"{SVG}title") if "forward of micro-batch" in t.text]) == \
        len(plan["stages"]) * plan["micro_batches"]


def test_png_and_svg_written_by_matplotlib(tmp_path):
    pytest.importorskip("matplotlib")
    from galvatron_search.show_mpl import DPI, PNG_DPI
    from galvatron_search.show_page import place

    plan = pp2_plan("gpipe")
    path = write(tmp_path, "plan.json", plan)
    r = run(["show", path])                      # default: beside the plan, with .png
    assert r.exit_code == 0, r.stderr
    data = (tmp_path / "plan.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    expected = place(scene(plan))
    assert width == round(expected.width * PNG_DPI / DPI) and abs(height - expected.height * PNG_DPI / DPI) <= 1
    svg_path = tmp_path / "plan.svg"
    assert run(["show", path, "-o", str(svg_path)]).exit_code == 0
    ids = [g.get("id", "") for g in page(svg_path).iter(f"{SVG}g")]
    assert len([i for i in ids if i.startswith("cell-")]) == len(plan["layers"]) + 2
    assert "budget" in ids and "predicted-step" in ids


def test_without_matplotlib_png_is_exit_2_with_the_install_line_and_html_still_works(tmp_path, monkeypatch):
    path = write(tmp_path, "plan.json", pp2_plan())
    monkeypatch.setitem(sys.modules, "matplotlib", None)        # import matplotlib now raises ImportError
    for suffix in ("png", "svg"):
        r = run(["show", path, "-o", str(tmp_path / f"p.{suffix}")])
        assert r.exit_code == 2
        assert r.stderr.count("\n") == 1 and "pip install 'galvatron-search[plot]'" in r.stderr
        assert not (tmp_path / f"p.{suffix}").exists()
    r = run(["show", path, "-o", str(tmp_path / "p.html")])
    assert r.exit_code == 0, r.stderr and (tmp_path / "p.html").is_file()


def test_importing_the_command_line_loads_no_matplotlib():
    code = "import sys, galvatron_search.cli, galvatron_search.show; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_a_plan_without_predictions_draws_its_layout_and_says_why(tmp_path):
    plan = pp2_plan()
    del plan["predictions"], plan["search"]
    out = tmp_path / "bare.html"
    assert run(["show", write(tmp_path, "bare.json", plan), "-o", str(out)]).exit_code == 0
    root = page(out)
    panels = [g.get("id") for g in root.iter(f"{SVG}g") if g.get("class") == "panel"]
    assert panels == ["panel-layout"]
    assert len(rects(root, "cell-")) == len(plan["layers"]) + 2
    captions = " ".join(t.text for t in root.iter(f"{SVG}text") if t.get("class") == "caption")
    assert "no predictions" in captions and "galvatron-search evaluate" in captions


def test_a_run_report_is_drawn_beside_the_prediction(tmp_path):
    plan = pp2_plan()
    with_breakdown = NEWEST_REPORT >= (1, 2)         # the optional breakdown came with run-report 1.2
    report = run_report(plan, breakdown=with_breakdown)
    out = tmp_path / "run.html"
    r = run(["show", write(tmp_path, "plan.json", plan), "--report", write(tmp_path, "r.json", report), "-o",
             str(out)])
    assert r.exit_code == 0, r.stderr
    assert "warning" not in r.stderr
    root = page(out)
    lines = {e.get("id"): float(e.get("x1")) for e in root.iter(f"{SVG}line") if e.get("id")}
    (timeline,) = [g for g in root.iter(f"{SVG}g") if g.get("id") == "panel-timeline"]
    x0 = min(float(b.get("x")) for b in timeline.iter(f"{SVG}rect") if b.get("fill") == "#6FA8DC")  # forward 0
    ratio = (lines["measured-step"] - x0) / (lines["predicted-step"] - x0)
    assert ratio == pytest.approx(1.3, abs=0.01)
    for st in plan["stages"]:
        k = st["index"]
        worst = max((m for m in report["memory"]["ranks"] if m["stage"] == k), key=lambda m: m["peak_bytes"])
        bars = rects(root, f"mem-pred-s{k}-")
        x_0 = min(float(b.get("x")) for b in bars)
        pred_px = max(float(b.get("x")) + float(b.get("width")) for b in bars) - x_0
        total = plan["predictions"]["stages"][k]["memory_bytes_per_rank"]["total"]
        assert (lines[f"mem-peak-s{k}"] - x_0) / pred_px == pytest.approx(worst["peak_bytes"] / total, abs=2e-3)
    tips = [t.text for t in root.iter(f"{SVG}title")]
    if with_breakdown:
        slowest = max(report["breakdown"]["ranks"], key=lambda x: x["step_s"])["rank"]
        assert any(t.startswith(f"measured rank {slowest} forward compute") for t in tips)
    else:
        assert any(t == "measured median step" for t in tips)
    other = dict(report, plan=dict(report["plan"], sha256="0" * 64))
    r = run(["show", write(tmp_path, "plan.json", plan), "--report", write(tmp_path, "o.json", other), "-o",
             str(tmp_path / "o.html")])
    assert r.exit_code == 0 and "warning: the run report" in r.stderr and "another plan" in r.stderr


def test_bad_inputs_exit_with_the_documented_codes(tmp_path):
    plan = pp2_plan()
    path = write(tmp_path, "plan.json", plan)
    (tmp_path / "dir.png").mkdir()
    cases = [
        (["show", path, "-o", str(tmp_path / "p.jpg")], 2, "unknown picture format .jpg"),
        (["show", path, "-o", str(tmp_path / "noext")], 2, "(no suffix)"),
        (["show", path, "-o", str(tmp_path / "dir.png")], 2, "not a regular file (a directory)"),
        (["show", "-", "--report", "-", "-o", str(tmp_path / "p.html")], 2, "only one of PLAN and --report"),
        (["show", write(tmp_path, "cm.json", cost_model(5, 1, 4, 4, False)), "-o", str(tmp_path / "p.html")], 3,
         "expected one of plan"),
        (["show", str(tmp_path / "missing.json"), "-o", str(tmp_path / "p.html")], 3, "no such file"),
        (["show", path, "--report", path, "-o", str(tmp_path / "p.html")], 3, "expected one of run-report"),
    ]
    wrong_world = run_report(plan)
    wrong_world["environment"]["world_size"] = 8
    cases.append((["show", path, "--report", write(tmp_path, "w.json", wrong_world), "-o",
                   str(tmp_path / "p.html")], 3, "$.environment.world_size"))
    for args, code, message in cases:
        r = run(args, input="")
        assert r.exit_code == code, (args, r.stderr)
        assert r.stderr.startswith("error: ") and message in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "p.html").exists() and not (tmp_path / "p.jpg").exists()


def test_render_is_the_same_picture_for_the_same_documents():
    plan = pp2_plan()
    report = run_report(plan)
    assert render(plan, report, "html") == render(plan, report, "html")
