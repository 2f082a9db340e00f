"""Encode a dataset with a tokenizer, caching the codes beside the tokenizer that made them,
and cut fixed-length windows of long code sequences for training priors.

The cache file ``<cache_dir>/<name>.safetensors`` records the SHA-256 of the tokenizer's
``model.safetensors`` and of the input; a different tokenizer or input re-encodes.

- fixed-shape inputs (images): :func:`encode_cached` -> codes ``(N, ...)``;
- variable-length clips (audio): :func:`encode_clips_cached` -> :class:`EncodedClips`, codes
  ``(Q, total_frames)`` back to back with frame offsets; :class:`CodeWindows` draws seeded
  random ``(Q, window)`` windows for training and :func:`fixed_windows` cuts the held-out set.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from ..modeling import WEIGHTS_NAME, atomic_write


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@torch.no_grad()
def encode_batches(tokenizer, x: torch.Tensor, batch_size: int = 256,
                   device: str | torch.device = "cpu", progress: bool = True,
                   desc: str = "encode") -> torch.Tensor:
    """Encode ``x`` (N, ...) in batches on ``device``; returns CPU LongTensor codes (N, ...)."""
    if len(x) == 0:
        raise ValueError("expected a non-empty dataset to encode, got 0 items")
    was_training = tokenizer.training
    tokenizer.eval()
    out = []
    for start in tqdm(range(0, len(x), batch_size), desc=desc, disable=not progress, leave=False):
        out.append(tokenizer.encode(x[start:start + batch_size].to(device)).cpu())
    tokenizer.train(was_training)
    return torch.cat(out)


def encode_cached(tokenizer, tokenizer_dir: str | os.PathLike, name: str, x: torch.Tensor,
                  cache_dir: str | os.PathLike, batch_size: int = 256,
                  device: str | torch.device = "cpu", progress: bool = True) -> torch.Tensor:
    """Codes of ``x`` under ``tokenizer`` (saved at ``tokenizer_dir``), from cache when valid."""
    key = f"{file_sha256(Path(tokenizer_dir) / WEIGHTS_NAME)}:{tuple(x.shape)}"
    path = Path(cache_dir) / f"{name}.safetensors"
    cached = _load_cache(path, key)
    if cached is not None and set(cached) == {"codes"}:
        return cached["codes"]
    codes = encode_batches(tokenizer, x, batch_size, device, progress, desc=f"encode {name}")
    _save_cache(path, key, {"codes": codes})
    return codes


def _load_cache(path: Path, key: str) -> dict[str, torch.Tensor] | None:
    """The tensors of a cache file whose metadata key is ``key``; None if absent, stale or corrupt."""
    if not path.is_file():
        return None
    try:
        from safetensors import safe_open
        with safe_open(str(path), "pt") as f:
            if (f.metadata() or {}).get("key") != key:
                return None
        return load_file(str(path))
    except (SafetensorError, OSError):
        return None  # corrupt cache: re-encode


def _save_cache(path: Path, key: str, tensors: dict[str, torch.Tensor]) -> None:
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={"key": key}))


# --------------------------------------------------------------------------- variable-length clips
@dataclass
class EncodedClips:
    """Codes of variable-length clips, back to back along time.

    codes:   LongTensor ``(Q, total_frames)``; clip ``i`` is ``codes[:, offsets[i]:offsets[i + 1]]``.
    offsets: LongTensor ``(n + 1,)`` frame offsets.
    labels:  LongTensor ``(n,)`` class ids.
    """

    codes: torch.Tensor
    offsets: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def clip(self, i: int) -> torch.Tensor:
        """Codes of clip ``i``, ``(Q, frames_i)``."""
        return self.codes[:, int(self.offsets[i]):int(self.offsets[i + 1])]

    def subset(self, index) -> "EncodedClips":
        """The clips at ``index`` (ints or a bool mask), in that order."""
        index = torch.as_tensor(index)
        if index.dtype == torch.bool:
            index = index.nonzero()[:, 0]
        parts = [self.clip(int(i)) for i in index]
        lengths = torch.tensor([p.shape[1] for p in parts], dtype=torch.long)
        codes = torch.cat(parts, 1) if parts else self.codes[:, :0]
        return EncodedClips(codes, torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)]),
                            self.labels[index])


@torch.no_grad()
def encode_clips(tokenizer, clips, batch_size: int = 16, device: str | torch.device = "cpu",
                 progress: bool = True, desc: str = "encode") -> EncodedClips:
    """Encode :class:`vqgen.data.audio.AudioClips` with an audio tokenizer.

    Clips are batched in order of length and zero-padded to the longest of their batch (so
    padding stays small); each clip keeps its own ``ceil(T_i / hop_length)`` frames. Returns
    CPU codes. Raises ``ValueError`` for an empty set of clips.
    """
    if len(clips) == 0:
        raise ValueError("expected at least one clip to encode, got 0")
    lengths = np.diff(clips.offsets)
    order = np.argsort(lengths, kind="stable")
    hop = tokenizer.hop_length
    per_clip: list[torch.Tensor | None] = [None] * len(clips)
    was_training = tokenizer.training
    tokenizer.eval()
    for start in tqdm(range(0, len(order), batch_size), desc=desc, disable=not progress, leave=False):
        index = order[start:start + batch_size]
        longest = int(lengths[index].max())
        wave = torch.zeros(len(index), 1, longest)
        for row, i in enumerate(index):
            wave[row, 0, :lengths[i]] = clips.clip(int(i))
        codes = tokenizer.encode(wave.to(device), clips.sample_rate).cpu()     # (b, Q, frames)
        for row, i in enumerate(index):
            per_clip[i] = codes[row, :, :-(-int(lengths[i]) // hop)]
    tokenizer.train(was_training)
    frames = torch.tensor([c.shape[1] for c in per_clip], dtype=torch.long)
    return EncodedClips(torch.cat(per_clip, 1),
                        torch.cat([torch.zeros(1, dtype=torch.long), frames.cumsum(0)]),
                        torch.as_tensor(np.asarray(clips.labels), dtype=torch.long))


def encode_clips_cached(tokenizer, tokenizer_dir: str | os.PathLike, name: str, clips,
                        cache_dir: str | os.PathLike, batch_size: int = 16,
                        device: str | torch.device = "cpu", progress: bool = True) -> EncodedClips:
    """:func:`encode_clips`, cached as ``<cache_dir>/<name>.safetensors``; the cache is valid
    while the tokenizer weights and the clips (audio, offsets, labels, rate) are the same."""
    h = hashlib.sha256()
    for arr in (clips.audio, clips.offsets, clips.labels):
        h.update(np.ascontiguousarray(arr).tobytes())
    key = f"{file_sha256(Path(tokenizer_dir) / WEIGHTS_NAME)}:{h.hexdigest()}:{clips.sample_rate}"
    path = Path(cache_dir) / f"{name}.safetensors"
    cached = _load_cache(path, key)
    if cached is not None and set(cached) == {"codes", "offsets", "labels"}:
        return EncodedClips(**cached)
    enc = encode_clips(tokenizer, clips, batch_size, device, progress, desc=f"encode {name}")
    _save_cache(path, key, {"codes": enc.codes, "offsets": enc.offsets, "labels": enc.labels})
    return enc


# --------------------------------------------------------------------------- windows
def _streams(encoded: EncodedClips, join: bool) -> tuple[torch.Tensor, list[tuple[int, int, int]]]:
    """Codes reordered so each stream is contiguous, and the streams ``(start, end, label)``.

    ``join=True``: one stream per label, that label's clips back to back in their order;
    ``join=False``: one stream per clip.
    """
    if not join:
        return encoded.codes, [(int(encoded.offsets[i]), int(encoded.offsets[i + 1]),
                                int(encoded.labels[i])) for i in range(len(encoded))]
    parts, streams, pos = [], [], 0
    for label in torch.unique(encoded.labels).tolist():
        clips = [encoded.clip(int(i)) for i in (encoded.labels == label).nonzero()[:, 0]]
        length = sum(c.shape[1] for c in clips)
        parts += clips
        streams.append((pos, pos + length, int(label)))
        pos += length
    return torch.cat(parts, 1), streams


class CodeWindows(Dataset):
    """Random fixed-length windows of encoded clips, for training priors on ``(Q, window)`` codes.

    Item ``i`` is ``(codes (Q, window) LongTensor, label int)``: a window drawn uniformly over
    every valid start position of every stream, from a generator seeded with ``(seed, i)``. Items
    are thus a pure function of ``(seed, i)``: the training loop's per-epoch order and saved batch
    position make resume exact, with any number of workers or ranks. ``join=True`` (default)
    puts each label's clips back to back first, so windows may span clip boundaries and clips
    shorter than the window still count; ``join=False`` keeps windows inside single clips and
    drops clips shorter than ``window``. ``length`` (default ``coverage`` times the number of
    non-overlapping windows in the data) is the number of distinct items, one epoch.

    Raises ``ValueError`` for a window < 1 or when no stream is at least ``window`` frames long.
    """

    def __init__(self, encoded: EncodedClips, window: int, seed: int = 0, join: bool = True,
                 length: int | None = None, coverage: int = 8):
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise ValueError(f"window must be an int >= 1 frames, got {window!r}")
        self.codes, streams = _streams(encoded, join)
        streams = [s for s in streams if s[1] - s[0] >= window]
        if not streams:
            longest = max((int(f) for f in encoded.offsets.diff()), default=0)
            raise ValueError(f"no {'label stream' if join else 'clip'} is at least window={window} "
                             f"frames long (the longest clip has {longest}); use a shorter window")
        self.window, self.seed = window, seed
        self.starts = torch.tensor([s[0] for s in streams], dtype=torch.long)
        self.labels = torch.tensor([s[2] for s in streams], dtype=torch.long)
        # start positions per stream, cumulated: a uniform draw over all of them picks a window
        self.cum_positions = torch.tensor([s[1] - s[0] - window + 1 for s in streams]).cumsum(0)
        frames = sum(s[1] - s[0] for s in streams)
        self.length = length if length is not None else max(1, coverage * (frames // window))
        if isinstance(self.length, bool) or not isinstance(self.length, int) or self.length < 1:
            raise ValueError(f"length must be None or an int >= 1, got {length!r}")

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        if not 0 <= i < self.length:
            raise IndexError(f"window index {i} out of range [0, {self.length})")
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + i)
        pos = int(torch.randint(int(self.cum_positions[-1]), (), generator=gen))
        s = int(torch.searchsorted(self.cum_positions, pos, right=True))
        offset = pos - (int(self.cum_positions[s - 1]) if s else 0)
        start = int(self.starts[s]) + offset
        return self.codes[:, start:start + self.window].clone(), int(self.labels[s])


def fixed_windows(encoded: EncodedClips, window: int, join: bool = True
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Every non-overlapping window, in order (for held-out evaluation): codes
    ``(M, Q, window)`` and labels ``(M,)``; each stream's tail shorter than ``window`` is
    dropped. Streams as :class:`CodeWindows`. Raises ``ValueError`` when no window fits."""
    codes, streams = _streams(encoded, join)
    out, labels = [], []
    for start, end, label in streams:
        for lo in range(start, end - window + 1, window):
            out.append(codes[:, lo:lo + window])
            labels.append(label)
    if not out:
        raise ValueError(f"no stream is at least window={window} frames long")
    return torch.stack(out), torch.tensor(labels, dtype=torch.long)
