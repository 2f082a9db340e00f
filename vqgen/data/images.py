"""Image datasets: Fashion-MNIST, scikit-learn digits, CIFAR-10 and any image folder.

Every loader returns an :class:`ImageData` of uint8 ``(N, C, H, W)`` tensors with a fixed
train/test split. Prepared arrays are cached under ``<root>/<name>/prepared/`` (``.npy`` files and a
``manifest.json``, see :mod:`vqgen.data.cache`); later loads read the cache.

Sources are tried offline first: the local ``<root>`` folder, then system locations (Debian's
``dataset-fashion-mnist`` package), then a torchvision download; when everything fails a
``FileNotFoundError`` says how to get the data.
"""
from __future__ import annotations

import gzip
import hashlib
import logging
import pickle
import struct
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..progress import progress_bar
from .cache import load_arrays, save_arrays

log = logging.getLogger(__name__)

FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                         "Shirt", "Sneaker", "Bag", "Ankle boot"]
FASHION_MNIST_SYSTEM_DIRS = [Path("/usr/share/datasets/fashion-mnist")]
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                   "ship", "truck"]
KNOWN_DATASETS = ("fashion-mnist", "digits", "cifar10", "folder:<path>")
TEST_FRACTION = 0.2  # for datasets without an official split (digits, folders)
FOLDER_IMAGE_SIZE = 64  # folders whose images differ in size are resized to this by default

__all__ = ["ImageData", "load_image_dataset", "prepare_image_dataset", "read_idx",
           "KNOWN_DATASETS"]


@dataclass
class ImageData:
    """A train/test image dataset.

    train_x, test_x: uint8 ``(N, C, H, W)``; train_y, test_y: int64 ``(N,)`` in
    ``[0, len(classes))``; ``classes`` the class names in label order (also ``class_names``);
    ``name`` is the cache name (``<root>/<name>/prepared``); ``resized`` says how the images
    were resized on the way in (e.g. ``"64x48 -> 28x28"``), or is None when kept at their size.
    """

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: list[str]
    name: str
    resized: str | None = None

    @property
    def class_names(self) -> list[str]:
        """Class names in label order: Fashion-MNIST's ("T-shirt/top", ...), digits "0".."9",
        CIFAR-10's, or a folder's subfolder names (sorted, as ``ImageFolder``)."""
        return list(self.classes)

    @property
    def id2label(self) -> dict[int, str]:
        """``{label id: class name}`` (the transformers convention)."""
        return dict(enumerate(self.classes))

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one image."""
        return tuple(self.train_x.shape[1:])

    def __repr__(self) -> str:
        return (f"ImageData({self.name!r}, train={tuple(self.train_x.shape)}, "
                f"test={tuple(self.test_x.shape)}, classes={self.num_classes})")


# --------------------------------------------------------------------------- helpers
def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped) of unsigned bytes into a numpy array.

    Raises ``ValueError`` for a bad magic number, a non-uint8 type code or a truncated body.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:  # gzip raises these for corrupt archives
        raise ValueError(f"cannot read IDX file {path}: {e}") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError(f"{path} is not an IDX file (bad magic {data[:4].hex()})")
    if data[2] != 0x08:
        raise ValueError(f"{path}: expected IDX type 0x08 (uint8), got 0x{data[2]:02x}")
    ndim = data[3]
    header = 4 + 4 * ndim
    shape = struct.unpack(f">{ndim}I", data[4:header])
    count = int(np.prod(shape))
    if len(data) - header != count:
        raise ValueError(f"{path}: IDX header says shape {shape} ({count} bytes), "
                         f"body has {len(data) - header} bytes; the file is truncated or corrupt")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape).copy()


def _split(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic (train_idx, test_idx) permutation split of ``range(n)``."""
    perm = np.random.default_rng(seed).permutation(n)
    n_test = max(1, int(round(n * TEST_FRACTION)))
    return np.sort(perm[n_test:]), np.sort(perm[:n_test])


def _find_file(dirs: list[Path], stem: str) -> Path | None:
    for d in dirs:
        for name in (stem + ".gz", stem):
            if (d / name).is_file():
                return d / name
    return None


# --------------------------------------------------------------------------- sources
def _prepare_fashion_mnist(root: Path, download: bool) -> tuple[dict, dict]:
    stems = {"train_x": "train-images-idx3-ubyte", "train_y": "train-labels-idx1-ubyte",
             "test_x": "t10k-images-idx3-ubyte", "test_y": "t10k-labels-idx1-ubyte"}
    dirs = [root / "fashion-mnist", root / "fashion-mnist" / "raw",
            root / "FashionMNIST" / "raw", *FASHION_MNIST_SYSTEM_DIRS]

    def find_all() -> dict[str, Path] | None:
        for d in dirs:  # all four files from one directory
            files = {k: _find_file([d], s) for k, s in stems.items()}
            if all(files.values()):
                return files
        return None

    files = find_all()
    if files is None and download:
        try:
            from torchvision.datasets import FashionMNIST
            FashionMNIST(str(root), train=True, download=True)
            FashionMNIST(str(root), train=False, download=True)
        except Exception as e:  # offline machines end here
            log.warning("torchvision download of Fashion-MNIST failed: %s", e)
        files = find_all()
    if files is None:
        raise FileNotFoundError(
            "Fashion-MNIST not found: looked for the 4 IDX files (train-images-idx3-ubyte.gz, ...) "
            f"in {', '.join(str(d) for d in dirs)}"
            + ("" if download else " (download disabled)")
            + ". Install them with `apt install dataset-fashion-mnist`, or put the files in "
            f"{root / 'fashion-mnist'} (from https://github.com/zalandoresearch/fashion-mnist).")
    arrays = {k: read_idx(p) for k, p in files.items()}
    for split in ("train", "test"):
        x, y = arrays[f"{split}_x"], arrays[f"{split}_y"]
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise ValueError(f"Fashion-MNIST {split}: expected images (N, 28, 28) and labels (N,), "
                             f"got {x.shape} and {y.shape}")
        arrays[f"{split}_x"] = x[:, None]  # (N, 1, 28, 28)
    source = str(files["train_x"].parent)
    return arrays, {"classes": FASHION_MNIST_CLASSES, "source": source, "split": "official"}


def _prepare_digits(seed: int) -> tuple[dict, dict]:
    from sklearn.datasets import load_digits
    digits = load_digits()
    x = torch.from_numpy(digits.images.astype(np.float32) / 16.0)[:, None]  # (N, 1, 8, 8)
    x = F.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False)  # (N, 1, 16, 16)
    x = (x.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    y = digits.target.astype(np.int64)
    tr, te = _split(len(x), seed)
    arrays = {"train_x": x[tr], "train_y": y[tr], "test_x": x[te], "test_y": y[te]}
    return arrays, {"classes": [str(i) for i in range(10)], "split": "seed",
                    "source": "sklearn.datasets.load_digits (8x8 upscaled bilinear to 16x16)"}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler for the CIFAR-10 batches: only numpy array reconstruction is allowed."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR batch")
        return super().find_class(module, name)


def _read_cifar_batch(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            batch = _NumpyOnlyUnpickler(f, encoding="bytes").load()
    except (OSError, EOFError, pickle.UnpicklingError) as e:
        raise ValueError(f"cannot read CIFAR-10 batch {path}: {e}") from None
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}


def _prepare_cifar10(root: Path, download: bool) -> tuple[dict, dict]:
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    dirs = [root / "cifar-10-batches-py", root / "cifar10" / "cifar-10-batches-py"]
    found = next((d for d in dirs if all((d / n).is_file() for n in names)), None)
    if found is None and download:
        try:
            from torchvision.datasets import CIFAR10
            CIFAR10(str(root), train=True, download=True)
        except Exception as e:  # offline machines end here
            log.warning("torchvision download of CIFAR-10 failed: %s", e)
        found = next((d for d in dirs if all((d / n).is_file() for n in names)), None)
    if found is None:
        raise FileNotFoundError(
            f"CIFAR-10 not found: looked for {', '.join(names)} in "
            f"{', '.join(str(d) for d in dirs)}" + ("" if download else " (download disabled)")
            + ". Download and extract https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz "
            f"into {root}/ (or run this on a machine with internet access so torchvision fetches it).")
    batches = [_read_cifar_batch(found / n) for n in names]
    xs = [np.asarray(b["data"], dtype=np.uint8).reshape(-1, 3, 32, 32) for b in batches]
    ys = [np.asarray(b["labels"], dtype=np.int64) for b in batches]
    arrays = {"train_x": np.concatenate(xs[:5]), "train_y": np.concatenate(ys[:5]),
              "test_x": xs[5], "test_y": ys[5]}
    return arrays, {"classes": CIFAR10_CLASSES, "source": str(found), "split": "official"}


def _folder_sizes(files: list[str]) -> tuple[dict[tuple[int, int], int], bool]:
    """``({(width, height): count}, all grayscale)`` over image files (headers only)."""
    from PIL import Image
    sizes: dict[tuple[int, int], int] = {}
    gray = True
    for file in files:
        with Image.open(file) as im:
            sizes[im.size] = sizes.get(im.size, 0) + 1
            gray &= im.mode in ("L", "1", "I", "I;16", "LA")
    return sizes, gray


def _prepare_folder(path: Path, size: int | None, seed: int,
                    progress: bool = True) -> tuple[dict, dict]:
    """Read ``<path>/<class>/<image>``. ``size`` None keeps the native size when every image
    shares one, else resizes to ``FOLDER_IMAGE_SIZE``; a resize (shorter side to ``size``, then a
    centre crop to ``size x size``) is recorded in the manifest as ``resized``."""
    from PIL import Image
    from torchvision import transforms
    from torchvision.datasets import ImageFolder
    try:
        folder = ImageFolder(str(path))
    except (FileNotFoundError, RuntimeError) as e:  # no class subfolders / no images
        raise FileNotFoundError(f"cannot read image folder {path}: {e}; expected "
                                "<dir>/<class>/<image files>") from None
    sizes, gray = _folder_sizes([file for file, _ in folder.samples])
    native = next(iter(sizes)) if len(sizes) == 1 else None
    if size is None and native is None:
        size = FOLDER_IMAGE_SIZE
    resized = None
    if size is not None and native != (size, size):
        shown = "x".join(map(str, native)) if native else f"{len(sizes)} different sizes"
        resized = f"{shown} -> {size}x{size}"
        resize = transforms.Compose([transforms.Resize(size), transforms.CenterCrop(size)])
    else:
        resize = lambda im: im  # noqa: E731 - native size kept
    imgs, labels = [], []
    for file, label in progress_bar(folder.samples, desc=f"read {path.name}",
                                    enabled=progress):
        with Image.open(file) as im:
            imgs.append(np.asarray(resize(im.convert("RGB")), dtype=np.uint8))  # (H, W, 3)
        labels.append(label)
    x = np.stack(imgs).transpose(0, 3, 1, 2)  # (N, 3, H, W)
    if gray:
        x = x[:, :1]  # grayscale files were replicated to RGB: keep one channel
    y = np.asarray(labels, dtype=np.int64)
    tr, te = _split(len(x), seed)
    arrays = {"train_x": x[tr], "train_y": y[tr], "test_x": x[te], "test_y": y[te]}
    return arrays, {"classes": list(folder.classes), "source": str(path), "split": "seed",
                    "resized": resized}


# --------------------------------------------------------------------------- public
def _resolve(name: str, image_size: int | None) -> tuple[str, Path | None]:
    """(cache name, folder path or None) for a dataset name."""
    if name in ("fashion-mnist", "digits", "cifar10"):
        return name, None
    if name.startswith("folder:") or Path(name).is_dir():
        path = Path(name[len("folder:"):] if name.startswith("folder:") else name).expanduser()
        if not path.is_dir():
            raise FileNotFoundError(f"image folder {path} does not exist")
        path = path.resolve()
        digest = hashlib.sha1(str(path).encode()).hexdigest()[:8]
        return f"{path.name}-{digest}-{f'{image_size}px' if image_size else 'native'}", path
    raise ValueError(f"unknown image dataset {name!r}; expected one of {', '.join(KNOWN_DATASETS)} "
                     "or an existing directory of class subfolders")


def _load_arrays(name: str, root: Path, split_seed: int, image_size: int | None,
                 download: bool, progress: bool = True) -> tuple[dict, dict, str]:
    cache_name, folder = _resolve(name, image_size)
    prepared = root / cache_name / "prepared"
    seeded = name == "digits" or folder is not None
    expected = {"split_seed": split_seed} if seeded else {}
    if folder is not None:
        expected["source"] = str(folder)
    cached = load_arrays(prepared, **expected)
    if cached is not None:
        return cached[0], cached[1], cache_name
    if name == "fashion-mnist":
        arrays, meta = _prepare_fashion_mnist(root, download)
    elif name == "digits":
        arrays, meta = _prepare_digits(split_seed)
    elif name == "cifar10":
        arrays, meta = _prepare_cifar10(root, download)
    else:
        arrays, meta = _prepare_folder(folder, image_size, split_seed, progress)
    meta = {**meta, "name": cache_name, "split_seed": split_seed if seeded else None}
    save_arrays(prepared, arrays, **meta)
    meta["arrays"] = {k: {"shape": list(v.shape), "dtype": str(v.dtype)} for k, v in arrays.items()}
    return arrays, meta, cache_name


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 (N, C, H, W) -> uint8 (N, C, size, size), antialiased bilinear."""
    y = F.interpolate(x.float(), size=(size, size), mode="bilinear", antialias=True,
                      align_corners=False)
    return y.round().clamp(0, 255).to(torch.uint8)


def load_image_dataset(name: str, root: str | Path = "data", split_seed: int = 0,
                       limit: int | None = None, image_size: int | None = None,
                       download: bool = True, verbose: bool = True) -> ImageData:
    """Load (preparing and caching on first use) a train/test image dataset.

    Args:
        name: ``"fashion-mnist"`` (60000/10000 of 1x28x28), ``"digits"`` (scikit-learn's 1797
            8x8 digits upscaled to 1x16x16, split 80/20 by ``split_seed``), ``"cifar10"``
            (50000/10000 of 3x32x32), or ``"folder:/path"`` / an existing directory laid out as
            ``<dir>/<class>/<image>`` (kept at their size when all images share one, else
            resized and centre-cropped to ``image_size``, default 64; grayscale files give 1
            channel, others 3; class names are the subfolder names; split 80/20 by
            ``split_seed``).
        root: where prepared caches live (``<root>/<name>/prepared``) and where raw files are
            looked for first.
        split_seed: seed of the train/test split where there is no official one.
        limit: keep at most the first ``limit`` train and ``limit`` test images (the cache always
            holds the full dataset).
        image_size: for folders the prepared size (None: native size when all images share
            one); for built-in datasets a size to resize to after loading (antialiased bilinear,
            not cached). Any resize is printed once on stderr and recorded in ``resized``.
        download: allow the torchvision download fallback.
        verbose: print the resize note and show progress while reading a folder (off on
            non-main DDP ranks).

    Returns:
        :class:`ImageData` with uint8 images ``(N, C, H, W)`` and int64 labels ``(N,)``.

    Raises:
        ValueError: unknown dataset name, bad ``limit``/``image_size``, or a corrupt source file.
        FileNotFoundError: the data is nowhere to be found (the message says how to get it).
    """
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a positive int or None, got {limit!r}")
    if image_size is not None and (not isinstance(image_size, int) or image_size < 1):
        raise ValueError(f"image_size must be a positive int or None, got {image_size!r}")
    arrays, meta, cache_name = _load_arrays(str(name), Path(root), split_seed, image_size, download,
                                            progress=verbose)
    t = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}
    if limit is not None:
        t = {k: v[:limit] for k, v in t.items()}
    folder = cache_name != name
    resized = meta.get("resized")
    if image_size is not None and not folder and tuple(t["train_x"].shape[-2:]) != (image_size,) * 2:
        resized = "x".join(map(str, t["train_x"].shape[-2:][::-1])) + f" -> {image_size}x{image_size}"
        t["train_x"], t["test_x"] = _resize(t["train_x"], image_size), _resize(t["test_x"], image_size)
    if resized and verbose:
        print(f"{cache_name}: images resized {resized} (set image_size to choose the size)",
              file=sys.stderr)
    return ImageData(train_x=t["train_x"], train_y=t["train_y"].long(), test_x=t["test_x"],
                     test_y=t["test_y"].long(), classes=list(meta["classes"]), name=cache_name,
                     resized=resized)


def prepare_image_dataset(name: str, root: str | Path = "data", split_seed: int = 0,
                          image_size: int | None = None, download: bool = True) -> Path:
    """Prepare and cache a dataset (as :func:`load_image_dataset`); returns the prepared dir.

    Used by ``vqgen data prepare <name>``. Same errors as :func:`load_image_dataset`.
    """
    _, _, cache_name = _load_arrays(str(name), Path(root), split_seed, image_size, download)
    return Path(root) / cache_name / "prepared"
