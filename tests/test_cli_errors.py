"""Every user mistake found by the adversarial trial: exactly one line on stderr and exit 2."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from vqgen.cli import main


def cli(argv: list[str]) -> int:
    try:
        return main([str(a) for a in argv])
    except SystemExit as e:          # argparse usage errors
        return e.code


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny trained run dir (tokenizer + pixelcnn prior, 2 steps each) and its data root."""
    base = tmp_path_factory.mktemp("cli")
    run_dir, root = base / "run", base / "data"
    common = ["--dataset", "digits", "--root", root, "--limit", "64", "--steps", "2", "--batch-size", "16"]
    assert cli(["train", "tokenizer", "--run-dir", run_dir, "--preset", "image_tokenizer_debug", *common]) == 0
    assert cli(["train", "prior", run_dir, "--prior", "pixelcnn", *common, "hidden=16", "num_layers=2"]) == 0
    return run_dir, root


def _png(path: Path) -> Path:
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(path)
    return path


def _copy_run(run_dir: Path, dest: Path) -> Path:
    shutil.copytree(run_dir, dest)
    return dest


# each case: (id, setup(run_dir, root, tmp) -> argv, a word the one line must contain)
def encode_text_file(r, root, t):
    (t / "a.txt").write_text("hello")
    return ["encode", r / "tokenizer", t / "a.txt", "--out", t / "c.safetensors"]


def encode_empty_file(r, root, t):
    (t / "e.png").write_bytes(b"")
    return ["encode", r / "tokenizer", t / "e.png", "--out", t / "c.safetensors"]


def encode_truncated_png(r, root, t):
    data = _png(t / "ok.png").read_bytes()
    (t / "cut.png").write_bytes(data[:len(data) // 2])
    return ["encode", r / "tokenizer", t / "cut.png", "--out", t / "c.safetensors"]


def encode_out_is_a_directory(r, root, t):
    return ["encode", r / "tokenizer", _png(t / "ok.png"), "--out", t]


def encode_with_a_prior_dir(r, root, t):
    return ["encode", r / "prior", _png(t / "ok.png"), "--out", t / "c.safetensors"]


def decode_out_is_a_file(r, root, t):
    save_file({"codes": torch.zeros(1, 4, 4, dtype=torch.long)}, str(t / "c.safetensors"))
    (t / "taken").write_text("x")
    return ["decode", r / "tokenizer", t / "c.safetensors", "--out", t / "taken"]


def decode_zero_images(r, root, t):
    save_file({"codes": torch.zeros(0, 4, 4, dtype=torch.long)}, str(t / "c.safetensors"))
    return ["decode", r / "tokenizer", t / "c.safetensors", "--out", t / "out"]


def train_run_dir_is_a_file(r, root, t):
    (t / "file").write_text("x")
    return ["train", "tokenizer", "--run-dir", t / "file", "--dataset", "digits", "--root", root]


def generate_swapped_tokenizer_and_prior(r, root, t):
    run = _copy_run(r, t / "swapped")
    (run / "tokenizer").rename(run / "tmp")
    (run / "prior").rename(run / "tokenizer")
    (run / "tmp").rename(run / "prior")
    return ["generate", run, "--n", "2", "--out", t / "gen"]


def generate_tokenizer_as_prior(r, root, t):
    run = _copy_run(r, t / "twotok")
    shutil.rmtree(run / "prior")
    shutil.copytree(run / "tokenizer", run / "prior")
    return ["generate", run, "--n", "2", "--out", t / "gen"]


def generate_out_is_a_file(r, root, t):
    (t / "taken").write_text("x")
    return ["generate", r, "--n", "2", "--out", t / "taken"]


def generate_seed_over_64_bits(r, root, t):
    return ["generate", r, "--n", "2", "--seed", str(2**70), "--out", t / "gen"]


def config_without_config_key(r, root, t):
    run = _copy_run(r, t / "nokey")
    meta = json.loads((run / "tokenizer" / "config.json").read_text())
    del meta["config"]
    (run / "tokenizer" / "config.json").write_text(json.dumps(meta))
    return ["encode", run / "tokenizer", _png(t / "ok.png"), "--out", t / "c.safetensors"]


def corrupt_weights(r, root, t):
    run = _copy_run(r, t / "corrupt")
    weights = run / "tokenizer" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-4096:] = np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    weights.write_bytes(bytes(data))
    return ["generate", run, "--n", "2", "--out", t / "gen"]


def state_without_optimizer(r, root, t):
    run = _copy_run(r, t / "noopt")
    state = torch.load(run / "train_state_prior.pt", weights_only=True)
    del state["optimizer"]
    torch.save(state, run / "train_state_prior.pt")
    return ["train", "prior", run, "--prior", "pixelcnn", "--dataset", "digits", "--root", root,
            "--limit", "64", "--steps", "4", "--batch-size", "16", "hidden=16", "num_layers=2"]


def prior_config_size_mismatch(r, root, t):
    run = _copy_run(r, t / "mismatch")
    return ["train", "prior", run, "--prior", "pixelcnn", "--dataset", "digits", "--root", root,
            "--limit", "64", "--steps", "4", "--batch-size", "16", "hidden=32", "num_layers=2"]


def train_lr_overflows_float32(r, root, t):
    return ["train", "tokenizer", "--run-dir", t / "lr", "--dataset", "digits", "--root", root,
            "--lr", "1e39", "--steps", "2"]


def train_seed_over_64_bits(r, root, t):
    return ["train", "tokenizer", "--run-dir", t / "seed", "--dataset", "digits", "--root", root,
            "--seed", str(2**70), "--steps", "2"]


def train_diverges(r, root, t):
    return ["train", "tokenizer", "--run-dir", t / "div", "--dataset", "digits", "--root", root,
            "--preset", "image_tokenizer_debug", "--limit", "64", "--batch-size", "16",
            "--lr", "1e30", "--steps", "6"]


def evaluate_negative_limit(r, root, t):
    return ["evaluate", r, "--dataset", "digits", "--root", root, "--limit", "-5"]


CASES = [
    (encode_text_file, "expected an image file"),
    (encode_empty_file, "expected an image file"),
    (encode_truncated_png, "expected an image file"),
    (encode_out_is_a_directory, "--out must be a file"),
    (encode_with_a_prior_dir, "expected a tokenizer directory"),
    (decode_out_is_a_file, "--out must be a directory"),
    (decode_zero_images, "at least one image"),
    (train_run_dir_is_a_file, "found a file"),
    (generate_swapped_tokenizer_and_prior, "expected a Tokenizer as the tokenizer"),
    (generate_tokenizer_as_prior, "expected a Prior as the prior"),
    (generate_out_is_a_file, "--out must be a directory"),
    (generate_seed_over_64_bits, "seed must be"),
    (config_without_config_key, "no 'config' mapping"),
    (corrupt_weights, "is corrupt"),
    (state_without_optimizer, "lacks ['optimizer']"),
    (prior_config_size_mismatch, "has shape"),
    (train_lr_overflows_float32, "lr must be"),
    (train_seed_over_64_bits, "seed must be"),
    (train_diverges, "became"),
    (evaluate_negative_limit, "expected an integer >= 1"),
]


@pytest.mark.parametrize("setup, word", CASES, ids=[c[0].__name__ for c in CASES])
def test_user_mistake_is_one_line_and_exit_2(setup, word, run, tmp_path, capsys):
    run_dir, root = run
    argv = setup(run_dir, root, tmp_path)
    capsys.readouterr()
    assert cli(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    err = [line for line in lines if not re.search(r"\d+/\d+ \[", line)]   # minus progress bars
    assert len(err) == 1, err
    assert "error:" in err[0] and word in err[0], err[0]


def test_api_mistakes_are_value_errors(run):
    from vqgen.pipeline import GenerationPipeline
    pipe = GenerationPipeline.from_pretrained(run[0])
    for kwargs in ({"seed": 1.5}, {"n": True}, {"batch_size": -1}, {"seed": 2**70}):
        with pytest.raises(ValueError):
            pipe.generate(**{"n": 2, **kwargs})
    with pytest.raises(ValueError, match=r"expected float images in \[0, 1\]"):
        pipe.tokenizer.encode(torch.rand(1, 1, 16, 16) * 255)


def test_cli_train_is_reproducible_and_checkpoints_short_runs(run, tmp_path):
    """Seeded before the model is built: two identical commands give identical weights; a
    10-step run checkpoints before its end (default interval steps/10)."""
    _, root = run
    common = ["--dataset", "digits", "--root", root, "--preset", "image_tokenizer_debug",
              "--limit", "64", "--batch-size", "16", "--steps", "10"]
    for name in ("a", "b"):
        assert cli(["train", "tokenizer", "--run-dir", tmp_path / name, *common]) == 0
    from vqgen.modeling import read_weights
    a, b = (read_weights(tmp_path / n / "tokenizer" / "model.safetensors") for n in ("a", "b"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    state = torch.load(tmp_path / "a" / "train_state_tokenizer.pt", weights_only=True)
    assert state["config"]["checkpoint_every"] == 1          # 10 steps: every step
    assert cli(["train", "tokenizer", "--run-dir", tmp_path / "c", *common[:-1], "3",
                "--checkpoint-every", "7"]) == 0
    state = torch.load(tmp_path / "c" / "train_state_tokenizer.pt", weights_only=True)
    assert state["config"]["checkpoint_every"] == 7
