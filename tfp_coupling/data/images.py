"""Image datasets: MNIST-format IDX files read offline, or tensorflow-datasets."""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import numpy as np

from tfp_coupling.data.info import DatasetInfo

__all__ = ["IDX_DATASETS", "IMAGE_DATASETS", "NUM_CLASSES", "read_idx"]

IMAGE_DATASETS = ("mnist", "fashion_mnist", "cifar10")
IDX_DATASETS = ("mnist", "fashion_mnist")
NUM_CLASSES = {"mnist": 10, "fashion_mnist": 10, "cifar10": 10}
DATA_DIR_ENV = "TFP_COUPLING_DATA_DIR"
_DOWNLOAD_HINTS = {
    "mnist": "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "fashion_mnist": "https://github.com/zalandoresearch/fashion-mnist#get-the-data",
}


def read_idx(path: str | Path) -> np.ndarray:
    """Reads an IDX file (MNIST's format), gzip-compressed or not, into a numpy array.

    Example:
        >>> images = read_idx("../shared/data/mnist/t10k-images-idx3-ubyte.gz")  # doctest: +SKIP
        >>> images.shape, images.dtype  # doctest: +SKIP
        ((10000, 28, 28), dtype('uint8'))
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:  # garbage or a cut-off download
        kind = "gzip" if path.suffix == ".gz" else "IDX"
        reason = " ".join(f"{type(e).__name__}: {e}".split()) if str(e) else type(e).__name__
        raise ValueError(f"{path}: not a complete {kind} file ({reason}); download it "
                         f"again") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{path}: not an IDX file (bad magic number)")
    dtypes = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    if raw[2] not in dtypes:
        raise ValueError(f"{path}: unknown IDX element type 0x{raw[2]:02x}")
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(dtypes[raw[2]])
    offset = 4 + 4 * ndim
    count = int(np.prod(shape))
    if len(raw) - offset != count * dtype.itemsize:
        raise ValueError(f"{path}: header says shape {shape}, but the file holds "
                         f"{len(raw) - offset} bytes of data")
    data = np.frombuffer(raw, dtype=dtype, count=count, offset=offset).reshape(shape)
    return data.astype(dtype.newbyteorder("="))


def _idx_length(path: Path) -> int:
    """The first dimension an IDX file's header declares (its number of examples)."""
    with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as f:
        return int.from_bytes(f.read(8)[4:8], "big")


def _find_idx(folder: Path, stem: str) -> Path | None:
    for p in (folder / f"{stem}.gz", folder / stem):
        if p.is_file():
            return p
    return None


def _idx_folder(name: str, data_dir: Path) -> tuple[Path, Path | None, Path]:
    """``(folder, training images file or None, test images file)`` of an IDX folder."""
    if not data_dir.is_dir():
        raise FileNotFoundError(f"data folder not found: {data_dir}")
    folder = data_dir
    if (data_dir / name).is_dir() and _find_idx(data_dir, "t10k-images-idx3-ubyte") is None:
        folder = data_dir / name
    test_file = _find_idx(folder, "t10k-images-idx3-ubyte")
    if test_file is None:
        raise FileNotFoundError(
            f"no {name} IDX files in {folder}: expected t10k-images-idx3-ubyte[.gz] (and "
            f"optionally train-images-idx3-ubyte[.gz]); download them from "
            f"{_DOWNLOAD_HINTS[name]}")
    return folder, _find_idx(folder, "train-images-idx3-ubyte"), test_file


def _split_idx(train: np.ndarray | None, test: np.ndarray) -> dict[str, np.ndarray]:
    """The three splits of an IDX folder's arrays (see :mod:`tfp_coupling.data`)."""
    if train is not None:
        n_val = 5000 if len(train) > 10000 else len(train) // 10
        return {"train": train[:-n_val], "validation": train[-n_val:], "test": test}
    n_train = len(test) * 4 // 5  # 8,000 of 10,000
    n_val = n_train // 8  # 1,000 of those 8,000
    return {"train": test[:n_train - n_val], "validation": test[n_train - n_val:n_train],
            "test": test[n_train:]}


def _load_idx_folder(name: str, data_dir: Path) -> tuple[dict[str, np.ndarray], str]:
    folder, train_file, test_file = _idx_folder(name, data_dir)

    def images(path: Path) -> np.ndarray:
        x = read_idx(path)
        if x.ndim != 3 or x.dtype != np.uint8:
            raise ValueError(f"{path}: expected uint8 images of shape [N, H, W], got "
                             f"{x.dtype} of shape {list(x.shape)}")
        return x[..., None]

    test = images(test_file)
    if train_file is not None:
        train = images(train_file)
        if len(train) < 2:
            raise ValueError(f"{train_file}: too few images ({len(train)})")
        return _split_idx(train, test), f"IDX files in {folder} (train file + t10k file)"
    if len(test) < 10:
        raise ValueError(f"{test_file}: too few images ({len(test)}) to split")
    return (_split_idx(None, test),
            f"IDX test file {test_file} (first 80% train/validation, last 20% test)")


def _load_idx_labels(name: str, data_dir: Path) -> dict[str, np.ndarray]:
    """The class labels beside an IDX folder's images, split as the images are."""
    folder, train_file, test_file = _idx_folder(name, data_dir)

    def labels(images_file: Path) -> np.ndarray:
        stem = images_file.name.split("-images-")[0]
        path = _find_idx(folder, f"{stem}-labels-idx1-ubyte")
        if path is None:
            raise FileNotFoundError(
                f"no class labels for {images_file}: expected {stem}-labels-idx1-ubyte[.gz] "
                f"beside it; download it from {_DOWNLOAD_HINTS[name]}")
        y = read_idx(path)
        count = _idx_length(images_file)
        if y.ndim != 1 or len(y) != count:
            raise ValueError(f"{path}: expected {count} labels (one per image of "
                             f"{images_file.name}), got shape {list(y.shape)}")
        return y.astype(np.int64)

    train = labels(train_file) if train_file is not None else None
    return _split_idx(train, labels(test_file))


def _tfds_load(name: str, feature: str = "image") -> dict[str, np.ndarray]:
    """The three splits of one feature from tensorflow-datasets: uint8 ``[N, H, W, C]``
    images (``"image"``) or integer class labels ``[N]`` (``"label"``)."""
    import tensorflow_datasets as tfds  # the `data` extra

    out = {}
    for split, spec in (("train", "train[:90%]"), ("validation", "train[90%:]"),
                        ("test", "test")):
        batch = tfds.load(name, split=spec, batch_size=-1)
        out[split] = np.asarray(tfds.as_numpy(batch)[feature])
    return out


def _raw_splits(name: str, data_dir: str | Path | None,
                feature: str) -> tuple[dict[str, np.ndarray], str]:
    """One feature (``"image"`` or ``"label"``) of the three splits, and where it came from."""
    if data_dir is None and os.environ.get(DATA_DIR_ENV):
        data_dir = os.environ[DATA_DIR_ENV]
    if data_dir is not None:
        if name not in IDX_DATASETS:
            raise ValueError(f"{name}: offline loading from data_dir reads IDX files, which "
                             f"exist for {', '.join(IDX_DATASETS)} only; for {name} install "
                             f"tensorflow-datasets (pip install 'tfp-coupling[data]') and "
                             f"leave data_dir unset")
        folder = Path(data_dir).expanduser()
        if feature == "label":
            return _load_idx_labels(name, folder), f"IDX label files in {folder}"
        return _load_idx_folder(name, folder)
    offline = (f"or, offline, pass data_dir (CLI: --data-dir) = a folder with the IDX "
               f"files t10k-images-idx3-ubyte.gz [and train-images-idx3-ubyte.gz] from "
               f"{_DOWNLOAD_HINTS[name]}" if name in IDX_DATASETS else
               "(there is no offline reader for it)")
    try:
        raw = _tfds_load(name, feature)
    except ImportError as e:
        if e.name not in (None, "tensorflow_datasets"):  # installed, but broken
            raise ValueError(f"cannot load {name!r}: tensorflow-datasets is installed but "
                             f"does not import ({type(e).__name__}: {e}); repair it, e.g. "
                             f"pip install {e.name.split('.')[0]}, {offline}") from None
        raise ValueError(f"cannot load {name!r}: tensorflow-datasets is not installed; "
                         f"pip install 'tfp-coupling[data]' (needs network the first "
                         f"time), {offline}") from None
    except Exception as e:  # tfds raises many kinds: network, checksum, ...
        reason = " ".join(f"{type(e).__name__}: {e}".split())[:200]
        raise ValueError(f"cannot load {name!r} from tensorflow-datasets ({reason}); "
                         f"it needs network the first time, {offline}") from None
    return raw, "tensorflow-datasets"


def load_splits(
    name: str, data_dir: str | Path | None, normalize: bool
) -> tuple[dict[str, np.ndarray], DatasetInfo]:
    raw, source = _raw_splits(name, data_dir, "image")
    shape = tuple(int(d) for d in raw["test"].shape[1:])
    scale = 256.0 if normalize else 1.0
    info = DatasetInfo(name, "image", shape, {k: len(v) for k, v in raw.items()},
                       np.zeros(()), np.full((), scale), discrete=True, source=source)
    return {k: (v.astype(np.float32) / np.float32(scale)) for k, v in raw.items()}, info


def load_label_splits(name: str, data_dir: str | Path | None) -> dict[str, np.ndarray]:
    """The class labels (int64 in ``0..NUM_CLASSES[name] - 1``) of each split, one per image
    of :func:`load_splits`, in the same order."""
    raw, source = _raw_splits(name, data_dir, "label")
    classes = NUM_CLASSES[name]
    for split, y in raw.items():
        if len(y) and (y.min() < 0 or y.max() >= classes):
            raise ValueError(f"{name} labels from {source}: {split} split holds label "
                             f"{int(y.max() if y.max() >= classes else y.min())}, outside "
                             f"0..{classes - 1}")
    return {k: v.astype(np.int64) for k, v in raw.items()}
