"""The prior interface and the sampling helpers shared by every prior.

A prior models ``p(codes | label)`` autoregressively over one sample's code grid ``code_shape``
(e.g. ``(7, 7)`` for images, ``(Q, T)`` for multi-codebook audio, ``(L,)`` for text).

- ``logits(codes, labels) -> (B, K, *code_shape)``: teacher-forced and causal in the prior's order.
- ``nll(codes, labels) -> (B,)`` nats per sample; ``loss(codes, labels)`` mean nats per code.
- ``generate(n, labels, temperature, top_k, top_p, cfg_scale, generator, batch_size)
  -> (n, *code_shape)``.

Class conditioning: a config with ``num_classes`` adds a learned embedding with one extra "null"
row (index ``num_classes``). In training mode labels are replaced by the null label with
probability ``label_dropout`` so classifier-free guidance (``cfg_scale != 1``) has an
unconditional model to contrast with. ``id2label`` in the config names the classes, so every
``labels`` argument takes ids or names (:meth:`Prior.label_ids`).

Reproducibility: ``generate`` draws one seed per sample from ``generator`` and each sample then
takes every uniform it needs from its own stream (:func:`sample_uniforms`), so a seed gives the
same samples whatever the batch size, and cached and naive/uncached decoders agree.
"""
from __future__ import annotations

import contextlib
import math
import numbers
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

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
                  top_p: float | None = None, generator: torch.Generator | None = None,
                  uniform: torch.Tensor | None = None) -> torch.Tensor:
    """Sample one index per row of ``logits (..., K)``; returns LongTensor ``(...)``.

    Inverse-CDF sampling with one uniform per row: ``uniform`` (shaped like ``logits[..., 0]``,
    values in [0, 1)) when given, else drawn from ``generator``. Two callers producing the same
    logits and uniforms (e.g. cached and uncached decoding) draw the same codes.
    """
    probs = filter_logits(logits, temperature, top_k, top_p).softmax(-1)
    flat = probs.reshape(-1, probs.shape[-1])
    if uniform is None:
        u = torch.rand(flat.shape[0], 1, generator=generator, device="cpu")
    else:
        if uniform.numel() != flat.shape[0]:
            raise ValueError(f"expected {flat.shape[0]} uniforms (one per row of logits "
                             f"{tuple(logits.shape)}), got {tuple(uniform.shape)}")
        u = uniform.reshape(-1, 1).float()
    u = u.to(flat.device, non_blocking=True)
    cdf = flat.cumsum(-1)
    idx = torch.searchsorted(cdf, u * cdf[:, -1:], right=False).clamp_(max=flat.shape[-1] - 1)
    return idx.reshape(probs.shape[:-1])


def cfg_combine(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance: ``uncond + scale * (cond - uncond)`` on logits."""
    return uncond + scale * (cond - uncond)


def sample_seeds(n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """One 63-bit seed per sample, ``(n,)`` int64, drawn from ``generator`` (CPU; None: the
    global RNG). Sample ``i`` then draws every random number from its own stream seeded with
    ``seeds[i]``, which is what makes sampling independent of the batch size."""
    return torch.randint(0, 2 ** 63 - 1, (n,), generator=generator, dtype=torch.long)


def sample_uniforms(seeds: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Uniforms in [0, 1) per sample, ``(len(seeds), *shape)``: row ``i`` comes from a CPU
    generator seeded with ``seeds[i]``, so it does not depend on the other rows."""
    return torch.stack([torch.rand(shape, generator=torch.Generator().manual_seed(int(s)))
                        for s in seeds.tolist()]) if len(seeds) else torch.empty(0, *shape)


# --------------------------------------------------------------------------- config helpers
# Names of the order in which a prior reads ``code_shape``; both priors share them.
#   raster: raster order over the code grid as given (images (h, w), sequences (L,));
#   frames: multi-codebook (Q, T) codes, frame-major (all levels of frame t before frame t + 1);
#   delay:  (Q, T) in the MusicGen delay pattern (TransformerPrior only).
# "grid" (PixelCNN) and "flat" (TransformerPrior) are the old names of "raster"; configs that
# use them still load and are stored under the new name.
LAYOUT_ALIASES = {"grid": "raster", "flat": "raster"}


def resolve_layout(layout, allowed: tuple[str, ...]) -> str:
    """Map an old layout name to its current one; ``ValueError`` for anything not in ``allowed``."""
    name = LAYOUT_ALIASES.get(layout, layout) if isinstance(layout, str) else layout
    if name not in allowed:
        raise ValueError(f"layout must be one of {allowed} (or the old names "
                         f"{sorted(LAYOUT_ALIASES)}), got {layout!r}")
    return name


def normalize_id2label(id2label, num_classes: int | None) -> dict[int, str] | None:
    """Check class names against ``num_classes`` and return ``{int id: name}`` (or None).

    ``config.json`` stores the keys as strings; they are turned back into ints here. Every class
    ``0 .. num_classes - 1`` needs exactly one non-empty, unique name. Raises ``ValueError``.
    """
    if id2label is None:
        return None
    if num_classes is None:
        raise ValueError("id2label needs num_classes (class names on an unconditional prior)")
    if not isinstance(id2label, dict):
        raise ValueError(f"id2label must be a dict {{id: name}}, got {type(id2label).__name__}")
    out = {}
    for key, name in id2label.items():
        try:
            idx = int(key)
        except (TypeError, ValueError):
            raise ValueError(f"id2label keys must be class ids (ints), got {key!r}") from None
        if isinstance(key, (bool, float)) or (isinstance(key, str) and str(idx) != key.strip()):
            raise ValueError(f"id2label keys must be class ids (ints), got {key!r}")
        if not isinstance(name, str) or not name:
            raise ValueError(f"id2label[{idx}] must be a non-empty string, got {name!r}")
        out[idx] = name
    if sorted(out) != list(range(num_classes)):
        raise ValueError(f"id2label must name every class 0..{num_classes - 1} once "
                         f"(num_classes={num_classes}), got ids {sorted(out)}")
    if len(set(out.values())) != len(out):
        raise ValueError(f"id2label names must be unique, got {sorted(out.values())}")
    return dict(sorted(out.items()))


# --------------------------------------------------------------------------- base class
class Prior(ConfigModel):
    """Base of ``PixelCNNPrior`` and ``TransformerPrior``; the config has at least
    ``codebook_size``, ``code_shape``, ``num_classes``, ``id2label`` and ``label_dropout``.

    Subclasses implement ``logits`` and ``_sample_batch``; ``generate`` (here) validates the
    arguments, gives every sample its own random stream and runs ``_sample_batch`` per chunk.
    """

    @property
    def codebook_size(self) -> int:
        return self.config.codebook_size

    @property
    def code_shape(self) -> tuple[int, ...]:
        return tuple(self.config.code_shape)

    @property
    def num_classes(self) -> int | None:
        return self.config.num_classes

    @property
    def id2label(self) -> dict[int, str] | None:
        """Class names by id (the transformers convention), or None when unnamed."""
        return self.config.id2label

    @property
    def label2id(self) -> dict[str, int] | None:
        return None if self.id2label is None else {v: k for k, v in self.id2label.items()}

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

    def _label_id(self, label) -> int:
        """One label (a class name or an id) -> its int id (range checked by the caller)."""
        if isinstance(label, str):
            names = self.label2id
            if names is None:
                raise ValueError(f"label {label!r} is a name but this prior has no class names "
                                 f"(id2label is None); pass ids in [0, {self.num_classes})")
            if label not in names:
                raise ValueError(f"unknown label {label!r}; expected one of {sorted(names)} "
                                 f"or an id in [0, {self.num_classes})")
            return names[label]
        if isinstance(label, torch.Tensor) and label.dim() == 0:
            label = label.item()
        if isinstance(label, bool) or not isinstance(label, numbers.Integral):
            raise ValueError(f"expected integer labels or class names, got {label!r}")
        return int(label)

    def label_ids(self, labels, batch: int, device: torch.device | str = "cpu"
                  ) -> torch.Tensor | None:
        """Labels as LongTensor ``(batch,)`` of class ids, or None when ``labels`` is None.

        ``labels``: an int or a class name (``id2label``) for the whole batch, a list/tuple mixing
        ids and names, or an integer tensor (0-d or ``(batch,)``). Raises ``ValueError`` for
        labels on an unconditional prior, an unknown name (the message lists the valid ones), a
        name on a prior without ``id2label``, a float/bool dtype, a wrong count or an id outside
        ``[0, num_classes)``.
        """
        if labels is None:
            return None
        if self.num_classes is None:
            raise ValueError("labels given to an unconditional prior (num_classes=None)")
        if isinstance(labels, (str, numbers.Integral)) and not isinstance(labels, bool):
            labels = torch.full((batch,), self._label_id(labels), dtype=torch.long)
        elif isinstance(labels, (list, tuple)):
            labels = torch.tensor([self._label_id(x) for x in labels], dtype=torch.long)
        labels = torch.as_tensor(labels)
        if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
            raise ValueError(f"expected integer labels or class names, got dtype {labels.dtype}")
        if labels.dim() == 0:
            labels = labels.expand(batch)
        if labels.shape != (batch,):
            raise ValueError(f"expected one label or {batch} labels, got shape {tuple(labels.shape)}")
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
            raise ValueError(f"unknown label: expected values in [0, {self.num_classes}), "
                             f"got min {int(labels.min())} max {int(labels.max())}")
        return labels.long().to(device)

    check_labels = label_ids  # the older name, kept for callers

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
        """Negative log-likelihood in nats per sample, ``(B,)``; labels as :meth:`label_ids`."""
        codes = self.check_codes(codes)
        logits = self.logits(codes, labels)
        per_code = F.cross_entropy(logits.float(), codes, reduction="none")
        return per_code.flatten(1).sum(1)

    def loss(self, codes: torch.Tensor, labels=None) -> torch.Tensor:
        """Mean NLL in nats per code (the training loss); labels as :meth:`label_ids`."""
        codes = self.check_codes(codes)
        logits = self.logits(codes, labels)
        return F.cross_entropy(logits.float(), codes)

    def forward(self, codes: torch.Tensor, labels=None) -> torch.Tensor:
        return self.logits(codes, labels)

    # ----------------------------------------------------------------------- sampling
    def sampling_draws(self) -> tuple[int, ...]:
        """Shape of the uniforms one sample consumes, e.g. ``(steps, per_step)``."""
        raise NotImplementedError  # pragma: no cover

    def _sample_batch(self, labels: torch.Tensor | None, uniforms: torch.Tensor,
                      temperature: float, top_k, top_p, cfg_scale: float, progress: bool,
                      **options) -> torch.Tensor:  # pragma: no cover
        """Sample ``len(uniforms)`` code grids ``(m, *code_shape)``, drawing only from
        ``uniforms (m, *sampling_draws())``; ``labels`` validated ids ``(m,)`` or None."""
        raise NotImplementedError

    def generate(self, n: int, labels=None, temperature: float = 1.0, top_k: int | None = None,
                 top_p: float | None = None, cfg_scale: float = 1.0,
                 generator: torch.Generator | None = None, batch_size: int | None = None,
                 progress: bool = False, **options) -> torch.Tensor:
        """Sample ``n`` code grids, LongTensor ``(n, *code_shape)`` on the model's device.

        ``labels``: None (the null class / unconditional), an id or a class name for all, or
        ``n`` of them (see :meth:`label_ids`). ``temperature``, ``top_k``, ``top_p`` filter each
        step's logits; ``cfg_scale != 1`` applies classifier-free guidance (needs labels).
        ``generator`` (CPU) seeds one random stream per sample, so the same seed gives the same
        samples whatever ``batch_size`` (samples run per call; default all ``n`` at once).
        ``progress`` shows a bar over the sampling steps. Runs without gradients in eval mode
        (the module's mode is restored). Raises ``ValueError`` for bad ``n``, ``batch_size``,
        labels or sampling settings.
        """
        return self._generate(n, labels, temperature, top_k, top_p, cfg_scale, generator,
                              batch_size, progress, **options)

    @torch.no_grad()
    def _generate(self, n, labels, temperature, top_k, top_p, cfg_scale, generator, batch_size,
                  progress, **options) -> torch.Tensor:
        device = next(self.parameters()).device
        labels = self._prepare_generate(n, labels, temperature, top_k, top_p, cfg_scale, device)
        if batch_size is None:
            batch_size = n
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be None or an int >= 1, got {batch_size!r}")
        seeds = sample_seeds(n, generator)
        out = []
        with eval_mode(self):
            for start in range(0, n, batch_size):
                chunk = seeds[start:start + batch_size]
                lab = None if labels is None else labels[start:start + len(chunk)]
                uniforms = sample_uniforms(chunk, self.sampling_draws()).to(device)
                out.append(self._sample_batch(lab, uniforms, temperature, top_k, top_p,
                                              cfg_scale, progress, **options))
        return torch.cat(out)

    def _prepare_generate(self, n: int, labels, temperature, top_k, top_p, cfg_scale,
                          device) -> torch.Tensor | None:
        """Shared argument checks for ``generate``; returns validated label ids ``(n,)``."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be an int >= 1, got {n!r}")
        check_sampling_args(temperature, top_k, top_p, cfg_scale)
        labels = self.label_ids(labels, n, device)
        if cfg_scale != 1.0 and labels is None:
            raise ValueError(f"cfg_scale={cfg_scale} needs labels on a class-conditional prior")
        return labels


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[None]:
    """Temporarily put ``module`` in eval mode, restoring each submodule's flag afterwards."""
    flags = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, flag in flags:
            m.training = flag
