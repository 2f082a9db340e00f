"""Checkpoint format: config.json + model.safetensors, strict, no pickle, clear errors."""
from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from vqgen.modeling import ConfigModel, atomic_write_text, build_config


@dataclass
class ToyConfig:
    dim: int = 4
    hidden: tuple = (8, 8)


class Toy(ConfigModel):
    config_class = ToyConfig

    def __init__(self, config: ToyConfig):
        super().__init__(config)
        self.a = nn.Linear(config.dim, config.hidden[0])
        self.b = nn.Linear(config.hidden[1], 1)
        self.register_buffer("ema", torch.randn(3))

    def forward(self, x):
        return self.b(torch.tanh(self.a(x))) + self.ema.sum()


@dataclass
class OtherConfig:
    dim: int = 4


class Other(ConfigModel):
    config_class = OtherConfig

    def __init__(self, config):
        super().__init__(config)
        self.a = nn.Linear(config.dim, 8)


def test_round_trip_bit_exact(tmp_path):
    torch.manual_seed(0)
    model = Toy.from_config(dim=4, hidden=(8, 8))
    x = torch.randn(5, 4)
    model.save_pretrained(tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "config.json").read_text())
    assert meta["model_type"] == "Toy" and meta["config"] == {"dim": 4, "hidden": [8, 8]}
    loaded = Toy.from_pretrained(tmp_path / "m")
    assert not loaded.training
    assert loaded.config == model.config  # lists turned back into tuples
    assert torch.equal(loaded(x), model(x))
    assert torch.equal(loaded.ema, model.ema)


def test_overwrite_keeps_directory_complete(tmp_path):
    model = Toy.from_config()
    model.save_pretrained(tmp_path / "m")
    with torch.no_grad():
        model.a.weight.add_(1)
    model.save_pretrained(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", "model.safetensors"]
    assert torch.equal(Toy.from_pretrained(tmp_path / "m").a.weight, model.a.weight)
    assert [p.name for p in tmp_path.iterdir()] == ["m"]  # no temp leftovers


def test_unknown_config_key_raises():
    with pytest.raises(ValueError, match="unknown ToyConfig key.*'width'"):
        Toy.from_config(width=3)
    with pytest.raises(ValueError, match="expects a ToyConfig"):
        Toy(OtherConfig())
    assert build_config(ToyConfig, {"hidden": [2, 3]}).hidden == (2, 3)


def test_other_model_directory_raises(tmp_path):
    Other.from_config().save_pretrained(tmp_path / "other")
    with pytest.raises(ValueError, match="holds a 'Other' checkpoint, expected 'Toy'"):
        Toy.from_pretrained(tmp_path / "other")


def test_truncated_weights_raise(tmp_path):
    Toy.from_config().save_pretrained(tmp_path / "m")
    w = tmp_path / "m" / "model.safetensors"
    w.write_bytes(w.read_bytes()[:-20])
    with pytest.raises(ValueError, match="corrupt or truncated"):
        Toy.from_pretrained(tmp_path / "m")


def test_mismatched_weights_and_missing_files(tmp_path):
    Toy.from_config().save_pretrained(tmp_path / "m")
    cfg = tmp_path / "m" / "config.json"
    meta = json.loads(cfg.read_text())
    meta["config"]["dim"] = 5
    atomic_write_text(cfg, json.dumps(meta))
    with pytest.raises(ValueError, match="has shape"):
        Toy.from_pretrained(tmp_path / "m")
    cfg.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        Toy.from_pretrained(tmp_path / "m")
    with pytest.raises(FileNotFoundError):
        Toy.from_pretrained(tmp_path / "missing")


def test_crash_during_save_keeps_old_checkpoint(tmp_path, monkeypatch):
    model = Toy.from_config()
    model.save_pretrained(tmp_path / "m")
    before = (tmp_path / "m" / "model.safetensors").read_bytes()
    import vqgen.modeling as modeling

    def boom(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(modeling, "write_bytes_to", boom)
    with pytest.raises(KeyboardInterrupt):
        model.save_pretrained(tmp_path / "m")
    assert (tmp_path / "m" / "model.safetensors").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m"]
