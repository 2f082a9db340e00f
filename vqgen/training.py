"""The one training loop shared by both stages (tokenizer, prior) of every modality.

``train(model, dataset, run_dir, config, component=..., step_fn=...)`` runs AdamW with linear
warmup + cosine decay (``lr_scales``: named parts of the model at a multiple of the LR, e.g. a
head trained with its codec), gradient clipping, bf16 autocast (CUDA; CPU with ``cpu_amp``), optional
``torch.compile``, periodic evaluation, a tqdm bar, a JSONL log (plus TensorBoard when installed),
atomic checkpoints, exact resume and DDP. What it leaves in ``run_dir``::

    <component>/                      config.json + model.safetensors (``save_pretrained``)
    train_state_<component>.pt        weights, optimizer, scheduler, step, data position, RNG;
                                      tensors and primitives only (``torch.load(weights_only=True)``)
    logs/<component>.jsonl            one object per ``log_every`` steps; eval lines have "eval": true
    logs/tb/<component>/              TensorBoard events, only when tensorboard is installed

Each checkpoint writes the train state first, then the export, with the step recorded in both;
on start a stale export is re-written from the state, so after a crash or a full disk the two
never disagree. ``train`` holds the run directory's lock (:mod:`vqgen.runs`) while it runs: a
second process training in the same directory fails at once.

Resume is exact: the data order is a function of ``(seed, epoch)`` and the state file holds the
batch position and every RNG, so a run killed after a checkpoint and restarted produces the same
per-step losses as one that never stopped (bit for bit on CPU).
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import os
import random
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler
from tqdm.auto import tqdm

from .modeling import (ConfigModel, atomic_torch_save, atomic_write_text, check_state_dict,
                       read_train_step, tensor_digest, unwrap_model)
from .runs import locks_run_dir

__all__ = ["TrainConfig", "TrainResult", "TrainingDivergedError", "DistInfo", "train",
           "resolve_device", "init_distributed", "is_main_process", "warmup_cosine",
           "build_optimizer"]

STATE_FORMAT = 1
_STATE_KEYS = {"step", "epoch", "batch_in_epoch", "finished", "model", "model_type", "optimizer",
               "scheduler", "rng", "seconds", "last_metrics", "eval_metrics", "log_accum"}
StepFn = Callable[[nn.Module, Any], "tuple[torch.Tensor, dict[str, Any]]"]


# --------------------------------------------------------------------------- config and results
def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


_FLOAT32_MAX = float(torch.finfo(torch.float32).max)   # a larger lr overflows inside AdamW


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


@dataclass
class TrainConfig:
    """Settings of one training run. ``batch_size`` is per process (the global batch under DDP
    is ``batch_size * world_size``). ``eval_every`` / ``checkpoint_every`` of 0 mean "only at the
    end". Out-of-range values raise ``ValueError`` naming the expected range and the value."""

    steps: int = 1000
    batch_size: int = 64
    lr: float = 3e-4
    weight_decay: float = 0.0
    betas: tuple = (0.9, 0.99)
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1        # warmup, then cosine from lr down to lr * min_lr_ratio
    grad_clip: float | None = 1.0
    eval_every: int = 500
    checkpoint_every: int = 500
    log_every: int = 10
    seed: int = 0
    amp: bool = True                 # bf16 autocast on CUDA
    cpu_amp: bool = False            # bf16 autocast on CPU too (fast with AVX512-BF16 / AMX)
    compile: bool = False
    device: str = "auto"
    num_workers: int = 0
    progress: bool = True
    drop_last: bool = True
    max_epochs: float | None = None  # cap steps at this many passes over the data (small datasets)
    lr_scales: dict | None = None    # {parameter-name prefix: multiplier}: those parameters train at
                                     # lr x multiplier (the longest matching prefix wins)

    def __post_init__(self) -> None:
        for name in ("lr", "weight_decay", "min_lr_ratio", "grad_clip"):
            if isinstance(getattr(self, name), str):  # YAML 1.1 reads "1e-3" as a string
                with contextlib.suppress(ValueError):
                    setattr(self, name, float(getattr(self, name)))
        if isinstance(self.betas, list):             # JSON/YAML give lists
            self.betas = tuple(self.betas)

        def need(ok: bool, name: str, expected: str) -> None:
            if not ok:
                raise ValueError(f"TrainConfig.{name} must be {expected}, got {getattr(self, name)!r}")
        for name in ("steps", "batch_size", "log_every"):
            need(_is_int(getattr(self, name)) and getattr(self, name) >= 1, name, "an int >= 1")
        for name in ("warmup_steps", "eval_every", "checkpoint_every", "num_workers"):
            need(_is_int(getattr(self, name)) and getattr(self, name) >= 0, name, "an int >= 0")
        need(_is_int(self.seed) and 0 <= self.seed < 2**63, "seed", "an int in [0, 2**63)")
        need(_is_number(self.lr) and 0 < self.lr <= _FLOAT32_MAX, "lr",
             f"a number > 0 that float32 holds (<= {_FLOAT32_MAX:.3g})")
        need(_is_number(self.weight_decay) and self.weight_decay >= 0, "weight_decay", "a number >= 0")
        need(_is_number(self.min_lr_ratio) and 0 <= self.min_lr_ratio <= 1, "min_lr_ratio",
             "a number in [0, 1]")
        need(self.grad_clip is None or (_is_number(self.grad_clip) and self.grad_clip > 0),
             "grad_clip", "None or a number > 0")
        need(self.max_epochs is None or (_is_number(self.max_epochs) and self.max_epochs > 0),
             "max_epochs", "None or a number > 0")
        need(isinstance(self.betas, tuple) and len(self.betas) == 2
             and all(_is_number(b) and 0 <= b < 1 for b in self.betas), "betas", "two numbers in [0, 1)")
        need(self.lr_scales is None or (isinstance(self.lr_scales, dict) and all(
            isinstance(k, str) and k and _is_number(v) and v > 0 for k, v in self.lr_scales.items())),
             "lr_scales", "None or a dict of non-empty parameter-name prefixes to numbers > 0")
        if self.warmup_steps >= self.steps:  # legal, but the run never reaches its peak LR
            warnings.warn(f"TrainConfig: warmup_steps={self.warmup_steps} >= steps={self.steps}: "
                          f"the whole run stays in LR warmup (lr never reaches {self.lr}); "
                          f"lower warmup_steps", UserWarning, stacklevel=3)


@dataclass
class TrainResult:
    """What :func:`train` returns. ``seconds`` is wall time summed over every (resumed) call;
    ``last_metrics`` is the last training log record (loss, lr, step_fn metrics, ...);
    ``eval_metrics`` the last ``eval_fn`` result; ``resumed_from`` the step the call started at
    (0 for a fresh run, ``steps`` for a run that was already finished)."""

    steps: int
    seconds: float
    last_metrics: dict[str, float] = field(default_factory=dict)
    eval_metrics: dict[str, float] = field(default_factory=dict)
    resumed_from: int = 0


class TrainingDivergedError(RuntimeError):
    """The loss (or gradient norm) became NaN/inf; no checkpoint was written for that step."""


@dataclass
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device


# --------------------------------------------------------------------------- devices, DDP
def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> ``cuda`` when available, else ``cpu``; other names as ``torch.device``.

    Raises ``ValueError`` for an unknown device string or CUDA requested on a machine without it.
    """
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"expected a device like 'auto', 'cpu', 'cuda' or 'cuda:1', got {name!r} ({e})") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available on this machine")
    return device


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def is_main_process() -> bool:
    """True outside DDP and on rank 0 under DDP."""
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the process group when launched by ``torchrun`` (env ``WORLD_SIZE`` > 1).

    Backend ``nccl`` with one GPU per process (``cuda:LOCAL_RANK``) when CUDA is available and
    ``device`` is not ``"cpu"``, else ``gloo`` on CPU. Outside torchrun returns rank 0 of 1 on
    ``resolve_device(device)`` without touching ``torch.distributed``. Safe to call twice.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 and not (dist.is_available() and dist.is_initialized()):
        return DistInfo(0, 1, 0, resolve_device(device))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = _ddp_device(device, local_rank)
    if not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
            dist.init_process_group("nccl", device_id=dev)
        else:
            dist.init_process_group("gloo")
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, dev)


def _ddp_device(name: str | torch.device, local_rank: int) -> torch.device:
    if str(name) in ("auto", "cuda") and torch.cuda.is_available():
        return torch.device("cuda", local_rank)  # one GPU per process
    return resolve_device(name)


def _all_gather_objects(obj: Any) -> list[Any]:
    if not _distributed():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def _barrier() -> None:
    if _distributed():
        dist.barrier()


class _MethodRouter(nn.Module):
    """Runs ``model.<method>(...)`` inside ``forward`` so DDP syncs gradients for any method a
    step_fn calls (e.g. ``prior.loss``), not only ``forward``."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, method: str, *args: Any, **kwargs: Any) -> Any:
        if method == "forward":
            return self.model(*args, **kwargs)
        return getattr(self.model, method)(*args, **kwargs)


class _StepModel:
    """What ``step_fn`` receives under DDP or compile: ``m(x)`` and ``m.method(x)`` (methods the
    model class defines) go through the wrapper; ``nn.Module`` API and other attributes come from
    the plain model. Make one such call per step (DDP reduces gradients once per forward)."""

    def __init__(self, model: nn.Module, run: Callable[..., Any]):
        self._model, self._run = model, run

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._run("forward", *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._model, name)
        if name == "forward" or (callable(attr) and not isinstance(attr, nn.Module)
                                 and hasattr(type(self._model), name) and not hasattr(ConfigModel, name)):
            return functools.partial(self._run, name)  # e.g. loss/encode, not parameters/save_pretrained
        return attr


def _step_model(model: nn.Module, device: torch.device, compile_: bool) -> Any:
    if _distributed():
        ddp = nn.parallel.DistributedDataParallel(
            _MethodRouter(model), device_ids=[device] if device.type == "cuda" else None,
            find_unused_parameters=True)  # e.g. residual levels skipped by quantizer dropout
        return _StepModel(model, torch.compile(ddp) if compile_ else ddp)
    if not compile_:
        return model
    compiled: dict[str, Callable[..., Any]] = {}

    def run(name: str, *args: Any, **kwargs: Any) -> Any:
        if name not in compiled:
            compiled[name] = torch.compile(model if name == "forward" else getattr(model, name))
        return compiled[name](*args, **kwargs)
    return _StepModel(model, run)


# --------------------------------------------------------------------------- optimizer, schedule
def epoch_capped_steps(steps: int, max_epochs: float | None, num_batches: int) -> int:
    """``steps`` lowered to ``ceil(max_epochs * num_batches)`` (at least 1) when that is
    smaller; ``steps`` unchanged when ``max_epochs`` is ``None``. Shared by :func:`train` and
    the recipes' own small loops (e.g. the image recipe's classifier)."""
    if max_epochs is None:
        return steps
    return min(steps, max(1, math.ceil(max_epochs * num_batches)))


def _cap_steps(config: TrainConfig, num_batches: int, component: str, main: bool) -> TrainConfig:
    """``config`` with ``steps`` lowered to ``ceil(max_epochs * num_batches)`` when that is
    smaller (announced once), and ``warmup_steps`` kept below it: a small dataset then trains
    for a fixed number of passes instead of overfitting for the preset's full step count."""
    cap = epoch_capped_steps(config.steps, config.max_epochs, num_batches)
    if cap >= config.steps:
        return config
    warmup = min(config.warmup_steps, cap // 10)
    if main:
        print(f"vqgen: {component}: {num_batches} batches per epoch, so steps {config.steps} -> "
              f"{cap} (max_epochs={config.max_epochs:g}; warmup {warmup})", file=sys.stderr)
    return dataclasses.replace(config, steps=cap, warmup_steps=warmup)


def warmup_cosine(warmup_steps: int, total_steps: int, min_lr_ratio: float) -> Callable[[int], float]:
    """LR multiplier for ``LambdaLR``: ``i`` is the number of optimizer steps already taken.

    Linear warmup ``(i + 1) / warmup_steps`` for ``i < warmup_steps``, then a cosine from 1 at
    ``i = warmup_steps`` down to ``min_lr_ratio`` at ``i = total_steps`` (held there after).
    """
    def multiplier(i: int) -> float:
        if i < warmup_steps:
            return (i + 1) / warmup_steps
        progress = min(1.0, (i - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return multiplier


_NO_DECAY_MODULES = (nn.Embedding, nn.EmbeddingBag, nn.LayerNorm, nn.GroupNorm,
                     nn.modules.batchnorm._NormBase, nn.RMSNorm)


def _prefixes_of(name: str, scales: dict[str, float]) -> list[str]:
    """The prefixes in ``scales`` that parameter ``name`` falls under, by whole dotted components
    ("enc" covers "enc.w", not "encoder.w")."""
    return [k for k in scales if name == k or name.startswith(k.rstrip(".") + ".")]


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW with two groups: weight decay on matrices/kernels, none on biases, 1-D params,
    norms and embeddings; with ``config.lr_scales``, those two per multiplier (each group's
    ``lr_scale`` is kept in it). Parameters with ``requires_grad=False`` are left out."""
    scales = config.lr_scales or {}
    groups: dict[tuple[float, bool], list] = {}
    seen, used = set(), set()
    for module_name, module in model.named_modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            full = f"{module_name}.{name}" if module_name else name
            matched = _prefixes_of(full, scales)   # the longest prefix's multiplier wins
            scale = float(scales[max(matched, key=len)]) if matched else 1.0
            used.update(matched)
            decay = not (p.ndim < 2 or isinstance(module, _NO_DECAY_MODULES))
            groups.setdefault((scale, decay), []).append(p)
    if not seen:
        raise ValueError(f"{type(model).__name__} has no trainable parameters")
    if set(scales) - used:
        raise ValueError(f"TrainConfig.lr_scales: expected prefixes of {type(model).__name__}'s trainable "
                         f"parameter names, got {sorted(set(scales) - used)} matching none")
    return torch.optim.AdamW(
        [{"params": ps, "weight_decay": config.weight_decay if decay else 0.0, "lr": config.lr * scale,
          "lr_scale": scale} for (scale, decay), ps in sorted(groups.items(), key=lambda kv: (kv[0][0], not kv[0][1]))],
        lr=config.lr, betas=config.betas)


# --------------------------------------------------------------------------- data order
class _EpochBatches(Sampler[list[int]]):
    """Index batches of one epoch in a fixed order, starting at batch ``start`` (for resume)."""

    def __init__(self, indices: list[int], batch_size: int, drop_last: bool, start: int = 0):
        self.indices, self.batch_size, self.start = indices, batch_size, start
        full, rest = divmod(len(indices), batch_size)
        self.num_batches = full + (1 if rest and not drop_last else 0)

    def __iter__(self):
        for b in range(self.start, self.num_batches):
            yield self.indices[b * self.batch_size:(b + 1) * self.batch_size]

    def __len__(self) -> int:
        return self.num_batches - self.start


def _epoch_indices(n: int, seed: int, epoch: int, drop_last: bool) -> list[int]:
    """This process's sample order for ``epoch``: a permutation seeded with ``seed + epoch``
    (DistributedSampler's own rule and partition under DDP)."""
    if _distributed():
        sampler = DistributedSampler(range(n), shuffle=True, seed=seed, drop_last=drop_last)
        sampler.set_epoch(epoch)
        return list(sampler)
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch)).tolist()


def _epoch_loader(dataset: Dataset, config: TrainConfig, epoch: int, start: int,
                  device: torch.device) -> DataLoader:
    batches = _EpochBatches(_epoch_indices(len(dataset), config.seed, epoch, config.drop_last),
                            config.batch_size, config.drop_last, start)
    # Our own generator: DataLoader otherwise draws worker seeds from the global RNG, which would
    # shift dropout noise whenever a loader is created mid-epoch on resume.
    return DataLoader(dataset, batch_sampler=batches, num_workers=config.num_workers,
                      pin_memory=device.type == "cuda",
                      generator=torch.Generator().manual_seed(config.seed + epoch))


def _to_device(obj: Any, device: torch.device) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_device(o, device) for o in obj)
    if isinstance(obj, dict):
        return {k: _to_device(v, device) for k, v in obj.items()}
    return obj


# --------------------------------------------------------------------------- RNG state
def _rng_state() -> dict[str, Any]:
    """Every RNG as tensors and primitives (loadable with ``weights_only=True``)."""
    version, mt, gauss = random.getstate()
    _, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": {"version": version, "state": torch.tensor(mt, dtype=torch.int64),
                        "gauss_next": gauss},
             "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"].tolist()), py["gauss_next"]))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# --------------------------------------------------------------------------- logging
def _as_float(name: str, value: Any) -> Any:
    """A metric as a float (a 0-d/1-element tensor stays a detached tensor until logged)."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"metric {name!r} must be a number or a 1-element tensor, "
                             f"got a tensor of shape {tuple(value.shape)}")
        return value.detach().float().reshape(())
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    raise ValueError(f"metric {name!r} must be a number or a 0-d tensor, got {type(value).__name__}")


def _json_value(v: Any) -> Any:
    v = float(v)
    return v if math.isfinite(v) else None  # keep the JSONL valid JSON


def _check_step_output(out: Any) -> tuple[torch.Tensor, dict[str, Any]]:
    if not (isinstance(out, (tuple, list)) and len(out) == 2 and isinstance(out[0], torch.Tensor)
            and out[0].numel() == 1 and isinstance(out[1], dict)):
        got = (f"({', '.join(type(o).__name__ for o in out)})" if isinstance(out, (tuple, list))
               else type(out).__name__)
        raise ValueError(f"step_fn must return (loss: 1-element Tensor, metrics: dict), got {got}")
    return out[0], out[1]


def _num_samples(batch: Any, default: int) -> int:
    """Leading size of the batch's first tensor (its sample count)."""
    items = batch if isinstance(batch, (tuple, list)) else [batch]
    first = next((t for t in items if isinstance(t, torch.Tensor) and t.ndim), None)
    return len(first) if first is not None else default


class _Interval:
    """Sums over one log interval. Saved in the train state (as primitives) so a resumed run
    logs the same interval means as one that never stopped."""

    def __init__(self, state: dict[str, Any] | None = None):
        self.reset()
        if state:
            self.__dict__.update({k: state[k] for k in vars(self)})

    def reset(self) -> None:
        self.count, self.samples = 0, 0
        self.loss = self.grad_norm = self.seconds = 0.0
        self.sums: dict[str, Any] = {}     # metric name -> float or 0-d tensor (synced at logging)
        self.counts: dict[str, int] = {}

    def add(self, loss: float, grad_norm: float | None, metrics: dict[str, Any], samples: int,
            seconds: float) -> None:
        self.count += 1
        self.samples += samples
        self.loss += loss
        self.grad_norm += grad_norm or 0.0
        self.seconds += seconds
        for k, v in metrics.items():
            self.sums[k] = self.sums.get(k, 0.0) + _as_float(k, v)
            self.counts[k] = self.counts.get(k, 0) + 1

    def metric_means(self) -> dict[str, float | None]:
        return {k: _json_value(v / self.counts[k]) for k, v in self.sums.items()}

    def state(self) -> dict[str, Any]:
        return {**vars(self), "sums": {k: float(v) for k, v in self.sums.items()},
                "counts": dict(self.counts)}


class _RunLog:
    """JSONL log (+ TensorBoard when installed) of one component; main process only."""

    def __init__(self, path: Path, tb_dir: Path, resume_step: int | None, active: bool):
        self.path, self.active, self.file, self.tb = path, active, None, None
        if not active:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is None:
            path.unlink(missing_ok=True)      # a fresh run starts a fresh log
        elif path.exists():                   # drop lines for steps that will be re-run
            keep = []
            for line in path.read_text(encoding="utf-8").splitlines():
                with contextlib.suppress(json.JSONDecodeError, TypeError, AttributeError):
                    if json.loads(line).get("step", math.inf) <= resume_step:
                        keep.append(line + "\n")
            atomic_write_text(path, "".join(keep))
        self.file = open(path, "a", encoding="utf-8")
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            return
        with contextlib.suppress(Exception):  # TensorBoard is a nicety, never a failure
            self.tb = SummaryWriter(str(tb_dir), purge_step=None if resume_step is None else resume_step + 1)

    def write(self, record: dict[str, Any], prefix: str = "train") -> None:
        if not self.active:
            return
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.tb is not None:
            for k, v in record.items():
                if k not in ("step", "eval") and isinstance(v, float):
                    self.tb.add_scalar(f"{prefix}/{k}", v, record["step"])

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
        if self.tb is not None:
            self.tb.close()


# --------------------------------------------------------------------------- the loop
def _load_state(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is reported the same way
        raise ValueError(f"cannot read train state {path}: {e}; the file is corrupt (delete it "
                         f"to start over)") from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise ValueError(f"{path} is not a vqgen train state of format {STATE_FORMAT}")
    missing = sorted(_STATE_KEYS - set(state))
    if missing:
        raise ValueError(f"{path} lacks {missing}; the train state is incomplete or corrupt "
                         f"(delete it to start over)")
    if "model_sha256" in state and tensor_digest(state["model"]) != state["model_sha256"]:
        raise ValueError(f"{path} is corrupt: its model weights do not match the SHA-256 recorded "
                         f"when it was saved (delete it to start over)")
    return state


def _reconcile_export(model: nn.Module, export_dir: Path, step: int) -> None:
    """After a crash or a full disk between writing the train state and the export (the state
    is written first), re-export the state's weights so both hold the same step."""
    if read_train_step(export_dir) != step:
        unwrap_model(model).save_pretrained(export_dir, train_step=step)


def _apply_new_lr(state: dict[str, Any], config: TrainConfig, optimizer: torch.optim.Optimizer,
                  scheduler: Any, path: Path) -> None:
    """A resumed run given another ``lr`` uses it from here on (the saved optimizer would
    silently keep the old one) and says so on stderr."""
    saved = state.get("config", {}).get("lr")
    if saved is None or saved == config.lr:
        return
    scheduler.base_lrs = [config.lr * group.get("lr_scale", 1.0) for group in optimizer.param_groups]
    for group, base in zip(optimizer.param_groups, scheduler.base_lrs):
        group["initial_lr"] = base
        group["lr"] = base * scheduler.lr_lambdas[0](scheduler.last_epoch)
    if is_main_process():
        print(f"vqgen: note: resuming {path} at step {state['step']} with lr {config.lr:g} "
              f"(it was {saved:g})", file=sys.stderr)


COMPONENTS = ("tokenizer", "prior", "prior_tokenizer", "envelope_head", "envelope_codec", "envelope_refine")


@locks_run_dir
def train(model: nn.Module, dataset: Dataset, run_dir: str | os.PathLike, config: TrainConfig, *,
          component: str, step_fn: StepFn,
          eval_fn: Callable[[nn.Module], dict[str, float]] | None = None,
          on_eval: Callable[[nn.Module, int], None] | None = None,
          auxiliary: nn.Module | None = None) -> TrainResult:
    """Train ``model`` for ``config.steps`` optimizer steps, resuming from ``run_dir`` if possible.

    Args:
        model: a vqgen ``ConfigModel``; moved to the training device and left there in eval mode.
        dataset: map-style dataset of ``len >= batch_size`` whose items collate into the batch.
        run_dir: run directory; see the module docstring for what is written there.
        component: ``"tokenizer"``, ``"prior"`` or ``"prior_tokenizer"`` (a second tokenizer
            whose codes the prior models; see :meth:`vqgen.pipeline.GenerationPipeline.from_pretrained`);
            names the export dir, state file and log.
        step_fn: ``step_fn(model, batch) -> (loss, metrics)``; ``batch`` is the collated batch
            (e.g. a tuple of tensors) already on the device; ``loss`` a 1-element tensor;
            ``metrics`` a dict of floats / 0-d tensors, averaged over each log interval (a
            ``usage`` entry is shown on the progress bar). Under DDP or compile ``model`` is a thin
            wrapper: call ``model(...)`` or one of the model's own methods once per step.
        eval_fn: ``eval_fn(model) -> dict[str, float]`` every ``eval_every`` steps and at the end,
            on every rank, in eval mode under ``no_grad``; logged as an ``"eval": true`` line.
        on_eval: ``on_eval(model, step)`` at the same times, main process only (e.g. samples).
        auxiliary: an object the step_fn uses besides the model, with its own parameters and
            optimizer (e.g. :class:`vqgen.losses.AdversarialLoss`); moved to the device, and its
            ``state_dict()`` saved in the train state and restored on resume (never exported).

    Returns a :class:`TrainResult`. A run whose state says it finished ``config.steps`` (or more)
    steps loads those weights into ``model`` and returns at once; a larger ``steps`` continues it.

    Raises:
        ValueError: bad config/component/step_fn output, dataset smaller than one batch, a
            state file that is corrupt, incomplete or belongs to another model (or config), or
            ``run_dir`` is a file.
        vqgen.runs.RunLockedError: (a ``ValueError``) another process trains in ``run_dir``.
        TrainingDivergedError: the loss or gradient norm became NaN/inf; the last good
            checkpoint is left as it was.
        OSError: the disk is full (``ENOSPC``) or ``run_dir`` is not writable; the train state
            and the export stay consistent and the next call resumes.
    """
    if component not in COMPONENTS:
        raise ValueError(f"component must be one of {list(COMPONENTS)}, got {component!r}")
    if not isinstance(config, TrainConfig):
        raise ValueError(f"config must be a TrainConfig, got {type(config).__name__}")
    distributed = _distributed()
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    main = rank == 0
    # Samples per process: DistributedSampler drops the tail (drop_last) or pads to equal shares.
    per_rank = len(dataset) // world if config.drop_last else -(-len(dataset) // world)
    if len(dataset) == 0:
        raise ValueError("expected a non-empty dataset, got 0 samples")
    if config.drop_last and config.batch_size > per_rank:
        raise ValueError(f"batch_size must be <= the {per_rank} samples per process when "
                         f"drop_last=True (dataset of {len(dataset)}, world size {world}), "
                         f"got {config.batch_size}")
    num_batches = _EpochBatches(list(range(per_rank)), config.batch_size, config.drop_last).num_batches
    config = _cap_steps(config, num_batches, component, main)
    device = _ddp_device(config.device, int(os.environ.get("LOCAL_RANK", "0"))) if distributed \
        else resolve_device(config.device)
    run_dir = Path(run_dir)
    state_path = run_dir / f"train_state_{component}.pt"
    export_dir = run_dir / component
    t_start = time.perf_counter()

    model.to(device)
    if auxiliary is not None:
        auxiliary.to(device)
    state = _load_state(state_path)
    if state is not None:
        if state.get("model_type") != type(unwrap_model(model)).__name__:
            raise ValueError(f"{state_path} holds a {state.get('model_type')!r} train state, "
                             f"expected {type(unwrap_model(model)).__name__!r}")
        check_state_dict(state["model"], model.state_dict(),
                         f"{state_path} ({type(unwrap_model(model)).__name__})")
        model.load_state_dict(state["model"], strict=True)
        if main:
            _reconcile_export(model, export_dir, state["step"])
        if auxiliary is not None:
            if state.get("auxiliary") is None:
                raise ValueError(f"{state_path} holds no auxiliary state, but this run has one "
                                 f"({type(auxiliary).__name__})")
            auxiliary.load_state_dict(state["auxiliary"])
        if state["finished"] and state["step"] >= config.steps:
            saved_lr = state.get("config", {}).get("lr", config.lr)
            if main and saved_lr != config.lr:
                print(f"vqgen: note: {state_path} already finished {state['step']} steps; lr "
                      f"{config.lr:g} is not used (raise steps to train on)", file=sys.stderr)
            model.eval()
            return TrainResult(state["step"], state["seconds"], dict(state["last_metrics"]),
                               dict(state["eval_metrics"]), resumed_from=state["step"])

    optimizer = build_optimizer(model, config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(config.warmup_steps, config.steps, config.min_lr_ratio))
    step = epoch = batch_in_epoch = 0
    seconds_before, last_metrics, eval_metrics = 0.0, {}, {}
    acc = _Interval()
    if state is None:
        _seed_everything(config.seed + rank)
    else:
        saved_scales = state.get("config", {}).get("lr_scales")
        if (saved_scales or None) != (config.lr_scales or None):
            raise ValueError(f"{state_path}: expected lr_scales {saved_scales!r} as it was trained "
                             f"with, got {config.lr_scales!r} (delete it to start over)")
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        _apply_new_lr(state, config, optimizer, scheduler, state_path)
        step, epoch, batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        seconds_before, last_metrics = state["seconds"], dict(state["last_metrics"])
        eval_metrics, acc = dict(state["eval_metrics"]), _Interval(state["log_accum"])
        if len(state["rng"]) == world:
            _set_rng_state(state["rng"][rank])
        else:
            warnings.warn(f"{state_path} was written by {len(state['rng'])} process(es), resuming "
                          f"with {world}: data order and random streams are reseeded", stacklevel=2)
            _seed_everything(config.seed + rank + 1_000_003 * step)
    resumed_from = step

    step_model = _step_model(model, device, config.compile)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    if config.amp and device.type == "cuda":
        amp = torch.autocast("cuda", dtype=torch.bfloat16)
    elif config.cpu_amp and device.type == "cpu":
        amp = torch.autocast("cpu", dtype=torch.bfloat16)
    else:
        amp = contextlib.nullcontext()
    log = _RunLog(run_dir / "logs" / f"{component}.jsonl", run_dir / "logs" / "tb" / component,
                  None if state is None else step, active=main)
    _barrier()  # nobody trains before rank 0 has truncated the log
    bar = tqdm(total=config.steps, initial=step, desc=component, dynamic_ncols=True,
               disable=not (config.progress and main),
               mininterval=0.1 if sys.stderr.isatty() else 10.0)  # a log file gets a line per 10 s
    last_eval = last_ckpt = last_log = step if state is not None else -1
    elapsed = lambda: seconds_before + time.perf_counter() - t_start  # noqa: E731

    def diverged(what: str, value: float) -> TrainingDivergedError:
        good = (f"last good checkpoint at step {last_ckpt} in {run_dir}" if last_ckpt > 0
                else f"no checkpoint was written in {run_dir}")
        return TrainingDivergedError(f"{what} became {value} at step {step}; {good}")

    def flush_log() -> None:
        nonlocal last_metrics, last_log
        if acc.count == 0:
            return
        loss = torch.tensor([acc.loss / acc.count], dtype=torch.float64)
        if distributed:  # mean over ranks; every rank logs at the same steps
            loss = loss.to(device)
            dist.all_reduce(loss)
            loss = loss / world
        record = {"step": step, "epoch": epoch, "loss": float(loss),
                  "lr": config.lr * scheduler.lr_lambdas[0](step - 1)}  # used at `step` (unscaled)
        if config.grad_clip is not None:
            record["grad_norm"] = acc.grad_norm / acc.count
        record.update(acc.metric_means())
        record["samples_per_second"] = acc.samples * world / max(acc.seconds, 1e-9)
        record["seconds"] = elapsed()
        log.write(record)
        last_metrics, last_log = {k: v for k, v in record.items() if k != "step"}, step
        shown = {"loss": f"{record['loss']:.4f}", "lr": f"{record['lr']:.2e}"}
        if isinstance(record.get("usage"), float):
            shown["usage"] = f"{record['usage']:.3f}"
        bar.set_postfix(shown, refresh=False)
        acc.reset()

    def evaluate() -> None:
        nonlocal eval_metrics, last_eval
        last_eval = step
        if eval_fn is None and on_eval is None:
            return
        model.eval()
        try:
            with torch.no_grad():
                if eval_fn is not None:
                    eval_metrics = {k: float(_as_float(k, v)) for k, v in (eval_fn(model) or {}).items()}
                    log.write({"step": step, "eval": True, **{k: _json_value(v) for k, v in
                                                              eval_metrics.items()},
                               "seconds": elapsed()}, prefix="eval")
                if on_eval is not None and main:
                    on_eval(model, step)
        finally:
            model.train()

    def checkpoint(finished: bool) -> None:
        nonlocal last_ckpt
        rng = _all_gather_objects(_rng_state())
        if main:  # the state first, then the export: after a crash the state is never behind
            weights = {k: v.detach().cpu() for k, v in unwrap_model(model).state_dict().items()}
            atomic_torch_save({
                "format": STATE_FORMAT, "component": component,
                "model_type": type(unwrap_model(model)).__name__,
                "step": step, "epoch": epoch, "batch_in_epoch": batch_in_epoch,
                "finished": finished, "world_size": world,
                "model": weights, "model_sha256": tensor_digest(weights),
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "rng": rng, "seconds": elapsed(), "last_metrics": last_metrics,
                "eval_metrics": eval_metrics, "log_accum": acc.state(),
                "config": dataclasses.asdict(config),
                "auxiliary": None if auxiliary is None else auxiliary.state_dict()}, state_path)
            if last_ckpt != step or read_train_step(export_dir) != step:
                unwrap_model(model).save_pretrained(export_dir, train_step=step)
        last_ckpt = step
        _barrier()  # the checkpoint is complete before any rank goes on (or reads it)

    model.train()
    loader_iter = None
    try:
        while step < config.steps:
            if loader_iter is None:
                loader_iter = iter(_epoch_loader(dataset, config, epoch, batch_in_epoch, device))
            try:
                batch = _to_device(next(loader_iter), device)
            except StopIteration:  # only after resuming with another world size
                epoch, batch_in_epoch, loader_iter = epoch + 1, 0, None
                continue
            t_step = time.perf_counter()
            step += 1
            optimizer.zero_grad(set_to_none=True)
            with amp:
                loss, metrics = _check_step_output(step_fn(step_model, batch))
            loss_value = loss.detach().float().reshape(())
            if distributed:  # every rank stops together, never one stuck in a collective
                bad = (~torch.isfinite(loss_value)).float()
                dist.all_reduce(bad)
                if bad.item() > 0 and math.isfinite(loss_value.item()):
                    raise diverged("loss on another rank", float("nan"))
            if not math.isfinite(loss_value.item()):
                raise diverged("loss", loss_value.item())
            loss.reshape(()).backward()
            grad_norm = None
            if config.grad_clip is not None:
                grad_norm = float(torch.nn.utils.clip_grad_norm_(params, config.grad_clip))
                if not math.isfinite(grad_norm):
                    raise diverged("gradient norm", grad_norm)
            optimizer.step()
            scheduler.step()

            batch_in_epoch += 1
            if batch_in_epoch >= num_batches:
                epoch, batch_in_epoch, loader_iter = epoch + 1, 0, None
            acc.add(loss_value.item(), grad_norm, metrics, _num_samples(batch, config.batch_size),
                    time.perf_counter() - t_step)
            bar.update(1)

            if step % config.log_every == 0:
                flush_log()
            if config.eval_every and step % config.eval_every == 0:
                evaluate()
            if config.checkpoint_every and step % config.checkpoint_every == 0 and step < config.steps:
                checkpoint(finished=False)
        loader_iter = None
        if last_log != step:
            flush_log()
        if last_eval != step:
            evaluate()
        checkpoint(finished=True)
    finally:
        bar.close()
        log.close()
    model.eval()
    return TrainResult(step, elapsed(), last_metrics, eval_metrics, resumed_from=resumed_from)
