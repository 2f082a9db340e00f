"""Gated PixelCNN prior (van den Oord et al., 2016) over a grid of codes, without a blind spot.

The network sees one sample's codes as a 2-D grid ``(H, W)`` and predicts them in raster order
(row by row, left to right). Two stacks run side by side:

- the **vertical stack** sees every row strictly above the current one: its input is the
  embedded grid shifted down by one row, and each layer is a ``(k//2 + 1, k)`` convolution padded
  on top only, so row ``i`` never reads rows ``> i`` of its input;
- the **horizontal stack** sees the current row strictly left of the current position: its input
  is the embedded grid shifted right by one column, and each layer is a ``(1, k//2 + 1)``
  convolution padded on the left only.

Each layer gates ``tanh(a) * sigmoid(b)`` and adds a learned per-class bias to ``a, b``; the
vertical pre-activation feeds the horizontal one through a 1x1 convolution (no extra shift is
needed because the vertical stack is already strictly above). The horizontal stack has residual
connections and every layer's skip output is summed into the output head. The shift-instead-of-
mask construction is what removes the blind spot of the original masked PixelCNN: the logits at
``(i, j)`` can depend on every position above (within the receptive field, ``k//2`` columns per
layer on either side) and every position to the left.

How ``code_shape`` maps to the grid (``PixelCNNPriorConfig.layout``):

- ``(T,)``: one row, ``(1, T)``.
- ``(h, w)`` with ``layout="raster"``: the image grid itself, raster order.
- ``(Q, T)`` with ``layout="frames"``: multi-codebook audio, transposed to a ``(T, Q)`` grid so
  the order is frame-major: all levels ``q = 0..Q-1`` of frame ``t`` before frame ``t + 1``.
  (With the default ``layout="raster"`` a ``(Q, T)`` shape is read as a ``Q x T`` image, i.e.
  level-major; audio priors should set ``layout="frames"``.)
- ``(Q, h, w)`` with ``layout="raster"``: ``Q`` codebooks per image position, laid out as an
  ``(h, w * Q)`` grid, so the ``Q`` levels of a position come one after the other.

Generation is exact and incremental (cached): every layer keeps its inputs in a padded buffer;
at the start of row ``r`` each vertical layer computes row ``r`` only, and at each position each
horizontal layer computes that one position only, so sampling a whole grid costs about one full
forward pass. ``generate_naive`` recomputes the whole network at every position (``H * W`` full
passes) and draws the same codes for the same generator; it exists for tests and benchmarks.
Each sample takes its uniforms from its own stream (``base.sample_uniforms``), so samples do not
depend on ``batch_size``. ``"grid"``, the old name of ``"raster"``, is still accepted.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from ..progress import progress_bar
from .base import Prior, cfg_combine, normalize_id2label, resolve_layout, sample_logits

LAYOUTS = ("raster", "frames")


# --------------------------------------------------------------------------- config
@dataclass
class PixelCNNPriorConfig:
    """Configuration of :class:`PixelCNNPrior`.

    codebook_size: number of distinct codes ``K`` (>= 2).
    code_shape: one sample's code shape, ``(T,)``, ``(h, w)``, ``(Q, T)`` or ``(Q, h, w)``.
    num_classes: number of class labels, or None for an unconditional prior.
    id2label: class names ``{id: name}`` for every class (needs ``num_classes``), or None;
        ``config.json`` stores the ids as strings, turned back into ints on load.
    label_dropout: probability of replacing a label by the null label in training (for CFG).
    layout: ``"raster"`` (raster order over the code grid; old name ``"grid"``) or ``"frames"``
        (``(Q, T)`` codes, frame-major order); see the module docstring.
    embed_dim: size of the input code embedding.
    hidden: channels of both stacks (the gates use ``2 * hidden``).
    num_layers: gated layers; the first one excludes the current position ("type A").
    kernel_size: odd width ``k`` of the vertical kernel ``(k//2 + 1, k)``; the horizontal
        kernel is ``(1, k//2 + 1)``.
    dropout: dropout on the gated horizontal activations (training only).

    Raises ``ValueError`` from ``__post_init__`` for an invalid value.
    """

    codebook_size: int = 512
    code_shape: tuple = (7, 7)
    num_classes: int | None = None
    id2label: dict | None = None
    label_dropout: float = 0.1
    layout: str = "raster"
    embed_dim: int = 64
    hidden: int = 128
    num_layers: int = 12
    kernel_size: int = 5
    dropout: float = 0.0

    def __post_init__(self) -> None:
        def positive_int(name: str, value, minimum: int = 1) -> None:
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")

        positive_int("codebook_size", self.codebook_size, 2)
        shape = self.code_shape
        if isinstance(shape, int) and not isinstance(shape, bool):
            shape = (shape,)
        if not isinstance(shape, (tuple, list)) or not 1 <= len(shape) <= 3 or any(
                isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in shape):
            raise ValueError("code_shape must be a tuple of 1 to 3 positive ints, e.g. (7, 7), "
                             f"(Q, T) or (L,); got {self.code_shape!r}")
        self.code_shape = tuple(shape)
        self.layout = resolve_layout(self.layout, LAYOUTS)
        if self.layout == "frames" and len(self.code_shape) != 2:
            raise ValueError(f"layout='frames' expects code_shape (Q, T), got {self.code_shape!r}")
        if self.num_classes is not None:
            positive_int("num_classes", self.num_classes)
        self.id2label = normalize_id2label(self.id2label, self.num_classes)
        if not (isinstance(self.label_dropout, (int, float)) and 0 <= self.label_dropout < 1):
            raise ValueError(f"label_dropout must be in [0, 1), got {self.label_dropout!r}")
        positive_int("embed_dim", self.embed_dim)
        positive_int("hidden", self.hidden)
        positive_int("num_layers", self.num_layers)
        positive_int("kernel_size", self.kernel_size, 3)
        if self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd, got {self.kernel_size}")
        if not (isinstance(self.dropout, (int, float)) and 0 <= self.dropout < 1):
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")


# --------------------------------------------------------------------------- helpers
def _gate(a: torch.Tensor) -> torch.Tensor:
    """``(B, 2C, ...) -> (B, C, ...)``: ``tanh(first half) * sigmoid(second half)`` of dim 1."""
    x, g = a.chunk(2, dim=1)
    return torch.tanh(x) * torch.sigmoid(g)


def _shift_down(x: torch.Tensor) -> torch.Tensor:
    """``(B, C, H, W)``: row ``i`` of the output is row ``i - 1`` of the input (zeros on top)."""
    return F.pad(x, (0, 0, 1, 0))[:, :, :-1]


def _shift_right(x: torch.Tensor) -> torch.Tensor:
    """``(B, C, H, W)``: column ``j`` of the output is column ``j - 1`` of the input."""
    return F.pad(x, (1, 0))[..., :-1]


def _pointwise(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """A 1x1 ``conv`` applied to channel vectors ``x (B, C_in) -> (B, C_out)``."""
    return F.linear(x, conv.weight.flatten(1), conv.bias)


class GatedLayer(nn.Module):
    """One gated layer of both stacks (vertical and horizontal), causal by padding alone.

    ``first=True`` marks the layer reading the shifted embeddings: it has no residual
    connections (its input width differs and the position itself is excluded by the shift).
    """

    def __init__(self, in_ch: int, hidden: int, kernel_size: int, first: bool,
                 num_labels: int | None, dropout: float):
        super().__init__()
        self.p = kernel_size // 2
        self.first = first
        self.v_conv = nn.Conv2d(in_ch, 2 * hidden, (self.p + 1, kernel_size))
        self.h_conv = nn.Conv2d(in_ch, 2 * hidden, (1, self.p + 1))
        self.v_to_h = nn.Conv2d(2 * hidden, 2 * hidden, 1)
        self.h_out = nn.Conv2d(hidden, hidden, 1)
        self.skip = nn.Conv2d(hidden, hidden, 1)
        self.dropout = nn.Dropout(dropout)
        # learned per-class bias on the vertical and horizontal gates; row num_classes = null
        self.label_bias = None
        if num_labels is not None:
            self.label_bias = nn.Embedding(num_labels, 4 * hidden)
            nn.init.zeros_(self.label_bias.weight)

    def biases(self, labels: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``labels (B,)`` -> vertical and horizontal gate biases, each ``(B, 2*hidden, 1, 1)``."""
        if self.label_bias is None or labels is None:
            return None
        b = self.label_bias(labels)[:, :, None, None]  # (B, 4*hidden, 1, 1)
        return b.chunk(2, dim=1)

    def vertical(self, v_pad: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """One vertical step. ``v_pad (B, C, R + p, W + 2p)``: the input rows ``i - p .. i`` of
        every output row ``i`` (zero-padded ``p`` rows on top, ``p`` columns each side);
        ``v (B, C, R, W)``: the unpadded input rows, for the residual. Returns the next
        ``v (B, hidden, R, W)`` and the link into the horizontal stack ``(B, 2*hidden, R, W)``."""
        a = self.v_conv(v_pad)  # (B, 2*hidden, R, W)
        if bias is not None:
            a = a + bias
        out = _gate(a)
        if not self.first:
            out = out + v
        return out, self.v_to_h(a)

    def horizontal(self, h_pad: torch.Tensor, h: torch.Tensor, link: torch.Tensor,
                   bias: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """One horizontal step. ``h_pad (B, C, R, W + p)``: the input columns ``j - p .. j`` of
        every output column ``j`` (zero-padded ``p`` columns on the left); ``h (B, C, R, W)``:
        the unpadded input, for the residual; ``link (B, 2*hidden, R, W)`` from the vertical
        stack. Returns the next ``h`` and the skip output, both ``(B, hidden, R, W)``."""
        a = self.h_conv(h_pad) + link  # (B, 2*hidden, R, W)
        if bias is not None:
            a = a + bias
        g = self.dropout(_gate(a))
        out = self.h_out(g)
        if not self.first:
            out = out + h
        return out, self.skip(g)

    def horizontal_step(self, window: torch.Tensor, h: torch.Tensor, link: torch.Tensor,
                        bias: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`horizontal` at one position, as matrix products (sampling, eval mode).

        ``window (B, C, p + 1)``: the input at columns ``j - p .. j``; ``h (B, C)``:
        the input at ``j``; ``link (B, 2*hidden)``; ``bias (B, 2*hidden)`` or None.
        Returns the next ``h`` and the skip output, both ``(B, hidden)``.
        """
        weight = self.h_conv.weight.flatten(1)  # (2*hidden, C*(p+1)), a view
        a = F.linear(window.flatten(1), weight, self.h_conv.bias) + link  # (B, 2*hidden)
        if bias is not None:
            a = a + bias
        g = _gate(a)  # (B, hidden)
        out = _pointwise(self.h_out, g)
        if not self.first:
            out = out + h
        return out, _pointwise(self.skip, g)


# --------------------------------------------------------------------------- model
class PixelCNNPrior(Prior):
    """Gated PixelCNN over codes ``(B, *code_shape)``; see the module docstring for the order.

    ``logits(codes, labels=None) -> (B, K, *code_shape)``; ``generate(n, ...) -> (n, *code_shape)``.
    Codes of the wrong shape/dtype/range, labels on an unconditional prior and unknown labels
    raise ``ValueError``.
    """

    config_class = PixelCNNPriorConfig

    def __init__(self, config: PixelCNNPriorConfig):
        super().__init__(config)
        c = config
        num_labels = None if c.num_classes is None else c.num_classes + 1
        self.embed = nn.Embedding(c.codebook_size, c.embed_dim)
        self.layers = nn.ModuleList(
            GatedLayer(c.embed_dim if i == 0 else c.hidden, c.hidden, c.kernel_size, i == 0,
                       num_labels, c.dropout)
            for i in range(c.num_layers))
        # output head on the summed skips: ReLU -> 1x1 -> ReLU -> 1x1 to K logits
        self.head_hidden = nn.Conv2d(c.hidden, c.hidden, 1)
        self.head_out = nn.Conv2d(c.hidden, c.codebook_size, 1)

    # ----------------------------------------------------------------------- layout
    @property
    def grid_shape(self) -> tuple[int, int]:
        """``(H, W)`` of the internal grid for ``code_shape`` (see module docstring)."""
        s = self.code_shape
        if len(s) == 1:
            return 1, s[0]
        if len(s) == 2:
            return (s[1], s[0]) if self.config.layout == "frames" else (s[0], s[1])
        return s[1], s[2] * s[0]

    def to_grid(self, codes: torch.Tensor) -> torch.Tensor:
        """``(B, *code_shape) -> (B, H, W)`` in the prior's raster order."""
        s = self.code_shape
        if len(s) == 1:
            return codes[:, None, :]
        if len(s) == 2:
            return codes.transpose(1, 2) if self.config.layout == "frames" else codes
        return rearrange(codes, "b q h w -> b h (w q)")

    def from_grid(self, x: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`to_grid`: ``(..., H, W) -> (..., *code_shape)``."""
        s = self.code_shape
        if len(s) == 1:
            return x[..., 0, :]
        if len(s) == 2:
            return x.transpose(-1, -2) if self.config.layout == "frames" else x
        return rearrange(x, "... h (w q) -> ... q h w", q=s[0])

    # ----------------------------------------------------------------------- network
    def _embed(self, grid: torch.Tensor) -> torch.Tensor:
        """``(B, H, W)`` codes -> ``(B, E, H, W)`` embeddings."""
        return rearrange(self.embed(grid), "b h w e -> b e h w")

    def _grid_logits(self, grid: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        """Full network: ``grid (B, H, W)``, ``cond (B,)`` or None -> logits ``(B, K, H, W)``."""
        p = self.config.kernel_size // 2
        biases = [layer.biases(cond) for layer in self.layers]
        x = self._embed(grid)  # (B, E, H, W)
        v, h = _shift_down(x), _shift_right(x)
        skips = 0
        for layer, b in zip(self.layers, biases):
            vb, hb = (None, None) if b is None else b
            v, link = layer.vertical(F.pad(v, (p, p, p, 0)), v, vb)
            h, s = layer.horizontal(F.pad(h, (p, 0)), h, link, hb)
            skips = skips + s  # (B, hidden, H, W)
        return self.head_out(F.relu(self.head_hidden(F.relu(skips))))

    def logits(self, codes: torch.Tensor, labels=None) -> torch.Tensor:
        """Teacher-forced logits ``(B, K, *code_shape)`` for codes ``(B, *code_shape)``.

        Causal in the prior's order: the logits at a position never depend on the codes at that
        position or later. ``labels``: int, sequence or LongTensor ``(B,)`` in
        ``[0, num_classes)``, or None (the null label on a conditional prior). In training mode
        labels are dropped to the null label with probability ``label_dropout``.
        Raises ``ValueError`` for bad codes or labels.
        """
        codes = self.check_codes(codes)
        device = self.embed.weight.device
        labels = self.check_labels(labels, codes.shape[0], device)
        cond = self.condition_labels(labels, codes.shape[0], device)
        out = self._grid_logits(self.to_grid(codes.to(device)), cond)  # (B, K, H, W)
        return self.from_grid(out)

    # ----------------------------------------------------------------------- sampling
    def sampling_draws(self) -> tuple[int, ...]:
        """One uniform per code, in raster order of the internal grid: ``(H * W,)``."""
        H, W = self.grid_shape
        return (H * W,)

    def _conditioning(self, labels: torch.Tensor | None, m: int, cfg_scale: float
                      ) -> tuple[torch.Tensor | None, bool]:
        """Network labels for the batch that is run, ``(m,)`` or ``(2m,)`` with the null-label
        half appended when classifier-free guidance is on; and the CFG flag."""
        cond = self.condition_labels(labels, m, self.embed.weight.device)  # eval: no dropout
        guided = cond is not None and labels is not None and cfg_scale != 1.0
        if guided:
            cond = torch.cat([cond, torch.full_like(cond, self.num_classes)])
        return cond, guided

    @staticmethod
    def _pick(logits: torch.Tensor, uniform: torch.Tensor, guided: bool, cfg_scale: float,
              temperature, top_k, top_p) -> torch.Tensor:
        """``logits (m or 2m, K)``, ``uniform (m,)`` -> sampled codes ``(m,)``."""
        m = len(uniform)
        if guided:
            logits = cfg_combine(logits[:m].float(), logits[m:].float(), cfg_scale)
        return sample_logits(logits, temperature, top_k, top_p, uniform=uniform)

    def generate(self, n: int, labels=None, temperature: float = 1.0, top_k: int | None = None,
                 top_p: float | None = None, cfg_scale: float = 1.0,
                 generator: torch.Generator | None = None, batch_size: int | None = None,
                 progress: bool = False) -> torch.Tensor:
        """Sample ``n`` code grids; returns LongTensor ``(n, *code_shape)`` on the model's device.

        Raster-order ancestral sampling, cached (about one full forward pass per grid), with
        temperature / top-k / top-p filtering. ``labels``: ids or class names (see
        ``Prior.label_ids``). With labels and ``cfg_scale != 1`` the conditional and null-label
        batches run together and their logits are combined by classifier-free guidance.
        ``generator`` (CPU) seeds one stream per sample: the same seed gives the same codes for
        any ``batch_size``, and :meth:`generate_naive` gives the same codes too. Runs without
        gradients and in eval mode (restored afterwards). Raises ``ValueError`` for bad ``n``,
        ``batch_size``, labels or sampling settings.
        """
        return self._generate(n, labels, temperature, top_k, top_p, cfg_scale, generator,
                              batch_size, progress, naive=False)

    def generate_naive(self, n: int, labels=None, temperature: float = 1.0,
                       top_k: int | None = None, top_p: float | None = None,
                       cfg_scale: float = 1.0, generator: torch.Generator | None = None,
                       batch_size: int | None = None) -> torch.Tensor:
        """Same as :meth:`generate` (same codes for the same generator) but recomputes the full
        network at every position (``H * W`` full passes); a reference for tests and benchmarks."""
        return self._generate(n, labels, temperature, top_k, top_p, cfg_scale, generator,
                              batch_size, False, naive=True)

    def _sample_batch(self, labels, uniforms, temperature, top_k, top_p, cfg_scale, progress,
                      naive: bool = False) -> torch.Tensor:
        m = len(uniforms)
        cond, guided = self._conditioning(labels, m, cfg_scale)
        H, W = self.grid_shape
        batch = 2 * m if guided else m
        device = self.embed.weight.device
        grid = torch.zeros(batch, H, W, dtype=torch.long, device=device)
        pick = functools.partial(self._pick, guided=guided, cfg_scale=cfg_scale,
                                 temperature=temperature, top_k=top_k, top_p=top_p)
        rows = progress_bar(range(H), desc="sample", enabled=progress and H > 1)
        if naive:
            for r in rows:
                for c in range(W):
                    logits = self._grid_logits(grid, cond)[:, :, r, c]  # (batch, K)
                    grid[:, r, c] = pick(logits, uniforms[:, r * W + c]).repeat(batch // m)
            return self.from_grid(grid[:m])
        p = self.config.kernel_size // 2
        biases = [layer.biases(cond) or (None, None) for layer in self.layers]
        widths = [self.config.embed_dim] + [self.config.hidden] * (len(self.layers) - 1)
        # vbuf[l][:, :, p + i, p:p + W] is layer l's vertical input at row i; the rest is the
        # convolution's zero padding. Row i is written once, when row i - 1 is complete.
        vbuf = [torch.zeros(batch, w, H + p, W + 2 * p, device=device) for w in widths]
        for r in rows:
            links = self._vertical_row(vbuf, grid, r, biases)
            # hbuf[l][:, :, p + j] is layer l's horizontal input at (r, j); p zeros on the left
            hbuf = [torch.zeros(batch, w, W + p, device=device) for w in widths]
            for c in range(W):
                logits = self._horizontal_step(hbuf, grid, r, c, links, biases)  # (batch, K)
                grid[:, r, c] = pick(logits, uniforms[:, r * W + c]).repeat(batch // m)
        return self.from_grid(grid[:m])

    def _vertical_row(self, vbuf: list[torch.Tensor], grid: torch.Tensor, r: int, biases: list
                      ) -> list[torch.Tensor]:
        """Run every vertical layer on row ``r`` only (rows above are in ``vbuf``); returns the
        per-layer links into the horizontal stack at row ``r``, each ``(B, 2*hidden, W)``."""
        p, W = self.config.kernel_size // 2, grid.shape[2]
        if r > 0:  # the vertical input is the embedded grid shifted down a row
            vbuf[0][:, :, p + r, p:p + W] = self.embed(grid[:, r - 1]).transpose(1, 2)  # (B, E, W)
        links = []
        for l, (layer, (bias, _)) in enumerate(zip(self.layers, biases)):
            v, link = layer.vertical(vbuf[l][:, :, r:r + p + 1],  # rows r - p .. r, padded
                                     vbuf[l][:, :, p + r:p + r + 1, p:p + W], bias)
            if l + 1 < len(self.layers):
                vbuf[l + 1][:, :, p + r, p:p + W] = v[:, :, 0]  # (B, hidden, W)
            links.append(link[:, :, 0])
        return links

    def _horizontal_step(self, hbuf: list[torch.Tensor], grid: torch.Tensor, r: int, c: int,
                         links: list[torch.Tensor], biases: list) -> torch.Tensor:
        """Run every horizontal layer and the head at ``(r, c)`` only (columns to the left are
        in ``hbuf``); returns the logits there, ``(B, K)``."""
        p = self.config.kernel_size // 2
        if c > 0:  # the horizontal input is the embedded row shifted right a column
            hbuf[0][:, :, p + c] = self.embed(grid[:, r, c - 1])  # (B, E)
        skips = 0
        for l, (layer, (_, bias)) in enumerate(zip(self.layers, biases)):
            bias = None if bias is None else bias[:, :, 0, 0]  # (B, 2*hidden)
            h, s = layer.horizontal_step(hbuf[l][:, :, c:c + p + 1],  # columns c - p .. c
                                         hbuf[l][:, :, p + c], links[l][:, :, c], bias)
            if l + 1 < len(self.layers):
                hbuf[l + 1][:, :, p + c] = h  # (B, hidden)
            skips = skips + s  # (B, hidden)
        return _pointwise(self.head_out, F.relu(_pointwise(self.head_hidden, F.relu(skips))))


def pixelcnn_debug(codebook_size: int = 16, code_shape: tuple = (4, 4), **overrides
                   ) -> PixelCNNPrior:
    """A tiny PixelCNN for tests and smoke runs."""
    return PixelCNNPrior.from_config(codebook_size=codebook_size, code_shape=code_shape,
                                     **{"embed_dim": 8, "hidden": 16, "num_layers": 3,
                                        **overrides})
