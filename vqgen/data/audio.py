"""Audio I/O shared by the audio datasets (speech, music) and the audio tokenizer.

- :func:`read_audio` / :func:`write_audio`: soundfile, float32 ``(channels, T)`` in [-1, 1].
- :func:`resample`: ``torchaudio.functional.resample`` for any pair of integer rates.
- :func:`check_sample_rate`: the one validation of a ``sample_rate`` argument.
- :func:`load_audio_folder`: any folder of WAV/FLAC/OGG files (``folder:/path``) as a list of
  mono clips at one rate, labelled by their first-level subfolder when there are subfolders.
- :class:`ClipSegments`: a map-style dataset of fixed-length random crops of variable-length clips
  (the training input of audio tokenizers).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ..modeling import atomic_write

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".aiff", ".aif")

__all__ = ["read_audio", "write_audio", "resample", "check_sample_rate", "load_audio_folder",
           "AudioClips", "ClipSegments", "AUDIO_SUFFIXES"]


def check_sample_rate(sample_rate: object, who: str = "sample_rate") -> int:
    """Return ``sample_rate`` as an int; ``ValueError`` unless it is a positive integer (an
    integral float such as ``16000.0`` is accepted)."""
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, float, np.integer)):
        raise ValueError(f"{who} must be a positive integer (Hz), got {sample_rate!r}")
    if isinstance(sample_rate, float) and not sample_rate.is_integer():
        raise ValueError(f"{who} must be a positive integer (Hz), got {sample_rate!r}")
    if int(sample_rate) <= 0:
        raise ValueError(f"{who} must be a positive integer (Hz), got {sample_rate!r}")
    return int(sample_rate)


def resample(wave: torch.Tensor, orig_rate: int, new_rate: int) -> torch.Tensor:
    """Resample ``wave`` ``(..., T)`` from ``orig_rate`` to ``new_rate`` along the last dim
    (windowed sinc, torchaudio); a no-op when the rates are equal."""
    orig_rate, new_rate = check_sample_rate(orig_rate), check_sample_rate(new_rate)
    if orig_rate == new_rate:
        return wave
    import torchaudio.functional as AF
    g = np.gcd(orig_rate, new_rate)
    return AF.resample(wave, orig_rate // g, new_rate // g)


def read_audio(path: str | os.PathLike) -> tuple[torch.Tensor, int]:
    """Read an audio file with soundfile: float32 ``(channels, T)`` in [-1, 1] and its rate.

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` for a file soundfile
    cannot decode (naming the path and the formats expected).
    """
    import soundfile as sf
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no audio file at {path}")
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)   # (T, channels)
    except (sf.LibsndfileError, RuntimeError, TypeError) as e:
        raise ValueError(f"expected an audio file soundfile can read (WAV/FLAC/OGG/AIFF), "
                         f"got unreadable {path}: {e}") from None
    return torch.from_numpy(np.ascontiguousarray(data.T)), int(rate)


def write_audio(path: str | os.PathLike, wave: torch.Tensor, sample_rate: int) -> Path:
    """Write ``wave`` ``(T,)`` or ``(channels, T)`` (float, clipped to [-1, 1]) atomically as
    16-bit PCM; the container follows the suffix (``.wav``/``.flac``/``.ogg``)."""
    import soundfile as sf
    sample_rate = check_sample_rate(sample_rate)
    path = Path(path)
    w = wave.detach().float().cpu()
    if w.dim() == 1:
        w = w[None]
    if w.dim() != 2:
        raise ValueError(f"write_audio expects (T,) or (channels, T), got shape {tuple(wave.shape)}")
    data = w.clamp(-1, 1).numpy().T
    fmt = {".flac": "FLAC", ".ogg": "OGG"}.get(path.suffix.lower(), "WAV")
    atomic_write(path, lambda tmp: sf.write(tmp, data, sample_rate, format=fmt,
                                            subtype="VORBIS" if fmt == "OGG" else "PCM_16"))
    return path


@dataclass
class AudioClips:
    """Variable-length mono clips at one rate, stored compactly.

    audio:   int16 ``(total_samples,)``: every clip back to back (divide by 32768 for floats).
    offsets: int64 ``(n + 1,)``: clip ``i`` is ``audio[offsets[i]:offsets[i + 1]]``.
    labels:  int64 ``(n,)`` class ids into ``classes``.
    """

    audio: np.ndarray
    offsets: np.ndarray
    labels: np.ndarray
    classes: list[str]
    sample_rate: int

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def clip(self, i: int) -> torch.Tensor:
        """Clip ``i`` as float32 ``(T,)`` in [-1, 1]."""
        a = self.audio[self.offsets[i]:self.offsets[i + 1]]
        return torch.from_numpy(a.astype(np.float32) / 32768.0)

    def subset(self, index: np.ndarray) -> "AudioClips":
        index = np.asarray(index, dtype=np.int64)
        parts = [self.audio[self.offsets[i]:self.offsets[i + 1]] for i in index]
        lengths = np.array([len(p) for p in parts], dtype=np.int64)
        audio = np.concatenate(parts) if parts else np.zeros(0, np.int16)
        return AudioClips(audio, np.concatenate([[0], np.cumsum(lengths)]), self.labels[index],
                          self.classes, self.sample_rate)

    @property
    def seconds(self) -> float:
        return float(self.offsets[-1]) / self.sample_rate


def to_int16(wave: np.ndarray) -> np.ndarray:
    return (np.clip(wave, -1.0, 1.0) * 32767.0).round().astype(np.int16)


def split_clips(arrays: dict, split: str, classes: list[str], sample_rate: int) -> AudioClips:
    """The :class:`AudioClips` of ``split`` from cached arrays (``<split>_audio``,
    ``<split>_offsets``, ``<split>_labels``) as :func:`pack_clips` packed them."""
    return AudioClips(arrays[f"{split}_audio"], arrays[f"{split}_offsets"],
                      arrays[f"{split}_labels"], classes, sample_rate)


def pack_clips(waves: list[np.ndarray], labels: list[int], classes: list[str],
               sample_rate: int) -> AudioClips:
    """Float clips -> :class:`AudioClips` (int16, back to back)."""
    lengths = np.array([len(w) for w in waves], dtype=np.int64)
    audio = np.concatenate([to_int16(w) for w in waves]) if waves else np.zeros(0, np.int16)
    return AudioClips(audio, np.concatenate([[0], np.cumsum(lengths)]),
                      np.asarray(labels, dtype=np.int64), list(classes), sample_rate)


def load_audio_folder(path: str | os.PathLike, sample_rate: int) -> AudioClips:
    """Every audio file under ``path`` (recursively), downmixed to mono and resampled to
    ``sample_rate``. With subfolders, a file's first-level subfolder is its class; otherwise all
    files share the class ``"audio"``. Files are sorted by path (deterministic order).

    Raises ``FileNotFoundError`` for a missing folder and ``ValueError`` when it holds no audio
    file or a file cannot be decoded.
    """
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"no audio folder at {root}")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())
    if not files:
        raise ValueError(f"expected audio files ({', '.join(AUDIO_SUFFIXES)}) under {root}, found none")
    names = [p.relative_to(root).parts[0] if len(p.relative_to(root).parts) > 1 else "audio"
             for p in files]
    classes = sorted(set(names))
    waves = []
    for p in files:
        wave, rate = read_audio(p)
        waves.append(resample(wave.mean(0), rate, sample_rate).numpy())
    return pack_clips(waves, [classes.index(n) for n in names], classes, sample_rate)


class ClipSegments(Dataset):
    """Fixed-length crops of :class:`AudioClips` for tokenizer training.

    Item ``i`` is ``(wave (1, segment), label)``: a crop of clip ``i % n`` at an offset drawn
    from torch's global RNG (a new crop each epoch; the training loop saves that RNG, so resume
    is exact). Clips shorter than ``segment`` are zero-padded at the end. ``repeats`` makes one
    epoch visit every clip that many times.
    """

    def __init__(self, clips: AudioClips, segment: int, repeats: int = 1):
        if segment < 1:
            raise ValueError(f"segment must be >= 1 sample, got {segment}")
        self.clips, self.segment, self.repeats = clips, segment, repeats

    def __len__(self) -> int:
        return len(self.clips) * self.repeats

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        c = i % len(self.clips)
        start, end = int(self.clips.offsets[c]), int(self.clips.offsets[c + 1])
        room = end - start - self.segment
        off = 0 if room <= 0 else int(torch.randint(room + 1, ()))
        a = self.clips.audio[start + off:start + off + self.segment].astype(np.float32) / 32768.0
        wave = torch.zeros(1, self.segment)
        wave[0, :len(a)] = torch.from_numpy(a)
        return wave, int(self.clips.labels[c])
