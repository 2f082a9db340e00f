"""Recipe smoke test: the image recipe end to end on a small slice, then resume and CLI on its run."""
from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

from vqgen.cli import main as cli

ROOT = Path(__file__).resolve().parents[1]
TINY = ["dataset=digits", "tokenizer.preset=image_tokenizer_debug", "train_limit=400", "test_limit=100",
        "tokenizer_train.steps=30", "tokenizer_train.batch_size=32", "tokenizer_train.checkpoint_every=15",
        "prior_train.steps=30", "prior_train.batch_size=32", "classifier.steps=30",
        "samples_per_class=2", "num_eval_samples=40"]


def load_recipe():
    spec = importlib.util.spec_from_file_location("image_recipe", ROOT / "recipes" / "image.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    data_root = tmp_path_factory.mktemp("data")
    argv = ["--preset", "quick", "--runs", str(runs), "--no-progress", "name=smoke",
            f"data_root={data_root}", *TINY]
    metrics = load_recipe().main(argv)
    return runs / "smoke", metrics, argv


def test_recipe_writes_report_samples_and_finite_metrics(run):
    run_dir, metrics, _ = run
    on_disk = json.loads((run_dir / "metrics.json").read_text())
    assert on_disk == pytest.approx(metrics) or on_disk.keys() == metrics.keys()
    for key in ("test_psnr", "test_ssim", "perplexity", "usage", "prior_bits_per_code", "sample_fid",
                "sample_class_accuracy", "classifier_test_accuracy", "train_seconds"):
        assert isinstance(on_disk[key], float) and math.isfinite(on_disk[key]), key
    assert on_disk["device"] == "cpu"
    assert 0 < on_disk["usage"] <= 1 and on_disk["test_psnr"] > 10
    html = (run_dir / "report.html").read_text()
    assert "test_psnr" in html and "<svg" in html and "<figcaption>held-out images" in html
    assert "data:image/png;base64," in html and 'src="samples/' not in html  # self-contained
    labels = json.loads((run_dir / "labels.json").read_text())
    assert labels["3"] == "3"  # digits: the class names are the digits
    rows = json.loads((run_dir / "samples" / "samples_grid_transformer.json").read_text())["rows"]
    assert rows == [str(i) for i in range(10)]
    assert on_disk["prior_train_bits_per_code"] > 0
    assert (run_dir / "samples" / "samples_grid_transformer.png").stat().st_size > 0
    for part in ("tokenizer", "prior", "codes", "logs/tokenizer.jsonl", "logs/prior.jsonl", "config.yaml"):
        assert (run_dir / part).exists(), part


def test_rerun_resumes_without_retraining(run):
    run_dir, metrics, argv = run
    before = (run_dir / "tokenizer" / "model.safetensors").read_bytes()
    lines = (run_dir / "logs" / "tokenizer.jsonl").read_text().count("\n")
    again = load_recipe().main(argv)
    assert (run_dir / "tokenizer" / "model.safetensors").read_bytes() == before
    assert (run_dir / "logs" / "tokenizer.jsonl").read_text().count("\n") == lines
    assert again["test_psnr"] == pytest.approx(metrics["test_psnr"])


def test_unknown_override_fails_clearly(run):
    with pytest.raises(ValueError, match="unknown config key 'tokenizer_train.stepz'"):
        load_recipe().parse_args(["--preset", "quick", "tokenizer_train.stepz=3"])


def test_cli_generate_encode_decode_on_run(run, tmp_path, capsys):
    run_dir, _, _ = run
    assert cli(["generate", str(run_dir), "--n", "4", "--labels", "1,2,3,4", "--seed", "0",
                "--out", str(tmp_path / "gen")]) == 0
    pngs = sorted((tmp_path / "gen").glob("*.png"))
    assert [p.name for p in pngs] == ["0000.png", "0001.png", "0002.png", "0003.png", "grid.png"]
    assert cli(["encode", str(run_dir / "tokenizer"), str(pngs[0]), str(pngs[1]),
                "--out", str(tmp_path / "codes.safetensors")]) == 0
    assert cli(["decode", str(run_dir / "tokenizer"), str(tmp_path / "codes.safetensors"),
                "--out", str(tmp_path / "dec")]) == 0
    assert (tmp_path / "dec" / "0001.png").is_file()
    assert cli(["generate", str(run_dir), "--n", "2", "--labels", "99"]) == 2
    assert "unknown label" in capsys.readouterr().err


def test_pixelcnn_prior_reusing_the_tokenizer(run, tmp_path):
    run_dir, _, argv = run
    argv = [a for a in argv if not a.startswith(("--runs", "name="))]
    argv = [a for a in argv if a != str(run_dir.parent)]
    metrics = load_recipe().main([*argv, "--runs", str(tmp_path), "name=pcnn", "prior=pixelcnn",
                                  f"tokenizer_from={run_dir / 'tokenizer'}"])
    assert math.isfinite(metrics["prior_bits_per_code"]) and metrics["train_seconds"] > 0
    assert (tmp_path / "pcnn" / "samples" / "samples_grid_pixelcnn.png").is_file()
    tok = (tmp_path / "pcnn" / "tokenizer" / "model.safetensors").read_bytes()
    assert tok == (run_dir / "tokenizer" / "model.safetensors").read_bytes()
    assert not (tmp_path / "pcnn" / "logs" / "tokenizer.jsonl").exists()


@pytest.mark.parametrize("preset", ["quick", "full"])
def test_presets_resolve_to_buildable_models(preset):
    recipe = load_recipe()
    cfg = recipe.parse_args(["--preset", preset])
    from vqgen.tokenizers import image as image_tokenizers
    tok = getattr(image_tokenizers, cfg["tokenizer"]["preset"])(in_channels=1, **cfg["tokenizer"]["overrides"])
    assert tok.code_shape(1, 28, 28) == (7, 7) and tok.codebook_size == 512
    for name, cls in recipe.PRIORS.items():
        prior = cls.from_config(codebook_size=512, code_shape=(7, 7), num_classes=10, **cfg["prior_config"][name])
        assert prior.num_classes == 10
    assert cfg["tokenizer_train"]["steps"] == (3000 if preset == "full" else 800)
    if preset == "full":
        assert cfg["tokenizer_train"]["batch_size"] == 256
