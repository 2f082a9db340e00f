"""Speech recipe, prior stages, on a tiny folder of tones with a tiny (untrained) tokenizer:
encode -> windows -> voice-conditioned delay prior -> samples (WAV + spectrogram) -> sample
metrics -> report; then a re-run reuses the finished prior and reproduces the metrics."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

RATE = 16000


def make_folder(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for c, (name, f) in enumerate([("low", 180.0), ("mid", 420.0), ("high", 900.0)]):
        (root / name).mkdir(parents=True)
        for i in range(7):
            t = np.arange(int(rng.uniform(0.8, 1.4) * RATE)) / RATE
            wave = 0.3 * np.sin(2 * np.pi * f * (1 + 0.05 * rng.standard_normal()) * t)
            sf.write(root / name / f"{i}.wav", wave.astype(np.float32), RATE)
    return root


@pytest.fixture(scope="module")
def run(tmp_path_factory, load_recipe, tiny_audio_args):
    tmp = tmp_path_factory.mktemp("speech")
    argv = tiny_audio_args(tmp) + [
        f"dataset=folder:{make_folder(tmp / 'audio')}", "tokenizer_eval.stoi=false",
        "prior_data.max_clips_per_voice=5", "prior_samples.eval_per_voice=2",
        "prior_samples.report_voices=2"]
    metrics = load_recipe("speech").main(argv)
    return tmp / "runs" / "smoke", metrics, argv


def test_prior_stages_write_metrics_samples_and_report(run):
    run_dir, metrics, _ = run
    on_disk = json.loads((run_dir / "metrics.json").read_text())
    for key in ("prior_bits_per_code", "prior_train_bits_per_code", "sample_class_accuracy",
                "classifier_test_accuracy", "sample_mel_fd", "train_test_mel_fd",
                "sample_voice_fd", "train_test_voice_fd", "recon_class_accuracy"):
        assert isinstance(on_disk[key], float) and math.isfinite(on_disk[key]), key
    assert 0 <= on_disk["recon_class_accuracy"] <= 1 and "recon_key_consistency" not in on_disk
    assert 0 < on_disk["prior_bits_per_code"] < math.log2(64) * 1.5   # debug tokenizer: K = 64
    assert 0 <= on_disk["sample_class_accuracy"] <= 1
    tok_cfg = json.loads((run_dir / "tokenizer" / "config.json").read_text())["config"]
    assert tok_cfg["output_gain"] != 1.0                      # calibrated on training clips
    assert abs(on_disk["test_level_db"]) < 3, on_disk["test_level_db"]
    prior_cfg = json.loads((run_dir / "prior" / "config.json").read_text())["config"]
    assert prior_cfg["layout"] == "delay" and prior_cfg["code_shape"] == [4, 20]   # 0.4 s at 50 Hz
    assert prior_cfg["id2label"] == {"0": "high", "1": "low", "2": "mid"}
    samples = run_dir / "samples" / "prior_transformer"
    wavs = sorted(samples.glob("sample_*.wav"))
    assert len(wavs) == 2 and all(w.with_suffix(".png").is_file() for w in wavs)
    data, rate = sf.read(wavs[0])
    assert rate == RATE and len(data) == 20 * 320
    assert "high" in json.loads(wavs[0].with_suffix(".json").read_text())["caption"]
    html = (run_dir / "report.html").read_text()
    assert "sample_mel_fd" in html and "data:audio/wav;base64," in html


def test_rerun_reuses_the_prior_and_reproduces_metrics(run, load_recipe):
    run_dir, metrics, argv = run
    again = load_recipe("speech").main(argv)
    for key in ("prior_bits_per_code", "sample_class_accuracy", "sample_mel_fd"):
        assert again[key] == pytest.approx(metrics[key], rel=1e-6), key


def test_reconstruction_examples_take_classes_in_turn(load_recipe):
    spread = load_recipe("speech").spread_over_classes
    labels = [0, 0, 0, 1, 1, 2]                      # test clips ordered by class, as prepared
    assert spread(list(range(6)), labels, 3) == [0, 3, 5]
    assert spread(list(range(6)), labels, 5) == [0, 3, 5, 1, 4]
    assert spread([0, 1, 2], labels, 3) == [0, 1, 2]   # one class: its clips in order
    assert spread(list(range(6)), labels, 10) == [0, 3, 5, 1, 4, 2]
    assert spread([], labels, 2) == []
