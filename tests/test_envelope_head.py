"""The decoder-side envelope head (vqgen.tokenizers.envelope) and a codec that carries one."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from vqgen.modeling import build_config
from vqgen.tokenizers.audio import AudioTokenizer, audio_tokenizer_debug
from vqgen.tokenizers.envelope import (EnvelopeHead, EnvelopeHeadConfig, envelope_examples,
                                       log_envelope)
from vqgen.training import TrainConfig, train

RATE = 16000


def tones(n: int, seconds: float = 0.5, seed: int = 0) -> list[torch.Tensor]:
    """``n`` clips of two random partials each, at random levels (bright and dull spectra)."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(int(seconds * RATE)) / RATE
    out = []
    for _ in range(n):
        f = 200 + 5000 * torch.rand(2, generator=g)
        a = 0.05 + 0.3 * torch.rand(2, generator=g)
        out.append((a[:, None] * torch.sin(2 * math.pi * f[:, None] * t)).sum(0))
    return out


@pytest.fixture
def codec():
    torch.manual_seed(0)
    return audio_tokenizer_debug().eval()


def test_fresh_head_changes_nothing_and_round_trips(codec, tmp_path):
    """A new head's last conv is zero: the decode is the codec's own. Saved with the codec
    (config envelope + weights), loaded back it decodes the same."""
    clip = torch.stack(tones(2))[:, None]
    codes = codec.encode(clip)
    plain = codec.decode(codes)
    codec.attach_envelope(EnvelopeHead(codec.config.envelope_config()), weight=0.5)
    assert torch.equal(codec.decode(codes), plain)
    with torch.no_grad():
        codec.envelope.conv_out.bias.normal_()
    changed = codec.decode(codes)
    assert not torch.allclose(changed, plain)
    loaded = AudioTokenizer.from_pretrained(codec.save_pretrained(tmp_path / "tok"))
    assert loaded.config.envelope_weight == 0.5 and loaded.config.envelope["bins"] == 161
    assert torch.equal(loaded.decode(codes), changed)


@pytest.mark.parametrize("weight", [0.0, 0.5, 1.0])
def test_a_flat_correction_scales_the_decode_by_exp_of_half_weight_d(codec, weight):
    """A head predicting d = log 4 everywhere multiplies every magnitude, so the waveform, by
    exp(weight * d / 2) = 2 ** weight (the correction is in log power; phase is kept)."""
    clip = torch.stack(tones(1))[:, None]
    codes = codec.encode(clip)
    plain = codec.decode(codes)
    head = EnvelopeHead(codec.config.envelope_config())
    with torch.no_grad():
        head.conv_out.bias.fill_(math.log(4.0))
    codec.attach_envelope(head, weight)
    assert torch.allclose(codec.decode(codes), plain * 2.0 ** weight, atol=1e-5, rtol=1e-4)


def test_training_a_head_brings_the_decoded_envelope_towards_the_input(codec, tmp_path):
    """Trained in the one loop on the frozen codec's decodes (envelope_examples), the head lowers
    the log-envelope error on held-out clips, and the codec's own weights do not move."""
    head_cfg = codec.config.envelope_config()
    head_cfg = build_config(EnvelopeHeadConfig, {**vars(head_cfg), "channels": 32, "blocks": 1})
    data = envelope_examples(codec, tones(24), head_cfg, [2, 4], window=10)
    assert len(data) == 2 * 24 * 5                          # 0.5 s = 50 frames: 5 windows per clip
    latent, coded, target = data[0]
    assert latent.shape == (16, 10) and coded.shape == target.shape == (161, 10)
    held = envelope_examples(codec, tones(6, seed=1), head_cfg, [4], window=10)
    check = [torch.stack(t) for t in zip(*(held[i] for i in range(len(held))))]
    before = {k: v.clone() for k, v in codec.state_dict().items()}
    head = EnvelopeHead(head_cfg)
    with torch.no_grad():
        untrained = float(head.loss(*check))
    codec_error = float((check[1] - check[2]).abs().mean())           # log E(C) against log E(X)
    cfg = TrainConfig(steps=300, batch_size=16, lr=3e-3, warmup_steps=5, eval_every=0, checkpoint_every=300,
                      log_every=50, seed=0, device="cpu", progress=False)
    train(head, data, tmp_path, cfg, component="envelope_head", step_fn=lambda m, b: (m.loss(*b), {}))
    trained_head = EnvelopeHead.from_pretrained(tmp_path / "envelope_head")
    with torch.no_grad():
        trained = float(trained_head.loss(*check))
        corrected = check[1] + trained_head(check[0], check[1])
    assert trained < 0.7 * untrained
    assert float((corrected - check[2]).abs().mean()) < 0.8 * codec_error
    assert all(torch.equal(v, codec.state_dict()[k]) for k, v in before.items())


def test_the_loss_scores_mel_bands_and_bins():
    """Loss = L1 of log mel-band energies + bin_weight x L1 bin by bin: a prediction off by a
    constant c in log power costs (1 + bin_weight) c; with mel_bands 0 only the bins count."""
    cfg = EnvelopeHeadConfig(bins=41, latent_dim=4, channels=8, blocks=1, mel_bands=8, bin_weight=0.5)
    head = EnvelopeHead(cfg)
    target = torch.randn(2, 41, 6)
    latent = torch.randn(2, 4, 6)
    bins_only = EnvelopeHead(build_config(EnvelopeHeadConfig, {**vars(cfg), "mel_bands": 0}))
    with torch.no_grad():
        assert float(head.loss(latent, target + 0.3, target)) == pytest.approx(1.5 * 0.3, rel=1e-3)
        assert float(bins_only.loss(latent, target - 0.2, target)) == pytest.approx(0.5 * 0.2, rel=1e-5)
    with pytest.raises(ValueError, match="bin_weight: expected a number >= 0 .> 0 without mel_bands., got 0"):
        EnvelopeHeadConfig(mel_bands=0, bin_weight=0)


def test_log_envelope_of_a_flat_spectrum_is_flat():
    power = torch.full((1, 20, 3), 2.0)
    assert torch.allclose(log_envelope(power, 4, 1e-6), torch.full((1, 20, 3), math.log(2.0 + 1e-6)))


def test_bad_envelope_settings_raise(codec):
    values = dict(vars(codec.config))
    with pytest.raises(ValueError, match=r"unknown EnvelopeHeadConfig key\(s\) \['width'\]"):
        AudioTokenizer.from_config(values, envelope={"width": 3})
    with pytest.raises(ValueError, match=r"expected envelope bins 161, latent_dim 16 and sample_rate 16000 \(this codec.s\), got \(10, 16, 16000\)"):
        AudioTokenizer.from_config(values, envelope={"bins": 10, "mel_bands": 4})
    with pytest.raises(ValueError, match=r"envelope_weight a number in \[0, 1\], got 1.5"):
        AudioTokenizer.from_config(values, envelope_weight=1.5)
    with pytest.raises(ValueError, match="no envelope head with phase_free"):
        AudioTokenizer.from_config(values, phase_free=True, envelope={"channels": 8})
    with pytest.raises(ValueError, match="EnvelopeHeadConfig.kernel_size: expected an odd int, got 4"):
        AudioTokenizer.from_config(values, envelope={"kernel_size": 4})
    with pytest.raises(ValueError, match="attach_envelope: expected an EnvelopeHead, got Linear"):
        codec.attach_envelope(torch.nn.Linear(2, 2))
    cfg = codec.config.envelope_config()
    with pytest.raises(ValueError, match=r"expected levels, a non-empty list of ints in \[1, 4\], got \[0\]"):
        envelope_examples(codec, tones(1), cfg, [0], 10)
    with pytest.raises(ValueError, match=r"expected waves of at least 100 frames \(16000 samples\), got none"):
        envelope_examples(codec, tones(1), cfg, [4], 100)
    phase_free = audio_tokenizer_debug(phase_free=True)
    with pytest.raises(ValueError, match="expected a complex codec, got a phase_free one"):
        envelope_examples(phase_free, tones(1), cfg, [1], 10)



def test_the_output_gain_can_change_after_the_head_is_trained(codec):
    """The head measures the codec's envelope at input_gain (the output_gain it was trained at),
    so calibrating the level again scales the decode and nothing else."""
    codec.config = dataclasses.replace(codec.config, output_gain=2.0)
    cfg = codec.config.envelope_config()
    assert cfg.input_gain == 2.0
    head = EnvelopeHead(cfg)
    with torch.no_grad():
        head.conv_out.weight.normal_(std=0.05)
    codec.attach_envelope(head, weight=1.0)
    codes = codec.encode(torch.stack(tones(1))[:, None])
    at_two = codec.decode(codes)
    codec.config = dataclasses.replace(codec.config, output_gain=0.5)
    assert codec.envelope.config.input_gain == 2.0
    assert torch.allclose(codec.decode(codes), at_two / 4, atol=1e-6, rtol=1e-4)


def test_the_code_search_scores_the_decode_before_the_head():
    """The head is a post-filter outside the encoder's search (as a CELP coder's): attaching one
    changes the decode, not the searched codes."""
    torch.manual_seed(0)
    codec = audio_tokenizer_debug(frame_downsample=1).eval()
    clip = torch.stack(tones(1))[:, None]
    plain_codes = codec.encode(clip, search=4)
    plain = codec.decode(plain_codes)
    head = EnvelopeHead(codec.config.envelope_config())
    with torch.no_grad():
        head.conv_out.weight.normal_(std=0.05)
    codec.attach_envelope(head, weight=1.0)
    assert torch.equal(codec.encode(clip, search=4), plain_codes)
    assert not torch.allclose(codec.decode(plain_codes), plain)


def test_band_envelope_correlation_is_stoi_like():
    """1 for the same envelopes, whatever each band's level (STOI normalises per band and
    segment); lower for a time course that is not the target's; too few frames raise."""
    from vqgen.tokenizers.envelope import band_envelope_correlation, third_octave_bands
    bands = third_octave_bands(321, RATE)
    assert bands.shape == (321, 15) and bool((bands.sum(0) >= 1).all())
    freqs = torch.arange(321) * 25.0
    assert float(freqs[bands[:, 0].bool()].min()) >= 150 * 2 ** (-1 / 6)
    assert 4000 < float(freqs[bands[:, -1].bool()].max()) < 150 * 2 ** (14 / 3 + 1 / 6)
    g = torch.Generator().manual_seed(0)
    target = torch.randn(2, 321, 60, generator=g)
    assert float(band_envelope_correlation(target, target, bands, 38)) == pytest.approx(1.0, abs=1e-5)
    louder = target + torch.linspace(-3, 3, 321)[None, :, None]     # a fixed tilt: levels per bin
    assert float(band_envelope_correlation(louder, target, bands, 38)) > 0.97
    assert float(band_envelope_correlation(target.flip(-1), target, bands, 38)) < 0.5
    with pytest.raises(ValueError, match="expected at least 38 frames, got 20"):
        band_envelope_correlation(target[..., :20], target[..., :20], bands, 38)


def test_the_stoi_term_adds_to_the_loss_and_is_validated():
    """stoi_weight x (1 - correlation) of the envelope corrected applied_weight of the way: a
    fresh head (d = 0) scores the codec's own envelope; a perfect one scores 0."""
    from vqgen.tokenizers.envelope import band_envelope_correlation
    cfg = EnvelopeHeadConfig(bins=321, latent_dim=4, channels=8, blocks=1, mel_bands=0, bin_weight=1.0,
                             stoi_weight=2.0, applied_weight=0.5, stoi_frames=20)
    head = EnvelopeHead(cfg)
    g = torch.Generator().manual_seed(1)
    target, coded = torch.randn(2, 321, 30, generator=g), torch.randn(2, 321, 30, generator=g)
    latent = torch.randn(2, 4, 30)
    with torch.no_grad():
        corr = float(band_envelope_correlation(coded, target, head.octaves, 20))
        l1 = float((coded - target).abs().mean())
        assert float(head.loss(latent, coded, target)) == pytest.approx(l1 + 2.0 * (1 - corr), rel=1e-5)
        assert float(head.loss(latent, target, target)) == pytest.approx(0.0, abs=1e-4)
    for key, bad in (("stoi_weight", -1), ("applied_weight", 1.5), ("stoi_frames", 0)):
        with pytest.raises(ValueError, match=f"EnvelopeHeadConfig.{key}: expected"):
            build_config(EnvelopeHeadConfig, {key: bad})


def test_codec_and_head_train_together_through_the_encoder(codec):
    """envelope_loss_weight > 0: a forward decoding all levels adds that times the head's loss
    (reported as envelope_loss); its gradient reaches the encoder (straight through the
    quantizer) and the head, never the decoder. Fewer levels or weight 0: no such term."""
    clip = torch.stack(tones(2))[:, None]
    codec.attach_envelope(EnvelopeHead(codec.config.envelope_config()), 0.5)
    torch.nn.init.normal_(codec.envelope.conv_out.weight, std=0.01)   # a head that says something
    assert "envelope_loss" not in codec(clip, num_codebooks=4).metrics  # weight 0: the codec alone
    codec.config = dataclasses.replace(codec.config, envelope_loss_weight=2.0)
    assert "envelope_loss" not in codec(clip, num_codebooks=2).metrics
    joint = codec(clip, num_codebooks=4)                              # eval mode: no codebook update
    codec.config = dataclasses.replace(codec.config, envelope_loss_weight=0.0)
    alone = codec(clip, num_codebooks=4)
    head_loss = joint.metrics["envelope_loss"]
    assert float(head_loss) > 0
    assert float((joint.loss - alone.loss).detach()) == pytest.approx(2.0 * float(head_loss), rel=1e-4)
    codec.zero_grad()
    (joint.loss - alone.loss).backward()                              # the head's term alone
    norms = {part: sum(float(p.grad.abs().sum()) for n, p in codec.named_parameters()
                       if n.startswith(part + ".") and p.grad is not None)
             for part in ("encoder", "decoder", "envelope")}
    assert norms["encoder"] > 0 and norms["envelope"] > 0
    assert norms["decoder"] <= 1e-6 * norms["encoder"]
    with pytest.raises(ValueError, match="envelope_loss_weight a finite number >= 0, got -1"):
        AudioTokenizer.from_config(dict(vars(codec.config)), envelope_loss_weight=-1)
