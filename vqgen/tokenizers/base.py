"""The tokenizer interface shared by every modality.

A tokenizer is a VQ-VAE: ``encode(x) -> LongTensor codes``, ``decode(codes) -> x_hat`` and
``forward(x) -> TokenizerOutput`` for training. Code layout per modality is documented on each
class (images: ``(B, h, w)`` or ``(B, Q, h, w)``; audio: ``(B, Q, frames)``; text: ``(B, L)``).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..modeling import ConfigModel


@dataclass
class TokenizerOutput:
    """Result of ``Tokenizer.forward``.

    recon:   reconstruction, same shape as the input.
    codes:   LongTensor codes (layout as ``encode``).
    loss:    scalar training loss = reconstruction loss + quantizer loss.
    metrics: floats/0-d tensors, at least ``recon_loss``, ``vq_loss``, ``perplexity``, ``usage``.
    """

    recon: torch.Tensor
    codes: torch.Tensor
    loss: torch.Tensor
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)


class Tokenizer(ConfigModel):
    """Base class: subclasses implement ``encode``, ``decode``, ``forward`` and the properties."""

    @property
    def codebook_size(self) -> int:
        return self.config.codebook_size

    @property
    def num_codebooks(self) -> int:
        return self.config.num_codebooks

    def code_shape(self, *input_shape: int) -> tuple[int, ...]:
        """Shape of one sample's codes for an input of the given (unbatched) shape."""
        raise NotImplementedError

    def check_codes(self, codes: torch.Tensor, ndim: int) -> torch.Tensor:
        """Validate codes: integer dtype, rank ``ndim`` and values in ``[0, codebook_size)``."""
        if not isinstance(codes, torch.Tensor):
            raise ValueError(f"expected codes as a LongTensor, got {type(codes).__name__}")
        if codes.dtype.is_floating_point or codes.dtype == torch.bool:
            raise ValueError(f"expected integer codes, got dtype {codes.dtype}")
        if codes.dim() != ndim:
            raise ValueError(f"expected codes of rank {ndim}, got shape {tuple(codes.shape)}")
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.codebook_size):
            raise ValueError(
                f"codes out of range: expected values in [0, {self.codebook_size}), "
                f"got min {int(codes.min())} max {int(codes.max())}")
        return codes.long()

    def encode(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def decode(self, codes: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError
