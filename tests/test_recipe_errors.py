"""Recipe mistakes: one line on stderr, exit 2, and no config.yaml left by a run that never
started."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = ["dataset=digits", "tokenizer.preset=image_tokenizer_debug", "train_limit=64", "test_limit=32",
        "tokenizer_train.steps=6", "tokenizer_train.batch_size=16", "prior_train.steps=2",
        "prior_train.batch_size=16", "classifier.steps=2"]


def recipe(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "recipes" / "image.py"), "--preset", "quick",
                           "--runs", str(tmp_path / "runs"), "--no-progress", "name=r",
                           f"data_root={tmp_path / 'data'}", *TINY, *overrides],
                          capture_output=True, text=True, timeout=300)


def error_line(out: subprocess.CompletedProcess) -> str:
    lines = [ln for ln in out.stderr.strip().splitlines() if "error" in ln or "Traceback" in ln]
    assert out.returncode == 2 and len(lines) == 1, out.stderr[-3000:]
    return lines[0]


@pytest.mark.parametrize("override, word", [
    ("tokenizer_train=5", "expects a mapping"),
    ("tokenizer_train.steps=abc", "expects a number"),
    ("tokenizer_train.steps=0", "steps must be an int >= 1"),
    ("dataset=no-such-dataset", "no-such-dataset"),
])
def test_bad_input_is_one_line_and_leaves_no_config(tmp_path, override, word):
    line = error_line(recipe(tmp_path, override))
    assert line.startswith("image.py: error:") and word in line, line
    assert not (tmp_path / "runs" / "r" / "config.yaml").exists()


def test_diverged_recipe_is_one_line(tmp_path):
    line = error_line(recipe(tmp_path, "tokenizer_train.lr=1e30"))
    assert "became" in line and "at step" in line, line
