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
    "bits_per_token": MetricInfo("bits/token", "prior's held-out negative log-likelihood per "
                                 "code frame", "lower is better"),
    "sample_vocab_rate": MetricInfo("fraction", "share of generated words found in the corpus "
                                    "vocabulary", "higher is better"),
    "sample_copy_rate": MetricInfo("fraction", "share of generated texts copied verbatim from "
                                   "training", "lower is better (0 = no copying)"),
    "sample_distinct_2": MetricInfo("fraction", "distinct word bigrams / all bigrams in the "
                                    "samples", "higher = more diverse"),
    # bookkeeping
    "device": MetricInfo("", "where the run trained"),
    "train_seconds": MetricInfo("s", "wall time of the training loops (tokenizer + prior)"),
    "total_seconds": MetricInfo("s", "wall time of the whole recipe, data to report"),
}

# (pattern, info) for families of keys; the first match wins.
_PATTERNS: list[tuple[re.Pattern, MetricInfo]] = [
    (re.compile(r"test_si_sdr_([\d.]+)kbps"),
     MetricInfo("dB", "SI-SDR of held-out reconstructions using only the codebook levels that "
                "fit {0} kbit/s", "higher is better")),
    (re.compile(r".*_seconds"), MetricInfo("s", "wall time")),
    (re.compile(r".*_accuracy"), MetricInfo("fraction", "share of correct predictions",
                                            "higher is better")),
    (re.compile(r".*_psnr"), METRICS["test_psnr"]),
    (re.compile(r".*_ssim"), METRICS["test_ssim"]),
    (re.compile(r".*bits_per_code"), METRICS["prior_bits_per_code"]),
    (re.compile(r".*(fid|_fd)"), MetricInfo("distance", "a Fréchet distance between feature "
                                            "statistics", "lower is better")),
]


def describe_metric(key: str) -> MetricInfo:
    """The :class:`MetricInfo` of ``key``: from :data:`METRICS`, else from a known key family,
    else ``MetricInfo("", "not documented")``. Never raises."""
    if key in METRICS:
        return METRICS[key]
    for pattern, info in _PATTERNS:
        match = pattern.fullmatch(str(key))
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
