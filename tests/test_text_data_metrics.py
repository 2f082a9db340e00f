"""Text data (pydoc, file:, fortunes fallback), text metrics, and prior samples decoding to text."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vqgen.data import text as text_data
from vqgen.data.text import load_text_dataset, prepare_text_dataset
from vqgen.metrics import text as TM


# --------------------------------------------------------------------------- data
def test_pydoc_split_is_fixed_and_cached(tmp_path):
    a = load_text_dataset("pydoc", root=tmp_path)
    assert (tmp_path / "text" / "pydoc" / "prepared" / "manifest.json").is_file()
    b = load_text_dataset("pydoc", root=tmp_path)  # from the cache
    assert a.train_texts == b.train_texts and a.test_texts == b.test_texts
    assert len(a.test_texts) == round((len(a.train_texts) + len(a.test_texts)) * text_data.TEST_FRACTION)
    assert all(t and t == " ".join(t.split()) for t in a.train_texts[:200])
    assert a.train_y.dtype == np.int64 and a.train_y.max() < a.num_classes
    other = load_text_dataset("pydoc", root=tmp_path, split_seed=1)
    assert other.test_texts != a.test_texts


def test_file_source_keeps_unicode_and_names_categories(tmp_path):
    folder = tmp_path / "lines"
    folder.mkdir()
    (folder / "greek.txt").write_text("καλημέρα   κόσμε\n\n  γεια\tσου \n", encoding="utf-8")
    (folder / "emoji.txt").write_text("🙂 ok\nsecond line\nthird\n", encoding="utf-8")
    data = load_text_dataset(f"file:{folder}", root=tmp_path / "data", split_seed=0)
    texts = sorted(data.train_texts + data.test_texts)
    assert texts == sorted(["καλημέρα κόσμε", "γεια σου", "🙂 ok", "second line", "third"])
    assert data.classes == ["emoji", "greek"]
    one = load_text_dataset(f"file:{folder / 'greek.txt'}", root=tmp_path / "data")
    assert one.classes == ["greek"]
    assert prepare_text_dataset(f"file:{folder}", root=tmp_path / "data").is_dir()


def test_text_data_errors(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="unknown text dataset"):
        load_text_dataset("nope", root=tmp_path)
    with pytest.raises(FileNotFoundError, match="no text file"):
        load_text_dataset(f"file:{tmp_path / 'missing.txt'}", root=tmp_path)
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"\xff\xfe\xfa not utf-8\nline\n")
    with pytest.raises(ValueError, match="UTF-8"):
        load_text_dataset(f"file:{bad}", root=tmp_path)
    monkeypatch.setattr(text_data, "FORTUNE_DIRS", [tmp_path / "none"])
    with pytest.raises(FileNotFoundError, match="apt-get install fortunes"):
        load_text_dataset("fortunes", root=tmp_path)
    with pytest.warns(UserWarning, match="pydoc"):
        data = load_text_dataset("fortunes", root=tmp_path, fallback=True)
    assert data.name == "pydoc"


def test_fortunes_reader_splits_on_percent_lines(tmp_path, monkeypatch):
    d = tmp_path / "fortunes"
    d.mkdir()
    (d / "wisdom").write_text("First  quote\n  on two lines\n%\nSecond\n%\n%\nThird é\n", encoding="utf-8")
    (d / "wisdom.dat").write_bytes(b"\x00\x01")
    (d / "wisdom.u8").symlink_to(d / "wisdom")
    (d / "science").write_text("E = mc^2\n%\nF = ma\n", encoding="utf-8")
    monkeypatch.setattr(text_data, "FORTUNE_DIRS", [])
    data = load_text_dataset("fortunes", root=tmp_path)
    assert sorted(data.train_texts + data.test_texts) == sorted(
        ["First quote on two lines", "Second", "Third é", "E = mc^2", "F = ma"])
    assert data.classes == ["science", "wisdom"]


# --------------------------------------------------------------------------- metrics
def test_sample_metrics_by_hand():
    train = ["the cat sat", "a dog ran"]
    samples = ["the cat sat", "the zebra sat"]
    assert TM.words("It's a Dog!") == ["it's", "a", "dog", "!"]
    assert TM.vocab_rate(samples, train) == pytest.approx(5 / 6)
    assert TM.copy_rate(samples, train) == 0.5
    assert TM.distinct_n(samples, 1) == pytest.approx(4 / 6)      # the cat sat zebra
    assert TM.distinct_n(samples, 2) == pytest.approx(4 / 4)
    assert TM.distinct_n(["a a a a"], 2) == pytest.approx(1 / 3)
    assert TM.ngram_overlap(samples, train, n=2) == pytest.approx(2 / 4)
    assert TM.ngram_overlap(["short"], train, n=8) == 0.0
    for bad in ([], "text", [1]):
        with pytest.raises(ValueError):
            TM.distinct_n(bad, 1)


def test_kneser_ney_is_a_distribution_and_prefers_seen_text():
    train = ["the cat sat on the mat", "the dog sat on the log", "a cat ran"]
    lm = TM.KneserNeyLM(train)
    vocab = {w for t in train for w in TM.words(t)} | {"</s>"}
    for ctx in [("the", "cat"), ("<s>", "<s>"), ("zzz", "yyy"), ("sat", "on")]:
        total = sum(lm.prob(*ctx, w) for w in vocab) + lm.prob(*ctx, "never-seen") * 1
        # the unseen-word floor covers exactly one "unknown" type: the total is 1
        assert total == pytest.approx(1.0, abs=1e-9)
    assert lm.perplexity(["the cat sat on the mat"]) < lm.perplexity(["mat the on sat cat the"])
    assert math.isfinite(lm.perplexity(["completely unseen words"]))


def test_code_bits_by_hand():
    # two levels over 4 frames, one string of 4 frames and one of 2; K = 4, shorten 2
    codes = torch.tensor([[[0, 1, 2, 3], [0, 0, 0, 0]],
                          [[0, 1, 3, 3], [1, 1, 3, 3]]])
    lengths = torch.tensor([4, 2])
    out = TM.code_bits(codes, lengths, codebook_size=4, shorten=2)
    assert out["nominal"] == pytest.approx(2 * 2 / 2)
    # level 0 valid codes: 0,1,2,3,0,1 -> p = (2,2,1,1)/6; level 1: 0,0,0,0,1,1 -> (4,2)/6
    h0 = -(2 * (2 / 6) * math.log2(2 / 6) + 2 * (1 / 6) * math.log2(1 / 6))
    h1 = -((4 / 6) * math.log2(4 / 6) + (2 / 6) * math.log2(2 / 6))
    assert out["effective"] == pytest.approx((h0 + h1) / 2)
    assert out["perplexity_level_1"] == pytest.approx(2 ** h1)
    assert out["usage_level_1"] == pytest.approx(2 / 4)


def test_reconstruction_metrics_and_prior_samples_decode_to_strings(tmp_path):
    from vqgen.pipeline import GenerationPipeline
    from vqgen.priors.pixelcnn import PixelCNNPrior
    from vqgen.priors.transformer import transformer_prior_debug
    from vqgen.tokenizers.text import text_tokenizer_debug
    texts = load_text_dataset("pydoc", root=tmp_path).train_texts[:300]
    torch.manual_seed(0)
    tok = text_tokenizer_debug(texts, max_tokens=16).eval()
    short = [t[:12] for t in texts[:20]]
    r = TM.reconstruction_metrics(tok, short, num_codebooks=1)
    assert 0.0 <= r["token_accuracy"] <= 1.0 and 0.0 <= r["exact_match"] <= 1.0
    # a perfect decoder (monkeypatched to return the input ids) scores 1.0
    ids, _ = tok.tokenize(short)
    tok.decode_ids = lambda codes: ids
    assert TM.reconstruction_metrics(tok, short, batch_size=64) == {"token_accuracy": 1.0,
                                                                     "exact_match": 1.0}
    del tok.decode_ids
    for prior in (transformer_prior_debug(tok.codebook_size, (2, tok.max_frames), layout="frames",
                                          num_classes=3),
                  PixelCNNPrior.from_config(codebook_size=tok.codebook_size,
                                            code_shape=(tok.max_frames,), hidden=8, num_layers=2,
                                            embed_dim=8, num_classes=3)):
        pipe = GenerationPipeline(tok, prior.eval())
        out = pipe.generate(3, labels=[0, 1, 2], seed=0)
        assert isinstance(out, list) and len(out) == 3 and all(isinstance(s, str) for s in out)
        assert out == pipe.generate(3, labels=[0, 1, 2], seed=0)
        path, = pipe.save(out, tmp_path / "samples")
        assert path.read_text(encoding="utf-8").split("\n")[:3] == [" ".join(s.splitlines()) for s in out]
