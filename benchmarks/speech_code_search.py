#!/usr/bin/env python
"""Greedy residual-VQ encoding against the encoder's code search, on a trained speech codec.

    python benchmarks/speech_code_search.py runs/speech-full/tokenizer --candidates 0 4 8 \\
        --passes 1 --out benchmarks/results/speech-full/code_search.jsonl

For each setting (``--envelope-weights``: for a codec with an envelope head, the share of its
correction applied, :mod:`vqgen.tokenizers.envelope`; ``--candidates`` 0 = greedy; ``k`` = :mod:`vqgen.tokenizers.code_search` with
``k`` choices per frame, ``--passes`` passes) it encodes the speech recipe's held-out clips as
the recipe scores them (the first 4 s of the first 64 test clips of seen voices, zero-padded;
``--unseen`` adds the unseen voices' clips), decodes 1, 2 and all levels and prints one JSON line:
SI-SDR, mel distance and STOI per bitrate (the metric keys of ``evaluate_tokenizer``), the
encoding seconds and the encoder's real-time factor (seconds of encoding per second of audio)
on this machine. Needs the prepared espeak-ng data (``vqgen data prepare speech``).
A measurement, not a test: see benchmarks/RESULTS.md.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from vqgen.data.speech import load_speech_dataset  # noqa: E402
from vqgen.metrics import audio as AM  # noqa: E402
from vqgen.tokenizers.audio import AudioTokenizer  # noqa: E402


def clips(data, unseen: bool, count: int, seconds: float) -> torch.Tensor:
    """The first ``seconds`` of the first ``count`` test clips of seen (or unseen) voices."""
    index = [i for i in range(len(data.test)) if bool(data.test_unseen[i]) == unseen][:count]
    t = int(seconds * data.test.sample_rate)
    waves = torch.zeros(len(index), 1, t)
    for row, i in enumerate(index):
        c = data.test.clip(i)[:t]
        waves[row, 0, :len(c)] = c
    return waves


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("tokenizer", help="a trained AudioTokenizer directory")
    p.add_argument("--candidates", type=int, nargs="+", default=[0, 4, 8])
    p.add_argument("--passes", type=int, default=1)
    p.add_argument("--clips", type=int, default=64)
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--unseen", action="store_true", help="also score the unseen voices' clips")
    p.add_argument("--envelope-weights", type=float, nargs="+", default=None,
                   help="a codec with an envelope head: score each of these envelope_weight values "
                        "(default: its own)")
    p.add_argument("--data-root", default=str(ROOT / "data"))
    p.add_argument("--out", help="append the JSON lines to this file")
    args = p.parse_args()
    tok = AudioTokenizer.from_pretrained(args.tokenizer).eval()
    data = load_speech_dataset("speech", root=args.data_root, progress=False, seed=0)
    groups = {"seen": clips(data, False, args.clips, args.seconds)}
    if args.unseen:
        groups["unseen"] = clips(data, True, args.clips, args.seconds)
    levels = sorted({1, tok.num_codebooks // 2, tok.num_codebooks})
    weights = args.envelope_weights or [tok.config.envelope_weight]
    if args.envelope_weights and tok.envelope is None:
        p.error(f"--envelope-weights: {args.tokenizer} has no envelope head")
    for k, w in ((k, w) for k in args.candidates for w in weights):
        tok.config = dataclasses.replace(tok.config, search_candidates=k, search_passes=args.passes,
                                         envelope_weight=w)
        for group, waves in groups.items():
            t0 = time.time()
            scores = AM.evaluate_tokenizer(tok, waves, levels=levels, with_stoi=True)
            seconds = time.time() - t0          # encoding + scoring; the search dominates when on
            row = {"tokenizer": args.tokenizer, "group": group, "clips": len(waves), "seconds_each": args.seconds,
                   "candidates": k, "passes": args.passes,
                   **({"envelope_weight": w} if tok.envelope is not None else {}), "eval_seconds": round(seconds, 1),
                   "eval_seconds_per_audio_second": round(seconds / (len(waves) * args.seconds), 3),
                   "threads": torch.get_num_threads(),
                   **{key: round(v, 4) for key, v in scores.items() if key.startswith("test_")}}
            line = json.dumps(row)
            print(line, flush=True)
            if args.out:
                with open(args.out, "a") as f:
                    f.write(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
