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
  split (so ``"train"`` holds 7,000), and the last 2,000 are the test split.

Example:
    >>> from tfp_coupling import data
    >>> x, info = data.load("two_moons", "train", with_info=True)
    >>> x.shape, x.dtype, info.event_shape, info.log_det_correction
    ((8000, 2), dtype('float32'), (2,), 0.0)
"""

from __future__ import annotations

import gzip
import math
import os
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = [
    "DATASETS",
    "IMAGE_DATASETS",
    "SPLITS",
    "TOY_2D",
    "DatasetInfo",
    "checkerboard",
    "circles",
    "eight_gaussians",
    "load",
    "pinwheel",
    "read_idx",
    "rings",
    "true_log_prob",
    "two_moons",
    "two_spirals",
]

SPLITS = ("train", "validation", "test")
# float32 keeps ~7 digits: a column whose mean exceeds 1000 standard deviations would keep a
# resolution coarser than 1e-4 standard deviations in data units.
_FLOAT32_OFFSET_LIMIT = 1e3
# A column whose spread is below this fraction of its magnitude varies by rounding error only.
_CONSTANT_RELATIVE_STD = 1e-10
TOY_SIZES = {"train": 8000, "validation": 2000, "test": 2000}
IMAGE_DATASETS = ("mnist", "fashion_mnist", "cifar10")
IDX_DATASETS = ("mnist", "fashion_mnist")
DATA_DIR_ENV = "TFP_COUPLING_DATA_DIR"
_DOWNLOAD_HINTS = {
    "mnist": "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "fashion_mnist": "https://github.com/zalandoresearch/fashion-mnist#get-the-data",
}


# --------------------------------------------------------------------------------------------
# File readers


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


# --------------------------------------------------------------------------------------------
# 2-D toy densities. Each takes (n, seed) and returns float32 [n, 2] in random order.


def _check_n(n: int) -> int:
    if int(n) != n or int(n) < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    return int(n)


def two_moons(n: int, noise: float = 0.05, seed: int | None = 0) -> np.ndarray:
    """``n`` points of the two interleaving half circles, ``float32`` of shape ``[n, 2]``.

    The same construction as scikit-learn's ``make_moons`` (upper moon centred at the origin,
    lower moon shifted by ``(1, 0.5)``), plus Gaussian noise of scale ``noise``.

    Example:
        >>> from tfp_coupling.data import two_moons
        >>> two_moons(4, seed=0).shape
        (4, 2)
    """
    if int(n) < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    rng = np.random.default_rng(seed)
    n_upper = n // 2
    n_lower = n - n_upper
    t_upper = np.linspace(0.0, np.pi, n_upper)
    t_lower = np.linspace(0.0, np.pi, n_lower)
    upper = np.stack([np.cos(t_upper), np.sin(t_upper)], axis=1)
    lower = np.stack([1.0 - np.cos(t_lower), 0.5 - np.sin(t_lower)], axis=1)
    x = np.concatenate([upper, lower], axis=0)
    x = x[rng.permutation(n)] + rng.normal(scale=noise, size=(n, 2))
    return x.astype(np.float32)


def circles(n: int, seed: int | None = 0) -> np.ndarray:
    """Two concentric noisy circles of radius 2 and 1 (half the points each), noise 0.1.

    Example:
        >>> from tfp_coupling.data import circles
        >>> circles(6, seed=0).shape
        (6, 2)
    """
    n = _check_n(n)
    rng = np.random.default_rng(seed)
    radius = np.where(rng.random(n) < 0.5, 2.0, 1.0)
    angle = rng.uniform(0.0, 2 * np.pi, n)
    x = radius[:, None] * np.stack([np.cos(angle), np.sin(angle)], axis=1)
    return (x + rng.normal(scale=0.1, size=(n, 2))).astype(np.float32)


def eight_gaussians(n: int, seed: int | None = 0) -> np.ndarray:
    """A mixture of 8 equal Gaussians (std 0.35) centred on a circle of radius 2√2.

    Example:
        >>> from tfp_coupling.data import eight_gaussians
        >>> eight_gaussians(3, seed=0).shape
        (3, 2)
    """
    n = _check_n(n)
    rng = np.random.default_rng(seed)
    angle = rng.integers(0, 8, n) * (np.pi / 4)
    centres = 2 * np.sqrt(2) * np.stack([np.cos(angle), np.sin(angle)], axis=1)
    return (centres + rng.normal(scale=0.5 / np.sqrt(2), size=(n, 2))).astype(np.float32)


def checkerboard(n: int, seed: int | None = 0) -> np.ndarray:
    """Uniform on the 8 black squares (side 2) of a 4x4 checkerboard covering ``[-4, 4]^2``.

    Example:
        >>> from tfp_coupling.data import checkerboard
        >>> checkerboard(3, seed=0).shape
        (3, 2)
    """
    n = _check_n(n)
    rng = np.random.default_rng(seed)
    x1 = rng.uniform(-2.0, 2.0, n)
    x2 = rng.random(n) - 2.0 * rng.integers(0, 2, n) + np.floor(x1) % 2
    return (2.0 * np.stack([x1, x2], axis=1)).astype(np.float32)


def pinwheel(n: int, seed: int | None = 0) -> np.ndarray:
    """Five curved arms of a pinwheel (the construction of the FFJORD toy data).

    Example:
        >>> from tfp_coupling.data import pinwheel
        >>> pinwheel(5, seed=0).shape
        (5, 2)
    """
    n = _check_n(n)
    rng = np.random.default_rng(seed)
    num_arms, radial_std, tangential_std, rate = 5, 0.3, 0.1, 0.25
    arm = rng.integers(0, num_arms, n)
    features = rng.normal(size=(n, 2)) * np.array([radial_std, tangential_std])
    features[:, 0] += 1.0
    angle = arm * (2 * np.pi / num_arms) + rate * np.exp(features[:, 0])
    c, s = np.cos(angle), np.sin(angle)
    rotations = np.stack([np.stack([c, -s], axis=1), np.stack([s, c], axis=1)], axis=1)
    return (2.0 * np.einsum("ti,tij->tj", features, rotations)).astype(np.float32)


def two_spirals(n: int, seed: int | None = 0) -> np.ndarray:
    """Two interleaved spirals (one and a half turns each), noise 0.1.

    Example:
        >>> from tfp_coupling.data import two_spirals
        >>> two_spirals(4, seed=0).shape
        (4, 2)
    """
    n = _check_n(n)
    rng = np.random.default_rng(seed)
    t = np.sqrt(rng.random(n)) * 3 * np.pi
    sign = np.where(rng.random(n) < 0.5, 1.0, -1.0)
    x = np.stack([-np.cos(t) * t, np.sin(t) * t], axis=1) + rng.random((n, 2)) * 0.5
    x = sign[:, None] * x / 3.0
    return (x + rng.normal(scale=0.1, size=(n, 2))).astype(np.float32)


def rings(n: int, seed: int | None = 0) -> np.ndarray:
    """Four concentric rings of radius 0.75, 1.5, 2.25 and 3 (equal shares), noise 0.08.

    Example:
        >>> from tfp_coupling.data import rings
        >>> rings(4, seed=0).shape
        (4, 2)
    """
    n = _check_n(n)
    rng = np.random.default_rng(seed)
    radius = 0.75 * rng.integers(1, 5, n)
    angle = rng.uniform(0.0, 2 * np.pi, n)
    x = radius[:, None] * np.stack([np.cos(angle), np.sin(angle)], axis=1)
    return (x + rng.normal(scale=0.08, size=(n, 2))).astype(np.float32)


def _curve_log_density(x: np.ndarray, nodes: np.ndarray, weights: np.ndarray,
                       noise: float) -> np.ndarray:
    """``log sum_k w_k N(x; node_k, noise^2 I)`` for ``x`` of shape ``[N, 2]``, in chunks.

    A toy density whose points are a curve plus Gaussian noise is this mixture in the limit of
    many nodes; with node spacing far below ``noise`` the quadrature error is negligible.
    """
    x = np.asarray(x, np.float64).reshape(-1, 2)
    log_w = np.log(weights)[None, :] - np.log(2 * np.pi * noise**2)
    out = np.empty(len(x))
    for i in range(0, len(x), 512):
        d2 = ((x[i:i + 512, None, :] - nodes[None, :, :]) ** 2).sum(-1)
        a = log_w - d2 / (2 * noise**2)
        top = a.max(axis=1, keepdims=True)
        out[i:i + 512] = (top + np.log(np.exp(a - top).sum(axis=1, keepdims=True)))[:, 0]
    return out


def _nodes_per_curve(length: float, noise: float) -> int:
    """Quadrature nodes for a curve of ``length``: spaced ``noise / 4`` apart, at which the
    sum of Gaussians equals their integral along the curve to far below float precision."""
    return int(np.ceil(4 * length / noise))


def _circle_nodes(radii: list[float], shares: list[float], noise: float):
    nodes, weights = [], []
    for r, share in zip(radii, shares, strict=True):
        m = _nodes_per_curve(2 * np.pi * r, noise)
        angle = (np.arange(m) + 0.5) * (2 * np.pi / m)
        nodes.append(r * np.stack([np.cos(angle), np.sin(angle)], axis=1))
        weights.append(np.full(m, share / m))
    return np.concatenate(nodes), np.concatenate(weights)


def true_log_prob(name: str, x: np.ndarray) -> np.ndarray:
    """The exact log-density (nats, data units) of a toy density's generating process at ``x``.

    It is the best test NLL any model can reach on that data: ``-mean(true_log_prob(name, x))``.
    Known for ``two_moons`` (noise 0.05), ``circles``, ``rings``, ``eight_gaussians`` (mixtures
    of Gaussian noise around curves or points, evaluated by quadrature along the curves) and
    ``checkerboard`` (uniform on 8 squares of area 4: ``log(1/32)`` inside, ``-inf`` outside).

    Example:
        >>> import numpy as np
        >>> from tfp_coupling import data
        >>> x = data.two_moons(2000, seed=1)
        >>> round(float(-data.true_log_prob("two_moons", x).mean()), 1)
        0.3
    """
    x = np.asarray(x, np.float64)
    if x.ndim != 2 or x.shape[1] != 2:
        raise ValueError(f"x must have shape [N, 2], got {list(x.shape)}")
    if name == "two_moons":
        m = _nodes_per_curve(np.pi, 0.05)
        t = (np.arange(m) + 0.5) * (np.pi / m)
        upper = np.stack([np.cos(t), np.sin(t)], axis=1)
        lower = np.stack([1.0 - np.cos(t), 0.5 - np.sin(t)], axis=1)
        return _curve_log_density(x, np.concatenate([upper, lower]),
                                  np.full(2 * m, 0.5 / m), 0.05)
    if name == "circles":
        return _curve_log_density(x, *_circle_nodes([2.0, 1.0], [0.5, 0.5], 0.1), 0.1)
    if name == "rings":
        rings = _circle_nodes([0.75, 1.5, 2.25, 3.0], [0.25] * 4, 0.08)
        return _curve_log_density(x, *rings, 0.08)
    if name == "eight_gaussians":
        angle = np.arange(8) * (np.pi / 4)
        centres = 2 * np.sqrt(2) * np.stack([np.cos(angle), np.sin(angle)], axis=1)
        return _curve_log_density(x, centres, np.full(8, 1 / 8), 0.5 / np.sqrt(2))
    if name == "checkerboard":
        square = np.floor(x / 2).sum(axis=1)  # black squares: even sum of square indices
        inside = (np.abs(x) <= 4).all(axis=1) & (square % 2 == 0)
        return np.where(inside, -np.log(32.0), -np.inf)
    raise ValueError(f"no closed-form density for {name!r}; known: two_moons, circles, rings, "
                     f"eight_gaussians, checkerboard")


TOY_2D: dict[str, Callable[..., np.ndarray]] = {
    "two_moons": two_moons,
    "circles": circles,
    "eight_gaussians": eight_gaussians,
    "checkerboard": checkerboard,
    "pinwheel": pinwheel,
    "two_spirals": two_spirals,
    "rings": rings,
}
DATASETS = (*TOY_2D, *IMAGE_DATASETS)


# --------------------------------------------------------------------------------------------
# DatasetInfo


@dataclass(frozen=True)
class DatasetInfo:
    """What :func:`load` knows about a dataset, and the map between model and data units.

    Maths::

        x_model = (x_data - shift) / scale
        log p_data(x_data) = log p_model(x_model) + log_det_correction,
        log_det_correction = -sum(log scale)   (summed over the event)

    Attributes:
        name: the dataset name (a file's resolved path for tables).
        kind: ``"toy2d"``, ``"tabular"`` or ``"image"``.
        event_shape: shape of one example, e.g. ``(2,)`` or ``(28, 28, 1)``.
        sizes: number of examples in each split.
        shift, scale: the affine map above, broadcastable to ``event_shape``.
        discrete: the data are integers (pixel values): dequantise for training and report
            bits per dimension.
        source: where the data came from (for messages and ``metrics.json``).
        integer_columns: for tables, the (0-based) columns holding only whole numbers: a
            continuous density of them is not a probability of the data (see the CLI's note).

    Example:
        >>> import numpy as np
        >>> from tfp_coupling.data import DatasetInfo
        >>> info = DatasetInfo("t", "tabular", (2,), {}, np.zeros(2), np.array([2.0, 4.0]))
        >>> bool(np.isclose(info.log_det_correction, -np.log(8.0)))  # -log 2 - log 4
        True
    """

    name: str
    kind: str
    event_shape: tuple[int, ...]
    sizes: dict[str, int]
    shift: np.ndarray = field(repr=False)
    scale: np.ndarray = field(repr=False)
    discrete: bool = False
    source: str = ""
    integer_columns: tuple[int, ...] = ()

    @property
    def event_size(self) -> int:
        """Number of dimensions ``D`` of one example."""
        return math.prod(self.event_shape)

    @property
    def log_det_correction(self) -> float:
        """``-sum(log scale)`` over the event: add it to a model-unit log-likelihood."""
        scale = np.broadcast_to(np.asarray(self.scale, np.float64), self.event_shape)
        return 0.0 - float(np.sum(np.log(scale)))  # 0.0 - x: never -0.0

    @property
    def bin_width(self) -> float | None:
        """Width of one quantisation bin in model units (``1 / scale``), or None if continuous."""
        if not self.discrete:
            return None
        return float(1.0 / np.asarray(self.scale, np.float64).max())

    def to_model_units(self, x_data) -> np.ndarray:
        """``(x_data - shift) / scale`` as float32 (beyond float32's range: Inf, see load)."""
        with np.errstate(over="ignore"):
            return ((np.asarray(x_data, np.float64) - self.shift) / self.scale).astype(np.float32)

    @property
    def data_dtype(self) -> np.dtype:
        """float32, or float64 where float32 would round the data's values coarsely.

        A column far from zero compared with its spread (timestamps ``1.7e9 +- 100``) keeps only
        a few distinct float32 values (their spacing there is 128), and values beyond float32's
        range (``3.4e38``) overflow; such data stay float64 in data units.
        """
        shift = np.abs(np.asarray(self.shift, np.float64))
        scale = np.abs(np.asarray(self.scale, np.float64))
        coarse = np.any(shift > _FLOAT32_OFFSET_LIMIT * scale)
        huge = np.any(shift + 100 * scale > np.finfo(np.float32).max)
        return np.dtype(np.float64 if coarse or huge else np.float32)

    def to_data_units(self, x_model) -> np.ndarray:
        """``x_model * scale + shift`` (e.g. samples back to the data's units).

        float32, or float64 for data that float32 cannot hold finely (:attr:`data_dtype`).
        """
        return (np.asarray(x_model, np.float64) * self.scale + self.shift).astype(self.data_dtype)

    def log_prob_to_data_units(self, log_prob_model):
        """``log p_model + log_det_correction`` (works on numbers, arrays and tensors)."""
        return log_prob_model + self.log_det_correction

    def bits_per_dim(self, nll_data: float) -> float | None:
        """``nll_data / (D ln 2)`` for discrete data (NLL in nats, data units), else None."""
        if not self.discrete:
            return None
        return float(nll_data) / (self.event_size * math.log(2.0))

    def dequantize(self, x_model, rng: np.random.Generator) -> np.ndarray:
        """``x + u * bin_width``, ``u ~ U[0, 1)``: uniform dequantisation in model units."""
        if not self.discrete:
            return np.asarray(x_model, np.float32)
        noise = rng.random(np.shape(x_model), dtype=np.float32) * np.float32(self.bin_width)
        return np.asarray(x_model, np.float32) + noise

    def to_json(self) -> dict:
        """A JSON-friendly description (shift and scale as nested lists)."""
        return {"name": self.name, "kind": self.kind, "event_shape": list(self.event_shape),
                "sizes": dict(self.sizes), "shift": np.asarray(self.shift).tolist(),
                "scale": np.asarray(self.scale).tolist(), "discrete": self.discrete,
                "source": self.source, "log_det_correction": self.log_det_correction,
                "integer_columns": list(self.integer_columns)}

    @classmethod
    def from_json(cls, d: dict) -> DatasetInfo:
        """Inverse of :meth:`to_json`."""
        return cls(d["name"], d["kind"], tuple(d["event_shape"]), dict(d["sizes"]),
                   np.asarray(d["shift"], np.float64), np.asarray(d["scale"], np.float64),
                   bool(d["discrete"]), d.get("source", ""),
                   tuple(d.get("integer_columns", ())))


# --------------------------------------------------------------------------------------------
# load


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
        n = _check_n(n)
    key = str(name)
    if key in TOY_2D:
        splits, info = _load_toy(key, seed)
    elif key.lower().endswith((".npy", ".csv")):
        # Tables go to model units straight from float64 (below), never via float32 data units.
        raw, info = _load_table(Path(key).expanduser(), seed,
                                normalize and standardization is None)
        if standardization is not None:
            _check_standardization(key, info, standardization)
            info = _with_standardization(info, standardization)
            standardization = None
        splits = {k: info.to_model_units(v) for k, v in raw.items()}
        _check_float32_range(key, raw, splits)
    elif key in IMAGE_DATASETS:
        splits, info = _load_images(key, data_dir, normalize)
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


def _check_float32_range(key: str, raw: dict[str, np.ndarray],
                         splits: dict[str, np.ndarray]) -> None:
    """Finite data that overflow float32 (beyond 3.4e38) in model units are an error, by name.

    (Without this they would reach the model as Inf and be reported as "NaN or Inf" data.)
    """
    for name, x in splits.items():
        if not np.all(np.isfinite(x)):
            row, col = np.argwhere(~np.isfinite(x))[0]
            raise ValueError(
                f"{key}: value {raw[name][row, col]:.6g} ({name} split, column {col + 1}) is "
                f"beyond float32's range (3.4e38) in the model's units (float32 overflow); "
                f"rescale that column")


def _check_standardization(key: str, info: DatasetInfo, standardization: DatasetInfo) -> None:
    if tuple(standardization.event_shape) != tuple(info.event_shape):
        raise ValueError(f"{key}: examples have shape {list(info.event_shape)}, but the "
                         f"standardisation is for shape {list(standardization.event_shape)}")


def _with_standardization(info: DatasetInfo, standardization: DatasetInfo) -> DatasetInfo:
    return DatasetInfo(info.name, info.kind, info.event_shape, info.sizes,
                       standardization.shift, standardization.scale, info.discrete,
                       info.source, info.integer_columns)


def _load_toy(name: str, seed: int) -> tuple[dict[str, np.ndarray], DatasetInfo]:
    total = sum(TOY_SIZES.values())
    pool = TOY_2D[name](total, seed=seed)
    splits, start = {}, 0
    for s in SPLITS:
        splits[s] = pool[start:start + TOY_SIZES[s]]
        start += TOY_SIZES[s]
    info = DatasetInfo(name, "toy2d", (2,), dict(TOY_SIZES), np.zeros(2), np.ones(2),
                       source=f"generated locally (seed {seed})")
    return splits, info


def _read_table(path: Path) -> np.ndarray:
    if path.is_dir():
        raise ValueError(f"{path} is a folder; give the path of a .npy or .csv file")
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path}")
    if path.suffix.lower() == ".npy":
        try:
            x = np.load(path, allow_pickle=False)
        except ValueError as e:
            raise ValueError(f"{path}: not a numeric .npy array ({e})") from None
        if x.dtype.kind not in "fiub":
            raise ValueError(f"{path}: expected a numeric array, got dtype {x.dtype}")
        x = x.astype(np.float64)
    else:
        lines = path.read_text().splitlines()
        rows = [(i + 1, line) for i, line in enumerate(lines) if line.strip()]
        if rows and _is_header(rows[0][1]):
            rows = rows[1:]
        if not rows:
            raise ValueError(f"{path}: no data rows")
        width = len(rows[0][1].split(","))
        x = np.empty((len(rows), width))
        for r, (lineno, line) in enumerate(rows):
            fields = line.split(",")
            if len(fields) != width:
                raise ValueError(f"{path}: line {lineno} has {len(fields)} columns, "
                                 f"expected {width}")
            for c, f in enumerate(fields):
                try:
                    x[r, c] = float(f)
                except ValueError:
                    raise ValueError(f"{path}: line {lineno}, column {c + 1}: {f.strip()!r} is "
                                     f"not a number") from None
    if x.ndim != 2:
        raise ValueError(f"{path}: expected a 2-D array [examples, features], got shape "
                         f"{list(x.shape)}")
    bad = np.argwhere(~np.isfinite(x))
    if len(bad):
        r, c = bad[0]
        where = "row" if path.suffix.lower() == ".npy" else "data row"
        raise ValueError(f"{path}: {len(bad)} NaN/inf value(s), first at {where} {r + 1}, "
                         f"column {c + 1}")
    return x


def _is_header(line: str) -> bool:
    for f in line.split(","):
        try:
            float(f)
        except ValueError:
            return f.strip().lower() not in ("nan", "inf", "-inf", "")
    return False


def _load_table(
    path: Path, seed: int, normalize: bool
) -> tuple[dict[str, np.ndarray], DatasetInfo]:
    """The splits in data units (float64) and the info that standardises them."""
    x = _read_table(path)
    n = len(x)
    if n < 10:
        raise ValueError(f"{path}: {n} rows; need at least 10 to split into train, "
                         f"validation and test")
    order = np.random.default_rng(seed).permutation(n)
    n_val = n_test = max(1, n // 10)
    idx = {"train": order[:n - n_val - n_test], "validation": order[n - n_val - n_test:n - n_test],
           "test": order[n - n_test:]}
    d = x.shape[1]
    if normalize:
        train = x[idx["train"]]
        shift, scale = train.mean(axis=0), train.std(axis=0)
        # A spread of rounding error only (std 1e-17 around 0.3) is constant too: dividing by it
        # would blow the column up to a huge spike and the NLL to 1e13.
        magnitude = np.abs(train).max(axis=0)
        constant = np.flatnonzero((scale == 0) | (scale <= _CONSTANT_RELATIVE_STD * magnitude))
        if len(constant):
            raise ValueError(f"{path}: column(s) {', '.join(str(c + 1) for c in constant)} "
                             f"are constant in the training split (up to rounding error); drop "
                             f"them (a density needs every column to vary)")
    else:
        shift, scale = np.zeros(d), np.ones(d)
    integer = tuple(int(c) for c in np.flatnonzero(np.all(x == np.round(x), axis=0)))
    info = DatasetInfo(str(path.resolve()), "tabular", (d,),
                       {k: len(v) for k, v in idx.items()}, shift, scale,
                       source=f"file {path}", integer_columns=integer)
    return {k: x[v] for k, v in idx.items()}, info


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


def _load_images(
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
