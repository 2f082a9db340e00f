"""Prepared-dataset cache: a directory of ``.npy`` arrays plus a ``manifest.json``.

Layout of ``<root>/<name>/prepared/``::

    manifest.json     {"format": 1, "arrays": {name: {"shape": [...], "dtype": "uint8"}}, ...}
    <array>.npy       one file per array

Every file is written atomically and the manifest last, so a directory with a manifest is
complete; a crash mid-write leaves the previous cache (or none) and the next load re-prepares.
Arrays are plain ``.npy`` (``allow_pickle=False`` on load).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..modeling import atomic_write

MANIFEST = "manifest.json"
CACHE_FORMAT = 1
_umask = os.umask(0)
os.umask(_umask)
_FILE_MODE = 0o666 & ~_umask

__all__ = ["save_arrays", "load_arrays", "MANIFEST"]


def save_arrays(directory: str | Path, arrays: dict[str, np.ndarray], **manifest: Any) -> Path:
    """Write ``arrays`` as ``<directory>/<key>.npy`` and a manifest with their shapes/dtypes.

    ``manifest`` keyword values must be JSON-serialisable (classes, source, split seed, ...).
    Returns the manifest path.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / MANIFEST).unlink(missing_ok=True)  # the cache is incomplete until rewritten
    info = {}
    for key, arr in arrays.items():
        arr = np.ascontiguousarray(arr)

        def _write(tmp: str, arr: np.ndarray = arr) -> None:
            with open(tmp, "wb") as f:
                np.save(f, arr, allow_pickle=False)
            os.chmod(tmp, _FILE_MODE)  # mkstemp creates 0600; caches are shareable data
        atomic_write(directory / f"{key}.npy", _write)
        info[key] = {"shape": list(arr.shape), "dtype": str(arr.dtype)}
    meta = {"format": CACHE_FORMAT, **manifest, "arrays": info}
    path = directory / MANIFEST

    def _write_manifest(tmp: str) -> None:
        Path(tmp).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        os.chmod(tmp, _FILE_MODE)
    atomic_write(path, _write_manifest)
    return path


def read_manifest(directory: str | Path) -> dict[str, Any] | None:
    """The manifest dict, or ``None`` when missing or unreadable."""
    path = Path(directory) / MANIFEST
    try:
        meta = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return meta if isinstance(meta, dict) and meta.get("format") == CACHE_FORMAT else None


def load_arrays(directory: str | Path, **expected: Any) -> tuple[dict[str, np.ndarray], dict] | None:
    """Load a cache written by :func:`save_arrays`; ``None`` if absent, stale or damaged.

    ``expected`` entries must equal the manifest's (e.g. ``split_seed=0``); an array whose shape
    or dtype differs from the manifest makes the whole cache stale.
    """
    directory = Path(directory)
    meta = read_manifest(directory)
    if meta is None or any(meta.get(k) != v for k, v in expected.items()):
        return None
    arrays = {}
    for key, info in meta.get("arrays", {}).items():
        try:
            arr = np.load(directory / f"{key}.npy", allow_pickle=False)
        except (OSError, ValueError):
            return None
        if list(arr.shape) != info["shape"] or str(arr.dtype) != info["dtype"]:
            return None
        arrays[key] = arr
    return arrays, meta
