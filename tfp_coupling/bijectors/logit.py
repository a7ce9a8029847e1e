"""The logit preprocessing of dequantised pixels, as a bijector with its exact log-det."""

from __future__ import annotations

import math
from collections.abc import Sequence

import tensorflow as tf

from tfp_coupling.bijectors.base import FlowBijector

__all__ = ["LogitPreprocessing"]


class LogitPreprocessing(FlowBijector):
    """Maps logit space to pixel values in ``[0, K)``; its inverse is RealNVP's preprocessing.

    Maths (``K = num_levels``, 256 for 8-bit pixels; ``a = alpha``)::

        inverse (data -> flow):  p = a + (1 - 2a) * x / K,      z = logit(p) = log p - log(1 - p)
        forward (flow -> data):  p = sigmoid(z),                x = K * (p - a) / (1 - 2a)
        log|dx/dz| = sum over the event of  log(K / (1 - 2a)) + log p + log(1 - p)
                   = sum of  log(K / (1 - 2a)) - softplus(-z) - softplus(z)

    Dequantised pixels ``x = k + u`` (``k`` in ``{0, ..., K - 1}``, ``u ~ U[0, 1)``, which
    ``FlowModel(dequantize=True)`` adds in training) lie in ``[0, K)``. With this bijector last
    in the chain (applied first to data), the flow's ``log_prob`` is a density on ``[0, K)^D`` in
    the pixels' own units, so ``-log_prob(x) / (D ln 2)`` is the bits per dimension of the
    discrete pixels that the papers report (a lower bound on their log-probability). ``a > 0``
    keeps the logit finite at the ends: pixels map into ``[logit(a), logit(1 - a)]``, and
    samples of the flow lie in ``(-a K / (1 - 2a), K (1 - a) / (1 - 2a))`` (clip to show them).

    The forward direction is the TFP convention (base -> data, like ``tfb.Sigmoid``), so this is
    the last link of a ``Chain`` (``Chain([LogitPreprocessing(...), *flow_steps])``).

    Args:
        event_shape: shape of one example, e.g. ``[28, 28, 1]`` or ``[784]``.
        alpha: ``a`` above, in ``[0, 0.5)`` (0.05 in the RealNVP paper).
        num_levels: ``K``, the number of discrete values per dimension.
        dtype: float dtype of the flow.
        validate_args: also check event shapes known only at run time.
        name: bijector name.

    Example:
        >>> import numpy as np, tensorflow as tf
        >>> from tfp_coupling.bijectors import LogitPreprocessing
        >>> b = LogitPreprocessing([2], alpha=0.05)
        >>> x = tf.constant([[0.5, 255.5]])
        >>> z, ildj = b.inverse_and_log_det(x)
        >>> bool(np.allclose(b.forward(z), x, atol=1e-3)), ildj.shape
        (True, TensorShape([1]))

    References:
        Dinh, Sohl-Dickstein, Bengio. Density estimation using Real NVP. ICLR 2017, section 4.1.
    """

    def __init__(
        self,
        event_shape: Sequence[int],
        *,
        alpha: float = 0.05,
        num_levels: int = 256,
        dtype: tf.DType | str = tf.float32,
        validate_args: bool = False,
        name: str = "logit_preprocessing",
    ) -> None:
        parameters = dict(locals())
        if not 0.0 <= float(alpha) < 0.5:
            raise ValueError(f"alpha must be in [0, 0.5), got {alpha}")
        if int(num_levels) < 2:
            raise ValueError(f"num_levels must be >= 2, got {num_levels}")
        self.alpha = float(alpha)
        self.num_levels = int(num_levels)
        # log(K / (1 - 2a)) per dimension, a Python float. It enters the graph through
        # tf.constant(value, dtype): tf.cast of a Python float would round it to float32 first.
        self._log_jac_const = math.log(self.num_levels / (1.0 - 2.0 * self.alpha))
        super().__init__(
            event_shape=event_shape, dtype=dtype, is_constant_jacobian=False,
            validate_args=validate_args, parameters=parameters, name=name,
        )

    def _sum_event(self, t: tf.Tensor) -> tf.Tensor:
        return tf.reduce_sum(t, axis=list(range(-len(self._event_shape), 0)))

    def _forward_log_det(self, z: tf.Tensor) -> tf.Tensor:
        per_dim = (tf.constant(self._log_jac_const, z.dtype)
                   - tf.math.softplus(-z) - tf.math.softplus(z))
        return self._sum_event(per_dim)

    def _forward_and_log_det(self, z):
        p = tf.sigmoid(z)
        k = tf.constant(self.num_levels, z.dtype)
        x = k * (p - self.alpha) / (1.0 - 2.0 * self.alpha)
        return x, self._forward_log_det(z)

    def _inverse_and_log_det(self, x):
        k = tf.constant(self.num_levels, x.dtype)
        p = self.alpha + (1.0 - 2.0 * self.alpha) * x / k
        log_p, log_1mp = tf.math.log(p), tf.math.log1p(-p)
        z = log_p - log_1mp
        ildj = -self._sum_event(log_p + log_1mp + tf.constant(self._log_jac_const, x.dtype))
        return z, ildj
