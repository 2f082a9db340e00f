"""Checkpoint integrity: checksummed weights, locked saves, recovery, clean-up, permissions."""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import struct
from dataclasses import dataclass

import pytest
import torch
from safetensors import safe_open
from torch import nn

from vqgen.modeling import CHECKSUM_KEY, ConfigModel, read_weights


@dataclass
class NetConfig:
    dim: int = 64


class Net(ConfigModel):
    config_class = NetConfig

    def __init__(self, config: NetConfig):
        super().__init__(config)
        self.a = nn.Linear(config.dim, config.dim)


def _data_region(path) -> tuple[int, int]:
    """(offset, length) of a safetensors file's tensor data."""
    with open(path, "rb") as f:
        header = struct.unpack("<Q", f.read(8))[0]
    return 8 + header, os.path.getsize(path) - 8 - header


def test_random_bytes_in_tensor_data_are_caught(tmp_path):
    torch.manual_seed(0)
    Net.from_config().save_pretrained(tmp_path / "m")
    weights = tmp_path / "m" / "model.safetensors"
    start, length = _data_region(weights)
    assert length >= 4096
    data = bytearray(weights.read_bytes())
    data[start + 1000:start + 1000 + 4096 - 1000] = os.urandom(4096 - 1000)
    weights.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="model.safetensors is corrupt"):
        Net.from_pretrained(tmp_path / "m")


def test_one_flipped_bit_is_caught_and_clean_file_loads(tmp_path):
    torch.manual_seed(0)
    model = Net.from_config()
    model.save_pretrained(tmp_path / "m")
    weights = tmp_path / "m" / "model.safetensors"
    with safe_open(str(weights), "pt") as f:
        assert len(f.metadata()[CHECKSUM_KEY]) == 64
    assert torch.equal(Net.from_pretrained(tmp_path / "m").a.weight, model.a.weight)
    start, _ = _data_region(weights)
    data = bytearray(weights.read_bytes())
    data[start + 7] ^= 0x01
    weights.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="SHA-256"):
        read_weights(weights)


def test_file_without_checksum_still_loads(tmp_path):
    from safetensors.torch import save_file
    model = Net.from_config()
    model.save_pretrained(tmp_path / "m")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()},
              str(tmp_path / "m" / "model.safetensors"), metadata={"model_type": "Net"})
    assert torch.equal(Net.from_pretrained(tmp_path / "m").a.bias, model.a.bias)


def test_config_without_config_key_is_a_value_error(tmp_path):
    Net.from_config().save_pretrained(tmp_path / "m")
    (tmp_path / "m" / "config.json").write_text(json.dumps({"model_type": "Net"}))
    with pytest.raises(ValueError, match="no 'config' mapping"):
        Net.from_pretrained(tmp_path / "m")


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_saved_files_follow_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        Net.from_config().save_pretrained(tmp_path / "m")
    finally:
        os.umask(old)
    assert (tmp_path / "m").stat().st_mode & 0o777 == 0o777 & ~umask
    for name in ("config.json", "model.safetensors"):
        assert (tmp_path / "m" / name).stat().st_mode & 0o777 == 0o666 & ~umask, name


def _save_many(directory: str, seed: int, times: int, errors) -> None:
    torch.set_num_threads(1)
    torch.manual_seed(seed)
    model = Net.from_config(dim=8)
    for _ in range(times):
        try:
            model.save_pretrained(directory)
        except Exception as e:  # noqa: BLE001 - counted by the test
            errors.put(repr(e))


def test_concurrent_saves_of_one_directory_never_interleave(tmp_path):
    ctx = mp.get_context("fork")
    errors = ctx.Queue()
    procs = [ctx.Process(target=_save_many, args=(str(tmp_path / "m"), seed, 60, errors))
             for seed in (1, 2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]
    assert errors.empty(), errors.get()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]   # no temp dirs, no lock left
    loaded = Net.from_pretrained(tmp_path / "m")                  # one process's complete copy
    torch.manual_seed(1)
    first = Net.from_config(dim=8).a.weight
    torch.manual_seed(2)
    second = Net.from_config(dim=8).a.weight
    assert torch.equal(loaded.a.weight, first) or torch.equal(loaded.a.weight, second)


def test_leftover_old_dir_with_our_pid_does_not_break_saving(tmp_path):
    model = Net.from_config()
    model.save_pretrained(tmp_path / "m")
    stale = tmp_path / f"m.old-{os.getpid()}"
    model.save_pretrained(stale)
    model.save_pretrained(tmp_path / "m")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_recovery_picks_the_newest_copy_not_the_last_name(tmp_path):
    torch.manual_seed(0)
    older, newer = Net.from_config(), Net.from_config()
    older.save_pretrained(tmp_path / "m.old-99999")
    newer.save_pretrained(tmp_path / "m.old-100000")
    for path, when in ((tmp_path / "m.old-99999", 1_000_000), (tmp_path / "m.old-100000", 2_000_000)):
        for f in path.iterdir():
            os.utime(f, (when, when))
    loaded = Net.from_pretrained(tmp_path / "m")
    assert torch.equal(loaded.a.weight, newer.a.weight)


def test_complete_new_copy_wins_over_the_old_one(tmp_path):
    """A crash between the two renames of a swap: the finished new copy is restored."""
    torch.manual_seed(0)
    old, new = Net.from_config(), Net.from_config()
    old.save_pretrained(tmp_path / "m.old-5-5")
    new.save_pretrained(tmp_path / ".m.abc123.new")
    assert torch.equal(Net.from_pretrained(tmp_path / "m").a.weight, new.a.weight)


def test_stale_temp_dirs_are_removed_by_the_next_save(tmp_path):
    model = Net.from_config()
    (tmp_path / ".m.dead1234.tmp").mkdir()
    (tmp_path / ".m.dead1234.tmp" / "model.safetensors").write_bytes(b"partial")
    model.save_pretrained(tmp_path / "m")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]
