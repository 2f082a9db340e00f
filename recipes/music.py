#!/usr/bin/env python
"""Music recipe: Bach chorales rendered in four timbres -> music codec (``music_16khz``) ->
timbre-conditioned prior over its (Q, T) codes (delay pattern) -> samples -> metrics -> report.

    python recipes/music.py --preset quick                       # CPU, under 4 minutes
    python recipes/music.py --preset full                        # quality run, ~90 min on 2 CPU cores
    python recipes/music.py --preset quick dataset_options.num_pieces=20 name=music-tiny
    python recipes/music.py --preset full tokenizer_from=runs/music-full/tokenizer name=other

The steps are those of the speech recipe (``recipes/speech.py``, run here with the music
:class:`Modality`): prepare the data, train and evaluate the tokenizer at each bitrate (no STOI),
encode, train the prior, generate a few seconds per timbre, score the samples (timbre
classifier accuracy, Fréchet distances) and write ``runs/<name>/report.html``. Music adds
``sample_key_consistency`` and ``test_key_consistency`` (:func:`vqgen.metrics.audio.key_consistency`:
the share of frames whose strongest pitch classes fit one key, on samples and on held-out music).
All test clips are of unseen pieces in seen timbres, so there is no unseen-class group.
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np

from vqgen.data.music import load_music_dataset
from vqgen.metrics.audio import key_consistency
from vqgen.runs import run_main

HERE = Path(__file__).resolve().parent


def _speech_recipe():
    """recipes/speech.py as a module (the recipes folder is not a package)."""
    spec = importlib.util.spec_from_file_location("vqgen_recipe_speech", HERE / "speech.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


audio_recipe = _speech_recipe()


def load_music_data(cfg: dict) -> "audio_recipe.RecipeData":
    """Chorales (``dataset_options``: settings of :func:`vqgen.data.music.prepare_music`) or an
    audio folder; the test split is whole pieces never heard in training, every timbre seen."""
    options = cfg["dataset_options"] if cfg["dataset"] == "music" else {}
    data = load_music_dataset(cfg["dataset"], root=cfg["data_root"], progress=cfg["progress"],
                              seed=cfg["seed"], **options)
    pieces = len(set(data.test_pieces.tolist()) - {-1})
    summary = f"{pieces} unseen pieces" if pieces else "unseen files"
    return audio_recipe.RecipeData(data.train, data.test, data.classes, data.name,
                                   np.zeros(len(data.test), dtype=bool), summary)


def key_metrics(samples, test_audio, sample_rate: int) -> dict:
    """Key consistency of the samples and of real held-out music of the same length."""
    return {"sample_key_consistency": key_consistency(samples, sample_rate),
            "test_key_consistency": key_consistency(test_audio, sample_rate)}


MUSIC = audio_recipe.Modality("music", "timbre", load_music_data, key_metrics, doc=__doc__)


def main(argv=None) -> dict:
    return audio_recipe.main(argv, MUSIC)


if __name__ == "__main__":
    sys.exit(run_main(main, prog="music.py"))  # user mistakes: one line, exit 2
