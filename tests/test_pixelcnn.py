"""Tests of the Gated PixelCNN prior: causality, no blind spot, layouts, sampling, checkpoints,
learning and class conditioning. Tiny configs; the whole file runs in a few seconds on a CPU."""
from __future__ import annotations

import math

import pytest
import torch

from vqgen.priors.pixelcnn import PixelCNNPrior, PixelCNNPriorConfig, pixelcnn_debug


def tiny(**overrides) -> PixelCNNPrior:
    torch.manual_seed(0)
    model = pixelcnn_debug(**overrides)
    return model.eval()


def raster_order(model: PixelCNNPrior) -> list[tuple[int, ...]]:
    """Positions of ``code_shape`` in the prior's sampling order."""
    index = torch.arange(math.prod(model.code_shape)).reshape(1, *model.code_shape)
    grid = model.to_grid(index)[0]  # (H, W) of flat indices into code_shape
    return [tuple(int(i) for i in torch.unravel_index(flat, model.code_shape))
            for flat in grid.flatten()]


def check_causal(model: PixelCNNPrior, steps: list[int]) -> None:
    """Changing the code at order position ``i`` leaves logits at positions ``<= i`` unchanged
    and changes some later position (when there is one)."""
    order = raster_order(model)
    gen = torch.Generator().manual_seed(1)
    codes = torch.randint(0, model.codebook_size, (2, *model.code_shape), generator=gen)
    base = model.logits(codes)
    for i in steps:
        pos = order[i]
        changed = codes.clone()
        changed[(slice(None), *pos)] = (changed[(slice(None), *pos)] + 1) % model.codebook_size
        diff = (model.logits(changed) - base).abs().amax(dim=(0, 1))  # code_shape
        diffs = torch.stack([diff[p] for p in order])  # in raster order
        assert diffs[: i + 1].max() == 0, f"logits at or before order position {i} changed"
        if i + 1 < len(order):
            assert diffs[i + 1:].max() > 0, f"no later logit depends on order position {i}"


# --------------------------------------------------------------------------- config
@pytest.mark.parametrize("bad", [dict(codebook_size=1), dict(code_shape=()),
                                 dict(code_shape=(0, 4)), dict(code_shape=(2, -1)),
                                 dict(code_shape=(1, 2, 3, 4)), dict(layout="columns"),
                                 dict(layout="frames", code_shape=(8,)), dict(kernel_size=4),
                                 dict(num_layers=0), dict(label_dropout=1.0), dict(num_classes=0)])
def test_bad_config_raises(bad):
    with pytest.raises(ValueError):
        PixelCNNPriorConfig(**bad)


def test_unknown_config_key_raises():
    with pytest.raises(ValueError, match="unknown"):
        PixelCNNPrior.from_config(codebook_size=8, code_shape=(4, 4), hiden=3)


def test_defaults_and_list_code_shape():
    cfg = PixelCNNPriorConfig(code_shape=[3, 5])
    assert cfg.code_shape == (3, 5) and cfg.codebook_size == 512 and cfg.layout == "raster"


# --------------------------------------------------------------------------- causality
def test_logits_shape_and_causality_non_square():
    model = tiny(code_shape=(4, 6), kernel_size=5)
    logits = model.logits(torch.randint(0, 16, (3, 4, 6)))
    assert logits.shape == (3, 16, 4, 6) and logits.dtype == torch.float32
    check_causal(model, [0, 3, 5, 6, 11, 14, 22])


def test_no_blind_spot():
    """The last position's logits depend on every earlier position (3 layers, k=5 cover 4x6)."""
    model = tiny(code_shape=(4, 6), kernel_size=5)
    gen = torch.Generator().manual_seed(2)
    codes = torch.randint(0, 16, (1, 4, 6), generator=gen)
    for target in [(3, 5), (2, 0), (1, 3)]:
        base = model.logits(codes)[0, :, target[0], target[1]]
        for r in range(4):
            for c in range(6):
                if (r, c) >= target:
                    continue
                changed = codes.clone()
                changed[0, r, c] = (changed[0, r, c] + 1) % 16
                out = model.logits(changed)[0, :, target[0], target[1]]
                assert not torch.equal(out, base), f"{target} is blind to ({r}, {c})"


def test_sequence_shapes_1d_and_1xT():
    seq = tiny(code_shape=(10,))
    assert seq.grid_shape == (1, 10)
    assert seq.logits(torch.randint(0, 16, (2, 10))).shape == (2, 16, 10)
    check_causal(seq, [0, 4, 9])
    row = tiny(code_shape=(1, 10))
    assert row.logits(torch.randint(0, 16, (2, 1, 10))).shape == (2, 16, 1, 10)
    check_causal(row, [0, 4, 9])
    # same weights -> the (T,) and (1, T) priors compute the same function
    row.load_state_dict(seq.state_dict())
    codes = torch.randint(0, 16, (2, 10))
    torch.testing.assert_close(seq.logits(codes), row.logits(codes[:, None])[:, :, 0])


def test_frames_layout_is_frame_major_and_causal():
    model = tiny(code_shape=(3, 5), layout="frames")  # (Q, T)
    assert model.grid_shape == (5, 3)
    order = raster_order(model)
    assert order[:4] == [(0, 0), (1, 0), (2, 0), (0, 1)]  # all levels of frame 0, then frame 1
    assert model.logits(torch.randint(0, 16, (2, 3, 5))).shape == (2, 16, 3, 5)
    check_causal(model, [0, 1, 2, 3, 7, 13])


def test_multi_codebook_grid_layout():
    model = tiny(code_shape=(2, 3, 3))  # (Q, h, w): levels of a position are consecutive
    assert raster_order(model)[:3] == [(0, 0, 0), (1, 0, 0), (0, 0, 1)]
    check_causal(model, [0, 1, 5, 10])


# --------------------------------------------------------------------------- errors
def test_input_errors():
    model = tiny(code_shape=(4, 4))
    with pytest.raises(ValueError, match="out of range"):
        model.logits(torch.full((1, 4, 4), 16))
    with pytest.raises(ValueError, match="out of range"):
        model.loss(torch.full((1, 4, 4), -1))
    with pytest.raises(ValueError, match="shape"):
        model.logits(torch.zeros(1, 4, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="integer"):
        model.logits(torch.zeros(1, 4, 4))
    with pytest.raises(ValueError, match="unconditional"):
        model.logits(torch.zeros(1, 4, 4, dtype=torch.long), labels=torch.tensor([0]))
    with pytest.raises(ValueError, match="unconditional"):
        model.generate(2, labels=0)
    with pytest.raises(ValueError):
        model.generate(0)
    with pytest.raises(ValueError):
        model.generate(2, temperature=0)
    with pytest.raises(ValueError, match="cfg_scale"):
        model.generate(2, cfg_scale=2.0)
    cond = tiny(code_shape=(4, 4), num_classes=3)
    with pytest.raises(ValueError, match="unknown label"):
        cond.logits(torch.zeros(2, 4, 4, dtype=torch.long), labels=torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="unknown label"):
        cond.generate(2, labels=5)


# --------------------------------------------------------------------------- sampling
def test_generate_shape_dtype_range():
    model = tiny(code_shape=(3, 5), num_classes=2)
    out = model.generate(4, labels=[0, 1, 1, 0], top_k=5, top_p=0.9, temperature=0.8,
                         generator=torch.Generator().manual_seed(0))
    assert out.shape == (4, 3, 5) and out.dtype == torch.long
    assert 0 <= int(out.min()) and int(out.max()) < 16


@pytest.mark.parametrize("code_shape,extra", [((4, 6), {}), ((12,), {"kernel_size": 3}),
                                              ((3, 5), {"layout": "frames"}),
                                              ((13, 3), {"num_layers": 2, "kernel_size": 3})])
def test_fast_generate_equals_naive(code_shape, extra):
    """The cached sampler draws the naive sampler's codes; (12,) and (13, 3) are larger than
    the receptive field, (3, 5) frames is non-square."""
    model = tiny(code_shape=code_shape, **extra)
    fast = model.generate(3, generator=torch.Generator().manual_seed(5))
    naive = model.generate_naive(3, generator=torch.Generator().manual_seed(5))
    assert torch.equal(fast, naive)


def test_fast_equals_naive_with_cfg_and_restores_train_mode():
    model = tiny(code_shape=(4, 4), num_classes=3, dropout=0.2).train()
    kw = dict(labels=[0, 2], cfg_scale=3.0, top_p=0.95)
    fast = model.generate(2, generator=torch.Generator().manual_seed(3), **kw)
    naive = model.generate_naive(2, generator=torch.Generator().manual_seed(3), **kw)
    assert torch.equal(fast, naive)
    assert model.training  # mode restored
    again = model.generate(2, generator=torch.Generator().manual_seed(3), **kw)
    assert torch.equal(fast, again)  # no dropout / label dropout during generation


def test_cfg_scale_one_is_plain_conditional_sampling():
    model = tiny(code_shape=(4, 4), num_classes=3)
    with torch.no_grad():  # make the labels matter
        for layer in model.layers:
            layer.label_bias.weight.normal_()
    a = model.generate(4, labels=1, cfg_scale=1.0, generator=torch.Generator().manual_seed(9))
    b = model.generate(4, labels=1, generator=torch.Generator().manual_seed(9))
    c = model.generate_naive(4, labels=torch.tensor([1, 1, 1, 1]),
                             generator=torch.Generator().manual_seed(9))
    assert torch.equal(a, b) and torch.equal(a, c)
    guided = model.generate(4, labels=1, cfg_scale=2.5, generator=torch.Generator().manual_seed(9))
    assert not torch.equal(a, guided)


# --------------------------------------------------------------------------- checkpoints
def test_save_load_round_trip(tmp_path):
    model = tiny(code_shape=(3, 5), layout="frames", num_classes=2)
    model.save_pretrained(tmp_path / "prior")
    loaded = PixelCNNPrior.from_pretrained(tmp_path / "prior")
    assert not loaded.training and loaded.config == model.config
    codes = torch.randint(0, 16, (2, 3, 5))
    assert torch.equal(model.logits(codes, labels=[0, 1]), loaded.logits(codes, labels=[0, 1]))


# --------------------------------------------------------------------------- learning
def train(model: PixelCNNPrior, codes: torch.Tensor, labels=None, steps: int = 100,
          lr: float = 1e-2) -> tuple[float, float]:
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    gen = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(steps):
        idx = torch.randint(0, codes.shape[0], (32,), generator=gen)
        loss = model.loss(codes[idx], None if labels is None else labels[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    model.eval()
    return sum(losses[:5]) / 5, sum(losses[-5:]) / 5


def test_learns_deterministic_pattern():
    """Diagonal stripes with a random phase: after the first code everything is determined."""
    torch.manual_seed(0)
    model = pixelcnn_debug(codebook_size=8, code_shape=(4, 5))
    phase = torch.randint(0, 8, (256, 1, 1))
    i, j = torch.meshgrid(torch.arange(4), torch.arange(5), indexing="ij")
    codes = (phase + i + j) % 8  # (256, 4, 5)
    first, last = train(model, codes)
    assert last < 0.35 * first, (first, last)
    # held-out NLL: about log(8) for the first code, near 0 for the rest
    nll = model.nll(codes[:16])
    assert nll.shape == (16,)
    nats_per_code = nll.mean() / 20
    assert nats_per_code < 0.5


def test_class_conditioning_matters():
    torch.manual_seed(0)
    model = pixelcnn_debug(codebook_size=8, code_shape=(3, 3), num_classes=2, label_dropout=0.1)
    labels = torch.arange(128) % 2
    codes = torch.where(labels[:, None, None] == 0, 1, 5).expand(128, 3, 3).contiguous()
    train(model, codes, labels, steps=80)
    gen = torch.Generator().manual_seed(0)
    zeros = model.generate(8, labels=0, generator=gen)
    fives = model.generate(8, labels=1, cfg_scale=2.0, generator=gen)
    assert (zeros == 1).float().mean() > 0.9
    assert (fives == 5).float().mean() > 0.9
