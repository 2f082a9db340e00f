"""Metrics: hand-computed values, error cases, and a real classifier/Fréchet check on digits."""
import json
import math

import pytest
import torch

from vqgen.data.images import load_image_dataset
from vqgen.metrics import (ImageClassifier, bits_per_code, class_accuracy, codebook_stats,
                           exact_match, frechet_distance, psnr, ssim, token_accuracy,
                           train_classifier)


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    return load_image_dataset("digits", root=tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def classifier(digits):
    model, acc = train_classifier(digits.train_x, digits.train_y, digits.test_x, digits.test_y,
                                  steps=60, batch_size=32, width=16)
    return model, acc


# --------------------------------------------------------------------------- PSNR / SSIM
def test_psnr_constant_offset_is_20db():
    x = torch.rand(5, 1, 8, 8) * 0.8
    assert psnr(x, x + 0.1) == pytest.approx(20.0, abs=1e-4)  # MSE 0.01 -> 10 log10(1/0.01)
    assert psnr(x, x + 0.1, data_range=2.0) == pytest.approx(20.0 + 20 * math.log10(2), abs=1e-4)


def test_psnr_is_mean_of_per_image_values_and_chunking_does_not_matter():
    x = torch.zeros(4, 1, 4, 4)
    y = x.clone()
    y[:2] += 0.1   # 20 dB
    y[2:] += 0.01  # 40 dB
    assert psnr(x, y) == pytest.approx(30.0, abs=1e-4)
    assert psnr(x, y, chunk_size=1) == pytest.approx(30.0, abs=1e-4)


def test_psnr_accepts_uint8_and_rejects_mismatch():
    x = torch.randint(0, 200, (3, 1, 6, 6), dtype=torch.uint8)
    y = x + 51  # exactly 0.2 in [0, 1] units -> 13.98 dB
    assert psnr(x, y) == pytest.approx(10 * math.log10(1 / 0.04), abs=1e-3)
    with pytest.raises(ValueError, match="shape"):
        psnr(torch.rand(2, 1, 4, 4), torch.rand(2, 1, 4, 5))
    with pytest.raises(ValueError, match="dtype"):
        psnr(torch.ones(2, 3, dtype=torch.int32), torch.ones(2, 3, dtype=torch.int32))


def test_ssim_identical_is_one_and_distortion_lowers_it():
    x = torch.rand(4, 3, 16, 16)
    assert ssim(x, x) == pytest.approx(1.0, abs=1e-5)
    noisy = (x + 0.2 * torch.randn_like(x)).clamp(0, 1)
    assert ssim(x, noisy) < 0.9
    assert ssim(torch.rand(2, 1, 8, 8), torch.rand(2, 1, 8, 8)) < 0.5  # small images work
    with pytest.raises(ValueError, match="shape"):
        ssim(x, x[:2])
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        ssim(x[0], x[0])


# --------------------------------------------------------------------------- codes
def test_codebook_stats_uniform_and_single_code():
    k = 16
    uniform = torch.arange(k).repeat(5)
    stats = codebook_stats(uniform, k)
    assert stats["perplexity"] == pytest.approx(k)
    assert stats["usage"] == pytest.approx(1.0)
    single = torch.full((7, 3), 4)
    stats = codebook_stats(single, k)
    assert stats["perplexity"] == pytest.approx(1.0)
    assert stats["usage"] == pytest.approx(1 / k)


def test_codebook_stats_averages_levels():
    k = 8
    codes = torch.stack([torch.arange(k), torch.zeros(k, dtype=torch.long)], dim=1)  # (N, Q=2)
    stats = codebook_stats(codes, k, level_dim=1)
    assert stats["perplexity"] == pytest.approx((k + 1) / 2)
    assert stats["usage"] == pytest.approx((1 + 1 / k) / 2)
    assert codebook_stats(codes, k)["perplexity"] < k  # pooled histogram differs


def test_codebook_stats_rejects_bad_codes():
    with pytest.raises(ValueError, match="out of range"):
        codebook_stats(torch.tensor([0, 8]), 8)
    with pytest.raises(ValueError, match="integer"):
        codebook_stats(torch.tensor([0.0, 1.0]), 8)


def test_bits_per_code():
    assert bits_per_code(10 * math.log(2), 10) == pytest.approx(1.0)
    assert bits_per_code(100 * math.log(512), 100) == pytest.approx(9.0)
    with pytest.raises(ValueError):
        bits_per_code(1.0, 0)


# --------------------------------------------------------------------------- tokens
def test_token_accuracy_and_exact_match_with_lengths():
    target = torch.tensor([[1, 2, 3, 4], [5, 6, 7, 8]])
    pred = torch.tensor([[1, 2, 0, 0], [5, 6, 7, 0]])
    assert token_accuracy(pred, target) == pytest.approx(5 / 8)
    lengths = torch.tensor([2, 3])
    assert token_accuracy(pred, target, lengths) == pytest.approx(1.0)
    assert exact_match(pred, target, lengths) == pytest.approx(1.0)
    assert exact_match(pred, target) == pytest.approx(0.0)
    logits = torch.nn.functional.one_hot(pred, 10).float()  # (B, L, V)
    assert token_accuracy(logits, target) == pytest.approx(5 / 8)
    with pytest.raises(ValueError, match="expected pred and target"):
        token_accuracy(pred[:, :3], target)
    with pytest.raises(ValueError, match="lengths"):
        token_accuracy(pred, target, torch.tensor([1, 2, 3]))


# --------------------------------------------------------------------------- key consistency
def _notes(midi, seconds=2.0, rate=16000, harmonics=6):
    """(1, T) sum of harmonic tones (amplitude 1/k) at the MIDI pitches ``midi``."""
    t = torch.arange(int(seconds * rate)) / rate
    wave = sum(torch.sin(2 * math.pi * 440 * 2 ** ((m - 69) / 12) * k * t) / k
               for m in midi for k in range(1, harmonics + 1))
    return (0.5 * wave / wave.abs().max())[None]


def test_key_consistency_triad_cluster_and_silence():
    from vqgen.metrics.audio import chroma, key_consistency
    assert key_consistency(_notes([60, 64, 67]), 16000) == pytest.approx(1.0, abs=0.05)          # C major
    assert key_consistency(_notes([57, 61, 64])[:, None], 16000) == pytest.approx(1.0, abs=0.05)  # A major, (N, 1, T)
    assert key_consistency(_notes([60, 61, 62]), 16000) == pytest.approx(0.0, abs=0.05)  # C C# D
    assert key_consistency(_notes([60, 61, 62], harmonics=1), 16000) == pytest.approx(0.0, abs=0.05)
    assert key_consistency(torch.zeros(2, 16000), 16000) == 0.0                        # no loud frame
    assert key_consistency(1e-5 * _notes([60, 61, 62]), 16000) == 0.0                  # below -60 dBFS
    # a silent clip next to a triad: only the triad's frames count
    assert key_consistency(torch.cat([torch.zeros(1, 32000), _notes([60, 64, 67])]), 16000) == 1.0
    pcs, level = chroma(_notes([69], harmonics=1), 16000)                            # A4 sine
    assert pcs.shape[0] == 1 and pcs.shape[2] == 12 and int(pcs[0].sum(0).argmax()) == 9
    assert 10 * math.log10(float(level[0, 4])) == pytest.approx(10 * math.log10(0.125), abs=0.5)


@pytest.mark.parametrize("bad, kwargs, match", [
    (torch.zeros(2, 1, 1, 100), {}, "float tensor|\\(N, 1, T\\)"),
    (torch.zeros(0, 100), {}, "N, T >= 1"),
    (torch.zeros(2, 100, dtype=torch.int16), {}, "float"),
    (torch.full((1, 100), float("nan")), {}, "finite"),
    (torch.zeros(1, 100), {"sample_rate": 0}, "positive integer"),
    (torch.zeros(1, 100), {"sample_rate": 4000}, "fmax"),
    (torch.zeros(1, 100), {"top": 0}, "top"),
    (torch.zeros(1, 100), {"relative": 2.0}, "relative"),
])
def test_key_consistency_rejects_bad_input(bad, kwargs, match):
    from vqgen.metrics.audio import key_consistency
    kwargs = {"sample_rate": 16000, **kwargs}
    with pytest.raises(ValueError, match=match):
        key_consistency(bad, **kwargs)


def test_key_consistency_is_in_the_glossary():
    from vqgen.metrics.glossary import METRICS
    for key in ("sample_key_consistency", "test_key_consistency", "recon_key_consistency",
                "recon_class_accuracy"):
        assert METRICS[key].unit == "fraction" and METRICS[key].meaning


# --------------------------------------------------------------------------- classifier / FD
def test_frechet_distance_self_is_zero_and_shift_is_positive(digits, classifier):
    model, _ = classifier
    real = digits.test_x[:200]
    assert frechet_distance(real, real, model) == pytest.approx(0.0, abs=1e-6)
    shifted = real.float() / 255 * 0.5 + 0.4  # float input: low contrast, bright background
    d_shift = frechet_distance(real, shifted, model)
    d_split = frechet_distance(real[:100], real[100:], model)  # same distribution, other samples
    assert d_shift > 5 * d_split > 0
    with pytest.raises(ValueError, match="image shape"):
        frechet_distance(real, real[:, :, :8], model)
    with pytest.raises(ValueError, match="at least 2"):
        frechet_distance(real[:1], real, model)


def test_frechet_distance_accepts_a_plain_feature_module(digits):
    torch.manual_seed(0)
    flat = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(256, 8))  # no .features
    x = digits.test_x[:64].float() / 255
    assert frechet_distance(x, x, flat) == pytest.approx(0.0, abs=1e-6)
    assert frechet_distance(x, x.flip(-1), flat) > 0


def test_classifier_learns_digits_and_caches(digits, classifier, tmp_path):
    model, acc = classifier
    assert acc > 0.8
    assert class_accuracy(digits.test_x, digits.test_y, model) == pytest.approx(acc)
    assert model.features(digits.test_x[:3]).shape == (3, 64)  # 4 * width
    cache = tmp_path / "clf" / "digits.safetensors"
    kwargs = dict(steps=5, batch_size=16, width=8, cache_path=cache)
    first, acc1 = train_classifier(digits.train_x, digits.train_y, digits.test_x, digits.test_y,
                                   **kwargs)
    info_path = cache.with_suffix(".json")
    assert cache.is_file() and info_path.is_file()
    info = json.loads(info_path.read_text())
    assert info["test_accuracy"] == acc1
    info["test_accuracy"] = 0.125  # marker: a cache hit returns the stored accuracy
    info_path.write_text(json.dumps(info))
    again, acc2 = train_classifier(digits.train_x, digits.train_y, digits.test_x, digits.test_y,
                                   **kwargs)
    assert acc2 == 0.125
    for a, b in zip(first.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)
    # other hyper-parameters miss the cache and retrain (and overwrite it)
    _, acc3 = train_classifier(digits.train_x, digits.train_y, digits.test_x, digits.test_y,
                               **{**kwargs, "steps": 6})
    assert acc3 != 0.125 and json.loads(info_path.read_text())["config"]["steps"] == 6


def test_classifier_ignores_and_keeps_the_callers_global_rng(digits):
    """Same seed, same classifier, whatever the global RNG held (dropout draws from it)."""
    kwargs = dict(steps=5, batch_size=16, width=8)
    torch.manual_seed(1)
    a, acc_a = train_classifier(digits.train_x, digits.train_y, digits.test_x, digits.test_y, **kwargs)
    after = torch.rand(3)
    torch.manual_seed(1)
    assert torch.equal(torch.rand(3), after)          # the caller's stream was not consumed
    torch.manual_seed(2)
    b, acc_b = train_classifier(digits.train_x, digits.train_y, digits.test_x, digits.test_y, **kwargs)
    assert acc_a == acc_b
    for x, y in zip(a.state_dict().values(), b.state_dict().values()):
        assert torch.equal(x, y)


def test_classifier_rejects_bad_shapes(digits):
    with pytest.raises(ValueError, match="labels"):
        train_classifier(digits.train_x, digits.train_y[:5], digits.test_x, digits.test_y, steps=1)
    with pytest.raises(ValueError, match="expected images"):
        ImageClassifier(in_channels=3)(digits.test_x[:2])


def test_classifier_trains_for_very_few_steps():
    from vqgen.metrics import train_classifier
    x = torch.randint(0, 256, (16, 1, 8, 8), dtype=torch.uint8)
    y = torch.arange(16) % 2
    model, acc = train_classifier(x, y, x, y, steps=3, batch_size=4, width=4)
    assert 0.0 <= acc <= 1.0 and not model.training
