"""Speech data: espeak-ng synthesis, the fixed split (unseen sentences and voices), the cache,
audio folders."""
import importlib.util

import numpy as np
import pytest
import soundfile as sf
import torch

from vqgen.data.audio import ClipSegments, read_audio, write_audio
from vqgen.data.speech import VOICES, load_speech, load_speech_dataset, sentences

needs_espeak = pytest.mark.skipif(importlib.util.find_spec("espeakng_loader") is None,
                                  reason="espeakng-loader is not installed (pip install espeakng-loader)")
TINY = dict(clips_per_voice=2, test_clips_per_voice=1, num_unseen_voices=2, max_seconds=1.0)


def test_sentences_are_plain_unique_and_sorted():
    s = sentences()
    assert len(s) > 100 and s == sorted(set(s))
    assert all(x[-1] in ".!?" and 25 <= len(x) <= 140 for x in s)


@needs_espeak
def test_split_has_unseen_sentences_and_voices_and_is_deterministic(tmp_path):
    a = load_speech(tmp_path / "a", progress=False, **TINY)
    b = load_speech(tmp_path / "b", progress=False, **TINY)
    assert not set(a.train_sentences) & set(a.test_sentences)          # sentences never seen
    unseen = [a.classes.index(v) for v in a.unseen_voices]
    assert len(unseen) == 2 and not set(unseen) & set(a.train.labels.tolist())
    assert set(unseen) <= set(a.test.labels.tolist())
    assert a.test_unseen.tolist() == [int(l) in unseen for l in a.test.labels]
    assert a.classes == [v[0] for v in VOICES]
    assert len(a.train) == 2 * (len(VOICES) - 2) and len(a.test) == len(VOICES)
    # the split is a function of the seed (espeak-ng's audio itself is not bit-reproducible
    # between calls, which is why the prepared arrays are cached)
    for field in ("train_sentences", "test_sentences", "test_unseen"):
        assert np.array_equal(getattr(a, field), getattr(b, field)), field
    assert np.array_equal(a.train.labels, b.train.labels) and np.array_equal(a.test.labels, b.test.labels)
    assert a.unseen_voices == b.unseen_voices
    assert load_speech(tmp_path / "a", progress=False, **TINY).train.audio.tobytes() == a.train.audio.tobytes()
    for clips in (a.train, a.test):
        assert clips.audio.dtype == np.int16 and clips.sample_rate == 16000
        lengths = np.diff(clips.offsets)
        assert (lengths > 0).all() and (lengths <= 16000).all()      # max_seconds=1.0
        assert np.abs(clips.clip(0).numpy()).max() == pytest.approx(0.9, abs=1e-3)   # peak-normalised
    assert (tmp_path / "a" / "speech" / "prepared" / "manifest.json").is_file()


def test_audio_folder_labels_from_subfolders(tmp_path):
    for voice, rate in (("alice", 16000), ("bob", 8000), ("bob", 22050)):
        d = tmp_path / "corpus" / voice
        d.mkdir(parents=True, exist_ok=True)
        sf.write(d / f"{rate}.wav", 0.1 * np.random.default_rng(rate).standard_normal(rate // 2), rate)
    data = load_speech_dataset(f"folder:{tmp_path / 'corpus'}", test_fraction=0.3, seed=0)
    assert data.classes == ["alice", "bob"] and len(data.train) + len(data.test) == 3
    assert len(data.test) == 1 and not data.test_unseen.any()
    assert all(np.diff(c.offsets).tolist() == [8000] * len(c) for c in (data.train, data.test))
    with pytest.raises(ValueError, match="'speech' or 'folder:"):
        load_speech_dataset("espeak")
    with pytest.raises(FileNotFoundError):
        load_speech_dataset(f"folder:{tmp_path / 'missing'}")


def test_write_read_round_trip_and_segments(tmp_path):
    wave = 0.5 * torch.sin(torch.arange(4000) / 10.0)
    write_audio(tmp_path / "x.flac", wave, 16000)
    back, rate = read_audio(tmp_path / "x.flac")
    assert rate == 16000 and back.shape == (1, 4000)
    assert (back[0] - wave).abs().max() < 1e-4
    (tmp_path / "bad.wav").write_bytes(b"RIFF....WAVEnot really")
    with pytest.raises(ValueError, match="audio file"):
        read_audio(tmp_path / "bad.wav")


def test_clip_segments_crop_and_pad():
    from vqgen.data.audio import pack_clips
    clips = pack_clips([np.full(100, 0.5, np.float32), np.full(10, -0.5, np.float32)], [0, 1], ["a", "b"], 16000)
    ds = ClipSegments(clips, segment=20, repeats=2)
    assert len(ds) == 4
    wave, label = ds[1]
    assert wave.shape == (1, 20) and label == 1
    assert torch.allclose(wave[0, :10], torch.tensor(-0.5), atol=1e-4) and (wave[0, 10:] == 0).all()
    wave, label = ds[2]
    assert label == 0 and torch.allclose(wave, torch.tensor(0.5), atol=1e-4)
