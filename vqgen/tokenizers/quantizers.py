"""Vector quantizers shared by every tokenizer: ``VectorQuantizer`` and ``ResidualVQ``.

Input is channel-last ``(..., dim)``. The quantizer math (projections, distances, EMA statistics)
always runs in fp32 with autocast disabled; outputs are cast back to the input dtype. Nearest codes
are found with chunked ``addmm`` + row-wise ``min`` (``||e||^2 - 2 z e^T``; ``||z||^2`` is constant per
row), so a 65,536-entry codebook never materialises an ``N x K`` distance matrix or one-hot; EMA
statistics use ``bincount`` / ``index_add_``.

Under ``torch.distributed`` (initialised, world size > 1) every training forward all-reduces the
batch code counts and code sums (one collective), and k-means init and dead-code restarts are
computed on every rank and then broadcast from rank 0, so all ranks call the same collectives in
the same order and keep bit-identical codebooks. Eval-mode calls run no collectives.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from ..modeling import ConfigModel, build_config

# Auto chunk: rows such that one (rows, K) fp32 distance block holds at most 2**26 floats (256 MiB).
_CHUNK_ELEMENTS = 2 ** 26


# --------------------------------------------------------------------------- helpers
def _world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _all_reduce_(t: Tensor) -> Tensor:
    if _world_size() > 1:
        dist.all_reduce(t)
    return t


def _broadcast_(t: Tensor) -> Tensor:
    """Overwrite ``t`` with rank 0's value (every rank calls this; no-op in one process)."""
    if _world_size() > 1:
        dist.broadcast(t, src=0)
    return t


def nearest_codes(x: Tensor, codebook: Tensor, chunk_size: int | None = None) -> tuple[Tensor, Tensor]:
    """Nearest code (squared L2) for each row, in fp32 even under autocast.

    x: ``(N, d)``, codebook: ``(K, d)`` (any float dtype; both are upcast to fp32).
    Returns ``codes`` LongTensor ``(N,)`` and ``sq_dist`` fp32 ``(N,)``, the squared distance to the
    chosen code. Rows are processed ``chunk_size`` at a time (``None``: as many as keep one chunk's
    ``(rows, K)`` block under 2**26 floats), so extra memory is ``rows x K`` floats, never ``N x K``.
    """
    with torch.autocast(x.device.type, enabled=False):
        x, codebook = x.detach().float(), codebook.detach().float()  # selection has no gradient
        n, k = x.shape[0], codebook.shape[0]
        rows = chunk_size or max(1, _CHUNK_ELEMENTS // max(k, 1))
        e_sq, cb_t = codebook.pow(2).sum(1), codebook.t()
        codes = torch.empty(n, dtype=torch.long, device=x.device)
        best = torch.empty(n, dtype=torch.float32, device=x.device)
        for start in range(0, n, rows):
            part = x[start:start + rows]
            # (rows, K): ||e||^2 - 2 z e^T
            torch.min(torch.addmm(e_sq, part, cb_t, alpha=-2.0), dim=1,
                      out=(best[start:start + rows], codes[start:start + rows]))
        sq_dist = (best + x.pow(2).sum(1)).clamp_(min=0)
    return codes, sq_dist


@torch.no_grad()
def kmeans(x: Tensor, k: int, iters: int, cosine: bool = False,
           chunk_size: int | None = None) -> tuple[Tensor, Tensor]:
    """Lloyd's k-means on ``x`` ``(N, d)`` fp32; returns centroids ``(k, d)`` and counts ``(k,)``.

    Centroids start at random rows (with replacement when ``N < k``); a cluster left empty is
    re-seeded at a random row. ``cosine`` renormalises centroids each iteration (spherical k-means).
    """
    n = x.shape[0]
    pick = torch.randperm(n, device=x.device)[:k] if n >= k else torch.randint(n, (k,), device=x.device)
    centroids = x[pick].clone()
    for step in range(iters + 1):
        codes, _ = nearest_codes(x, centroids, chunk_size)
        counts = torch.bincount(codes, minlength=k)
        if step == iters:
            break
        sums = torch.zeros_like(centroids).index_add_(0, codes, x)
        means = sums / counts.clamp(min=1).unsqueeze(1).to(x.dtype)
        if cosine:
            means = F.normalize(means, dim=-1)
        reseed = x[torch.randint(n, (k,), device=x.device)]
        centroids = torch.where((counts == 0).unsqueeze(1), reseed, means)
    return centroids, counts.to(x.dtype)


def _check_vectors(z: Any, dim: int, who: str, check_finite: bool) -> None:
    if not isinstance(z, Tensor):
        raise ValueError(f"{who} expects a float tensor (..., {dim}), got {type(z).__name__}")
    if not z.is_floating_point():
        raise ValueError(f"{who} expects a floating-point tensor (..., {dim}), got dtype {z.dtype}")
    if z.dim() < 1 or z.shape[-1] != dim:
        raise ValueError(f"{who} expects channel-last input (..., {dim}), got shape {tuple(z.shape)}")
    if check_finite and not bool(torch.isfinite(z).all()):  # the one host sync of a forward
        bad = int((~torch.isfinite(z)).sum())
        raise ValueError(f"{who} expects finite input, got {bad} NaN/inf value(s) in shape {tuple(z.shape)}")


def _usage_metrics(counts: Tensor) -> dict[str, Tensor]:
    p = counts.float() / counts.sum().clamp(min=1)
    return {"perplexity": torch.exp(torch.special.entr(p).sum()),
            "usage": (counts > 0).float().mean()}


# --------------------------------------------------------------------------- outputs / configs
@dataclass
class QuantizerOutput:
    """Result of a quantizer forward.

    quantized: ``(..., dim)`` like the input (input dtype), straight-through: its value is the
               code vector, its gradient w.r.t. the input is that of the identity (through the
               projections in low-dim lookup mode).
    codes:     LongTensor, input shape without the last dim; ``ResidualVQ`` adds ``(..., Q)``.
    loss:      fp32 scalar ``beta * MSE(z, sg(e))`` (+ ``MSE(sg(z), e)`` when ``use_ema=False``),
               in the lookup space; summed over the used levels for ``ResidualVQ``.
    metrics:   0-d tensors: ``perplexity``, ``usage`` (fraction of codes used in this batch),
               ``dead_codes`` (codes under ``dead_code_threshold``; in training, those restarted
               this step), ``mse`` (unscaled commitment MSE); ``ResidualVQ`` averages them over
               levels and adds ``n_quantizers``.
    """

    quantized: Tensor
    codes: Tensor
    loss: Tensor
    metrics: dict[str, Tensor] = field(default_factory=dict)


@dataclass
class VectorQuantizerConfig:
    """Options of :class:`VectorQuantizer` (invalid values raise ``ValueError``)."""

    dim: int
    codebook_size: int
    codebook_dim: int | None = None     # lookup space; != dim adds Linear in/out projections
    beta: float = 0.25                  # commitment weight
    use_ema: bool = True                # EMA codebook; False: learned by the codebook loss
    decay: float = 0.99                 # EMA decay of cluster sizes and code sums
    eps: float = 1e-5                   # Laplace smoothing of cluster sizes
    kmeans_init: bool = True            # k-means on the first training batch
    kmeans_iters: int = 10              # Lloyd iterations (0: codes = random batch rows)
    kmeans_max_samples: int = 65536     # random subset of the first batch used by k-means
    dead_code_threshold: float = 1e-2   # EMA usage (vectors/step, all ranks) below which a code
                                        # restarts from a batch row; 0 disables restarts
    cosine: bool = False                # l2-normalised inputs and codes
    chunk_size: int | None = None       # rows per distance chunk; None: auto (<= 2**26 floats/chunk)
    check_finite: bool = True           # NaN/inf check on input (one host sync per call)

    def __post_init__(self) -> None:
        def need(ok: bool, what: str, got: Any) -> None:
            if not ok:
                raise ValueError(f"{type(self).__name__}: expected {what}, got {got!r}")

        def pos_int(v: Any) -> bool:
            return isinstance(v, int) and not isinstance(v, bool) and v > 0

        need(pos_int(self.dim), "dim a positive int", self.dim)
        need(pos_int(self.codebook_size), "codebook_size a positive int", self.codebook_size)
        need(self.codebook_dim is None or pos_int(self.codebook_dim), "codebook_dim None or > 0",
             self.codebook_dim)
        need(self.beta >= 0, "beta >= 0", self.beta)
        need(0.0 < self.decay < 1.0, "decay in (0, 1)", self.decay)
        need(self.eps > 0, "eps > 0", self.eps)
        need(isinstance(self.kmeans_iters, int) and self.kmeans_iters >= 0, "kmeans_iters >= 0",
             self.kmeans_iters)
        need(pos_int(self.kmeans_max_samples), "kmeans_max_samples > 0", self.kmeans_max_samples)
        need(self.dead_code_threshold >= 0, "dead_code_threshold >= 0", self.dead_code_threshold)
        need(self.chunk_size is None or pos_int(self.chunk_size), "chunk_size None or > 0",
             self.chunk_size)


# --------------------------------------------------------------------------- VectorQuantizer
class VectorQuantizer(ConfigModel):
    """Nearest-neighbour vector quantizer with EMA codebook, k-means init and dead-code restarts.

    ``VectorQuantizer(dim, codebook_size, **options)``, ``VectorQuantizer(config)`` or
    ``VectorQuantizer.from_config(config=None, **overrides)``; unknown options raise ``ValueError``.

    State (all in ``state_dict``): ``embed`` ``(K, codebook_dim)`` (a buffer with EMA, a Parameter
    otherwise), ``cluster_size`` ``(K,)`` EMA usage, ``embed_sum`` ``(K, codebook_dim)`` (EMA only),
    ``initted`` (k-means done). Keep these buffers fp32 (use autocast, not ``.half()``).
    Training-mode ``forward`` updates them; ``encode``/``decode`` and eval-mode calls never do.
    Under torch.distributed a training forward all-reduces one ``(K, codebook_dim + 1)`` block and,
    when ``dead_code_threshold > 0``, broadcasts a ``(K, codebook_dim)`` block of restart candidates.
    """

    config_class = VectorQuantizerConfig

    def __init__(self, dim: int | VectorQuantizerConfig, codebook_size: int | None = None,
                 **options: Any):
        if isinstance(dim, VectorQuantizerConfig):
            if codebook_size is not None or options:
                raise ValueError("pass either a VectorQuantizerConfig or (dim, codebook_size, **options)")
            config = dim
        else:
            config = build_config(VectorQuantizerConfig, dim=dim, codebook_size=codebook_size, **options)
        if type(config) is not VectorQuantizerConfig:
            raise ValueError(f"VectorQuantizer expects a VectorQuantizerConfig, got {type(config).__name__}")
        super().__init__(config)
        k, cd = config.codebook_size, config.codebook_dim or config.dim
        self.project_in = nn.Linear(config.dim, cd) if cd != config.dim else nn.Identity()
        self.project_out = nn.Linear(cd, config.dim) if cd != config.dim else nn.Identity()
        embed = torch.randn(k, cd)
        if config.cosine:
            embed = F.normalize(embed, dim=-1)
        if config.use_ema:
            self.register_buffer("embed", embed)
            self.register_buffer("embed_sum", embed.clone())
        else:
            self.embed = nn.Parameter(embed)
        self.register_buffer("cluster_size", torch.ones(k))
        self.register_buffer("initted", torch.tensor(not config.kmeans_init))
        self._init_flag: bool | None = not config.kmeans_init  # host mirror of `initted`

    # ----------------------------------------------------------------------- state
    @property
    def codebook(self) -> Tensor:
        """Effective codebook ``(K, codebook_dim)`` in the lookup space (unit rows if cosine)."""
        if self.config.cosine and not self.config.use_ema:
            return F.normalize(self.embed, dim=-1)
        return self.embed

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._init_flag = None  # re-read `initted` (one sync) at the next training forward

    def _needs_init(self) -> bool:
        if self._init_flag is None:
            self._init_flag = bool(self.initted)
        return not self._init_flag

    def extra_repr(self) -> str:
        c = self.config
        return (f"dim={c.dim}, codebook_size={c.codebook_size}, codebook_dim={c.codebook_dim or c.dim}, "
                f"use_ema={c.use_ema}, cosine={c.cosine}")

    # ----------------------------------------------------------------------- public API
    def forward(self, z: Tensor) -> QuantizerOutput:
        """Quantize ``z`` ``(..., dim)``; see :class:`QuantizerOutput`.

        In training mode: k-means init on the first batch, then EMA update and dead-code restart
        (collectives under torch.distributed). Raises ``ValueError`` for a wrong last dim, a
        non-float dtype, NaN/inf values or an empty input.
        """
        _check_vectors(z, self.config.dim, "VectorQuantizer", self.config.check_finite)
        if z.numel() == 0:
            raise ValueError(f"VectorQuantizer expects at least one vector, got shape {tuple(z.shape)}")
        return self._forward(z)

    @torch.no_grad()
    def encode(self, z: Tensor) -> Tensor:
        """Codes LongTensor ``(...)`` for ``z`` ``(..., dim)``; no state change. ``ValueError`` as forward."""
        _check_vectors(z, self.config.dim, "VectorQuantizer.encode", self.config.check_finite)
        return self._encode(z)

    def decode(self, codes: Tensor) -> Tensor:
        """Code vectors ``(..., dim)`` (fp32) for integer ``codes`` ``(...)``.

        Raises ``ValueError`` for a non-integer dtype or codes outside ``[0, codebook_size)``.
        """
        k = self.config.codebook_size
        if not isinstance(codes, Tensor) or codes.is_floating_point() or codes.dtype == torch.bool:
            got = codes.dtype if isinstance(codes, Tensor) else type(codes).__name__
            raise ValueError(f"decode expects integer codes, got {got}")
        if codes.numel() and bool(((codes < 0) | (codes >= k)).any()):
            raise ValueError(f"codes out of range: expected values in [0, {k}), "
                             f"got min {int(codes.min())} max {int(codes.max())}")
        return self._lookup(codes.long())

    # ----------------------------------------------------------------------- internals
    def _to_lookup(self, z: Tensor) -> Tensor:
        """``(..., dim)`` -> fp32 ``(N, codebook_dim)`` in the lookup space (call with autocast off)."""
        x = self.project_in(rearrange(z, "... d -> (...) d").float())
        return F.normalize(x, dim=-1) if self.config.cosine else x

    def _encode(self, z: Tensor) -> Tensor:
        with torch.autocast(z.device.type, enabled=False):
            codes, _ = nearest_codes(self._to_lookup(z), self.codebook, self.config.chunk_size)
        return codes.view(z.shape[:-1])

    def _lookup(self, codes: Tensor) -> Tensor:
        with torch.autocast(codes.device.type, enabled=False):
            return self.project_out(F.embedding(codes, self.codebook.float()))

    def _forward(self, z: Tensor) -> QuantizerOutput:
        cfg = self.config
        with torch.autocast(z.device.type, enabled=False):
            x = self._to_lookup(z)                                     # (N, cd) fp32
            if self.training and self._needs_init():
                self._kmeans_init(x.detach())
            codebook = self.codebook.float()                           # (K, cd)
            codes, _ = nearest_codes(x, codebook, cfg.chunk_size)
            e = F.embedding(codes, codebook)                           # (N, cd)
            mse = F.mse_loss(x, e.detach())
            loss = cfg.beta * mse
            if not cfg.use_ema:
                loss = loss + F.mse_loss(x.detach(), e)
            quantized = self.project_out(x + (e - x).detach())         # straight-through
            counts = torch.bincount(codes, minlength=cfg.codebook_size)
            if self.training:
                dead = self._update(x.detach(), codes, counts)
            else:
                dead = self.cluster_size < cfg.dead_code_threshold
        metrics = {**_usage_metrics(counts), "dead_codes": dead.sum().float(), "mse": mse.detach()}
        return QuantizerOutput(quantized.view(z.shape).to(z.dtype), codes.view(z.shape[:-1]),
                               loss, metrics)

    @torch.no_grad()
    def _kmeans_init(self, x: Tensor) -> None:
        cfg, rows = self.config, x.shape[0]
        if rows > cfg.kmeans_max_samples:
            x = x[torch.randperm(x.shape[0], device=x.device)[:cfg.kmeans_max_samples]]
        centroids, counts = kmeans(x, cfg.codebook_size, cfg.kmeans_iters, cfg.cosine, cfg.chunk_size)
        # cluster_size counts vectors per step summed over ranks: scale subset counts to the batch.
        sizes = counts * (rows * _world_size() / x.shape[0])
        _broadcast_(centroids)
        _broadcast_(sizes)
        self.embed.data.copy_(centroids)  # .data: a Parameter when use_ema=False
        self.cluster_size.copy_(sizes)
        if cfg.use_ema:
            self.embed_sum.copy_(centroids * sizes.unsqueeze(1))
        self.initted.fill_(True)
        self._init_flag = True

    @torch.no_grad()
    def _update(self, x: Tensor, codes: Tensor, counts: Tensor) -> Tensor:
        """EMA update (all-reduced) then dead-code restart; returns the dead mask ``(K,)``."""
        cfg, k = self.config, self.config.codebook_size
        counts = counts.to(x.dtype)
        if cfg.use_ema:
            sums = torch.zeros_like(self.embed_sum).index_add_(0, codes, x)   # (K, cd)
            stats = _all_reduce_(torch.cat([counts.unsqueeze(1), sums], dim=1))
            self.cluster_size.lerp_(stats[:, 0], 1 - cfg.decay)
            self.embed_sum.lerp_(stats[:, 1:], 1 - cfg.decay)
            n = self.cluster_size.sum()
            smoothed = (self.cluster_size + cfg.eps) / (n + k * cfg.eps) * n   # Laplace
            embed = self.embed_sum / smoothed.unsqueeze(1)
            self.embed.copy_(F.normalize(embed, dim=-1) if cfg.cosine else embed)
        else:
            self.cluster_size.lerp_(_all_reduce_(counts), 1 - cfg.decay)
        dead = self.cluster_size < cfg.dead_code_threshold
        if cfg.dead_code_threshold > 0:
            # Candidates for every code (tensor ops, no host sync); only dead rows take them.
            cand = _broadcast_(x[torch.randint(x.shape[0], (k,), device=x.device)])
            keep = ~dead.unsqueeze(1)
            restart_size = 2.0 * cfg.dead_code_threshold
            # .data: when use_ema=False `embed` is a Parameter possibly saved for backward.
            self.embed.data.copy_(torch.where(keep, self.embed.data, cand))
            if cfg.use_ema:
                self.embed_sum.copy_(torch.where(keep, self.embed_sum, cand * restart_size))
            self.cluster_size.masked_fill_(dead, restart_size)
        return dead


# --------------------------------------------------------------------------- ResidualVQ
@dataclass
class ResidualVQConfig(VectorQuantizerConfig):
    """:class:`VectorQuantizerConfig` options (shared by every level) plus the stack's own."""

    num_quantizers: int = 8
    quantizer_dropout: float = 0.0      # P(a training forward uses a random 1..Q levels)
    lead_levels: int = 0                # leading levels that code a second input (``lead``)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (isinstance(self.num_quantizers, int) and self.num_quantizers > 0):
            raise ValueError(f"ResidualVQConfig: expected num_quantizers a positive int, "
                             f"got {self.num_quantizers!r}")
        if not (isinstance(self.lead_levels, int) and 0 <= self.lead_levels < self.num_quantizers):
            raise ValueError(f"ResidualVQConfig: expected lead_levels an int in [0, num_quantizers), "
                             f"got {self.lead_levels!r}")
        if not 0.0 <= self.quantizer_dropout <= 1.0:
            raise ValueError(f"ResidualVQConfig: expected quantizer_dropout in [0, 1], "
                             f"got {self.quantizer_dropout!r}")

    def level_config(self) -> VectorQuantizerConfig:
        names = [f.name for f in dataclasses.fields(VectorQuantizerConfig)]
        return VectorQuantizerConfig(**{n: getattr(self, n) for n in names})


class ResidualVQ(ConfigModel):
    """``Q`` vector quantizers, each quantizing the residual the previous levels left.

    ``ResidualVQ(dim, codebook_size, num_quantizers, quantizer_dropout=0.0, **vq_options)``,
    ``ResidualVQ(config)`` or ``ResidualVQ.from_config(config=None, **overrides)``.

    Codes are ``(..., Q)`` and always hold all ``Q`` levels: every level is computed (and, in
    training, EMA-updated) on every call so all ranks run the same collectives. Quantizer dropout
    and ``n_quantizers`` only choose how many leading levels ``n`` are summed into ``quantized``
    and ``loss`` (the others enter with weight 0, so every parameter still gets a gradient, as DDP
    requires). The encoder's gradient comes through level 0's straight-through path (identity
    without projections); deeper levels see a detached residual.

    Lead levels (``lead_levels = L > 0``): the call also takes ``lead`` (same shape as ``z``);
    levels ``0..L-1`` quantize ``lead`` residually, level ``L`` quantizes ``z`` plus what they
    left (``lead - sum``) and the rest go on as usual, so the codes sum to an approximation of
    ``lead + z`` and the first ``L`` depend on ``lead`` alone. ``lead`` gets its gradient through
    level 0, ``z`` through level ``L``. Used for codes that must ignore part of the input (the
    audio tokenizer's phase-free levels).
    """

    config_class = ResidualVQConfig

    def __init__(self, dim: int | ResidualVQConfig, codebook_size: int | None = None,
                 num_quantizers: int | None = None, **options: Any):
        if isinstance(dim, ResidualVQConfig):
            if codebook_size is not None or num_quantizers is not None or options:
                raise ValueError("pass either a ResidualVQConfig or (dim, codebook_size, num_quantizers, ...)")
            config = dim
        else:
            if num_quantizers is not None:
                options["num_quantizers"] = num_quantizers
            config = build_config(ResidualVQConfig, dim=dim, codebook_size=codebook_size, **options)
        super().__init__(config)
        level = config.level_config()
        self.layers = nn.ModuleList(VectorQuantizer(level) for _ in range(config.num_quantizers))

    @property
    def num_quantizers(self) -> int:
        return self.config.num_quantizers

    def draw_levels(self) -> int:
        """The level count of one training forward: ``Q``, or under quantizer dropout (with
        probability ``quantizer_dropout``, in training) a uniform draw from ``1..Q``. A caller
        that must know the count before the forward (e.g. to pick its loss) draws it here and
        passes it as ``n_quantizers``."""
        return self._active_levels(None)

    def _active_levels(self, n_quantizers: int | None) -> int:
        q = self.num_quantizers
        if n_quantizers is not None:
            if not (isinstance(n_quantizers, int) and 1 <= n_quantizers <= q):
                raise ValueError(f"n_quantizers must be an int in [1, {q}], got {n_quantizers!r}")
            return n_quantizers
        p = self.config.quantizer_dropout
        # CPU generator draws: no device sync.
        if self.training and p > 0 and float(torch.rand(())) < p:
            return int(torch.randint(1, q + 1, ()))
        return q

    def _check_lead(self, z: Tensor, lead: Tensor | None, where: str) -> int:
        """``lead_levels`` after checking that ``lead`` comes exactly when the config has them."""
        lead_levels = self.config.lead_levels
        if (lead is None) != (lead_levels == 0):
            raise ValueError(f"{where}: expected lead {'(..., dim) for' if lead_levels else 'None without'} "
                             f"lead_levels={lead_levels}, got {'None' if lead is None else 'a tensor'}")
        if lead is not None and (not isinstance(lead, Tensor) or lead.shape != z.shape):
            got = tuple(lead.shape) if isinstance(lead, Tensor) else type(lead).__name__
            raise ValueError(f"{where}: expected lead of z's shape {tuple(z.shape)}, got {got}")
        return lead_levels

    def forward(self, z: Tensor, n_quantizers: int | None = None,
                lead: Tensor | None = None) -> QuantizerOutput:
        """Quantize ``z`` ``(..., dim)`` with ``n`` levels (``n_quantizers``, else ``Q`` or a random
        count under quantizer dropout in training). Returns codes ``(..., Q)``, ``loss`` summed over
        the ``n`` levels, metrics averaged over all levels plus ``n_quantizers``. ``lead``: see the
        class docstring (required exactly when ``lead_levels > 0``).

        Raises ``ValueError`` for bad input (as :class:`VectorQuantizer`), ``n_quantizers``
        outside ``[1, Q]`` or a missing, unexpected or misshapen ``lead``.
        """
        _check_vectors(z, self.config.dim, "ResidualVQ", self.config.check_finite)
        if z.numel() == 0:
            raise ValueError(f"ResidualVQ expects at least one vector, got shape {tuple(z.shape)}")
        lead_levels = self._check_lead(z, lead, "ResidualVQ")
        n = self._active_levels(n_quantizers)
        residual = (z if lead is None else lead).float()
        quantized = torch.zeros_like(residual)
        loss = residual.new_zeros(())
        codes, metrics = [], []
        for i, layer in enumerate(self.layers):
            if lead_levels and i == lead_levels:   # z joins with what the lead levels left
                residual = residual + z.float()
            out = layer._forward(residual)
            w = 1.0 if i < n else 0.0
            quantized = quantized + w * out.quantized
            loss = loss + w * out.loss
            residual = (residual - out.quantized).detach()
            codes.append(out.codes)
            metrics.append(out.metrics)
        avg = {key: torch.stack([m[key] for m in metrics]).mean() for key in metrics[0]}
        avg["n_quantizers"] = torch.tensor(float(n))
        return QuantizerOutput(quantized.to(z.dtype), torch.stack(codes, dim=-1), loss, avg)

    @torch.no_grad()
    def encode(self, z: Tensor, lead: Tensor | None = None) -> Tensor:
        """Codes LongTensor ``(..., Q)`` for ``z`` ``(..., dim)`` (and ``lead`` when
        ``lead_levels > 0``, as in :meth:`forward`); no state change."""
        _check_vectors(z, self.config.dim, "ResidualVQ.encode", self.config.check_finite)
        lead_levels = self._check_lead(z, lead, "ResidualVQ.encode")
        residual, codes = (z if lead is None else lead).float(), []
        for i, layer in enumerate(self.layers):
            if lead_levels and i == lead_levels:
                residual = residual + z.float()
            c = layer._encode(residual)
            residual = residual - layer._lookup(c)
            codes.append(c)
        return torch.stack(codes, dim=-1)

    def decode(self, codes: Tensor, n_quantizers: int | None = None) -> Tensor:
        """Sum of the first ``n_quantizers`` (default all) levels' code vectors, ``(..., dim)`` fp32.

        ``codes`` must be integer ``(..., Q)`` with values in ``[0, codebook_size)``; otherwise
        ``ValueError`` naming what was expected.
        """
        q = self.num_quantizers
        if not isinstance(codes, Tensor) or codes.dim() < 1 or codes.shape[-1] != q:
            got = tuple(codes.shape) if isinstance(codes, Tensor) else type(codes).__name__
            raise ValueError(f"ResidualVQ.decode expects codes (..., {q}), got {got}")
        n = self._active_levels(n_quantizers if n_quantizers is not None else q)
        levels = codes.unbind(-1)
        out = self.layers[0].decode(levels[0])
        for layer, c in zip(self.layers[1:n], levels[1:n]):
            out = out + layer.decode(c)
        return out
