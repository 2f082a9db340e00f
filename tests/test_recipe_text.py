"""Recipe smoke test: the text recipe end to end on a slice of the pydoc corpus."""
from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = ["dataset=pydoc", "train_limit=300", "test_limit=40", "max_tokens=24", "tokenizer.vocab_size=400",
        "tokenizer.overrides={dim: 32, frame_dim: 32, heads: 2, frame_layers: 1, latent_dim: 16, "
        "codebook_size: 16, shorten: 2, num_codebooks: 2, vq_kmeans_iters: 2}",
        "tokenizer_train.steps=6", "tokenizer_train.batch_size=16", "tokenizer_train.warmup_steps=2",
        "prior_config.transformer={hidden_size: 32, num_layers: 1, num_heads: 2}",
        "prior_train.steps=4", "prior_train.batch_size=16", "prior_train.warmup_steps=2",
        "headline_levels=2", "eval_levels=[1, 2]", "samples_per_class=2", "num_eval_samples=8",
        "reconstructions_shown=2", "sample_categories=[]", "threads=1"]


def load_recipe():
    spec = importlib.util.spec_from_file_location("text_recipe", ROOT / "recipes" / "text.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    argv = ["--preset", "quick", "--runs", str(runs), "--no-progress", "name=smoke",
            f"data_root={tmp_path_factory.mktemp('data')}", *TINY]
    return runs / "smoke", load_recipe().main(argv)


def test_text_recipe_writes_metrics_samples_and_report(run):
    run_dir, metrics = run
    on_disk = json.loads((run_dir / "metrics.json").read_text())
    assert on_disk.keys() == metrics.keys()
    assert on_disk["test_token_accuracy"] == metrics["test_token_accuracy"]
    for key in ("test_token_accuracy", "test_exact_match", "train_token_accuracy", "bits_per_token",
                "bits_per_token_effective", "prior_bits_per_code", "sample_vocab_rate",
                "sample_copy_rate", "sample_distinct_2", "heldout_distinct_2",
                "sample_lm_perplexity", "heldout_lm_perplexity", "train_seconds",
                "test_token_accuracy_4bpt", "test_token_accuracy_2bpt"):
        assert key in metrics and math.isfinite(metrics[key]), key
    assert metrics["bits_per_token"] == 4.0          # 2 levels x log2(16) / shorten 2
    assert metrics["test_token_accuracy"] == metrics["test_token_accuracy_4bpt"]
    assert metrics["device"] == "cpu"
    assert (run_dir / "tokenizer" / "spm.model").is_file()
    assert (run_dir / "prior" / "config.json").is_file()
    recon = (run_dir / "samples" / "reconstructions.txt").read_text(encoding="utf-8")
    assert recon.count("## held-out") == 2 and "4.00 bits/token" in recon
    generated = (run_dir / "samples" / "generated_by_category.txt").read_text(encoding="utf-8")
    assert generated.startswith("## ")
    scored = (run_dir / "samples" / "eval_samples.txt").read_text(encoding="utf-8").splitlines()
    assert 1 <= len(scored) <= 8      # num_eval_samples, capped by the held-out strings that fit
    assert (run_dir / "report.html").is_file()


def test_unknown_key_and_bad_levels_fail(tmp_path):
    recipe = load_recipe()
    with pytest.raises(ValueError, match="unknown config key"):
        recipe.main(["--runs", str(tmp_path), "no_such_key=1"])
    with pytest.raises(ValueError, match="prior must be"):
        recipe.main(["--runs", str(tmp_path), "prior=rnn"])
