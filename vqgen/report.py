"""HTML report of a run directory.

:func:`write_report` turns what the training loop and the recipes leave in a run directory into
one ``report.html`` that opens from disk: a metrics table, loss curves drawn as inline SVG,
reconstructions and sample grids, audio players, text samples and the resolved config. Media are
referenced by relative path from the report, so the report stays small and the run directory can
be moved as a whole.

Expected layout (every piece optional except the directory itself)::

    run_dir/
      config.yaml | config.yml | config.json   resolved config, shown verbatim
      metrics.json                             flat object of numbers and strings
      logs/<component>.jsonl                   one JSON object per line; eval lines have "eval": true
      samples/**.png|.jpg|.wav|.flac|.txt|...  images, audio and text samples

Missing pieces are skipped. Malformed JSONL lines, unreadable files and non-finite values never
raise: they are skipped, and the first two are listed under "Notes" in the report.
"""
from __future__ import annotations

import datetime
import html
import json
import math
import os
import urllib.parse
from pathlib import Path
from typing import Any, Iterable, Sequence

from vqgen.modeling import atomic_write_text

REPORT_NAME = "report.html"
CONFIG_NAMES = ("config.yaml", "config.yml", "config.json")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".gif", ".webp", ".bmp", ".svg"}
AUDIO_MIME = {".wav": "audio/wav", ".flac": "audio/flac", ".mp3": "audio/mpeg", ".ogg": "audio/ogg"}
TEXT_SUFFIXES = {".txt"}
MAX_TEXT_CHARS = 20_000
MAX_POINTS = 1_000  # per plotted series; longer series are thinned to keep the HTML small
# Training-log keys plotted in their own small chart when present (loss keys are found by name).
TRAIN_EXTRA_KEYS = ("usage", "perplexity", "lr")
# Keys of eval lines that are bookkeeping, not metrics.
EVAL_SKIP_KEYS = {"step", "eval", "epoch", "seconds", "time", "timestamp"}
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")

Point = tuple[float, float]


# --------------------------------------------------------------------------- small helpers
def _esc(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _finite(value: Any) -> bool:
    return _is_number(value) and math.isfinite(value)


def _fmt_tick(value: float) -> str:
    if value == 0:
        return "0"
    return f"{value:.3g}"


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
) -> str:
    """Draw ``{name: [(x, y), ...]}`` as one inline ``<svg>`` line chart with axes and a legend.

    Each non-empty series becomes one ``<polyline class="series">`` (plus circle markers when it
    has few points). Non-finite points are dropped, and with ``log_y`` so are points with
    ``y <= 0``; when nothing positive is left the chart falls back to a linear axis. An empty
    chart still returns a valid ``<svg>`` that says "no data". All coordinates lie inside the
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
    for t in y_ticks:
        if not (t_lo <= ty(t) <= t_hi):
            continue
        y = py(t)
        parts.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + plot_w}" y2="{y:.1f}" '
                     f'class="grid"/>')
        parts.append(f'<text x="{left - 4}" y="{y + 4:.1f}" text-anchor="end" '
                     f'class="tick">{_esc(_fmt_tick(t))}</text>')
    for t in _nice_ticks(x_lo, x_hi, 5):
        x = px(t)
        parts.append(f'<line x1="{x:.1f}" y1="{top + plot_h}" x2="{x:.1f}" '
                     f'y2="{top + plot_h + 4}" stroke="#999"/>')
        parts.append(f'<text x="{x:.1f}" y="{top + plot_h + 16}" text-anchor="middle" '
                     f'class="tick">{_esc(_fmt_tick(t))}</text>')
    parts.append(f'<text x="{left + plot_w / 2:.1f}" y="{height - 4}" text-anchor="middle" '
                 f'class="axis">{_esc(x_label)}{" (log y)" if log_y else ""}</text>')

    # Series and legend.
    for i, (name, pts) in enumerate(clean.items()):
        color = PALETTE[i % len(PALETTE)]
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


# --------------------------------------------------------------------------- reading a run
def read_jsonl(path: Path) -> tuple[list[dict[str, Any]], list[int]]:
    """Return the JSON objects of ``path`` and the 1-based numbers of lines that are not one.

    Blank lines are ignored. ``NaN``/``Infinity`` literals parse (and are filtered when plotted).
    """
    records, bad = [], []
    with open(path, encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError:
                bad.append(lineno)
                continue
            if isinstance(obj, dict):
                records.append(obj)
            else:
                bad.append(lineno)
    return records, bad


def _curves(records: list[dict[str, Any]], keys: Iterable[str]) -> dict[str, list[Point]]:
    """``{key: [(step, value), ...]}`` over ``records``; the record index stands in for a
    missing step. Keys without a single finite value are left out."""
    out: dict[str, list[Point]] = {}
    for key in keys:
        pts = []
        for i, rec in enumerate(records):
            step = rec.get("step", i)
            value = rec.get(key)
            if _finite(step) and _finite(value):
                pts.append((float(step), float(value)))
        if pts:
            out[key] = pts
    return out


def _ordered_numeric_keys(records: list[dict[str, Any]], skip: set[str]) -> list[str]:
    keys: dict[str, None] = {}
    for rec in records:
        for key, value in rec.items():
            if key not in skip and _is_number(value):
                keys.setdefault(key, None)
    return list(keys)


def _chart(series: dict[str, list[Point]], title: str, **kwargs: Any) -> str:
    log_y = should_log_scale(y for pts in series.values() for _, y in pts)
    return svg_line_chart(series, title, log_y=log_y, **kwargs)


def _component_section(name: str, path: Path, notes: list[str]) -> str:
    try:
        records, bad = read_jsonl(path)
    except OSError as e:
        notes.append(f"could not read logs/{path.name}: {e}")
        return ""
    if bad:
        shown = ", ".join(map(str, bad[:10])) + (", ..." if len(bad) > 10 else "")
        notes.append(f"logs/{path.name}: skipped {len(bad)} malformed line(s) (line {shown})")
    train = [r for r in records if r.get("eval") is not True]
    evals = [r for r in records if r.get("eval") is True]

    charts = []
    train_keys = _ordered_numeric_keys(train, {"step", "eval"})
    loss_keys = [k for k in train_keys if k == "loss" or "loss" in k.split("_")]
    loss = _curves(train, loss_keys)
    if loss:
        charts.append(_chart(loss, f"{name}: training loss"))
    for key in TRAIN_EXTRA_KEYS:
        curve = _curves(train, [key])
        if curve:
            charts.append(_chart(curve, f"{name}: {key}", width=320, height=200))
    for key in _ordered_numeric_keys(evals, EVAL_SKIP_KEYS):
        curve = _curves(evals, [key])
        if curve:
            charts.append(_chart(curve, f"{name}: {key} (eval)", width=320, height=200))
    if not charts:
        return (f"<h3>{_esc(name)}</h3><p class='muted'>no plottable values in "
                f"logs/{_esc(path.name)}</p>")
    return f"<h3>{_esc(name)}</h3><div class='charts'>{''.join(charts)}</div>"


def _metrics_section(path: Path, notes: list[str]) -> str:
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        notes.append(f"could not read metrics.json: {e}")
        return ""
    if not isinstance(metrics, dict):
        notes.append(f"metrics.json holds a {type(metrics).__name__}, expected an object")
        return ""
    rows = []
    for key, value in metrics.items():
        shown = value if isinstance(value, (str, int, float)) else json.dumps(value)
        cls = "num" if _is_number(value) else "str"
        rows.append(f"<tr><td>{_esc(key)}</td><td class='{cls}'>"
                    f"{_esc(format_number(shown))}</td></tr>")
    return ("<h2>Metrics</h2><table class='metrics'><thead><tr><th>metric</th><th>value</th>"
            f"</tr></thead><tbody>{''.join(rows)}</tbody></table>")


def _href(target: Path, base: Path) -> str:
    """URL of ``target`` relative to the directory ``base``, percent-encoded."""
    try:
        rel = os.path.relpath(target, base)
    except ValueError:  # another drive on Windows
        return target.resolve().as_uri()
    return urllib.parse.quote(Path(rel).as_posix())


def _caption(path: Path, samples_dir: Path) -> str:
    rel = path.relative_to(samples_dir)
    words = [part.replace("_", " ").replace("-", " ") for part in rel.parent.parts]
    words.append(rel.stem.replace("_", " ").replace("-", " "))
    return " / ".join(words)


def _samples_sections(samples_dir: Path, out_dir: Path, notes: list[str]) -> str:
    files = sorted(p for p in samples_dir.rglob("*") if p.is_file())
    images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
    recons = [p for p in images if "recon" in p.name.lower()]
    others = [p for p in images if p not in recons]
    audio = [p for p in files if p.suffix.lower() in AUDIO_MIME]
    texts = [p for p in files if p.suffix.lower() in TEXT_SUFFIXES]

    def figure(p: Path) -> str:
        cap = _esc(_caption(p, samples_dir))
        return (f"<figure><img src=\"{_esc(_href(p, out_dir))}\" alt=\"{cap}\" loading='lazy'>"
                f"<figcaption>{cap}</figcaption></figure>")

    out = []
    if recons:
        out.append("<h2>Reconstructions</h2><p class='muted'>originals beside reconstructions</p>"
                   f"<div class='gallery'>{''.join(map(figure, recons))}</div>")
    if others:
        out.append(f"<h2>Samples</h2><div class='gallery'>{''.join(map(figure, others))}</div>")
    if audio:
        items = []
        for p in audio:
            cap = _esc(_caption(p, samples_dir))
            items.append(f"<figure class='audio'><figcaption>{cap}</figcaption>"
                         f"<audio controls preload='none'><source "
                         f"src=\"{_esc(_href(p, out_dir))}\" "
                         f"type=\"{AUDIO_MIME[p.suffix.lower()]}\"></audio></figure>")
        out.append(f"<h2>Audio</h2><div class='audio-list'>{''.join(items)}</div>")
    if texts:
        items = []
        for p in texts:
            try:
                text = p.read_text(encoding="utf-8", errors="replace")
            except OSError as e:
                notes.append(f"could not read {p.relative_to(samples_dir.parent)}: {e}")
                continue
            more = ""
            if len(text) > MAX_TEXT_CHARS:
                more = (f"<p class='muted'>truncated: first {MAX_TEXT_CHARS:,} of "
                        f"{len(text):,} characters</p>")
                text = text[:MAX_TEXT_CHARS]
            items.append(f"<h3>{_esc(_caption(p, samples_dir))}</h3>"
                         f"<pre class='text-sample'>{_esc(text)}</pre>{more}")
        if items:
            out.append(f"<h2>Text samples</h2>{''.join(items)}")
    return "".join(out)


def _config_section(run_dir: Path, notes: list[str]) -> str:
    blocks = []
    for name in CONFIG_NAMES:
        path = run_dir / name
        if not path.is_file():
            continue
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError as e:
            notes.append(f"could not read {name}: {e}")
            continue
        if path.suffix == ".json":
            try:
                text = json.dumps(json.loads(text), indent=2, sort_keys=False)
            except ValueError:
                notes.append(f"{name} is not valid JSON; shown as is")
        blocks.append(f"<details><summary>{_esc(name)}</summary><pre>{_esc(text)}</pre></details>")
    return f"<h2>Resolved config</h2>{''.join(blocks)}" if blocks else ""


# --------------------------------------------------------------------------- the report
_CSS = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;padding:0 1em;color:#222}
h1{margin-bottom:.2em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
.muted{color:#666;font-size:.9em}
table.metrics{border-collapse:collapse}table.metrics td,table.metrics th{border:1px solid #ddd;
padding:.25em .8em;text-align:left}td.num{text-align:right;font-variant-numeric:tabular-nums}
.charts{display:flex;flex-wrap:wrap;gap:.6em;align-items:flex-start}
svg.chart{border:1px solid #eee;font-size:11px}svg .title{font-size:13px;font-weight:600}
svg .grid{stroke:#eee}svg .tick,svg .legend,svg .axis{fill:#444}svg .empty{fill:#999}
.gallery{display:flex;flex-wrap:wrap;gap:1em}figure{margin:0}
figure img{max-width:100%;min-width:128px;image-rendering:pixelated;border:1px solid #ddd}
figcaption{font-size:.9em;color:#444}.audio-list figure{margin:.4em 0}
pre{background:#f6f6f6;padding:.8em;overflow:auto;max-height:30em;white-space:pre-wrap}
.notes{background:#fff8e1;border:1px solid #f0d78c;padding:.5em 1em}
"""


def write_report(
    run_dir: str | os.PathLike,
    out_path: str | os.PathLike | None = None,
    title: str | None = None,
) -> Path:
    """Write an HTML report of ``run_dir`` and return its path.

    Args:
        run_dir: a run directory (layout in the module docstring).
        out_path: where to write; default ``run_dir/report.html``. Media links are made relative
            to this file's directory.
        title: page title; default ``"vqgen run: <run_dir name>"``.

    Raises:
        FileNotFoundError: ``run_dir`` does not exist.
        ValueError: ``run_dir`` is not a directory.
    """
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise FileNotFoundError(f"run directory {str(run_dir)!r} does not exist")
    if not run_dir.is_dir():
        raise ValueError(f"run directory {str(run_dir)!r} is not a directory")
    out = Path(out_path) if out_path is not None else run_dir / REPORT_NAME
    out_dir = out.parent
    name = run_dir.resolve().name
    title = title if title is not None else f"vqgen run: {name}"
    now = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    notes: list[str] = []

    body = []
    if (run_dir / "metrics.json").is_file():
        body.append(_metrics_section(run_dir / "metrics.json", notes))
    logs = sorted((run_dir / "logs").glob("*.jsonl")) if (run_dir / "logs").is_dir() else []
    if logs:
        body.append("<h2>Training curves</h2>")
        body.extend(_component_section(p.stem, p, notes) for p in logs)
    if (run_dir / "samples").is_dir():
        body.append(_samples_sections(run_dir / "samples", out_dir, notes))
    body.append(_config_section(run_dir, notes))
    if not any(body):
        body.append("<p class='muted'>nothing to report: no metrics, logs, samples or config "
                    "found</p>")

    notes_html = ""
    if notes:
        items = "".join(f"<li>{_esc(n)}</li>" for n in notes)
        notes_html = f"<div class='notes'><strong>Notes</strong><ul>{items}</ul></div>"
    page = (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>{_esc(title)}</title><style>{_CSS}</style></head><body>"
        f"<h1>{_esc(title)}</h1><p class='muted'>run directory <code>{_esc(name)}</code>"
        f" &middot; generated {_esc(now)}</p>{notes_html}{''.join(body)}</body></html>\n"
    )
    atomic_write_text(out, page)
    return out
