"""Integer-valued data under a continuous density: dequantisation and bits per dimension.

Maths, for integer values ``k`` (8-bit pixels) of ``D`` dimensions, bins of width ``w`` in the
model's units (1 for raw pixel values, 1/256 for pixels divided by 256)::

    x = (k + u) w,  u ~ U[0, 1)^D
    E_u[-log p(x)] >= -log P(k) - D log w      (uniform dequantisation: a bound, Theis et al.)
    bits per dimension = nll / (D ln 2)        (nll in nats, in the units of k)

The model's training step, the data sets' :class:`~tfp_coupling.data.DatasetInfo`, the image
metrics and the command line all use these functions; NumPy only, so the command line can call
them before it imports TensorFlow.

Example:
    >>> import numpy as np
    >>> from tfp_coupling import dequantization
    >>> x = dequantization.dequantize(np.zeros((2, 3)), np.random.default_rng(0))
    >>> bool(((0 <= x) & (x < 1)).all()), float(dequantization.bits_per_dim(784 * np.log(256), 784))
    (True, 8.0)
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

__all__ = ["LN2", "bits_per_dim", "dequantize", "flow_bits_per_dim", "mean_nll"]

LN2 = math.log(2.0)


def bits_per_dim(nll, event_size: int):
    """``nll / (D ln 2)``: nats per example to bits per dimension (numbers, arrays, tensors)."""
    return nll / (event_size * LN2)


def dequantize(x, rng: np.random.Generator, bin_width: float = 1.0) -> np.ndarray:
    """``x + u * bin_width`` with ``u ~ U[0, 1)`` drawn from ``rng``, as float32."""
    noise = rng.random(np.shape(x), dtype=np.float32) * np.float32(bin_width)
    return np.asarray(x, np.float32) + noise


def mean_nll(log_prob: Callable, x, *, rng: np.random.Generator | None = None,
             bin_width: float = 1.0, batch_size: int = 1000, context=None) -> float:
    """``-mean(log_prob(x))`` in nats, evaluated in batches and summed in float64.

    With ``rng``, ``x`` is dequantised first (one draw of noise for all of ``x``, so the result
    does not depend on ``batch_size``). With ``context`` (one row per example) each batch is
    scored as ``log_prob(x_batch, context_batch)``: ``-mean(log p(x | c))``.
    """
    if len(x) == 0:
        raise ValueError("mean_nll needs at least one example")
    if context is not None and len(context) != len(x):
        raise ValueError(f"mean_nll: {len(context)} context rows for {len(x)} examples")
    if rng is not None:
        x = dequantize(x, rng, bin_width)
    total = 0.0
    step = int(batch_size)
    for start in range(0, len(x), step):
        rows = slice(start, start + step)
        args = (x[rows],) if context is None else (x[rows], context[rows])
        total -= float(np.sum(np.asarray(log_prob(*args), np.float64)))
    return total / len(x)


def flow_bits_per_dim(model, x, batch_size: int = 500, seed: int = 0) -> float:
    """Mean bits per dimension of a flow on integer pixels ``x``: ``-log p(x + u) / (D ln 2)``.

    ``u ~ U[0, 1)^D`` is one seeded draw of dequantisation noise per example, as in the papers;
    with an image builder's model (pixel values in ``[0, 256)``) this is the figure they report.
    ``model`` is any flow with ``log_prob`` and ``event_size`` (a ``FlowModel``).

    Example:
        >>> import numpy as np
        >>> import tfp_coupling as tc
        >>> model = tc.nice_image_flow([4, 4, 1], hidden_units=[16])
        >>> x = np.random.default_rng(0).integers(0, 256, (8, 4, 4, 1))
        >>> 0 < tc.flow_bits_per_dim(model, x) < 20
        True
    """
    if len(x) == 0:
        raise ValueError("bits_per_dim needs at least one example")
    nll = mean_nll(model.log_prob, x, rng=np.random.default_rng(seed), batch_size=batch_size)
    return bits_per_dim(nll, model.event_size)
