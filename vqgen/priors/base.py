"""The prior interface and the sampling helpers shared by every prior.

A prior models ``p(codes | label)`` autoregressively over one sample's code grid ``code_shape``
(e.g. ``(7, 7)`` for images, ``(Q, T)`` for multi-codebook audio, ``(L,)`` for text).

- ``logits(codes, labels) -> (B, K, *code_shape)``: teacher-forced and causal in the prior's order.
- ``nll(codes, labels) -> (B,)`` nats per sample; ``loss(codes, labels)`` mean nats per code.
- ``generate(n, labels, temperature, top_k, top_p, cfg_scale, generator) -> (n, *code_shape)``.

Class conditioning: a config with ``num_classes`` adds a learned embedding with one extra "null"
row (index ``num_classes``). In training mode labels are replaced by the null label with
probability ``label_dropout`` so classifier-free guidance (``cfg_scale != 1``) has an
unconditional model to contrast with.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..modeling import ConfigModel


# --------------------------------------------------------------------------- sampling helpers
def check_sampling_args(temperature: float, top_k: int | None, top_p: float | None,
                        cfg_scale: float) -> None:
    """Raise ``ValueError`` for out-of-range sampling settings."""
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    if top_k is not None and (not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k must be None or an int >= 1, got {top_k!r}")
    if top_p is not None and not (isinstance(top_p, (int, float)) and 0 < top_p <= 1):
        raise ValueError(f"top_p must be None or in (0, 1], got {top_p!r}")
    if not (isinstance(cfg_scale, (int, float)) and math.isfinite(cfg_scale) and cfg_scale >= 0):
        raise ValueError(f"cfg_scale must be a finite number >= 0, got {cfg_scale!r}")


def filter_logits(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                  top_p: float | None = None) -> torch.Tensor:
    """Apply temperature, then top-k, then nucleus (top-p) filtering over the last dim.

    Filtered entries become ``-inf``; at least the most likely entry always survives.
    """
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        # drop a token when the mass strictly before it already reaches top_p
        drop_sorted = (cum - sorted_logits.softmax(-1)) >= top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sample_logits(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                  top_p: float | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Sample one index per row of ``logits (..., K)``; returns LongTensor ``(...)``.

    Uses inverse-CDF sampling with one uniform per row drawn from ``generator`` so that two
    callers producing the same logits (e.g. cached and uncached decoding) draw the same codes.
    """
    probs = filter_logits(logits, temperature, top_k, top_p).softmax(-1)
    flat = probs.reshape(-1, probs.shape[-1])
    u = torch.rand(flat.shape[0], 1, generator=generator, device="cpu").to(flat.device, non_blocking=True)
    cdf = flat.cumsum(-1)
    idx = torch.searchsorted(cdf, u * cdf[:, -1:], right=False).clamp_(max=flat.shape[-1] - 1)
    return idx.reshape(probs.shape[:-1])


def cfg_combine(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance: ``uncond + scale * (cond - uncond)`` on logits."""
    return uncond + scale * (cond - uncond)


# --------------------------------------------------------------------------- base class
class Prior(ConfigModel):
    """Base of ``PixelCNNPrior`` and ``TransformerPrior``; the config has at least
    ``codebook_size``, ``code_shape``, ``num_classes`` and ``label_dropout``."""

    @property
    def codebook_size(self) -> int:
        return self.config.codebook_size

    @property
    def code_shape(self) -> tuple[int, ...]:
        return tuple(self.config.code_shape)

    @property
    def num_classes(self) -> int | None:
        return self.config.num_classes

    def check_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes must be integer ``(B, *code_shape)`` with values in ``[0, codebook_size)``."""
        if not isinstance(codes, torch.Tensor):
            raise ValueError(f"expected codes as a LongTensor, got {type(codes).__name__}")
        if codes.dtype.is_floating_point or codes.dtype == torch.bool:
            raise ValueError(f"expected integer codes, got dtype {codes.dtype}")
        if tuple(codes.shape[1:]) != self.code_shape or codes.dim() != len(self.code_shape) + 1:
            raise ValueError(f"expected codes of shape (B, {', '.join(map(str, self.code_shape))}), "
                             f"got {tuple(codes.shape)}")
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.codebook_size):
            raise ValueError(f"codes out of range: expected values in [0, {self.codebook_size}), "
                             f"got min {int(codes.min())} max {int(codes.max())}")
        return codes.long()

    def check_labels(self, labels: torch.Tensor | int | list | None, batch: int,
                     device: torch.device | str = "cpu") -> torch.Tensor | None:
        """Return labels as LongTensor ``(batch,)`` or None; ``ValueError`` on misuse."""
        if labels is None:
            return None
        if self.num_classes is None:
            raise ValueError("labels given to an unconditional prior (num_classes=None)")
        labels = torch.as_tensor(labels, device=device)
        if labels.dtype.is_floating_point or labels.dtype == torch.bool:
            raise ValueError(f"expected integer labels, got dtype {labels.dtype}")
        if labels.dim() == 0:
            labels = labels.expand(batch)
        if labels.shape != (batch,):
            raise ValueError(f"expected labels of shape ({batch},), got {tuple(labels.shape)}")
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
            raise ValueError(f"unknown label: expected values in [0, {self.num_classes}), "
                             f"got min {int(labels.min())} max {int(labels.max())}")
        return labels.long()

    def condition_labels(self, labels: torch.Tensor | None, batch: int,
                         device: torch.device) -> torch.Tensor | None:
        """Labels used by the network: None for unconditional priors; the null label
        ``num_classes`` where labels are absent, and label dropout in training mode."""
        if self.num_classes is None:
            return None
        if labels is None:
            return torch.full((batch,), self.num_classes, dtype=torch.long, device=device)
        if self.training and self.config.label_dropout > 0:
            drop = torch.rand(batch, device=device) < self.config.label_dropout
            labels = labels.masked_fill(drop, self.num_classes)
        return labels

    def logits(self, codes: torch.Tensor, labels=None) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def nll(self, codes: torch.Tensor, labels=None) -> torch.Tensor:
        """Negative log-likelihood in nats per sample, ``(B,)``."""
        codes = self.check_codes(codes)
        logits = self.logits(codes, labels)
        per_code = F.cross_entropy(logits.float(), codes, reduction="none")
        return per_code.flatten(1).sum(1)

    def loss(self, codes: torch.Tensor, labels=None) -> torch.Tensor:
        """Mean NLL in nats per code (the training loss)."""
        codes = self.check_codes(codes)
        logits = self.logits(codes, labels)
        return F.cross_entropy(logits.float(), codes)

    def forward(self, codes: torch.Tensor, labels=None) -> torch.Tensor:
        return self.logits(codes, labels)

    def generate(self, n: int, labels=None, temperature: float = 1.0, top_k: int | None = None,
                 top_p: float | None = None, cfg_scale: float = 1.0,
                 generator: torch.Generator | None = None) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def _prepare_generate(self, n: int, labels, temperature, top_k, top_p, cfg_scale,
                          device) -> torch.Tensor | None:
        """Shared argument checks for ``generate``; returns validated labels."""
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be an int >= 1, got {n!r}")
        check_sampling_args(temperature, top_k, top_p, cfg_scale)
        labels = self.check_labels(labels, n, device)
        if cfg_scale != 1.0 and labels is None:
            raise ValueError(f"cfg_scale={cfg_scale} needs labels on a class-conditional prior")
        return labels
