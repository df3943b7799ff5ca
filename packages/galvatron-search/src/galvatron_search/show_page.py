"""Where each part of a show.Scene goes on the page (pixels), and the page as SVG and as one HTML file.

`place` is the one layout both renderers use (show_mpl.py paints the same Page with matplotlib), so the PNG and
the HTML page agree. The SVG written here is plain text: no matplotlib, no script, no font or style from outside,
and every box carries its numbers as a hover title.
"""
from __future__ import annotations

import textwrap
from dataclasses import dataclass
from xml.sax.saxutils import escape, quoteattr

from . import __version__
from .show_scene import Box, Panel, Rule, Scene, Swatch, text_px

WIDTH = 1400              # page width, px
MARGIN = 24
GAP = 22                  # between panels, vertically and between a left and a right panel
TITLE_PX, LINE_PX, PANEL_TITLE_PX, TICK_PX, LEGEND_PX, CAPTION_PX, BOX_LABEL_PX = 20, 13, 14, 11, 11, 12, 10
PANEL_HEAD = 36           # the panel title above the plot (rule labels under it)
AXIS_FOOT = 40            # tick labels and the axis label under the plot
LEGEND_ROW = 18
SWATCH = 12
FONT = "DejaVu Sans, Verdana, Arial, sans-serif"


@dataclass
class Placed:
    """A panel's plot area in page pixels, and its legend entries' positions."""

    panel: Panel
    x: float
    y: float
    w: float
    h: float
    legend: list[tuple[float, float, Swatch]]

    def px(self, x: float) -> float:
        lo, hi = self.panel.x_range
        return self.x + (x - lo) / (hi - lo) * self.w

    def py(self, row: float) -> float:
        return self.y + row / self.panel.rows * self.h

    def box_px(self, b: Box) -> tuple[float, float, float, float]:
        x0, x1 = self.px(b.x), self.px(b.x + b.w)
        return x0, self.py(b.y), max(x1 - x0, 0.0), self.py(b.y + b.h) - self.py(b.y)


@dataclass
class Page:
    width: int
    height: int
    header: list[tuple[float, str, int, bool]]      # (baseline y, text, size, bold)
    panels: list[Placed]
    captions: list[tuple[float, str]]


def _wrap(text: str, size: int, width: float) -> list[str]:
    return textwrap.wrap(text, max(20, int(width / (0.58 * size)))) or [""]


def _legend(entries: list[Swatch], x: float, y: float, width: float) -> tuple[list, float]:
    """Entries flowed left to right from (x, y), wrapped at `width`; returns them placed and the height used."""
    out, cx, cy = [], x, y
    for s in entries:
        w = SWATCH + 6 + text_px(s.label, LEGEND_PX) + 18
        if cx > x and cx + w > x + width:
            cx, cy = x, cy + LEGEND_ROW
        out.append((cx, cy, s))
        cx += w
    return out, (cy - y + LEGEND_ROW if entries else 0)


def place(scene: Scene, header: bool = True) -> Page:
    """The page: the header (when asked: the HTML page writes its own), then the panels top to bottom (a left
    and a right panel side by side, sharing their rows), then the captions."""
    inner = WIDTH - 2 * MARGIN
    labelled = [label for p in scene.panels for label in p.row_labels]
    gutter = max([text_px(label, TICK_PX) for label in labelled] + [40]) + 14
    lines, y = [], MARGIN
    if header:
        y += TITLE_PX
        lines.append((y, scene.title, TITLE_PX, True))
        y += 8
        for line in scene.lines:
            for part in _wrap(line, LINE_PX, inner):
                y += LINE_PX + 5
                lines.append((y, part, LINE_PX, False))
        y += 14
    placed, k = [], 0
    while k < len(scene.panels):
        band = scene.panels[k:k + 2] if scene.panels[k].width == "left" else scene.panels[k:k + 1]
        x_left, x_right = MARGIN + gutter, WIDTH - MARGIN - 8
        if len(band) == 2:
            split = x_left + (x_right - x_left) * 0.56
            spans = [(x_left, split - GAP), (split + GAP, x_right)]
        else:
            spans = [(x_left, x_right)]
        bottom = y
        for panel, (x0, x1) in zip(band, spans, strict=True):
            h = panel.rows * panel.row_px
            top = y + PANEL_HEAD
            legend, used = _legend(panel.legend, x0, top + h + AXIS_FOOT, x1 - x0)
            placed.append(Placed(panel, x0, top, x1 - x0, h, legend))
            bottom = max(bottom, top + h + AXIS_FOOT + used)
        y = bottom + GAP
        k += len(band)
    captions = []
    for text in scene.captions:
        for part in _wrap(text, CAPTION_PX, inner):
            y += CAPTION_PX + 4
            captions.append((y, part))
        y += 4
    return Page(WIDTH, int(y + MARGIN), lines, placed, captions)


def label_fits(label: str, width_px: float) -> bool:
    return bool(label) and text_px(label, BOX_LABEL_PX) + 4 <= width_px


def rule_label(p: Placed, r: Rule) -> tuple[float, str]:
    """Where a rule's label goes above the plot: (x in px, anchor 'start'|'middle'|'end'), on the rule's side and
    kept inside the plot's width."""
    x, w = p.px(r.x0), text_px(r.label, TICK_PX) + 6
    anchor = {"left": "end", "right": "start"}.get(r.side, "middle")
    if anchor == "start" and x + w > p.x + p.w:
        anchor = "end"
    if anchor == "end" and x - w < p.x:
        anchor = "start"
    if anchor == "middle":
        x = min(max(x, p.x + w / 2), p.x + p.w - w / 2)
    return x + {"start": 3, "end": -3, "middle": 0}[anchor], anchor


def stroke_width(width_px: float) -> float:
    """A white edge separates neighbouring boxes while they are wide enough to keep their colour."""
    return 0.8 if width_px >= 5 else 0.0


# --- SVG -------------------------------------------------------------------------------------------------------

def _text(x, y, text, size, anchor="start", bold=False, color="#222222", cls="") -> str:
    weight = ' font-weight="bold"' if bold else ""
    klass = f" class={quoteattr(cls)}" if cls else ""
    return (f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}" fill="{color}"{weight}{klass}>'
            f"{escape(text)}</text>")


def _rect(x, y, w, h, fill, *, stroke=0.0, gid="", cls="", tip="", hatch=False) -> str:
    attrs = f'x="{x:.2f}" y="{y:.2f}" width="{w:.2f}" height="{h:.2f}" fill="{fill}"'
    if stroke:
        attrs += f' stroke="#ffffff" stroke-width="{stroke}"'
    if gid:
        attrs += f" id={quoteattr(gid)}"
    if cls:
        attrs += f" class={quoteattr(cls)}"
    body = f"<title>{escape(tip)}</title>" if tip else ""
    out = f"<rect {attrs}>{body}</rect>" if body else f"<rect {attrs}/>"
    if hatch:
        out += f'<rect x="{x:.2f}" y="{y:.2f}" width="{w:.2f}" height="{h:.2f}" fill="url(#hatch)" class="hatch"/>'
    return out


def _swatch(x: float, y: float, s: Swatch) -> list[str]:
    mid = y + SWATCH / 2
    if s.line:
        dash = ' stroke-dasharray="5,3"' if s.dashed else ""
        out = [f'<line x1="{x:.1f}" y1="{mid:.1f}" x2="{x + SWATCH + 4:.1f}" y2="{mid:.1f}" stroke="{s.fill}" '
               f'stroke-width="2"{dash}/>']
    else:
        out = [_rect(x, y, SWATCH, SWATCH, s.fill, hatch=s.hatch)]
    return out + [_text(x + SWATCH + 8, y + SWATCH - 2, s.label, LEGEND_PX)]


def _panel_svg(p: Placed) -> list[str]:
    panel = p.panel
    out = [f"<g class=\"panel\" id={quoteattr('panel-' + panel.key)}>",
           _text(p.x, p.y - 19, panel.title, PANEL_TITLE_PX, bold=True),
           f'<rect x="{p.x:.1f}" y="{p.y:.1f}" width="{p.w:.1f}" height="{p.h:.1f}" fill="#FAFAFA" '
           f'stroke="#999999" stroke-width="0.8"/>']
    for pos, label in panel.xticks:
        x = p.px(pos)
        if panel.key != "layout":
            out.append(f'<line x1="{x:.1f}" y1="{p.y:.1f}" x2="{x:.1f}" y2="{p.y + p.h:.1f}" stroke="#E4E4E4"/>')
        out.append(f'<line x1="{x:.1f}" y1="{p.y + p.h:.1f}" x2="{x:.1f}" y2="{p.y + p.h + 4:.1f}" stroke="#666666"/>')
        out.append(_text(x, p.y + p.h + 16, label, TICK_PX, "middle"))
    out.append(_text(p.x + p.w / 2, p.y + p.h + 33, panel.xlabel, TICK_PX + 1, "middle", color="#444444"))
    for row, label in enumerate(panel.row_labels):
        out.append(_text(p.x - 8, p.py(row + 0.5) + 4, label, TICK_PX, "end"))
    for b in panel.boxes:
        x, y, w, h = p.box_px(b)
        cls = "cell" if b.gid.startswith("cell-") else ""
        out.append(_rect(x, y, w, h, b.fill, stroke=stroke_width(w), gid=b.gid, cls=cls, tip=b.tip, hatch=b.hatch))
        if label_fits(b.label, w):
            out.append(_text(x + w / 2, y + h / 2 + 3.5, b.label, BOX_LABEL_PX, "middle", color=b.label_color))
    for r in panel.rules:
        dash = ' stroke-dasharray="6,4"' if r.dashed else ""
        gid = f" id={quoteattr(r.gid)}" if r.gid else ""
        width = 1 if r.color == "#BBBBBB" else 2
        out.append(f'<line x1="{p.px(r.x0):.2f}" y1="{p.py(r.y0):.2f}" x2="{p.px(r.x1):.2f}" y2="{p.py(r.y1):.2f}" '
                   f'stroke="{r.color}" stroke-width="{width}"{dash}{gid}/>')
        if r.label:
            x, anchor = rule_label(p, r)
            out.append(_text(x, p.y - 3, r.label, TICK_PX, anchor, color=r.color, bold=True))
    for n in panel.notes:
        out.append(_text(p.px(n.x), p.py(n.y) + 4, n.text, TICK_PX, color=n.color))
    for x, y, s in p.legend:
        out += _swatch(x, y, s)
    return out + ["</g>"]


HATCH_DEFS = ('<defs><pattern id="hatch" width="6" height="6" patternUnits="userSpaceOnUse" '
              'patternTransform="rotate(45)"><line x1="0" y1="0" x2="0" y2="6" stroke="#ffffff" '
              'stroke-width="1.6"/></pattern></defs>')


def svg(scene: Scene, header: bool = True) -> str:
    """The picture as one standalone SVG document (the HTML page inlines it without the header)."""
    page = place(scene, header)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{page.width}" height="{page.height}" '
           f'viewBox="0 0 {page.width} {page.height}" font-family={quoteattr(FONT)}>', HATCH_DEFS,
           f'<rect width="{page.width}" height="{page.height}" fill="#FFFFFF"/>']
    out += [_text(MARGIN, y, text, size, bold=bold) for y, text, size, bold in page.header]
    for p in page.panels:
        out += _panel_svg(p)
    out += [_text(MARGIN, y, text, CAPTION_PX, color="#444444", cls="caption") for y, text in page.captions]
    return "\n".join(out + ["</svg>"]) + "\n"


STYLE = """body{font-family:DejaVu Sans,Verdana,Arial,sans-serif;margin:24px;color:#222;background:#fff}
h1{font-size:20px;margin:0 0 8px}p{margin:4px 0;font-size:13px;max-width:1400px}
.lines p:first-child{font-family:DejaVu Sans Mono,Menlo,Consolas,monospace;font-size:12px}
.foot{color:#777;font-size:12px;margin-top:12px}svg{display:block;margin-top:12px}rect:hover{opacity:.75}"""


def html(scene: Scene) -> str:
    """One self-contained page: the header as text, the panels and captions as inline SVG, hover titles on every
    box. Well-formed XML too (XHTML syntax), so the tests parse it with the standard library."""
    lines = "".join(f"<p>{escape(line)}</p>" for line in scene.lines)
    return ("<!DOCTYPE html>\n"
            '<html xmlns="http://www.w3.org/1999/xhtml" lang="en">\n<head>\n<meta charset="utf-8"/>\n'
            f"<title>{escape(scene.title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
            f"<h1>{escape(scene.title)}</h1>\n<div class=\"lines\">{lines}</div>\n"
            f"{svg(scene, header=False)}"
            f'<p class="foot">Drawn by galvatron-search {escape(__version__)} show; hover over a box for its '
            f"numbers.</p>\n</body>\n</html>\n")
