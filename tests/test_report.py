"""Tests for vqgen.report: the HTML run report and its SVG chart helper."""
from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from vqgen.report import format_number, read_jsonl, svg_line_chart, write_report


def _write_jsonl(path, lines):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _polylines(svg: str) -> list[list[tuple[float, float]]]:
    out = []
    for pts in re.findall(r'<polyline[^>]*points="([^"]*)"', svg):
        out.append([tuple(map(float, p.split(","))) for p in pts.split()])
    return out


def _viewbox(svg: str) -> tuple[float, float]:
    _, _, w, h = map(float, re.search(r'viewBox="([^"]+)"', svg).group(1).split())
    return w, h


@pytest.fixture
def run_dir(tmp_path):
    run = tmp_path / "my_run"
    tok = [json.dumps({"step": s, "loss": 1.0 / s**2, "lr": 3e-4, "usage": 0.5 + s / 100,
                       "perplexity": 10.0 * s}) for s in range(1, 21)]
    tok.insert(3, '{"step": 4, "loss": ')  # truncated line
    tok.append(json.dumps({"step": 20, "eval": True, "test_psnr": 21.5, "split": "test"}))
    tok.append(json.dumps({"step": 10, "eval": True, "test_psnr": 19.0}))
    _write_jsonl(run / "logs" / "tokenizer.jsonl", tok)
    prior = [json.dumps({"step": s, "loss": 5.0 - 0.1 * s}) for s in range(10)]
    prior.append('{"step": 10, "loss": NaN}')  # Python json writes NaN for float("nan")
    _write_jsonl(run / "logs" / "prior.jsonl", prior)

    (run / "metrics.json").write_text(json.dumps(
        {"test_psnr": 23.456789, "usage": 0.91234, "train_seconds": 12345.67,
         "n_codes": 512, "device": "cpu"}), encoding="utf-8")
    (run / "config.json").write_text(json.dumps({"tokenizer": {"codebook_size": 512}}),
                                     encoding="utf-8")

    samples = run / "samples"
    (samples / "pixelcnn").mkdir(parents=True)
    img = Image.fromarray(np.zeros((8, 16, 3), dtype=np.uint8))
    img.save(samples / "reconstructions.png")
    img.save(samples / "samples_grid.png")
    img.save(samples / "pixelcnn" / "class 3.png")
    sf.write(samples / "speech_0.wav", np.zeros(800, dtype=np.float32), 8000)
    (samples / "text_samples.txt").write_text("hello <script>alert(1)</script> & bye",
                                              encoding="utf-8")
    return run


def test_write_report_full_run(run_dir):
    out = write_report(run_dir)
    assert out == run_dir / "report.html" and out.is_file()
    page = out.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>")
    assert "my_run" in page and "generated" in page
    assert not list(run_dir.glob(".report.html.*"))  # no temp file left behind

    # Metrics table, 4 significant digits, integers whole, strings kept.
    for name in ("test_psnr", "usage", "train_seconds", "n_codes", "device"):
        assert f"<td>{name}</td>" in page
    for value in ("23.46", "0.9123", "12346", "512", "cpu"):
        assert f">{value}</td>" in page

    # One chart per component with a polyline, plus extra and eval charts.
    svgs = re.findall(r"<svg.*?</svg>", page, flags=re.S)
    titles = [re.search(r'aria-label="([^"]*)"', s).group(1) for s in svgs]
    assert "tokenizer: training loss" in titles and "prior: training loss" in titles
    for extra in ("usage", "perplexity", "lr", "test_psnr (eval)"):
        assert f"tokenizer: {extra}" in titles
    for svg, title in zip(svgs, titles):
        assert len(_polylines(svg)) == 1, title
    prior_loss = svgs[titles.index("prior: training loss")]
    assert len(_polylines(prior_loss)[0]) == 10  # the NaN point is dropped
    tok_loss = svgs[titles.index("tokenizer: training loss")]
    assert "(log y)" in tok_loss  # positive, spanning 400x
    assert "nan" not in " ".join(" ".join(map(str, p)) for s in svgs for p in _polylines(s))

    # Malformed-line note names the file and line.
    assert "tokenizer.jsonl: skipped 1 malformed line(s) (line 4)" in page

    # Images by relative path, reconstructions first, captions from file names.
    srcs = re.findall(r'<img src="([^"]+)"', page)
    assert srcs == ["samples/reconstructions.png", "samples/pixelcnn/class%203.png",
                    "samples/samples_grid.png"]
    for src in srcs:
        assert (run_dir / src.replace("%20", " ")).is_file()
    assert "<figcaption>pixelcnn / class 3</figcaption>" in page
    assert "<figcaption>samples grid</figcaption>" in page

    # Audio player, escaped text sample, collapsible config.
    assert "<audio controls" in page and 'src="samples/speech_0.wav"' in page
    assert "<script>" not in page
    assert "hello &lt;script&gt;alert(1)&lt;/script&gt; &amp; bye" in page
    assert "<details><summary>config.json</summary>" in page and "codebook_size" in page


def test_write_report_custom_out_path_and_title(run_dir, tmp_path):
    out = write_report(run_dir, out_path=tmp_path / "elsewhere" / "r.html", title="A <b> title")
    page = out.read_text(encoding="utf-8")
    assert "<title>A &lt;b&gt; title</title>" in page
    assert '<img src="../my_run/samples/reconstructions.png"' in page
    assert not (run_dir / "report.html").exists()


def test_write_report_logs_only(tmp_path):
    run = tmp_path / "bare"
    _write_jsonl(run / "logs" / "prior.jsonl",
                 [json.dumps({"step": s, "loss": 2.0 - s / 10}) for s in range(5)])
    page = write_report(run).read_text(encoding="utf-8")
    assert "prior: training loss" in page and "<polyline" in page
    assert "Metrics" not in page and "<img" not in page and "Notes" not in page


def test_write_report_empty_and_broken_pieces(tmp_path):
    run = tmp_path / "broken"
    run.mkdir()
    (run / "metrics.json").write_text("{not json", encoding="utf-8")
    _write_jsonl(run / "logs" / "x.jsonl", ["[1, 2]", "garbage", json.dumps({"step": 1})])
    page = write_report(run).read_text(encoding="utf-8")
    assert "could not read metrics.json" in page
    assert "x.jsonl: skipped 2 malformed line(s)" in page
    assert "no plottable values" in page

    empty = tmp_path / "empty"
    empty.mkdir()
    assert "nothing to report" in write_report(empty).read_text(encoding="utf-8")


def test_write_report_bad_run_dir(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match="nope"):
        write_report(missing)
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    with pytest.raises(ValueError, match="not a directory"):
        write_report(a_file)


def test_read_jsonl_skips_bad_lines(tmp_path):
    path = tmp_path / "l.jsonl"
    path.write_text('{"a": 1}\n\n{oops\n"str"\n{"a": Infinity}\n', encoding="utf-8")
    records, bad = read_jsonl(path)
    assert [r["a"] for r in records][0] == 1 and math.isinf(records[1]["a"])
    assert bad == [3, 4]


@pytest.mark.parametrize("log_y", [False, True])
def test_svg_line_chart_points_inside_viewbox(log_y):
    series = {"train": [(0, 10.0), (50, 1.0), (100, 0.01), (150, float("nan")),
                        (float("inf"), 1.0)],
              "eval <a>": [(0, 5.0), (100, -1.0 if not log_y else 0.5)]}
    svg = svg_line_chart(series, "loss & co", log_y=log_y, width=300, height=150)
    assert svg.startswith("<svg") and svg.endswith("</svg>")
    assert "loss &amp; co" in svg and 'data-name="eval &lt;a&gt;"' in svg
    w, h = _viewbox(svg)
    lines = _polylines(svg)
    assert [len(pts) for pts in lines] == [3, 2]
    for pts in lines:
        for x, y in pts:
            assert 0 <= x <= w and 0 <= y <= h
    # A decreasing series is drawn going down the page (larger y pixel).
    first = lines[0]
    assert first[0][1] < first[1][1] < first[2][1]
    assert ("(log y)" in svg) == log_y


def test_svg_line_chart_degenerate_series():
    empty = svg_line_chart({}, "nothing")
    assert "<svg" in empty and "no data" in empty and "<polyline" not in empty
    nonfinite = svg_line_chart({"a": [(1, float("nan")), (2, float("inf"))]}, "nan", log_y=True)
    assert "no data" in nonfinite
    # Only non-positive values with log_y: falls back to a linear axis.
    negative = svg_line_chart({"a": [(0, -1.0), (1, -2.0)]}, "neg", log_y=True)
    assert "(log y)" not in negative and len(_polylines(negative)) == 1
    # A single point and a flat line still land inside the viewbox.
    for series in ({"a": [(3, 2.0)]}, {"a": [(0, 1.0), (1, 1.0)]}):
        svg = svg_line_chart(series, "flat", log_y=True)
        w, h = _viewbox(svg)
        for x, y in _polylines(svg)[0]:
            assert 0 <= x <= w and 0 <= y <= h


def test_format_number():
    assert format_number(0.123456) == "0.1235"
    assert format_number(3) == "3" and format_number(2.0) == "2"
    assert format_number(1.5e-7) == "1.5e-07"
    assert format_number(123456.7) == "123457"
    assert format_number("cuda") == "cuda"
