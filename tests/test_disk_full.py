"""A full disk or a read-only run directory: a plain one-line message, and the train state and
the export never disagree (the state is never behind the export; the next start reconciles)."""
from __future__ import annotations

import errno
import io
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import vqgen.atomic as atomic
from vqgen.modeling import read_train_step, read_weights
from vqgen.runs import user_error_message

from test_runlock import fit  # noqa: E402 - the tiny model and loop settings of the lock tests


class _FullDisk:
    """Replaces ``vqgen.atomic._open_for_write``: files accept ``budget`` bytes in total, then
    every write raises ``OSError(ENOSPC)``. Records the size of each file written."""

    def __init__(self, budget: float = float("inf")):
        self.left, self.sizes = budget, []

    def __call__(self, path: str):
        disk = self
        disk.sizes.append(0)

        class File(io.FileIO):
            def write(self, data):
                n = len(memoryview(data).cast("B"))
                if n > disk.left:
                    disk.left = 0
                    raise OSError(errno.ENOSPC, "No space left on device")
                disk.left -= n
                disk.sizes[-1] += n
                return super().write(data)
        return File(path, "wb")


def _steps(run: Path) -> tuple[int | None, int | None]:
    state = run / "train_state_tokenizer.pt"
    step = torch.load(state, weights_only=True)["step"] if state.exists() else None
    return step, read_train_step(run / "tokenizer")


def test_full_disk_keeps_state_and_export_consistent_and_resumes_exactly(tmp_path, monkeypatch):
    real, counter = atomic._open_for_write, _FullDisk()
    monkeypatch.setattr(atomic, "_open_for_write", counter)
    fit(tmp_path / "ref", steps=6, every=1)
    monkeypatch.setattr(atomic, "_open_for_write", real)
    reference = read_weights(tmp_path / "ref" / "tokenizer" / "model.safetensors")
    # run out of space halfway through each of the first 8 files written (state, weights,
    # config of step 1, then step 2, ...)
    before = [sum(counter.sizes[:i]) for i in range(len(counter.sizes))]
    budgets = [before[i] + counter.sizes[i] // 2 for i in range(8) if counter.sizes[i]]
    seen = set()
    for budget in budgets:
        run = tmp_path / f"run{budget}"
        monkeypatch.setattr(atomic, "_open_for_write", _FullDisk(budget))
        with pytest.raises(OSError) as info:
            fit(run, steps=6, every=1)
        assert info.value.errno == errno.ENOSPC
        message = user_error_message(info.value)
        assert message.startswith("no space left on device while writing " + str(run)), message
        state_step, export_step = _steps(run)
        assert export_step is None or (state_step is not None and export_step <= state_step), budget
        assert not [p for p in run.rglob("*") if p.name.endswith((".tmp", ".new"))]
        seen.add((state_step, export_step))
        monkeypatch.setattr(atomic, "_open_for_write", real)
        fit(run, steps=6, every=1)                       # space is back: resume and finish
        assert _steps(run) == (6, 6)
        got = read_weights(run / "tokenizer" / "model.safetensors")
        assert all(torch.equal(got[k], reference[k]) for k in reference), budget
    assert (None, None) in seen and (1, None) in seen and (2, 1) in seen, seen


@pytest.fixture
def tmpfs(tmp_path):
    """Mount a small tmpfs (root only; skipped elsewhere). Yields a remount function."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()

    def mount(options: str) -> Path:
        out = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mnt)],
                             capture_output=True, text=True)
        if out.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({out.stderr.strip() or 'not root'})")
        return mnt
    yield mount
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def _cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vqgen.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=300)


def _train(run: Path, root: Path, steps: int) -> subprocess.CompletedProcess:
    return _cli("train", "tokenizer", "--run-dir", run, "--dataset", "digits", "--root", root,
                "--preset", "image_tokenizer_debug", "--limit", "64", "--batch-size", "16",
                "--steps", steps, "--checkpoint-every", "1")


def _error_line(out: subprocess.CompletedProcess) -> str:
    lines = [ln for ln in out.stderr.strip().splitlines() if "error" in ln or "Traceback" in ln]
    assert out.returncode == 2 and len(lines) == 1, out.stderr[-2000:]
    return lines[0]


@pytest.mark.parametrize("size", ["1m", "3m"])
def test_small_filesystem_says_no_space_and_keeps_the_pair_consistent(tmpfs, tmp_path, size):
    mnt = tmpfs(f"size={size}")
    run = mnt / "run"
    line = _error_line(_train(run, tmp_path / "data", steps=4))
    assert "no space left on device" in line
    state_step, export_step = _steps(run)
    assert export_step is None or (state_step is not None and export_step <= state_step)
    assert not [p for p in mnt.rglob("*") if p.name.endswith((".tmp", ".new"))]


def test_read_only_run_directory_says_so(tmpfs, tmp_path):
    mnt = tmpfs("size=16m")
    assert _train(mnt / "run", tmp_path / "data", steps=2).returncode == 0
    subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
    line = _error_line(_train(mnt / "run", tmp_path / "data", steps=4))
    assert "read-only" in line
