"""Text tokenizer: a VQ-VAE over a sequence of subword embeddings.

A string becomes subword ids (:mod:`vqgen.tokenizers.vocab`) plus one end-of-text id, padded to
``frames * shorten`` tokens. The encoder embeds them (learned embeddings over a SentencePiece
vocabulary, or the frozen hidden states of a local ``transformers`` encoder), mixes them with
Transformer layers, folds every ``shorten`` tokens into one frame and quantizes the frames with a
:class:`~vqgen.tokenizers.quantizers.ResidualVQ` (quantizer dropout: any number of leading levels
decodes, so one model gives a curve of bitrates). The decoder unfolds the frames and predicts the
ids, the end-of-text id and padding after it; ``decode`` cuts each string at its first
end-of-text, so codes drawn by a prior decode without lengths.

Bitrate: ``q`` levels of ``K`` entries cost ``q * log2(K) / shorten`` bits per subword position
(:meth:`TextTokenizer.bits_per_token`).

Long inputs are truncated to ``max_tokens`` subwords with a warning (not chunked).
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from .base import Tokenizer, TokenizerOutput
from .quantizers import ResidualVQ
from .vocab import PretrainedVocab, SentencePieceVocab, _check_texts

PAD_WEIGHT = 0.1  # loss weight of padding positions (after end-of-text) relative to real ones


@dataclass
class TextCodes:
    """Codes of a batch of strings.

    codes:   LongTensor ``(B, L)`` (one level) or ``(B, Q, L)``; frames at or past ``lengths[b]``
             are padding (the codes of padding tokens).
    lengths: LongTensor ``(B,)``, code frames that hold the string and its end-of-text.
    """

    codes: Tensor
    lengths: Tensor

    def to(self, device: str | torch.device) -> "TextCodes":
        return TextCodes(self.codes.to(device), self.lengths.to(device))

    def __len__(self) -> int:
        return self.codes.shape[0]


@dataclass
class TextTokenizerConfig:
    """Configuration of :class:`TextTokenizer` (invalid values raise ``ValueError``).

    ``vocab_size`` is the subword vocabulary (SentencePiece pieces, or the embedder tokenizer's
    size). ``embedder`` is the local path the frozen encoder came from (informational once built;
    its architecture is kept in ``embedder_config`` and its weights in the state dict).
    """

    vocab_size: int = 1024
    max_tokens: int = 64            # subwords per string (longer strings are truncated)
    shorten: int = 4                # tokens per code frame
    dim: int = 128                  # token-rate width (embeddings, output head)
    frame_dim: int = 256            # frame-rate width
    heads: int = 4
    token_layers: int = 0           # Transformer layers at the token rate (encoder and decoder)
    frame_layers: int = 2           # Transformer layers at the frame rate (encoder and decoder)
    dropout: float = 0.0
    latent_dim: int = 64
    codebook_size: int = 256
    num_codebooks: int = 4
    quantizer_dropout: float = 0.5
    codebook_dim: int | None = None
    vq_beta: float = 0.25
    vq_decay: float = 0.95
    vq_kmeans_init: bool = True
    vq_kmeans_iters: int = 10
    vq_dead_code_threshold: float = 1.0
    vq_cosine: bool = False
    embedder: str | None = None
    embedder_config: dict | None = field(default=None)

    def __post_init__(self) -> None:
        def need(ok: bool, what: str, got: Any) -> None:
            if not ok:
                raise ValueError(f"TextTokenizerConfig: expected {what}, got {got!r}")

        def pos_int(v: Any) -> bool:
            return isinstance(v, int) and not isinstance(v, bool) and v > 0

        for name in ("vocab_size", "max_tokens", "shorten", "dim", "frame_dim", "heads",
                     "latent_dim", "codebook_size", "num_codebooks"):
            need(pos_int(getattr(self, name)), f"{name} a positive int", getattr(self, name))
        for name in ("token_layers", "frame_layers"):
            v = getattr(self, name)
            need(isinstance(v, int) and v >= 0, f"{name} an int >= 0", v)
        need(self.dim % self.heads == 0 and self.frame_dim % self.heads == 0,
             f"dim and frame_dim divisible by heads={self.heads}", (self.dim, self.frame_dim))
        need(0.0 <= self.dropout < 1.0, "dropout in [0, 1)", self.dropout)
        need(0.0 <= self.quantizer_dropout <= 1.0, "quantizer_dropout in [0, 1]",
             self.quantizer_dropout)
        need(self.vocab_size >= 3, "vocab_size >= 3", self.vocab_size)
        need((self.embedder is None) == (self.embedder_config is None),
             "embedder and embedder_config both set or both None",
             (self.embedder, self.embedder_config is not None))

    @property
    def max_frames(self) -> int:
        """Code frames of the longest string: ``ceil((max_tokens + 1) / shorten)``."""
        return -(-(self.max_tokens + 1) // self.shorten)


# --------------------------------------------------------------------------- networks
def _stack(width: int, heads: int, layers: int, dropout: float) -> nn.Module:
    if layers == 0:
        return nn.Identity()
    layer = nn.TransformerEncoderLayer(width, heads, 4 * width, dropout, activation="gelu",
                                       batch_first=True, norm_first=True)
    return nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)


class _Embedder(nn.Module):
    """Frozen hidden states of a ``transformers`` encoder: ids ``(B, T)`` -> ``(B, T, hidden)``."""

    def __init__(self, hf_config: dict):
        super().__init__()
        from transformers import AutoConfig, AutoModel
        cfg = dict(hf_config)
        self.model = AutoModel.from_config(AutoConfig.for_model(cfg.pop("model_type"), **cfg))
        self.model.requires_grad_(False)
        self.model.eval()
        self.hidden_size = int(self.model.config.hidden_size)

    def train(self, mode: bool = True) -> "_Embedder":
        return super().train(False)  # frozen: dropout stays off

    def forward(self, ids: Tensor, mask: Tensor) -> Tensor:
        with torch.no_grad():
            return self.model(input_ids=ids, attention_mask=mask.long()).last_hidden_state


# --------------------------------------------------------------------------- tokenizer
class TextTokenizer(Tokenizer):
    """VQ-VAE text tokenizer (see module doc).

    Build with :meth:`from_corpus` (trains the SentencePiece vocabulary, or reads a local
    pretrained encoder with ``embedder="path"``); save/load with ``save_pretrained`` /
    ``from_pretrained`` (the vocabulary is stored in the directory).

    - ``encode(texts, num_codebooks=None, frames=None) -> TextCodes``: codes ``(B, L)`` for one
      level, else ``(B, Q, L)``; ``L`` = the longest string's frames, or ``frames``.
    - ``decode(codes, lengths=None) -> list[str]``: any number of leading levels.
    - ``tokenize(texts) -> (ids (B, T), lengths (B,))`` and ``forward(ids) -> TokenizerOutput``
      for training (``recon`` is the logits ``(B, T, vocab_size)``).

    Errors (``ValueError``): a non-list, an empty list, a non-string or an empty string; codes of
    the wrong rank, non-integer or out of ``[0, codebook_size)``; more levels than the model has.
    """

    config_class = TextTokenizerConfig

    def __init__(self, config: TextTokenizerConfig):
        super().__init__(config)
        c = config
        self.vocab: SentencePieceVocab | PretrainedVocab | None = None
        if c.embedder_config is not None:
            self.embedder = _Embedder(c.embedder_config)
            self.embed_in = nn.Linear(self.embedder.hidden_size, c.dim)
        else:
            self.embedder = None
            self.embed_in = nn.Embedding(c.vocab_size, c.dim)
        t = c.max_frames * c.shorten
        self.pos_tokens = nn.Parameter(torch.randn(t, c.dim) * 0.02)
        self.pos_frames = nn.Parameter(torch.randn(c.max_frames, c.frame_dim) * 0.02)
        self.enc_tokens = _stack(c.dim, c.heads, c.token_layers, c.dropout)
        self.down = nn.Linear(c.shorten * c.dim, c.frame_dim)
        self.enc_frames = _stack(c.frame_dim, c.heads, c.frame_layers, c.dropout)
        self.to_latent = nn.Sequential(nn.LayerNorm(c.frame_dim), nn.Linear(c.frame_dim, c.latent_dim))
        self.quantizer = ResidualVQ(
            c.latent_dim, c.codebook_size, c.num_codebooks, quantizer_dropout=c.quantizer_dropout,
            codebook_dim=c.codebook_dim, beta=c.vq_beta, decay=c.vq_decay,
            kmeans_init=c.vq_kmeans_init, kmeans_iters=c.vq_kmeans_iters,
            dead_code_threshold=c.vq_dead_code_threshold, cosine=c.vq_cosine, check_finite=False)
        self.from_latent = nn.Linear(c.latent_dim, c.frame_dim)
        self.dec_frames = _stack(c.frame_dim, c.heads, c.frame_layers, c.dropout)
        self.up = nn.Linear(c.frame_dim, c.shorten * c.dim)
        self.dec_tokens = _stack(c.dim, c.heads, c.token_layers, c.dropout)
        self.head = nn.Sequential(nn.LayerNorm(c.dim), nn.Linear(c.dim, c.vocab_size))

    # ----------------------------------------------------------------------- construction
    @classmethod
    def from_corpus(cls, texts: list[str], vocab_size: int | None = 1024, embedder: str | None = None,
                    **config: Any) -> "TextTokenizer":
        """Train the SentencePiece vocabulary on ``texts`` (``vocab_size`` >= 300 pieces), then
        build the model from ``config`` (:class:`TextTokenizerConfig` fields).

        With ``embedder="path/to/model"`` (a local ``transformers`` encoder + tokenizer) no
        vocabulary is trained: the model reads the encoder's frozen hidden states and predicts its
        token ids; ``vocab_size`` must then be None or that tokenizer's size. Raises
        ``ValueError`` for bad texts, sizes or config keys, ``FileNotFoundError`` for a missing
        embedder directory.
        """
        texts = _check_texts(texts, "TextTokenizer.from_corpus")
        if embedder is None:
            vocab = SentencePieceVocab.train(texts, vocab_size)
            model = cls.from_config(vocab_size=vocab.size, **config)
            model.vocab = vocab
            return model
        from transformers import AutoConfig, AutoModel
        vocab = PretrainedVocab(embedder)
        if vocab_size is not None and vocab_size != vocab.size:
            raise ValueError(f"vocab_size comes from the embedder's tokenizer ({vocab.size}) "
                             f"with embedder=...; pass None, got {vocab_size}")
        hf_config = AutoConfig.from_pretrained(str(embedder), local_files_only=True).to_dict()
        model = cls.from_config(vocab_size=vocab.size, embedder=str(embedder),
                                embedder_config=hf_config, **config)
        pretrained = AutoModel.from_pretrained(str(embedder), local_files_only=True)
        model.embedder.model.load_state_dict(pretrained.state_dict(), strict=True)
        model.vocab = vocab
        return model

    def extra_files(self) -> dict[str, bytes]:
        if self.vocab is None:
            raise ValueError("this TextTokenizer has no vocabulary; build it with from_corpus")
        return self.vocab.files()

    def load_extra_files(self, directory: Path) -> None:
        loader = PretrainedVocab if self.config.embedder_config is not None else SentencePieceVocab
        self.vocab = loader.load(Path(directory))
        if self.vocab.size != self.config.vocab_size:
            raise ValueError(f"{directory}: vocabulary has {self.vocab.size} entries, the config "
                             f"says {self.config.vocab_size}")

    # ----------------------------------------------------------------------- metadata
    @property
    def shorten(self) -> int:
        return self.config.shorten

    @property
    def max_frames(self) -> int:
        return self.config.max_frames

    @property
    def eos_id(self) -> int:
        return self._vocab().eos_id

    @property
    def pad_id(self) -> int:
        return self._vocab().pad_id

    def bits_per_token(self, num_codebooks: int | None = None) -> float:
        """Nominal bits per subword position with the first ``num_codebooks`` levels."""
        q = self._levels(num_codebooks)
        return q * math.log2(self.codebook_size) / self.shorten

    def code_shape(self, *input_shape: int) -> tuple[int, ...]:
        """Codes of one string padded to ``max_frames``: ``(L,)`` or ``(Q, L)``."""
        frames = input_shape[0] if input_shape else self.max_frames
        return (frames,) if self.num_codebooks == 1 else (self.num_codebooks, frames)

    def _vocab(self):
        if self.vocab is None:
            raise ValueError("this TextTokenizer has no vocabulary; build it with from_corpus "
                             "or load it with from_pretrained")
        return self.vocab

    def _levels(self, num_codebooks: int | None) -> int:
        q = self.num_codebooks
        if num_codebooks is None:
            return q
        if not isinstance(num_codebooks, int) or not 1 <= num_codebooks <= q:
            raise ValueError(f"num_codebooks must be an int in [1, {q}], got {num_codebooks!r}")
        return num_codebooks

    # ----------------------------------------------------------------------- text <-> ids
    def tokenize(self, texts: list[str], frames: int | None = None) -> tuple[Tensor, Tensor]:
        """Strings -> ``ids`` LongTensor ``(B, frames * shorten)`` (subwords, end-of-text, then
        padding) and ``lengths`` ``(B,)`` (subwords + 1). ``frames`` defaults to the longest
        string's. Strings over ``max_tokens`` subwords are truncated with a warning."""
        texts = _check_texts(texts, "TextTokenizer")
        vocab, cap = self._vocab(), self.config.max_tokens
        rows = vocab.encode(texts)
        long = sum(len(r) > cap for r in rows)
        if long:
            warnings.warn(f"{long} of {len(rows)} string(s) are longer than max_tokens={cap} "
                          f"subwords and were truncated", stacklevel=2)
        rows = [r[:cap] + [vocab.eos_id] for r in rows]
        need = -(-max(len(r) for r in rows) // self.shorten)
        frames = need if frames is None else frames
        if not isinstance(frames, int) or not need <= frames <= self.max_frames:
            raise ValueError(f"frames must be an int in [{need}, {self.max_frames}] for these "
                             f"strings, got {frames!r}")
        ids = torch.full((len(rows), frames * self.shorten), vocab.pad_id, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, :len(r)] = torch.tensor(r, dtype=torch.long)
        return ids, torch.tensor([len(r) for r in rows], dtype=torch.long)

    def ids_to_texts(self, ids: Tensor, lengths: Tensor | None = None) -> list[str]:
        """Predicted ids ``(B, T)`` -> strings, each cut at its first end-of-text (and at
        ``lengths[b]`` tokens when given)."""
        vocab = self._vocab()
        out = []
        for b, row in enumerate(ids.tolist()):
            if lengths is not None:
                row = row[:int(lengths[b])]
            if vocab.eos_id in row:
                row = row[:row.index(vocab.eos_id)]
            out.append(row)
        return vocab.decode(out)

    # ----------------------------------------------------------------------- networks
    def _check_ids(self, ids: Tensor) -> Tensor:
        if not isinstance(ids, Tensor) or ids.dim() != 2 or ids.dtype.is_floating_point:
            got = tuple(ids.shape) if isinstance(ids, Tensor) else type(ids).__name__
            raise ValueError(f"expected token ids LongTensor (B, T), got {got}")
        t, s = ids.shape[1], self.shorten
        if t == 0 or t % s or t > self.max_frames * s or ids.shape[0] == 0:
            raise ValueError(f"expected (B, T) ids with B >= 1 and T a multiple of shorten={s} "
                             f"up to {self.max_frames * s}, got {tuple(ids.shape)}")
        if int(ids.min()) < 0 or int(ids.max()) >= self.config.vocab_size:
            raise ValueError(f"token ids out of range [0, {self.config.vocab_size})")
        return ids.long()

    def _latents(self, ids: Tensor) -> Tensor:
        """ids ``(B, T)`` -> latents ``(B, L, latent_dim)``, ``L = T / shorten``."""
        t = ids.shape[1]
        if self.embedder is not None:
            h = self.embed_in(self.embedder(ids, ids != self.pad_id))
        else:
            h = self.embed_in(ids)                                            # (B, T, d)
        h = self.enc_tokens(h + self.pos_tokens[:t])
        f = self.down(rearrange(h, "b (l s) d -> b l (s d)", s=self.shorten))  # (B, L, D)
        f = self.enc_frames(f + self.pos_frames[:f.shape[1]])
        return self.to_latent(f)

    def _logits(self, zq: Tensor) -> Tensor:
        """Quantized latents ``(B, L, latent_dim)`` -> logits ``(B, L * shorten, vocab_size)``."""
        f = self.from_latent(zq)
        f = self.dec_frames(f + self.pos_frames[:f.shape[1]])
        h = rearrange(self.up(f), "b l (s d) -> b (l s) d", s=self.shorten)
        h = self.dec_tokens(h + self.pos_tokens[:h.shape[1]])
        return self.head(h)

    def _codes_to_latents(self, codes: Tensor) -> Tensor:
        """Codes ``(B, L)`` / ``(B, q, L)`` with ``q <= Q`` leading levels -> ``(B, L, latent)``."""
        q_all = self.num_codebooks
        if not isinstance(codes, Tensor):
            raise ValueError(f"expected codes as a LongTensor, got {type(codes).__name__}")
        codes = self.check_codes(codes, ndim=codes.dim() if codes.dim() in (2, 3) else 3)
        if codes.dim() == 2:
            codes = codes[:, None]                                        # (B, 1, L)
        b, q, length = codes.shape
        if not 1 <= q <= q_all or b == 0 or not 1 <= length <= self.max_frames:
            raise ValueError(f"expected codes (B, L) or (B, q, L) with q <= {q_all} levels and "
                             f"1 <= L <= {self.max_frames}, got {tuple(codes.shape)}")
        full = torch.zeros(b, q_all, length, dtype=torch.long, device=codes.device)
        full[:, :q] = codes
        return self.quantizer.decode(full.permute(0, 2, 1), n_quantizers=q)  # (B, L, latent)

    # ----------------------------------------------------------------------- API
    @torch.no_grad()
    def encode(self, texts: list[str], num_codebooks: int | None = None,
               frames: int | None = None) -> TextCodes:
        """Strings -> :class:`TextCodes` (``codes`` ``(B, L)`` or ``(B, q, L)`` with the first
        ``num_codebooks`` levels, default all). Never changes the codebook."""
        q = self._levels(num_codebooks)
        ids, lengths = self.tokenize(texts, frames)
        device = self.pos_tokens.device
        codes = self.quantizer.encode(self._latents(ids.to(device)))        # (B, L, Q)
        codes = codes[..., :q].permute(0, 2, 1).contiguous()                # (B, q, L)
        frames_used = (lengths + self.shorten - 1) // self.shorten
        return TextCodes(codes[:, 0] if self.num_codebooks == 1 else codes, frames_used.to(device))

    @torch.no_grad()
    def decode_ids(self, codes: Tensor) -> Tensor:
        """Codes -> predicted ids ``(B, L * shorten)`` (argmax of the decoder)."""
        return self._logits(self._codes_to_latents(codes)).argmax(-1)

    @torch.no_grad()
    def decode(self, codes: Tensor | TextCodes, lengths: Tensor | None = None) -> list[str]:
        """Codes ``(B, L)`` / ``(B, q, L)`` (or a :class:`TextCodes`) -> ``B`` strings.

        Each string ends at the first predicted end-of-text, or after ``lengths[b]`` frames when
        ``lengths`` is given. Raises ``ValueError`` for codes of a bad rank, dtype or range.
        """
        if isinstance(codes, TextCodes):
            codes, lengths = codes.codes, codes.lengths if lengths is None else lengths
        ids = self.decode_ids(codes)
        token_lengths = None if lengths is None else torch.as_tensor(lengths).cpu() * self.shorten
        return self.ids_to_texts(ids.cpu(), token_lengths)

    def forward(self, ids: Tensor, n_quantizers: int | None = None) -> TokenizerOutput:
        """Training entry point: ids ``(B, T)`` from :meth:`tokenize` -> :class:`TokenizerOutput`
        with ``recon`` logits ``(B, T, vocab_size)``, ``codes`` ``(B, Q, L)``, ``loss`` =
        cross-entropy (padding weighted by 0.1) + quantizer loss, and metrics ``recon_loss``,
        ``vq_loss``, ``token_accuracy`` (non-padding positions), ``perplexity``, ``usage``,
        ``dead_codes``, ``n_quantizers``."""
        ids = self._check_ids(ids)
        q = self.quantizer(self._latents(ids), n_quantizers)
        logits = self._logits(q.quantized)                                 # (B, T, V)
        ce = F.cross_entropy(logits.float().flatten(0, 1), ids.flatten(), reduction="none")
        real = (ids != self.pad_id).flatten().float()
        if self.pad_id == self.eos_id:  # no separate pad id: every position counts fully
            real = torch.ones_like(real)
        weight = real + PAD_WEIGHT * (1 - real)
        recon_loss = (ce * weight).sum() / weight.sum()
        with torch.no_grad():
            hit = (logits.argmax(-1).flatten() == ids.flatten()).float()
            acc = (hit * real).sum() / real.sum().clamp(min=1)
        metrics = {"recon_loss": recon_loss.detach(), "vq_loss": q.loss.detach(),
                   "token_accuracy": acc,
                   **{k: q.metrics[k].detach() for k in ("perplexity", "usage", "dead_codes",
                                                         "n_quantizers")}}
        return TokenizerOutput(recon=logits, codes=q.codes.permute(0, 2, 1),
                               loss=recon_loss + q.loss.float(), metrics=metrics)


# --------------------------------------------------------------------------- presets
def text_tokenizer_debug(texts: list[str], **overrides: Any) -> TextTokenizer:
    """Tiny tokenizer for tests: 400-piece vocabulary, width 32, 2 levels of 16 codes."""
    values = dict(max_tokens=32, shorten=2, dim=32, frame_dim=32, heads=2, token_layers=1,
                  frame_layers=1, latent_dim=16, codebook_size=16, num_codebooks=2,
                  vq_kmeans_iters=2)
    vocab_size = overrides.pop("vocab_size", 400)
    return TextTokenizer.from_corpus(texts, vocab_size, **{**values, **overrides})
