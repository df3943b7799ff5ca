"""`galvatron-search show PLAN [--report RUN_REPORT] [-o FILE.png|.svg|.html]`: the command's pure core and edges.

    warnings = check_pair(plan, report, "plan.json", "report.json")   # DocumentError (exit 3) or lines to warn
    data = render(plan, report, "html", warnings)                       # bytes of the picture
    atomic_write_bytes("plan.html", data)                               # atomically (galvatron_contracts)

The picture is show_scene.scene's; 'html' is written by show_page.py (inline SVG, no matplotlib), 'png' and 'svg'
by show_mpl.py with matplotlib, the optional extra `galvatron-search[plot]`, imported only on that path.
"""
from __future__ import annotations

from pathlib import Path

from galvatron_contracts.documents import DocumentError, UsageError, digest

from .show_scene import scene

FORMATS = ("png", "svg", "html")


# --- reading the documents -------------------------------------------------------------------------------------

def check_pair(plan: dict, report: dict | None, plan_name: str, report_name: str) -> list[str]:
    """Faults that make a plan's predictions or a report unusable with this plan (DocumentError, exit 3), and
    the warnings worth a line (returned): a report of another plan digest is drawn, with a note."""
    pp, world = len(plan["stages"]), plan["cluster"]["world_size"]
    pred = plan.get("predictions")
    if pred is not None and [s["index"] for s in pred["stages"]] != list(range(pp)):
        raise DocumentError(plan_name, f"$.predictions.stages: expected the indices 0..{pp - 1} of the plan's "
                                       f"{pp} stages, got {[s['index'] for s in pred['stages']]}")
    if report is None:
        return []
    if report["environment"]["world_size"] != world:
        raise DocumentError(report_name, f"$.environment.world_size: {report['environment']['world_size']}, "
                                         f"but the plan {plan_name} is for {world} ranks: a report of another plan")
    for where, entries in (("memory.ranks", report["memory"]["ranks"]),
                           ("breakdown.ranks", report.get("breakdown", {}).get("ranks", []))):
        for n, entry in enumerate(entries):
            if entry["rank"] >= world or entry["stage"] >= pp:
                raise DocumentError(report_name, f"$.{where}[{n}]: rank {entry['rank']} of stage {entry['stage']}, "
                                                 f"but the plan {plan_name} has {world} ranks in {pp} stages")
    if report["plan"]["sha256"] != digest(plan):
        return [f"the run report {report_name} ran another plan (sha256 {report['plan']['sha256'][:12]}, this plan "
                f"{digest(plan)[:12]}): drawn beside it all the same"]
    return []



# --- rendering and writing ------------------------------------------------------------------------------------

PLOT_EXTRA = "pip install 'galvatron-search[plot]'"


def render(plan: dict, report: dict | None, fmt_name: str, warnings: list[str] | None = None) -> bytes:
    """The picture in a format of FORMATS: 'html' by show_page (no matplotlib), 'png'/'svg' by show_mpl."""
    picture = scene(plan, report, warnings)
    if fmt_name == "html":
        from .show_page import html
        return html(picture).encode()
    from .show_mpl import figure_bytes
    return figure_bytes(picture, fmt_name)


def output_format(path: str) -> str:
    """The format an output path's suffix names (UsageError, exit 2, for any other)."""
    suffix = Path(path).suffix.lower().lstrip(".")
    if suffix not in FORMATS:
        raise UsageError(f"{path}: unknown picture format {('.' + suffix) if suffix else '(no suffix)'!s}; expected "
                         f"a file ending in {', '.join('.' + f for f in FORMATS)}")
    return suffix


def default_output(plan_path: str) -> str:
    """Beside the plan, its name with .png (runs/plan.json -> runs/plan.png); plan.png here for stdin."""
    return "plan.png" if plan_path == "-" else str(Path(plan_path).with_suffix(".png"))


def require_matplotlib(fmt_name: str) -> None:
    """PNG and SVG are drawn by matplotlib, an optional extra: without it, one line saying how to get it."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise UsageError(f"writing .{fmt_name} needs matplotlib, which is not installed: {PLOT_EXTRA} (an .html "
                         f"picture needs nothing)") from None

