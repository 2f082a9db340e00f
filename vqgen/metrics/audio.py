"""Audio metrics: SI-SDR, multi-resolution STFT and mel distances, STOI, PESQ, per-level code
statistics, and :func:`evaluate_tokenizer` (a tokenizer over a set of clips at each bitrate).

Waves are float ``(N, 1, T)`` or ``(N, T)`` in [-1, 1] at one ``sample_rate``; pairs must have
equal shapes (``ValueError`` otherwise). Functions return plain floats (means over clips).
"""
from __future__ import annotations

import importlib.util
from typing import Any, Iterable

import torch

from ..losses import MelLoss, MultiResolutionSTFTLoss, _check_pair
from . import codebook_stats

__all__ = ["si_sdr", "stft_distance", "mel_distance", "stoi", "pesq", "level_code_stats",
           "evaluate_tokenizer", "has_pesq"]


@torch.no_grad()
def si_sdr(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Mean scale-invariant SDR in dB (torchmetrics, zero-mean)."""
    from torchmetrics.functional.audio import scale_invariant_signal_distortion_ratio
    p, t = _check_pair(pred, target)
    return float(scale_invariant_signal_distortion_ratio(p, t, zero_mean=True).mean())


@torch.no_grad()
def stft_distance(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Multi-resolution STFT distance (spectral convergence + log-magnitude L1; FFT 256/512/1024)."""
    return float(MultiResolutionSTFTLoss().to(pred.device)(pred, target))


@torch.no_grad()
def mel_distance(pred: torch.Tensor, target: torch.Tensor, sample_rate: int) -> float:
    """L1 distance of natural-log mel spectrograms (64 bands, FFT 512/1024)."""
    return float(MelLoss(sample_rate).to(pred.device)(pred, target))


@torch.no_grad()
def stoi(pred: torch.Tensor, target: torch.Tensor, sample_rate: int) -> float:
    """Mean short-time objective intelligibility (torchmetrics with ``pystoi``; in [0, 1])."""
    from torchmetrics.functional.audio import short_time_objective_intelligibility
    p, t = _check_pair(pred, target)
    return float(short_time_objective_intelligibility(p.cpu(), t.cpu(), sample_rate).mean())


def has_pesq() -> bool:
    return importlib.util.find_spec("pesq") is not None


@torch.no_grad()
def pesq(pred: torch.Tensor, target: torch.Tensor, sample_rate: int) -> float:
    """Mean wideband PESQ (16 kHz; other rates are resampled). Needs the ``pesq`` package."""
    from torchmetrics.functional.audio import perceptual_evaluation_speech_quality
    from ..data.audio import resample
    p, t = _check_pair(pred, target)
    p, t = resample(p.cpu(), sample_rate, 16000), resample(t.cpu(), sample_rate, 16000)
    return float(perceptual_evaluation_speech_quality(p, t, 16000, "wb").mean())


def level_code_stats(codes: torch.Tensor, codebook_size: int) -> dict[str, float]:
    """Per-level perplexity and usage of audio codes ``(N, Q, frames)``:
    ``perplexity_level<i>``, ``usage_level<i>`` and the minimum perplexity over levels."""
    out: dict[str, float] = {}
    for i in range(codes.shape[1]):
        s = codebook_stats(codes[:, i], codebook_size)
        out[f"perplexity_level{i}"], out[f"usage_level{i}"] = s["perplexity"], s["usage"]
    out["perplexity_min_level"] = min(out[f"perplexity_level{i}"] for i in range(codes.shape[1]))
    return out


@torch.no_grad()
def evaluate_tokenizer(tokenizer: Any, waves: torch.Tensor, levels: Iterable[int] | None = None,
                       batch_size: int = 16, with_stoi: bool = True, prefix: str = "test_") -> dict[str, float]:
    """Encode ``waves`` ``(N, 1, T)`` (at the tokenizer's rate) and score decoding with each
    number of levels in ``levels`` (default 1, 2, 4, ... up to Q, and Q).

    Keys (with ``prefix``): ``si_sdr_<kbps>kbps``, ``mel_distance_<kbps>kbps``,
    ``stft_distance_<kbps>kbps``, ``stoi_<kbps>kbps`` and ``pesq_<kbps>kbps`` (when installed);
    ``<kbps>`` is the bitrate with one decimal and ``.`` -> ``p`` stripped of ``.0`` (``4kbps``,
    ``0p5kbps``). Plus per-level code statistics (no prefix) from the full-depth codes.
    """
    q = tokenizer.num_codebooks
    if levels is None:
        levels = sorted({2 ** i for i in range(q.bit_length()) if 2 ** i <= q} | {q})
    device = next(tokenizer.parameters()).device
    t = waves.shape[-1]
    codes = torch.cat([tokenizer.encode(w.to(device)) for w in waves.split(batch_size)])   # (N, Q, F)
    out: dict[str, float] = {}
    for n in levels:
        recon = torch.cat([tokenizer.decode(c[:, :n].to(device), length=t).cpu()
                           for c in codes.split(batch_size)])
        tag = f"{tokenizer.bitrate(n):.1f}".rstrip("0").rstrip(".").replace(".", "p") + "kbps"
        out[f"{prefix}si_sdr_{tag}"] = si_sdr(recon, waves)
        out[f"{prefix}mel_distance_{tag}"] = mel_distance(recon, waves, tokenizer.sample_rate)
        out[f"{prefix}stft_distance_{tag}"] = stft_distance(recon, waves)
        if with_stoi:
            out[f"{prefix}stoi_{tag}"] = stoi(recon, waves, tokenizer.sample_rate)
        if has_pesq() and tokenizer.sample_rate >= 16000:
            out[f"{prefix}pesq_{tag}"] = pesq(recon, waves, tokenizer.sample_rate)
    out.update(level_code_stats(codes.cpu(), tokenizer.codebook_size))
    return out
