"""A decoder-only Transformer prior over code grids, built on a small ``transformers`` Llama.

Token layouts (``N = prod(code_shape)`` codes per sample, ``K = codebook_size``):

- ``layout="raster"`` (old name ``"flat"``): codes are read in raster order over the whole
  ``code_shape`` (``(h, w)``, ``(L,)``, ...) and a code ``c`` is token ``c``; ``N`` steps.
- ``layout="frames"``: for multi-codebook codes ``(Q, *rest)`` (e.g. ``(Q, T)`` audio), the
  sequence is frame-major, ``[c(q=0, t=0), c(1, 0), ..., c(Q-1, 0), c(0, 1), ...]``, and level
  ``q`` owns its own token range: code ``c`` at level ``q`` is token ``q * K + c``; ``N`` steps.
- ``layout="delay"`` (MusicGen's delay pattern) for ``(Q, T)`` codes: level ``q`` is shifted
  right by ``q`` frames, so step ``s`` holds ``c(q, s - q)`` for every level, and the empty
  corners (``s - q`` outside ``[0, T)``) hold level ``q``'s padding token ``Q * K + q``. One
  step per frame, ``T + Q - 1`` steps: the input of a step is the sum of the ``Q`` token
  embeddings of the step before, and ``Q`` output heads predict all levels of the step at once.
  Code ``(q, t)`` is predicted at step ``t + q`` and sees the codes of every earlier step, i.e.
  ``(q', t')`` with ``t' + q' < t + q``: the lower levels of its own frame and later frames of
  the lower levels.

After the code (and padding) tokens come the start tokens: one per class plus a null
(unconditional) one, index ``num_classes``; an unconditional prior has only the null start
token. Position 0 is the start token and position ``j`` predicts step ``j``; the output head of
level ``q`` scores only that level's ``K`` tokens, so ``logits`` is ``(B, K, *code_shape)`` and
start and padding tokens can never be sampled.

Sampling (``generate``) is our own loop over ``LlamaModel`` fed with input embeddings: one step
per forward call of length 1 against a KV cache (``decoding.py``: a transformers
``DynamicCache`` or, by default on CUDA, a ``StaticCache`` replayed as a CUDA graph), with the
conditional and null-class rows of classifier-free guidance in one batch. ``generate_uncached``
recomputes the whole prefix every step. All of them take each sample's uniforms from its own
stream, so they return the same codes, whatever the batch size.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM

from ..progress import progress_bar
from .base import Prior, cfg_combine, normalize_id2label, resolve_layout, sample_logits
from .decoding import CACHE_IMPLEMENTATIONS, make_decoder, resolve_cache_implementation, run_backbone

LAYOUTS = ("raster", "frames", "delay")
ATTN_IMPLEMENTATIONS = ("sdpa", "eager")


# --------------------------------------------------------------------------- helpers
def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def default_intermediate_size(hidden_size: int, multiple_of: int = 16) -> int:
    """Llama-style SwiGLU width: ``8/3 * hidden`` rounded up to ``multiple_of`` (same parameter
    count as a ``4 * hidden`` GELU MLP)."""
    return multiple_of * math.ceil(8 * hidden_size / 3 / multiple_of)


# --------------------------------------------------------------------------- config
@dataclass
class TransformerPriorConfig:
    """Configuration of :class:`TransformerPrior`.

    ``code_shape`` is one sample's code shape, e.g. ``(7, 7)``, ``(Q, T)`` or ``(L,)``;
    ``layout``: ``"raster"`` (old name ``"flat"``), ``"frames"`` (``code_shape = (Q, *rest)``
    with ``Q`` levels) or ``"delay"`` (``code_shape = (Q, T)``); see the module doc.
    ``id2label``: class names ``{id: name}`` for every class (needs ``num_classes``), or None;
    ``config.json`` stores the ids as strings, turned back into ints on load.
    ``intermediate_size=None`` resolves to :func:`default_intermediate_size` (stored resolved).
    ``num_kv_heads=None`` means plain multi-head attention (no grouped-query sharing).
    ``dropout`` is the attention dropout (Llama has no other dropout), active in train mode only.
    ``cache_implementation`` is the default KV cache of :meth:`TransformerPrior.generate`.
    Raises ``ValueError`` for inconsistent values.
    """

    codebook_size: int = 512
    code_shape: tuple = (7, 7)
    num_classes: int | None = None
    id2label: dict | None = None
    label_dropout: float = 0.1
    hidden_size: int = 256
    num_layers: int = 6
    num_heads: int = 8
    num_kv_heads: int | None = None
    intermediate_size: int | None = None
    dropout: float = 0.0
    layout: str = "raster"
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
        self.id2label = normalize_id2label(self.id2label, self.num_classes)
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
        self.layout = resolve_layout(self.layout, LAYOUTS)
        if self.layout == "frames" and len(shape) < 2:
            raise ValueError(f"layout='frames' needs code_shape (Q, *rest) with a level dim, got {shape}")
        if self.layout == "delay" and len(shape) != 2:
            raise ValueError(f"layout='delay' needs code_shape (Q, T), got {shape}")
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
        """Levels with their own token range: ``code_shape[0]`` for frames/delay, else 1."""
        return 1 if self.layout == "raster" else self.code_shape[0]

    @property
    def num_codes(self) -> int:
        """Codes per sample, ``prod(code_shape)``."""
        return math.prod(self.code_shape)

    @property
    def seq_len(self) -> int:
        """Positions of the sequence the network reads: ``T + Q - 1`` steps for the delay
        pattern, one per code (``prod(code_shape)``) otherwise."""
        if self.layout == "delay":
            return self.code_shape[1] + self.code_shape[0] - 1
        return self.num_codes

    @property
    def num_pad_tokens(self) -> int:
        """One padding token per level in the delay pattern (its empty corners), else 0."""
        return self.code_shape[0] if self.layout == "delay" else 0


def llama_config(config: TransformerPriorConfig) -> LlamaConfig:
    """The ``LlamaConfig`` of the network inside a :class:`TransformerPrior` (no downloads).

    Vocabulary: ``num_levels * codebook_size`` code tokens, ``num_pad_tokens`` padding tokens
    (delay pattern), then ``num_classes + 1`` start tokens (1 for an unconditional prior).
    BOS/EOS/PAD are unused (None); embeddings are untied so the state dict has no shared tensors.
    """
    num_start = (config.num_classes or 0) + 1
    return LlamaConfig(
        vocab_size=config.num_levels * config.codebook_size + config.num_pad_tokens + num_start,
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
    and padding tokens exist but are never used here.
    """

    config_class = TransformerPriorConfig

    def __init__(self, config: TransformerPriorConfig):
        super().__init__(config)
        self.lm = LlamaForCausalLM(llama_config(config))
        q, n, k = config.num_levels, config.num_codes, config.codebook_size
        # raster/frames: sequence position j predicts level j % Q; token id = code + level offset
        levels = torch.arange(n) % q
        self.register_buffer("_levels", levels, persistent=False)                         # (N,)
        self.register_buffer("_offsets", levels * k, persistent=False)                    # (N,)
        if config.layout == "delay":
            Q, T = config.code_shape
            step = torch.arange(T)[None, :] + torch.arange(Q)[:, None]                     # (Q, T)
            frame = torch.arange(config.seq_len)[:, None] - torch.arange(Q)[None, :]       # (S, Q)
            self.register_buffer("_delay_step", step, persistent=False)
            self.register_buffer("_delay_frame", frame, persistent=False)

    # ----------------------------------------------------------------------- layout helpers
    @property
    def seq_len(self) -> int:
        return self.config.seq_len

    @property
    def num_levels(self) -> int:
        return self.config.num_levels

    def _to_sequence(self, grid: torch.Tensor) -> torch.Tensor:
        """``(B, *code_shape) -> (B, N)`` in the raster/frames order."""
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

    def _delay_tokens(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes ``(B, Q, T)`` -> delay-pattern token ids ``(B, S, Q)``, ``S = T + Q - 1``:
        ``q * K + c(q, s - q)``, or level ``q``'s padding token where ``s - q`` is off the grid."""
        Q, T = self.code_shape
        frame = self._delay_frame                                              # (S, Q)
        level = torch.arange(Q, device=codes.device).expand_as(frame)          # (S, Q)
        tokens = codes[:, level, frame.clamp(0, T - 1)] + level * self.codebook_size
        pad = Q * self.codebook_size + level                                   # (S, Q)
        return torch.where((frame >= 0) & (frame < T), tokens, pad)

    def _step_tokens(self, codes: torch.Tensor) -> torch.Tensor:
        """Token ids ``(B, S, P)`` of every step: ``P = Q`` tokens per step (delay) or 1."""
        if self.config.layout == "delay":
            return self._delay_tokens(codes)
        return (self._to_sequence(codes) + self._offsets)[..., None]

    def _embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """Token ids ``(B, L, P)`` -> input embeddings ``(B, L, H)``, the sum over ``P``."""
        return self.lm.model.embed_tokens(tokens).sum(2)

    def _head_weight(self) -> torch.Tensor:
        """``lm_head`` rows of the code tokens, ``(Q, K, hidden)``."""
        q, k = self.num_levels, self.codebook_size
        return self.lm.lm_head.weight[: q * k].view(q, k, -1)

    def _start_tokens(self, labels: torch.Tensor | None, batch: int, device) -> torch.Tensor:
        """Start token ids ``(batch,)`` from network labels (``num_classes`` = null)."""
        first = self.num_levels * self.codebook_size + self.config.num_pad_tokens
        if labels is None:  # unconditional prior: its one start token
            return torch.full((batch,), first, dtype=torch.long, device=device)
        return labels + first

    # ----------------------------------------------------------------------- training
    def _code_logits(self, codes: torch.Tensor, labels) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher-forced logits with the class dim last, contiguous (fast cross-entropy), and
        the matching targets: delay ``(B, Q, T, K)`` / ``(B, Q, T)`` in grid order, otherwise
        ``(B, N, K)`` / ``(B, N)`` in sequence order."""
        codes = self.check_codes(codes)
        b, device = codes.shape[0], codes.device
        labels = self.condition_labels(self.label_ids(labels, b, device), b, device)
        start = self._embed(self._start_tokens(labels, b, device)[:, None, None])  # (B, 1, H)
        steps = self._embed(self._step_tokens(codes)[:, :-1])                     # (B, S-1, H)
        hidden = run_backbone(self.lm.model, torch.cat([start, steps], 1))         # (B, S, H)
        weight = self._head_weight()                                               # (Q, K, H)
        if self.config.layout == "delay":  # code (q, t) is predicted at step t + q
            hidden = hidden[:, self._delay_step]                                   # (B, Q, T, H)
            return torch.einsum("bqth,qkh->bqtk", hidden, weight), codes
        # Score each position against its own level's K rows only: (B, R, Q, H) x (Q, K, H).
        hidden = hidden.reshape(b, -1, self.num_levels, hidden.shape[-1])
        logits = torch.einsum("brqh,qkh->brqk", hidden, weight)                # (B, R, Q, K)
        return logits.reshape(b, self.config.num_codes, -1), self._to_sequence(codes)

    def logits(self, codes: torch.Tensor, labels=None) -> torch.Tensor:
        """Teacher-forced logits ``(B, codebook_size, *code_shape)`` for codes ``(B, *code_shape)``.

        Causal in the layout's order: the logits of a code depend only on the label and the
        codes of earlier steps (module doc). ``labels``: None, an id or class name, or ``B`` of
        them (``Prior.label_ids``); in train mode they are replaced by the null class with
        probability ``label_dropout``. Raises ``ValueError`` for codes of the wrong
        shape/dtype/range and for bad labels.
        """
        logits, _ = self._code_logits(codes, labels)
        if self.config.layout == "delay":
            return logits.permute(0, 3, 1, 2)                                  # (B, K, Q, T)
        b, k = logits.shape[0], self.codebook_size
        seq = logits.transpose(1, 2).reshape(b * k, -1)                        # (B*K, N)
        return self._to_grid(seq).reshape(b, k, *self.code_shape)

    def nll(self, codes: torch.Tensor, labels=None) -> torch.Tensor:
        """Negative log-likelihood in nats per sample, ``(B,)``; labels as ``Prior.label_ids``."""
        logits, target = self._code_logits(codes, labels)
        per_code = F.cross_entropy(logits.reshape(-1, self.codebook_size).float(),
                                   target.reshape(-1), reduction="none")
        return per_code.view(len(target), -1).sum(1)

    def loss(self, codes: torch.Tensor, labels=None) -> torch.Tensor:
        """Mean NLL in nats per code (the training loss); labels as ``Prior.label_ids``."""
        logits, target = self._code_logits(codes, labels)
        return F.cross_entropy(logits.reshape(-1, self.codebook_size).float(), target.reshape(-1))

    # ----------------------------------------------------------------------- sampling
    def sampling_draws(self) -> tuple[int, ...]:
        """Uniforms per sample: ``(T + Q - 1, Q)`` for the delay pattern, else ``(N, 1)``."""
        if self.config.layout == "delay":
            return self.seq_len, self.code_shape[0]
        return self.seq_len, 1

    def generate(self, n: int, labels=None, temperature: float = 1.0, top_k: int | None = None,
                 top_p: float | None = None, cfg_scale: float = 1.0,
                 generator: torch.Generator | None = None, batch_size: int | None = None,
                 progress: bool = False, *, cache_implementation: str | None = None
                 ) -> torch.Tensor:
        """Sample ``n`` code grids, LongTensor ``(n, *code_shape)``, with KV-cached decoding.

        ``labels``: None (null class / unconditional), an id or class name, or ``n`` of them.
        ``temperature``, ``top_k``, ``top_p`` filter each step's logits (``base.filter_logits``);
        ``cfg_scale != 1`` applies classifier-free guidance against the null class (one batch of
        ``2n`` rows) and needs labels. ``generator`` (CPU) seeds one stream per sample: the same
        seed gives the same codes for any ``batch_size`` (rows decoded together, default all).
        ``cache_implementation`` overrides the config's (``"dynamic"``: transformers
        ``DynamicCache``; ``"static"``: ``StaticCache``, a CUDA graph on CUDA; ``"auto"``: static
        on CUDA, dynamic elsewhere). ``progress`` shows a bar over the steps. Works in train
        mode too (eval for the call). Raises ``ValueError`` for bad ``n``, ``batch_size``,
        labels, sampling settings or cache implementation.
        """
        device = self.lm.lm_head.weight.device
        impl = resolve_cache_implementation(cache_implementation or self.config.cache_implementation,
                                            device)
        return self._generate(n, labels, temperature, top_k, top_p, cfg_scale, generator,
                              batch_size, progress, impl=impl)

    def generate_uncached(self, n: int, labels=None, temperature: float = 1.0,
                          top_k: int | None = None, top_p: float | None = None,
                          cfg_scale: float = 1.0, generator: torch.Generator | None = None,
                          batch_size: int | None = None) -> torch.Tensor:
        """Same as :meth:`generate` (same codes for the same ``generator`` state) but recomputes
        the whole prefix at every step: ``O(S^2)`` work, a reference for tests and benchmarks."""
        return self._generate(n, labels, temperature, top_k, top_p, cfg_scale, generator,
                              batch_size, False, impl="none")

    def _step_levels(self, s: int) -> list[int]:
        """Levels predicted at step ``s``: one (raster/frames) or the delay diagonal."""
        if self.config.layout != "delay":
            return [s % self.num_levels]
        Q, T = self.code_shape
        return list(range(max(0, s - T + 1), min(Q - 1, s) + 1))

    def _sample_batch(self, labels, uniforms, temperature, top_k, top_p, cfg_scale, progress,
                      impl: str = "dynamic") -> torch.Tensor:
        m, device = len(uniforms), self.lm.lm_head.weight.device
        guided = cfg_scale != 1.0
        net_labels = self.condition_labels(labels, m, device)  # None only if unconditional
        if guided:  # conditional rows first, then the same number of null-class rows
            net_labels = torch.cat([net_labels, torch.full_like(net_labels, self.num_classes)])
        rows = net_labels.shape[0] if net_labels is not None else m
        delay, k, weight = self.config.layout == "delay", self.codebook_size, self._head_weight()
        Q = self.code_shape[0] if delay else 1
        out = torch.zeros(m, *self.code_shape, dtype=torch.long, device=device)   # delay
        seq = torch.zeros(m, self.seq_len, dtype=torch.long, device=device)   # raster/frames
        tokens = self._start_tokens(net_labels, rows, device)[:, None]       # (rows, P) fed next
        step = make_decoder(self, self.lm.model, impl, rows, self.seq_len, device)
        for s in progress_bar(range(self.seq_len), desc="sample", enabled=progress):
            hidden = step(s, self._embed(tokens[:, None]))                     # (rows, H)
            levels = self._step_levels(s)
            head = weight[levels[0]:levels[-1] + 1]                            # (L, K, H), a view
            logits = torch.einsum("rh,lkh->rlk", hidden, head)                 # (rows, L, K)
            if guided:
                logits = cfg_combine(logits[:m], logits[m:], cfg_scale)
            codes = sample_logits(logits, temperature, top_k, top_p,
                                  uniform=uniforms[:, s, :len(levels)])        # (m, L)
            if not delay:
                seq[:, s] = codes[:, 0]
                tokens = (codes + self._offsets[s]).repeat(rows // m, 1)       # (rows, 1)
                continue
            tokens = Q * k + torch.arange(Q, device=device).repeat(m, 1)       # pads, (m, Q)
            for i, q in enumerate(levels):
                out[:, q, s - q] = codes[:, i]
                tokens[:, q] = q * k + codes[:, i]
            tokens = tokens.repeat(rows // m, 1)                               # (rows, Q)
        return out if delay else self._to_grid(seq)


def transformer_prior_debug(codebook_size: int = 16, code_shape: tuple = (4, 4), **overrides
                            ) -> TransformerPrior:
    """A tiny Transformer prior for tests and smoke runs: 2 layers, 32 wide, 2 heads."""
    return TransformerPrior.from_config(codebook_size=codebook_size, code_shape=code_shape,
                                        **{"hidden_size": 32, "num_layers": 2, "num_heads": 2,
                                           **overrides})
