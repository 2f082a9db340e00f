"""Image tokenizer: a convolutional VQ-VAE turning ``(B, C, H, W)`` images into code grids.

Encoder: 3x3 conv, then per resolution level ``num_res_blocks`` residual blocks and a strided conv
(``log2(downsample)`` times), residual blocks at the bottom, GroupNorm/SiLU and a 1x1 conv to
``latent_dim``. The quantizer (:class:`VectorQuantizer`, or :class:`ResidualVQ` when
``num_codebooks > 1``) maps every latent pixel to code(s). The decoder mirrors the encoder with
nearest-neighbour upsampling. Pixels are mapped to [-1, 1] inside the model.

Code layout: ``(B, h, w)`` with one codebook, ``(B, Q, h, w)`` with ``Q = num_codebooks`` levels,
where ``h = H // downsample`` and ``w = W // downsample``; codes are row-major over the grid.

The model keeps its conv weights in ``channels_last`` memory format (on CPU, oneDNN convs run
several times faster so; on GPU it is what tensor cores want), so the channel-last latent the
quantizer needs is a free ``permute``. Caveat: in eager CUDA mode PyTorch 2.11's GroupNorm returns
NCHW and costs a layout copy per norm; ``torch.compile`` fuses those away.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import Tokenizer, TokenizerOutput
from .layers import Downsample, ResBlock, Upsample, conv, norm
from .quantizers import ResidualVQ, VectorQuantizer

__all__ = ["ImageTokenizerConfig", "ImageTokenizer", "image_tokenizer_debug",
           "image_tokenizer_28x28_gray", "image_tokenizer_32x32_rgb"]

_DOWNSAMPLES = (2, 4, 8, 16)
_AUTO_MULT = (1, 2, 2, 4, 4)


@dataclass
class ImageTokenizerConfig:
    """Everything that defines an :class:`ImageTokenizer` (invalid values raise ``ValueError``).

    Geometry: ``in_channels`` image channels; ``downsample`` (2, 4, 8 or 16) the side ratio of
    image to code grid; ``image_size`` the training side (informative, used by presets and
    pipelines; must be divisible by ``downsample``). Network: base width ``channels`` times
    ``channel_mult[i]`` at level ``i`` (``log2(downsample) + 1`` entries; ``None`` picks
    ``(1, 2, 2, 4, 4)[:levels]``), ``num_res_blocks`` per level in the encoder and
    ``decoder_res_blocks`` (default the same) in the decoder. Quantizer: ``codebook_size`` entries,
    ``num_codebooks`` residual levels, ``latent_dim`` the quantized vector size, ``codebook_dim``
    an optional low-dimensional lookup space, and the ``vq_*`` options passed to
    :class:`VectorQuantizer`. ``recon_loss`` is ``"mse"`` or ``"l1"`` on [0, 1] pixels.
    """

    in_channels: int = 1
    downsample: int = 4
    codebook_size: int = 512
    num_codebooks: int = 1
    image_size: int | None = None
    channels: int = 64
    channel_mult: tuple[int, ...] | None = None
    num_res_blocks: int = 2
    decoder_res_blocks: int | None = None
    dropout: float = 0.0
    latent_dim: int = 64
    codebook_dim: int | None = None
    recon_loss: str = "mse"
    vq_beta: float = 0.25
    vq_use_ema: bool = True
    # EMA decay 0.95 (not the quantizer's 0.99): after the k-means init on the untrained first
    # batch, 0.99 left ~90% of a 512-entry codebook dead for hundreds of steps on Fashion-MNIST.
    vq_decay: float = 0.95
    vq_kmeans_init: bool = True
    vq_kmeans_iters: int = 10
    # restart a code whose EMA usage (vectors per step) falls below this; ~0.3-0.6x the mean
    # usage batch * h * w / codebook_size works best (presets document their batch size)
    vq_dead_code_threshold: float = 2.0
    vq_cosine: bool = False
    quantizer_dropout: float = 0.0

    def __post_init__(self) -> None:
        def need(ok: bool, what: str, got: Any) -> None:
            if not ok:
                raise ValueError(f"ImageTokenizerConfig: expected {what}, got {got!r}")

        def pos_int(v: Any) -> bool:
            return isinstance(v, int) and not isinstance(v, bool) and v > 0

        need(pos_int(self.in_channels), "in_channels a positive int", self.in_channels)
        need(self.downsample in _DOWNSAMPLES, f"downsample one of {_DOWNSAMPLES}", self.downsample)
        need(pos_int(self.codebook_size) and self.codebook_size >= 2, "codebook_size an int >= 2",
             self.codebook_size)
        need(pos_int(self.num_codebooks), "num_codebooks a positive int", self.num_codebooks)
        need(self.image_size is None or (pos_int(self.image_size)
                                         and self.image_size % self.downsample == 0),
             f"image_size None or a positive multiple of downsample={self.downsample}",
             self.image_size)
        need(pos_int(self.channels), "channels a positive int", self.channels)
        levels = self.num_levels
        if self.channel_mult is not None:
            self.channel_mult = tuple(self.channel_mult)
            need(len(self.channel_mult) == levels and all(pos_int(m) for m in self.channel_mult),
                 f"channel_mult None or {levels} positive ints (log2(downsample) + 1)",
                 self.channel_mult)
        need(isinstance(self.num_res_blocks, int) and self.num_res_blocks >= 0,
             "num_res_blocks an int >= 0", self.num_res_blocks)
        need(self.decoder_res_blocks is None
             or (isinstance(self.decoder_res_blocks, int) and self.decoder_res_blocks >= 0),
             "decoder_res_blocks None or an int >= 0", self.decoder_res_blocks)
        need(0.0 <= self.dropout < 1.0, "dropout in [0, 1)", self.dropout)
        need(pos_int(self.latent_dim), "latent_dim a positive int", self.latent_dim)
        need(self.codebook_dim is None or pos_int(self.codebook_dim),
             "codebook_dim None or a positive int", self.codebook_dim)
        need(self.recon_loss in ("mse", "l1"), "recon_loss 'mse' or 'l1'", self.recon_loss)
        need(0.0 <= self.quantizer_dropout <= 1.0, "quantizer_dropout in [0, 1]",
             self.quantizer_dropout)
        # the vq_* values are checked by VectorQuantizerConfig when the model is built

    @property
    def num_levels(self) -> int:
        """Resolution levels: ``log2(downsample) + 1``."""
        return int(math.log2(self.downsample)) + 1

    @property
    def widths(self) -> tuple[int, ...]:
        """Channel width per level, finest first."""
        mult = self.channel_mult or _AUTO_MULT[:self.num_levels]
        return tuple(self.channels * m for m in mult)


# --------------------------------------------------------------------------- networks
class ImageEncoder(nn.Module):
    """``(B, C, H, W)`` in [-1, 1] -> latents ``(B, latent_dim, H / d, W / d)``."""

    def __init__(self, cfg: ImageTokenizerConfig):
        super().__init__()
        widths = cfg.widths
        self.conv_in = conv(2, cfg.in_channels, widths[0], 3)
        blocks: list[nn.Module] = []
        for i in range(cfg.num_levels - 1):
            blocks += [ResBlock(widths[i], dropout=cfg.dropout) for _ in range(cfg.num_res_blocks)]
            blocks.append(Downsample(widths[i], widths[i + 1]))
        blocks += [ResBlock(widths[-1], dropout=cfg.dropout) for _ in range(cfg.num_res_blocks)]
        self.blocks = nn.Sequential(*blocks)
        self.norm_out = norm(widths[-1])
        self.conv_out = conv(2, widths[-1], cfg.latent_dim, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.blocks(self.conv_in(x))                  # (B, widths[-1], h, w)
        return self.conv_out(F.silu(self.norm_out(h)))    # (B, latent_dim, h, w)


class ImageDecoder(nn.Module):
    """Latents ``(B, latent_dim, h, w)`` -> ``(B, C, h * d, w * d)`` in roughly [-1, 1]."""

    def __init__(self, cfg: ImageTokenizerConfig):
        super().__init__()
        widths = cfg.widths
        n = cfg.num_res_blocks if cfg.decoder_res_blocks is None else cfg.decoder_res_blocks
        self.conv_in = conv(2, cfg.latent_dim, widths[-1], 3)
        blocks: list[nn.Module] = [ResBlock(widths[-1], dropout=cfg.dropout) for _ in range(n)]
        for i in reversed(range(cfg.num_levels - 1)):
            blocks.append(Upsample(widths[i + 1], widths[i]))
            blocks += [ResBlock(widths[i], dropout=cfg.dropout) for _ in range(n)]
        self.blocks = nn.Sequential(*blocks)
        self.norm_out = norm(widths[0])
        self.conv_out = conv(2, widths[0], cfg.in_channels, 3)

    def forward(self, z: Tensor) -> Tensor:
        h = self.blocks(self.conv_in(z))                  # (B, widths[0], H, W)
        return self.conv_out(F.silu(self.norm_out(h)))    # (B, C, H, W)


# --------------------------------------------------------------------------- tokenizer
class ImageTokenizer(Tokenizer):
    """VQ-VAE image tokenizer.

    ``ImageTokenizer(ImageTokenizerConfig(...))`` or ``ImageTokenizer.from_config(in_channels=1,
    downsample=4, codebook_size=512, num_codebooks=1, ...)``; presets:
    :func:`image_tokenizer_28x28_gray`, :func:`image_tokenizer_32x32_rgb`,
    :func:`image_tokenizer_debug`.

    Inputs are images ``(B, in_channels, H, W)``, float in [0, 1] or uint8 (divided by 255), with
    ``H`` and ``W`` multiples of ``downsample`` (any such size works, not only ``image_size``).
    Codes are LongTensors ``(B, h, w)`` (one codebook) or ``(B, Q, h, w)``. ``decode`` gives
    float ``(B, C, H, W)`` clamped to [0, 1] without gradients; ``forward``'s ``recon`` is
    unclamped (it is trained on).

    Errors (``ValueError`` naming expected and actual): input not a 4-D tensor, wrong channel count,
    ``H``/``W`` not divisible by ``downsample``, an empty batch, a dtype other than float/uint8,
    NaN/inf values, float values outside [0, 1] (e.g. 0..255); codes of the wrong rank/levels,
    non-integer or out of ``[0, codebook_size)``.
    """

    config_class = ImageTokenizerConfig

    def __init__(self, config: ImageTokenizerConfig):
        super().__init__(config)
        cfg = config
        self.encoder = ImageEncoder(cfg)
        self.decoder = ImageDecoder(cfg)
        vq = dict(codebook_dim=cfg.codebook_dim, beta=cfg.vq_beta, use_ema=cfg.vq_use_ema,
                  decay=cfg.vq_decay, kmeans_init=cfg.vq_kmeans_init,
                  kmeans_iters=cfg.vq_kmeans_iters, dead_code_threshold=cfg.vq_dead_code_threshold,
                  cosine=cfg.vq_cosine, check_finite=False)  # inputs are checked here instead
        if cfg.num_codebooks == 1:
            self.quantizer = VectorQuantizer(cfg.latent_dim, cfg.codebook_size, **vq)
        else:
            self.quantizer = ResidualVQ(cfg.latent_dim, cfg.codebook_size, cfg.num_codebooks,
                                        quantizer_dropout=cfg.quantizer_dropout, **vq)
        self.to(memory_format=torch.channels_last)  # 4-D conv weights only; no device change

    # ----------------------------------------------------------------------- metadata
    @property
    def downsample(self) -> int:
        return self.config.downsample

    @property
    def in_channels(self) -> int:
        return self.config.in_channels

    def code_shape(self, *input_shape: int) -> tuple[int, ...]:
        """Codes of one image ``(C, H, W)``: ``(h, w)``, or ``(Q, h, w)`` with ``Q > 1`` codebooks.

        ``code_shape()`` uses ``(in_channels, image_size, image_size)`` from the config.
        Raises ``ValueError`` for a wrong channel count or sides not divisible by ``downsample``.
        """
        if not input_shape:
            if self.config.image_size is None:
                raise ValueError("code_shape() needs (C, H, W): this config has no image_size")
            s = self.config.image_size
            input_shape = (self.in_channels, s, s)
        if len(input_shape) != 3:
            raise ValueError(f"expected an image shape (C, H, W), got {input_shape}")
        c, h, w = input_shape
        self._check_geometry(c, h, w)
        grid = (h // self.downsample, w // self.downsample)
        return grid if self.num_codebooks == 1 else (self.num_codebooks, *grid)

    # ----------------------------------------------------------------------- checks
    def _check_geometry(self, c: int, h: int, w: int) -> None:
        if c != self.in_channels:
            raise ValueError(f"expected {self.in_channels} image channel(s), got {c}")
        d = self.downsample
        if h % d or w % d or h == 0 or w == 0:
            raise ValueError(f"expected image height and width divisible by downsample={d}, "
                             f"got {h}x{w}")

    def _prepare(self, x: Tensor) -> Tensor:
        """Validate images and map them to [-1, 1] in the model's dtype, channels_last."""
        c = self.in_channels
        if not isinstance(x, Tensor):
            raise ValueError(f"expected images as a tensor (B, {c}, H, W), got {type(x).__name__}")
        if x.dim() != 4:
            raise ValueError(f"expected images of shape (B, {c}, H, W), got shape {tuple(x.shape)}")
        if x.shape[0] == 0:
            raise ValueError(f"expected at least one image, got shape {tuple(x.shape)}")
        self._check_geometry(*x.shape[1:])
        if x.dtype == torch.uint8:
            x = x.float() / 255.0
        elif not x.is_floating_point():
            raise ValueError(f"expected float images in [0, 1] or uint8, got dtype {x.dtype}")
        else:
            lo, hi = torch.aminmax(x.detach())
            lo, hi = float(lo), float(hi)          # NaN propagates into both; one host sync
            if not (math.isfinite(lo) and math.isfinite(hi)):
                raise ValueError(f"expected finite pixel values, got "
                                 f"{int((~torch.isfinite(x)).sum())} NaN/inf value(s)")
            if lo < 0.0 or hi > 1.0:
                raise ValueError(f"expected float images in [0, 1] (or uint8), got values in "
                                 f"[{lo:.4g}, {hi:.4g}]{' (0..255? divide by 255)' if hi > 2 else ''}")
        x = x.to(self.encoder.conv_in.weight.dtype) * 2.0 - 1.0  # (B, C, H, W) in [-1, 1]
        return x.contiguous(memory_format=torch.channels_last)

    def _prepare_codes(self, codes: Tensor) -> Tensor:
        """Validate codes and return them channel-last: ``(B, h, w)`` or ``(B, h, w, Q)``."""
        q = self.num_codebooks
        codes = self.check_codes(codes, ndim=3 if q == 1 else 4)
        if q > 1:
            if codes.shape[1] != q:
                raise ValueError(f"expected codes (B, {q}, h, w), got shape {tuple(codes.shape)}")
            codes = codes.permute(0, 2, 3, 1)  # (B, h, w, Q)
        return codes

    # ----------------------------------------------------------------------- API
    def _latents(self, x: Tensor) -> Tensor:
        """Images -> channel-last latents ``(B, h, w, latent_dim)`` (a view, no copy)."""
        return self.encoder(self._prepare(x)).permute(0, 2, 3, 1)

    def _decode_latents(self, zq: Tensor) -> Tensor:
        """Channel-last latents ``(B, h, w, D)`` -> images ``(B, C, H, W)`` in ~[0, 1]."""
        zq = zq.to(self.decoder.conv_in.weight.dtype).permute(0, 3, 1, 2)  # (B, D, h, w)
        return self.decoder(zq) * 0.5 + 0.5

    @torch.no_grad()
    def encode(self, x: Tensor) -> Tensor:
        """Images ``(B, C, H, W)`` -> codes ``(B, h, w)`` or ``(B, Q, h, w)`` (int64).

        Never changes the codebook (no EMA update, no k-means init) even in training mode.
        """
        codes = self.quantizer.encode(self._latents(x))  # (B, h, w) or (B, h, w, Q)
        return codes if codes.dim() == 3 else codes.permute(0, 3, 1, 2).contiguous()

    @torch.no_grad()
    def decode(self, codes: Tensor) -> Tensor:
        """Codes ``(B, h, w)`` / ``(B, Q, h, w)`` -> float images ``(B, C, h * d, w * d)`` in
        [0, 1] (clamped), without gradients (training goes through :meth:`forward`)."""
        return self._decode_latents(self.quantizer.decode(self._prepare_codes(codes))).clamp(0, 1)

    def forward(self, x: Tensor) -> TokenizerOutput:
        """Reconstruct ``x`` ``(B, C, H, W)`` through the quantizer (training entry point).

        Returns :class:`TokenizerOutput` with ``recon`` ``(B, C, H, W)``, ``codes`` as
        :meth:`encode`, ``loss = recon_loss + vq_loss`` (fp32 scalar) and ``metrics`` 0-d tensors
        ``recon_loss``, ``vq_loss``, ``perplexity``, ``usage``, ``dead_codes`` (batch values).
        In training mode the quantizer updates its codebook (EMA, k-means init, restarts).
        """
        target = self._prepare(x)                                     # (B, C, H, W) in [-1, 1]
        z = self.encoder(target).permute(0, 2, 3, 1)                  # (B, h, w, D)
        q = self.quantizer(z)
        recon = self._decode_latents(q.quantized)                     # (B, C, H, W)
        target01 = target.float() * 0.5 + 0.5
        loss_fn = F.mse_loss if self.config.recon_loss == "mse" else F.l1_loss
        recon_loss = loss_fn(recon.float(), target01)
        vq_loss = q.loss.float()
        codes = q.codes if q.codes.dim() == 3 else q.codes.permute(0, 3, 1, 2)
        metrics = {"recon_loss": recon_loss.detach(), "vq_loss": vq_loss.detach(),
                   **{k: q.metrics[k].detach() for k in ("perplexity", "usage", "dead_codes")}}
        return TokenizerOutput(recon=recon, codes=codes, loss=recon_loss + vq_loss, metrics=metrics)


# --------------------------------------------------------------------------- presets
def _preset(values: dict[str, Any], overrides: dict[str, Any]) -> ImageTokenizer:
    """Build a preset; a ``downsample`` override without ``channel_mult`` resizes the preset's
    multipliers (repeating the last one, or truncating) so the override just works."""
    if "downsample" in overrides and "channel_mult" not in overrides:
        mult = tuple(values["channel_mult"])
        d = overrides["downsample"]
        levels = int(math.log2(d)) + 1 if d in _DOWNSAMPLES else len(mult)  # bad d: config raises
        values = {**values, "channel_mult": (mult + mult[-1:] * levels)[:levels]}
    return ImageTokenizer.from_config(values, **overrides)


def image_tokenizer_debug(**overrides: Any) -> ImageTokenizer:
    """Tiny tokenizer for tests: 1x16x16 -> 4x4 codes from 64 entries, widths 16/32/32
    (~130k parameters, a CPU training step at batch 32 takes ~0.1 s)."""
    values = dict(in_channels=1, downsample=4, codebook_size=64, image_size=16, channels=16,
                  channel_mult=(1, 2, 2), num_res_blocks=1, latent_dim=16, vq_kmeans_iters=4,
                  vq_dead_code_threshold=4.0)
    return _preset(values, overrides)


def image_tokenizer_28x28_gray(**overrides: Any) -> ImageTokenizer:
    """Fashion-MNIST/MNIST tokenizer: 1x28x28 -> 7x7 codes from 512 entries (~4.4M parameters).

    Widths 32/64/256 at 28/14/7 px: the full-resolution levels, the expensive ones, are kept thin
    and the capacity sits at the 7x7 code grid; one residual block per level in the encoder, two in
    the decoder. EMA quantizer (decay 0.95) with k-means init and dead-code restarts. The recipe's
    ``--preset full`` trains it 3,000 steps at batch 256 (AdamW, peak LR 5e-4, warmup + cosine,
    bf16 autocast, ``torch.compile``); see ``benchmarks/RESULTS.md`` for what that reached. The
    earlier 8.6M-parameter variant (widths 32/128/256, 2/3 blocks) was ~1 dB ahead at step 250-300
    but trained 2x slower on a 2-core CPU (123 vs 251 images/s, bf16
    with encoder and decoder compiled).

    ``vq_dead_code_threshold=10`` is tuned for batch 256 (256 * 49 / 512 = 24.5 vectors per code
    per step): a code is restarted when it gets under ~40% of the mean usage, which keeps test
    perplexity near the codebook size. For other batch sizes pass about
    ``0.4 * batch * 49 / codebook_size``.

    In CPU trials peak LRs of 2.5e-4-5e-4 learned fastest, while 1e-3-2e-3 squeezed the latents
    onto a near-discrete low-rank set and lost 1.5-2.5 dB early on.
    """
    values = dict(in_channels=1, downsample=4, codebook_size=512, image_size=28, channels=32,
                  channel_mult=(1, 2, 8), num_res_blocks=1, decoder_res_blocks=2,
                  latent_dim=64, vq_decay=0.95, vq_dead_code_threshold=10.0)
    return _preset(values, overrides)


def image_tokenizer_32x32_rgb(**overrides: Any) -> ImageTokenizer:
    """CIFAR-10-sized tokenizer: 3x32x32 -> 8x8 codes from 1024 entries (~9M parameters).

    Widths 64/128/256 at 32/16/8 px, two residual blocks per level (three in the decoder), the
    quantizer recipe of :func:`image_tokenizer_28x28_gray`; the dead-code threshold is tuned for
    batch 256 (16 vectors per code per step): pass about ``0.4 * batch * 64 / codebook_size``.
    """
    values = dict(in_channels=3, downsample=4, codebook_size=1024, image_size=32, channels=64,
                  channel_mult=(1, 2, 4), num_res_blocks=2, decoder_res_blocks=3,
                  latent_dim=64, vq_decay=0.95, vq_dead_code_threshold=6.0)
    return _preset(values, overrides)
