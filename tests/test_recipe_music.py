"""Music recipe on a tiny slice: 2 chorales (1 train, 1 test piece) x 2 excerpts of 1 s x 2
timbres (one a General MIDI soundfont program when the renderer is installed, as `make venv`
does), a tiny untrained tokenizer, a few prior and classifier steps: data -> tokenizer eval ->
codes -> timbre-conditioned delay prior -> samples -> metrics (key consistency included) ->
report with audio players. Parses two chorales (a few seconds)."""
from __future__ import annotations

import importlib.util
import json
import math

import pytest
import soundfile as sf
import torch

from vqgen.data.soundfont import soundfont_available
from vqgen.pipeline import load_model

RATE = 16000
TIMBRES = ["organ", "gm:24"] if soundfont_available() else ["organ", "plucked"]

pytestmark = pytest.mark.skipif(importlib.util.find_spec("music21") is None,
                                reason="music21 is not installed (pip install music21)")


@pytest.fixture(scope="module")
def run(tmp_path_factory, load_recipe, tiny_audio_args):
    tmp = tmp_path_factory.mktemp("music")
    argv = tiny_audio_args(tmp) + [
        "dataset_options.num_pieces=2", "dataset_options.clips_per_piece=2",
        "dataset_options.clip_seconds=1.0", f"dataset_options.timbres=[{', '.join(TIMBRES)}]",
        "prior_samples.eval_per_timbre=2", "prior_data.levels=2"]
    metrics = load_recipe("music").main(argv)
    return tmp / "runs" / "smoke", metrics, argv


def test_music_recipe_writes_finite_metrics_samples_and_report(run):
    run_dir, metrics, _ = run
    on_disk = json.loads((run_dir / "metrics.json").read_text())
    assert on_disk == pytest.approx(metrics)
    for key in ("test_si_sdr", "test_mel_distance", "bitrate_kbps", "prior_bits_per_code",
                "sample_class_accuracy", "classifier_test_accuracy", "sample_mel_fd",
                "train_test_mel_fd", "sample_timbre_fd", "train_test_timbre_fd",
                "sample_key_consistency", "test_key_consistency", "recon_class_accuracy",
                "recon_key_consistency"):
        assert isinstance(on_disk[key], float) and math.isfinite(on_disk[key]), key
    for key in ("sample_key_consistency", "test_key_consistency", "sample_class_accuracy",
                "recon_class_accuracy", "recon_key_consistency"):
        assert 0.0 <= on_disk[key] <= 1.0, key
    assert on_disk["test_key_consistency"] > 0.5           # real chorales: tonal
    assert not any("stoi" in k or "voice" in k or "unseen" in k for k in on_disk)
    assert all(isinstance(v, (int, float)) and math.isfinite(v)
               for k, v in on_disk.items() if k != "device")

    prior_cfg = json.loads((run_dir / "prior" / "config.json").read_text())["config"]
    # the prior models the first 2 of the tokenizer's 4 levels (prior_data.levels=2), 0.4 s at 50 Hz
    assert prior_cfg["layout"] == "delay" and prior_cfg["code_shape"] == [2, 20]
    assert prior_cfg["id2label"] == {"0": TIMBRES[0], "1": TIMBRES[1]}              # timbres
    wavs = sorted((run_dir / "samples" / "prior_transformer").glob("sample_*.wav"))
    assert len(wavs) == 2 and all(w.with_suffix(".png").is_file() for w in wavs)
    data, rate = sf.read(wavs[0])
    assert rate == RATE and len(data) == 20 * 320
    assert "organ" in json.loads(wavs[0].with_suffix(".json").read_text())["caption"]
    assert sorted((run_dir / "samples").glob("recon_0_*_original.wav"))           # reconstructions

    html = (run_dir / "report.html").read_text()
    assert "music recipe" in html and "sample_key_consistency" in html
    assert html.count("data:audio/wav;base64,") >= 4


def test_music_key_metrics_hook(load_recipe):
    recipe = load_recipe("music")
    assert recipe.MUSIC.label == "timbre" and recipe.MUSIC.sample_metrics is recipe.key_metrics
    out = recipe.key_metrics(torch.zeros(2, 1, RATE), torch.zeros(2, 1, RATE), RATE)
    assert out == {"sample_key_consistency": 0.0, "test_key_consistency": 0.0}  # silence: 0, finite


@pytest.mark.parametrize("levels", [5, 0, 1.5])
def test_prior_levels_outside_the_tokenizer_raise(run, load_recipe, levels):
    argv = [a for a in run[2] if not a.startswith(("prior_data.levels=", "name="))]
    with pytest.raises(ValueError, match=r"prior_data.levels: expected null or an int in \[1, 4\]"):
        load_recipe("music").main(argv + [f"prior_data.levels={levels}", "name=bad-levels"])


def test_hybrid_that_cannot_be_joined_fails_before_training(tmp_path, load_recipe, tiny_audio_args):
    """hybrid.enabled needs the prior tokenizer and matching STFTs: checked before anything is
    prepared or trained (here the music prior tokenizer and the tiny codec differ in frame rate)."""
    argv = tiny_audio_args(tmp_path) + ["hybrid.enabled=true"]
    with pytest.raises(ValueError, match="hybrid.enabled: expected prior_tokenizer.enabled true"):
        load_recipe("music").main(argv)
    with pytest.raises(ValueError, match=r"expected the same \w+ in both parts, got"):
        load_recipe("music").main(argv + ["prior_tokenizer.enabled=true"])
    with pytest.raises(ValueError, match=r"magnitude_weight: expected a number in \[0, 1\], got 2"):
        load_recipe("music").main(argv + ["prior_tokenizer.enabled=true", "prior_tokenizer.overrides.n_fft=320",
                                          "prior_tokenizer.preset=audio_tokenizer_debug", "hybrid.magnitude_weight=2"])
    with pytest.raises(ValueError, match=r"expected search_candidates 0 \(greedy\) or an int in \[2, codebook_size\], got 1"):
        load_recipe("music").main(argv + ["prior_tokenizer.enabled=true", "prior_tokenizer.overrides.n_fft=320",
                                          "prior_tokenizer.preset=audio_tokenizer_debug", "hybrid.search.candidates=1"])
    with pytest.raises(ValueError, match="blend: expected 'linear' or 'envelope', got 'mean'"):
        load_recipe("music").main(argv + ["prior_tokenizer.enabled=true", "prior_tokenizer.overrides.n_fft=320",
                                          "prior_tokenizer.preset=audio_tokenizer_debug", "hybrid.blend=mean"])
    with pytest.raises(ValueError, match="search_candidates 0 .greedy. or an int in .2, codebook_size., got 1"):
        load_recipe("music").main(tiny_audio_args(tmp_path) + ["tokenizer.search.candidates=1"])
    with pytest.raises(ValueError, match=r"envelope_head.levels: expected null or a list of ints in \[1, 4\], got \[5\]"):
        load_recipe("music").main(tiny_audio_args(tmp_path) + ["envelope_head.enabled=true", "envelope_head.levels=[5]"])
    with pytest.raises(ValueError, match=r"envelope_weight a number in \[0, 1\], got 2"):
        load_recipe("music").main(tiny_audio_args(tmp_path) + ["envelope_head.enabled=true", "envelope_head.weight=2"])
    with pytest.raises(ValueError, match=r"unknown EnvelopeHeadConfig key\(s\) \['depth'\]"):
        load_recipe("music").main(tiny_audio_args(tmp_path) + ["envelope_head.enabled=true",
                                                               "envelope_head.overrides.depth=2"])
    with pytest.raises(ValueError, match="config key 'tokenizer.calibrate_level' expects true/false, got 2"):
        load_recipe("music").main(tiny_audio_args(tmp_path) + ["tokenizer.calibrate_level=2"])
    with pytest.raises(ValueError, match=r"envelope_loss_weight a finite number >= 0, got -1"):
        load_recipe("music").main(tiny_audio_args(tmp_path) + ["envelope_head.enabled=true",
                                                               "envelope_head.codec_loss_weight=-1"])
    with pytest.raises(ValueError, match=r"EnvelopeHeadConfig.stoi_weight: expected a number in \[0, inf\], got -2"):
        load_recipe("music").main(tiny_audio_args(tmp_path) + ["envelope_head.enabled=true",
                                                               "envelope_head.overrides.stoi_weight=-2"])
    with pytest.raises(ValueError, match="config 'envelope_codec_train': TrainConfig.steps must be an int >= 1, got -1"):
        load_recipe("music").main(tiny_audio_args(tmp_path) + ["envelope_codec_train.steps=-1"])   # 0: off
    assert not (tmp_path / "runs" / "smoke").exists() and not (tmp_path / "data").exists()


def test_prior_over_a_phase_free_tokenizer(tmp_path, load_recipe, tiny_audio_args):
    """prior_tokenizer.enabled: a second (phase-free) tokenizer is trained into
    run_dir/prior_tokenizer, the prior models its codes (cached apart, in prior_codes/), the
    samples and the recon ceiling decode through it, and the pipeline loads it by default.
    hybrid.enabled: its code + the codec's first 3 levels form run_dir/hybrid_tokenizer, whose
    figures take the plain keys (the codec's become codec_*)."""
    from vqgen.pipeline import GenerationPipeline
    argv = tiny_audio_args(tmp_path) + [
        "dataset_options.num_pieces=2", "dataset_options.clips_per_piece=2",
        "dataset_options.clip_seconds=1.0", "dataset_options.timbres=[organ, plucked]",
        "prior_samples.eval_per_timbre=2", "prior_tokenizer.enabled=true",
        "prior_tokenizer.preset=audio_tokenizer_debug", "prior_tokenizer.overrides.num_codebooks=1",
        "prior_tokenizer.overrides.quantizer_warmup_steps=2", "prior_tokenizer.overrides.griffin_lim_iters=4",
        "prior_tokenizer_train.steps=4", "prior_tokenizer_train.batch_size=4",
        "prior_tokenizer_train.warmup_steps=1", "prior_tokenizer_train.eval_every=0",
        "prior_tokenizer.overrides.n_fft=320", "hybrid.enabled=true",             # the codec's STFT
        "tokenizer.search.candidates=3", "hybrid.search.candidates=2",
        "envelope_head.enabled=true", "envelope_head.overrides.channels=8", "envelope_head.levels=[1, 4]",
        "envelope_head.window_seconds=0.2", "envelope_head_train.steps=4", "envelope_head_train.batch_size=4",
        "envelope_head_train.warmup_steps=1", "envelope_head_train.eval_every=2",
        "envelope_codec_train.steps=2", "envelope_codec_train.batch_size=2", "envelope_codec_train.warmup_steps=1",
        "envelope_codec_train.eval_every=2", "envelope_head.overrides.stoi_weight=1.0",
        "envelope_refine_train.steps=2", "envelope_refine_train.batch_size=2", "envelope_refine_train.warmup_steps=1",
        "envelope_head.overrides.stoi_frames=10"]
    metrics = load_recipe("music").main(argv)
    run_dir = tmp_path / "runs" / "smoke"
    assert metrics["prior_tokenizer_bitrate_kbps"] == pytest.approx(0.3)      # 1 level x 64 at 50 Hz
    assert metrics["bitrate_kbps"] == metrics["codec_bitrate_kbps"] == pytest.approx(1.2)  # 1 + 3 / 4 levels
    hybrid_eval = json.loads((run_dir / "hybrid_tokenizer_eval.json").read_text())["metrics"]
    codec_eval = json.loads((run_dir / "tokenizer_eval.json").read_text())["metrics"]
    assert metrics["test_si_sdr"] == hybrid_eval["test_si_sdr_1p2kbps"] != codec_eval["test_si_sdr_1p2kbps"]
    assert metrics["codec_test_si_sdr"] == codec_eval["test_si_sdr_1p2kbps"]
    assert metrics["test_si_sdr_0p6kbps"] == hybrid_eval["test_si_sdr_0p6kbps"]
    hybrid = load_model(run_dir / "hybrid_tokenizer")
    assert type(hybrid).__name__ == "HybridAudioTokenizer"
    assert (hybrid.config.blend, hybrid.config.envelope_bins) == ("envelope", 4)     # the recipes' default
    # the codec as scored: its encoder searches (saved in its config); so does the hybrid's, over
    # its phase levels against its own decode (hybrid.search), from the codec's greedy codes
    codec = load_model(run_dir / "tokenizer")
    assert codec.config.search_candidates == 3 and hybrid.config.search_candidates == 2
    # envelope_head: trained on the frozen codec into run_dir/envelope_head (with the STOI term),
    # then the codec and head trained together (envelope_codec_train, run_dir/envelope_codec):
    # that codec, with its head applied envelope_head.weight of the way, is the saved codec (and
    # so the hybrid's phase part)
    head = load_model(run_dir / "envelope_head")
    assert type(head).__name__ == "EnvelopeHead" and head.config.channels == 8
    assert head.config.stoi_weight == 1.0
    assert codec.envelope is not None and codec.config.envelope_weight == 0.75
    assert codec.config.envelope_loss_weight == 1.0
    # then the head trained again on that codec (envelope_refine_train, run_dir/envelope_refine)
    joint, refined = load_model(run_dir / "envelope_codec"), load_model(run_dir / "envelope_refine")
    assert all(torch.equal(v, codec.state_dict()[k]) for k, v in joint.state_dict().items()
               if not k.startswith("envelope."))
    assert all(torch.equal(v, codec.envelope.state_dict()[k]) for k, v in refined.state_dict().items())
    assert not all(torch.equal(v, joint.envelope.state_dict()[k]) for k, v in refined.state_dict().items())
    assert not all(torch.equal(v, codec.envelope.state_dict()[k]) for k, v in head.state_dict().items())
    assert hybrid.phase.config.envelope == codec.config.envelope
    logged = [json.loads(line) for line in (run_dir / "logs" / "envelope_head.jsonl").read_text().splitlines()]
    assert any("test_envelope_loss" in r for r in logged)
    logged = [json.loads(line) for line in (run_dir / "logs" / "envelope_codec.jsonl").read_text().splitlines()]
    assert any("test_si_sdr" in r for r in logged)
    clip = torch.randn(1, 1, 3200) * 0.1
    assert torch.equal(hybrid.encode(clip, search=0)[:, 1:], codec.encode(clip, search=0)[:, :3])
    assert torch.equal(hybrid.encode(clip)[:, :2], hybrid.encode(clip, search=0)[:, :2])
    assert sorted((run_dir / "samples").glob("recon_0_*_1p2kbps_hybrid.wav"))
    assert math.isfinite(metrics["prior_tokenizer_mel_distance"])
    prior_cfg = json.loads((run_dir / "prior" / "config.json").read_text())["config"]
    assert prior_cfg["code_shape"] == [1, 20]
    assert (run_dir / "prior_codes" / "train.safetensors").is_file() and not (run_dir / "codes").exists()
    assert len(list((run_dir / "logs").glob("prior_tokenizer.jsonl"))) == 1
    assert sorted((run_dir / "samples").glob("recon_0_*_prior_tokenizer.wav"))
    pipe = GenerationPipeline.from_pretrained(run_dir)
    assert pipe.tokenizer.config.phase_free and pipe.tokenizer.num_codebooks == 1
    assert not GenerationPipeline.from_pretrained(run_dir, tokenizer_dir="tokenizer").tokenizer.config.phase_free
    wave = pipe.generate(1, labels="organ", seed=0)
    assert wave.shape == (1, 1, 20 * 320) and torch.isfinite(wave).all()
