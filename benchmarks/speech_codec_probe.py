#!/usr/bin/env python
"""Train a speech AudioTokenizer variant for a fixed wall time and score held-out SI-SDR.

    python benchmarks/speech_codec_probe.py NAME SECONDS '{"frame_downsample": 1, "num_codebooks": 4}'
    python benchmarks/speech_codec_probe.py novq 240 '{"frame_downsample": 1}' --no-vq

The JSON holds ``speech_16khz()`` overrides plus ``lr`` (2e-3), ``batch_size`` (16),
``segment_seconds`` (0.5) and ``max_steps``. Training: AdamW, 50 warmup steps, cosine to 5% over
the wall-time budget, gradient clip 1. ``--no-vq`` replaces the quantizer by the identity (an
autoencoder with the same encoder and decoder: the ceiling the codes are measured against).
Needs the prepared espeak-ng data (``vqgen data prepare speech``); ``--modality music`` probes
``music_16khz()`` on the full music preset's rendered chorales instead (24 test clips spread over
pieces and timbres; no STOI). Prints a line every 100 steps and a final JSON line: held-out SI-SDR
(dB; 24 test clips, first 2 s), log-mel distance and output level relative to the input (dB)
with 1, 2, 4, ... levels, at all levels also STOI (speech), and per level the share of frames
whose code repeats the previous frame's and how predictable each level is (unigram bits of the
codes of 400 training clips, held-out bigram bits on the test clips: ``code_predictability.py``'s
measures).
A probe for choosing presets, not a test: see benchmarks/RESULTS.md.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from vqgen.data.audio import ClipSegments  # noqa: E402
from vqgen.data.speech import load_speech_dataset  # noqa: E402
from vqgen.metrics import audio as AM  # noqa: E402
from vqgen.data.music import load_music_dataset  # noqa: E402
from vqgen.tokenizers.audio import music_16khz, speech_16khz  # noqa: E402
from vqgen.tokenizers.quantizers import QuantizerOutput  # noqa: E402
from code_predictability import level_scores  # noqa: E402  (benchmarks/, beside this file)


def predictability(tok, data, train_clips: int) -> list[dict]:
    """Per level: unigram bits of the codes of ``train_clips`` training clips (spread over the
    split), held-out bigram bits on every test clip, repeat share
    (``benchmarks/code_predictability.py``'s measures, on this probe's codes)."""
    def codes_of(clips, index) -> dict:
        parts = [tok.encode(clips.clip(int(i))[None, None])[0].numpy() for i in index]
        return {"codes": np.concatenate(parts, axis=1),
                "offsets": np.cumsum([0] + [c.shape[1] for c in parts])}
    spread = torch.linspace(0, len(data.train) - 1, min(train_clips, len(data.train))).long()
    train, test = codes_of(data.train, spread), codes_of(data.test, range(len(data.test)))
    return [level_scores(train, test, q, tok.codebook_size) for q in range(tok.num_codebooks)]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name")
    p.add_argument("seconds", type=float)
    p.add_argument("overrides", nargs="?", default="{}")
    p.add_argument("--no-vq", action="store_true", help="identity instead of the quantizer")
    p.add_argument("--data-root", default=str(ROOT / "data"))
    p.add_argument("--modality", choices=("speech", "music"), default="speech")
    p.add_argument("--train-clips", type=int, default=400,
                   help="training clips encoded for the code-predictability scores")
    args = p.parse_args()
    over = json.loads(args.overrides)
    lr, batch = float(over.pop("lr", 2e-3)), int(over.pop("batch_size", 16))
    segment, max_steps = float(over.pop("segment_seconds", 0.5)), int(over.pop("max_steps", 10**9))

    torch.manual_seed(0)
    music = args.modality == "music"
    load, preset = (load_music_dataset, music_16khz) if music else (load_speech_dataset, speech_16khz)
    data = load(args.modality, root=args.data_root, progress=False, seed=0)
    tok = preset(**over)
    if args.no_vq:
        def identity(z, n_quantizers=None):
            zeros = {k: torch.tensor(0.0) for k in ("perplexity", "usage", "dead_codes", "n_quantizers")}
            codes = torch.zeros(z.shape[:-1] + (tok.num_codebooks,), dtype=torch.long)
            return QuantizerOutput(z, codes, z.new_zeros(()), zeros)
        tok.quantizer.forward = identity
    print(f"{args.name}: {tok.num_parameters() / 1e6:.2f}M parameters, {tok.frame_rate:g} Hz, "
          f"{tok.bitrate():g} kbps, {torch.get_num_threads()} threads", flush=True)

    segments = ClipSegments(data.train, int(segment * tok.sample_rate))
    seen = list(range(len(data.test))) if music else [i for i in range(len(data.test)) if not data.test_unseen[i]]
    seen = [seen[int(j)] for j in torch.linspace(0, len(seen) - 1, min(24, len(seen))).long()] if music \
        else seen[:24]
    t = 2 * tok.sample_rate
    monitor = torch.zeros(len(seen), 1, t)
    for row, i in enumerate(seen):
        clip = data.test.clip(i)[:t]
        monitor[row, 0, :len(clip)] = clip

    opt = torch.optim.AdamW(tok.parameters(), lr=lr, betas=(0.9, 0.99))
    gen = torch.Generator().manual_seed(0)
    t0, step = time.time(), 0
    while time.time() - t0 < args.seconds and step < max_steps:
        frac = max((time.time() - t0) / args.seconds, step / max_steps)
        scale = min(1.0, (step + 1) / 50) * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * frac)))
        for group in opt.param_groups:
            group["lr"] = lr * scale
        idx = torch.randint(len(segments), (batch,), generator=gen)
        out = tok(torch.stack([segments[int(i)][0] for i in idx]))
        opt.zero_grad()
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(tok.parameters(), 1.0)
        opt.step()
        step += 1
        if step % 100 == 0:
            shown = {k: round(float(v), 3) for k, v in out.metrics.items()
                     if k in ("recon_loss", "vq_loss", "perplexity", "dead_codes", "n_quantizers")}
            print(step, round(time.time() - t0), shown, flush=True)

    tok.eval()
    result = {"name": args.name, "steps": step, "seconds": round(time.time() - t0),
              "overrides": json.loads(args.overrides), "no_vq": args.no_vq}
    with torch.no_grad():
        if args.no_vq:
            result["si_sdr_db"] = round(AM.si_sdr(tok(monitor).recon, monitor), 2)
        else:
            codes = tok.encode(monitor)
            levels = sorted({1, 2, 4, tok.num_codebooks} & set(range(1, tok.num_codebooks + 1)))
            recons = {n: tok.decode(codes[:, :n], length=t) for n in levels}
            result["si_sdr_db"] = {n: round(AM.si_sdr(r, monitor), 2) for n, r in recons.items()}
            # the spectral side per level count (what decoding fewer, e.g. phase-free, levels keeps)
            result["mel_distance"] = {n: round(AM.mel_distance(r, monitor, tok.sample_rate), 3)
                                      for n, r in recons.items()}
            result["level_db"] = {n: round(10 * math.log10(float(r.square().mean() / monitor.square().mean())), 2)
                                  for n, r in recons.items()}
            # how predictable the codes are from the previous frame: the share of frames whose
            # code repeats the previous one, per level (a prior's easiest structure)
            result["code_repeat"] = [round(float((codes[:, q, 1:] == codes[:, q, :-1]).float().mean()), 3)
                                     for q in range(tok.num_codebooks)]
            result["predictability"] = predictability(tok, data, args.train_clips)
            q = tok.num_codebooks        # the all-level figures again under the earlier key, + STOI
            result["top_level"] = {"mel_distance": result["mel_distance"][q], "level_db": result["level_db"][q],
                                   "stoi": None if music else round(AM.stoi(recons[q], monitor, tok.sample_rate), 3)}
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
