"""Envelope head: a decoder-side correction of a complex audio codec's spectral envelope.

Why: a complex-spectrum codec trained with least-squares and SI-SDR losses shrinks what it
cannot phase-match, so its output is muffled: the speech full preset's 4 kbps codec keeps 0.1-0.2%
of its energy above 3 kHz and scores STOI 0.80 at SI-SDR +6.1 dB. Its phase is good: the same
decode under the true spectral envelope (smoothed over 4 bins, moved half to three quarters of
the way in dB) scores +6.2 dB and STOI 0.93-0.96 (benchmarks/RESULTS.md). The envelope is what
the codes already carry but the decoder hedged away; this head predicts it back from the codes.
It adds no bits: it reads only what the decoder reads. It is a post-filter: the encoder's code
search scores the codec's decode before it, as a CELP coder's search ignores its post-filter.

What it computes, per STFT frame (``B`` clips, ``F`` bins, ``N`` frames):

- ``E(C)``: the codec's decoded power spectrum (at ``input_gain``, its ``output_gain`` when the
  head was trained), smoothed over ``smooth_bins`` bins either side with a triangle
  (:func:`smooth_bins`), as ``log(E + floor)``;
- the head: a residual conv stack over frames reading the quantized latent ``(B, D, N)`` (what
  the decoder reads) and ``log E(C)``, predicting ``d`` ``(B, F, N)``, the log correction
  towards the input's envelope ``log E(X)``. It is trained with the codec frozen, on the
  distance of ``log E(C) + d`` to ``log E(X)`` in mel bands and bin by bin
  (:class:`EnvelopeHeadConfig`), optionally plus a short-time band-envelope correlation term
  (``stoi_weight``: what STOI scores, made differentiable). Its last conv starts at zero, so a
  fresh head changes nothing;
- the corrected spectrum: every bin of the codec's complex spectrum times
  ``exp(weight * d / 2)`` in magnitude (its phase and fine structure kept), ``weight`` (the
  codec's ``envelope_weight``) the share of the correction applied: the part the codes cannot
  say is noise-like, and SI-SDR charges for it where STOI pays for it.

:class:`vqgen.tokenizers.audio.AudioTokenizer` holds one when its config's ``envelope`` is set;
:func:`envelope_examples` and :class:`EnvelopeWindows` give a head its training data from a
trained codec (the audio recipes' ``envelope_head`` stage). Trained on a frozen codec, a head can
only predict what the codes happen to carry; ``AudioTokenizerConfig.envelope_loss_weight`` then
trains the codec and its head together (the recipes' ``envelope_codec_train``), so that the
encoder learns to code what the head needs.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from ..modeling import ConfigModel
from .layers import ResBlock

if TYPE_CHECKING:  # pragma: no cover
    from .audio import AudioTokenizer

__all__ = ["EnvelopeHeadConfig", "EnvelopeHead", "EnvelopeWindows", "envelope_examples", "smooth_bins",
           "log_envelope", "decoded_power", "coded_envelope", "input_envelope", "third_octave_bands", "band_envelope_correlation"]


def smooth_bins(power: Tensor, bins: int) -> Tensor:
    """``(B, F, N)`` smoothed over ``F`` with a triangular window reaching ``bins`` bins either
    side (edges replicated; ``bins`` 0: unchanged)."""
    if bins == 0:
        return power
    kernel = torch.cat([torch.arange(1, bins + 2), torch.arange(bins, 0, -1)]).to(power)
    b, f, n = power.shape
    rows = F.pad(power.transpose(1, 2).reshape(b * n, 1, f), (bins, bins), mode="replicate")
    return F.conv1d(rows, (kernel / kernel.sum()).view(1, 1, -1)).view(b, n, f).transpose(1, 2)


def decoded_power(spec: Tensor, power: float, gain: float) -> Tensor:
    """A codec's compressed complex spectrum (real | imag ``(B, 2F, N)``, magnitudes ``|X| **
    power``) -> the power spectrum ``|X| ** 2`` ``(B, F, N)`` of its decode at ``gain``."""
    re, im = spec.float().chunk(2, dim=1)
    return (re.square() + im.square()).pow(1.0 / power) * gain ** 2


def coded_envelope(spec: Tensor, power: float, config: "EnvelopeHeadConfig") -> Tensor:
    """``log E(C)`` ``(B, F, N)`` of a codec's compressed complex spectrum (real | imag ``(B, 2F,
    N)``): its decode's power at ``config.input_gain``, smoothed (:func:`log_envelope`)."""
    return log_envelope(decoded_power(spec, power, config.input_gain), config.smooth_bins, config.floor)


def input_envelope(stft: Tensor, config: "EnvelopeHeadConfig") -> Tensor:
    """``log E(X)`` ``(B, F, N)`` of an input's complex STFT, smoothed (:func:`log_envelope`)."""
    return log_envelope(stft.abs().square(), config.smooth_bins, config.floor)


def third_octave_bands(bins: int, sample_rate: int, num: int = 15, low: float = 150.0) -> Tensor:
    """``(bins, num)`` 0/1 matrix of STOI's one-third-octave bands: centre ``low * 2 ** (k /
    3)``, edges a sixth of an octave either side, over the ``bins`` STFT bins of 0 ..
    ``sample_rate / 2`` (as STOI's 15 bands from 150 Hz, up to about 4.3 kHz)."""
    freqs = torch.arange(bins, dtype=torch.float64) * (sample_rate / 2) / (bins - 1)
    centre = low * 2.0 ** (torch.arange(num, dtype=torch.float64) / 3)
    edges_lo, edges_hi = centre * 2.0 ** (-1 / 6), centre * 2.0 ** (1 / 6)
    return ((freqs[:, None] >= edges_lo) & (freqs[:, None] < edges_hi)).float()


def band_envelope_correlation(log_power: Tensor, target_log_power: Tensor, bands: Tensor, frames: int,
                              dynamic_range: float = 40.0) -> Tensor:
    """STOI's core, made differentiable: the band envelopes (square roots of band powers,
    ``bands`` ``(F, K)``) of two log power spectra ``(B, F, N)`` correlated over ``frames``-frame
    segments (hop ``frames // 6``), each segment weighted by the share of its frames within
    ``dynamic_range`` dB of the loudest target frame of its clip (STOI drops quieter frames);
    the weighted mean correlation over bands and segments, a scalar in [-1, 1]. Unlike STOI it
    neither clips nor resamples: a training signal, not the metric (that is torchmetrics')."""
    n = log_power.shape[-1]
    if n < frames:
        raise ValueError(f"band_envelope_correlation: expected at least {frames} frames, got {n}")
    hop = max(1, frames // 6)
    env_y = torch.einsum("bfn,fk->bkn", log_power.float().exp(), bands).clamp(min=1e-10).sqrt()
    env_x = torch.einsum("bfn,fk->bkn", target_log_power.float().exp(), bands).clamp(min=1e-10).sqrt()
    level = target_log_power.float().exp().sum(1).clamp(min=1e-20).log10().mul(10)          # (B, N) dB
    active = (level >= level.amax(-1, keepdim=True) - dynamic_range).float()
    seg_y, seg_x = env_y.unfold(-1, frames, hop), env_x.unfold(-1, frames, hop)             # (B, K, S, frames)
    seg_y, seg_x = seg_y - seg_y.mean(-1, keepdim=True), seg_x - seg_x.mean(-1, keepdim=True)
    corr = (seg_y * seg_x).sum(-1) / (seg_y.norm(dim=-1) * seg_x.norm(dim=-1) + 1e-8)     # (B, K, S)
    weight = active.unfold(-1, frames, hop).mean(-1)[:, None]                                # (B, 1, S)
    return (corr * weight).sum() / (weight.sum() * corr.shape[1]).clamp(min=1e-8)


def log_envelope(power: Tensor, bins: int, floor: float) -> Tensor:
    """Power spectrum ``(B, F, N)`` -> ``log(smooth_bins(power, bins) + floor)``."""
    return smooth_bins(power.float(), bins).add(floor).log()


@dataclass
class EnvelopeHeadConfig:
    """``bins`` (STFT bins, ``n_fft // 2 + 1``) and ``latent_dim`` (the codec's) fix the head's
    inputs; ``channels`` / ``blocks`` / ``kernel_size`` its residual conv stack (over frames);
    ``smooth_bins`` the envelope's smoothing half-width in bins; ``floor`` the power added
    before the log (quiet bins stop counting below it). Loss (:meth:`EnvelopeHead.loss`): the
    L1 distance of log energies in ``mel_bands`` mel bands (triangles over 0 .. ``sample_rate``
    / 2, each normalised to sum 1; 0: none) plus ``bin_weight`` times the L1 distance bin by bin;
    the band term scores what a listener hears of the envelope, not the bin-level noise of a
    noisy band, which no code can predict. ``stoi_weight`` (0: off) adds that times ``1 -``
    :func:`band_envelope_correlation` of the envelope corrected ``applied_weight`` of the way
    (the share the codec will apply, its ``envelope_weight``) in STOI's one-third-octave bands
    over ``stoi_frames``-frame segments (384 ms at 100 frames/s): an L1 fit in dB gives a
    conditional median, flatter in time than speech, and STOI scores exactly that time course.
    ``input_gain``: the codec's ``output_gain`` when the
    head was trained; ``log E(C)`` is always measured at it, so the codec's level can be
    calibrated again afterwards without moving the head's inputs."""

    bins: int = 321
    latent_dim: int = 128
    channels: int = 128
    blocks: int = 6
    kernel_size: int = 5
    smooth_bins: int = 12
    floor: float = 1e-6
    sample_rate: int = 16000
    mel_bands: int = 40
    bin_weight: float = 0.25
    input_gain: float = 1.0
    stoi_weight: float = 0.0
    applied_weight: float = 1.0
    stoi_frames: int = 38

    def __post_init__(self) -> None:
        for name in ("bins", "latent_dim", "channels", "blocks", "kernel_size", "sample_rate", "stoi_frames"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"EnvelopeHeadConfig.{name}: expected a positive int, got {v!r}")
        if self.kernel_size % 2 == 0:
            raise ValueError(f"EnvelopeHeadConfig.kernel_size: expected an odd int, got {self.kernel_size}")
        if isinstance(self.smooth_bins, bool) or not isinstance(self.smooth_bins, int) or self.smooth_bins < 0:
            raise ValueError(f"EnvelopeHeadConfig.smooth_bins: expected an int >= 0, got {self.smooth_bins!r}")
        if isinstance(self.floor, bool) or not isinstance(self.floor, (int, float)) or not self.floor > 0:
            raise ValueError(f"EnvelopeHeadConfig.floor: expected a number > 0, got {self.floor!r}")
        g = self.input_gain
        if isinstance(g, bool) or not isinstance(g, (int, float)) or not math.isfinite(g) or not g > 0:
            raise ValueError(f"EnvelopeHeadConfig.input_gain: expected a finite number > 0, got {g!r}")
        m = self.mel_bands
        if isinstance(m, bool) or not isinstance(m, int) or not 0 <= m < self.bins:
            raise ValueError(f"EnvelopeHeadConfig.mel_bands: expected an int in [0, {self.bins}), got {m!r}")
        w = self.bin_weight
        if isinstance(w, bool) or not isinstance(w, (int, float)) or w < 0 or (m == 0 and w == 0):
            raise ValueError(f"EnvelopeHeadConfig.bin_weight: expected a number >= 0 (> 0 without mel_bands), "
                             f"got {w!r}")
        for name, hi in (("stoi_weight", math.inf), ("applied_weight", 1.0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= hi:
                raise ValueError(f"EnvelopeHeadConfig.{name}: expected a number in [0, {hi:g}], got {v!r}")


class EnvelopeHead(ConfigModel):
    """Quantized latent ``(B, latent_dim, N)`` + the codec's log envelope ``(B, bins, N)`` ->
    log correction ``(B, bins, N)`` (module docstring)."""

    config_class = EnvelopeHeadConfig

    def __init__(self, config: EnvelopeHeadConfig):
        super().__init__(config)
        c = config.channels
        self.conv_in = nn.Conv1d(config.latent_dim + config.bins, c, config.kernel_size,
                                 padding=config.kernel_size // 2)
        self.blocks = nn.Sequential(*(ResBlock(c, dims=1) for _ in range(config.blocks)))
        self.norm = nn.GroupNorm(1, c)
        self.conv_out = nn.Conv1d(c, config.bins, 1)
        nn.init.zeros_(self.conv_out.weight)      # a fresh head is the identity
        nn.init.zeros_(self.conv_out.bias)
        if config.mel_bands:                      # (bins, mel_bands), each band summing to 1
            import torchaudio
            fb = torchaudio.functional.melscale_fbanks(config.bins, 0.0, config.sample_rate / 2, config.mel_bands,
                                                       config.sample_rate, norm="slaney", mel_scale="slaney")
            self.register_buffer("mel", fb / fb.sum(0, keepdim=True).clamp(min=1e-12), persistent=False)
        if config.stoi_weight:
            self.register_buffer("octaves", third_octave_bands(config.bins, config.sample_rate), persistent=False)

    def forward(self, latent: Tensor, envelope: Tensor) -> Tensor:
        """``latent`` ``(B, D, M)`` at the code frame rate (``N`` a multiple of ``M``: each code
        frame repeated over its STFT frames), ``envelope`` = ``log E(C)`` ``(B, bins, N)`` -> ``d``."""
        dtype, n, m = self.conv_in.weight.dtype, envelope.shape[-1], latent.shape[-1]
        if n != m:
            if n % m:
                raise ValueError(f"EnvelopeHead: expected envelope frames a multiple of latent frames, "
                                 f"got {n} and {m}")
            latent = latent.repeat_interleave(n // m, dim=-1)
        # log powers span about -14..+10: a tenth keeps the first conv's inputs near unit scale
        h = self.conv_in(torch.cat([latent.to(dtype), 0.1 * envelope.to(dtype)], dim=1))
        return self.conv_out(F.silu(self.norm(self.blocks(h)))).float()

    def correct(self, spec: Tensor, latent: Tensor, power: float, weight: float) -> Tensor:
        """A codec's compressed complex spectrum ``spec`` (real | imag ``(B, 2 bins, N)``,
        magnitudes ``|X| ** power``) -> the same with every bin's magnitude times ``exp(weight *
        d / 2)`` (phase kept; ``log E(C)`` measured at ``input_gain``)."""
        c = self.config
        envelope = coded_envelope(spec, power, c)
        scale = torch.exp(0.5 * power * weight * self(latent, envelope)).repeat(1, 2, 1)  # on |X| ** power
        return spec.float() * scale

    def loss(self, latent: Tensor, coded: Tensor, target: Tensor) -> Tensor:
        """The mel-band L1 of log energies plus ``bin_weight`` x the mean ``|log E(C) + d - log
        E(X)|`` over bins and frames (``coded`` = ``log E(C)``, ``target`` = ``log E(X)``, both
        ``(B, bins, N)``), plus ``stoi_weight`` x (1 - the band-envelope correlation of ``log
        E(C) + applied_weight * d`` with ``log E(X)``) (:class:`EnvelopeHeadConfig`)."""
        d, target = self(latent, coded), target.float()
        predicted = coded.float() + d
        loss = self.config.bin_weight * (predicted - target).abs().mean()
        if self.config.stoi_weight:
            applied = coded.float() + self.config.applied_weight * d
            loss = loss + self.config.stoi_weight * (1 - band_envelope_correlation(
                applied, target, self.octaves, min(self.config.stoi_frames, target.shape[-1])))
        if self.config.mel_bands:
            def bands(log_power: Tensor) -> Tensor:
                return torch.einsum("bfn,fm->bmn", log_power.exp(), self.mel).add(self.config.floor).log()
            loss = loss + (bands(predicted) - bands(target)).abs().mean()
        return loss


@torch.no_grad()
def envelope_examples(tokenizer: "AudioTokenizer", waves: list[Tensor], config: EnvelopeHeadConfig,
                      levels: list[int], window: int,
                      progress: Callable[[Any], Any] = lambda it: it) -> "EnvelopeWindows":
    """Training data for an envelope head of the (trained, frozen) complex ``tokenizer``: each
    wave ``(T,)`` at its sample rate is encoded greedily and decoded from its first ``n`` levels
    for every ``n`` in ``levels``; non-overlapping ``window``-frame windows of the quantized
    latent (repeated to the STFT frame rate), ``log E(C)`` (the decode at ``config.input_gain``) and
    ``log E(X)`` (the input), in float16; ``window`` counts STFT frames (a wave shorter than
    one window gives none)."""
    if tokenizer.config.phase_free:
        raise ValueError("envelope_examples: expected a complex codec, got a phase_free one "
                         "(its phase is Griffin-Lim's; an envelope head is for complex codecs)")
    bad = [n for n in levels if isinstance(n, bool) or not isinstance(n, int)
           or not 1 <= n <= tokenizer.num_codebooks]
    if not levels or bad:
        raise ValueError(f"envelope_examples: expected levels, a non-empty list of ints in "
                         f"[1, {tokenizer.num_codebooks}], got {levels!r}")
    power = tokenizer.config.power
    device = next(tokenizer.parameters()).device
    latents, coded, target = {n: [] for n in levels}, {n: [] for n in levels}, []
    for wave in progress(waves):
        x = tokenizer._pad(tokenizer.prepare(wave.reshape(1, -1).to(device)))       # (1, T)
        frames = x.shape[-1] // tokenizer.config.stft_hop                           # STFT frames
        if frames < window:
            continue
        feats = tokenizer.spectral(x)
        z, lead = tokenizer._latents(feats)
        codes = tokenizer.quantizer.encode(z, lead)                                 # (1, f, Q)
        keep = frames // window * window

        def windows(t: Tensor) -> Tensor:                                          # (1, C, frames)
            return t[0, :, :keep].reshape(t.shape[1], -1, window).transpose(0, 1).half().cpu()

        stft = tokenizer.spectral.stft(x)
        target.append(windows(input_envelope(stft, config)))
        for n in levels:
            zq = tokenizer._quantized(codes[..., :n]).transpose(1, 2)             # (1, D, f)
            spec = tokenizer.decoder(zq.to(tokenizer.decoder.conv_in.weight.dtype))
            latents[n].append(windows(zq.repeat_interleave(frames // zq.shape[-1], dim=-1)))
            coded[n].append(windows(coded_envelope(spec, power, config)))
    if not target:
        raise ValueError(f"envelope_examples: expected waves of at least {window} frames "
                         f"({window * tokenizer.config.stft_hop} samples), got none that long")
    return EnvelopeWindows(torch.cat(target), [torch.cat(latents[n]) for n in levels],
                           [torch.cat(coded[n]) for n in levels])


class EnvelopeWindows(Dataset):
    """Windows for an envelope head: item ``i`` is ``(latent, log E(C), log E(X))`` of window
    ``i % W`` decoded from the ``i // W``-th level count (``W`` windows; float32)."""

    def __init__(self, target: Tensor, latents: list[Tensor], coded: list[Tensor]):
        if len(latents) != len(coded) or any(len(t) != len(target) for t in (*latents, *coded)):
            raise ValueError("EnvelopeWindows: expected one latent and one coded tensor per level count, "
                             "each with as many windows as the target")
        self.target, self.latents, self.coded = target, latents, coded

    def __len__(self) -> int:
        return len(self.target) * len(self.latents)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor, Tensor]:
        k, j = divmod(int(i), len(self.target))
        return self.latents[k][j].float(), self.coded[k][j].float(), self.target[j].float()
