"""Image dataset loaders: digits, Fashion-MNIST (when installed), CIFAR-10 layout, folders, cache."""
import gzip
import json
import pickle
import struct

import numpy as np
import pytest
import torch

from vqgen.data import images as images_mod
from vqgen.data.images import (FASHION_MNIST_SYSTEM_DIRS, ImageData, load_image_dataset,
                               prepare_image_dataset, read_idx)


def _has_fashion_mnist() -> bool:
    return any((d / "train-images-idx3-ubyte.gz").is_file() for d in FASHION_MNIST_SYSTEM_DIRS)


# --------------------------------------------------------------------------- digits
def test_digits_shapes_dtypes_and_ranges(tmp_path):
    data = load_image_dataset("digits", root=tmp_path)
    assert isinstance(data, ImageData) and data.name == "digits"
    assert data.train_x.dtype == torch.uint8 and data.train_y.dtype == torch.long
    assert data.train_x.shape[1:] == (1, 16, 16) and data.image_shape == (1, 16, 16)
    assert len(data.train_x) + len(data.test_x) == 1797
    assert len(data.test_x) == pytest.approx(0.2 * 1797, abs=1)
    assert len(data.train_x) == len(data.train_y) and len(data.test_x) == len(data.test_y)
    assert data.classes == [str(i) for i in range(10)] and data.num_classes == 10
    assert set(data.train_y.tolist()) == set(range(10))
    assert int(data.train_x.max()) == 255 and int(data.train_x.min()) == 0


def test_digits_split_is_deterministic_per_seed(tmp_path):
    a = load_image_dataset("digits", root=tmp_path / "a", split_seed=0)
    b = load_image_dataset("digits", root=tmp_path / "b", split_seed=0)
    c = load_image_dataset("digits", root=tmp_path / "a", split_seed=1)
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.test_y, b.test_y)
    assert not torch.equal(a.test_x, c.test_x)
    # train and test are disjoint and cover the dataset: compare (image, label) multisets
    def key(x, y):
        return sorted(bytes(xi.numpy().tobytes()) + bytes([int(yi)]) for xi, yi in zip(x, y))
    assert sorted(key(a.train_x, a.train_y) + key(a.test_x, a.test_y)) == \
        sorted(key(c.train_x, c.train_y) + key(c.test_x, c.test_y))


def test_cache_manifest_and_reuse(tmp_path, monkeypatch):
    path = prepare_image_dataset("digits", root=tmp_path)
    assert path == tmp_path / "digits" / "prepared"
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["split_seed"] == 0 and manifest["classes"][0] == "0"
    assert manifest["arrays"]["train_x"]["shape"][1:] == [1, 16, 16]
    assert manifest["arrays"]["train_x"]["dtype"] == "uint8"
    for key in ("train_x", "train_y", "test_x", "test_y"):
        assert (path / f"{key}.npy").is_file()
    first = load_image_dataset("digits", root=tmp_path)

    def boom(*_a, **_k):
        raise AssertionError("the cache should have been used")
    monkeypatch.setattr(images_mod, "_prepare_digits", boom)
    again = load_image_dataset("digits", root=tmp_path)
    assert torch.equal(first.train_x, again.train_x)
    # a damaged cache (missing manifest) is rebuilt rather than trusted
    monkeypatch.undo()
    (path / "manifest.json").unlink()
    (path / "train_x.npy").write_bytes(b"garbage")
    rebuilt = load_image_dataset("digits", root=tmp_path)
    assert torch.equal(first.train_x, rebuilt.train_x)


def test_limit_and_resize(tmp_path):
    data = load_image_dataset("digits", root=tmp_path, limit=50, image_size=8)
    assert data.train_x.shape == (50, 1, 8, 8) and data.test_x.shape == (50, 1, 8, 8)
    assert data.train_y.shape == (50,)
    with pytest.raises(ValueError, match="limit"):
        load_image_dataset("digits", root=tmp_path, limit=0)


def test_unknown_name_lists_known_datasets(tmp_path):
    with pytest.raises(ValueError, match="fashion-mnist.*digits.*cifar10"):
        load_image_dataset("imagenet-21k", root=tmp_path)


# --------------------------------------------------------------------------- Fashion-MNIST
@pytest.mark.skipif(not _has_fashion_mnist(),
                    reason="Fashion-MNIST not installed (apt install dataset-fashion-mnist)")
def test_fashion_mnist_from_system_dir(tmp_path):
    data = load_image_dataset("fashion-mnist", root=tmp_path, limit=300)
    assert data.train_x.shape == (300, 1, 28, 28) and data.test_x.shape == (300, 1, 28, 28)
    assert data.train_x.dtype == torch.uint8 and data.train_y.dtype == torch.long
    assert data.num_classes == 10 and data.classes[0] == "T-shirt/top"
    assert int(data.train_y.max()) < 10
    manifest = json.loads((tmp_path / "fashion-mnist" / "prepared" / "manifest.json").read_text())
    assert manifest["arrays"]["train_x"]["shape"] == [60000, 1, 28, 28]
    assert manifest["arrays"]["test_y"]["shape"] == [10000]


def _write_idx(path, array):
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_fashion_mnist_local_dir_wins_and_missing_files_explain(tmp_path, monkeypatch):
    monkeypatch.setattr(images_mod, "FASHION_MNIST_SYSTEM_DIRS", [])
    with pytest.raises(FileNotFoundError, match="apt install dataset-fashion-mnist"):
        load_image_dataset("fashion-mnist", root=tmp_path, download=False)
    raw = tmp_path / "fashion-mnist"
    raw.mkdir()
    rng = np.random.default_rng(0)
    for split, n in (("train", 12), ("t10k", 5)):
        _write_idx(raw / f"{split}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        _write_idx(raw / f"{split}-labels-idx1-ubyte.gz", rng.integers(0, 10, (n,)))
    data = load_image_dataset("fashion-mnist", root=tmp_path, download=False)
    assert data.train_x.shape == (12, 1, 28, 28) and data.test_x.shape == (5, 1, 28, 28)
    assert torch.equal(data.train_x[:, 0], torch.from_numpy(read_idx(raw / "train-images-idx3-ubyte.gz")))


def test_read_idx_rejects_corrupt_files(tmp_path):
    good = tmp_path / "x-idx3-ubyte.gz"
    _write_idx(good, np.zeros((3, 4, 4)))
    assert read_idx(good).shape == (3, 4, 4)
    truncated = tmp_path / "t-idx3-ubyte"
    truncated.write_bytes(gzip.decompress(good.read_bytes())[:-5])
    with pytest.raises(ValueError, match="truncated"):
        read_idx(truncated)
    bad = tmp_path / "b-idx3-ubyte"
    bad.write_bytes(b"\x01\x02\x08\x01" + b"\x00" * 8)
    with pytest.raises(ValueError, match="not an IDX"):
        read_idx(bad)


# --------------------------------------------------------------------------- CIFAR-10 layout
def test_cifar10_missing_explains_and_batches_load(tmp_path):
    with pytest.raises(FileNotFoundError, match="cifar-10-python.tar.gz"):
        load_image_dataset("cifar10", root=tmp_path, download=False)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name, n in [(f"data_batch_{i}", 4) for i in range(1, 6)] + [("test_batch", 3)]:
        batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 b"labels": rng.integers(0, 10, n).tolist()}
        (folder / name).write_bytes(pickle.dumps(batch))
    data = load_image_dataset("cifar10", root=tmp_path, download=False)
    assert data.train_x.shape == (20, 3, 32, 32) and data.test_x.shape == (3, 3, 32, 32)
    assert data.classes[0] == "airplane" and data.train_y.dtype == torch.long


def test_cifar10_refuses_arbitrary_pickles(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / name).write_bytes(pickle.dumps({b"data": Evil(), b"labels": []}))
    with pytest.raises(ValueError, match="refusing"):
        load_image_dataset("cifar10", root=tmp_path, download=False)


# --------------------------------------------------------------------------- folders
def _make_folder(root, mode, n_per_class=5):
    from PIL import Image
    rng = np.random.default_rng(0)
    for cls in ("cats", "dogs"):
        (root / cls).mkdir(parents=True)
        for i in range(n_per_class):
            shape = (12, 20) if mode == "L" else (12, 20, 3)
            Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(root / cls / f"{i}.png")


def test_image_folder_rgb_and_gray(tmp_path):
    rgb, gray = tmp_path / "rgb", tmp_path / "gray"
    _make_folder(rgb, "RGB")
    _make_folder(gray, "L")
    data = load_image_dataset(f"folder:{rgb}", root=tmp_path / "data", image_size=8)
    assert data.classes == ["cats", "dogs"]
    assert data.train_x.shape == (8, 3, 8, 8) and data.test_x.shape == (2, 3, 8, 8)
    assert (tmp_path / "data" / data.name / "prepared" / "manifest.json").is_file()
    g = load_image_dataset(str(gray), root=tmp_path / "data", image_size=8)  # a bare directory
    assert g.train_x.shape[1:] == (1, 8, 8) and g.name != data.name
    with pytest.raises(FileNotFoundError):
        load_image_dataset(f"folder:{tmp_path / 'nope'}", root=tmp_path / "data")


def test_image_folder_keeps_native_size_and_names_classes(tmp_path, capsys):
    gray = tmp_path / "gray"
    _make_folder(gray, "L")  # every image is 20 wide x 12 high
    data = load_image_dataset(f"folder:{gray}", root=tmp_path / "data")
    assert data.train_x.shape[1:] == (1, 12, 20) and data.resized is None
    assert data.class_names == ["cats", "dogs"] and data.id2label == {0: "cats", 1: "dogs"}
    assert "resized" not in capsys.readouterr().err
    again = load_image_dataset(f"folder:{gray}", root=tmp_path / "data", image_size=8)
    assert again.train_x.shape[1:] == (1, 8, 8) and again.resized == "20x12 -> 8x8"
    assert capsys.readouterr().err.count("resized 20x12 -> 8x8") == 1


def test_image_folder_of_mixed_sizes_is_resized_to_the_default(tmp_path, capsys):
    from PIL import Image
    from vqgen.data.images import FOLDER_IMAGE_SIZE
    mixed = tmp_path / "mixed"
    _make_folder(mixed, "L", n_per_class=3)
    Image.fromarray(np.zeros((30, 30), dtype=np.uint8), "L").save(mixed / "cats" / "big.png")
    data = load_image_dataset(str(mixed), root=tmp_path / "data", verbose=False)
    assert data.train_x.shape[2:] == (FOLDER_IMAGE_SIZE, FOLDER_IMAGE_SIZE)
    assert data.resized == f"2 different sizes -> {FOLDER_IMAGE_SIZE}x{FOLDER_IMAGE_SIZE}"
    assert capsys.readouterr().err == ""  # verbose=False prints nothing


def test_builtin_class_names(tmp_path):
    from vqgen.data.images import FASHION_MNIST_CLASSES
    digits = load_image_dataset("digits", root=tmp_path, limit=5)
    assert digits.class_names == [str(i) for i in range(10)]
    assert FASHION_MNIST_CLASSES[3] == "Dress"
