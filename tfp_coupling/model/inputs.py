"""Checks of what users hand a ``FlowModel``: shapes, counts and data, with clear errors.

Each check raises ``TypeError`` or ``ValueError`` naming the model (``owner``) and the bad
value, before any TensorFlow op runs on it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

__all__ = ["cast_without_overflow", "check_data", "initialization_rows", "strict_shape",
           "whole_number"]


def whole_number(value, what: str, minimum: int = 0) -> int:
    """``value`` as an int if it is a whole number ``>= minimum`` (2.5 is an error, not 2)."""
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise TypeError(f"{what} must be a whole number, got {value!r}")
    if not (math.isfinite(value) and value == int(value)) or int(value) < minimum:
        raise ValueError(f"{what} must be a whole number >= {minimum}, got {value!r}")
    return int(value)


def strict_shape(shape: Sequence[int], what: str) -> tuple[int, ...]:
    """A shape of positive whole numbers (``[2.5]`` is an error, not ``[2]``)."""
    return tuple(whole_number(d, f"{what} entries", minimum=1) for d in shape)


def cast_without_overflow(x: np.ndarray, dtype: tf.DType, owner: str) -> np.ndarray:
    """``x`` in ``dtype``; finite values too large for it are an error, not Inf."""
    dtype = np.dtype(dtype.as_numpy_dtype)
    with np.errstate(over="ignore"):
        cast = x.astype(dtype)
    if x.dtype.kind == "f" and x.size and not np.all(np.isfinite(cast)):
        overflow = np.isfinite(x) & ~np.isfinite(cast)
        if np.any(overflow):
            where = np.argwhere(overflow)[0]
            raise ValueError(
                f"{owner}: data value {x[tuple(where)]:.6g} at index {where.tolist()} is "
                f"beyond the range of {dtype.name} (max {np.finfo(dtype).max:.3g}): it would "
                f"overflow to Inf; rescale the data")
    return cast


def check_data(data, event_shape: Sequence[int], owner: str, what: str) -> None:
    """Raises a clear error up front for data of the wrong event shape or with NaN/Inf.

    Arrays and tensors are checked fully; for a ``tf.data.Dataset`` the ``element_spec``
    shape is checked here and NaN/Inf at the batch where it occurs (see ``fit``).
    """
    event = list(event_shape)
    want = f"[batch, {', '.join(map(str, event))}]"
    if isinstance(data, tf.data.Dataset):
        spec = data.element_spec
        if isinstance(spec, tuple | list) and spec:
            spec = spec[0]
        if not isinstance(spec, tf.TensorSpec) or spec.shape.rank is None:
            return
        shape = spec.shape.as_list()
        if shape == event:
            raise ValueError(f"{owner}: {what} yields single examples of shape {shape}, "
                             f"not batches: call dataset.batch(batch_size) first")
        if len(shape) != len(event) + 1 or any(
                g is not None and g != e for g, e in zip(shape[1:], event, strict=True)):
            raise ValueError(f"{owner}: {what} yields batches of shape {shape}; expected "
                             f"{want} (event shape {event})")
        if not (spec.dtype.is_floating or spec.dtype.is_integer):
            raise TypeError(f"{owner}: {what} yields {spec.dtype.name} data; expected "
                            f"numbers")
        return
    if isinstance(data, tf.Tensor | tf.Variable):
        if not tf.executing_eagerly():
            return
        data = data.numpy()
    if not isinstance(data, np.ndarray | list):
        return  # generators, PyDatasets: checked batch by batch
    data = np.asarray(data)
    if data.dtype.kind not in "fiub":
        raise TypeError(f"{owner}: {what} has dtype {data.dtype}; expected numbers")
    if list(data.shape[1:]) != event or data.ndim != len(event) + 1:
        raise ValueError(f"{owner}: {what} has shape {list(data.shape)}; expected {want} "
                         f"(event shape {event})")
    if data.dtype.kind == "f":
        bad = ~np.isfinite(data)
        if bad.any():
            rows = np.flatnonzero(bad.reshape(len(data), -1).any(axis=1))
            raise ValueError(f"{owner}: {what} contains NaN or Inf values in "
                             f"{len(rows)} example(s), first at index {int(rows[0])}; remove "
                             f"or replace them")


def initialization_rows(x, event_shape: Sequence[int], owner: str, part: int = 0) -> np.ndarray:
    """The first training rows (batches of a dataset, in order), for data-dependent init.

    ``part``: which element of a dataset's ``(x, context)`` batches (1: the contexts).
    """
    n = 4096 if len(event_shape) == 1 else 512
    if x is None:
        raise ValueError(f"{owner}: fit needs training data x to initialise its "
                         f"data-dependent layers")
    if not isinstance(x, tf.data.Dataset):
        try:
            return np.asarray(x[:n])
        except (TypeError, KeyError):  # a generator or PyDataset: rows cannot be peeked at
            raise ValueError(
                f"{owner}: fit got {type(x).__name__} data, whose first rows cannot be "
                f"read ahead to initialise the data-dependent layers (whitening, ActNorm); "
                f"call tfp_coupling.initialize_from_data(model, rows) with a few thousand "
                f"training rows first") from None
    rows, count = [], 0
    for element in x:
        batch = np.asarray(element[part] if isinstance(element, tuple | list) else element)
        rows.append(batch)
        count += len(batch)
        if count >= n:
            break
    return np.concatenate(rows)[:n]
