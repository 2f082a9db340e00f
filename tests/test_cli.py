"""CLI: help lists the commands; user mistakes exit 2 with one line and no traceback."""
from __future__ import annotations

import subprocess
import sys

import pytest

from vqgen.cli import main


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vqgen.cli", *args], capture_output=True, text=True,
                          timeout=120)


def test_help_lists_design_commands():
    out = run_cli("--help")
    assert out.returncode == 0
    for command in ("data", "train", "encode", "decode", "generate", "evaluate", "report"):
        assert command in out.stdout


@pytest.mark.parametrize("argv", [
    ["generate", "no/such/run"],
    ["report", "no/such/run"],
    ["decode", "no/such/tokenizer", "codes.safetensors", "--out", "x"],
    ["data", "prepare", "no-such-dataset"],
])
def test_user_errors_exit_2_with_one_line(argv, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("vqgen: error:")


def test_bad_labels_exit_2_subprocess(tmp_path):
    out = run_cli("generate", str(tmp_path), "--labels", "a,b")
    assert out.returncode == 2
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_report_command_writes_html(tmp_path, capsys):
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "tokenizer.jsonl").write_text('{"step": 1, "loss": 1.0}\n{"step": 2, "loss": 0.5}\n')
    assert main(["report", str(tmp_path)]) == 0
    assert (tmp_path / "report.html").is_file()


def test_train_tokenizer_prior_evaluate_generate(tmp_path, capsys):
    run, root = str(tmp_path / "run"), str(tmp_path / "data")
    common = ["--dataset", "digits", "--root", root, "--limit", "256", "--steps", "12", "--batch-size", "32"]
    assert main(["train", "tokenizer", "--run-dir", run, "--preset", "image_tokenizer_debug", *common]) == 0
    assert main(["train", "prior", run, "--prior", "pixelcnn", *common, "hidden=16", "num_layers=2"]) == 0
    assert main(["evaluate", run, "--dataset", "digits", "--root", root, "--limit", "64"]) == 0
    import json
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(metrics) >= {"test_psnr", "test_ssim", "perplexity", "usage", "prior_bits_per_code"}
    assert all(isinstance(v, float) for v in metrics.values())
    assert json.loads((tmp_path / "run" / "metrics.json").read_text()) == metrics  # saved for the report
    assert json.loads((tmp_path / "run" / "labels.json").read_text())["9"] == "9"
    assert main(["generate", run, "--n", "3", "--labels", "0,1,2", "--out", str(tmp_path / "gen")]) == 0
    assert len(list((tmp_path / "gen").glob("*.png"))) == 4
    assert main(["train", "prior", run, "--prior", "pixelcnn", *common, "hiddn=16"]) == 2
    assert "unknown PixelCNNPriorConfig key" in capsys.readouterr().err
