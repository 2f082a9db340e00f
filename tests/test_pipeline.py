"""GenerationPipeline: save/load, seeded generation, files on disk; config overrides; code cache."""
from __future__ import annotations

import pytest
import torch
from PIL import Image

from vqgen import GenerationPipeline
from vqgen.config import load_config, parse_overrides
from vqgen.data.codes import encode_cached
from vqgen.priors.pixelcnn import pixelcnn_debug
from vqgen.tokenizers.image import image_tokenizer_debug


@pytest.fixture()
def pipe():
    torch.manual_seed(0)
    tok = image_tokenizer_debug(in_channels=1).eval()
    prior = pixelcnn_debug(codebook_size=tok.codebook_size, code_shape=(4, 4), num_classes=3)
    return GenerationPipeline(tok, prior.eval())


def test_seeded_generation_is_reproducible_and_shaped(pipe):
    a = pipe.generate(5, labels=[0, 1, 2, 0, 1], seed=3)
    b = pipe.generate(5, labels=[0, 1, 2, 0, 1], seed=3)
    assert a.shape == (5, 1, 16, 16) and a.dtype == torch.float32
    assert 0 <= float(a.min()) and float(a.max()) <= 1
    assert torch.equal(a, b)
    assert pipe.generate(5, labels=1, seed=3, batch_size=2).shape == (5, 1, 16, 16)
    assert not torch.equal(a, pipe.generate(5, labels=[0, 1, 2, 0, 1], seed=4))


def test_save_and_load_round_trip(pipe, tmp_path):
    pipe.save_pretrained(tmp_path / "run")
    loaded = GenerationPipeline.from_pretrained(tmp_path / "run")
    assert torch.equal(loaded.generate(3, labels=1, seed=0), pipe.generate(3, labels=1, seed=0))
    paths = loaded.save(loaded.generate(3, labels=2, seed=0), tmp_path / "out", nrow=3)
    assert paths[0].name == "grid.png" and len(paths) == 4
    assert Image.open(paths[1]).size == (16, 16)


def test_mismatched_codebooks_and_bad_labels_raise(pipe):
    with pytest.raises(ValueError, match="codebook_size"):
        GenerationPipeline(pipe.tokenizer, pixelcnn_debug(codebook_size=7, code_shape=(4, 4)))
    with pytest.raises(ValueError, match="unknown label"):
        pipe.generate(2, labels=5)
    with pytest.raises(ValueError, match="labels"):
        pipe.generate(2, labels=[0, 1, 2])
    with pytest.raises(FileNotFoundError):
        GenerationPipeline.from_pretrained("no/such/run")


def test_overrides_and_presets(tmp_path):
    assert parse_overrides(["a.b=3", "c=null", "d=[1, 2]", "e=x=y"]) == {
        "a": {"b": 3}, "c": None, "d": [1, 2], "e": "x=y"}
    cfg = tmp_path / "c.yaml"
    cfg.write_text("a: {b: 1, c: 2}\nopen: {}\npresets:\n  quick: {a: {b: 5}}\n")
    assert load_config(cfg, "quick", ["a.c=7"]) == {"a": {"b": 5, "c": 7}, "open": {}, "preset": "quick"}
    assert load_config(cfg, None, ["open.x=1"], open_keys=("open",))["open"] == {"x": 1}
    with pytest.raises(ValueError, match="unknown config key 'a.z'"):
        load_config(cfg, None, ["a.z=1"])
    with pytest.raises(ValueError, match="unknown preset"):
        load_config(cfg, "full")
    with pytest.raises(ValueError, match="key=value"):
        parse_overrides(["novalue"])


def test_code_cache_reuses_and_invalidates(pipe, tmp_path, monkeypatch):
    tok = pipe.tokenizer
    tok.save_pretrained(tmp_path / "tok")
    x = torch.randint(0, 256, (10, 1, 16, 16), dtype=torch.uint8)
    codes = encode_cached(tok, tmp_path / "tok", "train", x, tmp_path / "codes", progress=False)
    assert torch.equal(codes, tok.encode(x))
    import vqgen.data.codes as codes_mod
    monkeypatch.setattr(codes_mod, "encode_batches", lambda *a, **k: pytest.fail("cache not used"))
    assert torch.equal(encode_cached(tok, tmp_path / "tok", "train", x, tmp_path / "codes"), codes)
    monkeypatch.undo()
    with torch.no_grad():
        next(tok.parameters()).add_(1.0)
    tok.save_pretrained(tmp_path / "tok")   # new weights -> new hash -> re-encode
    again = encode_cached(tok, tmp_path / "tok", "train", x, tmp_path / "codes", progress=False)
    assert torch.equal(again, tok.encode(x))


FASHION = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
           "Bag", "Ankle boot"]


@pytest.fixture()
def named_run(tmp_path):
    torch.manual_seed(0)
    tok = image_tokenizer_debug(in_channels=1).eval()
    prior = pixelcnn_debug(codebook_size=tok.codebook_size, code_shape=(4, 4), num_classes=10)
    GenerationPipeline(tok, prior.eval(), id2label=FASHION).save_pretrained(tmp_path / "run")
    return tmp_path / "run"


def test_class_names_saved_and_used_for_generation(named_run):
    import json
    assert json.loads((named_run / "labels.json").read_text())["3"] == "Dress"
    pipe = GenerationPipeline.from_pretrained(named_run)
    assert pipe.id2label[3] == "Dress"
    dress = pipe.generate(6, labels="Dress", seed=0)
    assert torch.equal(dress, pipe.generate(6, labels=3, seed=0))
    mixed = pipe.label_ids(["Dress", 3, "Bag", "8"], 4)
    assert mixed.tolist() == [3, 3, 8, 8]
    assert pipe.label_names(mixed) == ["Dress", "Dress", "Bag", "Bag"]
    with pytest.raises(ValueError, match=r"unknown class name 'Dres'.*'Dress'"):
        pipe.generate(2, labels="Dres")


def test_names_without_id2label_raise(pipe):
    with pytest.raises(ValueError, match="no names"):
        pipe.generate(2, labels="Dress")


def test_save_writes_row_labels_sidecar(named_run, tmp_path):
    import json
    pipe = GenerationPipeline.from_pretrained(named_run)
    labels = ["Dress"] * 3 + ["Bag"] * 3
    paths = pipe.save(pipe.generate(6, labels=labels, seed=0), tmp_path / "out", nrow=3,
                      labels=labels)
    meta = json.loads((tmp_path / "out" / "grid.json").read_text())
    assert meta["rows"] == ["Dress", "Bag"] and "Dress, Bag" in meta["caption"]
    assert tmp_path / "out" / "grid.json" in paths


def test_decode_is_clamped_and_gradient_free(named_run):
    pipe = GenerationPipeline.from_pretrained(named_run)
    with torch.no_grad():  # push the decoder output far outside [0, 1]
        pipe.tokenizer.decoder.conv_out.bias.fill_(50.0)
    codes = torch.zeros(2, 4, 4, dtype=torch.long)
    for out in (pipe.tokenizer.decode(codes), pipe.decode(codes)):
        assert float(out.min()) >= 0 and float(out.max()) <= 1 and not out.requires_grad
    assert not any(p.requires_grad for p in pipe.prior.parameters())


def test_generation_is_batch_size_invariant(named_run):
    pipe = GenerationPipeline.from_pretrained(named_run)
    a = pipe.generate(16, labels="Dress", seed=0, batch_size=4, progress=True)
    assert torch.equal(a, pipe.generate(16, labels="Dress", seed=0, batch_size=16))
    assert torch.equal(a, pipe.generate(16, labels=3, seed=0))
    assert not torch.equal(a, pipe.generate(16, labels=3, seed=1))
