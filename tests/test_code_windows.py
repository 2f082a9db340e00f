"""Encoded variable-length clips and the seeded random windows priors train on."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from vqgen.data.audio import pack_clips
from vqgen.data.codes import (CodeWindows, EncodedClips, encode_clips, encode_clips_cached,
                              fixed_windows)


def encoded(lengths=(7, 3, 9, 4), labels=(0, 1, 0, 1), q=2) -> EncodedClips:
    """Codes whose value encodes (clip, frame, level): 1000 * clip + 10 * frame + level."""
    parts = []
    for c, n in enumerate(lengths):
        t = torch.arange(n)
        parts.append(1000 * c + 10 * t[None] + torch.arange(q)[:, None])
    offsets = torch.tensor([0, *np.cumsum(lengths)], dtype=torch.long)
    return EncodedClips(torch.cat(parts, 1), offsets, torch.tensor(labels))


def test_encoded_clips_clip_and_subset():
    enc = encoded()
    assert enc.clip(2).shape == (2, 9) and int(enc.clip(2)[1, 3]) == 2031
    sub = enc.subset(enc.labels == 1)
    assert len(sub) == 2 and sub.labels.tolist() == [1, 1]
    assert torch.equal(sub.clip(1), enc.clip(3))


def test_joined_windows_come_from_one_label_stream():
    enc = encoded()
    ds = CodeWindows(enc, window=5, seed=0)
    # label 0 stream: clip 0 (7) + clip 2 (9); label 1: clip 1 (3) + clip 3 (4) = 7 frames
    assert len(ds) == 8 * ((16 + 7) // 5)
    streams = {0: torch.cat([enc.clip(0), enc.clip(2)], 1), 1: torch.cat([enc.clip(1), enc.clip(3)], 1)}
    seen_starts = set()
    for i in range(len(ds)):
        codes, label = ds[i]
        assert codes.shape == (2, 5) and codes.dtype == torch.long
        stream = streams[label]
        starts = [s for s in range(stream.shape[1] - 4) if torch.equal(stream[:, s:s + 5], codes)]
        assert len(starts) == 1, f"item {i} is not a window of its label's stream"
        seen_starts.add((label, starts[0]))
    assert len(seen_starts) > 10  # windows start at many places (12 + 3 possible)


def test_windows_are_a_pure_function_of_seed_and_index():
    enc = encoded()
    a, b = CodeWindows(enc, 4, seed=1), CodeWindows(enc, 4, seed=1)
    order = list(range(len(a)))[::-1]
    backwards = {i: b[i] for i in order}         # any access order gives the same items
    for i in range(len(a)):
        codes, label = a[i]
        assert torch.equal(codes, backwards[i][0]) and label == backwards[i][1]
    other = CodeWindows(enc, 4, seed=2)
    assert any(not torch.equal(a[i][0], other[i][0]) for i in range(len(a)))


def test_unjoined_windows_stay_inside_clips_and_skip_short_ones():
    enc = encoded()
    ds = CodeWindows(enc, window=5, join=False, length=50)
    assert len(ds) == 50
    for i in range(50):
        codes, label = ds[i]
        clip = int(codes[0, 0]) // 1000
        assert clip in (0, 2) and label == 0          # clips 1 and 3 are shorter than 5
        frames = (codes[0] % 1000) // 10
        assert torch.equal(frames, torch.arange(int(frames[0]), int(frames[0]) + 5))


def test_window_errors():
    enc = encoded()
    with pytest.raises(ValueError, match="window=30"):
        CodeWindows(enc, window=30)
    with pytest.raises(ValueError, match="window"):
        CodeWindows(enc, window=0)
    with pytest.raises(IndexError):
        CodeWindows(enc, 4, length=3)[3]


def test_fixed_windows_tile_each_stream():
    codes, labels = fixed_windows(encoded(), window=5)
    assert codes.shape == (3 + 1, 2, 5)                # 16 frames -> 3 windows, 7 -> 1
    assert labels.tolist() == [0, 0, 0, 1]
    assert int(codes[1, 0, 0]) == 50                   # frame 5 of label 0's stream: clip 0
    assert int(codes[2, 0, 0]) == 2000 + 30            # frame 10: frame 3 of clip 2


def test_encode_clips_lengths_and_cache(tmp_path, monkeypatch):
    from vqgen.tokenizers.audio import audio_tokenizer_debug
    torch.manual_seed(0)
    tok = audio_tokenizer_debug().eval()
    tok_dir = tok.save_pretrained(tmp_path / "tokenizer")
    rng = np.random.default_rng(0)
    lengths = [1000, 3300, 640, 2000, 321]
    clips = pack_clips([0.3 * rng.standard_normal(n).astype(np.float32) for n in lengths],
                       [0, 1, 0, 1, 1], ["a", "b"], 16000)
    enc = encode_clips_cached(tok, tok_dir, "train", clips, tmp_path / "codes", batch_size=2,
                              progress=False)
    hop = tok.hop_length
    assert enc.offsets.diff().tolist() == [-(-n // hop) for n in lengths]
    assert enc.codes.shape[0] == tok.num_codebooks and enc.labels.tolist() == [0, 1, 0, 1, 1]
    # the longest clip alone in its batch encodes exactly as on its own
    solo = tok.encode(clips.clip(1)[None, None], 16000)[0]
    assert torch.equal(enc.clip(1), solo)
    # a second call reads the cache (encoding again would fail here)
    monkeypatch.setattr(tok, "encode", lambda *a, **k: (_ for _ in ()).throw(AssertionError("re-encoded")))
    again = encode_clips_cached(tok, tok_dir, "train", clips, tmp_path / "codes", progress=False)
    assert torch.equal(again.codes, enc.codes) and torch.equal(again.offsets, enc.offsets)
    with pytest.raises(ValueError, match="at least one clip"):
        encode_clips(tok, clips.subset(np.array([], dtype=np.int64)))
