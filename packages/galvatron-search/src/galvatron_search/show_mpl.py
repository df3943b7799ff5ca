"""The picture of a plan as PNG or SVG, painted with matplotlib (the optional extra `galvatron-search[plot]`).

Only `galvatron-search show -o FILE.png|.svg` imports this module. It paints show_page.place's Page: one axes per
panel at the placed pixels (data coordinates, ticks as the scene gives them), and one page-sized overlay axes in
pixels for the header, panel titles, legends and captions, so the figure matches the HTML page.
"""
from __future__ import annotations

import io

from matplotlib.collections import PatchCollection
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from .show_page import (
    BOX_LABEL_PX,
    CAPTION_PX,
    LEGEND_PX,
    MARGIN,
    PANEL_TITLE_PX,
    SWATCH,
    TICK_PX,
    Placed,
    label_fits,
    place,
    rule_label,
    stroke_width,
)
from .show_scene import Scene

DPI = 100                 # page pixels per inch: the geometry of show_page
PNG_DPI = 150             # the PNG is written 1.5x larger, for sharp text
ANCHOR = {"start": "left", "middle": "center", "end": "right"}


def _pt(px: float) -> float:
    return px * 72 / DPI


def _overlay(fig: Figure, width: int, height: int):
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, width)
    ax.set_ylim(height, 0)
    ax.set_axis_off()
    return ax


def _text(ax, x, y, text, size, **kw):
    ax.text(x, y, text, fontsize=_pt(size), va=kw.pop("va", "baseline"), **kw)


def _boxes(ax, p: Placed) -> None:
    """Boxes with an id one patch each (the SVG keeps the id), the rest in one collection per look, in order."""
    groups: dict[tuple, list[Rectangle]] = {}
    for b in p.panel.boxes:
        width_px = p.box_px(b)[2]
        lw = _pt(stroke_width(width_px))
        if b.gid:
            patch = Rectangle((b.x, b.y), b.w, b.h, facecolor=b.fill, edgecolor="white", linewidth=lw,
                              hatch="///" if b.hatch else None)
            patch.set_gid(b.gid)
            ax.add_patch(patch)
        else:
            groups.setdefault((b.fill, b.hatch, lw), []).append(Rectangle((b.x, b.y), b.w, b.h))
        if label_fits(b.label, width_px):
            ax.text(b.x + b.w / 2, b.y + b.h / 2, b.label, ha="center", va="center", fontsize=_pt(BOX_LABEL_PX),
                    color=b.label_color, clip_on=True)
    for (fill, hatch, lw), patches in groups.items():
        ax.add_collection(PatchCollection(patches, facecolor=fill, edgecolor="white", linewidth=lw,
                                          hatch="///" if hatch else None))


def _panel(fig: Figure, overlay, p: Placed, width: int, height: int) -> None:
    panel = p.panel
    ax = fig.add_axes((p.x / width, 1 - (p.y + p.h) / height, p.w / width, p.h / height))
    ax.set_xlim(*panel.x_range)
    ax.set_ylim(panel.rows, 0)
    ax.set_facecolor("#FAFAFA")
    for spine in ax.spines.values():
        spine.set_color("#999999")
        spine.set_linewidth(0.6)
    ax.set_xticks([t for t, _ in panel.xticks], [label for _, label in panel.xticks], fontsize=_pt(TICK_PX))
    ax.set_yticks([k + 0.5 for k in range(len(panel.row_labels))], panel.row_labels, fontsize=_pt(TICK_PX))
    ax.tick_params(axis="y", length=0)
    ax.set_xlabel(panel.xlabel, fontsize=_pt(TICK_PX + 1), color="#444444", labelpad=3)
    if panel.key != "layout":
        ax.grid(axis="x", color="#E4E4E4", linewidth=0.6)
        ax.set_axisbelow(True)
    _boxes(ax, p)
    for r in panel.rules:
        (line,) = ax.plot([r.x0, r.x1], [r.y0, r.y1], color=r.color, linestyle="--" if r.dashed else "-",
                          linewidth=_pt(1 if r.color == "#BBBBBB" else 2))
        if r.gid:
            line.set_gid(r.gid)
        if r.label:
            x, anchor = rule_label(p, r)
            _text(overlay, x, p.y - 3, r.label, TICK_PX, ha=ANCHOR[anchor], color=r.color, weight="bold")
    for n in panel.notes:
        ax.text(n.x, n.y, n.text, fontsize=_pt(TICK_PX), va="center", color=n.color, clip_on=False)
    _text(overlay, p.x, p.y - 19, panel.title, PANEL_TITLE_PX, weight="bold")
    for x, y, s in p.legend:
        if s.line:
            overlay.plot([x, x + SWATCH + 4], [y + SWATCH / 2] * 2, color=s.fill, linewidth=_pt(2),
                         linestyle="--" if s.dashed else "-")
        else:
            overlay.add_patch(Rectangle((x, y), SWATCH, SWATCH, facecolor=s.fill, edgecolor="white", linewidth=0,
                                        hatch="///" if s.hatch else None))
        _text(overlay, x + SWATCH + 8, y + SWATCH - 2, s.label, LEGEND_PX)


def figure_bytes(scene: Scene, fmt: str) -> bytes:
    """The picture as PNG or SVG bytes."""
    page = place(scene, header=True)
    fig = Figure(figsize=(page.width / DPI, page.height / DPI), dpi=DPI, facecolor="white")
    fig.set_layout_engine(None)
    with _fonts():
        overlay = _overlay(fig, page.width, page.height)
        for y, text, size, bold in page.header:
            _text(overlay, MARGIN, y, text, size, weight="bold" if bold else "normal")
        for p in page.panels:
            _panel(fig, overlay, p, page.width, page.height)
        for y, text in page.captions:
            _text(overlay, MARGIN, y, text, CAPTION_PX, color="#444444")
        out = io.BytesIO()
        metadata = {"Date": None} if fmt == "svg" else {"Software": None}
        fig.savefig(out, format=fmt, dpi=PNG_DPI if fmt == "png" else DPI, facecolor="white", metadata=metadata)
    return out.getvalue()


def _fonts():
    """The page's font (DejaVu Sans, which matplotlib ships) and deterministic SVG ids, for this figure only."""
    import matplotlib
    return matplotlib.rc_context({"font.family": "sans-serif", "font.sans-serif": ["DejaVu Sans"],
                                  "svg.hashsalt": "galvatron", "hatch.color": "white", "hatch.linewidth": 1.2})
