"""VectorQuantizer / ResidualVQ: hand-computed numerics, EMA, init, restarts, precision, DDP."""
from __future__ import annotations

import datetime
import os
import socket

import pytest
import torch
import torch.nn.functional as F

from vqgen.tokenizers.quantizers import (QuantizerOutput, ResidualVQ, ResidualVQConfig,
                                         VectorQuantizer, VectorQuantizerConfig, kmeans,
                                         nearest_codes)


def blobs(n_per: int, centers: torch.Tensor, std: float = 0.01, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    pts = centers.repeat_interleave(n_per, 0)
    return pts + std * torch.randn(pts.shape, generator=g)


def fixed_vq(codebook: torch.Tensor, **options) -> VectorQuantizer:
    """A VQ with a given codebook and no k-means init (EMA state consistent with it)."""
    k, d = codebook.shape
    q = VectorQuantizer(d, k, kmeans_init=False, **options)
    q.embed.data.copy_(codebook)
    if q.config.use_ema:
        q.embed_sum.copy_(codebook * q.cluster_size.unsqueeze(1))
    return q


# --------------------------------------------------------------------------- core numerics
def test_straight_through_gradient_reaches_encoder():
    torch.manual_seed(0)
    encoder = torch.nn.Linear(6, 8)
    q = VectorQuantizer(8, 16)
    z = encoder(torch.randn(5, 7, 6))
    out = q(z)
    assert isinstance(out, QuantizerOutput)
    assert out.quantized.shape == z.shape and out.codes.shape == (5, 7)
    assert out.codes.dtype == torch.long
    # value is the code vector (eval: no EMA update in between) ...
    q.eval()
    torch.testing.assert_close(q(z).quantized.detach(), q.decode(q.encode(z)))
    # ... gradient is the identity (straight-through)
    zz = z.detach().requires_grad_()
    q(zz).quantized.mul(3.0).sum().backward()
    torch.testing.assert_close(zz.grad, torch.full_like(zz, 3.0))
    out = q(z)
    (out.quantized.sum() + out.loss).backward()
    assert encoder.weight.grad is not None and encoder.weight.grad.abs().sum() > 0


def test_commitment_loss_is_beta_mse_to_stopgrad_codes():
    cb = torch.tensor([[0.0, 0.0], [1.0, 1.0], [-2.0, 0.5]])
    q = fixed_vq(cb).eval()
    z = torch.tensor([[0.1, -0.2], [0.9, 1.3], [-1.8, 0.3]], requires_grad=True)
    out = q(z)
    assert out.codes.tolist() == [0, 1, 2]
    e = cb[[0, 1, 2]]
    expected = 0.25 * ((z.detach() - e) ** 2).mean()
    torch.testing.assert_close(out.loss, expected)
    torch.testing.assert_close(out.metrics["mse"], ((z.detach() - e) ** 2).mean())
    out.loss.backward()  # d/dz of beta*mean((z - sg(e))^2)
    torch.testing.assert_close(z.grad, 0.25 * 2 * (z.detach() - e) / z.numel())
    # codebook loss added (and reaching the codebook) when not EMA
    q2 = fixed_vq(cb, use_ema=False).eval()
    out2 = q2(z.detach())
    torch.testing.assert_close(out2.loss, expected / 0.25 * 1.25)
    out2.loss.backward()
    torch.testing.assert_close(q2.embed.grad, -2 * (z.detach() - e) / z.numel())


def test_ema_moves_winning_codes_toward_their_data_exactly():
    cb = torch.tensor([[0.0, 0.0], [5.0, 5.0], [-5.0, 5.0]])
    q = fixed_vq(cb, decay=0.9, dead_code_threshold=0.0).train()
    q.cluster_size[2] = 0.0                           # an empty code: Laplace smoothing keeps it finite
    q.embed_sum[2] = 0.0
    z = torch.tensor([[1.0, 0.0], [1.0, 2.0], [4.0, 6.0]])
    out = q(z)
    assert out.codes.tolist() == [0, 0, 1]
    counts, sums = torch.tensor([2.0, 1.0, 0.0]), torch.tensor([[2.0, 2.0], [4.0, 6.0], [0.0, 0.0]])
    cs = 0.9 * torch.tensor([1.0, 1.0, 0.0]) + 0.1 * counts
    es = 0.9 * cb * torch.tensor([[1.0], [1.0], [0.0]]) + 0.1 * sums
    n = cs.sum()
    smoothed = (cs + 1e-5) / (n + 3 * 1e-5) * n
    torch.testing.assert_close(q.cluster_size, cs)
    torch.testing.assert_close(q.embed_sum, es)
    torch.testing.assert_close(q.embed, es / smoothed[:, None])
    assert torch.isfinite(q.embed).all()
    # repeated steps: code 0 converges to the mean of its data, code 1 to its point
    for _ in range(100):
        q(z)
    torch.testing.assert_close(q.embed[0], torch.tensor([1.0, 1.0]), atol=1e-2, rtol=0)
    torch.testing.assert_close(q.embed[1], torch.tensor([4.0, 6.0]), atol=1e-2, rtol=0)


def test_kmeans_init_puts_codes_on_clusters():
    torch.manual_seed(0)
    centers = torch.tensor([[4.0, 0, 0], [-4.0, 0, 0], [0, 4.0, 0], [0, 0, -4.0]])
    z = blobs(64, centers)
    q = VectorQuantizer(3, 16, dead_code_threshold=0.0).train()
    assert not bool(q.initted)
    q(z[torch.randperm(len(z))])
    assert bool(q.initted)
    d = torch.cdist(q.codebook, centers)              # (16, 4)
    assert (d.min(0).values < 0.1).all()              # every blob has a code on it
    assert (d.min(1).values < 0.1).all()              # every code sits on a blob
    # init happens once: a second batch far away does not re-run k-means
    before = q.codebook.clone()
    q.eval()(z + 100)
    assert torch.equal(before, q.codebook)


def test_kmeans_helper_reseeds_empty_clusters():
    x = blobs(50, torch.tensor([[0.0, 0.0], [10.0, 10.0]]))
    cents, counts = kmeans(x, 2, iters=5)
    assert counts.sum() == 100 and sorted(counts.tolist()) == [50.0, 50.0]
    assert torch.cdist(cents, torch.tensor([[0.0, 0.0], [10.0, 10.0]])).min(0).values.max() < 0.1


def test_starved_code_is_restarted_from_encoder_outputs():
    cb = torch.tensor([[0.0, 0.0], [3.0, 3.0], [100.0, 100.0]])
    q = fixed_vq(cb, decay=0.5, dead_code_threshold=0.2).train()
    z = blobs(20, torch.tensor([[0.0, 0.0], [3.0, 3.0]]), std=0.1)
    dead = []
    for _ in range(3):
        dead.append(q(z).metrics["dead_codes"].item())
        if dead[-1] == 0:
            torch.testing.assert_close(q.embed[2], cb[2], atol=0.01, rtol=0)  # Laplace only
    # cluster_size[2]: 1 -> .5 -> .25 -> .125 < .2: restarted on step 3 only
    assert dead == [0.0, 0.0, 1.0]
    assert torch.cdist(q.embed[2:3], z).min() == 0      # now one of the inputs
    assert q.cluster_size[2] == pytest.approx(0.4)
    torch.testing.assert_close(q.embed_sum[2], q.embed[2] * 0.4)
    assert (q.cluster_size[:2] > 5).all()


def test_codes_in_range_and_decode_validates():
    torch.manual_seed(0)
    q = VectorQuantizer(4, 7)
    out = q(100 * torch.randn(3, 50, 4))
    assert out.codes.min() >= 0 and out.codes.max() < 7
    assert 0 < out.metrics["usage"] <= 1 and 1 <= out.metrics["perplexity"] <= 7
    for m in ("perplexity", "usage", "dead_codes", "mse"):
        assert out.metrics[m].dim() == 0
    with pytest.raises(ValueError, match=r"\[0, 7\)"):
        q.decode(torch.tensor([0, 7]))
    with pytest.raises(ValueError, match=r"\[0, 7\)"):
        q.decode(torch.tensor([-1]))
    with pytest.raises(ValueError, match="integer"):
        q.decode(torch.tensor([0.0]))


def test_encode_has_no_state_change_and_matches_forward():
    torch.manual_seed(0)
    q = VectorQuantizer(4, 8)
    z = torch.randn(40, 4)
    q(z)
    state = {k: v.clone() for k, v in q.state_dict().items()}
    codes = q.encode(z)
    assert codes.shape == (40,)
    for k, v in q.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert torch.equal(codes, q.eval()(z).codes)


# --------------------------------------------------------------------------- precision / chunking
def test_bf16_autocast_distances_fp32_and_same_indices():
    # codes 1.0 and 1.003 collapse to the same bf16 value; z = 1 + 2**-7 is exact in bf16.
    d = 8
    cb = torch.stack([torch.full((d,), 1.0), torch.full((d,), 1.003), torch.full((d,), -1.0)])
    z = torch.full((3, d), 1.0 + 2 ** -7).to(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        codes, dist = nearest_codes(z, cb)
    assert dist.dtype == torch.float32
    assert codes.tolist() == [1, 1, 1]                 # bf16 distances would tie -> 0
    torch.manual_seed(0)
    q = VectorQuantizer(16, 64)
    q(torch.randn(512, 16))
    zb = torch.randn(4, 100, 16).to(torch.bfloat16)
    ref = q.eval()(zb.float())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = q(zb)
        enc = q.encode(zb)
    assert torch.equal(out.codes, ref.codes) and torch.equal(enc, ref.codes)
    assert out.loss.dtype == torch.float32 and out.quantized.dtype == torch.bfloat16


def test_chunked_equals_unchunked():
    torch.manual_seed(0)
    z = torch.randn(301, 8)
    mods = []
    for chunk in (None, 7):
        torch.manual_seed(1)
        q = VectorQuantizer(8, 33, chunk_size=chunk, dead_code_threshold=1.0)
        outs = [q(z + i) for i in range(3)]
        mods.append((q, outs))
    (qa, oa), (qb, ob) = mods
    for a, b in zip(oa, ob):
        assert torch.equal(a.codes, b.codes)
        torch.testing.assert_close(a.quantized, b.quantized)
        torch.testing.assert_close(a.loss, b.loss)
    for k, v in qa.state_dict().items():
        torch.testing.assert_close(v, qb.state_dict()[k])


def test_large_codebook_chunked_without_one_hot(monkeypatch):
    def no_one_hot(*a, **k):
        raise AssertionError("one_hot must not be used")
    monkeypatch.setattr(F, "one_hot", no_one_hot)
    torch.manual_seed(0)
    n, d, k = 4096, 64, 65536
    q = VectorQuantizer(d, k, kmeans_init=False, chunk_size=512).train()
    z = torch.randn(n, d)
    before = q.codebook.clone()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], acc_events=True,
                                profile_memory=True) as prof:
        out = q(z)
    biggest = max(e.self_cpu_memory_usage for e in prof.events())
    assert biggest < n * k * 4 // 4                    # nothing close to an N x K fp32 block
    assert out.codes.shape == (n,) and 0 <= out.codes.min() and out.codes.max() < k
    assert torch.equal(out.codes[:128], torch.cdist(z[:128], before).argmin(1))
    torch.testing.assert_close(q.cluster_size.sum(), torch.tensor(0.99 * k + 0.01 * n))


# --------------------------------------------------------------------------- modes
def test_cosine_mode_unit_codes_and_scale_invariance():
    torch.manual_seed(0)
    q = VectorQuantizer(6, 12, cosine=True)
    z = torch.randn(200, 6)
    out = q(z)
    torch.testing.assert_close(q.codebook.norm(dim=-1), torch.ones(12))
    torch.testing.assert_close(out.quantized.norm(dim=-1), torch.ones(200))
    q.eval()
    expected = (F.normalize(z, dim=-1) @ q.codebook.T).argmax(1)
    assert torch.equal(q.encode(z), expected)
    assert torch.equal(q.encode(z * 7.5), expected)
    qp = VectorQuantizer(6, 12, cosine=True, use_ema=False)
    qp.embed.data.mul_(3.0)                           # raw parameter scale does not matter
    torch.testing.assert_close(qp.codebook.norm(dim=-1), torch.ones(12))


def test_low_dim_lookup_projects_in_and_out():
    torch.manual_seed(0)
    q = VectorQuantizer(16, 32, codebook_dim=4)
    assert isinstance(q.project_in, torch.nn.Linear) and q.project_in.out_features == 4
    assert q.codebook.shape == (32, 4)
    z = torch.randn(2, 30, 16)
    out = q(z)
    assert out.quantized.shape == (2, 30, 16)
    (out.quantized.sum() + out.loss).backward()
    assert q.project_in.weight.grad.abs().sum() > 0 and q.project_out.weight.grad.abs().sum() > 0
    q.eval()
    torch.testing.assert_close(q(z).quantized, q.decode(q.encode(z)))
    assert isinstance(VectorQuantizer(16, 32).project_in, torch.nn.Identity)


# --------------------------------------------------------------------------- ResidualVQ
def test_residual_vq_error_decreases_with_levels():
    torch.manual_seed(0)
    r = ResidualVQ(8, 16, 4)
    z = torch.randn(4, 64, 8)
    out = r(z)
    assert out.codes.shape == (4, 64, 4) and out.quantized.shape == z.shape
    assert out.metrics["n_quantizers"] == 4 and out.metrics["perplexity"].dim() == 0
    r.eval()
    codes = r.encode(z)
    assert torch.equal(codes, r(z).codes)
    errs = [(r.decode(codes, n) - z).pow(2).mean().item() for n in range(1, 5)]
    assert all(a > b for a, b in zip(errs, errs[1:])), errs
    torch.testing.assert_close(r.decode(codes), r(z).quantized)
    torch.testing.assert_close(r(z, n_quantizers=2).quantized, r.decode(codes, 2))
    # loss sums the levels
    levels, res, loss = r.layers, z, 0.0
    for layer in levels:
        o = layer(res)
        loss, res = loss + o.loss, res - o.quantized
    torch.testing.assert_close(r(z).loss, loss)
    with pytest.raises(ValueError, match=r"\(\.\.\., 4\)"):
        r.decode(codes[..., :3])
    with pytest.raises(ValueError, match="n_quantizers"):
        r(z, n_quantizers=5)


def test_residual_vq_gradient_and_quantizer_dropout():
    torch.manual_seed(0)
    r = ResidualVQ(4, 8, 3, quantizer_dropout=1.0, dead_code_threshold=0.0).train()
    z = torch.randn(64, 4)
    r(z)                                              # k-means init of every level
    seen = set()
    for _ in range(25):
        books = [layer.codebook.clone() for layer in r.layers]
        zz = z.clone().requires_grad_()
        out = r(zz)
        n = int(out.metrics["n_quantizers"])
        seen.add(n)
        expected = sum(books[i][out.codes[:, i]] for i in range(n))
        torch.testing.assert_close(out.quantized, expected)
        out.quantized.sum().backward()
        torch.testing.assert_close(zz.grad, torch.ones_like(zz))   # identity via level 0
    assert seen <= {1, 2, 3} and len(seen) > 1
    r.eval()
    assert all(int(r(z).metrics["n_quantizers"]) == 3 for _ in range(5))


def test_residual_vq_lead_levels_code_lead_first_then_z_plus_what_they_left():
    torch.manual_seed(0)
    r = ResidualVQ(4, 16, 3, lead_levels=1, dead_code_threshold=0.0).train()
    lead, z = torch.randn(256, 4), 0.3 * torch.randn(256, 4)
    r(z, lead=lead)                                   # k-means init of every level
    r.eval()
    codes = r.encode(z, lead)
    assert torch.equal(codes, r(z, lead=lead).codes)
    # level 0 depends on lead alone; level 1 quantizes z + (lead - level 0)
    assert torch.equal(r.encode(torch.randn(256, 4), lead)[:, 0], codes[:, 0])
    q0 = r.layers[0].decode(codes[:, 0])
    assert torch.equal(codes[:, 1], r.layers[1].encode(z + lead - q0))
    errs = [(r.decode(codes, n) - (lead + z)).pow(2).mean().item() for n in (1, 2, 3)]
    assert errs[0] > errs[1] > errs[2], errs
    # gradients: lead through level 0, z through level 1 (identity each)
    r.train()
    zz, ll = z.clone().requires_grad_(), lead.clone().requires_grad_()
    r(zz, n_quantizers=3, lead=ll).quantized.sum().backward()
    torch.testing.assert_close(ll.grad, torch.ones_like(ll))
    torch.testing.assert_close(zz.grad, torch.ones_like(zz))
    with pytest.raises(ValueError, match="expected lead"):
        r(z)
    with pytest.raises(ValueError, match="lead of z's shape"):
        r.encode(z, lead[:10])
    with pytest.raises(ValueError, match="None without lead_levels=0"):
        ResidualVQ(4, 16, 3)(z, lead=lead)
    with pytest.raises(ValueError, match="lead_levels"):
        ResidualVQ(4, 16, 3, lead_levels=3)


# --------------------------------------------------------------------------- validation
def test_unknown_option_and_bad_config_raise():
    with pytest.raises(ValueError, match="unknown VectorQuantizerConfig key"):
        VectorQuantizer(8, 16, commitment=0.3)
    with pytest.raises(ValueError, match="unknown ResidualVQConfig key"):
        ResidualVQ.from_config(dim=8, codebook_size=16, levels=3)
    with pytest.raises(ValueError, match="decay"):
        VectorQuantizer(8, 16, decay=1.5)
    with pytest.raises(ValueError, match="codebook_size"):
        VectorQuantizer(8, 0)
    q = VectorQuantizer.from_config(dict(dim=8, codebook_size=16), beta=0.5)
    assert isinstance(q.config, VectorQuantizerConfig) and q.config.beta == 0.5
    assert ResidualVQ(8, 16, 3).config == ResidualVQConfig(8, 16, num_quantizers=3)


@pytest.mark.parametrize("bad, match", [
    (torch.randn(4, 5), r"\(\.\.\., 8\).*\(4, 5\)"),
    (torch.full((2, 8), float("nan")), "NaN/inf"),
    (torch.tensor([[float("inf")] * 8]), "NaN/inf"),
    (torch.ones(2, 8, dtype=torch.long), "floating-point"),
])
def test_bad_input_raises(bad, match):
    for m in (VectorQuantizer(8, 16), ResidualVQ(8, 16, 2)):
        with pytest.raises(ValueError, match=match):
            m(bad)
        with pytest.raises(ValueError, match=match):
            m.encode(bad)


def test_state_dict_round_trip_is_exact(tmp_path):
    torch.manual_seed(0)
    r = ResidualVQ(8, 16, 2, codebook_dim=4)
    z = torch.randn(100, 8)
    r(z)
    r.save_pretrained(tmp_path / "rvq")
    loaded = ResidualVQ.from_pretrained(tmp_path / "rvq")
    for k, v in r.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    # resume: the next training step is identical
    loaded.train()
    torch.manual_seed(3)
    a = r(z + 1)
    torch.manual_seed(3)
    b = loaded(z + 1)
    assert torch.equal(a.codes, b.codes)
    for k, v in r.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k


# --------------------------------------------------------------------------- distributed
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    import torch.distributed as dist
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world, timeout=datetime.timedelta(seconds=60))
    try:
        result = {}
        # 1) k-means init + restarts + EMA, different data per rank: codebooks stay identical
        torch.manual_seed(0)
        q = VectorQuantizer(4, 32, dead_code_threshold=0.5)
        r = ResidualVQ(4, 16, 3, quantizer_dropout=0.5)
        torch.manual_seed(100 + rank)                 # per-rank data and RNG
        for step in range(6):
            z = torch.randn(64 + 16 * rank, 4) * (1 + step)
            q(z)
            r(z)
        result["vq"] = q.state_dict()
        result["rvq"] = r.state_dict()
        # 2) no init/restart: the EMA step equals one process on the concatenated batch
        torch.manual_seed(0)
        p = VectorQuantizer(4, 8, kmeans_init=False, dead_code_threshold=0.0)
        g = torch.Generator().manual_seed(7)
        batches = [torch.randn(50, 4, generator=g) for _ in range(world)]
        p(batches[rank])
        result["plain"] = p.state_dict()
        torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_two_process_gloo_keeps_codebooks_identical(tmp_path):
    import torch.multiprocessing as mp
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    for part in ("vq", "rvq", "plain"):
        for k, v in r0[part].items():
            assert torch.equal(v, r1[part][k]), (part, k)
    assert bool(r0["vq"]["initted"])
    # all-reduced EMA == single process on both ranks' data
    torch.manual_seed(0)
    ref = VectorQuantizer(4, 8, kmeans_init=False, dead_code_threshold=0.0)
    g = torch.Generator().manual_seed(7)
    ref(torch.cat([torch.randn(50, 4, generator=g) for _ in range(2)]))
    for k, v in ref.state_dict().items():
        torch.testing.assert_close(r0["plain"][k], v)
