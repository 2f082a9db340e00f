"""Analysis-by-synthesis code search in AudioTokenizer.encode (vqgen.tokenizers.code_search)."""
import math

import pytest
import torch

from vqgen import AudioTokenizer
from vqgen.metrics import audio as AM
from vqgen.tokenizers.audio import audio_tokenizer_debug
from vqgen.tokenizers.code_search import per_clip_si_sdr


def tones(t: int, batch: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    time = torch.arange(t) / 16000
    f0 = 100 + 200 * torch.rand(batch, 1, 1, generator=g)
    wave = sum(torch.sin(2 * math.pi * f0 * k * time + k) / k for k in range(1, 6))
    return 0.3 * wave + 0.02 * torch.randn(batch, 1, t, generator=g)


@pytest.fixture(scope="module")
def trained():
    """A debug codec at the STFT frame rate trained a little (40 autoencoder steps, then 40
    quantized) on harmonic tones, and held-out tones."""
    torch.manual_seed(0)
    m = audio_tokenizer_debug(quantizer_dropout=0.5, frame_downsample=1, quantizer_warmup_steps=40)
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    for step in range(80):
        m(tones(1600, 4, seed=step)).loss.backward()
        opt.step()
        opt.zero_grad()
    return m.eval(), tones(6400, 6, seed=1000)


@torch.no_grad()
def objective(m, codes, wave):
    """The search's per-clip objective: SI-SDR (dB) at all levels + 0.5 x at half the levels."""
    q = m.num_codebooks
    return sum(w * per_clip_si_sdr(m.decode(codes[:, :n], length=wave.shape[-1])[:, 0], wave[:, 0])
               for n, w in ((q, 1.0), (q // 2, 0.5)))


def test_search_never_lowers_a_clips_objective_and_raises_the_mean(trained):
    m, wave = trained
    greedy = m.encode(wave)
    searched = m.encode(wave, search=6)
    assert searched.shape == greedy.shape and searched.dtype == torch.long
    assert torch.equal(searched[:, 0], greedy[:, 0])            # the first level stays greedy
    assert (searched[:, 1:] != greedy[:, 1:]).any()
    before, after = objective(m, greedy, wave), objective(m, searched, wave)
    assert (after >= before - 1e-3).all(), (before, after)
    assert float(after.mean()) > float(before.mean()) + 0.5, (before, after)    # measured: +2.2 dB
    top = m.num_codebooks
    assert AM.si_sdr(m.decode(searched, length=wave.shape[-1]), wave) > \
        AM.si_sdr(m.decode(greedy, length=wave.shape[-1]), wave)
    assert torch.equal(m.encode(wave, search=6), searched)      # deterministic
    assert m.encode(wave, search=6, num_codebooks=2).shape[1] == 2 and top == 4


def test_search_from_config_survives_save_load(trained, tmp_path):
    m, wave = trained
    searching = audio_tokenizer_debug(quantizer_dropout=0.5, frame_downsample=1, search_candidates=6)
    searching.load_state_dict(m.state_dict())
    searching.eval()
    assert torch.equal(searching.encode(wave), m.encode(wave, search=6))
    assert torch.equal(searching.encode(wave, search=0), m.encode(wave))
    searching.save_pretrained(tmp_path / "tok")
    loaded = AudioTokenizer.from_pretrained(tmp_path / "tok")
    assert loaded.config.search_candidates == 6 and loaded.config.search_passes == 1
    assert torch.equal(loaded.encode(wave), searching.encode(wave))


def test_per_clip_si_sdr_matches_the_metric():
    torch.manual_seed(0)
    target = torch.randn(3, 4000)
    pred = 0.5 * target + 0.3 * torch.randn(3, 4000)
    rows = per_clip_si_sdr(pred, target)
    assert rows.shape == (3,)
    assert float(rows.mean()) == pytest.approx(AM.si_sdr(pred, target), abs=1e-4)
    assert float(per_clip_si_sdr(2 * target, target).min()) > 60


@pytest.mark.parametrize("bad", [1, -1, 2.5, True])
def test_bad_search_values_raise(trained, bad):
    m, wave = trained
    with pytest.raises(ValueError, match="search"):
        m.encode(wave, search=bad)


@pytest.mark.parametrize("over", [{"search_candidates": 1}, {"search_candidates": 65},
                                  {"search_passes": 0}, {"search_candidates": 4, "phase_free": True}])
def test_bad_search_config_raises(over):
    with pytest.raises(ValueError, match="search"):
        audio_tokenizer_debug(**over)
