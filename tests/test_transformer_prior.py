"""TransformerPrior: shapes, causality in both layouts, cached == uncached sampling, guidance,
sampling filters, errors, checkpoint round trip, and a short training run that learns labels."""
from __future__ import annotations

import copy
import json

import pytest
import torch

from vqgen.priors.transformer import (TransformerPrior, TransformerPriorConfig,
                                      default_intermediate_size, transformer_prior_debug)

K = 16
TINY = dict(codebook_size=K, hidden_size=32, num_layers=2, num_heads=2)  # config-level tests


def make(seed: int = 0, **overrides) -> TransformerPrior:
    torch.manual_seed(seed)
    return transformer_prior_debug(**{"codebook_size": K, "code_shape": (3, 5), **overrides}).eval()


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def flat_logits(prior: TransformerPrior, codes, labels=None) -> torch.Tensor:
    """Logits in the prior's sequence order, ``(B, N, K)``."""
    logits = prior.logits(codes, labels)
    b, k = logits.shape[:2]
    return prior._to_sequence(logits.reshape(b * k, *prior.code_shape)).reshape(b, k, -1).transpose(1, 2)


# --------------------------------------------------------------------------- config
def test_config_defaults_and_resolution():
    cfg = TransformerPriorConfig()
    assert (cfg.codebook_size, cfg.code_shape, cfg.hidden_size, cfg.num_layers, cfg.num_heads) == \
        (512, (7, 7), 256, 6, 8)
    assert cfg.intermediate_size == default_intermediate_size(256) == 688
    assert TransformerPriorConfig(code_shape=[2, 3]).code_shape == (2, 3)


@pytest.mark.parametrize("bad", [
    dict(hidden_size=30, num_heads=4),       # not divisible
    dict(hidden_size=36, num_heads=12),      # odd head dim (rotary)
    dict(codebook_size=1),
    dict(code_shape=()),
    dict(code_shape=(0, 3)),
    dict(layout="delay", code_shape=(8,)),
    dict(layout="frames", code_shape=(8,)),
    dict(num_classes=0),
    dict(label_dropout=1.0),
    dict(dropout=-0.1),
    dict(num_kv_heads=3, num_heads=2),
    dict(attn_implementation="flash"),
    dict(cache_implementation="paged"),
    dict(num_layers=True),
])
def test_config_rejects_bad_values(bad):
    with pytest.raises(ValueError):
        TransformerPriorConfig(**{**TINY, **bad})


def test_unknown_config_key_raises():
    with pytest.raises(ValueError, match="unknown"):
        TransformerPrior.from_config(**TINY, n_layer=3)


# --------------------------------------------------------------------------- logits
@pytest.mark.parametrize("overrides", [
    dict(code_shape=(3, 5), num_classes=4),
    dict(code_shape=(6,)),
    dict(code_shape=(2, 4), layout="frames", num_classes=2),
    dict(code_shape=(2, 2, 3), layout="frames"),
])
def test_logits_shape_and_losses(overrides):
    prior = make(**overrides)
    codes = torch.randint(0, K, (3, *prior.code_shape))
    labels = torch.tensor([0, 1, 1]) if prior.num_classes else None
    logits = prior.logits(codes, labels)
    assert logits.shape == (3, K, *prior.code_shape)
    nll = prior.nll(codes, labels)
    assert nll.shape == (3,)
    assert torch.allclose(prior.loss(codes, labels), nll.mean() / prior.seq_len, atol=1e-5)


def _assert_causal(prior: TransformerPrior, codes: torch.Tensor, labels=None) -> None:
    """Changing the code at sequence position i leaves positions <= i alone and moves i + 1."""
    base = flat_logits(prior, codes, labels)
    n = prior.seq_len
    for i in range(n):
        seq = prior._to_sequence(codes).clone()
        seq[:, i] = (seq[:, i] + 1) % K
        changed = flat_logits(prior, prior._to_grid(seq), labels)
        torch.testing.assert_close(changed[:, : i + 1], base[:, : i + 1], rtol=0, atol=1e-6)
        if i + 1 < n:
            assert (changed[:, i + 1] - base[:, i + 1]).abs().max() > 1e-4, f"position {i + 1}"


def test_causal_flat_non_square():
    prior = make(code_shape=(3, 5), num_classes=3)
    _assert_causal(prior, torch.randint(0, K, (2, 3, 5)), torch.tensor([0, 2]))


def test_causal_frames_layout():
    prior = make(code_shape=(3, 4), layout="frames")
    codes = torch.randint(0, K, (2, 3, 4))
    _assert_causal(prior, codes)
    # frame-major: level 1 of frame 0 sees level 0 of frame 0, not level 0 of frame 1
    base = prior.logits(codes)
    bumped = codes.clone()
    bumped[:, 0, 0] = (bumped[:, 0, 0] + 1) % K
    assert (prior.logits(bumped)[:, :, 1, 0] - base[:, :, 1, 0]).abs().max() > 1e-4
    bumped = codes.clone()
    bumped[:, 0, 1] = (bumped[:, 0, 1] + 1) % K
    torch.testing.assert_close(prior.logits(bumped)[:, :, :, 0], base[:, :, :, 0], rtol=0, atol=1e-6)


def test_frames_level_offsets():
    prior = make(code_shape=(2, 3), layout="frames")
    codes = torch.tensor([[[1, 2, 3], [4, 5, 6]]])
    tokens = prior._to_sequence(codes) + prior._offsets
    assert tokens.tolist() == [[1, 4 + K, 2, 5 + K, 3, 6 + K]]
    assert torch.equal(prior._to_grid(prior._to_sequence(codes)), codes)
    assert prior.lm.config.vocab_size == 2 * K + 1  # two levels + the one (null) start token


# --------------------------------------------------------------------------- sampling
@pytest.mark.parametrize("impl", ["dynamic", "static"])
@pytest.mark.parametrize("case", [
    dict(overrides=dict(num_classes=3), kwargs=dict(labels=torch.tensor([0, 1, 2, 1]), top_k=5)),
    dict(overrides=dict(num_classes=3), kwargs=dict(labels=2, top_p=0.7, temperature=0.8)),
    dict(overrides=dict(num_classes=3), kwargs=dict(labels=[0, 1, 2, 0], cfg_scale=2.5, top_k=8)),
    dict(overrides=dict(), kwargs=dict(top_k=6, top_p=0.9)),
    dict(overrides=dict(code_shape=(2, 4), layout="frames", num_classes=2), kwargs=dict(labels=1)),
])
def test_cached_matches_uncached(impl, case):
    prior = make(initializer_range=0.2, **case["overrides"])
    cached = prior.generate(4, generator=seeded(3), cache_implementation=impl, **case["kwargs"])
    uncached = prior.generate_uncached(4, generator=seeded(3), **case["kwargs"])
    assert cached.shape == (4, *prior.code_shape) and cached.dtype == torch.long
    assert cached.min() >= 0 and cached.max() < K
    assert torch.equal(cached, uncached)


def test_static_decoder_is_reused_and_reset():
    prior = make(num_classes=3, initializer_range=0.2)
    first = prior.generate(4, labels=1, generator=seeded(0), cache_implementation="static")
    again = prior.generate(4, labels=1, generator=seeded(0), cache_implementation="static")
    assert torch.equal(first, again) and len(prior._static_decoders) == 1
    twin = copy.deepcopy(prior)  # copies (e.g. an EMA model) start without decoders
    assert len(twin._static_decoders) == 0
    assert torch.equal(twin.generate(4, labels=1, generator=seeded(0), cache_implementation="static"), first)


def test_seed_reproducible_and_seed_sensitive():
    prior = make(num_classes=3, initializer_range=0.2)
    a = prior.generate(6, labels=0, generator=seeded(1))
    assert torch.equal(a, prior.generate(6, labels=0, generator=seeded(1)))
    assert not torch.equal(a, prior.generate(6, labels=0, generator=seeded(2)))


def test_cfg_scale_one_is_plain_conditional_and_two_differs():
    prior = make(num_classes=3, initializer_range=0.2)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    plain = prior.generate(8, labels, generator=seeded(5))
    assert torch.equal(plain, prior.generate(8, labels, cfg_scale=1.0, generator=seeded(5)))
    guided = prior.generate(8, labels, cfg_scale=2.0, generator=seeded(5))
    assert guided.shape == plain.shape and not torch.equal(guided, plain)


def test_top_k_one_is_greedy_argmax_path():
    prior = make(num_classes=3, initializer_range=0.2)
    greedy = prior.generate(3, labels=[0, 1, 2], top_k=1, generator=seeded(0))
    assert torch.equal(greedy, prior.generate(3, labels=[0, 1, 2], top_k=1, generator=seeded(9)))
    # teacher-forcing the greedy path reproduces it as the argmax at every position
    assert torch.equal(prior.logits(greedy, torch.tensor([0, 1, 2])).argmax(1), greedy)
    # a near-zero temperature is greedy too
    cold = prior.generate(3, labels=[0, 1, 2], temperature=1e-4, generator=seeded(4))
    assert torch.equal(cold, greedy)


def test_top_k_restricts_to_top_k_codes():
    prior = make(initializer_range=0.2)
    codes = prior.generate(8, top_k=3, generator=seeded(0))
    top3 = prior.logits(codes).topk(3, dim=1).indices            # (B, 3, *code_shape)
    assert (top3 == codes[:, None]).any(1).all()


def test_generate_in_train_mode_restores_mode():
    prior = make(num_classes=3, dropout=0.5, label_dropout=0.5, initializer_range=0.2)
    expected = prior.generate(4, labels=1, generator=seeded(0))
    prior.train()
    got = prior.generate(4, labels=1, generator=seeded(0))
    assert prior.training and all(m.training for m in prior.modules())
    assert torch.equal(got, expected)


# --------------------------------------------------------------------------- errors
def test_bad_inputs_raise():
    cond, uncond = make(num_classes=3), make()
    good = torch.randint(0, K, (2, 3, 5))
    with pytest.raises(ValueError, match="out of range"):
        cond.logits(torch.full((2, 3, 5), K))
    with pytest.raises(ValueError, match="out of range"):
        cond.logits(-good - 1)
    with pytest.raises(ValueError, match="shape"):
        cond.logits(torch.randint(0, K, (2, 5, 3)))
    with pytest.raises(ValueError, match="shape"):
        cond.logits(torch.randint(0, K, (3, 5)))
    with pytest.raises(ValueError, match="integer"):
        cond.logits(good.float())
    with pytest.raises(ValueError, match="unconditional"):
        uncond.logits(good, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="unconditional"):
        uncond.generate(2, labels=0)
    with pytest.raises(ValueError, match="unknown label"):
        cond.logits(good, torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="unknown label"):
        cond.generate(2, labels=3)
    with pytest.raises(ValueError, match="labels"):
        cond.generate(2, labels=[0, 1, 2])
    with pytest.raises(ValueError, match="cfg_scale"):
        uncond.generate(2, cfg_scale=2.0)
    with pytest.raises(ValueError):
        cond.generate(0)
    with pytest.raises(ValueError, match="temperature"):
        cond.generate(2, temperature=0.0)
    with pytest.raises(ValueError, match="cache_implementation"):
        cond.generate(2, cache_implementation="paged")


# --------------------------------------------------------------------------- checkpoints
def test_save_load_round_trip(tmp_path):
    prior = make(code_shape=(2, 3), layout="frames", num_classes=2, initializer_range=0.2)
    prior.train()
    path = prior.save_pretrained(tmp_path / "prior")
    loaded = TransformerPrior.from_pretrained(path)
    assert not loaded.training and loaded.config == prior.config
    assert json.loads((path / "config.json").read_text())["config"]["code_shape"] == [2, 3]
    prior.eval()
    codes, labels = torch.randint(0, K, (3, 2, 3)), torch.tensor([0, 1, 1])
    assert torch.equal(loaded.logits(codes, labels), prior.logits(codes, labels))
    assert torch.equal(loaded.generate(3, labels, generator=seeded(0)),
                       prior.generate(3, labels, generator=seeded(0)))


# --------------------------------------------------------------------------- learning
def _toy_batch(batch: int, generator: torch.Generator, shape=(3, 4)):
    """Class c fills the grid with ``(2 * position + 5 * c) % K``, plus 10% random codes."""
    labels = torch.randint(0, 3, (batch,), generator=generator)
    pos = torch.arange(shape[0] * shape[1]).reshape(shape)
    codes = (2 * pos + 5 * labels[:, None, None]) % K
    noise = torch.rand(codes.shape, generator=generator) < 0.1
    codes = torch.where(noise, torch.randint(0, K, codes.shape, generator=generator), codes)
    return codes, labels


def test_short_training_learns_label_pattern():
    prior = make(code_shape=(3, 4), num_classes=3, hidden_size=64, num_heads=4).train()
    opt = torch.optim.AdamW(prior.parameters(), lr=3e-3, weight_decay=0.0)
    gen = seeded(0)
    losses = []
    for _ in range(100):
        codes, labels = _toy_batch(32, gen)
        loss = prior.loss(codes, labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-10:]) / 10 < 0.5 * sum(losses[:10]) / 10
    labels = torch.tensor([0, 1, 2] * 4)
    samples = prior.generate(12, labels, temperature=0.7, generator=seeded(1))
    pos = torch.arange(12).reshape(3, 4)
    expected = (2 * pos + 5 * labels[:, None, None]) % K
    assert (samples == expected).float().mean() > 0.8
    assert prior.training  # generate restored train mode
