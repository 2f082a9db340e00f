"""What each ``metrics.json`` key means: unit, a one-line explanation and what "good" is.

The report (:mod:`vqgen.report`) shows these beside every metric so a reader need not know the
code. Keys follow ``/work/shared/DESIGN.md`` ("Metrics"): images, speech/audio, text, plus
bookkeeping. :func:`describe_metric` also answers for keys not listed here, from their shape
(``test_si_sdr_<kbps>kbps``, ``*_seconds``, ``*_accuracy``, ...), and otherwise says that the key
is not documented. Modalities add their keys to :data:`METRICS` here, in one place.
"""
from __future__ import annotations

import re
from typing import NamedTuple

__all__ = ["MetricInfo", "METRICS", "describe_metric", "overfitting_warning"]


class MetricInfo(NamedTuple):
    """``unit`` (short, may be ""), ``meaning`` (one sentence), ``good`` (what to aim for, or
    "" where there is no reference)."""

    unit: str
    meaning: str
    good: str = ""


_FD_NOTE = ("a Fréchet distance on features of this project's own small classifier, "
            "not standard FID (Inception features): compare it only between runs on the same data")

METRICS: dict[str, MetricInfo] = {
    # images: tokenizer
    "test_psnr": MetricInfo("dB", "peak signal-to-noise ratio of held-out reconstructions",
                            "higher is better; ~24 dB is recognisable, >= 27 dB sharp on 28x28"),
    "test_ssim": MetricInfo("0-1", "structural similarity of held-out reconstructions",
                            "higher is better; 1 = identical"),
    "perplexity": MetricInfo("codes", "effective number of codebook entries used on held-out "
                             "data (exp of the code entropy)",
                             "higher is better; at most the codebook size"),
    "usage": MetricInfo("fraction", "share of codebook entries used at least once on held-out data",
                        "1.0 = no dead codes"),
    # priors
    "prior_bits_per_code": MetricInfo("bits/code", "prior's held-out negative log-likelihood "
                                      "per code", "lower is better; log2(codebook size) = "
                                      "uniform guessing"),
    "prior_train_bits_per_code": MetricInfo("bits/code", "the same on training codes",
                                            "far below the held-out value = overfitting"),
    # samples (images, audio)
    "sample_fid": MetricInfo("distance", f"generated vs real images: {_FD_NOTE}",
                             "lower is better; 0 = same feature statistics"),
    "sample_class_accuracy": MetricInfo("fraction", "share of class-conditional samples that "
                                        "the classifier assigns to the requested class",
                                        "higher is better; chance = 1/classes, ceiling = "
                                        "classifier_test_accuracy"),
    "recon_class_accuracy": MetricInfo("fraction", "the classifier's accuracy on codec "
                                       "reconstructions of held-out audio (audio recipes)",
                                       "the ceiling for sample_class_accuracy with this tokenizer"),
    "classifier_test_accuracy": MetricInfo("fraction", "accuracy of the scoring classifier on "
                                           "real held-out data", "the ceiling for "
                                           "sample_class_accuracy"),
    # speech / audio
    "test_si_sdr": MetricInfo("dB", "scale-invariant signal-to-distortion ratio of held-out "
                              "reconstructions", "higher is better; > 5 dB is intelligible"),
    "test_mel_distance": MetricInfo("L1 log-mel", "mean absolute log-mel difference between "
                                    "held-out audio and its reconstruction", "lower is better"),
    "test_stft_distance": MetricInfo("distance", "multi-resolution STFT distance (spectral "
                                     "convergence + log magnitude)", "lower is better"),
    "bitrate_kbps": MetricInfo("kbit/s", "bitrate of the codes at all codebook levels",
                               "lower = more compression"),
    "test_stoi": MetricInfo("0-1", "short-time objective intelligibility of reconstructed "
                            "speech", "higher is better; > 0.75 is good"),
    "test_level_db": MetricInfo("dB", "loudness of held-out reconstructions against the input "
                                "(RMS ratio: SI-SDR and STOI do not see it, a listener does)",
                                "near 0; below -3 dB sounds quieter"),
    "perplexity_min_level": MetricInfo("codes", "the smallest per-level code perplexity over the "
                                       "residual levels", "higher is better; at most the codebook size"),
    "prior_tokenizer_bitrate_kbps": MetricInfo("kbit/s", "bitrate of the tokenizer whose codes the "
                                               "prior models (a phase-free codec when the run has one)"),
    "prior_tokenizer_mel_distance": MetricInfo("L1 log-mel", "held-out log-mel distance of that "
                                               "tokenizer's reconstructions", "lower is better"),
    "sample_mel_fd": MetricInfo("distance", "Fréchet distance of log-mel statistics, generated "
                                "vs real audio", "lower is better; compare with train_test_mel_fd"),
    "train_test_mel_fd": MetricInfo("distance", "the same distance between real training and "
                                    "real test audio", "the yardstick for sample_mel_fd"),
    # music
    "sample_key_consistency": MetricInfo("fraction", "share of the samples' loud frames whose 4 "
                                         "strongest pitch classes fit one major/minor key "
                                         "(chroma, 60 Hz-4 kHz; silence scores 0)",
                                         "close to test_key_consistency; random pitches "
                                         "score ~0.5, chorales ~0.93"),
    "recon_key_consistency": MetricInfo("fraction", "the same share on codec reconstructions "
                                        "of the held-out music", "what samples could reach with "
                                        "this tokenizer"),
    "test_key_consistency": MetricInfo("fraction", "the same share on real held-out music (unseen "
                                       "pieces)", "the yardstick for sample_key_consistency"),
    # text
    "test_token_accuracy": MetricInfo("fraction", "share of held-out tokens reconstructed "
                                      "exactly", "higher is better; 1 = lossless"),
    "test_exact_match": MetricInfo("fraction", "share of held-out texts reconstructed exactly",
                                   "higher is better"),
    "train_token_accuracy": MetricInfo("fraction", "token accuracy on training text",
                                       "far above the test value = memorisation"),
    "train_exact_match": MetricInfo("fraction", "share of training texts reconstructed exactly",
                                    "far above the test value = memorisation"),
    "bits_per_token": MetricInfo("bits/token", "code bits per subword token at the headline "
                                 "levels (levels x log2 codebook size / frames per token)",
                                 "lower = more compression"),
    "bits_per_token_effective": MetricInfo("bits/token", "the same from the held-out codes' "
                                           "empirical entropy (what an ideal entropy coder "
                                           "would spend)", "at most bits_per_token"),
    "bits_per_char": MetricInfo("bits/char", "code bits per character of held-out text",
                                "lower = more compression"),
    "vocab_size": MetricInfo("pieces", "size of the subword vocabulary"),
    "tokenizer_parameters": MetricInfo("parameters", "trainable parameters of the tokenizer"),
    "sample_ngram8_overlap": MetricInfo("fraction", "share of the samples' word 8-grams found "
                                        "in the training text", "lower = less copying"),
    "sample_distinct_1": MetricInfo("fraction", "distinct words / all words in the samples",
                                    "compare with heldout_distinct_1"),
    "heldout_distinct_1": MetricInfo("fraction", "the same on real held-out text",
                                     "the yardstick for sample_distinct_1"),
    "heldout_distinct_2": MetricInfo("fraction", "distinct word bigrams / all bigrams in real "
                                     "held-out text", "the yardstick for sample_distinct_2"),
    "sample_lm_perplexity": MetricInfo("perplexity", "perplexity of the samples under a word "
                                       "trigram model (Kneser-Ney) fitted on the training text",
                                       "compare with heldout_lm_perplexity"),
    "heldout_lm_perplexity": MetricInfo("perplexity", "the same for real held-out text",
                                        "the yardstick for sample_lm_perplexity"),
    "sample_empty_rate": MetricInfo("fraction", "share of samples that decode to empty text",
                                    "0 is best"),
    "sample_vocab_rate": MetricInfo("fraction", "share of generated words found in the corpus "
                                    "vocabulary", "higher is better"),
    "sample_copy_rate": MetricInfo("fraction", "share of generated texts copied verbatim from "
                                   "training", "lower is better (0 = no copying)"),
    "sample_distinct_2": MetricInfo("fraction", "distinct word bigrams / all bigrams in the "
                                    "samples", "higher = more diverse"),
    # bookkeeping
    "device": MetricInfo("", "where the run trained"),
    "threads": MetricInfo("threads", "CPU threads torch used"),
    "train_seconds": MetricInfo("s", "wall time of the training loops (tokenizer + prior)"),
    "total_seconds": MetricInfo("s", "wall time of the whole recipe, data to report"),
}

# (pattern, info) for families of keys; the first match wins.
_PATTERNS: list[tuple[re.Pattern, MetricInfo]] = [
    (re.compile(r"(perplexity|usage)_level_?(\d+)"),
     MetricInfo("", "{0} of residual level {1}'s codes on held-out data (see perplexity, usage)")),
    (re.compile(r".*_seconds"), MetricInfo("s", "wall time")),
    (re.compile(r".*_accuracy"), MetricInfo("fraction", "share of correct predictions",
                                            "higher is better")),
    (re.compile(r".*_psnr"), METRICS["test_psnr"]),
    (re.compile(r".*_ssim"), METRICS["test_ssim"]),
    (re.compile(r".*bits_per_code"), METRICS["prior_bits_per_code"]),
    (re.compile(r".*(fid|_fd)"), MetricInfo("distance", "a Fréchet distance between feature "
                                            "statistics", "lower is better")),
]


_CODEC = re.compile(r"codec_(.+)")                                  # the complex codec of a hybrid run
_UNSEEN = re.compile(r"test_unseen_([a-z]+)_(.+)")                  # classes held out of training
_BITRATE = re.compile(r"(.+)_(\d+(?:[.p]\d+)?)kbps")                # levels that fit a bitrate
_TOKEN_BITS = re.compile(r"(.+)_(\d+(?:\.\d+)?)bpt")                 # text: levels of N bits/token


def _qualified(inner: str, words: str) -> MetricInfo:
    """``inner``'s info with ``words`` added to its meaning (undocumented stays undocumented)."""
    base = describe_metric(inner)
    return base if base.meaning.startswith("not documented") else base._replace(meaning=f"{base.meaning}, {words}")


def describe_metric(key: str) -> MetricInfo:
    """The :class:`MetricInfo` of ``key``: from :data:`METRICS`, else from a known key family
    (audio keys compose: ``codec_`` + ``test_unseen_<label>_`` + metric + ``_<kbps>kbps``;
    text: metric + ``_<bits>bpt``),
    else ``MetricInfo("", "not documented")``. Never raises."""
    key = str(key)
    if key in METRICS:
        return METRICS[key]
    if match := _CODEC.fullmatch(key):
        return _qualified(match[1], "of the run's complex codec alone (the plain keys are the hybrid codec's)")
    if match := _UNSEEN.fullmatch(key):
        return _qualified("test_" + match[2], f"on held-out clips of {match[1]}s never seen in training")
    if match := _BITRATE.fullmatch(key):
        return _qualified(match[1], f"using only the codebook levels that fit {match[2].replace('p', '.')} kbit/s")
    if match := _TOKEN_BITS.fullmatch(key):
        return _qualified(match[1], f"with the code levels that make {match[2]} bits per token")
    for pattern, info in _PATTERNS:
        match = pattern.fullmatch(key)
        if match:
            return info._replace(meaning=info.meaning.format(*match.groups()))
    return MetricInfo("", "not documented in vqgen.metrics.glossary")


def overfitting_warning(train_loss: float, heldout_loss: float, what: str = "prior",
                        unit: str = "bits/code", ratio: float = 1.3,
                        min_gap: float = 0.2) -> str | None:
    """A one-line warning when ``heldout_loss`` is far above ``train_loss`` (same unit, e.g.
    both bits per code measured in eval mode), else None.

    "Far" means ``heldout > ratio * train`` and ``heldout - train > min_gap``: a model that
    memorised a small training set (train 1.0 vs held-out 2.6 bits/code) is flagged, the usual
    few-percent gap is not. Non-finite or non-positive inputs give None (nothing to compare).
    Used by every recipe (images, speech, music, text) and by the report.
    """
    try:
        train, heldout = float(train_loss), float(heldout_loss)
    except (TypeError, ValueError):
        return None
    if not (0 < train < float("inf") and 0 < heldout < float("inf")):
        return None
    if heldout > ratio * train and heldout - train > min_gap:
        return (f"{what} overfits: held-out loss {heldout:.3g} {unit} is {heldout / train:.1f}x "
                f"the training loss {train:.3g} {unit}; samples tend to copy training "
                f"examples or fall apart. Use more data, fewer steps, a smaller model or "
                f"more dropout.")
    return None
