"""Encode a dataset with a tokenizer, caching the codes beside the tokenizer that made them.

The cache file ``<cache_dir>/<name>.safetensors`` records the SHA-256 of the tokenizer's
``model.safetensors`` and the input's shape; a different tokenizer or input re-encodes.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from ..modeling import WEIGHTS_NAME, atomic_write


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@torch.no_grad()
def encode_batches(tokenizer, x: torch.Tensor, batch_size: int = 256,
                   device: str | torch.device = "cpu", progress: bool = True,
                   desc: str = "encode") -> torch.Tensor:
    """Encode ``x`` (N, ...) in batches on ``device``; returns CPU LongTensor codes (N, ...)."""
    if len(x) == 0:
        raise ValueError("expected a non-empty dataset to encode, got 0 items")
    was_training = tokenizer.training
    tokenizer.eval()
    out = []
    for start in tqdm(range(0, len(x), batch_size), desc=desc, disable=not progress, leave=False):
        out.append(tokenizer.encode(x[start:start + batch_size].to(device)).cpu())
    tokenizer.train(was_training)
    return torch.cat(out)


def encode_cached(tokenizer, tokenizer_dir: str | os.PathLike, name: str, x: torch.Tensor,
                  cache_dir: str | os.PathLike, batch_size: int = 256,
                  device: str | torch.device = "cpu", progress: bool = True) -> torch.Tensor:
    """Codes of ``x`` under ``tokenizer`` (saved at ``tokenizer_dir``), from cache when valid."""
    key = f"{file_sha256(Path(tokenizer_dir) / WEIGHTS_NAME)}:{tuple(x.shape)}"
    path = Path(cache_dir) / f"{name}.safetensors"
    if path.is_file():
        try:
            from safetensors import safe_open
            with safe_open(str(path), "pt") as f:
                if (f.metadata() or {}).get("key") == key:
                    return load_file(str(path))["codes"]
        except (SafetensorError, OSError):
            pass  # corrupt cache: re-encode
    codes = encode_batches(tokenizer, x, batch_size, device, progress, desc=f"encode {name}")
    atomic_write(path, lambda tmp: save_file({"codes": codes.contiguous()}, tmp,
                                             metadata={"key": key}))
    return codes
