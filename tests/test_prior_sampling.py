"""Sampling is reproducible per sample: the same seed gives the same codes whatever the
``batch_size``, for both priors and every Transformer layout, with and without guidance."""
from __future__ import annotations

import pytest
import torch

from vqgen.priors.base import sample_seeds, sample_uniforms
from vqgen.priors.pixelcnn import pixelcnn_debug
from vqgen.priors.transformer import transformer_prior_debug

K = 8
CASES = [
    pytest.param(pixelcnn_debug, dict(code_shape=(3, 4)), id="pixelcnn-raster"),
    pytest.param(pixelcnn_debug, dict(code_shape=(2, 4), layout="frames"), id="pixelcnn-frames"),
    pytest.param(transformer_prior_debug, dict(code_shape=(3, 4)), id="transformer-raster"),
    pytest.param(transformer_prior_debug, dict(code_shape=(2, 4), layout="frames"),
                 id="transformer-frames"),
    pytest.param(transformer_prior_debug, dict(code_shape=(2, 4), layout="delay"),
                 id="transformer-delay"),
]


def make(builder, overrides):
    torch.manual_seed(0)
    extra = dict(initializer_range=0.3) if builder is transformer_prior_debug else {}
    return builder(codebook_size=K, num_classes=3, **overrides, **extra).eval()


@pytest.mark.parametrize("builder,overrides", CASES)
@pytest.mark.parametrize("sampling", [dict(), dict(cfg_scale=2.0, top_k=5)])
def test_batch_size_does_not_change_samples(builder, overrides, sampling):
    prior = make(builder, overrides)
    labels = torch.arange(16) % 3
    whole = prior.generate(16, labels, generator=torch.Generator().manual_seed(7),
                           batch_size=16, **sampling)
    fours = prior.generate(16, labels, generator=torch.Generator().manual_seed(7),
                           batch_size=4, **sampling)
    odd = prior.generate(16, labels, generator=torch.Generator().manual_seed(7),
                         batch_size=5, **sampling)
    assert whole.shape == (16, *prior.code_shape)
    assert torch.equal(whole, fours) and torch.equal(whole, odd)
    # the first samples of a longer run are the samples of a shorter run with the same seed
    assert torch.equal(prior.generate(4, labels[:4], generator=torch.Generator().manual_seed(7),
                                      **sampling), whole[:4])
    # and the samples are not all alike (each sample has its own stream)
    assert len({tuple(x.flatten().tolist()) for x in whole}) > 8


def test_reference_samplers_are_batch_invariant_too():
    pix = make(pixelcnn_debug, dict(code_shape=(2, 3)))
    gen = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    assert torch.equal(pix.generate_naive(6, 1, generator=gen(), batch_size=4),
                       pix.generate(6, 1, generator=gen(), batch_size=6))
    tr = make(transformer_prior_debug, dict(code_shape=(2, 3), layout="delay"))
    assert torch.equal(tr.generate_uncached(6, 1, generator=gen(), batch_size=4),
                       tr.generate(6, 1, generator=gen(), batch_size=6))


def test_per_sample_streams_are_independent_of_their_neighbours():
    seeds = sample_seeds(5, torch.Generator().manual_seed(0))
    assert seeds.shape == (5,) and len(set(seeds.tolist())) == 5
    u = sample_uniforms(seeds, (3, 2))
    assert u.shape == (5, 3, 2) and 0 <= float(u.min()) and float(u.max()) < 1
    assert torch.equal(sample_uniforms(seeds[2:4], (3, 2)), u[2:4])


@pytest.mark.parametrize("builder", [pixelcnn_debug, transformer_prior_debug])
def test_bad_batch_size_raises(builder):
    prior = make(builder, dict(code_shape=(2, 3)))
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="batch_size"):
            prior.generate(4, labels=0, batch_size=bad)
