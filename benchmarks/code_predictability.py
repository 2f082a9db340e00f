#!/usr/bin/env python
"""How predictable a run's audio codes are from the previous frame (a prior's easiest structure).

    python benchmarks/code_predictability.py runs/music-full runs/speech-full [--levels 2]

Reads the cached codes of a speech or music run (``<run>/codes/{train,test}.safetensors``: codes
``(Q, frames)`` of all clips end to end, ``offsets`` where each clip starts) and prints, per level,
a JSON line: the unigram entropy of the training codes, the held-out cross-entropy of a bigram
model fitted on the training clips (counts + 0.1, within clips only), and the share of training
frames whose code repeats the previous one. A bigram no better than the unigram means each code
is close to unpredictable from the one before. Numbers in benchmarks/RESULTS.md.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file


def pairs(split: dict, level: int) -> tuple[np.ndarray, np.ndarray]:
    """(previous, next) code pairs of one level, never across a clip boundary."""
    codes, off = split["codes"][level], split["offsets"]
    keep = np.ones(len(codes) - 1, dtype=bool)
    keep[off[1:-1] - 1] = False                      # the pair (last of clip i, first of clip i+1)
    return codes[:-1][keep], codes[1:][keep]


def level_scores(train: dict, test: dict, level: int, k: int) -> dict:
    """Unigram bits of the training codes, held-out bigram bits, repeat share (one level);
    ``train`` / ``test``: ``codes`` (Q, frames) of clips end to end, ``offsets`` of clip starts
    plus the end."""
    freq = np.bincount(train["codes"][level], minlength=k) / train["codes"].shape[1]
    a, b = pairs(train, level)
    counts = np.zeros((k, k))
    np.add.at(counts, (a, b), 1)
    prob = (counts + 0.1) / (counts + 0.1).sum(1, keepdims=True)
    ta, tb = pairs(test, level)
    return {"level": level, "frames": int(train["codes"].shape[1]),
            "unigram_bits": round(float(-(freq[freq > 0] * np.log2(freq[freq > 0])).sum()), 2),
            "heldout_bigram_bits": round(float(-np.log2(prob[ta, tb]).mean()), 2),
            "repeat_share": round(float((a == b).mean()), 4)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+")
    p.add_argument("--levels", type=int, default=2, help="first levels to score")
    p.add_argument("--codebook-size", type=int, default=1024)
    args = p.parse_args()
    k = args.codebook_size
    for run in args.runs:
        train = load_file(str(Path(run) / "codes" / "train.safetensors"))
        test = load_file(str(Path(run) / "codes" / "test.safetensors"))
        for level in range(min(args.levels, train["codes"].shape[0])):
            print(json.dumps({"run": run, **level_scores(train, test, level, k)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
