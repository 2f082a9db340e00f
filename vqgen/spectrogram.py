"""Spectrogram pictures of waveforms, for sample folders and reports.

:func:`spectrogram_image` turns one waveform into an RGB image ``(3, H, W)`` in [0, 1]: a
log-mel (default) or log-magnitude STFT spectrogram in dB relative to its own peak, clipped to
``top_db`` below it, coloured with a perceptually ordered dark-to-bright map, low frequencies
at the bottom (frequency axis up) and time running left to right. :func:`save_spectrogram_png`
writes one atomically; :func:`spectrogram_grid` tiles several (equal lengths) for an overview.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

__all__ = ["spectrogram_image", "save_spectrogram_png", "spectrogram_grid", "colormap"]

# A dark-purple -> red -> orange -> pale-yellow ramp (monotone in lightness), RGB in [0, 1].
_ANCHORS = torch.tensor([
    [0.00, 0.00, 0.02], [0.17, 0.06, 0.35], [0.45, 0.12, 0.50], [0.73, 0.22, 0.45],
    [0.93, 0.40, 0.30], [0.99, 0.67, 0.38], [0.99, 0.92, 0.70],
])


def colormap(values: torch.Tensor) -> torch.Tensor:
    """Map values in [0, 1] of shape ``(...)`` to RGB ``(3, ...)`` by linear interpolation
    between the anchor colours (values outside [0, 1] are clipped)."""
    x = values.float().clamp(0, 1) * (len(_ANCHORS) - 1)
    lo = x.floor().long().clamp(max=len(_ANCHORS) - 2)
    frac = (x - lo).unsqueeze(-1)
    rgb = _ANCHORS[lo] * (1 - frac) + _ANCHORS[lo + 1] * frac   # (..., 3)
    return rgb.movedim(-1, 0)


def _power_spectrogram(wave: torch.Tensor, sample_rate: int, kind: str, n_fft: int, hop: int,
                       n_mels: int) -> torch.Tensor:
    """``(T,)`` -> power ``(freq, frames)``: mel bands or linear STFT bins."""
    import torchaudio
    if kind == "mel":
        transform = torchaudio.transforms.MelSpectrogram(
            sample_rate, n_fft=n_fft, hop_length=hop, n_mels=n_mels, power=2.0)
    elif kind == "linear":
        transform = torchaudio.transforms.Spectrogram(n_fft=n_fft, hop_length=hop, power=2.0)
    else:
        raise ValueError(f"kind must be 'mel' or 'linear', got {kind!r}")
    return transform(wave.float())


def spectrogram_image(wave: torch.Tensor, sample_rate: int, kind: str = "mel",
                      n_fft: int | None = None, hop: int | None = None, n_mels: int = 80,
                      top_db: float = 80.0) -> torch.Tensor:
    """RGB spectrogram ``(3, freq, frames)`` in [0, 1] of ``wave`` ``(T,)``, ``(1, T)`` or
    ``(1, 1, T)`` (mono, float). ``kind``: ``"mel"`` (``n_mels`` bands) or ``"linear"`` (STFT
    bins). Defaults: a 32 ms window and a 10 ms hop at ``sample_rate``. Raises ``ValueError``
    for multi-channel, empty, non-float or non-finite input, or a bad ``kind``/``sample_rate``."""
    if not isinstance(wave, torch.Tensor) or not wave.is_floating_point():
        raise ValueError(f"expected a float waveform tensor, got {getattr(wave, 'dtype', type(wave))}")
    flat = wave.detach().cpu().reshape(-1) if wave.dim() <= 1 or all(
        s == 1 for s in wave.shape[:-1]) else None
    if flat is None:
        raise ValueError(f"expected one mono waveform (T,), (1, T) or (1, 1, T), got {tuple(wave.shape)}")
    if flat.numel() == 0 or not bool(torch.isfinite(flat).all()):
        raise ValueError(f"expected a non-empty finite waveform, got {flat.numel()} samples "
                         f"({int((~torch.isfinite(flat)).sum())} non-finite)")
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, int) or sample_rate <= 0:
        raise ValueError(f"sample_rate must be a positive int, got {sample_rate!r}")
    n_fft = n_fft or 1 << max(6, round(0.032 * sample_rate).bit_length() - 1)   # ~32 ms, power of 2
    hop = hop or max(1, sample_rate // 100)
    if flat.numel() < n_fft:
        flat = torch.nn.functional.pad(flat, (0, n_fft - flat.numel()))
    power = _power_spectrogram(flat, sample_rate, kind, n_fft, hop, n_mels)
    db = 10 * torch.log10(power.clamp_min(1e-12))
    db = (db - db.max()).clamp_min(-top_db)                     # 0 dB at the peak
    return colormap(1 + db / top_db).flip(1)                    # low frequencies at the bottom


def save_spectrogram_png(wave: torch.Tensor, sample_rate: int, path: str | os.PathLike,
                         **options) -> Path:
    """Write :func:`spectrogram_image` of ``wave`` as a PNG (atomically); returns the path."""
    from .pipeline import save_png
    save_png(spectrogram_image(wave, sample_rate, **options), path)
    return Path(path)


def spectrogram_grid(waves: torch.Tensor, sample_rate: int, nrow: int, pad: int = 2,
                     **options) -> torch.Tensor:
    """Spectrograms of ``waves`` ``(n, 1, T)`` tiled ``nrow`` per row into one ``(3, H, W)``
    image (white padding of ``pad`` pixels, as ``pipeline.image_grid``)."""
    if not isinstance(waves, torch.Tensor) or waves.dim() != 3 or waves.shape[1] != 1 or not len(waves):
        raise ValueError(f"expected waveforms (n, 1, T) with n >= 1, got "
                         f"{tuple(waves.shape) if isinstance(waves, torch.Tensor) else type(waves).__name__}")
    from .pipeline import image_grid
    images = torch.stack([spectrogram_image(w, sample_rate, **options) for w in waves])
    return image_grid(images, nrow, pad)
