"""The codec's output level: AudioTokenizer.calibrate_level / config.output_gain and the
level_db metric (SI-SDR and STOI do not see level; a listener does)."""
import math

import pytest
import torch

from vqgen import AudioTokenizer
from vqgen.metrics import audio as AM
from vqgen.tokenizers.audio import audio_tokenizer_debug


def tones(t: int, batch: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    time = torch.arange(t) / 16000
    f0 = 100 + 300 * torch.rand(batch, 1, 1, generator=g)
    return 0.2 * torch.sin(2 * math.pi * f0 * time) + 0.01 * torch.randn(batch, 1, t, generator=g)


def test_level_db():
    x = tones(4000, 3)
    assert AM.level_db(x, x) == pytest.approx(0.0, abs=1e-9)
    assert AM.level_db(0.5 * x, x) == pytest.approx(20 * math.log10(0.5), abs=1e-6)
    assert AM.level_db(-2 * x, x) == pytest.approx(20 * math.log10(2), abs=1e-6)
    with pytest.raises(ValueError):
        AM.level_db(x[..., :100], x)


def test_calibrated_codec_decodes_at_the_input_level_and_scores_the_same(tmp_path):
    torch.manual_seed(0)
    m = audio_tokenizer_debug(frame_downsample=1).eval()
    train, test = tones(6400, 6, seed=1), tones(6400, 4, seed=2)
    codes = m.encode(test)
    before = m.decode(codes, length=test.shape[-1])
    assert abs(AM.level_db(before, test)) > 1.5                # an untrained decoder's level is arbitrary
    gain = m.calibrate_level(train)
    assert m.config.output_gain == gain and abs(20 * math.log10(gain)) > 1.5
    assert torch.equal(m.encode(test), codes)                  # the codes do not change
    after = m.decode(codes, length=test.shape[-1])
    torch.testing.assert_close(after, gain * before)
    assert abs(AM.level_db(m.decode(m.encode(train), length=train.shape[-1]), train)) < 1e-3
    assert abs(AM.level_db(after, test)) < 1.0                 # similar material, similar level
    assert AM.si_sdr(after, test) == pytest.approx(AM.si_sdr(before, test), rel=1e-3)
    assert m.calibrate_level(train) == pytest.approx(gain, rel=1e-5)   # calibrating again keeps it
    m.save_pretrained(tmp_path / "tok")
    loaded = AudioTokenizer.from_pretrained(tmp_path / "tok").eval()
    assert loaded.config.output_gain == gain
    torch.testing.assert_close(loaded.decode(codes, length=test.shape[-1]), after)
    scores = AM.evaluate_tokenizer(loaded, test, levels=[4], with_stoi=False)
    assert scores["test_level_db_2p4kbps"] == pytest.approx(AM.level_db(after, test), abs=1e-4)


def test_calibrating_on_silence_raises():
    m = audio_tokenizer_debug(frame_downsample=1).eval()
    with pytest.raises(ValueError, match="not silent"):
        m.calibrate_level(torch.zeros(2, 1, 3200))


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf"), True, "2"])
def test_bad_output_gain_raises(bad):
    with pytest.raises(ValueError, match="output_gain"):
        audio_tokenizer_debug(output_gain=bad)


def test_gain_applies_to_decoded_magnitudes_too():
    """A phase-free codec's magnitudes (what the hybrid blends) follow its output gain:
    compressed magnitudes scale by ``gain ** power``, as the decoded waveform scales by ``gain``."""
    torch.manual_seed(0)
    plain = audio_tokenizer_debug(phase_free=True, num_codebooks=1, griffin_lim_iters=2).eval()
    loud = audio_tokenizer_debug(phase_free=True, num_codebooks=1, griffin_lim_iters=2, output_gain=2.0).eval()
    loud.load_state_dict(plain.state_dict())
    x = tones(3200, 2)
    codes = plain.encode(x)
    torch.testing.assert_close(loud.decoded_magnitudes(codes.transpose(1, 2)),
                               plain.decoded_magnitudes(codes.transpose(1, 2)) * 2.0 ** plain.config.power)
    torch.testing.assert_close(loud.decode(codes), 2.0 * plain.decode(codes))
