"""Tests for pclab.data: every expectation follows from the file formats and the
documented contracts (balanced counts, exact flip counts, atomic downloads), not
from today's output. Nothing here touches the network: downloads are served from
``file://`` URLs by monkeypatching the mirror tables."""

from __future__ import annotations

import doctest
import gzip
import hashlib
import io
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import pclab.data as data
from pclab.data import (
    DATASETS,
    DataError,
    Dataset,
    balanced_subset,
    flip_labels,
    load,
    validation_split,
)

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"
STEMS = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
CIFAR_BATCHES = ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch")
FAST = settings(max_examples=60, deadline=None)

# ----------------------------------------------------------------------- helpers

_IDX_CODES = {np.dtype("u1"): 0x08, np.dtype("i1"): 0x09, np.dtype("i2"): 0x0B,
              np.dtype("i4"): 0x0C, np.dtype("f4"): 0x0D, np.dtype("f8"): 0x0E}


def idx_bytes(array: np.ndarray) -> bytes:
    """Encode an array as IDX, written independently of the parser under test."""
    header = bytes([0, 0, _IDX_CODES[array.dtype], array.ndim])
    header += b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write_idx(path: Path, array: np.ndarray) -> Path:
    payload = idx_bytes(array)
    path.write_bytes(gzip.compress(payload) if path.suffix == ".gz" else payload)
    return path


def fake_mnist(folder: Path, n_train: int = 20, n_test: int = 10, gz: bool = True, seed: int = 0):
    """A tiny MNIST-format folder (4x4 images); returns the arrays written."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 4, 4), dtype=np.uint8),
        "train-labels-idx1-ubyte": (np.arange(n_train) % 10).astype(np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 4, 4), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": (np.arange(n_test) % 10).astype(np.uint8),
    }
    for stem, array in arrays.items():
        write_idx(folder / (f"{stem}.gz" if gz else stem), array)
    return arrays


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def serve_idx(monkeypatch, name: str, server: Path, md5s: dict[str, str] | None = None, mirrors=None):
    """Point the download table for ``name`` at files in ``server`` (a file:// mirror)."""
    if md5s is None:
        md5s = {f"{stem}.gz": md5(server / f"{stem}.gz") for stem in STEMS}
    mirrors = mirrors or (server.as_uri() + "/",)
    monkeypatch.setitem(data._IDX_SOURCES, name, (tuple(mirrors), md5s))


def cifar_batch(n: int, seed: int, str_keys: bool = False) -> dict:
    rng = np.random.default_rng(seed)
    batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
             b"labels": [int(v) for v in rng.integers(0, 10, n)]}
    return {k.decode(): v for k, v in batch.items()} if str_keys else batch


def fake_cifar(folder: Path, n: int = 4, protocol: int = pickle.HIGHEST_PROTOCOL, str_keys: bool = False):
    folder.mkdir(parents=True, exist_ok=True)
    batches = {}
    for seed, name in enumerate(CIFAR_BATCHES):
        batches[name] = cifar_batch(n, seed, str_keys)
        (folder / name).write_bytes(pickle.dumps(batches[name], protocol=protocol))
    return batches


def indexed_dataset(labels: list[int], num_classes: int = 3) -> Dataset:
    """A dataset whose image i is filled with the value i, so examples can be told apart."""
    n = len(labels)
    x = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 1, 2, 2).contiguous()
    y = torch.tensor(labels, dtype=torch.int64)
    return Dataset("toy", x, y, x[:2].clone(), y[:2].clone(), num_classes=num_classes)


def ids(x: torch.Tensor) -> list[int]:
    return x[:, 0, 0, 0].long().tolist()


# ------------------------------------------------------------------------ digits


def test_digits_shapes_range_and_split():
    ds = load("digits")
    assert ds.name == "digits" and ds.num_classes == 10 and ds.input_shape == (1, 8, 8)
    assert len(ds.y_train) + len(ds.y_test) == 1797
    for x, y in ((ds.x_train, ds.y_train), (ds.x_test, ds.y_test)):
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert x.shape[1:] == (1, 8, 8) and len(x) == len(y)
        assert x.min() >= 0.0 and x.max() <= 1.0
    # Pixel values are sixteenths (load_digits ranges over 0..16).
    assert torch.equal(ds.x_train * 16, (ds.x_train * 16).round())
    assert ds.x_train.max() == 1.0
    # Stratified 80/20: each class holds out round(20%) of its examples.
    totals = ds.y_train.bincount(minlength=10) + ds.y_test.bincount(minlength=10)
    expected_test = torch.tensor([round(0.2 * int(t)) for t in totals])
    assert torch.equal(ds.y_test.bincount(minlength=10), expected_test)


def test_digits_split_is_fixed_whatever_the_seed():
    a, b = load("digits", seed=0), load("digits", seed=123, train_size=50, label_noise=0.3)
    assert torch.equal(a.x_test, b.x_test) and torch.equal(a.y_test, b.y_test)
    again = load("digits")
    assert torch.equal(a.x_train, again.x_train) and torch.equal(a.y_train, again.y_train)


def test_module_docstring_example_runs():
    result = doctest.testmod(data, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


# --------------------------------------------------------------------- IDX files


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize(
    "array",
    [
        np.arange(2 * 3 * 5, dtype=np.uint8).reshape(2, 3, 5),
        np.array([0, 9, 3], dtype=np.uint8),
        np.array([[-300, 7], [32000, -1]], dtype=np.int16),
        np.array([1.5, -2.25, 1e30], dtype=np.float32),
        np.zeros((0, 28, 28), dtype=np.uint8),
    ],
    ids=["u8-3d", "u8-1d", "i16", "f32", "empty"],
)
def test_idx_round_trip(tmp_path, suffix, array):
    path = write_idx(tmp_path / f"a-idx{suffix}", array)
    back = data._read_idx(path)
    assert back.dtype == array.dtype and back.shape == array.shape
    np.testing.assert_array_equal(back, array)


@given(st.lists(st.integers(0, 4), min_size=1, max_size=3), st.sampled_from(["", ".gz"]), st.integers(0, 2**32 - 1))
@settings(max_examples=25, deadline=None)
def test_idx_round_trip_any_shape(tmp_path_factory, shape, suffix, seed):
    array = np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)
    path = write_idx(tmp_path_factory.mktemp("idx") / f"a{suffix}", array)
    np.testing.assert_array_equal(data._read_idx(path), array)


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("cut", [1, 5, 100])
def test_truncated_idx_raises_naming_the_file(tmp_path, gz, cut):
    payload = idx_bytes(np.ones((3, 28, 28), dtype=np.uint8))[:-cut]
    path = tmp_path / ("train-images-idx3-ubyte.gz" if gz else "train-images-idx3-ubyte")
    path.write_bytes(gzip.compress(payload) if gz else payload)
    with pytest.raises(DataError, match="truncated") as err:
        data._read_idx(path)
    assert str(path) in str(err.value)


def test_cut_gzip_stream_raises_naming_the_file(tmp_path):
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(idx_bytes(np.ones((50, 28, 28), dtype=np.uint8)))[:-40])
    with pytest.raises(DataError) as err:
        data._read_idx(path)
    assert str(path) in str(err.value)


def test_extra_bytes_raise(tmp_path):
    path = tmp_path / "x"
    path.write_bytes(idx_bytes(np.ones((2, 2), dtype=np.uint8)) + b"\0")
    with pytest.raises(DataError, match="implies"):
        data._read_idx(path)


@pytest.mark.parametrize("header", [b"\x1f\x8b\x08\x03", b"\x00\x01\x08\x01", b"\x00\x00\x42\x01", b"", b"\x00\x00"])
def test_wrong_magic_raises(tmp_path, header):
    path = tmp_path / "train-labels-idx1-ubyte"
    path.write_bytes(header + (1).to_bytes(4, "big") + b"\x07")
    with pytest.raises(DataError, match="not an IDX file") as err:
        data._read_idx(path)
    assert str(path) in str(err.value)


def test_header_cut_short_raises(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(bytes([0, 0, 8, 3]) + (5).to_bytes(4, "big"))
    with pytest.raises(DataError, match="header"):
        data._read_idx(path)


# ------------------------------------------------------------- IDX datasets


@pytest.mark.parametrize("gz", [True, False])
def test_load_idx_folder(tmp_path, gz):
    arrays = fake_mnist(tmp_path, gz=gz)
    ds = load("mnist", tmp_path, download=False)
    assert ds.name == "mnist" and ds.num_classes == 10 and ds.input_shape == (1, 4, 4)
    expected_x = torch.from_numpy(arrays["train-images-idx3-ubyte"]).float()[:, None] / 255
    torch.testing.assert_close(ds.x_train, expected_x, rtol=0, atol=0)
    assert ds.y_train.tolist() == arrays["train-labels-idx1-ubyte"].tolist()
    assert ds.y_test.tolist() == arrays["t10k-labels-idx1-ubyte"].tolist()
    assert len(ds.x_test) == 10


def test_image_and_label_counts_must_match(tmp_path):
    fake_mnist(tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.zeros(9, dtype=np.uint8))
    with pytest.raises(DataError, match=r"10 images but .*9 labels"):
        load("mnist", tmp_path, download=False)


def test_swapped_files_are_caught(tmp_path):
    fake_mnist(tmp_path)
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", np.zeros(20, dtype=np.uint8))
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte.gz holds uint8 of shape"):
        load("mnist", tmp_path, download=False)


def test_label_out_of_range_is_caught(tmp_path):
    fake_mnist(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.full(20, 10, dtype=np.uint8))
    with pytest.raises(DataError, match=r"outside 0..9"):
        load("mnist", tmp_path, download=False)


@pytest.mark.parametrize("download", [False, True])
def test_missing_files_name_the_files_and_folder(tmp_path, monkeypatch, download):
    # A mirror that does not exist stands in for being offline.
    serve_idx(monkeypatch, "fashion-mnist", tmp_path / "nowhere", md5s={f"{s}.gz": "0" * 32 for s in STEMS})
    folder = tmp_path / "fm"
    with pytest.raises(DataError) as err:
        load("fashion-mnist", folder, download=download)
    message = str(err.value)
    for stem in STEMS:
        assert f"{stem}.gz" in message
    assert str(folder) in message and "--data-dir" in message and "$PCLAB_DATA" in message
    assert ("download failed" in message) == download


def test_only_the_missing_file_is_named(tmp_path):
    fake_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError) as err:
        load("mnist", tmp_path, download=False)
    assert "lacks t10k-labels-idx1-ubyte.gz (" in str(err.value)


def test_data_dir_resolution(tmp_path, monkeypatch):
    monkeypatch.delenv("PCLAB_DATA", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert data._resolve_dir("mnist", None) == tmp_path / "home" / ".cache" / "pclab" / "mnist"
    monkeypatch.setenv("PCLAB_DATA", str(tmp_path / "store"))
    assert data._resolve_dir("cifar10", None) == tmp_path / "store" / "cifar10"
    assert data._resolve_dir("mnist", tmp_path / "mine") == tmp_path / "mine"

    fake_mnist(tmp_path / "store" / "mnist")
    assert load("mnist", download=False).input_shape == (1, 4, 4)


# ---------------------------------------------------------------------- download


def test_download_writes_verified_file(tmp_path):
    source = tmp_path / "server" / "blob"
    source.parent.mkdir()
    source.write_bytes(os.urandom(3000))
    dest = tmp_path / "cache" / "blob"
    data._download(source.as_uri(), dest, md5(source))
    assert dest.read_bytes() == source.read_bytes()
    assert sorted(p.name for p in dest.parent.iterdir()) == ["blob"]


def test_checksum_mismatch_leaves_nothing(tmp_path):
    source = tmp_path / "server" / "blob"
    source.parent.mkdir()
    source.write_bytes(b"not the real file")
    dest = tmp_path / "cache" / "blob"
    with pytest.raises(DataError, match="Checksum mismatch") as err:
        data._download(source.as_uri(), dest, "0" * 32)
    assert source.as_uri() in str(err.value)
    assert list(dest.parent.iterdir()) == []


def test_download_failure_leaves_nothing(tmp_path):
    dest = tmp_path / "cache" / "blob"
    with pytest.raises(OSError):
        data._download((tmp_path / "absent").as_uri(), dest, "0" * 32)
    assert list(dest.parent.iterdir()) == []


def test_load_downloads_missing_files(tmp_path, monkeypatch):
    server = tmp_path / "server"
    arrays = fake_mnist(server)
    # The first mirror is dead; the loader must fall through to the second.
    serve_idx(monkeypatch, "mnist", server, mirrors=((tmp_path / "dead").as_uri() + "/", server.as_uri() + "/"))
    folder = tmp_path / "cache"
    ds = load("mnist", folder)
    assert ds.y_train.tolist() == arrays["train-labels-idx1-ubyte"].tolist()
    assert sorted(p.name for p in folder.iterdir()) == sorted(f"{s}.gz" for s in STEMS)
    for stem in STEMS:
        assert md5(folder / f"{stem}.gz") == md5(server / f"{stem}.gz")


def test_load_with_corrupt_mirror_leaves_nothing(tmp_path, monkeypatch):
    server = tmp_path / "server"
    fake_mnist(server)
    serve_idx(monkeypatch, "mnist", server)
    (server / "train-images-idx3-ubyte.gz").write_bytes(b"tampered")
    folder = tmp_path / "cache"
    with pytest.raises(DataError, match="Checksum mismatch") as err:
        load("mnist", folder)
    assert "train-images-idx3-ubyte.gz" in str(err.value)
    assert list(folder.iterdir()) == []


# ------------------------------------------------------------------------- CIFAR


@pytest.mark.parametrize("layout", ["parent", "folder"])
def test_cifar_synthetic_batches(tmp_path, layout):
    folder = tmp_path / "cifar-10-batches-py"
    batches = fake_cifar(folder)
    ds = load("cifar10", tmp_path if layout == "parent" else folder, download=False)
    assert ds.name == "cifar10" and ds.input_shape == (3, 32, 32) and ds.num_classes == 10
    assert len(ds.x_train) == 20 and len(ds.x_test) == 4
    assert ds.y_train.tolist() == [label for i in range(1, 6) for label in batches[f"data_batch_{i}"][b"labels"]]
    assert ds.y_test.tolist() == batches["test_batch"][b"labels"]
    # Row layout: 1024 red, 1024 green, 1024 blue values, each 32x32 row-major.
    row = batches["data_batch_1"][b"data"][1]
    image = ds.x_train[1] * 255
    assert image[0, 0, 0] == row[0] and image[0, 0, 1] == row[1] and image[0, 1, 0] == row[32]
    assert image[1, 0, 0] == row[1024] and image[2, 31, 31] == row[3071]
    second_batch_first = batches["data_batch_2"][b"data"][0]
    assert torch.equal(ds.x_train[4].flatten() * 255, torch.from_numpy(second_batch_first).float())


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cifar_pickle_variants(tmp_path, protocol):
    batches = fake_cifar(tmp_path, protocol=protocol, str_keys=True)
    ds = load("cifar10", tmp_path, download=False)
    assert ds.y_test.tolist() == batches["test_batch"]["labels"]


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_cifar_refuses_code_in_pickles(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fake_cifar(tmp_path)
    (tmp_path / "test_batch").write_bytes(pickle.dumps({b"data": _Evil(), b"labels": []}))
    with pytest.raises(DataError, match="test_batch"):
        load("cifar10", tmp_path, download=False)
    assert not (tmp_path / "pwned").exists()


def test_cifar_bad_batch_shape(tmp_path):
    fake_cifar(tmp_path)
    (tmp_path / "data_batch_3").write_bytes(pickle.dumps({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}))
    with pytest.raises(DataError, match="data_batch_3"):
        load("cifar10", tmp_path, download=False)


def test_cifar_missing(tmp_path):
    with pytest.raises(DataError) as err:
        load("cifar10", tmp_path, download=False)
    assert "data_batch_1" in str(err.value) and "cifar-10-python.tar.gz" in str(err.value)


def _cifar_archive(path: Path, batches_dir: Path) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for name in CIFAR_BATCHES:
            tar.add(batches_dir / name, arcname=f"cifar-10-batches-py/{name}")
        evil = b"escaped"
        info = tarfile.TarInfo("../escaped")
        info.size = len(evil)
        tar.addfile(info, io.BytesIO(evil))


def test_cifar_download_extracts_safely(tmp_path, monkeypatch):
    batches = fake_cifar(tmp_path / "src")
    server = tmp_path / "server"
    server.mkdir()
    archive = server / "cifar-10-python.tar.gz"
    _cifar_archive(archive, tmp_path / "src")
    monkeypatch.setattr(data, "_CIFAR_URL", archive.as_uri())
    monkeypatch.setattr(data, "_CIFAR_MD5", md5(archive))
    root = tmp_path / "cache" / "cifar10"
    ds = load("cifar10", root)
    assert ds.y_test.tolist() == batches["test_batch"][b"labels"]
    assert not (tmp_path / "cache" / "escaped").exists()
    # The archive is dropped once extracted; only the batches remain.
    assert sorted(p.name for p in root.iterdir()) == ["cifar-10-batches-py"]
    assert sorted(p.name for p in (root / "cifar-10-batches-py").iterdir()) == sorted(CIFAR_BATCHES)


def test_cifar_checksum_mismatch_leaves_nothing(tmp_path, monkeypatch):
    fake_cifar(tmp_path / "src")
    archive = tmp_path / "cifar-10-python.tar.gz"
    _cifar_archive(archive, tmp_path / "src")
    monkeypatch.setattr(data, "_CIFAR_URL", archive.as_uri())
    monkeypatch.setattr(data, "_CIFAR_MD5", "0" * 32)
    root = tmp_path / "cache"
    with pytest.raises(DataError, match="Checksum mismatch"):
        load("cifar10", root)
    assert list(root.iterdir()) == []


def test_cifar_archive_placed_by_hand(tmp_path):
    batches = fake_cifar(tmp_path / "src")
    root = tmp_path / "root"
    root.mkdir()
    _cifar_archive(root / "cifar-10-python.tar.gz", tmp_path / "src")
    ds = load("cifar10", root, download=False)
    assert ds.y_test.tolist() == batches["test_batch"][b"labels"]
    assert (root / "cifar-10-python.tar.gz").exists()  # the user's file is left alone


# -------------------------------------------------------------- balanced subsets

labels_strategy = st.lists(st.integers(0, 5), min_size=1, max_size=80)


@given(labels_strategy, st.data(), st.integers(0, 2**32 - 1))
@FAST
def test_balanced_subset_properties(labels, draw, seed):
    y = torch.tensor(labels)
    x = torch.arange(len(y), dtype=torch.float32)[:, None]
    available = y.bincount()
    present = available[available > 0]
    n = draw.draw(st.integers(len(present), len(y)))
    xs, ys = balanced_subset(x, y, n, seed=seed)

    assert len(xs) == len(ys) == n
    picked = xs[:, 0].long()
    assert torch.equal(y[picked], ys)  # pairs stay together
    assert picked.unique().numel() == n and torch.all(picked[1:] > picked[:-1])  # distinct, original order
    counts = ys.bincount(minlength=len(available))[available > 0]
    # Classes short of the common level give all they have; the rest differ by at most one.
    level = counts.max()
    assert torch.all((counts >= level - 1) | (counts == present))
    assert torch.all(counts <= present)

    again = balanced_subset(x, y, n, seed=seed)
    assert torch.equal(again[0], xs) and torch.equal(again[1], ys)
    if n > len(present):
        smaller, _ = balanced_subset(x, y, n - 1, seed=seed)
        assert set(smaller[:, 0].long().tolist()) <= set(picked.tolist())


@given(st.integers(1, 8), st.integers(1, 30), st.data())
@FAST
def test_balanced_subset_exact_quota_when_classes_are_full(k, per_class, draw):
    y = torch.arange(k).repeat(per_class)
    n = draw.draw(st.integers(k, k * per_class))
    _, ys = balanced_subset(y[:, None].float(), y, n, seed=0)
    # n // k each, the first n % k classes one more.
    assert ys.bincount(minlength=k).tolist() == [n // k + (c < n % k) for c in range(k)]


def test_balanced_subset_depends_on_seed():
    y = torch.arange(10).repeat(50)
    x = torch.arange(500.0)[:, None]
    assert not torch.equal(balanced_subset(x, y, 50, seed=0)[0], balanced_subset(x, y, 50, seed=1)[0])


@pytest.mark.parametrize("n", [2, 501])
def test_balanced_subset_size_errors(n):
    y = torch.arange(10).repeat(50)
    with pytest.raises(ValueError, match=f"n={n}.*10 classes.*500 available"):
        balanced_subset(y[:, None], y, n, seed=0)


def test_load_train_size():
    ds = load("digits", train_size=95, seed=3)
    assert ds.y_train.bincount().tolist() == [10] * 5 + [9] * 5
    full = load("digits")
    assert torch.equal(ds.x_test, full.x_test)
    assert len(load("digits", train_size=len(full.y_train)).y_train) == len(full.y_train)
    with pytest.raises(ValueError, match=rf"train_size=5000 .*{len(full.y_train)} available"):
        load("digits", train_size=5000)
    with pytest.raises(ValueError, match=r"train_size=9 .*10 classes"):
        load("digits", train_size=9)


# ------------------------------------------------------------------- label noise


@given(st.integers(1, 300), st.floats(0, 0.999), st.integers(2, 12), st.integers(0, 2**32 - 1))
@FAST
def test_flip_labels_exact_fraction(n, fraction, k, seed):
    y = torch.from_numpy(np.random.default_rng(seed).integers(0, k, n))
    noisy = flip_labels(y, fraction, k, seed=seed)
    assert noisy.dtype == y.dtype and noisy.shape == y.shape
    assert int((noisy != y).sum()) == round(fraction * n)
    assert noisy.min() >= 0 and noisy.max() < k
    assert torch.equal(noisy, flip_labels(y, fraction, k, seed=seed))


def test_flip_labels_uniform_over_other_classes():
    k, n = 5, 20000
    y = torch.zeros(n, dtype=torch.int64)
    noisy = flip_labels(y, 0.5, k, seed=0)
    counts = noisy[noisy != 0].bincount(minlength=k)[1:].double()
    # Four other classes, 10000 flips: each ~2500, sd ~43; 5 sd is a loose, safe bound.
    assert counts.sub(2500).abs().max() < 220


def test_flip_labels_does_not_modify_input():
    y = torch.arange(10)
    flip_labels(y, 0.5, 10, seed=0)
    assert torch.equal(y, torch.arange(10))


@pytest.mark.parametrize("fraction", [-0.1, 1.0, 1.5, float("nan"), True])
def test_flip_labels_rejects_bad_fraction(fraction):
    with pytest.raises(ValueError, match="fraction"):
        flip_labels(torch.arange(10), fraction, 10, seed=0)


def test_flip_labels_rejects_labels_out_of_range():
    with pytest.raises(ValueError, match="num_classes=3"):
        flip_labels(torch.arange(10), 0.5, 3, seed=0)


def test_load_label_noise_touches_only_train():
    clean = load("digits", seed=7)
    noisy = load("digits", label_noise=0.3, seed=7)
    changed = noisy.y_train != clean.y_train
    assert int(changed.sum()) == round(0.3 * len(clean.y_train))
    assert torch.equal(noisy.x_train, clean.x_train)
    assert torch.equal(noisy.y_test, clean.y_test) and torch.equal(noisy.x_test, clean.x_test)
    assert torch.equal(noisy.y_train, load("digits", label_noise=0.3, seed=7).y_train)
    assert not torch.equal(noisy.y_train, load("digits", label_noise=0.3, seed=8).y_train)


def test_load_train_size_then_noise():
    ds = load("digits", train_size=200, label_noise=0.25, seed=1)
    clean = load("digits", train_size=200, seed=1)
    assert torch.equal(ds.x_train, clean.x_train)
    assert int((ds.y_train != clean.y_train).sum()) == 50


# -------------------------------------------------------------- validation split


@given(st.lists(st.integers(0, 2), min_size=6, max_size=60), st.floats(0.05, 0.95), st.integers(0, 1000))
@FAST
def test_validation_split_disjoint_and_balanced(labels, fraction, seed):
    ds = indexed_dataset(labels)
    n_val = round(fraction * len(labels))
    if not len(set(labels)) <= n_val < len(labels):
        with pytest.raises(ValueError, match="fraction"):
            validation_split(ds, fraction, seed=seed)
        return
    train, val = validation_split(ds, fraction, seed=seed)
    fit_ids, val_ids = ids(train.x_train), ids(val.x_test)
    assert set(fit_ids).isdisjoint(val_ids)
    assert sorted(fit_ids + val_ids) == list(range(len(labels)))
    assert len(val_ids) == n_val
    assert train.y_train.tolist() == [labels[i] for i in fit_ids]
    assert val.y_test.tolist() == [labels[i] for i in val_ids]
    # Both parts train on the same remaining examples; only the train part keeps the test set.
    assert torch.equal(val.x_train, train.x_train) and torch.equal(val.y_train, train.y_train)
    assert torch.equal(train.x_test, ds.x_test) and val.name == "toy/val" and train.name == "toy"
    available = ds.y_train.bincount(minlength=3)
    counts = val.y_test.bincount(minlength=3)[available > 0]
    assert torch.all((counts >= counts.max() - 1) | (counts == available[available > 0]))


def test_validation_split_on_digits():
    ds = load("digits", train_size=500, seed=0)
    train, val = validation_split(ds, 0.2, seed=0)
    assert val.y_test.bincount().tolist() == [10] * 10
    assert len(train.y_train) == 400
    again = validation_split(ds, 0.2, seed=0)[1]
    assert torch.equal(again.x_test, val.x_test)


@pytest.mark.parametrize("fraction", [0, 1.0, -0.5])
def test_validation_split_rejects_bad_fraction(fraction):
    with pytest.raises(ValueError, match="fraction"):
        validation_split(indexed_dataset([0, 1, 2] * 4), fraction, seed=0)


# ------------------------------------------------------------ arguments & types


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(ValueError) as err:
        load("imagenet")
    for name in DATASETS:
        assert name in str(err.value)


@pytest.mark.parametrize(
    "kwargs, arg",
    [({"label_noise": 1.0}, "label_noise"), ({"label_noise": -0.1}, "label_noise"),
     ({"train_size": 10.5}, "train_size"), ({"seed": -1}, "seed")],
)
def test_bad_arguments_name_the_argument(kwargs, arg):
    with pytest.raises(ValueError, match=arg):
        load("digits", **kwargs)


def test_dataset_checks_layout():
    x, y = torch.zeros(4, 1, 2, 2), torch.zeros(4, dtype=torch.int64)
    with pytest.raises(ValueError, match="x_train must be float32"):
        Dataset("bad", x.double(), y, x, y, num_classes=2)
    with pytest.raises(ValueError, match="y_test must be int64"):
        Dataset("bad", x, y, x, y[:3], num_classes=2)
    ds = Dataset("ok", x, y, x, y, num_classes=2)
    assert ds.input_shape == (1, 2, 2) and "train=4" in repr(ds)
    with pytest.raises(AttributeError):
        ds.name = "other"  # type: ignore[misc]


# ------------------------------------------------------------ real shared data


def _shared(folder: str) -> Path:
    path = SHARED / folder
    if not all((path / f"{stem}.gz").is_file() for stem in STEMS):
        pytest.skip(f"shared dataset not present at {path}")
    return path


def test_shared_fashion_mnist():
    ds = load("fashion-mnist", _shared("fashion-mnist"), download=False)
    assert (len(ds.y_train), len(ds.y_test)) == (60000, 9947)
    assert ds.input_shape == (1, 28, 28)
    assert ds.y_train.bincount().tolist() == [6000] * 10
    assert ds.x_train.min() == 0.0 and ds.x_train.max() == 1.0


def test_shared_mnist_10k():
    ds = load("mnist", _shared("mnist-10k"), download=False, train_size=1000, seed=0)
    assert len(ds.y_train) == 1000 and len(ds.y_test) == 1500
    assert ds.y_train.bincount().tolist() == [100] * 10
