"""Text datasets: Debian fortunes, Python's pydoc topics, or any text file / folder.

Every loader returns a :class:`TextData`: lists of strings with int64 category labels and a fixed
held-out split (seeded permutation, ``TEST_FRACTION`` of the examples). Whitespace is normalised
(runs of whitespace become one space, ends stripped), unicode is kept as it is, empty examples are
dropped. Prepared data is cached under ``<root>/text/<name>/prepared/`` as UTF-8 bytes plus
offsets (``.npy``, no pickle) with a manifest (:mod:`vqgen.data.cache`).

Sources:

- ``fortunes``: Debian's ``fortunes`` package (BSD), ``%``-separated quotes in plain files under
  ``/usr/share/games/fortunes`` (or ``<root>/fortunes``); the file name is the category; ``.dat``
  and ``.u8`` files are skipped. ``apt-get install fortunes`` (``make data`` does it as root).
- ``pydoc``: ``pydoc_data.topics`` from the standard library, always present: the paragraphs of
  each help topic, category = topic. The tests' corpus and the fallback when fortunes are missing.
- ``file:/path``: a UTF-8 text file, one example per line (one category, the file's stem), or a
  folder of such files (category = file stem).
"""
from __future__ import annotations

import hashlib
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .cache import load_arrays, save_arrays

FORTUNE_DIRS = [Path("/usr/share/games/fortunes"), Path("/usr/share/fortune")]
TEST_FRACTION = 0.05
KNOWN_TEXT_DATASETS = ("fortunes", "pydoc", "file:<path>")
_WS = re.compile(r"\s+")

__all__ = ["TextData", "load_text_dataset", "prepare_text_dataset", "normalize_text",
           "KNOWN_TEXT_DATASETS"]


@dataclass
class TextData:
    """A train/held-out text dataset: ``train_texts``/``test_texts`` lists of non-empty strings,
    ``train_y``/``test_y`` int64 arrays of category ids in ``[0, len(classes))``."""

    train_texts: list[str]
    train_y: np.ndarray
    test_texts: list[str]
    test_y: np.ndarray
    classes: list[str]
    name: str

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __repr__(self) -> str:
        return (f"TextData({self.name!r}, train={len(self.train_texts)}, "
                f"test={len(self.test_texts)}, classes={self.num_classes})")


def normalize_text(text: str) -> str:
    """Collapse whitespace runs to one space and strip the ends; everything else is kept."""
    return _WS.sub(" ", text).strip()


# --------------------------------------------------------------------------- sources
def _fortune_dir(root: Path) -> Path | None:
    for d in [root / "fortunes", *FORTUNE_DIRS]:
        if d.is_dir() and any(_fortune_files(d)):
            return d
    return None


def _fortune_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir()
                  if p.is_file() and not p.is_symlink() and p.suffix not in (".dat", ".u8")
                  and not p.name.startswith("."))


def _read_fortunes(directory: Path) -> tuple[list[str], list[str]]:
    texts, labels = [], []
    for path in _fortune_files(directory):
        raw = path.read_text(encoding="utf-8", errors="replace")
        for quote in re.split(r"^%[ \t]*$", raw, flags=re.MULTILINE):
            quote = normalize_text(quote)
            if quote:
                texts.append(quote)
                labels.append(path.name)
    return texts, labels


def _read_pydoc() -> tuple[list[str], list[str]]:
    from pydoc_data.topics import topics
    texts, labels = [], []
    for topic in sorted(topics):
        for para in re.split(r"\n\s*\n", topics[topic]):
            para = normalize_text(para)
            if para:
                texts.append(para)
                labels.append(topic)
    return texts, labels


def _read_files(path: Path) -> tuple[list[str], list[str]]:
    files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")) \
        if path.is_dir() else [path]
    texts, labels = [], []
    for f in files:
        try:
            lines = f.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError as e:
            raise ValueError(f"expected UTF-8 text in {f}, got undecodable bytes ({e})") from None
        for line in lines:
            line = normalize_text(line)
            if line:
                texts.append(line)
                labels.append(f.stem)
    return texts, labels


# --------------------------------------------------------------------------- cache
def _pack(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Strings -> (uint8 UTF-8 bytes, int64 offsets of length n + 1)."""
    blobs = [t.encode("utf-8") for t in texts]
    offsets = np.zeros(len(blobs) + 1, dtype=np.int64)
    np.cumsum([len(b) for b in blobs], out=offsets[1:])
    return np.frombuffer(b"".join(blobs), dtype=np.uint8).copy(), offsets


def _unpack(data: np.ndarray, offsets: np.ndarray) -> list[str]:
    raw = data.tobytes()
    return [raw[offsets[i]:offsets[i + 1]].decode("utf-8") for i in range(len(offsets) - 1)]


def _resolve(name: str, root: Path) -> tuple[str, str, Path | None]:
    """(kind, cache name, path) for a dataset name."""
    if name in ("fortunes", "pydoc"):
        return name, name, None
    if name.startswith("file:"):
        path = Path(name[len("file:"):]).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"no text file or folder at {path}")
        path = path.resolve()
        digest = hashlib.sha1(str(path).encode()).hexdigest()[:8]
        return "file", f"{path.stem}-{digest}", path
    raise ValueError(f"unknown text dataset {name!r}; expected one of "
                     f"{', '.join(KNOWN_TEXT_DATASETS)}")


def _prepare(name: str, root: Path, split_seed: int) -> tuple[dict, dict, str]:
    kind, cache_name, path = _resolve(name, root)
    prepared = root / "text" / cache_name / "prepared"
    source = str(path) if path is not None else kind
    cached = load_arrays(prepared, split_seed=split_seed, source=source)
    if cached is not None:
        return cached[0], cached[1], cache_name
    if kind == "fortunes":
        directory = _fortune_dir(root)
        if directory is None:
            raise FileNotFoundError(
                f"Debian fortunes not found in {root / 'fortunes'} or "
                f"{', '.join(map(str, FORTUNE_DIRS))}: install them with `apt-get install "
                f"fortunes` (or `make data` as root), or use dataset=pydoc")
        texts, labels = _read_fortunes(directory)
        source = str(directory)
    elif kind == "pydoc":
        texts, labels = _read_pydoc()
    else:
        texts, labels = _read_files(path)
    if len(texts) < 2:
        raise ValueError(f"expected at least 2 non-empty examples in {name}, got {len(texts)}")
    classes = sorted(set(labels))
    y = np.array([classes.index(c) for c in labels], dtype=np.int64)
    perm = np.random.default_rng(split_seed).permutation(len(texts))
    n_test = max(1, int(round(len(texts) * TEST_FRACTION)))
    test_idx, train_idx = np.sort(perm[:n_test]), np.sort(perm[n_test:])
    arrays = {}
    for split, idx in (("train", train_idx), ("test", test_idx)):
        arrays[f"{split}_bytes"], arrays[f"{split}_offsets"] = _pack([texts[i] for i in idx])
        arrays[f"{split}_y"] = y[idx]
    meta = {"classes": classes, "split_seed": split_seed, "source": source, "name": cache_name}
    if kind == "fortunes":  # the cache key is the dataset kind; record where the files were
        meta["source"], meta["fortune_dir"] = "fortunes", source
    save_arrays(prepared, arrays, **meta)
    return arrays, meta, cache_name


# --------------------------------------------------------------------------- public
def load_text_dataset(name: str = "fortunes", root: str | Path = "data", split_seed: int = 0,
                      fallback: bool = False) -> TextData:
    """Load (preparing and caching on first use) a text dataset; see the module doc.

    ``fallback=True`` loads ``pydoc`` with a warning when ``fortunes`` is not installed.
    Raises ``ValueError`` for an unknown name or a non-UTF-8 file, ``FileNotFoundError`` when the
    data is missing (the message says how to get it).
    """
    root = Path(root)
    try:
        arrays, meta, cache_name = _prepare(str(name), root, split_seed)
    except FileNotFoundError:
        if not (fallback and name == "fortunes"):
            raise
        warnings.warn("Debian fortunes are not installed (apt-get install fortunes); "
                      "using the pydoc topics corpus instead", stacklevel=2)
        arrays, meta, cache_name = _prepare("pydoc", root, split_seed)
    return TextData(train_texts=_unpack(arrays["train_bytes"], arrays["train_offsets"]),
                    train_y=np.asarray(arrays["train_y"], dtype=np.int64),
                    test_texts=_unpack(arrays["test_bytes"], arrays["test_offsets"]),
                    test_y=np.asarray(arrays["test_y"], dtype=np.int64),
                    classes=list(meta["classes"]), name=cache_name)


def prepare_text_dataset(name: str = "fortunes", root: str | Path = "data",
                         split_seed: int = 0) -> Path:
    """Prepare and cache a text dataset (``vqgen data prepare text ...``); returns its folder."""
    _, _, cache_name = _prepare(str(name), Path(root), split_seed)
    return Path(root) / "text" / cache_name / "prepared"
