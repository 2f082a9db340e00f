#!/usr/bin/env python
"""Sampling settings vs sample quality for a finished speech or music run.

    python benchmarks/audio_sampling_sweep.py speech --preset full
    python benchmarks/audio_sampling_sweep.py music --preset full --per-class 16

Loads the run's pipeline (``runs/<name>``, the recipe config with the same ``--preset`` and
``key=value`` overrides) and the recipe's cached class classifier, then for each setting of
``--settings`` (JSON list of ``generate`` keyword sets) samples ``--per-class`` windows per seen
class with the same seed and prints a JSON line: class accuracy, log-mel Fréchet distance to
held-out audio and RMS level (and, for music, key consistency); the first line holds the same
scores on codec reconstructions of held-out audio (the ceiling for samples). A probe for choosing the
recipes' ``sampling`` defaults; numbers in benchmarks/RESULTS.md.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from vqgen.metrics.audio_classifier import (audio_class_accuracy, crop_clips,  # noqa: E402
                                            mel_frechet_distance)
from vqgen.pipeline import GenerationPipeline  # noqa: E402

DEFAULT_SETTINGS = [
    {"temperature": 1.0, "cfg_scale": 1.5},
    {"temperature": 0.8, "cfg_scale": 1.5},
    {"temperature": 1.0, "cfg_scale": 3.0},
    {"temperature": 0.9, "cfg_scale": 3.0, "top_k": 100},
    {"temperature": 1.0, "cfg_scale": 1.5, "top_p": 0.9},
]


def load_recipe(name: str):
    spec = importlib.util.spec_from_file_location(f"recipe_{name}", ROOT / "recipes" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("recipe", choices=["speech", "music"])
    p.add_argument("--preset", choices=["quick", "full"], default=None)
    p.add_argument("--per-class", type=int, default=8, help="samples per seen class and setting")
    p.add_argument("--settings", default=json.dumps(DEFAULT_SETTINGS))
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()
    recipe = load_recipe(args.recipe)
    modality = recipe.MUSIC if args.recipe == "music" else recipe.SPEECH
    base = recipe.audio_recipe if args.recipe == "music" else recipe
    cfg = base.parse_args((["--preset", args.preset] if args.preset else []) + ["--no-progress"]
                          + args.overrides, modality)
    data = modality.load_data(cfg)
    run_dir = Path(cfg["runs"]) / cfg["name"]
    pipe = GenerationPipeline.from_pretrained(run_dir, map_location="cpu")
    clf, clf_acc = base.class_classifier(cfg, data, modality.label)
    seen = sorted({int(v) for v in data.train.labels})
    labels = torch.tensor(seen).repeat(args.per_class)
    test_seen = [i for i in range(len(data.test)) if not data.test_unseen[i]]
    real = crop_clips(data.test, pipe.prior.code_shape[-1] * pipe.tokenizer.hop_length, index=test_seen)
    ceiling = base.recon_scores(pipe.tokenizer, real, torch.as_tensor(data.test.labels)[test_seen], clf, modality)
    print(json.dumps({"run": str(run_dir), "classifier_test_accuracy": clf_acc, "samples": len(labels),
                      "seed": args.seed, **{k: round(v, 4) for k, v in ceiling.items()}}), flush=True)
    for setting in json.loads(args.settings):
        t0 = time.time()
        fake = pipe.generate(len(labels), labels=labels, seed=args.seed, batch_size=32, progress=False,
                             **setting)
        real = crop_clips(data.test, fake.shape[-1], index=test_seen)
        row = {**setting, "sample_class_accuracy": round(audio_class_accuracy(fake, labels, clf), 4),
               "sample_mel_fd": round(mel_frechet_distance(real, fake, pipe.tokenizer.sample_rate), 2),
               "sample_rms": round(float(fake.pow(2).mean().sqrt()), 4)}
        if modality.sample_metrics:
            row.update({k: round(v, 4) for k, v in
                        modality.sample_metrics(fake, real, pipe.tokenizer.sample_rate).items()})
        row["seconds"] = round(time.time() - t0, 1)
        print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
