"""Audio sample metrics on synthetic tones: the classifier learns three timbres, is cached and
seeded; Fréchet distances are small for the same source and large for different ones."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from vqgen.data.audio import pack_clips
from vqgen.metrics.audio_classifier import (audio_class_accuracy, audio_frechet_distance,
                                            crop_clips, gaussian_frechet, mel_frechet_distance,
                                            train_audio_classifier)

RATE = 8000


def tone(kind: int, seconds: float, rng: np.random.Generator) -> np.ndarray:
    """Class 0: sine, class 1: square wave, class 2: band noise; random pitch and phase."""
    t = np.arange(int(seconds * RATE)) / RATE
    f = rng.uniform(150, 400)
    phase = 2 * np.pi * f * t + rng.uniform(0, 2 * np.pi)
    if kind == 0:
        wave = np.sin(phase)
    elif kind == 1:
        wave = np.sign(np.sin(phase))
    else:
        wave = np.convolve(rng.standard_normal(len(t)), np.ones(4) / 4, mode="same")
    return (0.4 * wave / np.abs(wave).max()).astype(np.float32)


def clips(n_per_class: int, seed: int):
    rng = np.random.default_rng(seed)
    labels = [c for c in range(3) for _ in range(n_per_class)]
    waves = [tone(c, rng.uniform(0.4, 0.8), rng) for c in labels]
    return pack_clips(waves, labels, ["sine", "square", "noise"], RATE)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    train, test = clips(8, 0), clips(4, 1)
    cache = tmp_path_factory.mktemp("clf") / "clf.safetensors"
    model, acc = train_audio_classifier(train, test, steps=40, batch_size=16, crop_seconds=0.3,
                                        width=16, cache_path=cache, progress=False)
    return train, test, cache, model, acc


def test_classifier_learns_timbres(trained):
    train, test, cache, model, acc = trained
    assert acc >= 0.9
    waves = crop_clips(test, int(0.3 * RATE))
    assert waves.shape == (len(test), 1, int(0.3 * RATE))
    assert audio_class_accuracy(waves, torch.as_tensor(test.labels), model) == acc
    wrong = (torch.as_tensor(test.labels) + 1) % 3
    assert audio_class_accuracy(waves, wrong, model) <= 0.1
    assert model.features(waves).shape == (len(test), model.num_features)


def test_classifier_is_cached_and_seeded(trained):
    train, test, cache, model, acc = trained
    info = json.loads(cache.with_suffix(".json").read_text())
    assert info["test_accuracy"] == acc and info["config"]["steps"] == 40
    # loaded from the cache: same weights, no training (steps would otherwise matter)
    again, acc2 = train_audio_classifier(train, test, steps=40, batch_size=16, crop_seconds=0.3,
                                         width=16, cache_path=cache, progress=False)
    assert acc2 == acc
    for (k, v), (_, w) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(v, w), k
    # the same seed retrains to the same weights without a cache
    fresh, _ = train_audio_classifier(train, test, steps=3, batch_size=4, crop_seconds=0.3,
                                      width=8, progress=False)
    twin, _ = train_audio_classifier(train, test, steps=3, batch_size=4, crop_seconds=0.3,
                                     width=8, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(),
                                                   twin.state_dict().values()))


def test_frechet_distances_rank_sources(trained):
    train, test, cache, model, acc = trained
    n = int(0.3 * RATE)
    real_a = crop_clips(train, n)
    real_b = crop_clips(test, n)
    rng = np.random.default_rng(3)
    other = torch.from_numpy(np.stack([tone(0, 0.3, rng) for _ in range(len(test))]))[:, None]
    assert audio_frechet_distance(real_a, real_b, model) < audio_frechet_distance(real_a, other, model)
    assert mel_frechet_distance(real_a, real_b, RATE) < mel_frechet_distance(real_a, other, RATE)


def test_gaussian_frechet_hand_computed():
    a = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0], [2.0, 2.0]])
    assert gaussian_frechet(a, a) == pytest.approx(0.0, abs=1e-6)
    # shifting by (3, 4) adds |mu|^2 = 25 and leaves the covariances equal
    assert gaussian_frechet(a, a + torch.tensor([3.0, 4.0])) == pytest.approx(25.0, abs=1e-6)


def test_errors():
    model_input = torch.zeros(2, 2, 100)
    with pytest.raises(ValueError, match=r"\(N, 1, T\)"):
        mel_frechet_distance(model_input, model_input, RATE)
    with pytest.raises(ValueError, match="float"):
        mel_frechet_distance(torch.zeros(2, 100, dtype=torch.long), torch.zeros(2, 100), RATE)
    empty = clips(1, 0).subset(np.array([], dtype=np.int64))
    with pytest.raises(ValueError, match="non-empty"):
        train_audio_classifier(empty, clips(1, 1), steps=1)
