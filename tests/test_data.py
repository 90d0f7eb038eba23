"""growbatch.data: every reader on files written here, every error, downloads from a local server, the shared files."""

from __future__ import annotations

import dataclasses
import functools
import gzip
import hashlib
import http.server
import io
import os
import pickle
import struct
import tarfile
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

import growbatch.data
from growbatch.data import (
    DATASET_NAMES,
    DataError,
    ImageDataset,
    cifar10,
    digits,
    download,
    fashion_mnist,
    load_dataset,
    mnist,
)
from growbatch.data.dataset import channel_stats

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
IDX_STEMS = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
KEYS = ("x_train", "y_train", "x_test", "y_test")
CIFAR_BATCHES = ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch")


# ---------------------------------------------------------------- writers (independent of the readers)

def make_arrays(image_shape: tuple[int, ...], n_train: int = 12, n_test: int = 5, seed: int = 0) -> dict:
    random = np.random.default_rng(seed)
    return {
        "x_train": random.integers(0, 256, (n_train, *image_shape), dtype=np.uint8),
        "y_train": random.integers(0, 10, n_train).astype(np.uint8),
        "x_test": random.integers(0, 256, (n_test, *image_shape), dtype=np.uint8),
        "y_test": random.integers(0, 10, n_test).astype(np.uint8),
    }


def idx_bytes(array: np.ndarray) -> bytes:
    """IDX as the MNIST page describes it: 0, 0, type 0x08, ndim, big-endian int32 sizes, then the bytes."""
    return struct.pack(f">BBBB{array.ndim}I", 0, 0, 8, array.ndim, *array.shape) + array.tobytes()


def write_idx_folder(raw: Path, arrays: dict, compressed: bool | tuple[bool, ...]) -> list[Path]:
    raw.mkdir(parents=True, exist_ok=True)
    flags = compressed if isinstance(compressed, tuple) else (compressed,) * 4
    paths = []
    for stem, key, gz in zip(IDX_STEMS, KEYS, flags):
        data = idx_bytes(arrays[key])
        path = raw / (stem + ".gz" if gz else stem)
        path.write_bytes(gzip.compress(data) if gz else data)
        paths.append(path)
    return paths


def _py2_str(data: bytes) -> bytes:
    return (b"U" + bytes([len(data)]) if len(data) < 256 else b"T" + struct.pack("<i", len(data))) + data


def _py2_int(value: int) -> bytes:
    return b"J" + struct.pack("<i", value)


def py2_cifar_pickle(data: np.ndarray, labels: list[int]) -> bytes:
    """The protocol-2 bytes Python 2's cPickle writes for a CIFAR batch: str as STRING opcodes, numpy.core names."""
    rows, columns = data.shape
    array = (b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n" + _py2_int(0) + b"\x85" + _py2_str(b"b")
             + b"\x87R(" + _py2_int(1) + _py2_int(rows) + _py2_int(columns) + b"\x86"
             + b"cnumpy\ndtype\n" + _py2_str(b"u1") + b"\x89\x88\x87R"
             + b"(" + _py2_int(3) + _py2_str(b"|") + b"NNN" + _py2_int(-1) + _py2_int(-1) + _py2_int(0) + b"tb"
             + b"\x89" + _py2_str(data.tobytes()) + b"tb")
    entries = [
        (b"batch_label", _py2_str(b"training batch 1 of 5")),
        (b"labels", b"](" + b"".join(_py2_int(label) for label in labels) + b"e"),
        (b"data", array),
        (b"filenames", b"](" + b"".join(_py2_str(b"img_%d.png" % i) for i in range(rows)) + b"e"),
    ]
    return b"\x80\x02}(" + b"".join(_py2_str(key) + value for key, value in entries) + b"u."


def cifar_rows(images: np.ndarray) -> np.ndarray:
    """N x 3072 rows as in the CIFAR batches: the 1024 red values, then green, then blue, each row-major."""
    return np.stack([np.concatenate([image[0].ravel(), image[1].ravel(), image[2].ravel()]) for image in images])


def write_cifar_folder(folder: Path, arrays: dict, writer=None) -> None:
    """Five training batches (the training images split in five) and a test batch."""
    writer = writer or (lambda rows, labels: py2_cifar_pickle(rows, labels))
    folder.mkdir(parents=True, exist_ok=True)
    parts = np.array_split(np.arange(len(arrays["x_train"])), 5)
    for name, part in zip(CIFAR_BATCHES[:5], parts):
        (folder / name).write_bytes(writer(cifar_rows(arrays["x_train"][part]), arrays["y_train"][part].tolist()))
    (folder / "test_batch").write_bytes(writer(cifar_rows(arrays["x_test"]), arrays["y_test"].tolist()))


def assert_loaded(dataset: ImageDataset, arrays: dict, channels_last_source: bool = True) -> None:
    """The loaded tensors equal the arrays (given N x H x W, N x H x W x C or N x C x H x W)."""
    for key in KEYS:
        tensor, expected = getattr(dataset, key), arrays[key]
        if key.startswith("x"):
            if expected.ndim == 3:
                expected = expected[:, None]
            elif channels_last_source:
                expected = expected.transpose(0, 3, 1, 2)
            assert tensor.dtype == torch.uint8 and tensor.is_contiguous()
        else:
            assert tensor.dtype == torch.int64
        assert tensor.shape == expected.shape
        assert np.array_equal(tensor.numpy(), expected)


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


# ---------------------------------------------------------------- names and ImageDataset

def test_dataset_names():
    assert DATASET_NAMES == ("digits", "mnist", "fashion-mnist", "cifar10")


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown data set 'svhn'; valid names: digits, mnist, fashion-mnist, cifar10"):
        load_dataset("svhn")
    with pytest.raises(TypeError, match="name should be a str, one of digits, .* but got int"):
        load_dataset(3)  # type: ignore[arg-type]


def _small_dataset(**changes) -> ImageDataset:
    fields = dict(name="toy", x_train=torch.zeros(4, 3, 5, 5, dtype=torch.uint8), y_train=torch.zeros(4, dtype=torch.long),
                  x_test=torch.zeros(2, 3, 5, 5, dtype=torch.uint8), y_test=torch.ones(2, dtype=torch.long),
                  num_classes=10, mean=(0.5, 0.5, 0.5), std=(0.2, 0.2, 0.2))
    return ImageDataset(**{**fields, **changes})


def test_image_dataset_properties_and_repr():
    dataset = _small_dataset()
    assert (dataset.in_channels, dataset.image_size, dataset.train_size, dataset.test_size) == (3, 5, 4, 2)
    assert dataset.augment is False
    assert repr(dataset) == ("ImageDataset(name='toy', train_size=4, test_size=2, image=(3, 5, 5), "
                             "num_classes=10, augment=False)")
    with pytest.raises(AttributeError):
        dataset.name = "other"  # frozen


@pytest.mark.parametrize("changes, error, message", [
    (dict(x_train=torch.zeros(4, 3, 5, 5)), ValueError, r"x_train should be uint8 N x C x H x W with H == W, but got dtype=torch.float32"),
    (dict(x_test=torch.zeros(2, 3, 5, 4, dtype=torch.uint8)), ValueError, r"x_test should be uint8 .* shape=\(2, 3, 5, 4\)"),
    (dict(y_train=torch.zeros(3, dtype=torch.long)), ValueError, r"y_train should be int64 with one label per image \(4\), but got .* shape=\(3,\)"),
    (dict(y_test=torch.zeros(2, dtype=torch.int32)), ValueError, r"y_test should be int64 .* dtype=torch.int32"),
    (dict(x_test=torch.zeros(2, 1, 5, 5, dtype=torch.uint8)), ValueError, r"x_test images are \(1, 5, 5\) but x_train images are \(3, 5, 5\)"),
    (dict(x_train=np.zeros((4, 3, 5, 5), np.uint8)), TypeError, r"x_train and y_train should be torch tensors, but got ndarray"),
    (dict(mean=(0.5,)), ValueError, r"mean should be a tuple of one float per channel \(3\), but got mean=\(0.5,\)"),
    (dict(std=(0.2, 0.0, 0.2)), ValueError, r"std should be positive in every channel, but got std=\(0.2, 0.0, 0.2\)"),
    (dict(num_classes=1), ValueError, r"num_classes should be an integer >= 2, but got num_classes=1"),
])
def test_image_dataset_rejects_inconsistent_fields(changes, error, message):
    with pytest.raises(error, match=message):
        _small_dataset(**changes)


def test_channel_stats_match_numpy():
    images = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (7, 3, 4, 4), dtype=np.uint8))
    mean, std = channel_stats(images)
    values = images.numpy() / 255
    assert mean == pytest.approx(values.mean(axis=(0, 2, 3)).tolist(), abs=1e-12)
    assert std == pytest.approx(values.std(axis=(0, 2, 3)).tolist(), abs=1e-12)


# ---------------------------------------------------------------- digits

@pytest.fixture(scope="module")
def digits_dataset() -> ImageDataset:
    return load_dataset("digits")


def test_digits_sizes_shapes_and_stats(digits_dataset):
    from sklearn.datasets import load_digits

    counts = np.bincount(load_digits().target)
    assert digits_dataset.test_size == sum(counts // 5) == digits.TEST_SIZE == 355
    assert digits_dataset.train_size == sum(counts - counts // 5) == digits.TRAIN_SIZE == 1442
    assert tuple(digits_dataset.x_train.shape) == (1442, 1, 8, 8) and digits_dataset.x_train.dtype == torch.uint8
    assert (digits_dataset.num_classes, digits_dataset.augment, digits_dataset.name) == (10, False, "digits")
    assert np.array_equal(np.bincount(digits_dataset.y_test.numpy()), counts // 5)  # stratified
    pixels = digits_dataset.x_train.numpy() / 255
    assert digits_dataset.mean == pytest.approx((pixels.mean(),), abs=1e-12)
    assert digits_dataset.std == pytest.approx((pixels.std(),), abs=1e-12)


def test_digits_pixels_map_losslessly_to_uint8(digits_dataset):
    from sklearn.datasets import load_digits

    source = load_digits()
    train, test = digits.split_indices(source.target)
    for images, indices in ((digits_dataset.x_train, train), (digits_dataset.x_test, test)):
        recovered = np.round(images[:, 0].numpy().astype(np.float64) * 16 / 255)  # back to 0..16
        assert np.array_equal(recovered, source.images[indices])
    assert digits.to_uint8(np.arange(17)).tolist() == [0, 16, 32, 48, 64, 80, 96, 112, 128, 143, 159, 175, 191, 207,
                                                        223, 239, 255]
    assert np.unique(digits_dataset.x_train.numpy()).size == 17


def test_digits_split_is_fixed_and_disjoint(digits_dataset):
    from sklearn.datasets import load_digits

    labels = load_digits().target
    train, test = digits.split_indices(labels)
    assert np.intersect1d(train, test).size == 0 and np.union1d(train, test).size == len(labels) == 1797
    again = digits.split_indices(labels)
    assert np.array_equal(train, again[0]) and np.array_equal(test, again[1])
    assert not np.array_equal(test, digits.split_indices(labels, seed=1)[1])  # the seed matters
    assert test[:8].tolist() == [3, 7, 13, 19, 36, 38, 43, 48]  # pinned: the split never changes between versions
    assert np.array_equal(load_dataset("digits").x_test.numpy(), digits_dataset.x_test.numpy())


# ---------------------------------------------------------------- IDX (MNIST, Fashion-MNIST)

@pytest.mark.parametrize("compressed", [False, True, (True, False, False, True)], ids=["raw", "gz", "mixed"])
@pytest.mark.parametrize("name, folder, stats", [
    ("mnist", "MNIST", ((0.1307,), (0.3081,))),
    ("fashion-mnist", "FashionMNIST", ((0.2860,), (0.3530,))),
])
def test_idx_layout_loads(tmp_path, name, folder, stats, compressed):
    arrays = make_arrays((28, 28))
    write_idx_folder(tmp_path / folder / "raw", arrays, compressed)
    dataset = load_dataset(name, tmp_path)
    assert_loaded(dataset, arrays)
    assert (dataset.name, dataset.num_classes, dataset.augment, (dataset.mean, dataset.std)) == (name, 10, False, stats)
    assert (dataset.in_channels, dataset.image_size, dataset.train_size) == (1, 28, 12)


def test_idx_raw_file_is_preferred_over_gz(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    arrays = make_arrays((28, 28))
    write_idx_folder(raw, arrays, False)
    (raw / "train-images-idx3-ubyte.gz").write_bytes(b"not read")
    assert_loaded(load_dataset("mnist", tmp_path), arrays)


def _mnist_error(tmp_path: Path, corrupt) -> None:
    paths = write_idx_folder(tmp_path / "MNIST" / "raw", make_arrays((28, 28)), compressed=(False, False, True, False))
    corrupt(paths)
    load_dataset("mnist", tmp_path)


@pytest.mark.parametrize("corrupt, message", [
    (lambda p: p[0].write_bytes(p[0].read_bytes()[:-1]),
     r"train-images-idx3-ubyte has the wrong size for its IDX header: dimensions \(12, 28, 28\) need 9424 bytes, but the file has 9423"),
    (lambda p: p[1].write_bytes(p[1].read_bytes() + b"\0"),
     r"train-labels-idx1-ubyte has the wrong size .* need 20 bytes, but the file has 21"),
    (lambda p: p[0].write_bytes(b"\x01" + p[0].read_bytes()[1:]),
     r"train-images-idx3-ubyte is not an IDX file: its magic number 01000803 should start with 0000"),
    (lambda p: p[0].write_bytes(p[1].read_bytes()),
     r"train-images-idx3-ubyte holds type 0x08 with 1 dimensions \(magic 00000801\), but .* \(magic 00000803\)"),
    (lambda p: p[0].write_bytes(b"\0\0\x0d\x03" + p[0].read_bytes()[4:]),
     r"holds type 0x0d with 3 dimensions"),
    (lambda p: p[1].write_bytes(b"\0\0\x08"),
     r"train-labels-idx1-ubyte is not an IDX file"),
    (lambda p: p[1].write_bytes(b"\0\0\x08\x01\0\0"),
     r"train-labels-idx1-ubyte is truncated: 6 bytes, shorter than its 8-byte IDX header"),
    (lambda p: p[2].write_bytes(p[2].read_bytes()[:-12]),
     r"t10k-images-idx3-ubyte.gz is corrupt or truncated: the gzip checksum/format check failed"),
    (lambda p: p[2].write_bytes(p[2].read_bytes()[:-8] + bytes(8)),  # zeroed CRC-32 and size
     r"t10k-images-idx3-ubyte.gz is corrupt or truncated: the gzip checksum/format check failed \(CRC check failed"),
    (lambda p: p[3].write_bytes(idx_bytes(np.array([1, 2, 3, 4, 10], np.uint8))),
     r"y_test in .*raw has labels in 1..10, but this data set has classes 0..9"),
    (lambda p: p[3].write_bytes(idx_bytes(np.array([1, 2, 3], np.uint8))),
     r"raw has 5 test images and 3 test labels; both must be equal and non-zero"),
    (lambda p: p[0].write_bytes(idx_bytes(np.zeros((12, 32, 32), np.uint8))),
     r"x_train in .*raw has shape \(12, 32, 32\), but this data set needs N x 28 x 28 or"),
], ids=["truncated", "extra-byte", "magic", "labels-as-images", "float-type", "short-magic", "short-header",
        "truncated-gz", "gz-crc", "label-range", "label-count", "image-size"])
def test_idx_corrupt_files_are_named(tmp_path, corrupt, message):
    with pytest.raises(DataError, match=message):
        _mnist_error(tmp_path, corrupt)


def test_idx_missing_files_say_what_was_looked_for(tmp_path):
    with pytest.raises(DataError, match=(
            rf"no mnist files in {tmp_path}: looked for mnist.npz there, then for train-images-idx3-ubyte, "
            rf"train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte \(raw or .gz\) in "
            rf"{tmp_path}/MNIST/raw. To get them: pass --download \(download=True\) to fetch them from "
            rf"https://ossci-datasets.s3.amazonaws.com/mnist/, or copy mnist.npz \(arrays x_train, y_train, "
            rf"x_test, y_test\) into {tmp_path}$")):
        load_dataset("mnist", tmp_path)
    with pytest.raises(DataError, match=r"no fashion-mnist files in .*absent \(the folder does not exist\): looked for "
                                        r"fashion_mnist.npz or fashion-mnist.npz .*FashionMNIST/raw.* from "
                                        r"http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/, or copy "
                                        r"fashion_mnist.npz"):
        load_dataset("fashion-mnist", tmp_path / "absent")
    (tmp_path / "notes.txt").write_text("not a data folder")
    with pytest.raises(DataError, match=r"no mnist files in .*notes.txt \(not a folder\): looked for mnist.npz"):
        load_dataset("mnist", tmp_path / "notes.txt")
    paths = write_idx_folder(tmp_path / "MNIST" / "raw", make_arrays((28, 28)), compressed=True)
    paths[3].unlink()
    with pytest.raises(DataError, match=r"MNIST/raw lacks t10k-labels-idx1-ubyte\[.gz\]\. To get them"):
        load_dataset("mnist", tmp_path)


def test_default_data_dir_comes_from_the_environment(tmp_path, monkeypatch):
    arrays = make_arrays((28, 28))
    write_idx_folder(tmp_path / "MNIST" / "raw", arrays, True)
    monkeypatch.setenv(growbatch.data.DATA_DIR_ENV, str(tmp_path))
    assert growbatch.data.default_data_dir() == tmp_path
    assert_loaded(load_dataset("mnist"), arrays)
    monkeypatch.delenv(growbatch.data.DATA_DIR_ENV)
    assert growbatch.data.default_data_dir() == Path.home() / ".cache" / "growbatch" / "data"


# ---------------------------------------------------------------- npz

@pytest.mark.parametrize("save", [np.savez, np.savez_compressed], ids=["stored", "deflate"])
@pytest.mark.parametrize("name, file_name, image_shape, channels_last", [
    ("mnist", "mnist.npz", (28, 28), True),
    ("fashion-mnist", "fashion_mnist.npz", (28, 28), True),
    ("fashion-mnist", "fashion-mnist.npz", (28, 28, 1), True),
    ("cifar10", "cifar10.npz", (32, 32, 3), True),
    ("cifar10", "cifar10.npz", (3, 32, 32), False),
], ids=["mnist-grey", "fashion-grey", "fashion-hwc", "cifar-hwc", "cifar-chw"])
def test_npz_loads(tmp_path, name, file_name, image_shape, channels_last, save):
    arrays = make_arrays(image_shape)
    save(tmp_path / file_name, **arrays)
    dataset = load_dataset(name, tmp_path)
    assert_loaded(dataset, arrays, channels_last_source=channels_last)
    assert dataset.augment is (name == "cifar10")
    if name == "cifar10":
        assert (dataset.mean, dataset.std) == ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
        assert (dataset.in_channels, dataset.image_size) == (3, 32)


def test_npz_lzma_members_load(tmp_path):
    """The shared cifar10.npz uses LZMA members; np.load reads them like DEFLATE ones."""
    arrays = make_arrays((32, 32, 3))
    with zipfile.ZipFile(tmp_path / "cifar10.npz", "w", compression=zipfile.ZIP_LZMA) as archive:
        for key, array in arrays.items():
            buffer = io.BytesIO()
            np.save(buffer, array)
            archive.writestr(f"{key}.npy", buffer.getvalue())
    assert_loaded(load_dataset("cifar10", tmp_path), arrays)


def test_npz_comes_before_the_torchvision_layout_and_data_dir_may_be_the_file(tmp_path):
    in_npz, in_idx = make_arrays((28, 28), seed=1), make_arrays((28, 28), seed=2)
    np.savez(tmp_path / "mnist.npz", **in_npz)
    write_idx_folder(tmp_path / "MNIST" / "raw", in_idx, True)
    assert_loaded(load_dataset("mnist", tmp_path), in_npz)
    (tmp_path / "mnist.npz").rename(tmp_path / "elsewhere.npz")
    assert_loaded(load_dataset("mnist", tmp_path), in_idx)
    assert_loaded(load_dataset("mnist", str(tmp_path / "elsewhere.npz")), in_npz)


def _flip_byte_in_member(path: Path, member: str) -> None:
    """Change one byte of a stored (uncompressed) zip member's data, leaving its recorded CRC-32."""
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(member)
    name_length, extra_length = struct.unpack("<HH", data[info.header_offset + 26: info.header_offset + 30])
    start = info.header_offset + 30 + name_length + extra_length
    data[start + info.file_size - 1] ^= 0xFF  # the last image byte, after the .npy header
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("write, message", [
    (lambda p, a: np.savez(p, x_train=a["x_train"], y_train=a["y_train"], x_test=a["x_test"]),
     r"mnist.npz lacks the arrays y_test \(it has x_train, y_train, x_test\); a data set .npz needs"),
    (lambda p, a: (np.savez(p, **a), _flip_byte_in_member(p, "x_train.npy")),
     r"mnist.npz is corrupt or truncated: the zip/npy format or checksum check failed \(Bad CRC-32 for file 'x_train.npy'\)"),
    (lambda p, a: (np.savez_compressed(p, **a), p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2])),
     r"mnist.npz is corrupt or truncated: the zip/npy format or checksum check failed"),
    (lambda p, a: p.write_bytes(b""),
     r"mnist.npz is corrupt or truncated"),
    (lambda p, a: np.savez(p, **{**a, "x_test": np.array([object()] * 5)}),
     r"mnist.npz is corrupt or truncated: .*allow_pickle=False"),
    (lambda p, a: np.savez(p, **{**a, "x_train": a["x_train"].astype(np.float32)}),
     r"x_train in .*mnist.npz has dtype float32, but images must be uint8"),
    (lambda p, a: np.savez(p, **{**a, "x_train": np.zeros((12, 32, 32, 3), np.uint8)}),
     r"x_train in .*mnist.npz has shape \(12, 32, 32, 3\), but this data set needs N x 28 x 28 or N x 28 x 28 x 1"),
    (lambda p, a: np.savez(p, **{**a, "y_train": a["y_train"].astype(np.float64)}),
     r"y_train in .*mnist.npz has dtype float64 and shape \(12,\), but labels must be a 1-d integer array"),
    (lambda p, a: np.savez(p, **{**a, "y_test": np.full(5, -1, np.int64)}),
     r"y_test in .*mnist.npz has labels in -1..-1, but this data set has classes 0..9"),
    (lambda p, a: np.savez(p, **{**a, "x_test": a["x_test"][:0], "y_test": a["y_test"][:0]}),
     r"mnist.npz has 0 test images and 0 test labels; both must be equal and non-zero"),
], ids=["missing-key", "bad-crc", "truncated", "empty", "pickled", "float-images", "wrong-shape", "float-labels",
        "label-range", "empty-split"])
def test_npz_errors_name_the_file(tmp_path, write, message):
    write(tmp_path / "mnist.npz", make_arrays((28, 28)))
    with pytest.raises(DataError, match=message):
        load_dataset("mnist", tmp_path)


# ---------------------------------------------------------------- CIFAR-10 pickles

def _py3_writer(protocol: int):
    return lambda rows, labels: pickle.dumps({b"batch_label": b"b", b"labels": labels, b"data": rows}, protocol=protocol)


@pytest.mark.parametrize("writer", [None, _py3_writer(2), _py3_writer(5)], ids=["python2", "python3-p2", "python3-p5"])
def test_cifar_batches_load(tmp_path, writer):
    arrays = make_arrays((3, 32, 32), n_train=11, n_test=4)
    write_cifar_folder(tmp_path / "cifar-10-batches-py", arrays, writer)
    dataset = load_dataset("cifar10", tmp_path)
    assert_loaded(dataset, arrays, channels_last_source=False)
    row = cifar_rows(arrays["x_train"])[3]
    assert dataset.x_train[3, 1, 2, 5] == row[1024 + 2 * 32 + 5]  # green plane, row 2, column 5
    assert dataset.augment and dataset.train_size == 11


def _batch_with(**entries) -> bytes:
    return pickle.dumps(entries, protocol=2)


class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (str(self.marker),)


@pytest.mark.parametrize("content, message", [
    (lambda tmp: pickle.dumps({"data": _RunsCode(tmp / "pwned"), "labels": []}, protocol=2),
     r"data_batch_2 is not a readable CIFAR-10 batch: the pickle format check failed \(UnpicklingError: the global "
     r"posix.mkdir is not allowed in a CIFAR batch\)"),
    (lambda tmp: _batch_with(data=np.zeros((2, 3072), np.uint8)),
     r"data_batch_2 lacks the keys labels \(it has data\); a CIFAR-10 batch needs 'data' and 'labels'"),
    (lambda tmp: _batch_with(data=np.zeros((2, 3072), np.uint8), fine_labels=[0, 1]),
     r"lacks the keys labels .*CIFAR-100 uses 'fine_labels'"),
    (lambda tmp: _batch_with(data=np.zeros((2, 1024), np.uint8), labels=[0, 1]),
     r"data_batch_2 has data of uint8 \(2, 1024\), but a CIFAR-10 batch holds uint8 N x 3072"),
    (lambda tmp: _batch_with(data=[1, 2], labels=[0, 1]),
     r"data_batch_2 has data of list, but a CIFAR-10 batch holds uint8 N x 3072"),
    (lambda tmp: _batch_with(data=np.zeros((2, 3072), np.uint8), labels=[0]),
     r"data_batch_2 has 2 images but labels of shape \(1,\); a CIFAR-10 batch has one label per image"),
    (lambda tmp: _batch_with(data=np.zeros((2, 3072), np.uint8), labels=["cat", "dog"]),
     r"data_batch_2 has labels that are not integers"),
    (lambda tmp: _batch_with(data=np.zeros((2, 3072), np.uint8), labels=[0, 12]),
     r"y_train in .*cifar-10-batches-py has labels in 0..12, but this data set has classes 0..9"),
    (lambda tmp: [1, 2, 3],
     r"data_batch_2 holds a list, but a CIFAR-10 batch is a dict with 'data' and 'labels'"),
    (lambda tmp: py2_cifar_pickle(np.zeros((2, 3072), np.uint8), [0, 1])[:-40],
     r"data_batch_2 is not a readable CIFAR-10 batch: the pickle format check failed"),
    (lambda tmp: b"",
     r"data_batch_2 is not a readable CIFAR-10 batch: the pickle format check failed \(EOFError"),
], ids=["code", "no-labels", "cifar100", "short-rows", "list-data", "label-count", "text-labels", "label-range",
        "not-a-dict", "truncated", "empty"])
def test_cifar_bad_batches_are_named_and_never_run_code(tmp_path, content, message):
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar_folder(folder, make_arrays((3, 32, 32)))
    data = content(tmp_path)
    (folder / "data_batch_2").write_bytes(data if isinstance(data, bytes) else pickle.dumps(data, protocol=2))
    with pytest.raises(DataError, match=message):
        load_dataset("cifar10", tmp_path)
    assert not (tmp_path / "pwned").exists()


def test_cifar_missing_files_say_what_was_looked_for(tmp_path):
    with pytest.raises(DataError, match=(
            rf"no cifar10 files in {tmp_path}: looked for cifar10.npz or cifar-10.npz there, then for data_batch_1, "
            rf"data_batch_2, data_batch_3, data_batch_4, data_batch_5 and test_batch in {tmp_path}/cifar-10-batches-py, "
            rf"then for cifar-10-python.tar.gz in {tmp_path}. To get them: pass --download \(download=True\) to fetch "
            rf"https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz, or copy cifar10.npz")):
        load_dataset("cifar10", tmp_path)
    write_cifar_folder(tmp_path / "cifar-10-batches-py", make_arrays((3, 32, 32)))
    (tmp_path / "cifar-10-batches-py" / "test_batch").unlink()
    with pytest.raises(DataError, match=r"cifar-10-batches-py lacks test_batch\. To get them"):
        load_dataset("cifar10", tmp_path)


def make_cifar_archive(path: Path, arrays: dict, extra: tuple[tarfile.TarInfo, bytes] | None = None) -> bytes:
    folder = path.parent / "staging" / "cifar-10-batches-py"
    write_cifar_folder(folder, arrays)
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": ["airplane"]}, protocol=2))
    with tarfile.open(path, "w:gz") as tar:
        if extra is not None:
            tar.addfile(extra[0], io.BytesIO(extra[1]))
        for name in (*CIFAR_BATCHES, "batches.meta"):
            if not (extra is not None and extra[0].name.endswith(name)):
                tar.add(folder / name, arcname=f"cifar-10-batches-py/{name}")
    return path.read_bytes()


def test_cifar_local_archive_is_checked_then_extracted(tmp_path, monkeypatch):
    arrays = make_arrays((3, 32, 32))
    data = make_cifar_archive(tmp_path / "cifar-10-python.tar.gz", arrays)
    with pytest.raises(DataError, match=rf"cifar-10-python.tar.gz failed its checksum: MD5 {md5(data)}, expected "
                                        rf"c58f30108f718f92721af3b95e74349a; the file is corrupt or truncated"):
        load_dataset("cifar10", tmp_path)
    assert not (tmp_path / "cifar-10-batches-py").exists()
    monkeypatch.setattr(cifar10, "ARCHIVE_MD5", md5(data))
    assert_loaded(load_dataset("cifar10", tmp_path), arrays, channels_last_source=False)
    assert sorted(p.name for p in (tmp_path / "cifar-10-batches-py").iterdir()) == sorted((*CIFAR_BATCHES, "batches.meta"))


def test_cifar_archive_member_that_is_a_link_is_refused(tmp_path, monkeypatch):
    link = tarfile.TarInfo("cifar-10-batches-py/test_batch")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    data = make_cifar_archive(tmp_path / "cifar-10-python.tar.gz", make_arrays((3, 32, 32)), (link, b""))
    monkeypatch.setattr(cifar10, "ARCHIVE_MD5", md5(data))
    with pytest.raises(DataError, match=r"cifar-10-batches-py/test_batch in .*cifar-10-python.tar.gz is not a regular file"):
        load_dataset("cifar10", tmp_path)
    assert not (tmp_path / "cifar-10-batches-py" / "test_batch").exists()


def test_cifar_archive_extracts_only_the_batches(tmp_path, monkeypatch):
    escape = tarfile.TarInfo("../escaped")  # extractall() would write it next to the data folder
    escape.size = 3
    root = tmp_path / "data"
    root.mkdir()
    arrays = make_arrays((3, 32, 32))
    data = make_cifar_archive(root / "cifar-10-python.tar.gz", arrays, (escape, b"bad"))
    monkeypatch.setattr(cifar10, "ARCHIVE_MD5", md5(data))
    assert_loaded(load_dataset("cifar10", root), arrays, channels_last_source=False)
    assert not (tmp_path / "escaped").exists() and not (root / "escaped").exists()


# ---------------------------------------------------------------- downloads from a local server

class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - the signature of the base class
        pass


@pytest.fixture
def server(tmp_path, monkeypatch):
    """(folder served, its URL) on 127.0.0.1, in a thread; proxies bypassed so nothing leaves the machine."""
    for variable in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.delenv(growbatch.data.MIRROR_ENV, raising=False)
    served = tmp_path / "served"
    served.mkdir()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                            functools.partial(_QuietHandler, directory=str(served)))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield served, f"http://127.0.0.1:{httpd.server_port}/"
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def _serve_idx(served: Path, arrays: dict) -> tuple[tuple[str, str], ...]:
    """Write the four .gz files into the served folder; return the (name, MD5) table for them."""
    table = []
    for stem, key in zip(IDX_STEMS, KEYS):
        data = gzip.compress(idx_bytes(arrays[key]))
        (served / f"{stem}.gz").write_bytes(data)
        table.append((f"{stem}.gz", md5(data)))
    return tuple(table)


def _all_files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def test_download_mnist_from_a_mirror_argument(tmp_path, server, monkeypatch):
    served, url = server
    arrays = make_arrays((28, 28))
    monkeypatch.setattr(mnist, "SOURCE", dataclasses.replace(mnist.SOURCE, files=_serve_idx(served, arrays)))
    root = tmp_path / "data"
    assert_loaded(load_dataset("mnist", root, download=True, base_url=url), arrays)
    assert _all_files(root) == sorted(f"MNIST/raw/{stem}.gz" for stem in IDX_STEMS)  # no .part left
    for path in served.iterdir():  # a second call needs no server: the files are there with the right MD5
        path.unlink()
    assert download("mnist", root, base_url=url) == root / "MNIST" / "raw"


def test_download_fashion_mnist_from_the_mirror_variable(tmp_path, server, monkeypatch):
    served, url = server
    arrays = make_arrays((28, 28), seed=3)
    table = _serve_idx(served, arrays)
    monkeypatch.setattr(fashion_mnist, "SOURCE", dataclasses.replace(fashion_mnist.SOURCE, files=table))
    monkeypatch.setenv("GROWBATCH_MIRROR", url.rstrip("/"))  # without the trailing slash
    assert download("fashion-mnist", tmp_path / "data") == tmp_path / "data" / "FashionMNIST" / "raw"
    assert_loaded(load_dataset("fashion-mnist", tmp_path / "data"), arrays)


def test_download_with_a_wrong_checksum_leaves_no_file(tmp_path, server, monkeypatch):
    served, url = server
    table = _serve_idx(served, make_arrays((28, 28)))
    wrong = ((table[0][0], "0" * 32), *table[1:])
    monkeypatch.setattr(mnist, "SOURCE", dataclasses.replace(mnist.SOURCE, files=wrong))
    root = tmp_path / "data"
    with pytest.raises(DataError, match=(
            rf"the checksum of {url}train-images-idx3-ubyte.gz failed: MD5 {table[0][1]}, expected 0{{32}}; nothing "
            rf"was written to {root}/MNIST/raw/train-images-idx3-ubyte.gz\. The download was corrupted or the mirror serves another file")):
        load_dataset("mnist", root, download=True, base_url=url)
    assert _all_files(root) == []


def test_download_errors_name_the_url(tmp_path, server):
    _, url = server
    with pytest.raises(DataError, match=rf"could not download {url}train-images-idx3-ubyte.gz \(File not found\); "
                                        rf"check the network, set base_url / \$GROWBATCH_MIRROR to a mirror"):
        download("mnist", tmp_path / "data", base_url=url)
    assert _all_files(tmp_path / "data") == []
    with pytest.raises(ValueError, match=r"digits is embedded in scikit-learn and needs no download; name should be "
                                         r"one of mnist, fashion-mnist, cifar10"):
        download("digits", tmp_path)
    with pytest.raises(ValueError, match=r"unknown data set 'imagenet'"):
        download("imagenet", tmp_path)


def test_download_cifar10_archive_and_extract(tmp_path, server, monkeypatch):
    served, url = server
    arrays = make_arrays((3, 32, 32))
    data = make_cifar_archive(served / "cifar-10-python.tar.gz", arrays)
    (served / "staging").rename(tmp_path / "staging-done")
    monkeypatch.setattr(cifar10, "ARCHIVE_MD5", md5(data))
    root = tmp_path / "data"
    assert_loaded(load_dataset("cifar10", root, download=True, base_url=url), arrays, channels_last_source=False)
    assert _all_files(root) == sorted(["cifar-10-python.tar.gz", "cifar-10-batches-py/batches.meta",
                                       *(f"cifar-10-batches-py/{name}" for name in CIFAR_BATCHES)])
    monkeypatch.setattr(cifar10, "ARCHIVE_MD5", "f" * 32)
    other = tmp_path / "other"
    with pytest.raises(DataError, match=r"the checksum of .*cifar-10-python.tar.gz failed"):
        download("cifar10", other, base_url=url)
    assert _all_files(other) == []


# ---------------------------------------------------------------- the shared files, when they are there

needs_shared = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"no shared data folder at {SHARED_DATA}")
SHARED_SHA256 = {  # raw sha256 of np.ascontiguousarray(a).tobytes(), from shared/data/README.md
    "mnist": ("741c988805d008ac6e4c904b69001ba184c24b2c540a4ef403f4c71b676cf757",
              "1feba77c54802fa5339a11837ea4b2866434b83314ec45192930f1df69120c13",
              "6d87418db22cc8025d05968bec9bd5c3932904b23485740db143a061a2c9d161",
              "ddeff807876a9661a1110d45c266c86239a3a1b7d37da0c3716a7a683c852ff5"),
    "fashion-mnist": ("2e487a6c89124f78f2d7521542223cafe96f7123c3ca13d447772ac6ecbb3012",
                      "657fbd221bfc9f4198cc14b5619cc33ec57c58dd0e47af4d99d6650759e869a7",
                      "c867c93ff95360594e8ec3287995350b824dd110b11595c0e13d5423f621867a",
                      "3d0e6c6ea990b53b6f8f500a41cac93881d981b315f84578b7d915342ade01e9"),
    "cifar10": ("47af8b02cfcfb6cdf3dbbd1969ad7f1b70f4413f6f80f437b020ee4e5bc8304a",
                "2b7cd2f24487317614016b72ffd53071c3062f592f0eb300c18a770d41ae1253",
                "f9b1e2130bab680db56eb06d886f7f1ad0f1183907ceff4659d1735c890f5b04",
                "cec8a24a1e92aa2ecaa0bbd3dbfa86bf6cd8759fbd209a832824c8cf0afca9d5"),
}


def _check_shared(name: str, sizes: tuple[int, int]) -> ImageDataset:
    dataset = load_dataset(name, SHARED_DATA)
    assert (dataset.train_size, dataset.test_size) == sizes
    for key, expected in zip(KEYS, SHARED_SHA256[name]):
        tensor = getattr(dataset, key)
        # back to the file's layout: N x H x W (grey) or N x H x W x C, labels uint8
        array = (tensor.permute(0, 2, 3, 1).squeeze(3) if key.startswith("x") else tensor.to(torch.uint8)).numpy()
        assert hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest() == expected, key
    mean, std = channel_stats(dataset.x_train)
    assert mean == pytest.approx(dataset.mean, abs=5e-5) and std == pytest.approx(dataset.std, abs=5e-5)
    return dataset


@needs_shared
def test_shared_mnist_arrays_match_the_published_hashes():
    dataset = _check_shared("mnist", (60000, 10000))
    assert np.bincount(dataset.y_train.numpy()).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]


@needs_shared
def test_shared_fashion_mnist_arrays_match_the_published_hashes():
    dataset = _check_shared("fashion-mnist", (60000, 10000))
    assert np.bincount(dataset.y_test.numpy()).tolist() == [1000] * 10


@needs_shared
@pytest.mark.slow
def test_shared_cifar10_arrays_match_the_published_hashes():
    dataset = _check_shared("cifar10", (50000, 10000))
    assert dataset.y_train[:10].tolist() == [6, 9, 9, 4, 1, 1, 2, 7, 8, 3]
    assert dataset.y_test[:10].tolist() == [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]


def test_subset_keeps_class_shares_and_the_test_split() -> None:
    data = growbatch.data.load_dataset("digits")
    small = data.subset(300, seed=4)
    assert small.train_size == 300 and small.test_size == data.test_size
    assert torch.equal(small.x_test, data.x_test) and small.mean == data.mean and small.std == data.std
    full_counts = torch.bincount(data.y_train, minlength=10).double()
    small_counts = torch.bincount(small.y_train, minlength=10).double()
    assert int(small_counts.sum()) == 300
    assert ((small_counts - full_counts * 300 / data.train_size).abs() < 1).all()  # largest remainder
    # every chosen image is a training image with its own label
    rows = {bytes(x.flatten().tolist()) + bytes([int(y)]) for x, y in zip(data.x_train, data.y_train, strict=True)}
    chosen = [bytes(x.flatten().tolist()) + bytes([int(y)]) for x, y in zip(small.x_train, small.y_train, strict=True)]
    assert set(chosen) <= rows
    assert torch.equal(data.subset(300, seed=4).x_train, small.x_train)  # the seed fixes it
    assert not torch.equal(data.subset(300, seed=5).x_train, small.x_train)
    assert data.subset(data.train_size) is data


@pytest.mark.parametrize("size", [0, 9, 1443])
def test_subset_of_an_impossible_size_names_the_range(size: int) -> None:
    data = growbatch.data.load_dataset("digits")
    with pytest.raises(ValueError, match=f"train_size should be between 10 .* and 1442 .*, but got {size}"):
        data.subset(size)
