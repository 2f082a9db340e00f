"""The training loop: schedule, logging, checkpoints, exact resume, NaN guard, DDP (gloo, CPU)."""
from __future__ import annotations

import json
import math
import os
import random
import socket
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from vqgen.modeling import ConfigModel
from vqgen.training import (TrainConfig, TrainingDivergedError, build_optimizer, epoch_capped_steps,
                            init_distributed, train, warmup_cosine)


# --------------------------------------------------------------------------- a tiny model
@dataclass
class RegConfig:
    dim: int = 6
    hidden: int = 16
    dropout: float = 0.2


class Reg(ConfigModel):
    """Regression MLP with an EMA buffer updated in forward and dropout (so RNG state matters)."""

    config_class = RegConfig

    def __init__(self, config: RegConfig):
        super().__init__(config)
        self.inp = nn.Linear(config.dim, config.hidden)
        self.norm = nn.LayerNorm(config.hidden)
        self.drop = nn.Dropout(config.dropout)
        self.out = nn.Linear(config.hidden, 1)
        self.register_buffer("ema", torch.zeros(config.hidden))

    def forward(self, x):                       # (B, dim) -> (B,)
        h = self.inp(x)
        if self.training:
            with torch.no_grad():
                self.ema.lerp_(h.mean(0), 0.1)
        h = torch.relu(self.norm(h - self.ema))
        return self.out(self.drop(h)).squeeze(-1)

    def loss(self, x, y):
        return F.mse_loss(self(x), y)


def make_data(n=50, dim=6):
    g = torch.Generator().manual_seed(123)
    x = torch.randn(n, dim, generator=g)
    y = x @ torch.linspace(-1, 1, dim) + 0.5
    return TensorDataset(x, y)


def make_model(seed=0, **kw):
    torch.manual_seed(seed)
    return Reg(RegConfig(**kw))


def noisy_step(model, batch):
    """Uses python, numpy and torch RNGs so an unrestored stream changes the loss."""
    x, y = batch
    x = x + 0.01 * random.random() + 0.01 * torch.from_numpy(np.random.randn(*x.shape)).float()
    return model.loss(x, y), {"usage": torch.tensor(0.5)}


def killed_at(n):
    """A ``noisy_step`` that raises ``KeyboardInterrupt`` on its ``n``-th call (a killed run)."""
    calls = {"n": 0}

    def step(model, batch):
        calls["n"] += 1
        if calls["n"] == n:
            raise KeyboardInterrupt
        return noisy_step(model, batch)
    return step


def cfg(**kw):
    base = dict(steps=20, batch_size=8, lr=1e-2, warmup_steps=3, eval_every=0, checkpoint_every=10,
                log_every=1, progress=False, device="cpu", seed=7)
    return TrainConfig(**{**base, **kw})


def read_log(run_dir, component="tokenizer"):
    lines = (Path(run_dir) / "logs" / f"{component}.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def train_losses(records):
    return {r["step"]: r["loss"] for r in records if not r.get("eval")}


# --------------------------------------------------------------------------- unit pieces
def test_warmup_cosine_values():
    f = warmup_cosine(warmup_steps=4, total_steps=10, min_lr_ratio=0.1)
    assert [f(i) for i in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert f(4) == pytest.approx(1.0)
    assert f(7) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 3 / 6)))   # 0.55
    assert f(10) == pytest.approx(0.1) and f(50) == pytest.approx(0.1)
    assert warmup_cosine(0, 10, 0.0)(0) == 1.0


def test_config_errors_name_expected_and_got(tmp_path):
    for bad, match in [({"steps": 0}, "steps must be an int >= 1, got 0"),
                       ({"batch_size": 0}, "batch_size"), ({"lr": 0.0}, "lr must be"),
                       ({"min_lr_ratio": 2}, "min_lr_ratio"), ({"log_every": 0}, "log_every")]:
        with pytest.raises(ValueError, match=match):
            TrainConfig(**bad)
    assert TrainConfig(lr="1e-3").lr == 1e-3              # YAML 1.1 reads 1e-3 as a string
    with pytest.raises(ValueError, match="batch_size must be <= the 50 samples.*got 64"):
        train(make_model(), make_data(), tmp_path, cfg(batch_size=64), component="prior",
              step_fn=noisy_step)
    with pytest.raises(ValueError, match="component"):
        train(make_model(), make_data(), tmp_path, cfg(), component="vae", step_fn=noisy_step)
    with pytest.raises(ValueError, match="step_fn must return"):
        train(make_model(), make_data(), tmp_path, cfg(), component="prior",
              step_fn=lambda m, b: m.loss(*b))


def test_optimizer_groups_skip_decay_on_biases_and_norms():
    model = make_model()
    opt = build_optimizer(model, TrainConfig(weight_decay=0.1))
    decayed = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    assert decayed == {id(model.inp.weight), id(model.out.weight)}
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))


def test_lr_scales_give_named_parameters_their_own_lr_through_the_schedule_and_resume(tmp_path):
    model = make_model()
    opt = build_optimizer(model, TrainConfig(lr=1e-3, weight_decay=0.1, lr_scales={"out": 3.0}))
    lr_of = {id(p): (g["lr"], g["weight_decay"]) for g in opt.param_groups for p in g["params"]}
    assert lr_of[id(model.out.weight)] == (pytest.approx(3e-3), 0.1)
    assert lr_of[id(model.out.bias)] == (pytest.approx(3e-3), 0.0)
    assert lr_of[id(model.inp.weight)] == (1e-3, 0.1) and lr_of[id(model.norm.weight)] == (1e-3, 0.0)
    assert len(lr_of) == len(list(model.parameters()))
    nested = nn.Sequential(nn.Linear(2, 2), nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2)))
    lr_of = {id(p): g["lr"] for g in build_optimizer(nested, TrainConfig(lr=1.0, lr_scales={"1": 2.0, "1.0": 5.0}))
             .param_groups for p in g["params"]}                          # the longest prefix wins
    assert [lr_of[id(m.weight)] for m in (nested[0], nested[1][0], nested[1][1])] == [1.0, 5.0, 2.0]
    for bad in ({"ou": 2.0}, {"outer": 2.0}):           # whole name components only; none matches
        with pytest.raises(ValueError, match="lr_scales: expected prefixes.*matching none"):
            build_optimizer(model, TrainConfig(lr_scales=bad))
    for bad in ({"out": 0}, {"": 1.0}, ["out"]):
        with pytest.raises(ValueError, match="lr_scales must be None or a dict"):
            TrainConfig(lr_scales=bad)

    # the scaled group follows the same warmup-cosine at 3x; a killed-and-resumed run matches
    scaled = dict(lr_scales={"out": 3.0})
    ref = make_model()
    train(ref, make_data(), tmp_path / "ref", cfg(**scaled), component="tokenizer", step_fn=noisy_step)
    state = torch.load(tmp_path / "ref" / "train_state_tokenizer.pt", weights_only=True)
    lrs = sorted(g["lr"] for g in state["optimizer"]["param_groups"])
    mult = warmup_cosine(3, 20, 0.1)(20)
    assert lrs == pytest.approx([1e-2 * mult] * 2 + [3e-2 * mult] * 2)
    plain = make_model()
    train(plain, make_data(), tmp_path / "plain", cfg(), component="tokenizer", step_fn=noisy_step)
    assert not torch.allclose(plain.out.weight, ref.out.weight)   # the scale changed the run

    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train(make_model(), make_data(), run, cfg(**scaled), component="tokenizer", step_fn=killed_at(12))
    with pytest.raises(ValueError, match="expected lr_scales \\{'out': 3.0\\}.*got None"):
        train(make_model(), make_data(), run, cfg(), component="tokenizer", step_fn=noisy_step)
    model = make_model()
    train(model, make_data(), run, cfg(**scaled), component="tokenizer", step_fn=noisy_step)
    assert train_losses(read_log(run)) == train_losses(read_log(tmp_path / "ref"))
    for k, v in ref.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k


# --------------------------------------------------------------------------- the loop
def test_loss_decreases_and_lr_follows_schedule(tmp_path):
    model = make_model(dropout=0.0)
    result = train(model, make_data(), tmp_path, cfg(steps=60, warmup_steps=4, lr=2e-2,
                                                     min_lr_ratio=0.1),
                   component="prior", step_fn=lambda m, b: (m.loss(*b), {}))
    recs = [r for r in read_log(tmp_path, "prior") if not r.get("eval")]
    losses = [r["loss"] for r in recs]
    assert result.steps == 60 and result.resumed_from == 0 and not model.training
    assert np.mean(losses[-5:]) < 0.3 * np.mean(losses[:5])
    mult = warmup_cosine(4, 60, 0.1)
    lrs = {r["step"]: r["lr"] for r in recs}       # the lr used at step s is lr * mult(s - 1)
    for s in (1, 4, 5, 30, 60):
        assert lrs[s] == pytest.approx(2e-2 * mult(s - 1), rel=1e-9)
    assert lrs[1] < lrs[4] and lrs[60] < lrs[30] < lrs[5]


@pytest.mark.parametrize("cpu_amp", [False, True])
def test_cpu_amp_runs_the_step_under_bf16_autocast_only_when_asked(tmp_path, cpu_amp):
    seen = []

    def step(m, b):
        h = m.inp(b[0])
        seen.append((torch.is_autocast_enabled("cpu"), h.dtype))
        return F.mse_loss(m.out(torch.relu(h)).squeeze(-1).float(), b[1]), {}
    train(make_model(), make_data(), tmp_path, cfg(steps=3, cpu_amp=cpu_amp), component="prior",
          step_fn=step)
    expected = (True, torch.bfloat16) if cpu_amp else (False, torch.float32)
    assert seen == [expected] * 3


def test_jsonl_log_intervals_metrics_and_eval(tmp_path):
    calls = {"n": 0}

    def step_fn(model, batch):
        assert model.training and torch.is_grad_enabled()
        calls["n"] += 1
        return model.loss(*batch), {"usage": torch.tensor(float(calls["n"])), "const": 2}

    def eval_fn(model):
        assert not model.training and not torch.is_grad_enabled()
        return {"test_mse": 0.25}

    seen = []
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "tokenizer.jsonl").write_text('{"step": 99, "loss": 1.0}\n')  # stale
    result = train(make_model(), make_data(), tmp_path,
                   cfg(steps=10, log_every=3, eval_every=5, checkpoint_every=0),
                   component="tokenizer", step_fn=step_fn, eval_fn=eval_fn,
                   on_eval=lambda m, s: seen.append((s, m.training)))
    recs = read_log(tmp_path)
    train_recs = [r for r in recs if not r.get("eval")]
    evals = [r for r in recs if r.get("eval") is True]
    assert [r["step"] for r in train_recs] == [3, 6, 9, 10]
    assert [r["usage"] for r in train_recs] == [2.0, 5.0, 8.0, 10.0]   # interval means
    assert all(r["const"] == 2.0 and r["samples_per_second"] > 0 and r["seconds"] >= 0
               and {"loss", "lr", "grad_norm", "epoch"} <= set(r) for r in train_recs)
    assert [(r["step"], r["test_mse"]) for r in evals] == [(5, 0.25), (10, 0.25)]
    assert seen == [(5, False), (10, False)]
    assert result.eval_metrics == {"test_mse": 0.25} and result.last_metrics["usage"] == 10.0


def test_state_file_export_and_finished_rerun(tmp_path):
    model = make_model()
    first = train(model, make_data(), tmp_path, cfg(steps=12, checkpoint_every=5),
                  component="tokenizer", step_fn=noisy_step)
    state = torch.load(tmp_path / "train_state_tokenizer.pt", weights_only=True)
    assert state["finished"] is True and state["step"] == 12
    assert {"optimizer", "scheduler", "rng", "epoch", "batch_in_epoch"} <= set(state)
    final = {k: v.clone() for k, v in model.state_dict().items()}
    assert all(torch.equal(state["model"][k], v) for k, v in final.items())

    loaded = Reg.from_pretrained(tmp_path / "tokenizer")
    assert set(loaded.state_dict()) == set(final)
    assert not any(k.startswith(("module.", "_orig_mod.")) for k in loaded.state_dict())
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in final.items())

    def must_not_run(m, b):
        raise AssertionError("a finished run must not train again")
    fresh = make_model(seed=99)                         # different init: weights come from the state
    again = train(fresh, make_data(), tmp_path, cfg(steps=12, checkpoint_every=5),
                  component="tokenizer", step_fn=must_not_run)
    assert again.steps == 12 and again.resumed_from == 12
    assert again.last_metrics == first.last_metrics
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in final.items())


@pytest.mark.parametrize("log_every", [1, 3])   # 3: the interval 10..12 spans the checkpoint
def test_killed_run_resumes_on_the_same_trajectory(tmp_path, log_every):
    ref_model = make_model()
    train(ref_model, make_data(), tmp_path / "ref", cfg(log_every=log_every), component="tokenizer",
          step_fn=noisy_step)
    ref = train_losses(read_log(tmp_path / "ref"))

    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train(make_model(), make_data(), run, cfg(log_every=log_every), component="tokenizer",
              step_fn=killed_at(12))
    assert max(train_losses(read_log(run))) == (11 if log_every == 1 else 9)  # checkpoint at 10
    assert torch.load(run / "train_state_tokenizer.pt", weights_only=True)["step"] == 10

    random.seed(1), np.random.seed(1), torch.manual_seed(1)  # resume must not depend on these
    model = make_model(seed=5)
    result = train(model, make_data(), run, cfg(log_every=log_every), component="tokenizer",
                   step_fn=noisy_step)
    assert result.resumed_from == 10 and result.steps == 20
    steps = [r["step"] for r in read_log(run) if not r.get("eval")]
    assert steps == [r["step"] for r in read_log(tmp_path / "ref")]   # no duplicated lines
    assert steps[-1] == 20 and len(steps) == (20 if log_every == 1 else 7)
    assert train_losses(read_log(run)) == ref              # bit for bit on CPU
    for k, v in ref_model.state_dict().items():            # includes the EMA buffer
        assert torch.equal(model.state_dict()[k], v), k


def test_nan_loss_stops_without_overwriting_last_checkpoint(tmp_path):
    calls, snapshot = {"n": 0}, {}

    def nan_at_7(model, batch):
        calls["n"] += 1
        loss, metrics = noisy_step(model, batch)
        return (loss * float("nan") if calls["n"] == 7 else loss), metrics

    def keep(model, step):
        snapshot[step] = {k: v.clone() for k, v in model.state_dict().items()}

    with pytest.raises(TrainingDivergedError, match=r"loss became nan at step 7; last good "
                                                    r"checkpoint at step 5"):
        train(make_model(), make_data(), tmp_path, cfg(steps=20, checkpoint_every=5, eval_every=5),
              component="prior", step_fn=nan_at_7, on_eval=keep)
    assert list(snapshot) == [5]
    state = torch.load(tmp_path / "train_state_prior.pt", weights_only=True)
    assert state["step"] == 5 and state["finished"] is False
    exported = Reg.from_pretrained(tmp_path / "prior").state_dict()
    for k, v in snapshot[5].items():
        assert torch.equal(state["model"][k], v) and torch.equal(exported[k], v), k


# --------------------------------------------------------------------------- DDP (gloo, 2 processes)
def _ddp_step(model, batch):
    return model.loss(*batch), {}     # a model method, not forward: routed through DDP


def _ddp_worker(rank, world, port, run_dir, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    info = init_distributed("cpu")
    assert (info.rank, info.world_size, info.device.type) == (rank, world, "cpu")
    model = make_model(dropout=0.0)
    train(model, make_data(), run_dir, cfg(steps=6, batch_size=4, checkpoint_every=3, log_every=2),
          component="prior", step_fn=_ddp_step)
    torch.save(dict(model.named_parameters()), Path(out_dir) / f"rank{rank}.pt")
    dist.destroy_process_group()


def test_ddp_two_processes_keep_identical_weights(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_worker, args=(2, port, str(tmp_path / "run"), str(tmp_path)), nprocs=2, join=True)
    p0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    p1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    init = dict(make_model(dropout=0.0).named_parameters())
    for k in p0:   # ranks saw different batches: equal weights mean the gradients were averaged
        assert torch.equal(p0[k], p1[k]), k
        assert not torch.equal(p0[k], init[k]), k
    exported = Reg.from_pretrained(tmp_path / "run" / "prior").state_dict()
    assert not any(k.startswith(("module.", "_orig_mod.")) for k in exported)
    assert all(torch.equal(exported[k], p0[k]) for k in p0)
    state = torch.load(tmp_path / "run" / "train_state_prior.pt", weights_only=True)
    assert state["world_size"] == 2 and len(state["rng"]) == 2
    assert [r["step"] for r in read_log(tmp_path / "run", "prior")] == [2, 4, 6]


def test_max_epochs_caps_steps_on_a_small_dataset(tmp_path, capsys):
    # 50 samples, batch 8, drop_last: 6 batches per epoch; 2 epochs -> 12 of the 20 steps
    result = train(make_model(), make_data(), tmp_path / "a", cfg(max_epochs=2), component="tokenizer",
                   step_fn=noisy_step)
    assert result.steps == 12
    assert "steps 20 -> 12" in capsys.readouterr().err
    assert max(r["step"] for r in read_log(tmp_path / "a")) == 12
    # a cap above the step count changes nothing
    result = train(make_model(), make_data(), tmp_path / "b", cfg(max_epochs=10), component="tokenizer",
                   step_fn=noisy_step)
    assert result.steps == 20
    with pytest.raises(ValueError, match="max_epochs"):
        cfg(max_epochs=0)
    # the same rule for a recipe's own loop (the image classifier)
    assert epoch_capped_steps(20, 2, 6) == 12 and epoch_capped_steps(20, 0.5, 5) == 3
    assert epoch_capped_steps(20, None, 6) == 20 and epoch_capped_steps(20, 10, 6) == 20
    assert epoch_capped_steps(20, 0.01, 6) == 1
