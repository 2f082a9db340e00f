"""Tests for vqgen.report: the HTML run report and its SVG chart helper."""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

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
        assert f">{value}</td>" in page or f">{value} (" in page
    # Units, meanings and what good is beside each metric; a fallback for unknown keys.
    assert ">12346 (3 h 25 min)</td><td class='unit'>s</td>" in page
    assert "<td class='unit'>dB</td><td>peak signal-to-noise ratio" in page
    assert "<td>n_codes</td><td class='num'>512</td><td class='unit'></td><td>not documented" in page
    assert "wall time 3 h 25 min" in page

    # One chart per component with a polyline, plus extra and eval charts.
    svgs = re.findall(r"<svg.*?</svg>", page, flags=re.S)
    titles = [re.search(r'aria-label="([^"]*)"', s).group(1) for s in svgs]
    assert "tokenizer: training loss" in titles and "prior: training loss" in titles
    for extra in ("usage", "perplexity", "lr", "test_psnr (eval)"):
        assert f"tokenizer: {extra}" in titles
    for svg, title in zip(svgs, titles):  # training series are lines, eval series points
        assert len(_polylines(svg)) == (0 if "(eval)" in title else 1), title
    eval_psnr = svgs[titles.index("tokenizer: test_psnr (eval)")]
    assert eval_psnr.count('class="point"') == 2
    prior_loss = svgs[titles.index("prior: training loss")]
    assert len(_polylines(prior_loss)[0]) == 10  # the NaN point is dropped
    tok_loss = svgs[titles.index("tokenizer: training loss")]
    assert "(log y)" in tok_loss  # positive, spanning 400x
    assert "nan" not in " ".join(" ".join(map(str, p)) for s in svgs for p in _polylines(s))

    # Malformed-line note names the file and line.
    assert "tokenizer.jsonl: skipped 1 malformed line(s) (line 4)" in page

    # Images embedded as data URIs (upscaled), samples before reconstructions, captions from
    # file names.
    srcs = re.findall(r'<img src="([^"]+)"', page)
    assert len(srcs) == 3 and all(src.startswith("data:image/png;base64,") for src in srcs)
    assert page.index("pixelcnn / class 3") < page.index("samples grid") < page.index(
        "Reconstructions")
    assert "<figcaption>pixelcnn / class 3</figcaption>" in page
    assert "<figcaption>samples grid</figcaption>" in page
    assert 'width="128" height="64"' in page  # 16x8 upscaled nearest-neighbour by MAX_SCALE=8

    # Audio player, escaped text sample, collapsible config.
    assert "<audio controls" in page and 'src="data:audio/wav;base64,' in page
    assert "<script>" not in page
    assert "hello &lt;script&gt;alert(1)&lt;/script&gt; &amp; bye" in page
    assert "<details><summary>config.json</summary>" in page and "codebook_size" in page


def test_write_report_custom_out_path_and_title(run_dir, tmp_path):
    out = write_report(run_dir, out_path=tmp_path / "elsewhere" / "r.html", title="A <b> title")
    page = out.read_text(encoding="utf-8")
    assert "<title>A &lt;b&gt; title</title>" in page
    assert '<img src="data:image/png;base64,' in page
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


def _pixel(uri: str, xy: tuple[int, int]) -> int:
    import base64
    import io
    img = Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))
    return img.convert("L").getpixel(xy)


def test_labelled_grid_upscaled_nearest_and_self_contained(tmp_path):
    run = tmp_path / "run"
    (run / "samples").mkdir(parents=True)
    grid = np.zeros((2 + 3 * 10, 2 + 2 * 10), dtype=np.uint8)  # 3 rows x 2 cols of 8x8 tiles
    grid[2:10, 2:10] = 255                                        # the first tile is white
    Image.fromarray(grid).save(run / "samples" / "grid.png")
    (run / "samples" / "grid.json").write_text(json.dumps(
        {"caption": "one row per class", "rows": ["Dress", "Bag", "Coat"],
         "cols": ["a", "b"], "pad": 2}))
    (run / "labels.json").write_text(json.dumps({"0": "Dress", "1": "Bag", "2": "Coat"}))
    page = write_report(run).read_text(encoding="utf-8")
    (uri,) = re.findall(r'<img src="([^"]+)"', page)
    scale = min(8, 960 // 22)  # MAX_SCALE
    assert f'width="{22 * scale}" height="{32 * scale}"' in page
    # Nearest-neighbour: hard edge between the white tile and the padding, no grey ramp.
    assert _pixel(uri, (2 * scale, 2 * scale)) == 255 and _pixel(uri, (2 * scale - 1, 2 * scale)) == 0
    rows = re.search(r"<div class='rows'[^>]*>(.*?)</div></div>", page).group(0)
    assert re.findall(r"<div>([^<]*)</div>", rows) == ["Dress", "Bag", "Coat"]
    assert f"grid-template-rows:repeat(3,{(32 - 2) * scale / 3:.2f}px)" in page
    assert "<figcaption>one row per class</figcaption>" in page
    assert "classes: <b>0</b> Dress" in page
    # Nothing refers to a file beside the report.
    assert not re.findall(r'(?:src|href)="(?!data:)', page)


def test_audio_embedded_with_its_spectrogram_and_overfit_note(tmp_path):
    run = tmp_path / "run"
    (run / "samples").mkdir(parents=True)
    sf.write(run / "samples" / "voice_3.wav", np.zeros(160, dtype=np.float32), 16000)
    Image.fromarray(np.zeros((10, 20), dtype=np.uint8)).save(run / "samples" / "voice_3.png")
    (run / "metrics.json").write_text(json.dumps(
        {"prior_bits_per_code": 2.6, "prior_train_bits_per_code": 1.0, "test_si_sdr_1.5kbps": 3.0}))
    page = write_report(run).read_text(encoding="utf-8")
    audio = re.search(r"<figure class='audio'>.*?</audio>(.*?)</figure></figure>", page, re.S)
    assert audio and "<img src=\"data:image/png" in audio.group(1)
    assert "<h2>Samples</h2>" not in page  # the spectrogram went with its audio
    assert "warning: prior overfits" in page
    assert "fit 1.5 kbit/s" in page


def test_sparse_eval_ticks_are_distinct_whole_steps():
    svg = svg_line_chart({"psnr": [(800, 21.0)]}, "one eval point", points_only=True)
    ticks = re.findall(r'class="tick">([^<]*)<', svg)
    assert len(ticks) == len(set(ticks)) and "<polyline" not in svg
    x_ticks = [t for t in ticks if t.isdigit() and abs(int(t) - 800) <= 1]
    assert x_ticks and all("." not in t for t in x_ticks)


def test_glossary_and_overfitting_warning():
    from vqgen.metrics.glossary import METRICS, describe_metric, overfitting_warning
    assert "not standard FID" in describe_metric("sample_fid").meaning
    assert describe_metric("test_psnr").unit == "dB"
    assert describe_metric("prior_seconds").unit == "s"
    assert describe_metric("zzz").meaning.startswith("not documented")
    for key in ("test_stoi", "sample_distinct_2", "bits_per_token", "sample_mel_fd"):
        assert key in METRICS
    assert "2.6x" in overfitting_warning(1.0, 2.6)
    assert overfitting_warning(3.0, 3.1) is None and overfitting_warning(None, 2.0) is None


def test_composed_audio_and_text_keys_are_explained():
    from vqgen.metrics.glossary import describe_metric
    info = describe_metric("codec_test_unseen_voice_stoi_2p5kbps")
    assert info.unit == "0-1" and "intelligibility" in info.meaning
    for part in ("2.5 kbit/s", "voices never seen in training", "complex codec alone"):
        assert part in info.meaning
    assert "1.5 kbit/s" in describe_metric("test_si_sdr_1.5kbps").meaning
    assert describe_metric("test_level_db_4kbps").unit == "dB"
    assert "level 3" in describe_metric("perplexity_level3").meaning
    assert "level 0" in describe_metric("usage_level_0").meaning
    assert "16 bits per token" in describe_metric("test_exact_match_16bpt").meaning
    for unknown in ("codec_zzz", "zzz_4kbps", "test_unseen_voice_zzz", "zzz_8bpt"):
        assert describe_metric(unknown).meaning.startswith("not documented"), unknown


def test_every_committed_metric_is_explained():
    """The report shows each metric's meaning: no key of the committed full-run evidence
    (benchmarks/results/*/metrics*.json) may be undocumented."""
    from vqgen.metrics.glossary import describe_metric
    files = sorted((Path(__file__).resolve().parents[1] / "benchmarks" / "results").glob("*/metrics*.json"))
    assert len(files) >= 10
    missing = {f"{f.parent.name}/{f.name}: {k}" for f in files for k in json.loads(f.read_text())
               if describe_metric(k).meaning.startswith("not documented")}
    assert not missing, sorted(missing)



def test_tiles_beside_a_grid_are_not_repeated(tmp_path):
    out = tmp_path / "run" / "samples" / "generated"
    out.mkdir(parents=True)
    for name in ("grid.png", "0000.png", "0001.png", "x_grid.png", "x_0000.png", "1234.png"):
        Image.fromarray(np.zeros((4, 4), dtype=np.uint8)).save(out / name)
    (out / "1234.png").rename(tmp_path / "run" / "samples" / "1234.png")  # no grid beside it
    page = write_report(tmp_path / "run").read_text(encoding="utf-8")
    captions = re.findall(r"<figcaption>([^<]*)</figcaption>", page)
    assert sorted(captions) == ["1234", "generated / grid", "generated / x grid"]
