"""Server-rendered SVG charts for the explorer: no script, no build step, no network.

Every chart is a self-contained ``<svg>`` string; colours come from classes styled by ``static/style.css``.
Text is escaped here (labels may be user data such as category names). Each chart carries
``data-chart`` (its kind) and its marks carry classes a test can count.

>>> svg = radar(["a", "b", "c"], [("user", "user", [0.5, 1.0, 0.25])])
>>> svg.count("<polygon class=\\"series user\\""), svg.count("<circle")
(1, 3)
>>> heatmap([[0] * 24 for _ in range(7)]).count('class="cell')
168
>>> line_chart({"auc": [(0.0, 0.5), (60.0, 0.7)]}).count("<polyline")
1
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from html import escape

DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")


def _f(x: float) -> str:
    """A coordinate, short.

    >>> _f(1.0), _f(2.345678), _f(-0.0)
    ('1', '2.35', '0')
    """
    s = f"{x:.2f}".rstrip("0").rstrip(".")
    return "0" if s in ("-0", "") else s


def _svg(kind: str, width: float, height: float, body: list[str], label: str) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" class="chart {kind}" data-chart="{kind}" role="img" '
            f'aria-label="{escape(label)}" viewBox="0 0 {_f(width)} {_f(height)}" width="{_f(width)}" '
            f'height="{_f(height)}">' + "".join(body) + "</svg>")


def radar(axes: Sequence[str], series: Sequence[tuple[str, str, Sequence[float]]], size: float = 360.0,
          rings: int = 4) -> str:
    """A radar (spider) chart: one axis per name in ``axes``, one closed polygon per ``(label, css_class,
    values)`` series; values are radii in 0..1 (clamped). Each series' points are also drawn as circles
    with a tooltip; a legend follows.

    >>> svg = radar(["x", "y", "z", "w"], [("pop", "population", [0.5] * 4), ("me", "user", [2, -1, 0.5, 0.5])])
    >>> 'points="180,48 180,180 180,246 114,180"' in svg  # clamped to 0..1; the first axis points up
    True
    """
    n = len(axes)
    c, r = size / 2, size / 2 - 48
    body = []

    def point(i: int, v: float) -> tuple[float, float]:
        angle = -math.pi / 2 + 2 * math.pi * i / n
        v = min(max(v, 0.0), 1.0)
        return c + r * v * math.cos(angle), c + r * v * math.sin(angle)

    for k in range(1, rings + 1):
        ring = " ".join(f"{_f(x)},{_f(y)}" for x, y in (point(i, k / rings) for i in range(n)))
        body.append(f'<polygon class="grid" points="{ring}"/>')
    for i, name in enumerate(axes):
        x, y = point(i, 1.0)
        body.append(f'<line class="axis" x1="{_f(c)}" y1="{_f(c)}" x2="{_f(x)}" y2="{_f(y)}"/>')
        lx, ly = point(i, 1.16)
        anchor = "middle" if abs(lx - c) < 1 else ("start" if lx > c else "end")
        body.append(f'<text class="label" x="{_f(lx)}" y="{_f(ly + 4)}" text-anchor="{anchor}">{escape(name)}</text>')
    for label, cls, values in series:
        pts = [point(i, v) for i, v in enumerate(values)]
        body.append(f'<polygon class="series {escape(cls)}" data-series="{escape(label)}" '
                    f'points="{" ".join(f"{_f(x)},{_f(y)}" for x, y in pts)}"/>')
        for (x, y), name, v in zip(pts, axes, values):
            body.append(f'<circle class="point {escape(cls)}" cx="{_f(x)}" cy="{_f(y)}" r="3">'
                        f"<title>{escape(label)}: {escape(name)} {v:.2f}</title></circle>")
    legend = [f'<rect class="swatch {escape(cls)}" x="{8 + 120 * j}" y="{_f(size - 18)}" width="10" height="10"/>'
              f'<text class="legend" x="{22 + 120 * j}" y="{_f(size - 9)}">{escape(label)}</text>'
              for j, (label, cls, _) in enumerate(series)]
    return _svg("radar", size, size, body + legend, "radar chart: " + ", ".join(s[0] for s in series))


def heatmap(grid: Sequence[Sequence[int]], row_labels: Sequence[str] = DAYS, cell: float = 18.0,
            unit: str = "events") -> str:
    """Rows x columns of counts (the activity histogram: day of week x hour of day) as shaded cells, each with
    a tooltip; the darkest cell is the maximum (``level-0`` .. ``level-5`` classes, 0 = none).

    >>> svg = heatmap([[0, 2], [4, 0]], row_labels=["a", "b"])
    >>> svg.count('class="cell level-0"'), svg.count('class="cell level-5"'), "<title>b 00h: 4 events</title>" in svg
    (2, 1, True)
    """
    cols = max((len(row) for row in grid), default=0)
    top = max((max(row, default=0) for row in grid), default=0)
    left, head = 40.0, 20.0
    body = []
    for h in range(0, cols, 3):
        x = _f(left + h * cell + cell / 2)
        body.append(f'<text class="label" x="{x}" y="14" text-anchor="middle">{h:02d}</text>')
    for d, row in enumerate(grid):
        y = head + d * cell
        name = escape(row_labels[d]) if d < len(row_labels) else str(d)
        body.append(f'<text class="label" x="{_f(left - 6)}" y="{_f(y + cell * 0.7)}" text-anchor="end">{name}</text>')
        for h, v in enumerate(row):
            level = 0 if v <= 0 or top <= 0 else 1 + min(4, int(4 * v / top))
            body.append(f'<rect class="cell level-{level}" x="{_f(left + h * cell)}" y="{_f(y)}" '
                        f'width="{_f(cell - 2)}" height="{_f(cell - 2)}" data-count="{int(v)}">'
                        f"<title>{name} {h:02d}h: {int(v)} {escape(unit)}</title></rect>")
    return _svg("heatmap", left + cols * cell + 4, head + len(grid) * cell + 4, body, "heat map")


def line_chart(series: dict[str, Sequence[tuple[float, float]]], width: float = 560.0, height: float = 200.0,
               y_min: float | None = None, y_max: float | None = None, y_format: str = "{:.3g}") -> str:
    """One polyline per named series of ``(unix time, value)`` samples over a shared time axis; NaN values are
    left out (a point per finite sample, each a circle with a tooltip). ``y_min``/``y_max`` fix the value
    axis (default: the data's range). No data at all gives an empty frame saying so.

    >>> svg = line_chart({"a": [(0, 1.0), (60, float("nan")), (120, 3.0)]})
    >>> svg.count('class="point s0 a"'), 'data-points="2"' in svg
    (2, True)
    >>> "no samples yet" in line_chart({"a": []})
    True
    """
    left, right, top, bottom = 56.0, 12.0, 12.0, 40.0
    w, h = width - left - right, height - top - bottom
    finite = {k: [(t, v) for t, v in s if math.isfinite(v)] for k, s in series.items()}
    ts = [t for s in finite.values() for t, _ in s]
    vs = [v for s in finite.values() for _, v in s]
    body = [f'<rect class="frame" x="{_f(left)}" y="{_f(top)}" width="{_f(w)}" height="{_f(h)}"/>']
    if not ts:
        body.append(f'<text class="label" x="{_f(left + w / 2)}" y="{_f(top + h / 2)}" text-anchor="middle">'
                    "no samples yet</text>")
        return _svg("line", width, height, body, "line chart without samples")
    t0, t1 = min(ts), max(ts)
    lo = min(vs) if y_min is None else y_min
    hi = max(vs) if y_max is None else y_max
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    span_t = (t1 - t0) or 1.0

    def xy(t: float, v: float) -> tuple[float, float]:
        return left + w * (t - t0) / span_t, top + h * (1 - (min(max(v, lo), hi) - lo) / (hi - lo))

    for v in (lo, (lo + hi) / 2, hi):
        _, y = xy(t0, v)
        body.append(f'<line class="tick" x1="{_f(left)}" y1="{_f(y)}" x2="{_f(left + w)}" y2="{_f(y)}"/>'
                    f'<text class="label" x="{_f(left - 6)}" y="{_f(y + 4)}" text-anchor="end">'
                    f"{escape(y_format.format(v))}</text>")
    body.append(f'<text class="label" x="{_f(left)}" y="{_f(height - 20)}">{_clock(t0)}</text>'
                f'<text class="label" x="{_f(left + w)}" y="{_f(height - 20)}" text-anchor="end">{_clock(t1)}</text>')
    for j, (name, samples) in enumerate(finite.items()):
        cls = f"s{j} {escape(name)}"
        pts = [xy(t, v) for t, v in samples]
        body.append(f'<polyline class="series {cls}" data-series="{escape(name)}" data-points="{len(pts)}" '
                    f'points="{" ".join(f"{_f(x)},{_f(y)}" for x, y in pts)}"/>')
        for (x, y), (t, v) in zip(pts, samples):
            body.append(f'<circle class="point {cls}" cx="{_f(x)}" cy="{_f(y)}" r="2.5">'
                        f"<title>{escape(name)} {_clock(t)}: {escape(y_format.format(v))}</title></circle>")
        body.append(f'<rect class="swatch {cls}" x="{_f(left + 130 * j)}" y="{_f(height - 12)}" width="10" '
                    'height="10"/>'
                    f'<text class="legend" x="{_f(left + 14 + 130 * j)}" y="{_f(height - 3)}">{escape(name)}</text>')
    return _svg("line", width, height, body, "line chart: " + ", ".join(finite))


def bars(items: Sequence[tuple[str, float]], width: float = 420.0, row: float = 22.0, v_max: float | None = None,
         v_format: str = "{:.3f}") -> str:
    """Horizontal bars, one per ``(label, value)``, longest = ``v_max`` (default: the largest value).

    >>> bars([("a", 2.0), ("b", 1.0)]).count('class="bar"')
    2
    """
    top = v_max if v_max is not None else max((v for _, v in items), default=0.0)
    label_w, value_w = 150.0, 70.0
    span = width - label_w - value_w
    body = []
    for i, (label, v) in enumerate(items):
        y = i * row
        length = span * (v / top) if top > 0 and math.isfinite(v) else 0.0
        body.append(f'<text class="label" x="{_f(label_w - 6)}" y="{_f(y + row * 0.65)}" text-anchor="end">'
                    f"{escape(_short(label))}<title>{escape(label)}</title></text>"
                    f'<rect class="bar" x="{_f(label_w)}" y="{_f(y + 3)}" width="{_f(max(length, 1.0))}" '
                    f'height="{_f(row - 6)}" data-value="{v!r}"/>'
                    f'<text class="value" x="{_f(label_w + max(length, 1.0) + 4)}" y="{_f(y + row * 0.65)}">'
                    f"{escape(v_format.format(v))}</text>")
    return _svg("bars", width, max(row * len(items), row), body, "bar chart")


def _short(s: str, n: int = 22) -> str:
    return s if len(s) <= n else s[:n - 1] + "…"


def _clock(t: float) -> str:
    """A sample's time of day, UTC (``HH:MM``)."""
    return time.strftime("%H:%M", time.gmtime(t))
