"""Class names on both priors: ``id2label`` in the config (saved with string keys, loaded back as
ints), ``label_ids`` for ids / names / mixed lists / tensors, names accepted by every method."""
from __future__ import annotations

import json

import pytest
import torch

from vqgen.priors.pixelcnn import PixelCNNPrior, PixelCNNPriorConfig, pixelcnn_debug
from vqgen.priors.transformer import (TransformerPrior, TransformerPriorConfig,
                                      transformer_prior_debug)

K = 8
NAMES = {0: "alto", 1: "bass", 2: "tenor"}
BUILDERS = [pytest.param(pixelcnn_debug, id="pixelcnn"),
            pytest.param(transformer_prior_debug, id="transformer")]


def make(builder, **overrides):
    torch.manual_seed(0)
    return builder(codebook_size=K, code_shape=(2, 3), num_classes=3, id2label=NAMES,
                   **overrides).eval()


@pytest.mark.parametrize("builder", BUILDERS)
def test_label_ids_accepts_ids_names_lists_and_tensors(builder):
    prior = make(builder)
    assert prior.label2id == {"alto": 0, "bass": 1, "tenor": 2}
    assert prior.label_ids(None, 3) is None
    assert prior.label_ids("tenor", 3).tolist() == [2, 2, 2]
    assert prior.label_ids(1, 2).tolist() == [1, 1]
    assert prior.label_ids(["bass", 0, "tenor"], 3).tolist() == [1, 0, 2]
    assert prior.label_ids(torch.tensor([2, 1]), 2).tolist() == [2, 1]
    assert prior.label_ids(torch.tensor(0), 2).tolist() == [0, 0]
    assert prior.label_ids("alto", 1).dtype == torch.long


@pytest.mark.parametrize("builder", BUILDERS)
def test_label_ids_errors(builder):
    prior = make(builder)
    with pytest.raises(ValueError, match="alto.*bass.*tenor"):  # lists the valid names
        prior.label_ids("soprano", 2)
    with pytest.raises(ValueError, match="soprano"):
        prior.label_ids(["bass", "soprano"], 2)
    with pytest.raises(ValueError, match="unknown label"):
        prior.label_ids(3, 2)
    with pytest.raises(ValueError, match="2 labels"):
        prior.label_ids(["bass", 0, 1], 2)
    with pytest.raises(ValueError, match="integer"):
        prior.label_ids(torch.tensor([0.0, 1.0]), 2)
    with pytest.raises(ValueError, match="integer"):
        prior.label_ids([0.5], 1)
    unnamed = builder(codebook_size=K, code_shape=(2, 3), num_classes=3)
    with pytest.raises(ValueError, match="no class names"):
        unnamed.label_ids("bass", 1)
    uncond = builder(codebook_size=K, code_shape=(2, 3))
    with pytest.raises(ValueError, match="unconditional"):
        uncond.label_ids("bass", 1)


@pytest.mark.parametrize("builder", BUILDERS)
def test_methods_take_names(builder):
    prior = make(builder)
    codes = torch.randint(0, K, (3, 2, 3), generator=torch.Generator().manual_seed(0))
    ids = torch.tensor([1, 0, 2])
    names = ["bass", "alto", "tenor"]
    assert torch.equal(prior.logits(codes, names), prior.logits(codes, ids))
    assert torch.equal(prior.nll(codes, names), prior.nll(codes, ids))
    assert torch.equal(prior.loss(codes, names), prior.loss(codes, ids))
    by_name = prior.generate(4, labels="tenor", generator=torch.Generator().manual_seed(1))
    by_id = prior.generate(4, labels=2, generator=torch.Generator().manual_seed(1))
    assert torch.equal(by_name, by_id)
    guided = prior.generate(2, labels=["bass", 2], cfg_scale=2.0,
                            generator=torch.Generator().manual_seed(1))
    assert torch.equal(guided, prior.generate(2, labels=[1, 2], cfg_scale=2.0,
                                              generator=torch.Generator().manual_seed(1)))


@pytest.mark.parametrize("cls", [PixelCNNPrior, TransformerPrior])
def test_id2label_round_trips_through_config_json(cls, tmp_path):
    extra = dict(hidden_size=16, num_layers=1, num_heads=2) if cls is TransformerPrior else \
        dict(embed_dim=4, hidden=8, num_layers=2)
    prior = cls.from_config(codebook_size=K, code_shape=(2, 3), num_classes=3, id2label=NAMES,
                            **extra)
    path = prior.save_pretrained(tmp_path / "prior")
    stored = json.loads((path / "config.json").read_text())["config"]["id2label"]
    assert stored == {"0": "alto", "1": "bass", "2": "tenor"}  # JSON keys are strings
    loaded = cls.from_pretrained(path)
    assert loaded.config.id2label == NAMES and loaded.config == prior.config
    assert loaded.label_ids("bass", 1).tolist() == [1]


@pytest.mark.parametrize("config_cls", [PixelCNNPriorConfig, TransformerPriorConfig])
@pytest.mark.parametrize("bad", [
    dict(id2label={0: "a", 1: "b"}, num_classes=3),           # a class without a name
    dict(id2label={0: "a", 1: "b", 3: "c"}, num_classes=3),   # id out of range
    dict(id2label={0: "a", 1: "a", 2: "c"}, num_classes=3),   # duplicate name
    dict(id2label={0: "a", 1: "", 2: "c"}, num_classes=3),    # empty name
    dict(id2label={"x": "a"}, num_classes=1),                 # key not an id
    dict(id2label={0: "a"}, num_classes=None),                # names on an unconditional prior
    dict(id2label=["a", "b"], num_classes=2),                 # not a dict
])
def test_bad_id2label_raises(config_cls, bad):
    with pytest.raises(ValueError, match="id2label"):
        config_cls(codebook_size=K, code_shape=(2, 3), **bad)


@pytest.mark.parametrize("config_cls,old", [(PixelCNNPriorConfig, "grid"),
                                            (TransformerPriorConfig, "flat")])
def test_old_layout_names_still_load(config_cls, old):
    assert config_cls(codebook_size=K, code_shape=(2, 3), layout=old).layout == "raster"
