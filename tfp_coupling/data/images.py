"""Image datasets: MNIST-format IDX files read offline, or tensorflow-datasets."""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import numpy as np

from tfp_coupling.data.info import DatasetInfo

__all__ = ["IDX_DATASETS", "IMAGE_DATASETS", "read_idx"]

IMAGE_DATASETS = ("mnist", "fashion_mnist", "cifar10")
IDX_DATASETS = ("mnist", "fashion_mnist")
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


def _find_idx(folder: Path, stem: str) -> Path | None:
    for p in (folder / f"{stem}.gz", folder / stem):
        if p.is_file():
            return p
    return None


def _load_idx_folder(name: str, data_dir: Path) -> tuple[dict[str, np.ndarray], str]:
    if not data_dir.is_dir():
        raise FileNotFoundError(f"data folder not found: {data_dir}")
    folder = data_dir
    if (data_dir / name).is_dir() and _find_idx(data_dir, "t10k-images-idx3-ubyte") is None:
        folder = data_dir / name
    train_file = _find_idx(folder, "train-images-idx3-ubyte")
    test_file = _find_idx(folder, "t10k-images-idx3-ubyte")
    if test_file is None:
        raise FileNotFoundError(
            f"no {name} IDX files in {folder}: expected t10k-images-idx3-ubyte[.gz] (and "
            f"optionally train-images-idx3-ubyte[.gz]); download them from "
            f"{_DOWNLOAD_HINTS[name]}")

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
        n_val = 5000 if len(train) > 10000 else len(train) // 10
        splits = {"train": train[:-n_val], "validation": train[-n_val:], "test": test}
        return splits, f"IDX files in {folder} (train file + t10k file)"
    if len(test) < 10:
        raise ValueError(f"{test_file}: too few images ({len(test)}) to split")
    n_train = len(test) * 4 // 5  # 8,000 of 10,000
    n_val = n_train // 8  # 1,000 of those 8,000
    splits = {"train": test[:n_train - n_val], "validation": test[n_train - n_val:n_train],
              "test": test[n_train:]}
    return splits, f"IDX test file {test_file} (first 80% train/validation, last 20% test)"


def _tfds_load(name: str) -> dict[str, np.ndarray]:
    """The three splits from tensorflow-datasets as uint8 ``[N, H, W, C]`` arrays."""
    import tensorflow_datasets as tfds  # the `data` extra

    out = {}
    for split, spec in (("train", "train[:90%]"), ("validation", "train[90%:]"),
                        ("test", "test")):
        batch = tfds.load(name, split=spec, batch_size=-1)
        out[split] = np.asarray(tfds.as_numpy(batch)["image"])
    return out


def load_splits(
    name: str, data_dir: str | Path | None, normalize: bool
) -> tuple[dict[str, np.ndarray], DatasetInfo]:
    if data_dir is None and os.environ.get(DATA_DIR_ENV):
        data_dir = os.environ[DATA_DIR_ENV]
    if data_dir is not None:
        if name not in IDX_DATASETS:
            raise ValueError(f"{name}: offline loading from data_dir reads IDX files, which "
                             f"exist for {', '.join(IDX_DATASETS)} only; for {name} install "
                             f"tensorflow-datasets (pip install 'tfp-coupling[data]') and "
                             f"leave data_dir unset")
        raw, source = _load_idx_folder(name, Path(data_dir).expanduser())
    else:
        offline = (f"or, offline, pass data_dir (CLI: --data-dir) = a folder with the IDX "
                   f"files t10k-images-idx3-ubyte.gz [and train-images-idx3-ubyte.gz] from "
                   f"{_DOWNLOAD_HINTS[name]}" if name in IDX_DATASETS else
                   "(there is no offline reader for it)")
        try:
            raw = _tfds_load(name)
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
        source = "tensorflow-datasets"
    shape = tuple(int(d) for d in raw["test"].shape[1:])
    scale = 256.0 if normalize else 1.0
    info = DatasetInfo(name, "image", shape, {k: len(v) for k, v in raw.items()},
                       np.zeros(()), np.full((), scale), discrete=True, source=source)
    return {k: (v.astype(np.float32) / np.float32(scale)) for k, v in raw.items()}, info
