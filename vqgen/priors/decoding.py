"""Incremental decoding of a transformers ``LlamaModel`` for :class:`TransformerPrior` sampling.

A decoder is a callable ``step(j, embeds) -> hidden``: it feeds the input embedding of sequence
position ``j`` (``(rows, 1, hidden)``), after positions ``0 .. j - 1`` were fed by earlier calls,
and returns the last layer's hidden state there, ``(rows, hidden)``. Three implementations give
the same numbers (up to kernel round-off):

- ``"none"``: recomputes the whole prefix every step (``O(N^2)``; the reference);
- ``"dynamic"``: a transformers ``DynamicCache``;
- ``"static"``: a preallocated ``StaticCache`` with fixed-address inputs, captured once as a CUDA
  graph on CUDA and replayed (a step then costs one graph launch instead of hundreds of kernel
  launches from Python); eager elsewhere.
"""
from __future__ import annotations

import inspect
import warnings
from typing import Callable

import torch
from transformers import DynamicCache, LlamaModel, StaticCache

CACHE_IMPLEMENTATIONS = ("auto", "dynamic", "static")

# transformers renamed ``past_key_values`` to ``cache`` in 5.x; pass whichever this version takes.
_CACHE_KW = "cache" if "cache" in inspect.signature(LlamaModel.forward).parameters else "past_key_values"

Step = Callable[[int, torch.Tensor], torch.Tensor]


def run_backbone(model: LlamaModel, embeds: torch.Tensor, cache=None, position_ids=None,
                 attention_mask=None) -> torch.Tensor:
    """Run the Llama decoder on input embeddings ``(B, L, H)``; returns hidden ``(B, L, H)``."""
    kwargs = {_CACHE_KW: cache, "use_cache": cache is not None}
    out = model(inputs_embeds=embeds, position_ids=position_ids, attention_mask=attention_mask,
                **kwargs)
    return out.last_hidden_state


def resolve_cache_implementation(name: str, device: torch.device) -> str:
    """``"auto"`` -> ``"static"`` on CUDA, ``"dynamic"`` elsewhere; ``ValueError`` if unknown."""
    if name not in CACHE_IMPLEMENTATIONS:
        raise ValueError(f"cache_implementation must be one of {CACHE_IMPLEMENTATIONS}, got {name!r}")
    if name == "auto":
        return "static" if device.type == "cuda" else "dynamic"
    return name


def make_decoder(owner: torch.nn.Module, model: LlamaModel, impl: str, rows: int, seq_len: int,
                 device: torch.device) -> Step:
    """A decoding ``step`` for ``rows`` sequences of up to ``seq_len`` positions (module doc).

    ``impl``: ``"none"``, ``"dynamic"`` or ``"static"``. Static decoders (and their CUDA graphs)
    are kept on ``owner`` and reused while the weights stay at the same addresses.
    """
    if impl == "none":
        prefix: list[torch.Tensor] = []

        def recompute(j: int, embeds: torch.Tensor) -> torch.Tensor:
            prefix.append(embeds)
            return run_backbone(model, torch.cat(prefix, 1))[:, -1]
        return recompute
    if impl == "dynamic":
        cache = DynamicCache(config=model.config)
        positions = torch.arange(seq_len, device=device)[None]              # (1, N)
        return lambda j, embeds: run_backbone(model, embeds, cache, positions[:, j:j + 1])[:, -1]
    if impl != "static":
        raise ValueError(f"unknown decoder {impl!r}; expected 'none', 'dynamic' or 'static'")
    key = (rows, seq_len, str(device), tuple(p.data_ptr() for p in model.parameters()))
    decoders = owner.__dict__.setdefault("_static_decoders", DecoderCache())
    if key not in decoders:
        if len(decoders) >= 4:
            decoders.clear()
        decoders[key] = StaticDecoder(model, rows, seq_len, device)
    decoder = decoders[key]
    decoder.reset()
    return decoder


class DecoderCache(dict):
    """Per-module cache of :class:`StaticDecoder` objects; copies and pickles of the module start
    with an empty one (CUDA graphs can be neither copied nor pickled)."""

    def __deepcopy__(self, memo):
        return DecoderCache()

    def __reduce__(self):
        return DecoderCache, ()


class StaticDecoder:
    """Fixed-address decoding state for ``rows`` sequences: a transformers ``StaticCache`` of
    ``seq_len`` positions, the fed embedding ``(rows, 1, H)``, its position ``(1, 1)`` and an
    attention mask ``(1, 1, 1, seq_len)`` over the cache (a 4-D mask skips transformers' mask
    construction).

    Nothing in a step depends on host-side values, so on CUDA the step is captured once as a CUDA
    graph and replayed; elsewhere (or if capture fails, with a warning) it runs eagerly.
    """

    def __init__(self, model: LlamaModel, rows: int, seq_len: int, device: torch.device):
        self.model = model
        self.cache = StaticCache(config=model.config, max_cache_len=seq_len)
        dtype = model.embed_tokens.weight.dtype
        self.embeds = torch.zeros(rows, 1, model.config.hidden_size, dtype=dtype, device=device)
        self.position = torch.zeros(1, 1, dtype=torch.long, device=device)
        self.visible = torch.zeros(1, 1, 1, seq_len, dtype=torch.bool, device=device)
        if model.config._attn_implementation == "eager":  # eager attention adds the mask
            self.mask = torch.full((1, 1, 1, seq_len), torch.finfo(dtype).min, dtype=dtype,
                                   device=device)
        else:                                              # sdpa takes True = attend
            self.mask = self.visible
        self.graph = self.hidden = None
        if device.type == "cuda":
            self._capture(device)

    def _forward(self) -> torch.Tensor:
        return run_backbone(self.model, self.embeds, self.cache, self.position, self.mask)[:, -1]

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

    def __call__(self, j: int, embeds: torch.Tensor) -> torch.Tensor:
        self.embeds.copy_(embeds)
        self.position.fill_(j)
        self.visible[..., j].fill_(True)
        if self.mask is not self.visible:
            self.mask[..., j].fill_(0.0)
        if self.graph is None:
            return self._forward()
        self.graph.replay()
        return self.hidden
