"""One writer per run directory; stale leftovers cleaned on start; train state and export agree."""
from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from vqgen.modeling import ConfigModel, read_train_step
from vqgen.runs import LOCK_NAME, RunLockedError, acquire_run_lock, release_run_lock, run_lock
from vqgen.training import TrainConfig, train


@dataclass
class LinConfig:
    dim: int = 4
    hidden: int = 8


class Lin(ConfigModel):
    config_class = LinConfig

    def __init__(self, config: LinConfig):
        super().__init__(config)
        self.a = nn.Linear(config.dim, config.hidden)
        self.b = nn.Linear(config.hidden, 1)

    def forward(self, x):
        return self.b(torch.relu(self.a(x))).squeeze(-1)


def data(n=32):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 4, generator=g)
    return TensorDataset(x, x.sum(1))


def step(model, batch):
    return F.mse_loss(model(batch[0]), batch[1]), {}


def fit(run_dir, steps=4, every=2, lr=1e-2, **model_kw):
    torch.manual_seed(0)
    model = Lin.from_config(**model_kw)
    config = TrainConfig(steps=steps, batch_size=8, lr=lr, warmup_steps=1, checkpoint_every=every,
                         eval_every=0, log_every=1, progress=False, device="cpu")
    return model, train(model, data(), run_dir, config, component="tokenizer", step_fn=step)


HOLD = ("import sys, time; from vqgen.runs import acquire_run_lock; acquire_run_lock(sys.argv[1]); "
        "print('locked', flush=True); time.sleep(120)")


@pytest.fixture
def holder(tmp_path):
    """Another process holding the lock of tmp_path/run."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path / "run")],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    yield proc
    proc.kill()
    proc.wait()


def test_second_writer_fails_at_once_naming_the_holder(tmp_path, holder):
    with pytest.raises(RunLockedError, match=f"in use by pid {holder.pid} on host"):
        fit(tmp_path / "run")
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "vqgen.cli", "train", "tokenizer", "--run-dir",
                          str(tmp_path / "run"), "--dataset", "digits", "--root", str(tmp_path)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and f"pid {holder.pid}" in lines[0], out.stderr
    assert not (tmp_path / "digits").exists()        # failed before loading any data
    assert time.perf_counter() - t0 < 60


def test_lock_is_released_on_kill_9(tmp_path, holder):
    with pytest.raises(RunLockedError):
        acquire_run_lock(tmp_path / "run")
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    with run_lock(tmp_path / "run"):
        assert (tmp_path / "run" / LOCK_NAME).read_text().startswith(f"pid {os.getpid()} ")
    assert not (tmp_path / "run" / LOCK_NAME).exists()


def test_lock_is_reentrant_within_a_process(tmp_path):
    acquire_run_lock(tmp_path / "run")
    try:
        model, result = fit(tmp_path / "run")         # train takes the same lock again
        assert result.steps == 4
    finally:
        release_run_lock(tmp_path / "run")


def test_run_dir_that_is_a_file_is_a_value_error(tmp_path):
    (tmp_path / "run").write_text("not a dir")
    with pytest.raises(ValueError, match="found a file"):
        fit(tmp_path / "run")


def test_stale_temps_of_dead_writers_are_removed_on_start(tmp_path):
    run = tmp_path / "run"
    fit(run)
    (run / ".train_state_tokenizer.pt.k2j3h4.tmp").write_bytes(b"half a state")
    (run / ".tokenizer.x8y9z0.tmp").mkdir()
    (run / ".tokenizer.x8y9z0.tmp" / "model.safetensors").write_bytes(b"half")
    (run / "tokenizer.old-123").mkdir()
    (run / "logs" / ".tokenizer.jsonl.abcdef.tmp").write_text("{")
    fit(run, steps=6)
    leftovers = [p for p in run.rglob("*") if p.name.endswith((".tmp", ".new")) or ".old-" in p.name]
    assert leftovers == []


def test_export_never_behind_after_a_failed_export(tmp_path, monkeypatch):
    """State first, export second: a full disk during the export leaves the state ahead, and
    the next start re-exports it, so both hold the same step."""
    run = tmp_path / "run"
    real = ConfigModel.save_pretrained

    def full_at_step_4(self, directory, train_step=None, **kw):
        if train_step == 4:
            raise OSError(errno.ENOSPC, "No space left on device", str(directory))
        return real(self, directory, train_step=train_step, **kw)
    monkeypatch.setattr(ConfigModel, "save_pretrained", full_at_step_4)
    with pytest.raises(OSError):
        fit(run, steps=4, every=2)
    state = torch.load(run / "train_state_tokenizer.pt", weights_only=True)
    assert state["step"] == 4 and read_train_step(run / "tokenizer") == 2
    monkeypatch.setattr(ConfigModel, "save_pretrained", real)
    model, result = fit(run, steps=4, every=2)           # finished: returns at once, reconciled
    assert result.resumed_from == 4 and read_train_step(run / "tokenizer") == 4
    exported = Lin.from_pretrained(run / "tokenizer")
    assert torch.equal(exported.a.weight, state["model"]["a.weight"])


def test_state_without_optimizer_is_a_value_error(tmp_path):
    fit(tmp_path / "run", steps=2)
    path = tmp_path / "run" / "train_state_tokenizer.pt"
    state = torch.load(path, weights_only=True)
    del state["optimizer"]
    torch.save(state, path)
    with pytest.raises(ValueError, match="lacks \\['optimizer'\\]"):
        fit(tmp_path / "run", steps=4)


def test_corrupt_weights_in_state_are_caught(tmp_path):
    fit(tmp_path / "run", steps=2)
    path = tmp_path / "run" / "train_state_tokenizer.pt"
    state = torch.load(path, weights_only=True)
    state["model"]["a.weight"][0, 0] += 1
    torch.save(state, path)
    with pytest.raises(ValueError, match="corrupt"):
        fit(tmp_path / "run", steps=4)


def test_config_size_mismatch_is_one_line(tmp_path):
    fit(tmp_path / "run", steps=2)
    with pytest.raises(ValueError) as info:
        fit(tmp_path / "run", steps=4, hidden=16)
    assert "\n" not in str(info.value) and "has shape" in str(info.value)


def test_new_lr_on_resume_is_applied_and_announced(tmp_path, capsys):
    import json
    fit(tmp_path / "run", steps=4, lr=1e-2)
    capsys.readouterr()
    fit(tmp_path / "run", steps=4, lr=5e-2)               # finished: says lr is unused
    assert "not used" in capsys.readouterr().err
    fit(tmp_path / "run", steps=6, lr=5e-2)               # continues with the new lr
    assert "with lr 0.05 (it was 0.01)" in capsys.readouterr().err
    logged = [json.loads(line) for line in (tmp_path / "run" / "logs" / "tokenizer.jsonl").open()]
    last = [r for r in logged if r["step"] == 6][0]
    from vqgen.training import warmup_cosine
    assert last["lr"] == pytest.approx(5e-2 * warmup_cosine(1, 6, 0.1)(5))   # not 1e-2 x ...
