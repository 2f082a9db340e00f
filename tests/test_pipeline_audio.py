"""GenerationPipeline with an audio tokenizer: (n, 1, T) waveforms, WAVs + spectrogram PNGs,
class names in captions; and the spectrogram picture itself (frequency axis up)."""
from __future__ import annotations

import json

import pytest
import soundfile as sf
import torch
from PIL import Image

from vqgen.pipeline import GenerationPipeline
from vqgen.priors.transformer import transformer_prior_debug
from vqgen.spectrogram import colormap, spectrogram_grid, spectrogram_image
from vqgen.tokenizers.audio import audio_tokenizer_debug

FRAMES = 6


@pytest.fixture(scope="module")
def pipe():
    torch.manual_seed(0)
    tok = audio_tokenizer_debug().eval()
    prior = transformer_prior_debug(codebook_size=tok.codebook_size,
                                    code_shape=(tok.num_codebooks, FRAMES), layout="delay",
                                    num_classes=2, id2label={0: "alto", 1: "bass"})
    return GenerationPipeline(tok, prior.eval())


def test_generate_returns_waveforms_and_is_batch_invariant(pipe):
    waves = pipe.generate(4, labels=["bass", 0, "bass", 1], seed=3)
    assert waves.shape == (4, 1, FRAMES * pipe.tokenizer.hop_length)
    assert waves.dtype == torch.float32 and waves.abs().max() <= 1.0
    again = pipe.generate(4, labels=[1, "alto", 1, "bass"], seed=3, batch_size=1)
    torch.testing.assert_close(waves, again, rtol=0, atol=1e-5)  # decoder round-off only
    # the codes themselves are equal: seeds drawn in chunks of 1 equal seeds drawn at once
    gen = torch.Generator().manual_seed(3)
    chunked = torch.cat([pipe.prior.generate(1, labels=lab, generator=gen) for lab in [1, 0, 1, 1]])
    whole = pipe.prior.generate(4, labels=[1, 0, 1, 1], generator=torch.Generator().manual_seed(3))
    assert torch.equal(chunked, whole)


def test_save_writes_wavs_spectrograms_and_captions(pipe, tmp_path):
    waves = pipe.generate(3, labels="bass", seed=0)
    paths = pipe.save(waves, tmp_path, labels="bass")
    names = sorted(p.name for p in paths)
    assert names == ["0000.json", "0000.png", "0000.wav", "0001.json", "0001.png", "0001.wav",
                     "0002.json", "0002.png", "0002.wav", "grid.json", "grid.png"]
    data, rate = sf.read(tmp_path / "0001.wav", dtype="float32")
    assert rate == pipe.tokenizer.sample_rate and data.shape == (waves.shape[-1],)
    assert abs(data - waves[1, 0].numpy()).max() < 1e-4          # 16-bit PCM
    with Image.open(tmp_path / "0001.png") as im:
        assert im.mode == "RGB" and im.size[1] == 80
        width = im.size[0]
    with Image.open(tmp_path / "grid.png") as im:                 # 2 per row, 2 rows, pad 2
        assert im.size == (2 * (width + 2) + 2, 2 * (80 + 2) + 2)
    assert "bass" in json.loads((tmp_path / "0002.json").read_text())["caption"]
    assert json.loads((tmp_path / "grid.json").read_text())["rows"] == ["bass", "bass"]


def test_spectrogram_frequency_axis_up_and_errors():
    rate = 8000
    t = torch.arange(rate) / rate
    low = spectrogram_image(0.5 * torch.sin(2 * torch.pi * 200 * t), rate, n_mels=40)
    high = spectrogram_image(0.5 * torch.sin(2 * torch.pi * 3000 * t), rate, n_mels=40)
    assert low.shape == (3, 40, 101) and 0 <= float(low.min()) and float(low.max()) <= 1
    brightest = lambda img: int(img.sum(0).mean(1).argmax())  # noqa: E731  (row index)
    assert brightest(low) > brightest(high)  # low tones near the bottom of the picture
    lin = spectrogram_image(0.5 * torch.sin(2 * torch.pi * 200 * t), rate, kind="linear")
    assert lin.shape[1] == 256 // 2 + 1
    assert torch.equal(colormap(torch.tensor([0.0, 1.0])).T[0], torch.tensor([0.0, 0.0, 0.02]))
    with pytest.raises(ValueError, match="mono"):
        spectrogram_image(torch.zeros(2, 100), rate)
    with pytest.raises(ValueError, match="non-finite"):
        spectrogram_image(torch.tensor([0.0, float("nan")]), rate)
    with pytest.raises(ValueError, match="kind"):
        spectrogram_image(torch.zeros(100), rate, kind="cqt")
    with pytest.raises(ValueError, match=r"\(n, 1, T\)"):
        spectrogram_grid(torch.zeros(2, 100), rate, 2)
