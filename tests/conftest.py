"""Suite-wide settings: tiny models run fastest (and least noisily) on one thread; the
``load_recipe`` fixture."""
import importlib.util
import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)
os.environ.setdefault("TQDM_DISABLE", "1")
RECIPES = Path(__file__).resolve().parents[1] / "recipes"


@pytest.fixture(scope="session")
def load_recipe():
    """``load_recipe("speech")``: a fresh module of ``recipes/speech.py`` (recipes/ is not a package)."""
    def load(name: str):
        spec = importlib.util.spec_from_file_location(f"{name}_recipe", RECIPES / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    return load


@pytest.fixture(scope="session")
def tiny_audio_args():
    """``tiny_audio_args(tmp)``: the command line the audio recipe smoke tests share: run dir
    ``tmp/runs/smoke``, data under ``tmp/data``, a tiny untrained tokenizer (saved to
    ``tmp/tok``) and a tiny prior, classifier and evaluation; the tests add their data."""
    def args(tmp: Path) -> list:
        from vqgen.tokenizers.audio import audio_tokenizer_debug
        torch.manual_seed(0)
        tok_dir = audio_tokenizer_debug().save_pretrained(tmp / "tok")
        return ["--preset", "quick", "--runs", str(tmp / "runs"), "--no-progress", "name=smoke",
                f"data_root={tmp / 'data'}", f"tokenizer_from={tok_dir}", "tokenizer_eval.max_clips=2",
                "tokenizer_eval.seconds=0.5", "tokenizer_eval.num_audio_examples=1",
                "prior_config.transformer.hidden_size=32", "prior_config.transformer.num_layers=1",
                "prior_config.transformer.num_heads=2", "prior_data.window_seconds=0.4",
                "prior_train.steps=6", "prior_train.batch_size=4", "prior_train.checkpoint_every=3",
                "prior_train.warmup_steps=2", "prior_train.cpu_amp=false", "classifier.steps=3",
                "classifier.batch_size=4", "classifier.crop_seconds=0.3", "prior_samples.batch_size=4"]
    return args
