"""Text metrics: tokenizer reconstruction, code statistics and generated-sample quality.

Reconstruction (:func:`reconstruction_metrics`) compares the subword ids a tokenizer's decoder
predicts with the input ids over each string's tokens and its end-of-text: token accuracy and the
share of strings reproduced exactly, at a given number of quantizer levels. :func:`code_bits`
gives the nominal and the effective (code-usage entropy) bits per subword position.

Sample metrics work on words (lower-cased runs of letters/digits/apostrophes, and single
punctuation marks): :func:`vocab_rate`, :func:`distinct_n`, :func:`copy_rate`,
:func:`ngram_overlap`, and :class:`KneserNeyLM`, a word trigram model with interpolated
Kneser-Ney smoothing (discount 0.75, add-one unigram floor so unseen words get a probability)
whose perplexity scores samples next to held-out text. Every function returns plain floats and
raises ``ValueError`` for empty or non-string input.
"""
from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from typing import Iterable

import torch

from . import codebook_stats, exact_match, token_accuracy

_WORD = re.compile(r"\w+(?:'\w+)*|[^\w\s]")

__all__ = ["words", "reconstruction_metrics", "code_bits", "vocab_rate", "distinct_n",
           "copy_rate", "ngram_overlap", "KneserNeyLM"]


def _check(texts: object, who: str) -> list[str]:
    if isinstance(texts, str) or not isinstance(texts, (list, tuple)) or not texts:
        raise ValueError(f"{who} expects a non-empty list of strings, got "
                         f"{type(texts).__name__ if not isinstance(texts, (list, tuple)) else 'an empty list'}")
    if not all(isinstance(t, str) for t in texts):
        raise ValueError(f"{who} expects strings only")
    return list(texts)


def words(text: str) -> list[str]:
    """Lower-cased word and punctuation tokens of ``text``."""
    return _WORD.findall(text.lower())


# --------------------------------------------------------------------------- reconstruction
@torch.no_grad()
def reconstruction_metrics(tokenizer, texts: list[str], num_codebooks: int | None = None,
                           batch_size: int = 256) -> dict[str, float]:
    """Token accuracy and exact-match rate of ``tokenizer`` (a TextTokenizer) on ``texts``.

    Each string is tokenized (truncated to ``max_tokens`` like the tokenizer does), encoded with
    the first ``num_codebooks`` levels and decoded to ids; positions up to and including the
    end-of-text count. Returns ``{"token_accuracy", "exact_match"}`` in [0, 1].
    """
    texts = _check(texts, "reconstruction_metrics")
    device = next(tokenizer.parameters()).device
    hits = total = exact = 0
    for start in range(0, len(texts), batch_size):
        chunk = texts[start:start + batch_size]
        ids, lengths = tokenizer.tokenize(chunk)
        codes = tokenizer.encode(chunk, num_codebooks=num_codebooks).codes
        pred = tokenizer.decode_ids(codes).cpu()
        n = int(lengths.sum())
        hits += token_accuracy(pred, ids, lengths) * n
        total += n
        exact += exact_match(pred, ids, lengths) * len(chunk)
    return {"token_accuracy": hits / total, "exact_match": exact / len(texts)}


@torch.no_grad()
def code_bits(codes: torch.Tensor, lengths: torch.Tensor, codebook_size: int,
              shorten: int) -> dict[str, float]:
    """Bits per subword position of text codes ``(B, Q, L)`` (or ``(B, L)``) over the frames
    within ``lengths`` ``(B,)``: ``nominal`` = ``Q * log2(K) / shorten``; ``effective`` = the sum
    over levels of the empirical code entropy (bits) ``/ shorten``; plus per-level
    ``perplexity_level_<q>`` (exp of that level's entropy) and ``usage_level_<q>``."""
    if codes.dim() == 2:
        codes = codes[:, None]
    b, q, length = codes.shape
    if lengths.shape != (b,):
        raise ValueError(f"expected lengths ({b},), got {tuple(lengths.shape)}")
    valid = torch.arange(length, device=codes.device)[None] < lengths.to(codes.device)[:, None]
    out = {"nominal": q * math.log2(codebook_size) / shorten}
    entropy_bits = 0.0
    for level in range(q):
        stats = codebook_stats(codes[:, level][valid], codebook_size)
        entropy_bits += math.log2(stats["perplexity"])
        out[f"perplexity_level_{level}"] = stats["perplexity"]
        out[f"usage_level_{level}"] = stats["usage"]
    out["effective"] = entropy_bits / shorten
    return out


# --------------------------------------------------------------------------- samples
def vocab_rate(samples: list[str], train_texts: Iterable[str]) -> float:
    """Share of the samples' words that occur in the training text."""
    samples = _check(samples, "vocab_rate")
    known = {w for t in train_texts for w in words(t)}
    sample_words = [w for s in samples for w in words(s)]
    if not sample_words:
        return 0.0
    return sum(w in known for w in sample_words) / len(sample_words)


def distinct_n(texts: list[str], n: int) -> float:
    """Distinct word n-grams over all n-grams in ``texts`` (pooled); 0 when there are none."""
    texts = _check(texts, "distinct_n")
    grams = [tuple(ws[i:i + n]) for t in texts for ws in [words(t)] for i in range(len(ws) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def copy_rate(samples: list[str], train_texts: Iterable[str]) -> float:
    """Share of samples that equal a training string (after whitespace normalisation)."""
    samples = _check(samples, "copy_rate")
    seen = {" ".join(t.split()) for t in train_texts}
    return sum(" ".join(s.split()) in seen for s in samples) / len(samples)


def ngram_overlap(samples: list[str], train_texts: Iterable[str], n: int = 8) -> float:
    """Share of the samples' word n-grams (default 8-grams) found in the training text;
    0 when the samples have no n-gram."""
    samples = _check(samples, "ngram_overlap")
    train = {tuple(ws[i:i + n]) for t in train_texts for ws in [words(t)]
             for i in range(len(ws) - n + 1)}
    grams = [tuple(ws[i:i + n]) for s in samples for ws in [words(s)] for i in range(len(ws) - n + 1)]
    return sum(g in train for g in grams) / len(grams) if grams else 0.0


class KneserNeyLM:
    """Word trigram language model with interpolated Kneser-Ney smoothing.

    ``KneserNeyLM(train_texts)`` fits on the word tokens of each string (padded with two
    ``<s>`` and one ``</s>``); :meth:`perplexity` scores other strings (every word and the
    ``</s>`` are predicted). Unseen words get the add-one unigram floor.
    """

    def __init__(self, train_texts: Iterable[str], discount: float = 0.75):
        texts = _check(list(train_texts), "KneserNeyLM")
        self.d = discount
        self.tri: Counter = Counter()
        for t in texts:
            ws = ["<s>", "<s>", *words(t), "</s>"]
            self.tri.update(zip(ws, ws[1:], ws[2:]))
        self.ctx2: Counter = Counter()              # c(u v .)
        self.follow2: Counter = Counter()           # N1+(u v .)
        self.cont2: Counter = Counter()             # N1+(. v w)
        for (u, v, w), c in self.tri.items():
            self.ctx2[(u, v)] += c
            self.follow2[(u, v)] += 1
            self.cont2[(v, w)] += 1
        self.cont2_ctx: Counter = Counter()         # N1+(. v .)
        self.follow1: Counter = Counter()           # N1+ distinct w after v in cont2
        self.cont1: Counter = Counter()             # N1+(. w)
        for (v, w), c in self.cont2.items():
            self.cont2_ctx[v] += c
            self.follow1[v] += 1
            self.cont1[w] += 1
        self.cont1_total = sum(self.cont1.values())
        self.vocab = len(self.cont1) + 1            # + unknown

    def _p1(self, w: str) -> float:
        return (self.cont1.get(w, 0) + 1) / (self.cont1_total + self.vocab)

    def _p2(self, v: str, w: str) -> float:
        n = self.cont2_ctx.get(v, 0)
        if n == 0:
            return self._p1(w)
        return (max(self.cont2.get((v, w), 0) - self.d, 0) / n
                + self.d * self.follow1[v] / n * self._p1(w))

    def prob(self, u: str, v: str, w: str) -> float:
        """``P(w | u v)``."""
        n = self.ctx2.get((u, v), 0)
        if n == 0:
            return self._p2(v, w)
        return (max(self.tri.get((u, v, w), 0) - self.d, 0) / n
                + self.d * self.follow2[(u, v)] / n * self._p2(v, w))

    def perplexity(self, texts: list[str]) -> float:
        """``exp`` of the mean negative log-probability per predicted word (and ``</s>``)."""
        texts = _check(texts, "KneserNeyLM.perplexity")
        nll, count = 0.0, 0
        for t in texts:
            ws = ["<s>", "<s>", *words(t), "</s>"]
            for u, v, w in zip(ws, ws[1:], ws[2:]):
                nll -= math.log(self.prob(u, v, w))
                count += 1
        return math.exp(nll / count)
