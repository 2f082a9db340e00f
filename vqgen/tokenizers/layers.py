"""Convolutional building blocks shared by the tokenizers (2D images, 1D audio).

Every block takes ``dims`` (1 or 2) and works on channel-first tensors: ``(B, C, L)`` for
``dims=1`` and ``(B, C, H, W)`` for ``dims=2``. They use only ops that have fast channels_last
kernels (convolutions, GroupNorm, SiLU, nearest interpolation), so a caller can convert the model
and its inputs with ``memory_format=torch.channels_last``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["conv", "norm", "num_groups", "ResBlock", "Downsample", "Upsample", "ConvNeXtBlock1d"]


def conv(dims: int, in_channels: int, out_channels: int, kernel_size: int = 3,
         stride: int = 1, padding: int | None = None) -> nn.Module:
    """``nn.Conv1d``/``nn.Conv2d`` with "same" padding for odd kernels by default."""
    if dims not in (1, 2):
        raise ValueError(f"dims must be 1 or 2, got {dims}")
    cls = nn.Conv1d if dims == 1 else nn.Conv2d
    if padding is None:
        padding = kernel_size // 2
    return cls(in_channels, out_channels, kernel_size, stride=stride, padding=padding)


def num_groups(channels: int, max_groups: int = 32, min_group_size: int = 4) -> int:
    """GroupNorm group count: the largest divisor of ``channels`` that is <= ``max_groups`` and
    leaves at least ``min_group_size`` channels per group (32 groups of 4 at 128 channels, 8
    groups of 4 at 32: narrow layers do not degenerate into per-channel instance norm)."""
    limit = max(1, min(max_groups, channels // min_group_size))
    return next(g for g in range(limit, 0, -1) if channels % g == 0)


def norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups(channels), channels, eps=1e-6)


class ResBlock(nn.Module):
    """Pre-activation residual block: ``x + conv(SiLU(GN(conv(SiLU(GN(x))))))``.

    Input ``(B, in_channels, *spatial)``, output ``(B, out_channels, *spatial)``; a 1x1 conv
    projects the skip path when the channel count changes. The last conv starts at zero
    (``zero_init=True``) so a fresh block is the identity, which keeps deep stacks stable.
    """

    def __init__(self, in_channels: int, out_channels: int | None = None, dims: int = 2,
                 dropout: float = 0.0, zero_init: bool = True):
        super().__init__()
        out_channels = out_channels or in_channels
        self.norm1 = norm(in_channels)
        self.conv1 = conv(dims, in_channels, out_channels, 3)
        self.norm2 = norm(out_channels)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = conv(dims, out_channels, out_channels, 3)
        if zero_init:
            nn.init.zeros_(self.conv2.weight)
            nn.init.zeros_(self.conv2.bias)
        self.skip = (conv(dims, in_channels, out_channels, 1) if in_channels != out_channels
                     else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))  # (B, out, *spatial)
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class Downsample(nn.Module):
    """Strided convolution dividing every spatial size by ``factor``.

    Kernel ``2 * factor`` with ``factor`` total padding, so a length ``L`` divisible by ``factor``
    maps exactly to ``L // factor``: ``(B, C_in, *S) -> (B, C_out, *(S // factor))``. Odd factors
    (audio hop sizes such as 5) are padded asymmetrically.
    """

    def __init__(self, in_channels: int, out_channels: int | None = None, dims: int = 2,
                 factor: int = 2):
        super().__init__()
        if factor < 2:
            raise ValueError(f"Downsample factor must be >= 2, got {factor}")
        out_channels = out_channels or in_channels
        self.factor = factor
        left, right = factor // 2, factor - factor // 2
        self.pad = None if left == right else (left, right) * dims
        self.conv = conv(dims, in_channels, out_channels, 2 * factor, stride=factor,
                         padding=left if left == right else 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pad is not None:
            x = F.pad(x, self.pad)
        return self.conv(x)


class Upsample(nn.Module):
    """Multiply every spatial size by ``factor``: ``(B, C_in, *S) -> (B, C_out, *(S * factor))``.

    ``mode="nearest"`` repeats samples then applies a 3-wide conv (no checkerboard artefacts);
    ``mode="transpose"`` uses a transposed conv with kernel ``2 * factor`` (cheaper for large
    factors, as in audio decoders).
    """

    def __init__(self, in_channels: int, out_channels: int | None = None, dims: int = 2,
                 factor: int = 2, mode: str = "nearest"):
        super().__init__()
        if factor < 2:
            raise ValueError(f"Upsample factor must be >= 2, got {factor}")
        if mode not in ("nearest", "transpose"):
            raise ValueError(f"Upsample mode must be 'nearest' or 'transpose', got {mode!r}")
        out_channels = out_channels or in_channels
        self.factor, self.mode = factor, mode
        if mode == "nearest":
            self.conv = conv(dims, in_channels, out_channels, 3)
        else:
            cls = nn.ConvTranspose1d if dims == 1 else nn.ConvTranspose2d
            # out = (L - 1) * f - 2p + 2f + op == L * f  when  op = 2p - f
            p = (factor + 1) // 2
            self.conv = cls(in_channels, out_channels, 2 * factor, stride=factor, padding=p,
                            output_padding=2 * p - factor)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "nearest":
            x = F.interpolate(x, scale_factor=self.factor, mode="nearest")
        return self.conv(x)


class ConvNeXtBlock1d(nn.Module):
    """ConvNeXt block over a 1D sequence (Vocos/ConvNeXt-1D): depthwise conv (``kernel_size``,
    "same" padding), LayerNorm over channels, pointwise MLP (``mult`` x wider, GELU) and a learned
    per-channel scale started at ``layer_scale`` around the residual.

    ``(B, C, L) -> (B, C, L)``; any ``L >= 1``.
    """

    def __init__(self, channels: int, kernel_size: int = 7, mult: int = 3, layer_scale: float = 1e-2):
        super().__init__()
        self.dwconv = nn.Conv1d(channels, channels, kernel_size, padding=kernel_size // 2, groups=channels)
        self.norm = nn.LayerNorm(channels, eps=1e-6)
        self.pw1 = nn.Linear(channels, mult * channels)
        self.pw2 = nn.Linear(mult * channels, channels)
        self.scale = nn.Parameter(torch.full((channels,), float(layer_scale)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.dwconv(x).transpose(1, 2)                  # (B, L, C)
        h = self.pw2(F.gelu(self.pw1(self.norm(h))))        # (B, L, C)
        return x + (self.scale * h).transpose(1, 2)         # (B, C, L)
