"""Image-classification datasets for the lab, as plain tensors.

Every dataset comes back as a :class:`Dataset`: float32 images of shape
``(N, C, H, W)`` scaled to ``[0, 1]`` and int64 class indices, already split into a
train and a test set. Nothing is normalised or augmented here; that is the
experiment's business.

========================  =======================  ==========================================
name                      shape                    source
========================  =======================  ==========================================
``"digits"``              ``(1, 8, 8)``            scikit-learn's ``load_digits`` (offline)
``"mnist"``               ``(1, 28, 28)``          IDX files, downloaded if absent
``"fashion-mnist"``       ``(1, 28, 28)``          IDX files, downloaded if absent
``"cifar10"``             ``(3, 32, 32)``          python-pickle batches, downloaded if absent
========================  =======================  ==========================================

Files live in ``data_dir`` if given, else in ``$PCLAB_DATA/<name>``, else in
``~/.cache/pclab/<name>``. Downloads are checked against the MD5 sums that
torchvision publishes and written atomically, so an interrupted download never
leaves a half file that a later run would trust.

Two controlled corruptions of the *training* set make the lab's robustness
experiments one argument each: ``train_size`` keeps a class-balanced subset and
``label_noise`` flips an exact fraction of labels to another class. Both are
deterministic given ``seed``; the test set is never touched.

Example:

>>> from pclab.data import load, validation_split
>>> clean = load("digits", train_size=100, seed=0)
>>> clean.x_train.shape, clean.input_shape, clean.num_classes
(torch.Size([100, 1, 8, 8]), (1, 8, 8), 10)
>>> clean.y_train.bincount().tolist()
[10, 10, 10, 10, 10, 10, 10, 10, 10, 10]
>>> noisy = load("digits", train_size=100, label_noise=0.1, seed=0)
>>> int((noisy.y_train != clean.y_train).sum())  # round(0.1 * 100) labels flipped
10
>>> train, val = validation_split(clean, 0.2, seed=0)
>>> len(train.y_train), len(val.y_test)
(80, 20)
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import http.client
import importlib
import logging
import math
import numbers
import os
import pickle
import tarfile
import tempfile
import urllib.request
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "DATASETS",
    "DataError",
    "Dataset",
    "balanced_subset",
    "flip_labels",
    "load",
    "validation_split",
]

DATASETS: tuple[str, ...] = ("digits", "mnist", "fashion-mnist", "cifar10")

_log = logging.getLogger(__name__)

# Fixed so that the digits test set is the same whatever ``seed`` a run uses:
# otherwise test accuracies from different seeds would be measured on different data.
_DIGITS_SPLIT_SEED = 0
_DIGITS_TEST_FRACTION = 0.2

# Label noise draws from its own stream so that which examples are flipped is not
# tied to the draws that chose the ``train_size`` subset from the same ``seed``.
_NOISE_STREAM = 1

_IDX_STEMS = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)

# Mirrors and MD5 sums as published in torchvision/datasets/mnist.py. The S3 mirror
# comes first for MNIST because yann.lecun.com often refuses plain downloads.
_IDX_SOURCES: dict[str, tuple[tuple[str, ...], dict[str, str]]] = {
    "mnist": (
        (
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "http://yann.lecun.com/exdb/mnist/",
        ),
        {
            "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
            "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
            "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
        },
    ),
    "fashion-mnist": (
        ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        {
            "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
            "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
            "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
        },
    ),
}

# As published in torchvision/datasets/cifar.py.
_CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
_CIFAR_MD5 = "c58f30108f718f92721af3b95e74349a"
_CIFAR_ARCHIVE = "cifar-10-python.tar.gz"
_CIFAR_FOLDER = "cifar-10-batches-py"
_CIFAR_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
_CIFAR_TEST = "test_batch"

# IDX type codes (third header byte) -> big-endian numpy dtype.
_IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

_FIX_CORRUPT = "Delete it and load again to re-download it, or replace it with an intact copy."

_DOWNLOAD_TIMEOUT_S = 60.0
_CHUNK = 1 << 20


class DataError(ValueError):
    """A dataset file is missing, corrupt or not what its name says.

    The message names the file (or folder) and the fix: where to put which file,
    or that a corrupt file should be deleted so it is fetched again.
    """


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """A train/test split of an image-classification dataset.

    Attributes:
        name: the dataset's name, one of :data:`DATASETS` (``"<name>/val"`` for the
            validation part made by :func:`validation_split`).
        x_train: float32 images, ``(N, C, H, W)``, values in ``[0, 1]``.
        y_train: int64 class indices in ``[0, num_classes)``, ``(N,)``.
        x_test: float32 images, ``(M, C, H, W)``.
        y_test: int64 class indices, ``(M,)``.
        num_classes: number of classes.

    Equality is identity (``eq=False``): ``==`` on tensors has no single truth
    value, so compare the tensors with ``torch.equal`` instead.
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int

    def __post_init__(self) -> None:
        # Checked once here so every consumer can rely on the layout without re-checking.
        for split in ("train", "test"):
            x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
            if x.dtype != torch.float32 or x.dim() != 4:
                raise ValueError(
                    f"Dataset {self.name!r}: x_{split} must be float32 of shape (N, C, H, W), "
                    f"got {x.dtype} of shape {tuple(x.shape)}"
                )
            if y.dtype != torch.int64 or y.dim() != 1 or len(y) != len(x):
                raise ValueError(
                    f"Dataset {self.name!r}: y_{split} must be int64 of shape ({len(x)},) "
                    f"to match x_{split}, got {y.dtype} of shape {tuple(y.shape)}"
                )
        if self.x_train.shape[1:] != self.x_test.shape[1:]:
            raise ValueError(
                f"Dataset {self.name!r}: train images {tuple(self.x_train.shape[1:])} and "
                f"test images {tuple(self.x_test.shape[1:])} differ in shape"
            )

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one image, ``(C, H, W)``."""
        return tuple(self.x_train.shape[1:])

    def __repr__(self) -> str:
        return (
            f"Dataset(name={self.name!r}, train={len(self.y_train)}, test={len(self.y_test)}, "
            f"input_shape={self.input_shape}, num_classes={self.num_classes})"
        )


# --------------------------------------------------------------------------- API


def load(
    name: str,
    data_dir: str | os.PathLike[str] | None = None,
    *,
    download: bool = True,
    train_size: int | None = None,
    label_noise: float = 0.0,
    seed: int = 0,
) -> Dataset:
    """Load a dataset by name, optionally shrinking and corrupting its training set.

    Args:
        name: one of :data:`DATASETS`.
        data_dir: folder holding the dataset's files (ignored by ``"digits"``, which
            ships with scikit-learn). Default: ``$PCLAB_DATA/<name>`` if
            ``PCLAB_DATA`` is set, else ``~/.cache/pclab/<name>``.
        download: fetch missing files from the official mirrors.
        train_size: keep a class-balanced subset of this many training examples
            (see :func:`balanced_subset`). ``None`` keeps all.
        label_noise: fraction ``p`` in ``[0, 1)`` of training labels flipped to a
            uniformly chosen *other* class; exactly ``round(p * N)`` labels change
            (see :func:`flip_labels`). Applied after ``train_size``.
        seed: seeds the subset and the label flips; the same seed gives the same
            dataset. Test sets never depend on it.

    Raises:
        ValueError: unknown ``name`` or an argument out of range.
        DataError: files missing and not downloadable, or corrupt.
    """
    if name not in DATASETS:
        raise ValueError(f"Unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    if train_size is not None and (isinstance(train_size, bool) or not isinstance(train_size, int)):
        raise ValueError(f"train_size must be an int or None, got {train_size!r}")
    _check_fraction("label_noise", label_noise)
    _check_seed(seed)

    ds = _LOADERS[name](_resolve_dir(name, data_dir), download)

    if train_size is not None:
        rng = np.random.default_rng(seed)
        idx = _balanced_indices(ds.y_train, train_size, rng, f"train_size={train_size}")
        ds = dataclasses.replace(ds, x_train=ds.x_train[idx], y_train=ds.y_train[idx])
    if label_noise > 0:
        noise_seed = _substream_seed(seed, _NOISE_STREAM)
        y = flip_labels(ds.y_train, label_noise, ds.num_classes, seed=noise_seed)
        ds = dataclasses.replace(ds, y_train=y)
    return ds


def balanced_subset(
    x: torch.Tensor, y: torch.Tensor, n: int, *, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded, class-balanced subset of ``n`` examples, in their original order.

    With ``K`` classes present in ``y``, each class gets ``n // K`` examples and the
    first ``n % K`` classes (in label order) one more. A class with too few
    examples gives all it has and the shortfall is shared out the same way among
    the others, so any ``n`` up to ``len(y)`` is possible and class counts differ
    by at most one except for exhausted classes. Which examples a class gives is a
    seeded random choice; for a fixed seed, a smaller subset is contained in a
    larger one.

    Raises:
        ValueError: ``n`` below the number of classes or above ``len(y)``.
    """
    _check_seed(seed)
    if len(x) != len(y):
        raise ValueError(f"x has {len(x)} examples but y has {len(y)}")
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise ValueError(f"n must be an int, got {n!r}")
    idx = _balanced_indices(y, n, np.random.default_rng(seed), f"n={n}")
    return x[idx], y[idx]


def flip_labels(y: torch.Tensor, fraction: float, num_classes: int, *, seed: int) -> torch.Tensor:
    """Return a copy of ``y`` with exactly ``round(fraction * len(y))`` labels changed.

    The examples to corrupt are a seeded uniform choice without replacement; each
    gets a label drawn uniformly from the ``num_classes - 1`` *other* classes
    (symmetric label noise, as in e.g. Rolnick et al. 2017, "Deep learning is
    robust to massive label noise"), so every chosen label really changes.
    ``round`` is Python's (half to even).

    Raises:
        ValueError: ``fraction`` outside ``[0, 1)``, labels outside
            ``[0, num_classes)``, or fewer than two classes to flip between.
    """
    _check_fraction("fraction", fraction)
    _check_seed(seed)
    labels = _labels_numpy(y, "y")
    n_flip = round(fraction * len(labels))
    if n_flip == 0:
        return y.clone()
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2 to flip labels, got {num_classes}")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(
            f"y has labels in [{labels.min()}, {labels.max()}], outside [0, num_classes={num_classes})"
        )
    rng = np.random.default_rng(seed)
    where = rng.choice(len(labels), size=n_flip, replace=False)
    # Adding an offset in 1..K-1 modulo K is a uniform draw over the other K-1 classes.
    offset = rng.integers(1, num_classes, size=n_flip)
    flipped = labels.copy()
    flipped[where] = (labels[where] + offset) % num_classes
    return torch.from_numpy(flipped).to(dtype=y.dtype, device=y.device)


def validation_split(ds: Dataset, fraction: float, *, seed: int) -> tuple[Dataset, Dataset]:
    """Carve a class-balanced validation set out of the training set.

    ``round(fraction * N)`` training examples are held out, chosen as in
    :func:`balanced_subset`. Both returned datasets train on the remaining
    examples; they differ only in what they test on:

    * the train part (named ``ds.name``) keeps the original test set, for the
      final evaluation;
    * the validation part (named ``"<ds.name>/val"``) has the held-out examples as
      its test set, for choosing hyperparameters without looking at the test set.

    The held-out labels are the training labels as given, label noise included.

    Raises:
        ValueError: ``fraction`` outside ``(0, 1)``, or it holds out fewer examples
            than there are classes, or all of them.
    """
    _check_fraction("fraction", fraction)
    if fraction == 0:
        raise ValueError("fraction must be in (0, 1), got 0: a validation set needs examples")
    _check_seed(seed)
    n = len(ds.y_train)
    n_val = round(fraction * n)
    if n_val >= n:
        raise ValueError(f"fraction={fraction} holds out all {n} training examples; nothing left to train on")
    rng = np.random.default_rng(seed)
    val_idx = _balanced_indices(ds.y_train, n_val, rng, f"fraction={fraction} (holding out {n_val})")
    keep = torch.ones(n, dtype=torch.bool)
    keep[val_idx] = False
    x_fit, y_fit = ds.x_train[keep], ds.y_train[keep]
    train = dataclasses.replace(ds, x_train=x_fit, y_train=y_fit)
    val = dataclasses.replace(
        ds,
        name=f"{ds.name}/val",
        x_train=x_fit,
        y_train=y_fit,
        x_test=ds.x_train[val_idx],
        y_test=ds.y_train[val_idx],
    )
    return train, val


# ---------------------------------------------------------------- argument checks


def _check_fraction(arg: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value < 1:
        raise ValueError(f"{arg} must be a number in [0, 1), got {value!r}")


def _check_seed(seed: int) -> None:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")


def _substream_seed(seed: int, stream: int) -> int:
    return int(np.random.SeedSequence((seed, stream)).generate_state(1)[0])


def _labels_numpy(y: torch.Tensor, arg: str) -> np.ndarray:
    if not isinstance(y, torch.Tensor) or y.dim() != 1 or y.dtype.is_floating_point or y.dtype.is_complex:
        got = f"{y.dtype} of shape {tuple(y.shape)}" if isinstance(y, torch.Tensor) else type(y).__name__
        raise ValueError(f"{arg} must be a 1-D integer tensor of class indices, got {got}")
    return y.detach().cpu().numpy().astype(np.int64)


# ------------------------------------------------------------------- subsetting


def _class_quotas(counts: np.ndarray, n: int) -> np.ndarray:
    """Split ``n`` as evenly as possible over classes holding ``counts`` examples.

    Water-filling: classes too small for an equal share give everything and drop
    out; the rest share what is left, the remainder going to the first classes.
    """
    quotas = np.zeros_like(counts)
    active = list(range(len(counts)))
    remaining = n
    while remaining > 0:
        share, extra = divmod(remaining, len(active))
        wanted = {k: share + (i < extra) for i, k in enumerate(active)}
        short = [k for k in active if counts[k] < wanted[k]]
        if not short:
            for k in active:
                quotas[k] = wanted[k]
            break
        for k in short:
            quotas[k] = counts[k]
            remaining -= counts[k]
            active.remove(k)
    return quotas


def _balanced_indices(y: torch.Tensor, n: int, rng: np.random.Generator, what: str) -> torch.Tensor:
    """Sorted indices of a class-balanced subset of size ``n``; ``what`` names ``n`` in errors."""
    labels = _labels_numpy(y, "y")
    classes, counts = np.unique(labels, return_counts=True)
    if not len(classes) <= n <= len(labels):
        raise ValueError(
            f"{what} is not possible: a class-balanced subset needs at least one example "
            f"per class ({len(classes)} classes) and at most the {len(labels)} available"
        )
    quotas = _class_quotas(counts, n)
    # One permutation for all classes, each taking its first members in that order:
    # a larger quota extends a smaller one, so subsets for the same seed are nested.
    perm = rng.permutation(len(labels))
    in_perm = labels[perm]
    chosen = [perm[in_perm == c][:q] for c, q in zip(classes, quotas, strict=True)]
    return torch.from_numpy(np.sort(np.concatenate(chosen)))


# ------------------------------------------------------------------ directories


def _resolve_dir(name: str, data_dir: str | os.PathLike[str] | None) -> Path:
    if data_dir is not None:
        return Path(data_dir).expanduser()
    root = os.environ.get("PCLAB_DATA")
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "pclab"
    return base / name


def _elsewhere(name: str) -> str:
    return (
        f"Or, to keep them elsewhere, pass that folder as data_dir= (CLI: --data-dir), or set "
        f"$PCLAB_DATA so that they are found in $PCLAB_DATA/{name}/."
    )


# --------------------------------------------------------------------- download


def _download(url: str, dest: Path, md5: str) -> None:
    """Fetch ``url`` to ``dest``, atomically and only if its MD5 is ``md5``.

    The bytes go to a temporary file next to ``dest`` and are renamed into place
    after the checksum passes, so ``dest`` is either absent or complete and
    correct; nothing else is left behind on any failure.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        digest = hashlib.md5(usedforsecurity=False)
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=_DOWNLOAD_TIMEOUT_S) as response:
            while chunk := response.read(_CHUNK):
                digest.update(chunk)
                out.write(chunk)
        if digest.hexdigest() != md5:
            raise DataError(
                f"Checksum mismatch for {url}: MD5 {digest.hexdigest()}, expected {md5}. "
                f"Nothing was written to {dest}; the mirror may serve a different file."
            )
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def _fetch(urls: Sequence[str], md5: str, dest: Path) -> None:
    """Download ``dest`` from the first of ``urls`` (mirrors) that delivers it intact."""
    failures = []
    for url in urls:
        _log.info("Downloading %s to %s", url, dest)
        try:
            _download(url, dest, md5)
            return
        except (OSError, http.client.HTTPException, DataError) as err:
            failures.append(f"{url}: {err}")
    raise DataError("; ".join(failures))


# -------------------------------------------------------------------- IDX files


def _read_idx(path: Path) -> np.ndarray:
    """Parse an IDX file (gzipped if its name ends in ``.gz``) into a numpy array.

    Layout (LeCun et al., MNIST distribution): two zero bytes, a type code, the
    number of dimensions ``d``, ``d`` big-endian uint32 sizes, then the values in
    C order. The byte count must match the header exactly: a short file would
    otherwise load as a silently smaller dataset.
    """
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                raw = f.read()
        else:
            raw = path.read_bytes()
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(f"Cannot read {path}: {err}. {_FIX_CORRUPT}") from err
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataError(
            f"{path} is not an IDX file (magic bytes {raw[:4].hex() or 'missing'}, expected "
            f"00 00 <type code> <ndim>). {_FIX_CORRUPT}"
        )
    dtype, ndim = _IDX_DTYPES[raw[2]], raw[3]
    header_len = 4 + 4 * ndim
    if len(raw) < header_len:
        raise DataError(f"{path} ends inside its IDX header. {_FIX_CORRUPT}")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = header_len + math.prod(shape) * dtype.itemsize
    if len(raw) != expected:
        raise DataError(
            f"{path} has {len(raw)} bytes but its IDX header (shape {shape}, {dtype.name}) "
            f"implies {expected}: the file is truncated or corrupt. {_FIX_CORRUPT}"
        )
    data = np.frombuffer(raw, dtype=dtype, offset=header_len).reshape(shape)
    return data.astype(dtype.newbyteorder("="))


def _find_idx(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _load_idx(name: str, folder: Path, download: bool) -> Dataset:
    mirrors, md5s = _IDX_SOURCES[name]
    missing = [stem for stem in _IDX_STEMS if _find_idx(folder, stem) is None]
    if missing and download:
        try:
            for stem in missing:
                filename = f"{stem}.gz"
                _fetch([mirror + filename for mirror in mirrors], md5s[filename], folder / filename)
            missing = []
        except DataError as err:
            reason = f"download failed: {err}"
    elif missing:
        reason = "download=False"
    if missing:
        still = [f"{stem}.gz" for stem in _IDX_STEMS if _find_idx(folder, stem) is None]
        raise DataError(
            f"{name}: {folder} lacks {', '.join(still)} ({reason}). Download them from "
            f"{mirrors[0]} and put them in {folder} (gzipped or not). " + _elsewhere(name)
        )

    paths = {stem: _find_idx(folder, stem) for stem in _IDX_STEMS}
    splits: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for split in ("train", "t10k"):
        image_path = paths[f"{split}-images-idx3-ubyte"]
        label_path = paths[f"{split}-labels-idx1-ubyte"]
        assert image_path is not None and label_path is not None
        images, labels = _read_idx(image_path), _read_idx(label_path)
        if images.dtype != np.uint8 or images.ndim != 3:
            raise DataError(
                f"{image_path} holds {images.dtype} of shape {images.shape}; expected uint8 images "
                f"(N, H, W). Is it a labels file? {_FIX_CORRUPT}"
            )
        if labels.dtype != np.uint8 or labels.ndim != 1:
            raise DataError(
                f"{label_path} holds {labels.dtype} of shape {labels.shape}; expected uint8 labels "
                f"(N,). Is it an images file? {_FIX_CORRUPT}"
            )
        if len(images) != len(labels):
            raise DataError(
                f"{image_path} has {len(images)} images but {label_path} has {len(labels)} labels; "
                f"both must come from the same release. {_FIX_CORRUPT}"
            )
        if len(labels) and labels.max() >= 10:
            raise DataError(f"{label_path} has label {labels.max()}, outside 0..9. {_FIX_CORRUPT}")
        splits[split] = _images_to_tensor(images[:, None]), torch.from_numpy(labels.astype(np.int64))
    (x_train, y_train), (x_test, y_test) = splits["train"], splits["t10k"]
    return Dataset(name, x_train, y_train, x_test, y_test, num_classes=10)


def _images_to_tensor(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(images)).to(torch.float32).div_(255.0)


# ----------------------------------------------------------------------- digits


def _load_digits(folder: Path, download: bool) -> Dataset:
    del folder, download  # ships with scikit-learn
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.from_numpy(bunch.data.reshape(-1, 1, 8, 8) / 16.0).to(torch.float32)
    y = torch.from_numpy(bunch.target.astype(np.int64))
    # Stratified by hand rather than with train_test_split: the split then depends
    # only on numpy's PCG64 stream, not on scikit-learn's splitting internals.
    rng = np.random.default_rng(_DIGITS_SPLIT_SEED)
    labels = y.numpy()
    test = []
    for c in range(10):
        members = np.flatnonzero(labels == c)
        test.append(rng.permutation(members)[: round(_DIGITS_TEST_FRACTION * len(members))])
    is_test = torch.zeros(len(y), dtype=torch.bool)
    is_test[torch.from_numpy(np.concatenate(test))] = True
    return Dataset("digits", x[~is_test], y[~is_test], x[is_test], y[is_test], num_classes=10)


# ---------------------------------------------------------------------- CIFAR-10


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles dicts of numpy arrays and nothing else.

    A pickle can run arbitrary code when loaded; CIFAR batches only need numpy's
    array reconstruction, so any other global is refused.
    """

    _ALLOWED = frozenset({
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"),  # protocol 5
        ("numpy._core.numeric", "_frombuffer"),
        ("_codecs", "encode"),  # bytes in protocol-2 pickles
    })

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")
        if module.startswith(("numpy.core.", "numpy._core.")):
            return _numpy_core_attr(module.rsplit(".", 1)[1], name)
        return super().find_class(module, name)


def _numpy_core_attr(submodule: str, name: str) -> object:
    # numpy 2 renamed numpy.core to numpy._core; old pickles name the old path.
    for package in ("numpy._core", "numpy.core"):
        try:
            return getattr(importlib.import_module(f"{package}.{submodule}"), name)
        except (ImportError, AttributeError):
            continue
    raise pickle.UnpicklingError(f"numpy has no {submodule}.{name}")


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with path.open("rb") as f:
            batch = _ArrayUnpickler(f, encoding="bytes").load()
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError, AttributeError) as err:
        raise DataError(f"Cannot read CIFAR-10 batch {path}: {err}. {_FIX_CORRUPT}") from err
    if not isinstance(batch, dict):
        raise DataError(f"{path} holds a {type(batch).__name__}, expected a dict. {_FIX_CORRUPT}")
    # encoding="bytes" keeps the official (Python 2) keys as bytes; files written
    # by Python 3 may use str keys.
    entries = {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}
    data, labels = entries.get("data"), entries.get("labels")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise DataError(
            f"{path}: 'data' must be a uint8 array of shape (N, 3072), got "
            f"{getattr(data, 'dtype', type(data).__name__)} {getattr(data, 'shape', '')}. {_FIX_CORRUPT}"
        )
    labels = np.asarray(labels if labels is not None else [], dtype=np.int64)
    if labels.shape != (len(data),) or (len(labels) and not (labels.min() >= 0 and labels.max() < 10)):
        raise DataError(
            f"{path}: 'labels' must be {len(data)} class indices in 0..9, got shape {labels.shape}. "
            f"{_FIX_CORRUPT}"
        )
    return data, labels


def _cifar_folder(root: Path) -> Path | None:
    """The folder holding the batches: ``root/cifar-10-batches-py`` or ``root`` itself."""
    for folder in (root / _CIFAR_FOLDER, root):
        if all((folder / f).is_file() for f in (*_CIFAR_TRAIN, _CIFAR_TEST)):
            return folder
    return None


def _extract_cifar(archive: Path, root: Path) -> None:
    """Extract only the six batch files, each to a path we choose.

    Never ``extractall``: an archive's member names could point outside ``root``
    (``../``, absolute paths, links); here they are only matched against names.
    """
    wanted = {f"{_CIFAR_FOLDER}/{f}" for f in (*_CIFAR_TRAIN, _CIFAR_TEST)}
    target = root / _CIFAR_FOLDER
    target.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                source = tar.extractfile(member) if member.name in wanted and member.isfile() else None
                if source is not None:
                    _write_atomic(target / Path(member.name).name, source.read())
                    wanted.discard(member.name)
    except (OSError, EOFError, tarfile.TarError, zlib.error) as err:
        raise DataError(f"Cannot extract {archive}: {err}. {_FIX_CORRUPT}") from err
    if wanted:
        raise DataError(f"{archive} lacks {', '.join(sorted(wanted))}. {_FIX_CORRUPT}")


def _write_atomic(dest: Path, payload: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(payload)
        os.replace(tmp, dest)
    finally:
        Path(tmp).unlink(missing_ok=True)


def _load_cifar10(root: Path, download: bool) -> Dataset:
    folder = _cifar_folder(root)
    if folder is None:
        archive = root / _CIFAR_ARCHIVE
        reason = ""
        if archive.is_file():  # placed by hand: trust it, the batches are checked on reading
            _extract_cifar(archive, root)
        elif download:
            try:
                _fetch([_CIFAR_URL], _CIFAR_MD5, archive)
                _extract_cifar(archive, root)
                # The 170 MB archive is redundant once its batches are extracted.
                archive.unlink()
            except DataError as err:
                reason = f"download failed: {err}"
        else:
            reason = "download=False"
        folder = _cifar_folder(root)
        if folder is None:
            raise DataError(
                f"cifar10: no {', '.join((*_CIFAR_TRAIN, _CIFAR_TEST))} in {root / _CIFAR_FOLDER} "
                f"or in {root} ({reason or 'archive incomplete'}). Download {_CIFAR_URL} and put "
                f"it in {root} (it is extracted on the next load), or put its extracted "
                f"{_CIFAR_FOLDER}/ folder there. " + _elsewhere("cifar10")
            )

    train = [_read_cifar_batch(folder / f) for f in _CIFAR_TRAIN]
    x_test, y_test = _read_cifar_batch(folder / _CIFAR_TEST)
    x_train = np.concatenate([x for x, _ in train])
    y_train = np.concatenate([y for _, y in train])
    # Each row is 1024 red, then 1024 green, then 1024 blue values, row-major: (C, H, W).
    return Dataset(
        "cifar10",
        _images_to_tensor(x_train.reshape(-1, 3, 32, 32)),
        torch.from_numpy(y_train),
        _images_to_tensor(x_test.reshape(-1, 3, 32, 32)),
        torch.from_numpy(y_test),
        num_classes=10,
    )


_LOADERS: dict[str, Callable[[Path, bool], Dataset]] = {
    "digits": _load_digits,
    "mnist": lambda folder, download: _load_idx("mnist", folder, download),
    "fashion-mnist": lambda folder, download: _load_idx("fashion-mnist", folder, download),
    "cifar10": _load_cifar10,
}
