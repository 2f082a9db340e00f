"""HybridAudioTokenizer: a phase-free codec's magnitude level + a complex codec's levels."""
import math

import pytest
import torch

from vqgen.losses import stacked_magnitude
from vqgen.pipeline import load_model
from vqgen.tokenizers.audio import audio_tokenizer_debug
from vqgen.tokenizers.hybrid_audio import HybridAudioTokenizer, HybridAudioTokenizerConfig


def parts(seed: int = 0, **phase_overrides):
    torch.manual_seed(seed)
    magnitude = audio_tokenizer_debug(phase_free=True, num_codebooks=1, griffin_lim_iters=4).eval()
    phase = audio_tokenizer_debug(**phase_overrides).eval()
    return magnitude, phase


def wave(n: int = 2, seconds: float = 0.5, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(int(16000 * seconds)) / 16000
    tone = torch.sin(2 * math.pi * 220 * t) * 0.3
    return (tone + 0.05 * torch.randn(n, 1, len(t), generator=g)).clamp(-1, 1)


def test_codes_bitrate_and_levels():
    magnitude, phase = parts()
    hybrid = HybridAudioTokenizer.from_parts(magnitude, phase)
    x = wave(seconds=0.37)
    codes = hybrid.encode(x)
    frames = -(-x.shape[-1] // 320)
    assert hybrid.num_codebooks == 4 and codes.shape == (2, 4, frames)          # 1 + (4 - 1) levels
    assert torch.equal(codes[:, :1], magnitude.encode(x))                        # level 0: the magnitude code
    assert torch.equal(codes[:, 1:], phase.encode(x, num_codebooks=3))           # then the codec's first 3
    assert torch.equal(hybrid.encode(x, num_codebooks=2), codes[:, :2])
    assert hybrid.bitrate() == pytest.approx(phase.bitrate()) == pytest.approx(4 * phase.bitrate(1))
    assert hybrid.bitrate(1) == pytest.approx(magnitude.bitrate())
    assert hybrid.decode(codes, length=x.shape[-1]).shape == x.shape
    assert hybrid.code_shape(x.shape[-1]) == (4, frames)
    with pytest.raises(ValueError, match=r"num_codebooks must be an int in \[1, 4\]"):
        hybrid.encode(x, num_codebooks=5)


def test_decode_composes_the_parts():
    """One level: the magnitude codec's own decode. More: the phase codec's wave, re-analysed,
    with a blend of magnitudes; weight 0 gives back the phase codec's wave (a consistent
    spectrum), weight 1 puts the magnitude codec's magnitudes on every bin before the overlap-add."""
    magnitude, phase = parts()
    x = wave()
    codes = HybridAudioTokenizer.from_parts(magnitude, phase).encode(x)
    t = x.shape[-1]
    only = HybridAudioTokenizer.from_parts(magnitude, phase).decode(codes[:, :1], length=t)
    assert torch.allclose(only, magnitude.decode(codes[:, :1], length=t))
    codec_wave = phase.decode(codes[:, 1:], length=t)
    zero = HybridAudioTokenizer.from_parts(magnitude, phase, magnitude_weight=0.0).decode(codes, length=t)
    assert torch.allclose(zero, codec_wave, atol=1e-4)
    # a level-calibrated phase codec (output_gain) enters the blend at its calibrated level
    loud = audio_tokenizer_debug(output_gain=3.0).eval()
    loud.load_state_dict(phase.state_dict())
    zero_loud = HybridAudioTokenizer.from_parts(magnitude, loud, magnitude_weight=0.0).decode(codes, length=t)
    assert torch.allclose(zero_loud, 3.0 * codec_wave, atol=3e-4)
    assert not torch.allclose(HybridAudioTokenizer.from_parts(magnitude, loud).decode(codes),
                              HybridAudioTokenizer.from_parts(magnitude, phase).decode(codes), atol=1e-3)
    one = HybridAudioTokenizer.from_parts(magnitude, phase, magnitude_weight=1.0).decode(codes)
    # compare in the STFT domain, where the magnitudes were set (overlap-add of an inconsistent
    # spectrum moves them somewhat, so: closer to the magnitude codec's than the phase codec's)
    with torch.no_grad():
        want = magnitude.decoded_magnitudes(codes[:, :1].transpose(1, 2))
        got = stacked_magnitude(phase.spectral(one[:, 0]), 1e-12)
        own = stacked_magnitude(phase.spectral(phase.decode(codes[:, 1:])[:, 0]), 1e-12)
    assert (got - want).abs().mean() < 0.8 * (own - want).abs().mean()
    # another magnitude code changes the output only through the magnitudes
    other = codes.clone()
    other[:, 0] = (other[:, 0] + 7) % 64
    assert not torch.allclose(HybridAudioTokenizer.from_parts(magnitude, phase).decode(other),
                              HybridAudioTokenizer.from_parts(magnitude, phase).decode(codes))


def test_envelope_blend():
    """blend="envelope": the phase codec's magnitudes times the ratio of the two smoothed power
    spectra to the power w. Weight 0 gives back the phase codec's wave; 0 bins and weight 1 put
    the magnitude code's magnitudes on every bin (as the linear blend at weight 1 does); with
    smoothing, the output's envelope follows the magnitude code while its fine structure stays
    the phase codec's."""
    magnitude, phase = parts()
    x = wave()
    codes = HybridAudioTokenizer.from_parts(magnitude, phase).encode(x)
    t = x.shape[-1]

    def decode(**kw):
        return HybridAudioTokenizer.from_parts(magnitude, phase, blend="envelope", **kw).decode(codes, length=t)

    assert torch.allclose(decode(magnitude_weight=0.0), phase.decode(codes[:, 1:], length=t), atol=1e-4)
    linear_one = HybridAudioTokenizer.from_parts(magnitude, phase, magnitude_weight=1.0).decode(codes, length=t)
    assert torch.allclose(decode(magnitude_weight=1.0, envelope_bins=0), linear_one, atol=1e-4)
    smooth = decode(magnitude_weight=1.0, envelope_bins=3)
    assert not torch.allclose(smooth, linear_one, atol=1e-3)
    from vqgen.tokenizers.envelope import smooth_bins as _smooth_bins
    with torch.no_grad():
        power = 2.0 / phase.config.power
        want = _smooth_bins(magnitude.decoded_magnitudes(codes[:, :1].transpose(1, 2)).pow(power), 3)
        got = _smooth_bins(stacked_magnitude(phase.spectral(smooth[:, 0]), 1e-12).pow(power), 3)
        own = _smooth_bins(stacked_magnitude(phase.spectral(phase.decode(codes[:, 1:])[:, 0]), 1e-12).pow(power), 3)
    assert (got.log() - want.log()).abs().mean() < 0.8 * (own.log() - want.log()).abs().mean()
    assert torch.allclose(_smooth_bins(torch.ones(1, 9, 2), 3), torch.ones(1, 9, 2))   # a flat spectrum stays
    spike = torch.zeros(1, 9, 1)
    spike[0, 4] = 1.0
    assert torch.allclose(_smooth_bins(spike, 1)[0, 3:6, 0], torch.tensor([0.25, 0.5, 0.25]))


def test_save_load_round_trip_and_files(tmp_path):
    magnitude, phase = parts()
    hybrid = HybridAudioTokenizer.from_parts(magnitude, phase, phase_levels=2, magnitude_weight=0.5)
    loaded = load_model(hybrid.save_pretrained(tmp_path / "hybrid")).eval()
    assert isinstance(loaded, HybridAudioTokenizer) and loaded.num_codebooks == 3
    assert loaded.config.magnitude_weight == 0.5 and loaded.config.blend == "linear"
    env = load_model(HybridAudioTokenizer.from_parts(magnitude, phase, blend="envelope", envelope_bins=2)
                     .save_pretrained(tmp_path / "env")).eval()
    assert (env.config.blend, env.config.envelope_bins) == ("envelope", 2)
    x = wave(n=1)
    codes = hybrid.encode(x)
    assert torch.equal(loaded.encode(x), codes)
    assert torch.allclose(loaded.decode(codes), hybrid.decode(codes))
    path = loaded.decode_to_file(codes, tmp_path / "out.wav", length=x.shape[-1])
    assert torch.equal(loaded.encode_file(path)[:, :1], loaded.encode(loaded.decode(codes, length=x.shape[-1]))[:, :1])


def test_long_input_is_decoded_in_chunks():
    magnitude, phase = parts(chunk_seconds=0.6, overlap_seconds=0.1)
    hybrid = HybridAudioTokenizer.from_parts(magnitude, phase)
    x = wave(n=1, seconds=2.0)
    codes = hybrid.encode(x)
    assert len(hybrid.phase._chunks(codes.shape[-1])) > 1
    out = hybrid.decode(codes, length=x.shape[-1])
    assert out.shape == x.shape and torch.isfinite(out).all()
    whole = HybridAudioTokenizer.from_parts(magnitude, audio_tokenizer_debug()).phase  # same weights, one chunk
    whole.load_state_dict(phase.state_dict())
    one_chunk = HybridAudioTokenizer.from_parts(magnitude, whole.eval()).decode(codes, length=x.shape[-1])
    # the centres of the chunks match the whole decode (only the crossfades differ)
    assert torch.allclose(out[..., 500:4000], one_chunk[..., 500:4000], atol=1e-4)
    assert not torch.allclose(out, one_chunk, atol=1e-4)                       # the seams do differ


def test_bad_configs_and_inputs_raise():
    magnitude, phase = parts()
    with pytest.raises(ValueError, match="expected the same n_fft in both parts"):
        HybridAudioTokenizer.from_parts(audio_tokenizer_debug(phase_free=True, num_codebooks=1, n_fft=640), phase)
    with pytest.raises(ValueError, match="expected a phase_free magnitude tokenizer"):
        HybridAudioTokenizer.from_parts(phase, phase)
    with pytest.raises(ValueError, match=r"phase_levels: expected an int in \[1, 4\], got 5"):
        HybridAudioTokenizer.from_parts(magnitude, phase, phase_levels=5)
    with pytest.raises(ValueError, match=r"magnitude_weight: expected a number in \[0, 1\], got 1.5"):
        HybridAudioTokenizer.from_parts(magnitude, phase, magnitude_weight=1.5)
    with pytest.raises(ValueError, match="blend: expected 'linear' or 'envelope', got 'mean'"):
        HybridAudioTokenizer.from_parts(magnitude, phase, blend="mean")
    with pytest.raises(ValueError, match="envelope_bins: expected an int >= 0, got -1"):
        HybridAudioTokenizer.from_parts(magnitude, phase, envelope_bins=-1)
    with pytest.raises(ValueError, match="expected an AudioTokenizer as phase"):
        HybridAudioTokenizer.from_parts(magnitude, "codec")
    with pytest.raises(ValueError, match="expected the fields of an AudioTokenizerConfig"):
        HybridAudioTokenizerConfig(magnitude={}, phase=dict(vars(phase.config)))
    hybrid = HybridAudioTokenizer.from_parts(magnitude, phase)
    with pytest.raises(ValueError, match="expected mono audio"):
        hybrid.encode(torch.zeros(1, 2, 1600))
    with pytest.raises(ValueError, match=r"codes out of range: expected values in \[0, 64\)"):
        hybrid.decode(torch.full((1, 4, 5), 64))
    with pytest.raises(ValueError, match=r"expected codes \(B, n, frames\) with 1 <= n <= 4"):
        hybrid.decode(torch.zeros(1, 5, 5, dtype=torch.long))
    with pytest.raises(NotImplementedError, match="from_parts"):
        hybrid(wave())


@pytest.fixture(scope="module")
def trained_hybrid():
    """Debug phase and phase-free codecs trained a little (80 steps each; the phase codec's
    first 40 without the quantizer) on harmonic tones; held-out tones."""
    def harmonic(t: int, batch: int, seed: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        time = torch.arange(t) / 16000
        f0 = 120 + 180 * torch.rand(batch, 1, 1, generator=g)
        return 0.2 * sum(torch.sin(2 * math.pi * f0 * k * time) / k for k in (1, 2, 3)) \
            + 0.01 * torch.randn(batch, 1, t, generator=g)

    torch.manual_seed(0)
    magnitude = audio_tokenizer_debug(phase_free=True, num_codebooks=1, griffin_lim_iters=4, frame_downsample=1)
    phase = audio_tokenizer_debug(quantizer_warmup_steps=40, quantizer_dropout=0.5, frame_downsample=1)
    for model in (magnitude, phase):
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
        model.train()
        for step in range(80):
            model(harmonic(1600, 4, step)).loss.backward()
            opt.step()
            opt.zero_grad()
    return magnitude.eval(), phase.eval(), harmonic(6400, 5, 1000)


def test_hybrid_code_search(trained_hybrid, tmp_path):
    """search=k refines the phase levels after the first against the hybrid's own decode: the
    magnitude level and the first phase level stay, no clip's SI-SDR drops, the mean rises;
    deterministic; the config's value is the default and survives save/load."""
    from vqgen.tokenizers.code_search import per_clip_si_sdr
    magnitude, phase, x = trained_hybrid
    hybrid = HybridAudioTokenizer.from_parts(magnitude, phase, magnitude_weight=0.5, blend="envelope")
    greedy, searched = hybrid.encode(x), hybrid.encode(x, search=6)
    assert torch.equal(greedy[:, :2], searched[:, :2]) and (greedy[:, 2:] != searched[:, 2:]).any()
    assert torch.equal(greedy[:, 1:], phase.encode(x, num_codebooks=3, search=0))

    def score(codes):
        return per_clip_si_sdr(hybrid.decode(codes, length=x.shape[-1])[:, 0], x[:, 0])

    before, after = score(greedy), score(searched)
    assert (after >= before - 1e-3).all(), (before, after)
    assert float(after.mean()) > float(before.mean()) + 0.2, (before, after)
    assert torch.equal(hybrid.encode(x, search=6), searched)
    assert hybrid.encode(x, search=6, num_codebooks=3).shape[1] == 3
    configured = HybridAudioTokenizer.from_parts(magnitude, phase, magnitude_weight=0.5, blend="envelope",
                                                 search_candidates=6)
    assert torch.equal(configured.encode(x), searched)
    loaded = load_model(configured.save_pretrained(tmp_path / "h")).eval()
    assert (loaded.config.search_candidates, loaded.config.search_passes) == (6, 1)
    assert torch.equal(loaded.encode(x), searched)
    with pytest.raises(ValueError, match=r"expected search_candidates 0 \(greedy\) or an int in \[2, codebook_size\], got 1"):
        hybrid.encode(x, search=1)
    with pytest.raises(ValueError, match="expected search_passes a positive int, got 0"):
        HybridAudioTokenizer.from_parts(magnitude, phase, search_passes=0)
