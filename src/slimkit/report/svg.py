"""Hand-drawn SVG charts, so the HTML report needs no plotting library and works offline.

The SVG carries no `xmlns` attribute on purpose: inline SVG in HTML5 does not need it, and
leaving it out keeps the report free of any URL at all.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from html import escape

ACCENT = "#2563eb"
BASE = "#d97706"
MUTED = "#94a3b8"
INK = "#334155"
GRID = "#e2e8f0"


@dataclass(frozen=True)
class Point:
    label: str
    x: float
    y: float
    baseline: bool = False


def value_range(values: list[float]) -> tuple[float, float]:
    """Pad the data range so points never sit on the frame, and never let it collapse to 0."""
    lo, hi = min(values), max(values)
    span = hi - lo
    pad = span * 0.08 if span > 0 else max(abs(lo) * 0.05, 1e-3)
    return lo - pad, hi + pad


def ticks(lo: float, hi: float, count: int = 5) -> tuple[list[float], int]:
    """Steps of 1, 2, 2.5 or 5 × 10^k keep tick labels short and easy to read."""
    raw = (hi - lo) / count
    power = math.floor(math.log10(raw))
    mult = next(m for m in (1, 2, 2.5, 5, 10) if m * 10**power >= raw * 0.999)
    if mult == 10:
        mult, power = 1, power + 1
    step = mult * 10**power
    decimals = max(0, -power + (1 if mult == 2.5 else 0))
    values = []
    index = math.ceil(lo / step - 1e-9)
    while index * step <= hi + step * 1e-9:
        values.append(index * step)
        index += 1
    return values, decimals


def pareto_front(points: list[Point], lower_is_better: bool = False) -> list[Point]:
    """Candidates no other candidate beats on both speed and quality: the real choices."""
    sign = -1.0 if lower_is_better else 1.0

    def dominates(a: Point, b: Point) -> bool:
        ay, by = sign * a.y, sign * b.y
        return a.x >= b.x and ay >= by and (a.x > b.x or ay > by)

    front = [p for p in points if not any(dominates(q, p) for q in points)]
    return sorted(front, key=lambda p: (p.x, -sign * p.y))


def fmt_tick(value: float, decimals: int, suffix: str = "") -> str:
    return f"{value:.{decimals}f}{suffix}"


def text(x: float, y: float, body: str, anchor: str = "start", cls: str = "") -> str:
    klass = f' class="{cls}"' if cls else ""
    return (
        f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}"{klass}>{escape(body)}</text>'
    )


Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class Frame:
    """Where a chart's plot area sits and which data range it shows."""

    left: float
    top: float
    width: float
    height: float
    x_lo: float
    x_hi: float
    y_lo: float
    y_hi: float

    def sx(self, x: float) -> float:
        return self.left + (x - self.x_lo) / (self.x_hi - self.x_lo) * self.width

    def sy(self, y: float) -> float:
        return self.top + self.height - (y - self.y_lo) / (self.y_hi - self.y_lo) * self.height

    @property
    def box(self) -> Box:
        return self.left, self.top, self.left + self.width, self.top + self.height


def scatter(points: list[Point], x_label: str, y_label: str, lower_is_better: bool = False,
            width: int = 680, height: int = 400) -> str:
    """Quality against speed-up: the trade-off a reader has to make, in one picture."""
    if not points:
        return ""
    left, right, top, bottom = 70, 30, 30, 52
    f = Frame(left, top, width - left - right, height - top - bottom,
              *value_range([p.x for p in points] + [1.0]), *value_range([p.y for p in points]))
    out = [
        f'<svg class="chart" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        f'role="img" aria-label="{escape(y_label)} versus {escape(x_label)}">',
        f"<title>{escape(y_label)} versus {escape(x_label)}</title>",
        *_grid(f),
    ]
    out.append(text(f.left + f.width / 2, height - 10, x_label, "middle", "axis"))
    out.append(f'<text class="axis" text-anchor="middle" transform="translate(16 '
               f'{f.top + f.height / 2:.1f}) rotate(-90)">{escape(y_label)}</text>')
    front = pareto_front(points, lower_is_better)
    path = " ".join(f"{'M' if i == 0 else 'L'}{f.sx(p.x):.1f} {f.sy(p.y):.1f}"
                    for i, p in enumerate(front))
    out.append(f'<path id="pareto-front" class="pareto" d="{path}" fill="none" '
               f'stroke="{ACCENT}" stroke-width="1.5" stroke-dasharray="6 4"/>')
    out += _points(f, points, {id(p) for p in front})
    out += _legend(f.left + f.width - 190, f.top - 10)
    out.append("</svg>")
    return "\n".join(out)


def _grid(f: Frame) -> list[str]:
    """Grid lines with their tick labels, the frame, and the 1× line where it falls inside."""
    out = []
    xs, xd = ticks(f.x_lo, f.x_hi)
    ys, yd = ticks(f.y_lo, f.y_hi)
    bottom, right = f.top + f.height, f.left + f.width
    for x in xs:
        out.append(f'<line x1="{f.sx(x):.1f}" y1="{f.top}" x2="{f.sx(x):.1f}" y2="{bottom}" '
                   f'stroke="{GRID}"/>')
        out.append(text(f.sx(x), bottom + 18, fmt_tick(x, xd, "×"), "middle", "tick"))
    for y in ys:
        out.append(f'<line x1="{f.left}" y1="{f.sy(y):.1f}" x2="{right}" y2="{f.sy(y):.1f}" '
                   f'stroke="{GRID}"/>')
        out.append(text(f.left - 8, f.sy(y) + 4, fmt_tick(y, yd), "end", "tick"))
    out.append(f'<rect x="{f.left}" y="{f.top}" width="{f.width}" height="{f.height}" '
               f'fill="none" stroke="{INK}"/>')
    if f.x_lo < 1.0 < f.x_hi:
        out.append(f'<line class="ref" x1="{f.sx(1.0):.1f}" y1="{f.top}" x2="{f.sx(1.0):.1f}" '
                   f'y2="{bottom}" stroke="{BASE}" stroke-dasharray="2 3"/>')
    return out


def _points(f: Frame, points: list[Point], on_front: set[int]) -> list[str]:
    """Circles first, labels after, so no marker ever hides a label."""
    out, labels = [], []
    placed = [box_around(f.sx(p.x), f.sy(p.y), 7) for p in points]
    for p in sorted(points, key=lambda p: not p.baseline):
        cx, cy = f.sx(p.x), f.sy(p.y)
        colour = BASE if p.baseline else ACCENT if id(p) in on_front else MUTED
        label = p.label + (" (baseline)" if p.baseline else "")
        out.append(f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="{7 if p.baseline else 5}" '
                   f'fill="{colour}" stroke="#fff" stroke-width="1.5"><title>{escape(label)}: '
                   f'{p.x:.2f}×, {p.y:.4g}</title></circle>')
        lx, ly, anchor = place_label(cx, cy, label, f.box, placed)
        labels.append(text(lx, ly, label, anchor, "point-label"))
    return out + labels


def _legend(x: float, y: float) -> list[str]:
    return [
        f'<circle cx="{x}" cy="{y - 4}" r="5" fill="{BASE}"/>',
        text(x + 10, y, "baseline", cls="legend"),
        f'<line x1="{x + 80}" y1="{y - 4}" x2="{x + 104}" y2="{y - 4}" stroke="{ACCENT}" '
        'stroke-width="1.5" stroke-dasharray="6 4"/>',
        text(x + 110, y, "Pareto front", cls="legend"),
    ]



def box_around(cx: float, cy: float, r: float) -> Box:
    return cx - r, cy - r, cx + r, cy + r


def place_label(cx: float, cy: float, label: str, frame: Box, placed: list[Box],
                ) -> tuple[float, float, str]:
    """Try the four corners around a point, then step downwards; crude, but enough for the
    dozen or so candidates a run has."""
    width = 6.4 * len(label)
    options = []
    for dy in (-9.0, 17.0, 31.0, 45.0, -23.0, -37.0):
        options += [(cx + 9, cy + dy, "start"), (cx - 9, cy + dy, "end")]
    best = options[0] if cx + 9 + width <= frame[2] else options[1]
    for x, y, anchor in options:
        x0 = x if anchor == "start" else x - width
        box = (x0, y - 11, x0 + width, y + 3)
        inside = frame[0] <= box[0] and frame[1] <= box[1] and box[2] <= frame[2] and (
            box[3] <= frame[3])
        if inside and not any(overlaps(box, other) for other in placed):
            best = (x, y, anchor)
            break
    x, y, anchor = best
    x0 = x if anchor == "start" else x - width
    placed.append((x0, y - 11, x0 + width, y + 3))
    return best


def overlaps(a: Box, b: Box) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def bars(items: list[tuple[str, float, bool]], label: str, width: int = 680) -> str:
    """Speed-up per candidate; the 1× line makes slower-than-baseline candidates obvious."""
    if not items:
        return ""
    left, right, top, row = 180, 60, 12, 24
    pw = width - left - right
    height = top + row * len(items) + 34
    hi = max(1.0, *(v for _, v, _ in items)) * 1.05

    def sx(v: float) -> float:
        return left + max(v, 0.0) / hi * pw

    out = [f'<svg class="chart" viewBox="0 0 {width} {height}" width="{width}" '
           f'height="{height}" role="img" aria-label="{escape(label)}">',
           f"<title>{escape(label)}</title>"]
    for i, (name, value, is_base) in enumerate(items):
        y = top + i * row
        shown = name if len(name) <= 26 else name[:25] + "…"
        out.append(text(left - 8, y + 15, shown, "end", "bar-label"))
        colour = BASE if is_base else ACCENT
        out.append(f'<rect class="bar" x="{left}" y="{y + 4}" width="{sx(value) - left:.1f}" '
                   f'height="{row - 8}" rx="2" fill="{colour}"><title>{escape(name)}: '
                   f'{value:.2f}×</title></rect>')
        out.append(text(sx(value) + 6, y + 15, f"{value:.2f}×", cls="tick"))
    base_y = top + row * len(items)
    out.append(f'<line x1="{sx(1.0):.1f}" y1="{top}" x2="{sx(1.0):.1f}" y2="{base_y}" '
               f'stroke="{INK}" stroke-dasharray="3 3"/>')
    out.append(text(sx(1.0), base_y + 14, "1× (baseline)", "middle", "tick"))
    out.append(text(left + pw / 2, base_y + 30, label, "middle", "axis"))
    out.append("</svg>")
    return "\n".join(out)


def curve(values: list[float], label: str, width: int = 420, height: int = 160) -> str:
    """Loss per epoch: whether training converged, stalled or was cut short is a shape."""
    if len(values) < 2:
        return ""
    left, right, top, bottom = 56, 14, 12, 34
    pw, ph = width - left - right, height - top - bottom
    lo, hi = value_range(values)

    def sx(i: int) -> float:
        return left + i / (len(values) - 1) * pw

    def sy(v: float) -> float:
        return top + ph - (v - lo) / (hi - lo) * ph

    out = [f'<svg class="chart curve" viewBox="0 0 {width} {height}" width="{width}" '
           f'height="{height}" role="img" aria-label="{escape(label)}">',
           f"<title>{escape(label)}</title>",
           f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" '
           f'stroke="{INK}"/>']
    ys, yd = ticks(lo, hi, 3)
    for y in ys:
        out.append(f'<line x1="{left}" y1="{sy(y):.1f}" x2="{left + pw}" y2="{sy(y):.1f}" '
                   f'stroke="{GRID}"/>')
        out.append(text(left - 6, sy(y) + 4, fmt_tick(y, yd), "end", "tick"))
    path = " ".join(f"{'M' if i == 0 else 'L'}{sx(i):.1f} {sy(v):.1f}"
                    for i, v in enumerate(values))
    out.append(f'<path d="{path}" fill="none" stroke="{ACCENT}" stroke-width="1.8"/>')
    for i, v in enumerate(values):
        out.append(f'<circle cx="{sx(i):.1f}" cy="{sy(v):.1f}" r="2.5" fill="{ACCENT}">'
                   f"<title>epoch {i + 1}: {v:.4g}</title></circle>")
    out.append(text(left, top + ph + 16, "epoch 1", "start", "tick"))
    out.append(text(left + pw, top + ph + 16, f"epoch {len(values)}", "end", "tick"))
    out.append(text(left + pw / 2, height - 4, label, "middle", "axis"))
    out.append("</svg>")
    return "\n".join(out)
