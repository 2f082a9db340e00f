"""AudioTokenizer: shapes and lengths, bitrates, levels, chunking, save/load, files, bad input."""
import math

import numpy as np
import pytest
import soundfile as sf
import torch

from vqgen import AudioTokenizer
from vqgen.tokenizers.audio import audio_tokenizer_debug, music_16khz, speech_16khz


def tone(t: int, rate: int = 16000, batch: int = 2, seed: int = 0) -> torch.Tensor:
    """(batch, 1, t) harmonic tones with random pitch and a little noise."""
    g = torch.Generator().manual_seed(seed)
    time = torch.arange(t) / rate
    f0 = 100 + 200 * torch.rand(batch, 1, 1, generator=g)
    wave = sum(torch.sin(2 * math.pi * f0 * k * time) / k for k in range(1, 5))
    return 0.3 * wave + 0.01 * torch.randn(batch, 1, t, generator=g)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = audio_tokenizer_debug()
    m(tone(3200))            # k-means init of every level in training mode
    return m.eval()


@pytest.mark.parametrize("rate", [8000, 16000, 22050, 44100])
def test_codes_and_decoded_lengths_for_odd_lengths_and_rates(model, rate):
    t = int(0.37 * rate) | 1                          # odd
    wave = tone(t, rate)
    codes = model.encode(wave, sample_rate=rate)
    t16 = math.ceil(t * 16000 / rate)                 # length after resampling to 16 kHz
    frames = math.ceil(t16 / model.hop_length)
    assert codes.shape == (2, model.num_codebooks, frames) and codes.dtype == torch.long
    assert model.decode(codes).shape == (2, 1, frames * model.hop_length)
    assert model.decode(codes, length=t16).shape == (2, 1, t16)
    assert model.code_shape(t16) == (model.num_codebooks, frames)
    assert model.encode(wave[:, 0], sample_rate=float(rate)).shape == codes.shape   # (B, T) input


def test_properties_and_bitrate(model):
    assert model.sample_rate == 16000 and model.hop_length == 320 and model.frame_rate == 50
    assert model.bitrate() == pytest.approx(4 * 6 * 50 / 1000)          # 4 levels x log2(64) bits
    rates = [model.bitrate(n) for n in range(1, 5)]
    assert rates == sorted(rates) and rates[0] == pytest.approx(0.3)
    assert model.encode(tone(1600), num_codebooks=2).shape[1] == 2


def test_fewer_levels_never_reconstruct_better():
    torch.manual_seed(0)
    m = audio_tokenizer_debug(quantizer_dropout=0.5)
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    wave = tone(3200, batch=4)
    for _ in range(60):
        m(wave).loss.backward()
        opt.step()
        opt.zero_grad()
    m.eval()
    with torch.no_grad():
        codes = m.encode(wave)
        target = m.spectral(wave[:, 0])
        errors = [float((m.spectral(m.decode(codes[:, :n])[:, 0]) - target).square().mean())
                  for n in range(1, m.num_codebooks + 1)]
    # tolerance 0.5%: a level whose codebook has not caught up may add ~0.1% noise
    assert all(b <= a * 1.005 for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < errors[0], errors                # the deeper levels carry information


def test_chunked_encode_decode_matches_whole_input(model):
    """Tolerance: identical codes, and decoded samples within 1e-4 (the context of 0.5 s exceeds
    the debug model's receptive field, so chunk seams only differ by float rounding)."""
    wave = tone(16000 * 7, batch=1)
    whole = model.encode(wave)
    whole_wave = model.decode(whole)
    chunked = audio_tokenizer_debug(chunk_seconds=2.0, overlap_seconds=0.5)
    chunked.load_state_dict(model.state_dict())
    chunked.eval()
    assert len(chunked._chunks(whole.shape[-1])) > 3
    codes = chunked.encode(wave)
    assert torch.equal(codes, whole)
    assert (chunked.decode(codes) - whole_wave).abs().max() < 1e-4


def test_save_load_round_trip(model, tmp_path):
    model.save_pretrained(tmp_path / "tok")
    loaded = AudioTokenizer.from_pretrained(tmp_path / "tok")
    wave = tone(5000)
    codes = model.encode(wave)
    assert torch.equal(loaded.encode(wave), codes)
    assert torch.allclose(loaded.decode(codes), model.decode(codes))
    assert loaded.config == model.config


def test_music_preset_round_trip(tmp_path):
    """The music preset: speech's codes (100 Hz, 4 x 1024, 4 kbps) over a 1280-sample window;
    narrow (channels=16) so the test is fast."""
    torch.manual_seed(0)
    music = music_16khz(channels=16)
    speech = speech_16khz(channels=16)
    assert (music.config.n_fft, music.config.stft_hop) == (1280, 160) and speech.config.n_fft == 320
    assert (music.frame_rate, music.num_codebooks, music.codebook_size) == (100, 4, 1024)
    assert music.bitrate() == pytest.approx(4.0) and music.config.vq_cosine is False
    assert music_16khz(n_fft=960).config.n_fft == 960               # overrides win
    music(tone(3200))                                               # k-means init
    music.eval()
    music.save_pretrained(tmp_path / "music")
    loaded = AudioTokenizer.from_pretrained(tmp_path / "music")
    assert loaded.config == music.config
    wave = tone(4000)
    codes = music.encode(wave)
    assert codes.shape == (2, 4, 25) and torch.equal(loaded.encode(wave), codes)
    assert torch.allclose(loaded.decode(codes, length=4000), music.decode(codes, length=4000))


def test_file_round_trip_with_downmix(model, tmp_path):
    stereo = tone(22050, rate=22050).squeeze(1).T.numpy()      # (T, 2) at 22.05 kHz
    sf.write(tmp_path / "in.wav", stereo, 22050)
    with pytest.raises(ValueError, match="downmix"):
        model.encode_file(tmp_path / "in.wav")
    codes = model.encode_file(tmp_path / "in.wav", downmix=True)
    assert codes.shape == (1, 4, math.ceil(16000 / 320))
    path = model.decode_to_file(codes, tmp_path / "out.wav")
    data, rate = sf.read(path)
    assert rate == 16000 and data.shape == (codes.shape[-1] * 320,)


def test_digital_silence_gives_finite_loss_and_gradients():
    m = audio_tokenizer_debug()
    out = m(torch.zeros(2, 1, 3200))
    out.loss.backward()
    assert torch.isfinite(out.loss)
    assert all(torch.isfinite(p.grad).all() for p in m.parameters() if p.grad is not None)
    m.eval()
    assert torch.isfinite(m.decode(m.encode(torch.zeros(1, 1, 1000)))).all()


def test_magnitude_levels_are_phase_free_and_train(tmp_path):
    """magnitude_levels=1: level 0 reads |spectrum| only, so a sign-flipped wave (every phase
    turned by pi, magnitudes unchanged) gets the same level-0 codes; the other levels differ."""
    torch.manual_seed(0)
    m = audio_tokenizer_debug(magnitude_levels=1)
    wave = tone(6400)
    out = m(wave)                          # k-means init, then a training step end to end
    out.loss.backward()
    assert m.magnitude_encoder.conv_in.weight.grad.abs().sum() > 0
    assert m.encoder.conv_in.weight.grad.abs().sum() > 0
    m.eval()
    codes, flipped = m.encode(wave), m.encode(-wave)
    assert torch.equal(codes[:, 0], flipped[:, 0])
    assert not torch.equal(codes[:, 1:], flipped[:, 1:])
    plain = audio_tokenizer_debug()
    plain(wave)
    plain.eval()
    assert not torch.equal(plain.encode(wave)[:, 0], plain.encode(-wave)[:, 0])
    assert m.decode(codes[:, :1]).shape == (2, 1, 6400)
    m.save_pretrained(tmp_path / "mag")
    again = AudioTokenizer.from_pretrained(tmp_path / "mag")
    assert torch.equal(again.encode(wave), codes)
    with pytest.raises(ValueError, match="magnitude_levels"):
        audio_tokenizer_debug(magnitude_levels=4)


def test_magnitude_only_forwards_use_the_phase_blind_loss():
    """magnitude_only_prob=1: every quantized training forward decodes level 0 alone and is
    scored by ``loss`` updated with ``magnitude_loss`` (here magnitudes only: a sign-flipped
    target would cost nothing); a forward with more levels keeps the complex term."""
    torch.manual_seed(0)
    m = audio_tokenizer_debug(magnitude_levels=1, magnitude_only_prob=1.0,
                              magnitude_loss={"complex_weight": 0.0, "magnitude_weight": 1.0})
    wave = tone(3200)
    for _ in range(3):
        out = m(wave)
        assert float(out.metrics["n_quantizers"]) == 1
        assert "magnitude_loss" in out.metrics and "complex_loss" not in out.metrics
    out.loss.backward()
    assert m.decoder.proj.weight.grad.abs().sum() > 0
    two = m(wave, num_codebooks=2)
    assert float(two.metrics["n_quantizers"]) == 2 and "complex_loss" in two.metrics
    assert "magnitude_loss" not in two.metrics
    # without magnitude_only_prob only quantizer-dropout draws of n <= 1 use it: some, not all
    m = audio_tokenizer_debug(magnitude_levels=1, quantizer_dropout=1.0, magnitude_loss={"magnitude_weight": 1.0})
    seen = {int(m(wave).metrics["n_quantizers"]): None for _ in range(24)}
    assert seen.keys() == {1, 2, 3, 4}
    for bad, match in [(dict(magnitude_only_prob=0.5), "without magnitude_levels"),
                       (dict(magnitude_loss={"magnitude_weight": 1.0}), "without magnitude_levels"),
                       (dict(magnitude_levels=1, magnitude_only_prob=1.5), r"magnitude_only_prob in \[0, 1\]"),
                       (dict(magnitude_levels=1, magnitude_loss={"phase_weight": 1.0}), "phase_weight")]:
        with pytest.raises(ValueError, match=match):
            audio_tokenizer_debug(**bad)


def test_phase_free_codec_ignores_phase_and_decodes_by_griffin_lim(tmp_path):
    """phase_free=True: the encoder reads magnitudes only, so a sign-flipped wave (every phase
    turned by pi) gets the same codes; training scores the predicted magnitudes under the
    input's phase; decode is deterministic Griffin-Lim and keeps lengths."""
    torch.manual_seed(0)
    m = audio_tokenizer_debug(phase_free=True, num_codebooks=2, griffin_lim_iters=8)
    assert m.encoder.conv_in.in_channels == m.config.n_fft // 2 + 1      # magnitudes only
    wave = tone(6400)
    out = m(wave)
    out.loss.backward()
    assert torch.isfinite(out.loss) and m.encoder.conv_in.weight.grad.abs().sum() > 0
    m.eval()
    codes = m.encode(wave)
    assert torch.equal(codes, m.encode(-wave))
    first, again = m.decode(codes, length=6399), m.decode(codes, length=6399)
    assert first.shape == (2, 1, 6399) and torch.equal(first, again) and torch.isfinite(first).all()
    m.save_pretrained(tmp_path / "pf")
    loaded = AudioTokenizer.from_pretrained(tmp_path / "pf")
    assert loaded.config.phase_free and torch.equal(loaded.decode(codes, length=6399), first)
    for bad, match in [(dict(phase_free=True, magnitude_levels=1), "magnitude_levels 0 with phase_free"),
                       (dict(phase_free=1), "phase_free a bool"),
                       (dict(griffin_lim_iters=-1), "griffin_lim_iters an int >= 0")]:
        with pytest.raises(ValueError, match=match):
            audio_tokenizer_debug(**bad)


def test_phase_free_training_loss_compares_magnitudes_only():
    """Under the input's phase the complex term of a phase-free codec is the magnitude MSE: a
    decoder output with the right magnitudes and any phase costs nothing."""
    from vqgen.losses import magnitude_mse, spectrum_mse, stacked_magnitude as _magnitude
    from vqgen.tokenizers.audio import _with_phase
    target = torch.randn(2, 2 * 161, 10)
    scrambled = _with_phase(_magnitude(target), torch.randn(2, 2 * 161, 10))
    assert spectrum_mse(scrambled, target) > 0.1
    assert spectrum_mse(_with_phase(_magnitude(scrambled), target), target) < 1e-8
    assert magnitude_mse(scrambled, target) < 1e-8


def test_griffin_lim_recovers_a_consistent_phase():
    """Fast Griffin-Lim from the magnitudes of a harmonic tone: the rebuilt wave's magnitudes
    match far better than the same magnitudes with the starting (random) phase."""
    m = music_16khz(phase_free=True, num_codebooks=1, channels=8, encoder_blocks=0, latent_blocks=0,
                    decoder_blocks=0)
    wave = tone(16000, batch=1)[:, 0]
    spec = m.spectral(wave)
    mag = (spec[:, :spec.shape[1] // 2] ** 2 + spec[:, spec.shape[1] // 2:] ** 2).sqrt()

    def error(w):
        s = m.spectral(w)
        got = (s[:, :s.shape[1] // 2] ** 2 + s[:, s.shape[1] // 2:] ** 2).sqrt()
        return float((got - mag).norm() / mag.norm())

    start, rebuilt = error(m.spectral.griffin_lim(mag, 0)), error(m.spectral.griffin_lim(mag, 32))
    assert rebuilt < 0.1 and rebuilt < start / 3          # measured: 0.34 -> 0.06
    assert torch.equal(m.spectral.griffin_lim(mag, 4), m.spectral.griffin_lim(mag, 4))


@pytest.mark.parametrize("bad, match", [
    (torch.full((1, 1, 800), float("nan")), "finite"),
    (torch.zeros(1, 1, 0), "non-empty"),
    (torch.zeros(0, 1, 800), "non-empty"),
    (torch.zeros(1, 2, 800), "mono"),
    (torch.zeros(1, 1, 1, 800), r"\(B, 1, T\)"),
    (torch.zeros(1, 1, 800, dtype=torch.int16), "float"),
    (np.zeros((1, 800), np.float32), "float"),
])
def test_bad_waves_raise_value_error(model, bad, match):
    with pytest.raises(ValueError, match=match):
        model.encode(bad)


@pytest.mark.parametrize("rate", [0, -16000, 16000.5, "16k", True])
def test_bad_sample_rates_raise_value_error(model, rate):
    with pytest.raises(ValueError, match="positive integer"):
        model.encode(tone(800), sample_rate=rate)


def test_bad_codes_files_and_levels_raise(model, tmp_path):
    with pytest.raises(ValueError, match=r"\[0, 64\)"):
        model.decode(torch.full((1, 4, 3), 64))
    with pytest.raises(ValueError, match="1 <= n <= 4"):
        model.decode(torch.zeros(1, 5, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="integer"):
        model.decode(torch.zeros(1, 4, 3))
    for n in (0, 5, 2.0):
        with pytest.raises(ValueError, match=r"num_codebooks must be an int in \[1, 4\]"):
            model.encode(tone(800), num_codebooks=n)
    (tmp_path / "text.wav").write_text("not audio")
    with pytest.raises(ValueError, match="audio file"):
        model.encode_file(tmp_path / "text.wav")
    with pytest.raises(FileNotFoundError):
        model.encode_file(tmp_path / "missing.wav")
    with pytest.raises(ValueError, match="unknown AudioTokenizerConfig"):
        audio_tokenizer_debug(hop=3)
    with pytest.raises(ValueError, match="n_fft"):
        audio_tokenizer_debug(n_fft=300)


def test_quantizer_warmup_trains_an_autoencoder_first_and_resumes_exactly(tmp_path):
    torch.manual_seed(0)
    model = audio_tokenizer_debug(quantizer_warmup_steps=2).train()
    wave = 0.3 * torch.randn(2, 1, 1600)
    for _ in range(2):                                 # warm-up: no codes, no codebook init
        out = model(wave)
        assert int(out.codes.abs().sum()) == 0 and float(out.metrics["perplexity"]) == 0
        z = model.encoder(model.spectral(model._pad(model.prepare(wave))))
        assert not bool(model.quantizer.layers[0].initted)
    assert torch.allclose(out.recon, model.spectral.inverse(model.decoder(z))[:, None, :1600], atol=1e-5)
    model.save_pretrained(tmp_path / "tok")
    again = AudioTokenizer.from_pretrained(tmp_path / "tok").train()
    assert int(again.train_forwards) == 2
    out = again(wave)                                  # third forward: quantized (k-means init)
    assert bool(again.quantizer.layers[0].initted) and float(out.metrics["perplexity"]) > 0
    again.eval()
    assert float(again(wave).metrics["n_quantizers"]) == again.num_codebooks   # eval never warms up
    # a checkpoint from before the counter existed loads as past its warm-up
    state = {k: v for k, v in model.state_dict().items() if k != "train_forwards"}
    fresh = audio_tokenizer_debug(quantizer_warmup_steps=2)
    fresh.load_state_dict(state)
    assert int(fresh.train_forwards) == 2
