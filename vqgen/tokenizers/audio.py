"""Audio tokenizer: a complex-STFT-domain VQ codec turning waveforms into ``(B, Q, frames)`` codes.

Pipeline (waveform in, waveform out)::

    wave (B, 1, T) at sample_rate, padded to a multiple of hop_length
      -> STFT (n_fft, stft_hop; "same" framing: T / stft_hop frames), power-law compressed
         complex spectrum (real | imag stacked: 2 * (n_fft // 2 + 1) channels)
      -> Conv1d + ConvNeXt blocks over frames, strided conv(s) down to the code frame rate
      -> ResidualVQ (Q levels, quantizer dropout: one model serves every bitrate)
      -> mirror decoder -> compressed complex spectrum -> decompress -> inverse STFT (overlap-add)

``hop_length = stft_hop * frame_downsample`` samples per code frame; ``frame_rate =
sample_rate / hop_length``; the bitrate at ``n`` levels is ``n * log2(codebook_size) *
frame_rate`` bits/s. Codes are ``(B, Q, frames)`` with ``frames = ceil(T / hop_length)``; decoding
gives ``frames * hop_length`` samples, and :meth:`AudioTokenizer.encode`/``decode`` round trips
trim back to the input length only where the caller passes it (``decode(..., length=T)``).

Long inputs are processed in chunks of ``chunk_seconds`` with ``overlap_seconds`` of context on
each side: encode keeps the codes of each chunk's centre (codes are discrete, so seams are exact
cuts between frames computed with context), decode crossfades overlapping outputs linearly.
"""
from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data.audio import check_sample_rate, read_audio, resample, write_audio
from ..losses import AudioLossConfig, AudioReconstructionLoss, compress, stacked_magnitude
from .base import Tokenizer, TokenizerOutput
from .code_search import search_codes
from .envelope import EnvelopeHead, EnvelopeHeadConfig, coded_envelope, input_envelope
from .layers import ConvNeXtBlock1d, ResBlock
from .quantizers import QuantizerOutput, ResidualVQ

__all__ = ["AudioTokenizerConfig", "AudioTokenizer", "audio_tokenizer_debug", "speech_16khz",
           "music_16khz"]


@dataclass
class AudioTokenizerConfig:
    """Everything that defines an :class:`AudioTokenizer` (invalid values raise ``ValueError``).

    Signal: ``sample_rate``; STFT ``n_fft`` / ``stft_hop`` (hann window; ``n_fft`` a multiple
    of ``stft_hop``, at least twice it), ``power`` the magnitude compression exponent; ``frame_downsample`` (1, 2 or 4)
    STFT frames per code frame. Network: ``channels`` wide ConvNeXt stacks (``kernel_size``,
    ``mlp_mult``), ``encoder_blocks`` / ``decoder_blocks`` at the STFT frame rate and
    ``latent_blocks`` at the code frame rate (each side). Quantizer: ``num_codebooks`` residual
    levels of ``codebook_size`` entries on ``latent_dim`` vectors, ``codebook_dim`` low-dim lookup,
    ``vq_*`` options of :class:`VectorQuantizer`, ``quantizer_dropout``, ``quantizer_warmup_steps``
    (that many training forwards skip the quantizer: the codec first trains as a plain
    autoencoder and learns phase, then the codebooks are k-means-initialised on its latents and
    quantization starts; counted in a saved buffer, so resume is exact), ``magnitude_levels``
    (that many leading levels code a phase-free latent: a second encoder of the same shape reads
    only the compressed magnitude spectrum, so those codes stay put while the partials' phases
    advance from frame to frame; the other levels code the complex-spectrum encoder's latent plus
    what the leading levels left, :class:`ResidualVQ`'s lead levels); ``magnitude_only_prob``
    (with ``magnitude_levels``: the share of training forwards, once the quantizer is on, that
    decode the phase-free levels alone, on top of those quantizer dropout draws) and
    ``magnitude_loss`` (:class:`vqgen.losses.AudioLossConfig` overrides for every forward that
    decodes only phase-free levels: e.g. ``{"complex_weight": 0, "magnitude_weight": 1}`` scores
    magnitudes only, since no phase reached the decoder and it has to choose one);
    ``phase_free`` (a spectrogram codec: the encoder reads only the compressed magnitudes, so
    every level is phase-free and the codes of a held note stay put; the magnitudes of the
    decoder's output are what it predicts; training scores them under the input's own phase,
    so every loss term applies unchanged and compares magnitudes only; ``decode`` recovers a
    phase by ``griffin_lim_iters`` iterations of fast Griffin-Lim). Losses:
    ``loss`` weights (:class:`vqgen.losses.AudioLossConfig`). Inference: ``chunk_seconds`` /
    ``overlap_seconds``; ``search_candidates`` / ``search_passes`` (the encoder's code search,
    :meth:`AudioTokenizer.encode`); ``output_gain`` (``decode`` multiplies its waveform by it: a
    codec trained with a scale-invariant term such as SI-SDR has no fixed output level, and
    :meth:`AudioTokenizer.calibrate_level` measures the gain that gives back the input's level);
    ``envelope`` (the fields of an :class:`~vqgen.tokenizers.envelope.EnvelopeHeadConfig`; its
    ``bins``, ``latent_dim``, ``sample_rate`` and ``input_gain`` are this codec's, filled in when
    absent; a complex codec only) gives the decoder an envelope head, which corrects the decoded
    spectral envelope towards the input's, ``envelope_weight`` of the way in log power
    (:mod:`vqgen.tokenizers.envelope`; trained after the codec, the codec frozen:
    :meth:`AudioTokenizer.attach_envelope`; the encoder's code search scores the decode before
    it). ``forward`` trains the codec without the head's correction; ``envelope_loss_weight`` >
    0 (with a head) adds that times the head's loss on every forward that decodes all levels,
    so the codec and its head train together: the head's gradient reaches the encoder through
    the quantizer's straight-through path (the encoder learns to put the envelope into the
    codes), not the decoder (its decode enters the head's loss detached).
    """

    sample_rate: int = 16000
    codebook_size: int = 1024
    num_codebooks: int = 8
    n_fft: int = 320
    stft_hop: int = 160
    power: float = 0.3
    frame_downsample: int = 2
    channels: int = 256
    block: str = "convnext"             # "convnext" (depthwise k + MLP) | "resnet" (two dense k=3 convs)
    kernel_size: int = 7
    mlp_mult: int = 3
    layer_scale: float = 0.1
    encoder_blocks: int = 4
    latent_blocks: int = 4
    decoder_blocks: int = 4
    latent_dim: int = 128
    codebook_dim: int | None = 8
    vq_cosine: bool = True
    vq_use_ema: bool = True
    vq_decay: float = 0.95
    vq_beta: float = 0.25
    vq_kmeans_init: bool = True
    vq_kmeans_iters: int = 10
    vq_dead_code_threshold: float = 0.5
    quantizer_dropout: float = 0.5
    quantizer_warmup_steps: int = 0     # first training forwards bypass the quantizer
    magnitude_levels: int = 0           # leading levels coding a magnitude-only (phase-free) latent
    magnitude_only_prob: float = 0.0    # extra share of training forwards decoding those levels alone
    magnitude_loss: dict = field(default_factory=dict)   # loss overrides for such forwards
    phase_free: bool = False            # code magnitudes only; decode() recovers a phase (Griffin-Lim)
    griffin_lim_iters: int = 64         # fast Griffin-Lim iterations per decode (phase_free)
    loss: dict = field(default_factory=dict)
    chunk_seconds: float = 30.0
    overlap_seconds: float = 1.0
    search_candidates: int = 0          # encode: analysis-by-synthesis code search (0: greedy RVQ)
    search_passes: int = 1              # encode: passes of that search over the levels
    output_gain: float = 1.0            # decode: the waveform is multiplied by this (calibrate_level)
    envelope: dict = field(default_factory=dict)   # EnvelopeHeadConfig fields ({}: no envelope head)
    envelope_weight: float = 1.0        # decode: the share of the envelope head's correction applied
    envelope_loss_weight: float = 0.0   # forward: weight of the head's loss (0: the codec alone)

    def __post_init__(self) -> None:
        def need(ok: bool, what: str, got: Any) -> None:
            if not ok:
                raise ValueError(f"AudioTokenizerConfig: expected {what}, got {got!r}")

        def pos_int(v: Any) -> bool:
            return isinstance(v, int) and not isinstance(v, bool) and v > 0

        check_sample_rate(self.sample_rate, "AudioTokenizerConfig.sample_rate")
        need(pos_int(self.codebook_size) and self.codebook_size >= 2, "codebook_size an int >= 2",
             self.codebook_size)
        for name in ("num_codebooks", "stft_hop", "channels", "kernel_size", "mlp_mult", "latent_dim"):
            need(pos_int(getattr(self, name)), f"{name} a positive int", getattr(self, name))
        need(self.n_fft % self.stft_hop == 0 and self.n_fft >= 2 * self.stft_hop
             and (self.n_fft - self.stft_hop) % 2 == 0,
             "n_fft a multiple of stft_hop, >= 2 * stft_hop, with n_fft - stft_hop even",
             (self.n_fft, self.stft_hop))
        need(self.frame_downsample in (1, 2, 4), "frame_downsample 1, 2 or 4", self.frame_downsample)
        need(0 < self.power <= 1, "power in (0, 1]", self.power)
        for name in ("encoder_blocks", "latent_blocks", "decoder_blocks", "quantizer_warmup_steps"):
            need(isinstance(getattr(self, name), int) and getattr(self, name) >= 0,
                 f"{name} an int >= 0", getattr(self, name))
        need(isinstance(self.magnitude_levels, int) and 0 <= self.magnitude_levels < self.num_codebooks,
             "magnitude_levels an int in [0, num_codebooks)", self.magnitude_levels)
        need(isinstance(self.magnitude_only_prob, (int, float)) and 0.0 <= self.magnitude_only_prob <= 1.0,
             "magnitude_only_prob in [0, 1]", self.magnitude_only_prob)
        need(isinstance(self.magnitude_loss, dict), "magnitude_loss a dict of AudioLossConfig fields",
             self.magnitude_loss)
        need(self.magnitude_levels > 0 or (not self.magnitude_only_prob and not self.magnitude_loss),
             "magnitude_only_prob 0 and magnitude_loss {} without magnitude_levels",
             (self.magnitude_only_prob, self.magnitude_loss))
        need(isinstance(self.phase_free, bool), "phase_free a bool", self.phase_free)
        need(not (self.phase_free and self.magnitude_levels), "magnitude_levels 0 with phase_free "
             "(every level is phase-free then)", self.magnitude_levels)
        need(isinstance(self.griffin_lim_iters, int) and not isinstance(self.griffin_lim_iters, bool)
             and self.griffin_lim_iters >= 0, "griffin_lim_iters an int >= 0", self.griffin_lim_iters)
        need(self.kernel_size % 2 == 1, "an odd kernel_size", self.kernel_size)
        need(self.block in ("convnext", "resnet"), "block 'convnext' or 'resnet'", self.block)
        need(self.codebook_dim is None or pos_int(self.codebook_dim), "codebook_dim None or > 0",
             self.codebook_dim)
        need(isinstance(self.search_candidates, int) and not isinstance(self.search_candidates, bool)
             and (self.search_candidates == 0 or 2 <= self.search_candidates <= self.codebook_size),
             "search_candidates 0 (greedy) or an int in [2, codebook_size]", self.search_candidates)
        need(pos_int(self.search_passes), "search_passes a positive int", self.search_passes)
        need(not (self.phase_free and self.search_candidates), "search_candidates 0 with phase_free "
             "(the search scores waveforms, a phase-free codec's phase is Griffin-Lim's)",
             self.search_candidates)
        need(isinstance(self.output_gain, (int, float)) and not isinstance(self.output_gain, bool)
             and math.isfinite(self.output_gain) and self.output_gain > 0, "output_gain a finite number > 0",
             self.output_gain)
        need(isinstance(self.envelope, dict), "envelope a dict of EnvelopeHeadConfig fields", self.envelope)
        if self.envelope:
            head = self.envelope_config()      # unknown keys and bad values raise here
            need(not self.phase_free, "no envelope head with phase_free (a complex codec's head)", self.envelope)
            need((head.bins, head.latent_dim, head.sample_rate) == (self.n_fft // 2 + 1, self.latent_dim,
                                                                     self.sample_rate),
                 f"envelope bins {self.n_fft // 2 + 1}, latent_dim {self.latent_dim} and sample_rate "
                 f"{self.sample_rate} (this codec's)", (head.bins, head.latent_dim, head.sample_rate))
        need(isinstance(self.envelope_weight, (int, float)) and not isinstance(self.envelope_weight, bool)
             and 0.0 <= self.envelope_weight <= 1.0, "envelope_weight a number in [0, 1]", self.envelope_weight)
        need(isinstance(self.envelope_loss_weight, (int, float)) and not isinstance(self.envelope_loss_weight, bool)
             and math.isfinite(self.envelope_loss_weight) and self.envelope_loss_weight >= 0,
             "envelope_loss_weight a finite number >= 0", self.envelope_loss_weight)
        need(self.chunk_seconds > 2 * self.overlap_seconds >= 0,
             "chunk_seconds > 2 * overlap_seconds >= 0", (self.chunk_seconds, self.overlap_seconds))
        if isinstance(self.loss, AudioLossConfig):
            self.loss = dict(vars(self.loss))
        need(isinstance(self.loss, dict), "loss a dict of AudioLossConfig fields", self.loss)
        self.loss_config()  # unknown keys raise here
        self.loss_config(magnitude_only=True)

    def loss_config(self, magnitude_only: bool = False) -> AudioLossConfig:
        """The loss weights (``magnitude_only``: for forwards that decode only the phase-free
        levels, i.e. ``loss`` updated with ``magnitude_loss``)."""
        from ..modeling import build_config
        values = {**self.loss, **self.magnitude_loss} if magnitude_only else self.loss
        return build_config(AudioLossConfig, values, n_fft=self.n_fft, hop=self.stft_hop,
                            power=self.power)

    def envelope_config(self) -> EnvelopeHeadConfig:
        """The envelope head's config (``envelope``; ``bins``, ``latent_dim``, ``sample_rate`` and
        ``input_gain`` default to this codec's, the last to its ``output_gain``)."""
        from ..modeling import build_config
        return build_config(EnvelopeHeadConfig, {"bins": self.n_fft // 2 + 1, "latent_dim": self.latent_dim,
                                                 "sample_rate": self.sample_rate, "input_gain": self.output_gain,
                                                 **self.envelope})

    @property
    def hop_length(self) -> int:
        return self.stft_hop * self.frame_downsample


# --------------------------------------------------------------------------- STFT front/back end
class _Spectral(nn.Module):
    """"Same"-framed STFT and its inverse: ``T`` samples (a multiple of ``hop``) <-> ``T / hop``
    frames. Frames are centred on ``hop * (i + 1/2)``; the inverse is windowed overlap-add
    divided by the summed squared window."""

    def __init__(self, n_fft: int, hop: int, power: float):
        super().__init__()
        self.n_fft, self.hop, self.power = n_fft, hop, power
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)

    def forward(self, wave: Tensor) -> Tensor:
        """``(B, T)`` -> compressed spectrum ``(B, 2F, T / hop)`` (real parts, then imaginary)."""
        spec = compress(self.stft(wave), self.power)                       # (B, F, N)
        return torch.cat([spec.real, spec.imag], dim=1)

    def stft(self, wave: Tensor) -> Tensor:
        """``(B, T)`` -> complex STFT ``(B, F, T / hop)`` (uncompressed)."""
        pad = (self.n_fft - self.hop) // 2
        x = F.pad(wave.float(), (pad, pad))
        return torch.stft(x, self.n_fft, self.hop, window=self.window, center=False, return_complex=True)

    def _overlap_add(self, frames: Tensor) -> Tensor:
        """``(B, n_fft, N)`` windowed frames -> ``(B, (N + k - 1) * hop)``, ``k = n_fft / hop``
        (sums of shifted slices: much faster on CPU than ``F.fold``)."""
        b, _, n = frames.shape
        k = self.n_fft // self.hop
        parts = frames.reshape(b, k, self.hop, n)                          # (B, k, hop, N)
        out = frames.new_zeros(b, self.hop, n + k - 1)
        for j in range(k):
            out[..., j:j + n] += parts[:, j]
        return out.transpose(1, 2).reshape(b, -1)

    def inverse(self, feats: Tensor) -> Tensor:
        """Compressed spectrum ``(B, 2F, N)`` -> waveform ``(B, N * hop)``."""
        re, im = feats.float().chunk(2, dim=1)
        return self.istft(compress(torch.complex(re, im), 1.0 / self.power))

    def istft(self, spec: Tensor) -> Tensor:
        """Complex STFT ``(B, F, N)`` (uncompressed) -> waveform ``(B, N * hop)``."""
        frames = torch.fft.irfft(spec, n=self.n_fft, dim=1) * self.window[:, None]   # (B, n_fft, N)
        n = frames.shape[-1]
        out = self._overlap_add(frames)
        env = self._overlap_add(self.window.square()[None, :, None].expand(1, -1, n))
        pad = (self.n_fft - self.hop) // 2
        return (out / env.clamp(min=1e-8))[:, pad:pad + n * self.hop]

    def griffin_lim(self, magnitude: Tensor, iters: int, momentum: float = 0.99) -> Tensor:
        """Compressed magnitudes ``(B, F, N)`` -> waveform ``(B, N * hop)`` whose spectrum has
        them (approximately): fast Griffin-Lim (Perraudin et al. 2013), starting from a fixed
        pseudo-random phase so that decoding is deterministic."""
        mag = magnitude.float().clamp(min=0).pow(1.0 / self.power)         # uncompressed
        angle = (2 * math.pi) * torch.rand(mag.shape, generator=torch.Generator().manual_seed(0))
        unit = torch.polar(torch.ones_like(mag), angle.to(mag.device))
        previous = torch.zeros_like(unit)
        for _ in range(iters):
            rebuilt = self.stft(self.istft(mag * unit))
            unit = rebuilt - (momentum / (1 + momentum)) * previous
            unit = unit / (unit.abs() + 1e-16)
            previous = rebuilt
        return self.istft(mag * unit)


def _with_phase(magnitude: Tensor, spec: Tensor) -> Tensor:
    """Magnitudes ``(B, F, N)`` with the phase of ``spec`` (real | imag ``(B, 2F, N)``; zero
    phase where ``spec`` is 0) -> real | imag ``(B, 2F, N)``."""
    re, im = spec.float().chunk(2, dim=1)
    norm = torch.hypot(re, im)
    unit_re = torch.where(norm > 0, re / norm.clamp(min=1e-12), torch.ones_like(re))
    unit_im = torch.where(norm > 0, im / norm.clamp(min=1e-12), torch.zeros_like(im))
    return torch.cat([magnitude * unit_re, magnitude * unit_im], dim=1)


def _stack(channels: int, n: int, cfg: AudioTokenizerConfig) -> nn.Sequential:
    if cfg.block == "resnet":
        return nn.Sequential(*(ResBlock(channels, dims=1) for _ in range(n)))
    return nn.Sequential(*(ConvNeXtBlock1d(channels, cfg.kernel_size, cfg.mlp_mult, cfg.layer_scale)
                           for _ in range(n)))


class AudioEncoder(nn.Module):
    """Compressed spectrum ``(B, 2F, N)`` (or, with ``magnitude=True``, its magnitude ``(B, F,
    N)``) -> latents ``(B, latent_dim, N / frame_downsample)``."""

    def __init__(self, cfg: AudioTokenizerConfig, magnitude: bool = False):
        super().__init__()
        c, d = cfg.channels, cfg.frame_downsample
        bins = cfg.n_fft // 2 + 1
        self.conv_in = nn.Conv1d(bins if magnitude else 2 * bins, c, cfg.kernel_size, padding=cfg.kernel_size // 2)
        self.blocks = _stack(c, cfg.encoder_blocks, cfg)
        self.down = nn.Conv1d(c, c, 2 * d, stride=d, padding=d // 2) if d > 1 else nn.Identity()
        self.latent = _stack(c, cfg.latent_blocks, cfg)
        self.norm = nn.LayerNorm(c, eps=1e-6)
        self.proj = nn.Linear(c, cfg.latent_dim)

    def forward(self, x: Tensor) -> Tensor:
        h = self.latent(self.down(self.blocks(self.conv_in(x))))            # (B, C, N / d)
        return self.proj(self.norm(h.transpose(1, 2))).transpose(1, 2)     # (B, D, N / d)


class AudioDecoder(nn.Module):
    """Latents ``(B, latent_dim, M)`` -> compressed spectrum ``(B, 2F, M * frame_downsample)``."""

    def __init__(self, cfg: AudioTokenizerConfig):
        super().__init__()
        c, d = cfg.channels, cfg.frame_downsample
        self.conv_in = nn.Conv1d(cfg.latent_dim, c, cfg.kernel_size, padding=cfg.kernel_size // 2)
        self.latent = _stack(c, cfg.latent_blocks, cfg)
        self.up = nn.ConvTranspose1d(c, c, 2 * d, stride=d, padding=d // 2) if d > 1 else nn.Identity()
        self.blocks = _stack(c, cfg.decoder_blocks, cfg)
        self.norm = nn.LayerNorm(c, eps=1e-6)
        self.proj = nn.Linear(c, cfg.n_fft + 2)

    def forward(self, z: Tensor) -> Tensor:
        h = self.blocks(self.up(self.latent(self.conv_in(z))))              # (B, C, N)
        return self.proj(self.norm(h.transpose(1, 2))).transpose(1, 2)     # (B, 2F, N)


def chunked_decode(codes: Tensor, chunks: list[tuple[int, int, int, int]], hop: int,
                   decode_chunk: Callable[[Tensor], Tensor]) -> Tensor:
    """Channel-last codes ``(B, frames, n)`` -> waveform ``(B, frames * hop)`` decoded chunk by
    chunk (``chunks`` as :meth:`AudioTokenizer._chunks` gives them; ``decode_chunk`` maps
    ``(B, f, n)`` codes to ``(B, f * hop)`` samples), overlapping outputs crossfaded linearly."""
    frames = codes.shape[1]
    if len(chunks) == 1:
        return decode_chunk(codes)
    wave = torch.zeros(codes.shape[0], frames * hop, device=codes.device)
    weight = torch.zeros(frames * hop, device=codes.device)
    for lo, hi, clo, chi in chunks:
        part = decode_chunk(codes[:, clo:chi]).float()
        # weights: 0 over the outer half of each context (a chunk's own edges are unreliable),
        # a linear ramp over the inner half, 1 over the kept centre
        w = torch.ones(part.shape[-1], device=codes.device)
        left, right = (lo - clo) * hop, (chi - hi) * hop
        if left:
            w[:left] = 0
            w[left // 2:left] = torch.linspace(0, 1, left - left // 2 + 2, device=codes.device)[1:-1]
        if right:
            w[-right:] = 0
            w[-right:len(w) - right // 2] = torch.linspace(1, 0, right - right // 2 + 2, device=codes.device)[1:-1]
        wave[:, clo * hop:chi * hop] += part * w
        weight[clo * hop:chi * hop] += w
    return wave / weight.clamp(min=1e-6)


class AudioCodesMixin:
    """What every audio tokenizer does the same way on top of its ``encode`` / ``decode`` /
    ``num_codebooks`` / ``sample_rate``: the level-count and code checks and the file helpers."""

    def _levels(self, num_codebooks: int | None) -> int:
        q = self.num_codebooks
        if num_codebooks is None:
            return q
        if isinstance(num_codebooks, bool) or not isinstance(num_codebooks, int) or not 1 <= num_codebooks <= q:
            raise ValueError(f"num_codebooks must be an int in [1, {q}], got {num_codebooks!r}")
        return num_codebooks

    def _prepare_codes(self, codes: Tensor) -> Tensor:
        """Validate ``(B, n, frames)`` codes (``1 <= n <= Q``) -> channel-last ``(B, frames, n)``."""
        codes = self.check_codes(codes, ndim=3)
        if not 1 <= codes.shape[1] <= self.num_codebooks or codes.shape[2] == 0:
            raise ValueError(f"expected codes (B, n, frames) with 1 <= n <= {self.num_codebooks} "
                             f"and frames >= 1, got shape {tuple(codes.shape)}")
        return codes.transpose(1, 2)

    def encode_file(self, path: str | os.PathLike, num_codebooks: int | None = None,
                    downmix: bool = False) -> Tensor:
        """Codes ``(1, n, frames)`` of an audio file (any rate soundfile reads; stereo needs
        ``downmix=True``). ``FileNotFoundError`` / ``ValueError`` for missing or non-audio files."""
        wave, rate = read_audio(path)                                    # (C, T)
        device = next(self.parameters()).device
        return self.encode(wave[None].to(device), rate, num_codebooks, downmix=downmix)

    def decode_to_file(self, codes: Tensor, path: str | os.PathLike, length: int | None = None) -> Path:
        """Decode ``(1, n, frames)`` (or ``(n, frames)``) codes and write a 16-bit file at
        ``sample_rate`` (format from the suffix); returns the path."""
        if isinstance(codes, Tensor) and codes.dim() == 2:
            codes = codes[None]
        if isinstance(codes, Tensor) and codes.dim() == 3 and codes.shape[0] != 1:
            raise ValueError(f"decode_to_file expects the codes of one clip (1, n, frames), got {tuple(codes.shape)}")
        with torch.no_grad():
            wave = self.decode(codes, length=length)
        return write_audio(path, wave[0], self.sample_rate)


# --------------------------------------------------------------------------- tokenizer
class AudioTokenizer(AudioCodesMixin, Tokenizer):
    """Neural audio codec with residual VQ codes (see the module docstring for the layout).

    ``AudioTokenizer.from_config(sample_rate=16000, codebook_size=1024, num_codebooks=8, ...)``;
    presets :func:`speech_16khz`, :func:`music_16khz`, :func:`audio_tokenizer_debug`.

    Inputs are mono waves float ``(B, 1, T)`` or ``(B, T)`` in [-1, 1] at any integer rate
    (resampled to ``sample_rate``); ``(B, C>1, T)`` raises unless ``downmix=True``. Errors
    (``ValueError`` naming expected and actual): not a float tensor, wrong rank or channels,
    empty, NaN/inf, bad ``sample_rate`` or ``num_codebooks``; codes of the wrong rank, level
    count, dtype or range.
    """

    config_class = AudioTokenizerConfig

    def __init__(self, config: AudioTokenizerConfig):
        super().__init__(config)
        cfg = config
        self.spectral = _Spectral(cfg.n_fft, cfg.stft_hop, cfg.power)
        self.encoder = AudioEncoder(cfg, magnitude=cfg.phase_free)
        # phase-free leading levels: an encoder of |compressed spectrum| only
        self.magnitude_encoder = AudioEncoder(cfg, magnitude=True) if cfg.magnitude_levels else None
        self.decoder = AudioDecoder(cfg)
        self.envelope = EnvelopeHead(cfg.envelope_config()) if cfg.envelope else None
        self.quantizer = ResidualVQ(
            cfg.latent_dim, cfg.codebook_size, cfg.num_codebooks, quantizer_dropout=cfg.quantizer_dropout,
            codebook_dim=cfg.codebook_dim, beta=cfg.vq_beta, use_ema=cfg.vq_use_ema, decay=cfg.vq_decay,
            kmeans_init=cfg.vq_kmeans_init, kmeans_iters=cfg.vq_kmeans_iters,
            dead_code_threshold=cfg.vq_dead_code_threshold, cosine=cfg.vq_cosine, check_finite=False,
            lead_levels=cfg.magnitude_levels)
        self.recon_loss = AudioReconstructionLoss(cfg.loss_config(), cfg.sample_rate)
        # forwards that decode only the phase-free levels: the same loss unless magnitude_loss
        self.magnitude_recon_loss = (AudioReconstructionLoss(cfg.loss_config(magnitude_only=True), cfg.sample_rate)
                                     if cfg.magnitude_loss else self.recon_loss)
        # training forwards so far (for quantizer_warmup_steps); host mirror avoids a sync per step
        self.register_buffer("train_forwards", torch.zeros((), dtype=torch.long))
        self._forwards_seen: int | None = 0

    def _load_from_state_dict(self, state_dict, prefix, *args: Any, **kwargs: Any) -> None:
        key = prefix + "train_forwards"
        if key not in state_dict:  # saved before the counter existed: its warm-up is long over
            state_dict[key] = torch.tensor(self.config.quantizer_warmup_steps, dtype=torch.long)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._forwards_seen = None  # re-read the buffer at the next training forward

    def _quantizer_warming_up(self) -> bool:
        """Count a training forward; True while it is one of the first ``quantizer_warmup_steps``."""
        if not self.training:
            return False
        if self._forwards_seen is None:
            self._forwards_seen = int(self.train_forwards)
        warm = self._forwards_seen < self.config.quantizer_warmup_steps
        self._forwards_seen += 1
        self.train_forwards.fill_(self._forwards_seen)
        return warm

    # ----------------------------------------------------------------------- metadata
    @property
    def sample_rate(self) -> int:
        return self.config.sample_rate

    @property
    def hop_length(self) -> int:
        return self.config.hop_length

    @property
    def frame_rate(self) -> float:
        return self.sample_rate / self.hop_length

    def bitrate(self, num_codebooks: int | None = None) -> float:
        """Kilobits per second with the first ``num_codebooks`` levels (default all)."""
        n = self._levels(num_codebooks)
        return n * math.log2(self.codebook_size) * self.frame_rate / 1000.0

    def code_shape(self, *input_shape: int) -> tuple[int, int]:
        """Codes of one clip of ``T`` samples (``(T,)`` or ``(1, T)`` at ``sample_rate``):
        ``(Q, ceil(T / hop_length))``."""
        if len(input_shape) not in (1, 2) or input_shape[-1] < 1:
            raise ValueError(f"expected a clip shape (T,) or (1, T), got {input_shape}")
        return self.num_codebooks, -(-input_shape[-1] // self.hop_length)

    # ----------------------------------------------------------------------- checks
    def prepare(self, wave: Tensor, sample_rate: int | None = None, downmix: bool = False) -> Tensor:
        """Validate a wave and return it fp32 ``(B, T)`` at ``self.sample_rate`` (resampled,
        downmixed when asked). ``sample_rate=None`` means the tokenizer's rate."""
        rate = self.sample_rate if sample_rate is None else check_sample_rate(sample_rate)
        if not isinstance(wave, Tensor) or not wave.is_floating_point():
            got = wave.dtype if isinstance(wave, Tensor) else type(wave).__name__
            raise ValueError(f"expected a float waveform tensor (B, 1, T) in [-1, 1], got {got}")
        if wave.dim() == 2:
            wave = wave[:, None]
        if wave.dim() != 3:
            raise ValueError(f"expected a waveform (B, 1, T) or (B, T), got shape {tuple(wave.shape)}")
        if wave.shape[1] != 1:
            if not downmix:
                raise ValueError(f"expected mono audio (B, 1, T), got {wave.shape[1]} channels "
                                 f"(shape {tuple(wave.shape)}); pass downmix=True to average them")
            wave = wave.mean(1, keepdim=True)
        if wave.shape[0] == 0 or wave.shape[-1] == 0:
            raise ValueError(f"expected a non-empty waveform, got shape {tuple(wave.shape)}")
        if not bool(torch.isfinite(wave).all()):
            raise ValueError(f"expected finite samples, got {int((~torch.isfinite(wave)).sum())} NaN/inf value(s)")
        return resample(wave[:, 0].float(), rate, self.sample_rate)

    def _pad(self, wave: Tensor) -> Tensor:
        """``(B, T)`` -> ``(B, ceil(T / hop_length) * hop_length)`` (zeros at the end)."""
        return F.pad(wave, (0, -wave.shape[-1] % self.hop_length))

    # ----------------------------------------------------------------------- core (one chunk)
    def _latents(self, feats: Tensor) -> tuple[Tensor, Tensor | None]:
        """Compressed spectrum ``(B, 2F, N)`` -> channel-last latents ``(B, frames, latent_dim)``
        of the complex-spectrum encoder and (``magnitude_levels > 0``, else None) of the
        magnitude encoder."""
        feats = feats.to(self.encoder.conv_in.weight.dtype)
        if self.config.phase_free:
            return self.encoder(stacked_magnitude(feats, 1e-12)).transpose(1, 2), None
        z = self.encoder(feats).transpose(1, 2)
        if self.magnitude_encoder is None:
            return z, None
        return z, self.magnitude_encoder(stacked_magnitude(feats, 1e-12)).transpose(1, 2)

    def _synth(self, zq: Tensor, envelope: bool = True) -> Tensor:
        """Channel-last ``(B, frames, D)`` -> waveform ``(B, frames * hop_length)`` (through the
        envelope head, if there is one, unless ``envelope`` is False)."""
        latent = zq.to(self.decoder.conv_in.weight.dtype).transpose(1, 2)
        spec = self.decoder(latent)
        if self.envelope is not None and envelope:
            cfg = self.config
            spec = self.envelope.correct(spec, latent, cfg.power, cfg.envelope_weight)
        if self.config.phase_free:
            return self.spectral.griffin_lim(stacked_magnitude(spec.float(), 1e-12), self.config.griffin_lim_iters)
        return self.spectral.inverse(spec)

    def _quantized(self, codes: Tensor) -> Tensor:
        """Channel-last codes ``(B, frames, n)`` -> the sum of their levels' vectors ``(B,
        frames, latent_dim)``."""
        q = self.quantizer
        zq = q.layers[0].decode(codes[..., 0])
        for layer, c in zip(q.layers[1:], codes[..., 1:].unbind(-1)):
            zq = zq + layer.decode(c)
        return zq

    def _decode_chunk(self, codes: Tensor, envelope: bool = True) -> Tensor:
        """``(B, frames, n)`` -> ``(B, frames * hop_length)`` (times ``output_gain``; ``envelope``
        as :meth:`_synth`)."""
        wave = self._synth(self._quantized(codes), envelope)
        return wave if self.config.output_gain == 1.0 else wave * self.config.output_gain

    def decoded_magnitudes(self, codes: Tensor) -> Tensor:
        """Channel-last codes ``(B, frames, n)`` -> the compressed magnitude spectrum ``(B, F,
        frames)`` the decoder predicts (of a ``phase_free`` codec: what Griffin-Lim is given), at
        ``output_gain`` (compressed: times ``output_gain ** power``)."""
        spec = self.decoder(self._quantized(codes).to(self.decoder.conv_in.weight.dtype).transpose(1, 2))
        return stacked_magnitude(spec.float(), 1e-12) * self.config.output_gain ** self.config.power

    def _chunks(self, frames: int) -> list[tuple[int, int, int, int]]:
        """Split ``frames`` into ``(lo, hi, ctx_lo, ctx_hi)``: kept frames ``[lo, hi)`` computed
        from ``[ctx_lo, ctx_hi)``."""
        size = max(1, int(self.config.chunk_seconds * self.frame_rate))
        ctx = int(math.ceil(self.config.overlap_seconds * self.frame_rate))
        if frames <= size:
            return [(0, frames, 0, frames)]
        core = size - 2 * ctx
        return [(lo, min(lo + core, frames), max(0, lo - ctx), min(frames, lo + core + ctx))
                for lo in range(0, frames, core)]

    # ----------------------------------------------------------------------- API
    @torch.no_grad()
    def encode(self, wave: Tensor, sample_rate: int | None = None, num_codebooks: int | None = None,
               downmix: bool = False, search: int | None = None) -> Tensor:
        """Waveform ``(B, 1, T)`` / ``(B, T)`` at ``sample_rate`` (default the tokenizer's) ->
        codes LongTensor ``(B, n, ceil(T' / hop_length))``, ``T'`` the length at
        ``self.sample_rate`` and ``n = num_codebooks`` (default all ``Q`` levels). Inputs longer
        than ``chunk_seconds`` are encoded chunk by chunk (bounded memory).

        ``search`` (default ``config.search_candidates``): 0 picks each level's nearest code
        (greedy residual VQ); ``k >= 2`` refines the codes of every level after the first by
        trying the ``k`` nearest codes per frame against the decoded waveform
        (:mod:`vqgen.tokenizers.code_search`, ``config.search_passes`` passes): same decoder and
        bitrate, a better reconstruction, about ``14 (k + 1)`` decodes per level, pass and judged
        level count."""
        n = self._levels(num_codebooks)
        if search is None:
            search = self.config.search_candidates
        else:  # the config's rule (ValueError naming search_candidates)
            search = dataclasses.replace(self.config, search_candidates=search).search_candidates
        return self._encode(self._pad(self.prepare(wave, sample_rate, downmix)), n, search,
                            self.config.search_passes)

    def _encode(self, x: Tensor, n: int, search: int, passes: int,
                decoder: Callable[[int, int], Callable[[Tensor], Tensor]] | None = None) -> Tensor:
        """Padded waves ``(B, T)`` -> codes ``(B, n, T / hop_length)``, chunk by chunk, with the
        code search of ``search`` candidates and ``passes`` passes when ``search``. The search
        scores :meth:`_decode_chunk` of all levels without the envelope head (a post-filter, as
        a CELP coder's sits outside its search: measured on the speech full preset, searching the
        plain decode and then applying the head at weight 0.5 gave +6.04 dB / STOI 0.883, as
        much STOI as searching the corrected decode at 0.75 and +0.07 dB more, at half the
        search's cost); with ``decoder`` it scores
        ``decoder(ctx_lo, ctx_hi)`` (the decode of a chunk's frames from its first ``n`` levels,
        e.g. the hybrid tokenizer's) and searches only those ``n`` levels."""
        hop, out = self.hop_length, []
        for lo, hi, clo, chi in self._chunks(x.shape[-1] // hop):
            chunk = x[:, clo * hop:chi * hop]
            z, lead = self._latents(self.spectral(chunk))
            codes = self.quantizer.encode(z, lead)                                  # (B, f, Q)
            if search:
                decode = (lambda c: self._decode_chunk(c, envelope=False)) if decoder is None else decoder(clo, chi)
                codes = codes if decoder is None else codes[..., :n].contiguous()
                codes = search_codes(self.quantizer, decode, chunk, z if lead is None else z + lead, codes,
                                     search, passes, first_level=max(1, self.config.magnitude_levels))
            out.append(codes[:, lo - clo:hi - clo, :n])
        return torch.cat(out, 1).transpose(1, 2).contiguous()

    @torch.no_grad()
    def decode(self, codes: Tensor, length: int | None = None) -> Tensor:
        """Codes ``(B, n, frames)`` with any ``1 <= n <= Q`` leading levels -> waveform
        ``(B, 1, frames * hop_length)`` at ``sample_rate`` (trimmed to ``length`` when given).
        Long code sequences are decoded in overlapping chunks crossfaded linearly."""
        c = self._prepare_codes(codes)                                   # (B, frames, n)
        wave = chunked_decode(c, self._chunks(c.shape[1]), self.hop_length, self._decode_chunk)
        wave = wave[:, None]
        return wave if length is None else wave[..., :length]

    @torch.no_grad()
    def calibrate_level(self, wave: Tensor, sample_rate: int | None = None) -> float:
        """Set ``config.output_gain`` so that ``decode(encode(wave))`` (all levels, the configured
        encoder: on the speech full preset greedy codes decode 2 dB louder than searched ones)
        comes back at ``wave``'s level: the gain is the ratio of the input's RMS to the
        decoded RMS over all of ``wave`` ``(B, 1, T)`` (typical material, e.g. training clips).
        Changes no weight and no code; scale-invariant scores (SI-SDR, STOI) stay as they were.
        Returns the new gain."""
        x = self.prepare(wave, sample_rate)                                # (B, T)
        y = self.decode(self.encode(x), length=x.shape[-1])[:, 0] / self.config.output_gain
        rms_in, rms_out = x.square().mean().sqrt().item(), y.square().mean().sqrt().item()
        if not rms_in > 0 or not rms_out > 0:
            raise ValueError(f"calibrate_level: expected clips that are not silent and decode to sound, "
                             f"got input RMS {rms_in:.3g} and decoded RMS {rms_out:.3g}")
        self.config = dataclasses.replace(self.config, output_gain=rms_in / rms_out)
        return self.config.output_gain

    def attach_envelope(self, head: EnvelopeHead, weight: float | None = None) -> "AudioTokenizer":
        """Give this (complex) codec the trained envelope ``head`` (its weights are copied; its
        config becomes ``config.envelope``) applied ``weight`` of the way (default: the
        config's ``envelope_weight``); returns ``self``."""
        if not isinstance(head, EnvelopeHead):
            raise ValueError(f"attach_envelope: expected an EnvelopeHead, got {type(head).__name__}")
        weight = self.config.envelope_weight if weight is None else weight
        self.config = dataclasses.replace(self.config, envelope=dict(vars(head.config)), envelope_weight=weight)
        self.envelope = EnvelopeHead(head.config).to(self.decoder.conv_in.weight)
        self.envelope.load_state_dict(head.state_dict())
        self.envelope.train(self.training)
        return self

    def forward(self, wave: Tensor, num_codebooks: int | None = None) -> TokenizerOutput:
        """Reconstruct ``wave`` ``(B, 1, T)`` at ``sample_rate`` through the quantizer (training
        entry point; ``num_codebooks`` fixes the levels, else all or a random count under
        quantizer dropout). Returns ``recon`` ``(B, 1, T)``, ``codes`` ``(B, Q, frames)``,
        ``loss`` = reconstruction terms + VQ loss and ``metrics`` (``recon_loss``, ``vq_loss``,
        each loss term, ``perplexity``, ``usage``, ``dead_codes``, ``n_quantizers``)."""
        x = self.prepare(wave)
        t = x.shape[-1]
        x_pad = self._pad(x)
        target_spec = self.spectral(x_pad)                               # (B, 2F, N)
        z, lead = self._latents(target_spec)
        if self._quantizer_warming_up():  # autoencoder phase: no codes yet
            zero = z.new_zeros((), dtype=torch.float32)
            # quantizer parameters join the graph with weight 0 (DDP expects every one to be used)
            unused = sum((p.sum() * 0.0 for p in self.quantizer.parameters()), zero)
            q = QuantizerOutput(z if lead is None else z + lead, torch.zeros(z.shape[:-1] + (self.num_codebooks,), dtype=torch.long,
                                               device=z.device), unused,
                                {k: zero for k in ("perplexity", "usage", "dead_codes", "n_quantizers")})
            n = None
        else:
            n = self._forward_levels(num_codebooks)
            if n is None and self._envelope_loss_on():   # the head's loss needs to know the count
                n = self.quantizer.draw_levels()
            q = self.quantizer(z, n_quantizers=n, lead=lead)
        spec = self.decoder(q.quantized.to(self.decoder.conv_in.weight.dtype).transpose(1, 2))
        if self.config.phase_free:  # predicted magnitudes under the input's phase
            spec = _with_phase(stacked_magnitude(spec.float(), 1e-12), target_spec)
        recon = self.spectral.inverse(spec)[:, None, :t]                 # (B, 1, T)
        levels_phase_free = n is not None and n <= self.config.magnitude_levels
        loss_fn = self.magnitude_recon_loss if levels_phase_free else self.recon_loss
        recon_loss, terms = loss_fn(recon, x[:, None], spec, target_spec)
        vq_loss = q.loss.float()
        metrics = {"recon_loss": recon_loss.detach(), "vq_loss": vq_loss.detach(), **terms,
                   **{k: q.metrics[k].detach() for k in ("perplexity", "usage", "dead_codes", "n_quantizers")}}
        loss = recon_loss + vq_loss
        if n == self.num_codebooks and self._envelope_loss_on():
            head_loss = self._envelope_loss(q.quantized, spec, x_pad)
            loss = loss + self.config.envelope_loss_weight * head_loss
            metrics["envelope_loss"] = head_loss.detach()
        return TokenizerOutput(recon=recon, codes=q.codes.transpose(1, 2), loss=loss, metrics=metrics)

    def _envelope_loss_on(self) -> bool:
        return self.envelope is not None and self.config.envelope_loss_weight > 0 and not self.config.phase_free

    def _envelope_loss(self, quantized: Tensor, spec: Tensor, x_pad: Tensor) -> Tensor:
        """The envelope head's loss (:meth:`EnvelopeHead.loss`) on one training forward: the
        quantized latent ``(B, M, D)`` (straight-through: its gradient reaches the encoder), the
        decoded spectrum ``spec`` (detached) and the padded input ``x_pad`` ``(B, T)``."""
        c = self.envelope.config
        coded = coded_envelope(spec.detach(), self.config.power, c)
        target = input_envelope(self.spectral.stft(x_pad)[..., :coded.shape[-1]], c)
        latent = quantized.to(self.envelope.conv_in.weight.dtype).transpose(1, 2)
        return self.envelope.loss(latent, coded, target)

    def _forward_levels(self, num_codebooks: int | None) -> int | None:
        """Levels one quantized forward decodes: ``num_codebooks`` when given; without
        ``magnitude_levels`` None (the quantizer decides, all or a quantizer-dropout draw);
        with them, in training, ``magnitude_levels`` with probability ``magnitude_only_prob``,
        else the quantizer's draw, made here so that the loss knows it."""
        if num_codebooks is not None:
            return self._levels(num_codebooks)
        if not (self.config.magnitude_levels and self.training):
            return None
        p = self.config.magnitude_only_prob
        if p and float(torch.rand(())) < p:       # CPU generator: no device sync
            return self.config.magnitude_levels
        return self.quantizer.draw_levels()


# --------------------------------------------------------------------------- presets
def audio_tokenizer_debug(**overrides: Any) -> AudioTokenizer:
    """Tiny tokenizer for tests: 16 kHz, hop 160 x 2, 4 levels of 64 codes, 32 channels."""
    values = dict(sample_rate=16000, codebook_size=64, num_codebooks=4, channels=32, encoder_blocks=1,
                  latent_blocks=1, decoder_blocks=1, latent_dim=16, codebook_dim=None, vq_cosine=False,
                  vq_kmeans_iters=2, vq_dead_code_threshold=0.0, chunk_seconds=30.0, overlap_seconds=1.0)
    return AudioTokenizer.from_config(values, **overrides)


def speech_16khz(**overrides: Any) -> AudioTokenizer:
    """Speech codec at 16 kHz: complex STFT (n_fft 320, hop 160) coded at the STFT frame rate
    (100 Hz, no frame downsampling), 4 levels x 1024 entries (1 kbps per level, 4 kbps at 4
    levels); 192-wide residual conv stacks (2 blocks per stage, ~2.5M parameters); each level
    looks its codes up in 8 dimensions with plain Euclidean distance; quantizer dropout 0.5 (one
    model for 1-4 kbps). Loss: MSE of the compressed complex spectrum + 0.1 x log-mel L1.

    Why these choices (measured on espeak-ng speech, 2 CPU cores, benchmarks/RESULTS.md): with
    2x frame downsampling neither this model nor its quantizer-free autoencoder learned phase in
    850 steps (SI-SDR -34 dB), while at 100 Hz the autoencoder reached +12.6 dB in 700 steps;
    cosine (unit-norm) codes cannot shrink the residual, so deeper levels added nothing. An
    SI-SDR loss term (``loss={"si_sdr_weight": 3.0}``) raised held-out SI-SDR by 2.5 dB at full
    size but made the output ~8 dB quieter and dull (mel distance 2.4x, STOI -0.02, voice
    accuracy of prior samples 0.15 instead of 0.75), so it is not the default here; the speech
    recipe's full preset adds it, since its prior models a phase-free codec's codes and an
    envelope head (:mod:`vqgen.tokenizers.envelope`) gives back most of the brightness the term
    takes (STOI 0.80 -> 0.88 at equal SI-SDR).
    The 8-d lookup was chosen before the quantizer warm-up existed; with it, the full 128-d
    latent (``codebook_dim=None``) measured better at every bitrate (quick probes, and at full
    size +0.65 dB at 4 kbps with the SI-SDR term), so the speech recipe's full preset uses it; the
    music codecs trained so far keep 8-d (not re-measured there)."""
    values = dict(sample_rate=16000, codebook_size=1024, num_codebooks=4, frame_downsample=1,
                  block="resnet", channels=192, encoder_blocks=2, latent_blocks=2, decoder_blocks=2,
                  codebook_dim=8, vq_cosine=False)
    return AudioTokenizer.from_config(values, **overrides)


def music_16khz(**overrides: Any) -> AudioTokenizer:
    """Music codec at 16 kHz: :func:`speech_16khz` (same codes: 100 Hz frames, 4 levels x 1024
    entries, 8-d Euclidean lookup, 4 kbps at 4 levels; same network and losses) with an 80 ms
    STFT window (n_fft 1280, hop 160: 12.5 Hz bins instead of 50 Hz, 8x overlap; 3.96M
    parameters).

    Why: sustained harmonic notes (chorales) are resolved in frequency by the longer window,
    neighbouring partials of low voices (a bass at 100 Hz) fall into separate bins, while the
    hop (and so the code rate and the bitrate) stays that of speech; note onsets are rarer than
    in speech, so the coarser time resolution costs little. Measured (benchmarks/RESULTS.md, 2
    CPU cores): at 9,000 steps held-out SI-SDR +5.76 / +3.73 dB at 4 / 2 kbps with n_fft 1280
    against +5.24 / +3.39 with 640 (40 ms), at a lower mel distance; in 1,000-step probes 960 gave
    less and 1920 no more. The music recipe's full preset (12,000 steps): +6.16 / +4.32 dB."""
    return speech_16khz(**{"n_fft": 1280, **overrides})
