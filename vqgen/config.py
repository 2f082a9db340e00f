"""Recipe configs: a YAML file with named presets, plus ``key=value`` overrides.

A recipe config is a nested mapping. Its optional ``presets`` section maps a preset name
(``quick``, ``full``) to a partial mapping merged over the base. Overrides use dotted keys
(``tokenizer_train.steps=200``) and YAML values (``prior=pixelcnn``, ``sampling.top_k=null``).
A key that is not in the resolved config raises ``ValueError`` naming the known keys, except
below mappings declared open with ``open_keys`` (free-form model overrides), and so does a value
of the wrong kind (``tokenizer_train=5`` where a mapping belongs, ``steps=abc`` where a number
does). Recipes then call :func:`vqgen.runs.start_run` (config checks, run-dir lock, config.yaml)
and :func:`vqgen.runs.run_main` (user mistakes as one line, exit 2).
"""
from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, Iterable

import yaml

from .modeling import atomic_write_text


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _checked_value(key: str, old: Any, new: Any) -> Any:
    """``new`` if it has the kind of value ``old`` has (mapping, list, bool, number; None and
    strings take anything); a string that reads as a number where a number is expected (YAML
    reads ``1e-3`` as a string) becomes that number. Else ``ValueError`` naming both."""
    kinds = ((dict, "a mapping"), (list, "a list"), (bool, "true/false"))
    for kind, name in kinds:
        if isinstance(old, kind) and not isinstance(new, kind):
            raise ValueError(f"config key {key!r} expects {name}, got {new!r}")
        if isinstance(new, kind) and old is not None and not isinstance(old, kind):
            raise ValueError(f"config key {key!r} expects a value like {old!r}, got {new!r}")
    if _is_number(old) and not _is_number(new) and new is not None:
        try:
            return float(new)
        except (TypeError, ValueError):
            raise ValueError(f"config key {key!r} expects a number, got {new!r}") from None
    return new


def _merge(base: dict, update: dict, path: str = "", open_keys: Iterable[str] = ()) -> dict:
    """``base`` updated by ``update`` (recursively); unknown keys and values of the wrong kind
    (e.g. ``tokenizer_train=5`` where a mapping belongs) raise ``ValueError``."""
    out = copy.deepcopy(base)
    is_open = path.rstrip(".") in open_keys
    for key, value in update.items():
        full = f"{path}{key}"
        if key not in out and not is_open:
            raise ValueError(f"unknown config key {full!r}; expected one of "
                             f"{sorted(f'{path}{k}' for k in out)}")
        if key in out and not is_open:
            value = _checked_value(full, out[key], value)
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value, f"{full}.", open_keys)
        else:
            out[key] = copy.deepcopy(value)
    return out


def parse_overrides(items: Iterable[str]) -> dict:
    """``["a.b=1", "c=x"]`` -> ``{"a": {"b": 1}, "c": "x"}`` (values parsed as YAML)."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item or item.startswith("="):
            raise ValueError(f"expected an override of the form key=value, got {item!r}")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {item!r} conflicts with another override of {part!r}")
        node[parts[-1]] = value
    return out


def load_config(path: str | os.PathLike, preset: str | None = None,
                overrides: Iterable[str] = (), open_keys: Iterable[str] = ()) -> dict:
    """Read a recipe YAML, apply ``presets[preset]`` then the overrides; returns a plain dict
    without the ``presets`` section (plus ``preset``: the name used)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no config file at {path}")
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a mapping at the top level, got {type(raw).__name__}")
    presets = raw.pop("presets", {}) or {}
    open_keys = tuple(open_keys)
    config = raw
    if preset is not None:
        if preset not in presets:
            raise ValueError(f"unknown preset {preset!r}; expected one of {sorted(presets)}")
        config = _merge(config, presets[preset], open_keys=open_keys)
    config = _merge(config, parse_overrides(overrides), open_keys=open_keys)
    config["preset"] = preset
    return config


def save_config(config: dict, path: str | os.PathLike) -> None:
    atomic_write_text(path, yaml.safe_dump(config, sort_keys=False))
