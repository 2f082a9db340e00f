"""A single self-contained HTML report of a run directory, for every modality.

:func:`write_report` turns what the training loop and the recipes leave in a run directory into
one ``report.html``: a header with the wall time, a metrics table where every key has its unit,
meaning and what "good" is (:mod:`vqgen.metrics.glossary`), sample grids and reconstructions
(small images upscaled with nearest-neighbour so pixels stay sharp, rows and columns labelled),
audio players, text samples, training curves as inline SVG (eval series as points) and the
resolved config. Every image and audio file is embedded as a ``data:`` URI, so the one file can
be copied or mailed and still shows everything.

Input conventions (every piece optional except the directory itself)::

    run_dir/
      config.yaml | config.yml | config.json   resolved config, shown verbatim
      metrics.json        flat object of numbers and strings (keys: vqgen.metrics.glossary)
      labels.json         class names {"0": "T-shirt/top", ...} (see vqgen.pipeline)
      logs/<component>.jsonl   one JSON object per line; eval lines have "eval": true; "seconds"
      samples/**.png|.jpg|.gif|.webp|.bmp|.svg   images: grids, reconstructions, spectrograms
      samples/**.wav|.flac|.mp3|.ogg             audio, shown as players
      samples/**.txt                             text samples
      samples/**/<stem>.json   optional sidecar of the media file <stem>.<ext>:
          {"caption": "...",               shown under the media
           "rows": ["Dress", ...],         one label per grid row (top to bottom)
           "cols": ["original", ...],      one label per grid column (left to right)
           "pad": 2}                       grid padding in source pixels (torchvision make_grid)

Images whose name contains "recon" go under "Reconstructions", other images under "Samples".
An image with the same stem as an audio file (``sample_0.png`` beside ``sample_0.wav``, e.g. a
spectrogram) is shown with that audio's player instead. Missing pieces are skipped; malformed
JSON, unreadable files and non-finite values never raise: they are skipped and listed under
"Notes" in the report.
"""
from __future__ import annotations

import base64
import datetime
import io
import json
import os
import re
import urllib.parse
from pathlib import Path
from typing import Any, Iterable

from vqgen.charts import (Point, _esc, _finite, _is_number, format_number, should_log_scale,
                          svg_line_chart)
from vqgen.metrics.glossary import describe_metric, overfitting_warning
from vqgen.modeling import atomic_write_text

REPORT_NAME = "report.html"
CONFIG_NAMES = ("config.yaml", "config.yml", "config.json")
IMAGE_MIME = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg",
              ".gif": "image/gif", ".webp": "image/webp", ".bmp": "image/bmp",
              ".svg": "image/svg+xml"}
IMAGE_SUFFIXES = set(IMAGE_MIME)
AUDIO_MIME = {".wav": "audio/wav", ".flac": "audio/flac", ".mp3": "audio/mpeg", ".ogg": "audio/ogg"}
TEXT_SUFFIXES = {".txt"}
MAX_TEXT_CHARS = 20_000
MAX_EMBED_BYTES = 20 * 2**20  # a larger media file is linked by relative path instead
TARGET_WIDTH = 960            # small images are upscaled (integer factor) to at most this width
MAX_SCALE = 8
# Training-log keys plotted in their own small chart when present (loss keys are found by name).
TRAIN_EXTRA_KEYS = ("usage", "perplexity", "lr")
# Keys of eval lines that are bookkeeping, not metrics.
EVAL_SKIP_KEYS = {"step", "eval", "epoch", "seconds", "time", "timestamp"}


# --------------------------------------------------------------------------- small helpers
def format_duration(seconds: float) -> str:
    """``152.3`` -> ``"2 min 32 s"``; ``3725`` -> ``"1 h 2 min"``; ``4.2`` -> ``"4.2 s"``."""
    if not _finite(seconds) or seconds < 0:
        return str(seconds)
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, sec = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {sec} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


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


def _read_json_object(path: Path, notes: list[str], what: str) -> dict | None:
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        notes.append(f"could not read {what}: {e}")
        return None
    if not isinstance(obj, dict):
        notes.append(f"{what} holds a {type(obj).__name__}, expected an object")
        return None
    return obj


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


def _component_section(name: str, records: list[dict[str, Any]]) -> str:
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
            charts.append(_chart(curve, f"{name}: {key} (eval)", width=320, height=200,
                                 points_only=True))
    if not charts:
        return (f"<h3>{_esc(name)}</h3><p class='muted'>no plottable values in "
                f"logs/{_esc(name)}.jsonl</p>")
    return f"<h3>{_esc(name)}</h3><div class='charts'>{''.join(charts)}</div>"


def _read_logs(run_dir: Path, notes: list[str]) -> dict[str, list[dict[str, Any]]]:
    """``{component: records}`` of ``run_dir/logs/*.jsonl`` (unreadable files noted)."""
    logs_dir = run_dir / "logs"
    out: dict[str, list[dict[str, Any]]] = {}
    for path in sorted(logs_dir.glob("*.jsonl")) if logs_dir.is_dir() else []:
        try:
            records, bad = read_jsonl(path)
        except OSError as e:
            notes.append(f"could not read logs/{path.name}: {e}")
            continue
        if bad:
            shown = ", ".join(map(str, bad[:10])) + (", ..." if len(bad) > 10 else "")
            notes.append(f"logs/{path.name}: skipped {len(bad)} malformed line(s) (line {shown})")
        out[path.stem] = records
    return out


def _metrics_section(metrics: dict[str, Any]) -> str:
    rows = []
    for key, value in metrics.items():
        shown = value if isinstance(value, (str, int, float)) else json.dumps(value)
        cls = "num" if _is_number(value) else "str"
        info = describe_metric(key)
        text = format_number(shown)
        if info.unit == "s" and _finite(value) and value >= 60:
            text += f" ({format_duration(value)})"
        rows.append(f"<tr><td>{_esc(key)}</td><td class='{cls}'>{_esc(text)}</td>"
                    f"<td class='unit'>{_esc(info.unit)}</td><td>{_esc(info.meaning)}</td>"
                    f"<td class='good'>{_esc(info.good)}</td></tr>")
    return ("<h2>Metrics</h2><table class='metrics'><thead><tr><th>metric</th><th>value</th>"
            "<th>unit</th><th>what it measures</th><th>what good is</th></tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table>")


def _wall_time(metrics: dict[str, Any], logs: dict[str, list[dict[str, Any]]]) -> str:
    """"wall time 2 min 31 s (tokenizer 1 min 2 s, prior 58.0 s)" from metrics and logs."""
    per_component = {}
    for name, records in logs.items():
        seconds = [r["seconds"] for r in records if _finite(r.get("seconds"))]
        if seconds:
            per_component[name] = max(seconds)
    total = next((metrics[k] for k in ("total_seconds", "train_seconds")
                  if _finite(metrics.get(k))), sum(per_component.values()) or None)
    if total is None:
        return ""
    parts = ", ".join(f"{name} {format_duration(s)}" for name, s in per_component.items())
    return f"wall time {format_duration(total)}" + (f" ({parts})" if parts else "")


def _classes_line(run_dir: Path, notes: list[str]) -> str:
    path = run_dir / "labels.json"
    if not path.is_file():
        return ""
    labels = _read_json_object(path, notes, "labels.json")
    if not labels or all(str(k) == str(v) for k, v in labels.items()):
        return ""  # no names, or names that are just the ids (digits)
    items = " &middot; ".join(f"<b>{_esc(k)}</b> {_esc(v)}" for k, v in labels.items())
    return f"<p class='classes'>classes: {items}</p>"


# --------------------------------------------------------------------------- media
def _data_uri(mime: str, data: bytes) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _embed_image(path: Path) -> tuple[str, int | None, int | None, int]:
    """``(data URI, width, height, scale)`` of an image file, small raster images upscaled by an
    integer ``scale`` with nearest-neighbour (crisp pixels) to about ``TARGET_WIDTH``. SVGs are
    embedded as they are (size None). Raises ``OSError``/``ValueError`` for unreadable files."""
    data = path.read_bytes()
    suffix = path.suffix.lower()
    if suffix == ".svg":
        return _data_uri(IMAGE_MIME[suffix], data), None, None, 1
    from PIL import Image
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        w, h = im.size
        scale = max(1, min(MAX_SCALE, TARGET_WIDTH // max(w, 1)))
        if scale == 1:
            return _data_uri(IMAGE_MIME[suffix], data), w, h, 1
        big = im.resize((w * scale, h * scale), Image.NEAREST)
        buf = io.BytesIO()
        big.save(buf, format="PNG", optimize=True)
    return _data_uri("image/png", buf.getvalue()), w * scale, h * scale, scale


def _sidecar(path: Path, samples_dir: Path, notes: list[str]) -> dict[str, Any]:
    """The optional ``<stem>.json`` beside a media file (see the module docstring)."""
    side = path.with_suffix(".json")
    if not side.is_file():
        return {}
    meta = _read_json_object(side, notes, str(side.relative_to(samples_dir.parent)))
    if meta is None:
        return {}
    for key in ("rows", "cols"):
        if key in meta and not (isinstance(meta[key], list) and meta[key]):
            notes.append(f"{side.name}: {key!r} should be a non-empty list; ignored")
            meta.pop(key)
    if not isinstance(meta.get("pad", 2), int):
        meta.pop("pad")
    return meta


def _caption(path: Path, samples_dir: Path) -> str:
    rel = path.relative_to(samples_dir)
    words = [part.replace("_", " ").replace("-", " ") for part in rel.parent.parts]
    words.append(rel.stem.replace("_", " ").replace("-", " "))
    return " / ".join(words)


def _labelled_image(uri: str, width: int | None, height: int | None, scale: int, alt: str,
                    meta: dict[str, Any]) -> str:
    """An ``<img>`` with row labels on its left and column labels above, aligned to a
    ``make_grid`` layout (``pad`` source pixels around every tile)."""
    img = (f'<img src="{uri}" alt="{_esc(alt)}"'
           + (f' width="{width}" height="{height}"' if width else "") + ">")
    rows, cols = meta.get("rows"), meta.get("cols")
    if not width or not (rows or cols):
        return img
    pad = meta.get("pad", 2) * scale

    def track(kind: str, labels: list, length: int) -> str:
        """Label cells, one per grid row/column, each (length - pad) / n pixels long."""
        cells = "".join(f"<div>{_esc(label)}</div>" for label in labels)
        axis, side = ("rows", "top") if kind == "rows" else ("columns", "left")
        return (f"<div class='{kind}' style='grid-template-{axis}:repeat({len(labels)},"
                f"{(length - pad) / len(labels):.2f}px);padding-{side}:{pad}px'>{cells}</div>")

    col_html = (("<div></div>" if rows else "") + track("cols", cols, width)) if cols else ""
    row_html = track("rows", rows, height) if rows else ""
    columns = f"auto {width}px" if rows else f"{width}px"
    return (f"<div class='lgrid' style='grid-template-columns:{columns}'>"
            f"{col_html}{row_html}{img}</div>")


def _image_figure(path: Path, samples_dir: Path, notes: list[str]) -> str:
    meta = _sidecar(path, samples_dir, notes)
    cap = meta.get("caption") or _caption(path, samples_dir)
    try:
        uri, width, height, scale = _embed_image(path)
    except (OSError, ValueError) as e:
        notes.append(f"could not embed {path.relative_to(samples_dir.parent)}: {e}")
        return ""
    body = _labelled_image(uri, width, height, scale, cap, meta)
    return f"<figure>{body}<figcaption>{_esc(cap)}</figcaption></figure>"


def _audio_figure(path: Path, companion: Path | None, samples_dir: Path, out_dir: Path,
                  notes: list[str]) -> str:
    meta = _sidecar(path, samples_dir, notes)
    cap = meta.get("caption") or _caption(path, samples_dir)
    try:
        size = path.stat().st_size
        if size > MAX_EMBED_BYTES:
            notes.append(f"{path.name} ({size / 2**20:.0f} MiB) is too large to embed; linked")
            src = _href(path, out_dir)
        else:
            src = _data_uri(AUDIO_MIME[path.suffix.lower()], path.read_bytes())
    except OSError as e:
        notes.append(f"could not embed {path.relative_to(samples_dir.parent)}: {e}")
        return ""
    image = _image_figure(companion, samples_dir, notes) if companion else ""
    return (f"<figure class='audio'><figcaption>{_esc(cap)}</figcaption>"
            f"<audio controls preload='metadata' src=\"{src}\"></audio>{image}</figure>")


def _href(target: Path, base: Path) -> str:
    """URL of ``target`` relative to the directory ``base``, percent-encoded."""
    try:
        rel = os.path.relpath(target, base)
    except ValueError:  # another drive on Windows
        return target.resolve().as_uri()
    return urllib.parse.quote(Path(rel).as_posix())


def _grid_tile(path: Path) -> bool:
    """True for ``<prefix>0003.png`` beside a ``<prefix>grid.png`` (``GenerationPipeline.save``
    writes both): the grid already shows that image."""
    match = re.fullmatch(r"(.*?)\d{4}", path.stem)
    return bool(match) and path.with_name(f"{match.group(1)}grid{path.suffix}").is_file()


def _samples_sections(samples_dir: Path, out_dir: Path, notes: list[str]) -> str:
    files = sorted(p for p in samples_dir.rglob("*") if p.is_file())
    audio = [p for p in files if p.suffix.lower() in AUDIO_MIME]
    audio_stems = {p.with_suffix("") for p in audio}
    images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
    companions = {p.with_suffix(""): p for p in images if p.with_suffix("") in audio_stems}
    images = [p for p in images if p.with_suffix("") not in audio_stems and not _grid_tile(p)]
    recons = [p for p in images if "recon" in p.name.lower()]
    others = [p for p in images if p not in recons]
    texts = [p for p in files if p.suffix.lower() in TEXT_SUFFIXES]

    out = []
    if others:
        figs = "".join(_image_figure(p, samples_dir, notes) for p in others)
        out.append(f"<h2>Samples</h2><div class='gallery'>{figs}</div>")
    if recons:
        figs = "".join(_image_figure(p, samples_dir, notes) for p in recons)
        out.append("<h2>Reconstructions</h2><p class='muted'>held-out originals and their "
                   f"reconstructions through the tokenizer</p><div class='gallery'>{figs}</div>")
    if audio:
        items = "".join(_audio_figure(p, companions.get(p.with_suffix("")), samples_dir, out_dir,
                                      notes)
                        for p in audio)
        out.append(f"<h2>Audio</h2><div class='audio-list'>{items}</div>")
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
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1300px;padding:0 1em;color:#222}
h1{margin-bottom:.2em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
.muted{color:#666;font-size:.9em}.classes{font-size:.95em}
table.metrics{border-collapse:collapse}table.metrics td,table.metrics th{border:1px solid #ddd;
padding:.3em .7em;text-align:left;vertical-align:top}td.num{text-align:right;
font-variant-numeric:tabular-nums;white-space:nowrap}td.unit{white-space:nowrap;color:#555}
td.good{color:#555;font-size:.92em}
.charts{display:flex;flex-wrap:wrap;gap:.6em;align-items:flex-start}
svg.chart{border:1px solid #eee;font-size:11px}svg .title{font-size:13px;font-weight:600}
svg .grid{stroke:#eee}svg .tick,svg .legend,svg .axis{fill:#444}svg .empty{fill:#999}
.gallery{display:flex;flex-wrap:wrap;gap:1.5em;align-items:flex-start}figure{margin:0;
max-width:100%;overflow-x:auto}
figure img{image-rendering:pixelated;border:1px solid #ddd;display:block}
figcaption{font-size:.95em;color:#333;margin:.3em 0}
.lgrid{display:grid;column-gap:.5em}.lgrid .rows{display:grid}.lgrid .cols{display:grid}
.lgrid .rows div{display:flex;align-items:center;justify-content:flex-end;font-size:.9em;
white-space:nowrap}
.lgrid .cols div{text-align:center;font-size:.8em;overflow-wrap:anywhere;line-height:1.1;
align-self:end}
.audio-list figure{margin:.6em 0}
pre{background:#f6f6f6;padding:.8em;overflow:auto;max-height:30em;white-space:pre-wrap}
.notes{background:#fff8e1;border:1px solid #f0d78c;padding:.5em 1em}
"""


def write_report(
    run_dir: str | os.PathLike,
    out_path: str | os.PathLike | None = None,
    title: str | None = None,
) -> Path:
    """Write the self-contained HTML report of ``run_dir`` and return its path.

    Args:
        run_dir: a run directory (layout in the module docstring).
        out_path: where to write; default ``run_dir/report.html``. The file needs nothing beside
            it (media are embedded), except audio files over ``MAX_EMBED_BYTES``, linked
            relative to it.
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
    name = run_dir.resolve().name
    title = title if title is not None else f"vqgen run: {name}"
    now = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    notes: list[str] = []

    metrics = {}
    if (run_dir / "metrics.json").is_file():
        metrics = _read_json_object(run_dir / "metrics.json", notes, "metrics.json") or {}
    warning = overfitting_warning(metrics.get("prior_train_bits_per_code"),
                                  metrics.get("prior_bits_per_code"))
    if warning:
        notes.append(f"warning: {warning}")
    logs = _read_logs(run_dir, notes)
    body = [_classes_line(run_dir, notes)]
    if metrics:
        body.append(_metrics_section(metrics))
    if (run_dir / "samples").is_dir():
        body.append(_samples_sections(run_dir / "samples", out.parent, notes))
    if logs:
        body.append("<h2>Training curves</h2><p class='muted'>training lines are averages over "
                    "each log interval; eval values are points</p>")
        body.extend(_component_section(comp, records) for comp, records in logs.items())
    body.append(_config_section(run_dir, notes))
    if not any(body):
        body.append("<p class='muted'>nothing to report: no metrics, logs, samples or config "
                    "found</p>")

    notes_html = ""
    if notes:
        items = "".join(f"<li>{_esc(n)}</li>" for n in notes)
        notes_html = f"<div class='notes'><strong>Notes</strong><ul>{items}</ul></div>"
    wall = _wall_time(metrics, logs)
    page = (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>{_esc(title)}</title><style>{_CSS}</style></head><body>"
        f"<h1>{_esc(title)}</h1><p class='muted'>run directory <code>{_esc(name)}</code>"
        f"{' &middot; ' + _esc(wall) if wall else ''} &middot; generated {_esc(now)}</p>"
        f"{notes_html}{''.join(body)}</body></html>\n"
    )
    atomic_write_text(out, page)
    return out
