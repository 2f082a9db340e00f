"""TransformerPrior over (Q, T) codes: the delay pattern (MusicGen) next to frame-major.

Causality is checked in each layout's own order: the logits of a code never depend on a code
of the same or a later step (frame-major: one code per step; delay: step ``t + q``)."""
from __future__ import annotations

import pytest
import torch

from vqgen.priors.transformer import TransformerPrior, transformer_prior_debug

K, Q, T = 8, 3, 5


def make(layout: str, **overrides) -> TransformerPrior:
    torch.manual_seed(0)
    return transformer_prior_debug(codebook_size=K, code_shape=(Q, T), layout=layout,
                                   initializer_range=0.3, **overrides).eval()


def step_of(layout: str) -> torch.Tensor:
    """The step at which each code ``(q, t)`` is predicted, ``(Q, T)``."""
    q, t = torch.meshgrid(torch.arange(Q), torch.arange(T), indexing="ij")
    return t + q if layout == "delay" else t * Q + q


def codes_batch(b: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, K, (b, Q, T), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("layout", ["frames", "delay"])
def test_causal_in_the_layouts_order(layout):
    prior = make(layout, num_classes=2)
    codes, labels = codes_batch(), torch.tensor([0, 1])
    base = prior.logits(codes, labels)
    steps = step_of(layout)
    for q in range(Q):
        for t in range(T):
            changed = codes.clone()
            changed[:, q, t] = (changed[:, q, t] + 1) % K
            diff = (prior.logits(changed, labels) - base).abs().amax(dim=(0, 1))  # (Q, T)
            same_or_earlier = steps <= steps[q, t]
            assert diff[same_or_earlier].max() == 0, f"({q}, {t}) leaked into an earlier step"
            later = ~same_or_earlier
            if later.any():
                assert diff[later].max() > 1e-5, f"no later code depends on ({q}, {t})"


def test_delay_sees_lower_levels_of_the_same_frame_and_later_frames_of_level_0():
    prior = make("delay")
    codes = codes_batch()
    base = prior.logits(codes)
    bumped = codes.clone()
    bumped[:, 0, 2] = (bumped[:, 0, 2] + 1) % K  # level 0, frame 2: step 2
    diff = (prior.logits(bumped) - base).abs().amax(dim=(0, 1))
    assert diff[1, 2] > 1e-5   # level 1 of frame 2 (step 3) sees it
    assert diff[2, 1] > 1e-5   # level 2 of frame 1 (step 3) sees a later frame of level 0
    assert diff[1, 1] == 0     # level 1 of frame 1 (step 2) is simultaneous: does not see it


def test_delay_tokens_and_vocabulary():
    prior = make("delay", num_classes=2)
    codes = torch.arange(Q * T).reshape(1, Q, T) % K
    tokens = prior._delay_tokens(codes)[0]                      # (T + Q - 1, Q)
    assert tokens.shape == (T + Q - 1, Q) and prior.seq_len == T + Q - 1
    pad = [Q * K + q for q in range(Q)]
    for s in range(T + Q - 1):
        for q in range(Q):
            t = s - q
            expected = q * K + int(codes[0, q, t]) if 0 <= t < T else pad[q]
            assert int(tokens[s, q]) == expected
    # Q levels of K codes, Q padding tokens, 2 class start tokens + the null one
    assert prior.lm.config.vocab_size == Q * K + Q + 3
    assert prior.lm.config.max_position_embeddings == T + Q - 1


@pytest.mark.parametrize("layout", ["frames", "delay"])
def test_logits_shapes_and_loss(layout):
    prior = make(layout, num_classes=2)
    codes = codes_batch(3)
    logits = prior.logits(codes, [0, 1, 1])
    assert logits.shape == (3, K, Q, T)
    nll = prior.nll(codes, [0, 1, 1])
    assert nll.shape == (3,)
    assert torch.allclose(prior.loss(codes, [0, 1, 1]), nll.mean() / (Q * T), atol=1e-5)


@pytest.mark.parametrize("impl", ["dynamic", "static"])
@pytest.mark.parametrize("kwargs", [dict(labels=[0, 1, 1, 0]),
                                    dict(labels=1, cfg_scale=3.0, top_k=4),
                                    dict(labels=0, top_p=0.8, temperature=0.7)])
def test_delay_cached_equals_uncached(impl, kwargs):
    prior = make("delay", num_classes=2)
    cached = prior.generate(4, generator=torch.Generator().manual_seed(2),
                            cache_implementation=impl, **kwargs)
    uncached = prior.generate_uncached(4, generator=torch.Generator().manual_seed(2), **kwargs)
    assert cached.shape == (4, Q, T) and cached.dtype == torch.long
    assert 0 <= int(cached.min()) and int(cached.max()) < K
    assert torch.equal(cached, uncached)


def test_delay_unconditional_and_eager_attention():
    prior = make("delay", attn_implementation="eager")
    a = prior.generate(3, generator=torch.Generator().manual_seed(0), cache_implementation="static")
    b = prior.generate_uncached(3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b)


def test_delay_is_deterministic_for_a_seed_and_cfg_changes_samples():
    prior = make("delay", num_classes=2)
    labels = torch.tensor([0, 1] * 4)
    a = prior.generate(8, labels, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, prior.generate(8, labels, generator=torch.Generator().manual_seed(5)))
    assert not torch.equal(a, prior.generate(8, labels, generator=torch.Generator().manual_seed(6)))
    assert torch.equal(a, prior.generate(8, labels, cfg_scale=1.0,
                                         generator=torch.Generator().manual_seed(5)))
    guided = prior.generate(8, labels, cfg_scale=3.0, generator=torch.Generator().manual_seed(5))
    assert not torch.equal(a, guided)


def test_delay_greedy_path_is_the_teacher_forced_argmax():
    prior = make("delay", num_classes=2)
    greedy = prior.generate(2, labels=[0, 1], top_k=1, generator=torch.Generator().manual_seed(0))
    assert torch.equal(prior.logits(greedy, [0, 1]).argmax(1), greedy)


def test_delay_learns_a_label_pattern():
    prior = make("delay", num_classes=2, hidden_size=64, num_heads=4).train()
    opt = torch.optim.AdamW(prior.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    pos = torch.arange(Q * T).reshape(Q, T)
    for _ in range(80):
        labels = torch.randint(0, 2, (32,), generator=gen)
        codes = (3 * pos + 5 * labels[:, None, None]) % K
        loss = prior.loss(codes, labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    labels = torch.tensor([0, 1] * 3)
    samples = prior.generate(6, labels, temperature=0.5, generator=torch.Generator().manual_seed(1))
    expected = (3 * pos + 5 * labels[:, None, None]) % K
    assert (samples == expected).float().mean() > 0.9
    assert prior.training


def test_delay_save_load_round_trip(tmp_path):
    prior = make("delay", num_classes=2, id2label={0: "a", 1: "b"})
    loaded = TransformerPrior.from_pretrained(prior.save_pretrained(tmp_path / "p"))
    assert loaded.config == prior.config and loaded.config.layout == "delay"
    codes = codes_batch()
    assert torch.equal(loaded.logits(codes, "b"), prior.logits(codes, "b"))
    assert torch.equal(loaded.generate(2, "a", generator=torch.Generator().manual_seed(0)),
                       prior.generate(2, "a", generator=torch.Generator().manual_seed(0)))
