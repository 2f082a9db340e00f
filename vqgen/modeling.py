"""Config-built models with boring, portable checkpoints.

Every vqgen model is an ``nn.Module`` built from one config dataclass and saved as a directory
holding ``config.json`` (the config plus ``model_type``) and ``model.safetensors`` (the unwrapped
state dict). Loading is strict: a missing or unexpected key, a checkpoint of another model type, an
unknown config key or a truncated file raise ``ValueError`` naming what was expected and what came.

The weights file carries a SHA-256 of its tensor data in its metadata (``vqgen_sha256``), checked
at load: damaged bytes anywhere in the file raise ``ValueError`` naming the file. The atomic-write
helpers (:mod:`vqgen.atomic`) are re-exported here for the modules that import them from here.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import struct
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch
from huggingface_hub import PyTorchModelHubMixin
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes
from torch import nn

from .atomic import (atomic_directory, atomic_torch_save, atomic_write, atomic_write_bytes,  # noqa: F401
                     atomic_write_text, ensure_directory, write_bytes_to)

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CHECKSUM_KEY = "vqgen_sha256"

C = TypeVar("C")
M = TypeVar("M", bound="ConfigModel")


# --------------------------------------------------------------------------- configs
def build_config(config_cls: type[C], values: dict[str, Any] | None = None, **overrides: Any) -> C:
    """Build ``config_cls`` from a dict plus overrides; unknown keys raise ``ValueError``.

    JSON lists are turned back into tuples where the field's default is a tuple.
    """
    if not dataclasses.is_dataclass(config_cls):
        raise TypeError(f"{config_cls!r} is not a dataclass")
    merged = {**(values or {}), **overrides}
    fields = {f.name: f for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(merged) - set(fields))
    if unknown:
        raise ValueError(
            f"unknown {config_cls.__name__} key(s) {unknown}; expected some of {sorted(fields)}")
    for name, value in list(merged.items()):
        f = fields[name]
        default = f.default if f.default is not dataclasses.MISSING else None
        if isinstance(value, list) and (isinstance(default, tuple) or str(f.type).startswith("tuple")):
            merged[name] = tuple(value)
    try:
        return config_cls(**merged)
    except TypeError as e:  # a required field is missing
        raise ValueError(f"cannot build {config_cls.__name__}: {e}") from None


def config_to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def unwrap_model(model: nn.Module) -> nn.Module:
    """Strip DDP (``module.``) and ``torch.compile`` (``_orig_mod.``) wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model


# --------------------------------------------------------------------------- weights files
def tensor_digest(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 (hex) over every tensor's name, dtype, shape and bytes, in key order: the same
    for a state dict before saving and after loading, whatever the file layout."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().data)
    return h.hexdigest()


def _sorted_metadata(data: bytes) -> bytes:
    """``data`` (a serialized safetensors file) with its metadata keys in sorted order, so that
    equal weights give equal bytes (safetensors writes them in hash-map order). The header keeps
    its length (padding spaces), so no data offset moves."""
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    header["__metadata__"] = dict(sorted(header.get("__metadata__", {}).items()))
    text = json.dumps(header, separators=(",", ":")).encode()
    if len(text) > n:  # cannot happen for a pure reordering; keep the file as written
        return data
    return data[:8] + text.ljust(n) + data[8 + n:]


def read_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load a ``.safetensors`` file on the CPU (no pickle) and check its ``vqgen_sha256``
    (files written before checksums existed have none and load unchecked).

    Raises ``ValueError`` naming the file when it is truncated, its header is damaged, or its
    tensor data does not match the recorded checksum.
    """
    path = str(path)
    try:
        with safe_open(path, "pt") as f:
            expected = (f.metadata() or {}).get(CHECKSUM_KEY)
        state = load_file(path, device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise ValueError(f"cannot read {path}: {e}; the file is corrupt or truncated") from None
    if expected is not None and tensor_digest(state) != expected:
        raise ValueError(f"{path} is corrupt: its tensor data does not match the SHA-256 recorded "
                         f"when it was saved (re-save or re-train it)")
    return state


def check_state_dict(state: dict[str, torch.Tensor], own: dict[str, torch.Tensor], source: str) -> None:
    """Raise a one-line ``ValueError`` unless ``state`` has exactly ``own``'s keys and shapes."""
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        raise ValueError(
            f"{source} does not match the model: {len(missing)} missing key(s) {missing[:3]}"
            f"{'...' if len(missing) > 3 else ''}, {len(unexpected)} unexpected key(s) "
            f"{unexpected[:3]}{'...' if len(unexpected) > 3 else ''} (a different model config?)")
    bad = [(k, tuple(state[k].shape), tuple(v.shape)) for k, v in own.items()
           if tuple(state[k].shape) != tuple(v.shape)]
    if bad:
        k, got, want = bad[0]
        raise ValueError(f"{source}: tensor {k!r} has shape {got}, expected {want}"
                         f"{f' (and {len(bad) - 1} more mismatched)' if len(bad) > 1 else ''}; "
                         f"was it trained with a different model config?")


def read_train_step(directory: str | os.PathLike) -> int | None:
    """The training step recorded in ``directory/config.json`` (None if absent/unreadable)."""
    try:
        meta = json.loads((Path(directory) / CONFIG_NAME).read_text())
        return int(meta["train_step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


# --------------------------------------------------------------------------- base model
class ConfigModel(nn.Module, PyTorchModelHubMixin):
    """Base of every vqgen model: ``Model(config)``, ``Model.from_config(**overrides)``,
    ``save_pretrained(dir)`` and ``Model.from_pretrained(dir)``.

    Subclasses set ``config_class`` and call ``super().__init__(config)``.
    """

    config_class: ClassVar[type]

    def __init__(self, config: Any):
        super().__init__()
        if not isinstance(config, self.config_class):
            raise ValueError(
                f"{type(self).__name__} expects a {self.config_class.__name__}, "
                f"got {type(config).__name__}")
        self.config = config

    # PyTorchModelHubMixin inspects __init__ arguments to build its own config; we keep ours.
    def __new__(cls, *args: Any, **kwargs: Any):
        return nn.Module.__new__(cls)

    @classmethod
    def model_type(cls) -> str:
        return cls.__name__

    @classmethod
    def from_config(cls: type[M], config: Any = None, **overrides: Any) -> M:
        """Build from a config object or dict plus keyword overrides (unknown keys raise)."""
        if isinstance(config, cls.config_class):
            config = config_to_dict(config)
        if config is not None and not isinstance(config, dict):
            raise ValueError(
                f"{cls.__name__}.from_config expects a {cls.config_class.__name__} or a dict, "
                f"got {type(config).__name__}")
        return cls(build_config(cls.config_class, config, **overrides))

    # ----------------------------------------------------------------------- save
    def extra_files(self) -> dict[str, bytes]:
        """Extra files saved beside the weights (e.g. a SentencePiece model)."""
        return {}

    def save_pretrained(self, save_directory: str | os.PathLike, train_step: int | None = None,
                        **_: Any) -> Path:
        """Write ``config.json`` + ``model.safetensors`` (+ :meth:`extra_files`) atomically, with a
        SHA-256 of the tensor data in the weights' metadata; returns the directory.

        ``train_step`` (set by the training loop) is recorded in ``config.json`` so a run can
        tell which step its export holds. ``config.json`` is written last: a copy with it is
        complete. Two processes saving one directory take turns (a lock beside it). Raises
        ``OSError`` (``ENOSPC`` on a full disk, ``EROFS``/``EACCES`` when not writable).
        """
        model = unwrap_model(self)
        state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
        meta = {"model_type": model.model_type(), "vqgen_format": 1,
                "config": config_to_dict(model.config)}
        if train_step is not None:
            meta["train_step"] = int(train_step)
        save_directory = Path(save_directory)
        with atomic_directory(save_directory) as tmp:
            data = _sorted_metadata(safetensors_bytes(
                state, metadata={"model_type": model.model_type(), CHECKSUM_KEY: tensor_digest(state)}))
            write_bytes_to(str(tmp / WEIGHTS_NAME), data)
            del data
            for name, extra in model.extra_files().items():
                write_bytes_to(str(tmp / name), extra)
            write_bytes_to(str(tmp / CONFIG_NAME),
                           (json.dumps(meta, indent=2, sort_keys=True) + "\n").encode())
        return save_directory

    # ----------------------------------------------------------------------- load
    @classmethod
    def read_config(cls, directory: str | os.PathLike) -> dict[str, Any]:
        """Read and check ``config.json``: it must exist and name this model type."""
        directory = Path(directory)
        ensure_directory(directory)
        if not directory.is_dir():
            raise FileNotFoundError(f"no {cls.__name__} checkpoint directory at {directory}")
        cfg_path = directory / CONFIG_NAME
        if not cfg_path.is_file():
            raise FileNotFoundError(f"expected {cfg_path} ({cls.__name__} config), found none")
        try:
            meta = json.loads(cfg_path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{cfg_path} is not valid JSON ({e}); the checkpoint is corrupt") from None
        got = meta.get("model_type") if isinstance(meta, dict) else None
        if got != cls.model_type():
            raise ValueError(
                f"{directory} holds a {got!r} checkpoint, expected {cls.model_type()!r}")
        if not isinstance(meta.get("config"), dict):
            raise ValueError(f"{cfg_path} has no 'config' mapping (keys {sorted(meta)}); "
                             f"the checkpoint is corrupt")
        return meta["config"]

    def load_extra_files(self, directory: Path) -> None:
        """Hook for subclasses that save extra files."""

    @classmethod
    def from_pretrained(cls: type[M], pretrained_model_name_or_path: str | os.PathLike,
                        map_location: str | torch.device = "cpu", **_: Any) -> M:
        """Load a directory written by :meth:`save_pretrained`; returns the model in eval mode.

        Raises ``FileNotFoundError`` for a missing directory/file and ``ValueError`` for another
        model's checkpoint, unknown config keys, a corrupt/truncated weights file, or any
        missing/unexpected/mis-shaped tensor.
        """
        directory = Path(pretrained_model_name_or_path)
        config = cls.read_config(directory)
        model = cls.from_config(config)
        weights = directory / WEIGHTS_NAME
        if not weights.is_file():
            raise FileNotFoundError(f"expected weights at {weights}, found none")
        state = read_weights(weights)
        check_state_dict(state, model.state_dict(), f"{weights} ({cls.__name__})")
        model.load_state_dict(state, strict=True)
        model.load_extra_files(directory)
        return model.to(map_location).eval()

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
