"""Datasets behind one function, :func:`load`: 2-D toy densities, a user's tables, images.

Every dataset comes as three deterministic, disjoint splits ``"train"``, ``"validation"`` and
``"test"`` of ``float32`` arrays in *model units*, together (``with_info=True``) with a
:class:`DatasetInfo` that says how model units relate to the data's own units:

    x_model = (x_data - shift) / scale
    log p_data(x_data) = log p_model(x_model) - sum(log scale)        (change of variables)

so a likelihood computed on model units is reported in the data's units by adding
``info.log_det_correction = -sum(log scale)`` (:meth:`DatasetInfo.log_prob_to_data_units`).

Kinds of dataset:

* **2-D toy densities**, generated locally from a seed (no files, no network): ``two_moons``,
  ``circles``, ``eight_gaussians``, ``checkerboard``, ``pinwheel``, ``two_spirals``, ``rings``.
  One pool of ``8000 + 2000 + 2000`` points is drawn from ``seed`` and cut into
  train/validation/test; model units = data units.
* **tables** from a ``.npy`` (2-D array) or ``.csv`` (numbers, comma-separated, an optional
  header line) file, given by its path: rows shuffled with ``seed`` and split 80/10/10, then
  standardised with the *training* split's mean and standard deviation per column.
* **images** ``mnist``, ``fashion_mnist``, ``cifar10``: shape ``[N, H, W, C]``, pixel values
  ``k`` in ``0..255`` divided by 256 (model units in ``[0, 1)``, ``scale = 256``). They are
  discrete: train on ``(k + u) / 256``, ``u ~ U[0, 1)`` (:meth:`DatasetInfo.dequantize`), and
  report bits per dimension ``nll_data / (D ln 2)``. With ``data_dir`` they are read offline
  from a folder of IDX files (MNIST's format; mnist and fashion_mnist); otherwise from
  tensorflow-datasets, which needs the ``data`` extra and network the first time.

  Splits of an IDX folder: with the training file (``train-images-idx3-ubyte[.gz]``, 60,000
  images) the first 55,000 train, the last 5,000 validate and ``t10k-images-idx3-ubyte[.gz]``
  tests. With only the 10,000-image test file (as in the repository's ``../shared/data/mnist``)
  its first 8,000 images are for training, of which images 7,000-7,999 are the validation
  split (so ``"train"`` holds 7,000), and the last 2,000 are the test split. Their class labels,
  row for row: :func:`load_labels` (the ``*-labels-idx1-ubyte[.gz]`` file beside each images
  file, or tensorflow-datasets' ``label``).

Example:
    >>> from tfp_coupling import data
    >>> x, info = data.load("two_moons", "train", with_info=True)
    >>> x.shape, x.dtype, info.event_shape, info.log_det_correction
    ((8000, 2), dtype('float32'), (2,), 0.0)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tfp_coupling.data import images, tables, toy
from tfp_coupling.data.images import DATA_DIR_ENV, IMAGE_DATASETS, NUM_CLASSES, read_idx
from tfp_coupling.data.info import SPLITS, DatasetInfo
from tfp_coupling.data.toy import (
    TOY_2D,
    TOY_SIZES,
    checkerboard,
    circles,
    eight_gaussians,
    pinwheel,
    rings,
    true_log_prob,
    two_moons,
    two_spirals,
)

__all__ = [
    "DATASETS",
    "DATA_DIR_ENV",
    "IMAGE_DATASETS",
    "NUM_CLASSES",
    "SPLITS",
    "TOY_2D",
    "TOY_SIZES",
    "DatasetInfo",
    "checkerboard",
    "circles",
    "eight_gaussians",
    "load",
    "load_labels",
    "pinwheel",
    "read_idx",
    "resolve_columns",
    "rings",
    "true_log_prob",
    "two_moons",
    "two_spirals",
]

DATASETS = (*TOY_2D, *IMAGE_DATASETS)


def load(
    name: str,
    split: str = "train",
    *,
    seed: int = 0,
    data_dir: str | Path | None = None,
    normalize: bool = True,
    n: int | None = None,
    standardization: DatasetInfo | None = None,
    with_info: bool = False,
) -> np.ndarray | tuple[np.ndarray, DatasetInfo]:
    """Loads one split of a dataset as a ``float32`` array in model units.

    Args:
        name: a 2-D toy density (``two_moons``, ``circles``, ``eight_gaussians``,
            ``checkerboard``, ``pinwheel``, ``two_spirals``, ``rings``), an image dataset
            (``mnist``, ``fashion_mnist``, ``cifar10``) or the path of a ``.npy``/``.csv`` table.
        split: ``"train"``, ``"validation"``, ``"test"``, or ``"all"`` (the three concatenated).
        seed: draws the toy data and shuffles a table's rows before splitting.
        data_dir: a folder of IDX files (or holding a ``<name>/`` folder of them) to read
            images offline. Default: the ``TFP_COUPLING_DATA_DIR`` environment variable, else
            tensorflow-datasets.
        normalize: tables: standardise with the training split's statistics; images: divide by
            256. ``False`` keeps the data's own units.
        n: keep only the first ``n`` examples of the split.
        standardization: reuse another load's ``DatasetInfo`` shift/scale (e.g. the statistics a
            model was trained with) instead of computing them.
        with_info: also return the :class:`DatasetInfo`.

    Returns:
        ``x`` of shape ``[N, *event_shape]``, or ``(x, info)`` with ``with_info=True``.

    Raises:
        ValueError: unknown name or split, a table of the wrong shape or with NaN/inf, an IDX
            file of the wrong shape, or no way to get an image dataset.
        FileNotFoundError: a table file or an IDX folder that does not exist.

    Example:
        >>> from tfp_coupling import data
        >>> data.load("rings", "test", n=100).shape
        (100, 2)
    """
    if split not in (*SPLITS, "all"):
        raise ValueError(f"unknown split {split!r}; choose from {', '.join(SPLITS)} or all")
    if n is not None:
        n = toy.check_n(n)
    key = str(name)
    if key in TOY_2D:
        splits, info = toy.load_splits(key, seed)
    elif key.lower().endswith((".npy", ".csv")):
        # Tables go to model units straight from float64 (below), never via float32 data units.
        raw, info = tables.load_splits(Path(key).expanduser(), seed,
                                normalize and standardization is None)
        if standardization is not None:
            _check_standardization(key, info, standardization)
            info = _with_standardization(info, standardization)
            standardization = None
        splits = {k: info.to_model_units(v) for k, v in raw.items()}
        tables.check_float32_range(key, raw, splits)
    elif key in IMAGE_DATASETS:
        splits, info = images.load_splits(key, data_dir, normalize)
    else:
        raise ValueError(
            f"unknown dataset {key!r}: choose from {', '.join(DATASETS)}, "
            f"or give the path of a .npy or .csv file")
    if standardization is not None:
        _check_standardization(key, info, standardization)
        raw = {k: info.to_data_units(v) for k, v in splits.items()}
        info = _with_standardization(info, standardization)
        splits = {k: info.to_model_units(v) for k, v in raw.items()}
    x = (np.concatenate([splits[s] for s in SPLITS]) if split == "all" else splits[split])
    if n is not None:
        x = x[:n]
    return (x, info) if with_info else x


def load_labels(name: str, split: str = "train", *, data_dir: str | Path | None = None,
                n: int | None = None) -> np.ndarray:
    """The class labels (int64) of an image dataset's split, one per row of
    ``load(name, split)``: from the ``*-labels-idx1-ubyte[.gz]`` file beside each IDX images
    file, or tensorflow-datasets' ``label``. Their number of classes is ``NUM_CLASSES[name]``.

    Raises:
        ValueError: not an image dataset, or labels outside ``0..NUM_CLASSES[name] - 1``.
        FileNotFoundError: an IDX folder without the labels file.
    """
    if split not in (*SPLITS, "all"):
        raise ValueError(f"unknown split {split!r}; choose from {', '.join(SPLITS)} or all")
    if name not in IMAGE_DATASETS:
        raise ValueError(f"{name!r} has no class labels; labelled datasets: "
                         f"{', '.join(IMAGE_DATASETS)}")
    splits = images.load_label_splits(name, data_dir)
    y = np.concatenate([splits[s] for s in SPLITS]) if split == "all" else splits[split]
    return y if n is None else y[:toy.check_n(n)]


def resolve_columns(path: str | Path, spec: str) -> list[int]:
    """0-based indices of a table's columns listed in ``spec`` (header names or 1-based numbers,
    comma-separated; see :func:`tfp_coupling.data.tables.resolve_columns`)."""
    path = Path(path).expanduser()
    return tables.resolve_columns(path, spec, tables.read_table(path).shape[1])


def _check_standardization(key: str, info: DatasetInfo, standardization: DatasetInfo) -> None:
    if tuple(standardization.event_shape) != tuple(info.event_shape):
        raise ValueError(f"{key}: examples have shape {list(info.event_shape)}, but the "
                         f"standardisation is for shape {list(standardization.event_shape)}")


def _with_standardization(info: DatasetInfo, standardization: DatasetInfo) -> DatasetInfo:
    return DatasetInfo(info.name, info.kind, info.event_shape, info.sizes,
                       standardization.shift, standardization.scale, info.discrete,
                       info.source, info.integer_columns)
