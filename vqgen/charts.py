"""Inline SVG charts for the HTML report: no plotting library, no JavaScript.

:func:`svg_line_chart` draws ``{name: [(x, y), ...]}`` with axes, round-numbered ticks (log
scale when asked) and a legend, as one ``<svg>`` string that any browser shows.
"""
from __future__ import annotations

import html
import math
from typing import Any, Iterable, Sequence

MAX_POINTS = 1_000  # per plotted series; longer series are thinned to keep the HTML small
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")

Point = tuple[float, float]


def _esc(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _finite(value: Any) -> bool:
    return _is_number(value) and math.isfinite(value)


def format_number(value: Any) -> str:
    """Format a metric for the table: 4 significant digits, integers kept whole."""
    if not _is_number(value):
        return str(value)
    if not math.isfinite(value):
        return str(value)
    if isinstance(value, int) or (float(value).is_integer() and abs(value) < 1e15):
        return str(int(value))
    if 1e4 <= abs(value) < 1e9:  # ".4g" would switch to scientific notation here
        return f"{value:.0f}"
    return f"{value:.4g}"


def _fmt_ticks(ticks: Sequence[float]) -> list[str]:
    """Labels for ``ticks``: the fewest decimals that keep neighbouring labels distinct."""
    if not ticks:
        return []
    big = max(abs(t) for t in ticks)
    if big >= 1e6 or 0 < big < 1e-3:
        return [f"{t:.3g}" for t in ticks]
    for decimals in range(0, 7):
        labels = [f"{t:.{decimals}f}" for t in ticks]
        if len(set(labels)) == len(labels) and all(
                abs(float(lab) - t) <= 1e-9 + abs(t) * 1e-9 or decimals == 6
                for lab, t in zip(labels, ticks)):
            return ["0" if float(lab) == 0 else lab for lab in labels]
    return [f"{t:.3g}" for t in ticks]


def _nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About ``n`` round-numbered ticks inside ``[lo, hi]`` (step 1, 2, 2.5 or 5 times 10^k)."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [lo] if math.isfinite(lo) else []
    raw = (hi - lo) / max(n - 1, 1)
    mag = 10.0 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw * (1 - 1e-9))
    first, last = math.ceil(lo / step - 1e-9), math.floor(hi / step + 1e-9)
    return [k * step for k in range(first, last + 1)]


def _log_ticks(lo: float, hi: float) -> list[float]:
    """Powers of ten inside ``[lo, hi]`` (lo > 0); round linear ticks when fewer than two fit."""
    first, last = math.ceil(math.log10(lo) - 1e-9), math.floor(math.log10(hi) + 1e-9)
    decades = [10.0 ** e for e in range(first, last + 1)]
    if len(decades) > 6:  # keep a handful of labels on very wide ranges
        stride = math.ceil(len(decades) / 6)
        decades = decades[::stride]
    if len(decades) >= 2:
        return decades
    return [t for t in _nice_ticks(lo, hi, 4) if t > 0] or [lo, hi]


def _thin(points: Sequence[Point], limit: int = MAX_POINTS) -> list[Point]:
    if len(points) <= limit:
        return list(points)
    stride = math.ceil(len(points) / limit)
    thinned = list(points[::stride])
    if thinned[-1] != points[-1]:
        thinned.append(points[-1])
    return thinned


def should_log_scale(values: Iterable[float], ratio: float = 100.0) -> bool:
    """True when every finite value is positive and max/min spans at least ``ratio``."""
    finite = [v for v in values if _finite(v)]
    return bool(finite) and min(finite) > 0 and max(finite) / min(finite) >= ratio


# --------------------------------------------------------------------------- SVG chart
def svg_line_chart(
    series: dict[str, list[Point]],
    title: str,
    log_y: bool = False,
    width: int = 480,
    height: int = 260,
    x_label: str = "step",
    points_only: bool = False,
) -> str:
    """Draw ``{name: [(x, y), ...]}`` as one inline ``<svg>`` chart with axes and a legend.

    Each non-empty series becomes one ``<polyline class="series">`` (plus circle markers when it
    has few points), or with ``points_only`` (sparse series such as evals) circle markers
    ``<circle class="point">`` and no line. Non-finite points are dropped, and with ``log_y`` so
    are points with ``y <= 0``; when nothing positive is left the chart falls back to a linear
    axis. With ``x_label == "step"`` only whole-number x ticks are drawn. An empty chart still
    returns a valid ``<svg>`` that says "no data". All coordinates lie inside the
    ``0 0 width height`` viewBox.
    """
    left, right, top, bottom = 58, 12, 26, 38
    plot_w, plot_h = width - left - right, height - top - bottom
    clean = {
        name: [(float(x), float(y)) for x, y in pts if _finite(x) and _finite(y)]
        for name, pts in series.items()
    }
    if log_y and any(y > 0 for pts in clean.values() for _, y in pts):
        clean = {name: [(x, y) for x, y in pts if y > 0] for name, pts in clean.items()}
    else:
        log_y = False
    clean = {name: _thin(sorted(pts)) for name, pts in clean.items() if pts}

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" role="img" aria-label="{_esc(title)}">',
        f'<rect x="0" y="0" width="{width}" height="{height}" fill="#fff"/>',
        f'<text x="{width / 2:.1f}" y="16" text-anchor="middle" class="title">{_esc(title)}</text>',
    ]
    if not clean:
        parts.append(f'<text x="{width / 2:.1f}" y="{height / 2:.1f}" text-anchor="middle" '
                     f'class="empty">no data</text></svg>')
        return "".join(parts)

    xs = [x for pts in clean.values() for x, _ in pts]
    ys = [y for pts in clean.values() for _, y in pts]
    x_lo, x_hi = min(xs), max(xs)
    if x_hi == x_lo:
        x_lo, x_hi = x_lo - 1, x_hi + 1
    x_pad = (x_hi - x_lo) * 0.04 if points_only else 0.0  # markers off the frame
    x_lo, x_hi = x_lo - x_pad, x_hi + x_pad
    y_lo, y_hi = min(ys), max(ys)
    if log_y:
        ty = math.log10
        if y_hi == y_lo:
            y_lo, y_hi = y_lo / 2, y_hi * 2
        y_ticks = _log_ticks(y_lo, y_hi)
    else:
        ty = float
        if y_hi == y_lo:
            pad = abs(y_lo) * 0.1 or 1.0
            y_lo, y_hi = y_lo - pad, y_hi + pad
        y_ticks = _nice_ticks(y_lo, y_hi)
    t_lo, t_hi = ty(y_lo), ty(y_hi)
    margin = (t_hi - t_lo) * 0.04  # keep the curve off the frame
    t_lo, t_hi = t_lo - margin, t_hi + margin

    def px(x: float) -> float:
        return left + (x - x_lo) / (x_hi - x_lo) * plot_w

    def py(y: float) -> float:
        return top + (t_hi - ty(y)) / (t_hi - t_lo) * plot_h

    # Frame, grid and tick labels.
    parts.append(f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" '
                 f'fill="none" stroke="#999"/>')
    y_ticks = [t for t in y_ticks if t_lo <= ty(t) <= t_hi]
    x_ticks = _nice_ticks(x_lo, x_hi, 5)
    if x_label == "step":
        x_ticks = [t for t in x_ticks if float(t).is_integer()] or [round(min(xs))]
    for axis, ticks in (("y", y_ticks), ("x", x_ticks)):
        for t, label in zip(ticks, _fmt_ticks(ticks)):
            if axis == "y":  # a grid line across the plot, the label left of the frame
                y = py(t)
                line, text = (left, y, left + plot_w, y, 'class="grid"'), (left - 4, y + 4, "end")
            else:            # a short tick below the frame, the label under it
                x = px(t)
                line = (x, top + plot_h, x, top + plot_h + 4, 'stroke="#999"')
                text = (x, top + plot_h + 16, "middle")
            parts.append(f'<line x1="{line[0]:.1f}" y1="{line[1]:.1f}" x2="{line[2]:.1f}" '
                         f'y2="{line[3]:.1f}" {line[4]}/>')
            parts.append(f'<text x="{text[0]:.1f}" y="{text[1]:.1f}" text-anchor="{text[2]}" '
                         f'class="tick">{_esc(label)}</text>')
    parts.append(f'<text x="{left + plot_w / 2:.1f}" y="{height - 4}" text-anchor="middle" '
                 f'class="axis">{_esc(x_label)}{" (log y)" if log_y else ""}</text>')

    # Series and legend.
    for i, (name, pts) in enumerate(clean.items()):
        color = PALETTE[i % len(PALETTE)]
        if points_only:
            parts.extend(f'<circle class="point" data-name="{_esc(name)}" cx="{px(x):.1f}" '
                         f'cy="{py(y):.1f}" r="4" fill="{color}"><title>{_esc(name)} at '
                         f'{_esc(format_number(x))}: {_esc(format_number(y))}</title></circle>'
                         for x, y in pts)
        else:
            coords = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in pts)
            parts.append(f'<polyline class="series" data-name="{_esc(name)}" fill="none" '
                         f'stroke="{color}" stroke-width="1.5" points="{coords}"/>')
            if len(pts) <= 30:
                parts.extend(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="2.5" fill="{color}"/>'
                             for x, y in pts)
        if len(clean) > 1:
            ly = top + 12 + 14 * i
            parts.append(f'<line x1="{left + plot_w - 110}" y1="{ly - 4}" '
                         f'x2="{left + plot_w - 96}" y2="{ly - 4}" stroke="{color}" '
                         f'stroke-width="2"/>')
            parts.append(f'<text x="{left + plot_w - 92}" y="{ly}" class="legend">'
                         f'{_esc(name)}</text>')
    parts.append("</svg>")
    return "".join(parts)


