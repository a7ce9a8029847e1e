"""``DatasetInfo``: what a loaded dataset is, and the map between model and data units."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from tfp_coupling import dequantization

__all__ = ["SPLITS", "DatasetInfo"]

SPLITS = ("train", "validation", "test")
# float32 keeps ~7 digits: a column whose mean exceeds 1000 standard deviations would keep a
# resolution coarser than 1e-4 standard deviations in data units.
_FLOAT32_OFFSET_LIMIT = 1e3


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
        return dequantization.bits_per_dim(float(nll_data), self.event_size)

    def dequantize(self, x_model, rng: np.random.Generator) -> np.ndarray:
        """``x + u * bin_width``, ``u ~ U[0, 1)``: uniform dequantisation in model units."""
        if not self.discrete:
            return np.asarray(x_model, np.float32)
        return dequantization.dequantize(x_model, rng, self.bin_width)

    def select(self, columns: Sequence[int]) -> DatasetInfo:
        """The info of some columns (0-based) of a vector dataset, e.g. a table's context.

        Example:
            >>> import numpy as np
            >>> info = DatasetInfo("t", "tabular", (3,), {}, np.zeros(3), np.array([1., 2., 4.]),
            ...                    integer_columns=(2,))
            >>> part = info.select([2, 0])
            >>> part.event_shape, part.scale.tolist(), part.integer_columns
            ((2,), [4.0, 1.0], (0,))
        """
        if len(self.event_shape) != 1:
            raise ValueError(f"{self.name}: columns exist for vector data only, not for "
                             f"examples of shape {list(self.event_shape)}")
        columns = [int(c) for c in columns]
        d = self.event_shape[0]
        shift, scale = (np.broadcast_to(np.asarray(a, np.float64), (d,))[columns]
                        for a in (self.shift, self.scale))
        integer = tuple(i for i, c in enumerate(columns) if c in self.integer_columns)
        return DatasetInfo(self.name, self.kind, (len(columns),), dict(self.sizes), shift,
                           scale, self.discrete, self.source, integer)

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
