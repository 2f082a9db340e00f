"""Config-built models with boring, portable checkpoints.

Every vqgen model is an ``nn.Module`` built from one config dataclass and saved as a directory
holding ``config.json`` (the config plus ``model_type``) and ``model.safetensors`` (the unwrapped
state dict). Loading is strict: a missing or unexpected key, a checkpoint of another model type, an
unknown config key or a truncated file raise ``ValueError`` naming what was expected and what came.

Also home of the atomic-write helpers used by every writer in the package (checkpoints, train
state, metrics): write to a temporary sibling, then ``os.replace``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator, TypeVar

import torch
from huggingface_hub import PyTorchModelHubMixin
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"

C = TypeVar("C")
M = TypeVar("M", bound="ConfigModel")


# --------------------------------------------------------------------------- atomic writes
def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)`` then move the temporary file onto ``path`` in one rename.

    A crash during ``write`` leaves the previous ``path`` untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file normal permissions
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    def _write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
    atomic_write(path, _write)


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory that replaces ``path`` when the block exits cleanly.

    The old directory is renamed aside first and removed only after the new one is in place,
    so a crash at any point leaves either the old or the new complete directory (or, in the
    narrow window between the two renames, ``<path>.old-*`` which :func:`_recover_dir` restores).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if path.exists():
        old = path.with_name(f"{path.name}.old-{os.getpid()}")
        os.replace(path, old)
    os.replace(tmp, path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _recover_dir(path: Path) -> None:
    """Restore ``path`` from ``path.old-*`` if a crash hit between the two renames."""
    if path.exists():
        return
    olds = sorted(path.parent.glob(f"{path.name}.old-*"))
    if olds:
        os.replace(olds[-1], path)


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

    def save_pretrained(self, save_directory: str | os.PathLike, **_: Any) -> Path:
        """Write ``config.json`` + ``model.safetensors`` atomically; returns the directory."""
        model = unwrap_model(self)
        state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
        meta = {"model_type": model.model_type(), "vqgen_format": 1,
                "config": config_to_dict(model.config)}
        save_directory = Path(save_directory)
        with atomic_directory(save_directory) as tmp:
            save_file(state, str(tmp / WEIGHTS_NAME), metadata={"model_type": model.model_type()})
            (tmp / CONFIG_NAME).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
            for name, data in model.extra_files().items():
                (tmp / name).write_bytes(data)
        return save_directory

    # ----------------------------------------------------------------------- load
    @classmethod
    def read_config(cls, directory: str | os.PathLike) -> dict[str, Any]:
        """Read and check ``config.json``: it must exist and name this model type."""
        directory = Path(directory)
        _recover_dir(directory)
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
        try:
            state = load_file(str(weights), device=str(map_location))
        except (SafetensorError, OSError, ValueError, RuntimeError) as e:
            raise ValueError(f"cannot read {weights}: {e}; the file is corrupt or truncated") from None
        own = model.state_dict()
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        if missing or unexpected:
            raise ValueError(
                f"{weights} does not match {cls.__name__}: missing keys {missing[:5]}"
                f"{'...' if len(missing) > 5 else ''}, unexpected keys {unexpected[:5]}"
                f"{'...' if len(unexpected) > 5 else ''}")
        bad = [(k, tuple(state[k].shape), tuple(v.shape)) for k, v in own.items()
               if tuple(state[k].shape) != tuple(v.shape)]
        if bad:
            k, got, want = bad[0]
            raise ValueError(f"{weights}: tensor {k!r} has shape {got}, expected {want}")
        model.load_state_dict(state, strict=True)
        model.load_extra_files(directory)
        return model.to(map_location).eval()

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
