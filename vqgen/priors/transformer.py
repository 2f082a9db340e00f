"""A decoder-only Transformer prior over code grids, built on a small ``transformers`` Llama.

Token layout (``N = prod(code_shape)`` codes per sample, ``K = codebook_size``):

- ``layout="flat"``: codes are read in raster order over the whole ``code_shape`` (``(h, w)``,
  ``(L,)``, ...) and a code ``c`` is token ``c``.
- ``layout="frames"``: for multi-codebook codes ``(Q, *rest)`` (e.g. ``(Q, T)`` audio), the
  sequence is frame-major, ``[c(q=0, t=0), c(1, 0), ..., c(Q-1, 0), c(0, 1), ...]``, and level
  ``q`` owns its own token range: code ``c`` at level ``q`` is token ``q * K + c``.

After the ``Q * K`` code tokens (``Q = 1`` for ``flat``) come the start tokens: one per class
plus a null (unconditional) one, index ``num_classes``; an unconditional prior has only the null
start token. A sample is fed as ``[start, tok_0, ..., tok_{N-2}]`` and position ``j`` predicts
code ``j``; the output head only scores the ``K`` tokens of the level being predicted, so
``logits`` is ``(B, K, *code_shape)`` and the start tokens can never be sampled.

Sampling (``generate``) is our own loop over ``LlamaModel``: one token per step, ``N`` forward
calls of length 1 against a KV cache, with the conditional and null-class rows of classifier-free
guidance in one batch. The cache is a transformers ``DynamicCache`` or, by default on CUDA, a
preallocated ``StaticCache`` whose decoding step is captured once as a CUDA graph and replayed
(a step then costs one graph launch plus the sampling ops, instead of hundreds of kernel launches
from Python). ``generate_uncached`` recomputes the whole prefix every step. All of them draw one
uniform per row per step from ``generator``, so they return the same codes.
"""
from __future__ import annotations

import contextlib
import inspect
import math
import warnings
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM, LlamaModel, StaticCache

from .base import Prior, cfg_combine, sample_logits

LAYOUTS = ("flat", "frames")
ATTN_IMPLEMENTATIONS = ("sdpa", "eager")
CACHE_IMPLEMENTATIONS = ("auto", "dynamic", "static")

# transformers renamed ``past_key_values`` to ``cache`` in 5.x; pass whichever this version takes.
_CACHE_KW = "cache" if "cache" in inspect.signature(LlamaModel.forward).parameters else "past_key_values"


# --------------------------------------------------------------------------- helpers
def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def default_intermediate_size(hidden_size: int, multiple_of: int = 16) -> int:
    """Llama-style SwiGLU width: ``8/3 * hidden`` rounded up to ``multiple_of`` (same parameter
    count as a ``4 * hidden`` GELU MLP)."""
    return multiple_of * math.ceil(8 * hidden_size / 3 / multiple_of)


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


# --------------------------------------------------------------------------- config
@dataclass
class TransformerPriorConfig:
    """Configuration of :class:`TransformerPrior`.

    ``code_shape`` is one sample's code shape, e.g. ``(7, 7)``, ``(Q, T)`` or ``(L,)``;
    ``layout="frames"`` needs ``code_shape = (Q, *rest)`` with ``Q`` levels (see module doc).
    ``intermediate_size=None`` resolves to :func:`default_intermediate_size` (stored resolved).
    ``num_kv_heads=None`` means plain multi-head attention (no grouped-query sharing).
    ``dropout`` is the attention dropout (Llama has no other dropout), active in train mode only.
    ``cache_implementation`` is the default KV cache of :meth:`TransformerPrior.generate`.
    Raises ``ValueError`` for inconsistent values.
    """

    codebook_size: int = 512
    code_shape: tuple = (7, 7)
    num_classes: int | None = None
    label_dropout: float = 0.1
    hidden_size: int = 256
    num_layers: int = 6
    num_heads: int = 8
    num_kv_heads: int | None = None
    intermediate_size: int | None = None
    dropout: float = 0.0
    layout: str = "flat"
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    initializer_range: float = 0.02
    attn_implementation: str = "sdpa"
    cache_implementation: str = "auto"

    def __post_init__(self):
        if not _is_int(self.codebook_size) or self.codebook_size < 2:
            raise ValueError(f"codebook_size must be an int >= 2, got {self.codebook_size!r}")
        shape = tuple(self.code_shape) if isinstance(self.code_shape, (tuple, list)) else None
        if not shape or not all(_is_int(s) and s >= 1 for s in shape):
            raise ValueError(f"code_shape must be a non-empty tuple of ints >= 1, got {self.code_shape!r}")
        self.code_shape = shape
        if self.num_classes is not None and (not _is_int(self.num_classes) or self.num_classes < 1):
            raise ValueError(f"num_classes must be None or an int >= 1, got {self.num_classes!r}")
        if not (isinstance(self.label_dropout, (int, float)) and 0 <= self.label_dropout < 1):
            raise ValueError(f"label_dropout must be in [0, 1), got {self.label_dropout!r}")
        for name in ("hidden_size", "num_layers", "num_heads"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size ({self.hidden_size}) must be divisible by "
                             f"num_heads ({self.num_heads})")
        if (self.hidden_size // self.num_heads) % 2:
            raise ValueError(f"head dim hidden_size / num_heads = {self.hidden_size // self.num_heads} "
                             "must be even for rotary position embeddings")
        if self.num_kv_heads is not None and (not _is_int(self.num_kv_heads) or self.num_kv_heads < 1
                                              or self.num_heads % self.num_kv_heads):
            raise ValueError(f"num_kv_heads must be None or an int dividing num_heads "
                             f"({self.num_heads}), got {self.num_kv_heads!r}")
        if self.intermediate_size is None:
            self.intermediate_size = default_intermediate_size(self.hidden_size)
        if not _is_int(self.intermediate_size) or self.intermediate_size < 1:
            raise ValueError(f"intermediate_size must be None or an int >= 1, got {self.intermediate_size!r}")
        if not (isinstance(self.dropout, (int, float)) and 0 <= self.dropout < 1):
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {self.layout!r}")
        if self.layout == "frames" and len(shape) < 2:
            raise ValueError(f"layout='frames' needs code_shape (Q, *rest) with a level dim, got {shape}")
        if not (isinstance(self.rope_theta, (int, float)) and self.rope_theta > 0):
            raise ValueError(f"rope_theta must be > 0, got {self.rope_theta!r}")
        if not (isinstance(self.rms_norm_eps, (int, float)) and self.rms_norm_eps > 0):
            raise ValueError(f"rms_norm_eps must be > 0, got {self.rms_norm_eps!r}")
        if not (isinstance(self.initializer_range, (int, float)) and self.initializer_range > 0):
            raise ValueError(f"initializer_range must be > 0, got {self.initializer_range!r}")
        if self.attn_implementation not in ATTN_IMPLEMENTATIONS:
            raise ValueError(f"attn_implementation must be one of {ATTN_IMPLEMENTATIONS}, "
                             f"got {self.attn_implementation!r}")
        if self.cache_implementation not in CACHE_IMPLEMENTATIONS:
            raise ValueError(f"cache_implementation must be one of {CACHE_IMPLEMENTATIONS}, "
                             f"got {self.cache_implementation!r}")

    @property
    def num_levels(self) -> int:
        """Levels with their own token range: ``code_shape[0]`` for ``frames``, else 1."""
        return self.code_shape[0] if self.layout == "frames" else 1

    @property
    def seq_len(self) -> int:
        """Codes per sample, ``N = prod(code_shape)``."""
        return math.prod(self.code_shape)


def llama_config(config: TransformerPriorConfig) -> LlamaConfig:
    """The ``LlamaConfig`` of the network inside a :class:`TransformerPrior` (no downloads).

    Vocabulary: ``num_levels * codebook_size`` code tokens, then ``num_classes + 1`` start tokens
    (1 for an unconditional prior). BOS/EOS/PAD are unused (None); embeddings are untied so the
    state dict has no shared tensors.
    """
    num_start = (config.num_classes or 0) + 1
    return LlamaConfig(
        vocab_size=config.num_levels * config.codebook_size + num_start,
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        num_key_value_heads=config.num_kv_heads or config.num_heads,
        max_position_embeddings=config.seq_len,
        initializer_range=float(config.initializer_range),
        rms_norm_eps=float(config.rms_norm_eps),
        rope_parameters={"rope_type": "default", "rope_theta": float(config.rope_theta)},
        attention_dropout=float(config.dropout),
        tie_word_embeddings=False,
        bos_token_id=None, eos_token_id=None, pad_token_id=None,
        use_cache=True,
        attn_implementation=config.attn_implementation,
    )


# --------------------------------------------------------------------------- model
class TransformerPrior(Prior):
    """Decoder-only prior ``p(codes | label)`` over ``(B, *code_shape)`` codes (see module doc).

    ``self.lm`` is a ``transformers.LlamaForCausalLM`` built from :func:`llama_config`; its weights
    are ordinary entries of this module's state dict, so ``save_pretrained``/``from_pretrained``
    round trip through ``config.json`` + ``model.safetensors``. Its ``lm_head`` rows for the start
    tokens exist (so ``self.lm.generate`` works for comparison) but are never used here.
    """

    config_class = TransformerPriorConfig

    def __init__(self, config: TransformerPriorConfig):
        super().__init__(config)
        self.lm = LlamaForCausalLM(llama_config(config))
        q, n = config.num_levels, config.seq_len
        # Sequence position j predicts level j % Q; its token id is code + level offset.
        levels = torch.arange(n) % q
        self.register_buffer("_levels", levels, persistent=False)                         # (N,)
        self.register_buffer("_offsets", levels * config.codebook_size, persistent=False)  # (N,)

    # ----------------------------------------------------------------------- layout helpers
    @property
    def seq_len(self) -> int:
        return self.config.seq_len

    @property
    def num_levels(self) -> int:
        return self.config.num_levels

    def _to_sequence(self, grid: torch.Tensor) -> torch.Tensor:
        """``(B, *code_shape) -> (B, N)`` in the prior's order."""
        if self.config.layout == "frames":
            grid = grid.flatten(2).transpose(1, 2)  # (B, Q, R) -> (B, R, Q): frame-major
        return grid.reshape(grid.shape[0], -1)

    def _to_grid(self, seq: torch.Tensor) -> torch.Tensor:
        """``(B, N) -> (B, *code_shape)``, the inverse of :meth:`_to_sequence`."""
        b = seq.shape[0]
        if self.config.layout == "frames":
            q, rest = self.code_shape[0], self.code_shape[1:]
            return seq.reshape(b, -1, q).transpose(1, 2).reshape(b, q, *rest)
        return seq.reshape(b, *self.code_shape)

    def _head_weight(self) -> torch.Tensor:
        """``lm_head`` rows of the code tokens, ``(Q, K, hidden)``."""
        q, k = self.num_levels, self.codebook_size
        return self.lm.lm_head.weight[: q * k].view(q, k, -1)

    def _start_tokens(self, labels: torch.Tensor | None, batch: int, device) -> torch.Tensor:
        """Start token ids ``(batch,)`` from network labels (``num_classes`` = null)."""
        first = self.num_levels * self.codebook_size
        if labels is None:  # unconditional prior: its one start token
            return torch.full((batch,), first, dtype=torch.long, device=device)
        return labels + first

    def _backbone(self, input_ids: torch.Tensor, cache=None, position_ids=None,
                  attention_mask=None) -> torch.Tensor:
        """Run the Llama decoder on token ids ``(B, L)``; returns hidden states ``(B, L, hidden)``."""
        kwargs = {_CACHE_KW: cache, "use_cache": cache is not None}
        out = self.lm.model(input_ids=input_ids, position_ids=position_ids,
                            attention_mask=attention_mask, **kwargs)
        return out.last_hidden_state

    # ----------------------------------------------------------------------- training
    def logits(self, codes: torch.Tensor, labels=None) -> torch.Tensor:
        """Teacher-forced logits ``(B, codebook_size, *code_shape)`` for codes ``(B, *code_shape)``.

        Causal in the prior's order: the logits of code ``j`` depend only on the label and codes
        ``< j``. ``labels``: None, an int, or ``(B,)`` ints in ``[0, num_classes)``; in train mode
        they are replaced by the null class with probability ``label_dropout``. Raises
        ``ValueError`` for codes of the wrong shape/dtype/range and for bad labels.
        """
        codes = self.check_codes(codes)
        b, device = codes.shape[0], codes.device
        labels = self.condition_labels(self.check_labels(labels, b, device), b, device)
        tokens = self._to_sequence(codes) + self._offsets                      # (B, N)
        inputs = torch.cat([self._start_tokens(labels, b, device)[:, None], tokens[:, :-1]], 1)
        hidden = self._backbone(inputs)                                        # (B, N, H)
        q, k = self.num_levels, self.codebook_size
        # Score each position against its own level's K rows only: (B, R, Q, H) x (Q, K, H).
        hidden = hidden.reshape(b, -1, q, hidden.shape[-1])
        logits = torch.einsum("brqh,qkh->bkrq", hidden, self._head_weight())   # (B, K, R, Q)
        logits = logits.reshape(b * k, -1)                                     # (B*K, N), seq order
        return self._to_grid(logits).reshape(b, k, *self.code_shape)

    # ----------------------------------------------------------------------- sampling
    def generate(self, n: int, labels=None, temperature: float = 1.0, top_k: int | None = None,
                 top_p: float | None = None, cfg_scale: float = 1.0,
                 generator: torch.Generator | None = None, *,
                 cache_implementation: str | None = None) -> torch.Tensor:
        """Sample ``n`` code grids, LongTensor ``(n, *code_shape)``, with KV-cached decoding.

        ``labels``: None (null class / unconditional), an int, or ``(n,)`` ints. ``temperature``,
        ``top_k``, ``top_p`` filter each step's logits (see ``base.filter_logits``);
        ``cfg_scale != 1`` applies classifier-free guidance against the null class (one batch of
        ``2n`` rows) and needs labels. ``generator`` (a CPU ``torch.Generator``) makes the draw
        reproducible: one uniform per sample per step. ``cache_implementation`` overrides the
        config's (``"dynamic"``: transformers ``DynamicCache``; ``"static"``: preallocated
        ``StaticCache``, replayed as a CUDA graph on CUDA; ``"auto"``: static on CUDA, dynamic
        elsewhere). Works in train mode too (switches to eval for the call). Raises
        ``ValueError`` for bad ``n``, labels or sampling settings.
        """
        return self._sample(n, labels, temperature, top_k, top_p, cfg_scale, generator,
                            cached=True, cache_implementation=cache_implementation)

    def generate_uncached(self, n: int, labels=None, temperature: float = 1.0,
                          top_k: int | None = None, top_p: float | None = None,
                          cfg_scale: float = 1.0,
                          generator: torch.Generator | None = None) -> torch.Tensor:
        """Same as :meth:`generate` (same codes for the same ``generator`` state) but recomputes
        the whole prefix at every step: ``O(N^2)`` work, a reference for tests and benchmarks."""
        return self._sample(n, labels, temperature, top_k, top_p, cfg_scale, generator, cached=False)

    @torch.no_grad()
    def _sample(self, n, labels, temperature, top_k, top_p, cfg_scale, generator, cached: bool,
                cache_implementation: str | None = None):
        device = self.lm.lm_head.weight.device
        labels = self._prepare_generate(n, labels, temperature, top_k, top_p, cfg_scale, device)
        impl = self._resolve_cache_implementation(cache_implementation, device) if cached else "none"
        guided = cfg_scale != 1.0
        with eval_mode(self):
            net_labels = self.condition_labels(labels, n, device)  # None only if unconditional
            if guided:  # conditional rows first, then the same number of null-class rows
                net_labels = torch.cat([net_labels, torch.full_like(net_labels, self.num_classes)])
            rows = net_labels.shape[0] if net_labels is not None else n
            n_seq, weight = self.seq_len, self._head_weight()                  # weight (Q, K, H)
            levels, offsets = self._levels.tolist(), self._offsets
            tokens = torch.empty(rows, n_seq, dtype=torch.long, device=device)  # fed inputs
            tokens[:, 0] = self._start_tokens(net_labels, rows, device)
            codes = torch.empty(n, n_seq, dtype=torch.long, device=device)
            step = self._decoder(impl, rows, device)
            for j in range(n_seq):
                hidden = step(j, tokens)                                       # (rows, H)
                logits = F.linear(hidden, weight[levels[j]])                   # (rows, K)
                if guided:
                    logits = cfg_combine(logits[:n], logits[n:], cfg_scale)
                codes[:, j] = sample_logits(logits, temperature, top_k, top_p, generator)
                if j + 1 < n_seq:
                    tokens[:, j + 1] = (codes[:, j] + offsets[j]).repeat(rows // n)
        return self._to_grid(codes)

    def _resolve_cache_implementation(self, name: str | None, device: torch.device) -> str:
        name = self.config.cache_implementation if name is None else name
        if name not in CACHE_IMPLEMENTATIONS:
            raise ValueError(f"cache_implementation must be one of {CACHE_IMPLEMENTATIONS}, got {name!r}")
        if name == "auto":
            return "static" if device.type == "cuda" else "dynamic"
        return name

    def _decoder(self, impl: str, rows: int, device: torch.device):
        """A function ``step(j, tokens (rows, N)) -> hidden (rows, H)`` giving the last hidden
        state after feeding ``tokens[:, :j + 1]``; it must be called for ``j = 0, 1, ...``."""
        if impl == "none":  # recompute the whole prefix
            return lambda j, tokens: self._backbone(tokens[:, :j + 1])[:, -1]
        if impl == "dynamic":
            cache = DynamicCache(config=self.lm.config)
            positions = torch.arange(self.seq_len, device=device)[None]      # (1, N)
            return lambda j, tokens: self._backbone(
                tokens[:, j:j + 1], cache, positions[:, j:j + 1])[:, -1]
        # static: reuse the preallocated decoder (and its CUDA graph) while the weights stay put
        key = (rows, str(device), tuple(p.data_ptr() for p in self.lm.parameters()))
        decoders = self.__dict__.setdefault("_static_decoders", _DecoderCache())
        if key not in decoders:
            if len(decoders) >= 4:
                decoders.clear()
            decoders[key] = _StaticDecoder(self, rows, device)
        decoder = decoders[key]
        decoder.reset()
        return decoder


class _DecoderCache(dict):
    """Per-module cache of :class:`_StaticDecoder` objects; copies and pickles of the module start
    with an empty one (CUDA graphs can be neither copied nor pickled)."""

    def __deepcopy__(self, memo):
        return _DecoderCache()

    def __reduce__(self):
        return _DecoderCache, ()


class _StaticDecoder:
    """Fixed-address decoding state for ``rows`` sequences: a transformers ``StaticCache`` of
    ``N`` positions, the fed token ``(rows, 1)``, its position ``(1, 1)`` and an attention mask
    ``(1, 1, 1, N)`` over the cache (passing a 4-D mask skips transformers' mask construction).

    Nothing in a step depends on host-side values, so on CUDA the step is captured once as a CUDA
    graph and replayed; elsewhere (or if capture fails, with a warning) it runs eagerly.
    """

    def __init__(self, prior: TransformerPrior, rows: int, device: torch.device):
        self.prior, n_seq = prior, prior.seq_len
        self.cache = StaticCache(config=prior.lm.config, max_cache_len=n_seq)
        self.token = torch.zeros(rows, 1, dtype=torch.long, device=device)
        self.position = torch.zeros(1, 1, dtype=torch.long, device=device)
        self.visible = torch.zeros(1, 1, 1, n_seq, dtype=torch.bool, device=device)
        if prior.config.attn_implementation == "eager":  # eager attention adds the mask
            dtype = prior.lm.lm_head.weight.dtype
            self.mask = torch.full((1, 1, 1, n_seq), torch.finfo(dtype).min, dtype=dtype, device=device)
        else:                                             # sdpa takes True = attend
            self.mask = self.visible
        self.graph = self.hidden = None
        if device.type == "cuda":
            self._capture(device)

    def _forward(self) -> torch.Tensor:
        return self.prior._backbone(self.token, self.cache, self.position, self.mask)[:, -1]

    def _capture(self, device: torch.device) -> None:
        try:
            stream = torch.cuda.Stream(device)
            stream.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(stream):  # warm up (allocates the cache) off the capture
                for _ in range(2):
                    self.reset()
                    self._forward()
            torch.cuda.current_stream(device).wait_stream(stream)
            self.reset()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self.hidden = self._forward()
            self.graph = graph
        except Exception as e:  # pragma: no cover - depends on the CUDA stack
            warnings.warn(f"CUDA graph capture failed ({e}); decoding with an eager static cache")
            self.graph = self.hidden = None
        self.reset()

    def reset(self) -> None:
        self.cache.reset()
        self.visible.zero_()
        if self.mask is not self.visible:
            self.mask.fill_(torch.finfo(self.mask.dtype).min)

    def __call__(self, j: int, tokens: torch.Tensor) -> torch.Tensor:
        self.token.copy_(tokens[:, j:j + 1])
        self.position.fill_(j)
        self.visible[..., j].fill_(True)
        if self.mask is not self.visible:
            self.mask[..., j].fill_(0.0)
        if self.graph is None:
            return self._forward()
        self.graph.replay()
        return self.hidden


def transformer_prior_debug(codebook_size: int = 16, code_shape: tuple = (4, 4), **overrides
                            ) -> TransformerPrior:
    """A tiny Transformer prior for tests and smoke runs: 2 layers, 32 wide, 2 heads."""
    return TransformerPrior.from_config(codebook_size=codebook_size, code_shape=code_shape,
                                        **{"hidden_size": 32, "num_layers": 2, "num_heads": 2,
                                           **overrides})
