"""The full-covariance Gaussian fit: the baseline a density estimator must beat.

A flow whose held-out NLL is above this Gaussian's has learnt nothing a mean and a covariance do
not already say; on small tables that happens (overfit conditioners), so the command line
reports both. For ``p(x | c)`` the baseline is the Gaussian of ``x`` given ``c`` under the joint
Gaussian fit of ``(x, c)``: linear regression with a full residual covariance.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from tfp_coupling.bijectors.linear import mean_and_cholesky

__all__ = ["conditional_gaussian_fit", "gaussian_fit"]


def gaussian_fit(x, dtype: tf.DType | str | None = None
                 ) -> tfp.distributions.MultivariateNormalTriL:
    """The maximum-likelihood full-covariance Gaussian of the rows of ``x`` ``[N, D]``.

    ``mean = (1/N) sum_n x_n``, ``cov = (1/N) sum_n (x_n - mean)(x_n - mean)^T = L L^T``
    (computed in float64; a tiny jitter guards a singular covariance), returned as
    ``tfd.MultivariateNormalTriL(mean, L)`` in ``dtype`` (default: ``x``'s floating dtype, else
    float32). ``realnvp_flow`` and ``nice_flow`` set their ``TriLAffine`` to the same mean and
    ``L`` on the first ``fit``, so with ``zero_init=True`` they start exactly at this Gaussian.

    Args:
        x: array-like ``[N, D]`` of finite numbers, ``N >= 2``.
        dtype: the distribution's dtype.

    Raises:
        ValueError: ``x`` is not ``[N, D]`` with ``N >= 2``, or holds NaN or Inf.

    Example:
        >>> import numpy as np
        >>> import tfp_coupling as tc
        >>> x = tc.data.two_moons(4000, seed=0)
        >>> gauss = tc.gaussian_fit(x)
        >>> nll = -float(np.mean(gauss.log_prob(tc.data.two_moons(1000, seed=1))))
        >>> 1.5 < nll < 2.5   # a flow reaches ~0.35 nats here (the true density: ~0.3)
        True
    """
    rows, dtype = _rows(x, "gaussian_fit", "x", dtype)
    mean, chol = mean_and_cholesky(rows, who="gaussian_fit: the rows")
    return tfp.distributions.MultivariateNormalTriL(
        loc=tf.constant(mean, dtype), scale_tril=tf.constant(chol, dtype),
        name="gaussian_fit")


def conditional_gaussian_fit(x, context, dtype: tf.DType | str | None = None
                             ) -> Callable[..., tfp.distributions.MultivariateNormalTriL]:
    """The maximum-likelihood Gaussian of ``x`` ``[N, D]`` given ``context`` ``[N, C]``.

    ``x | c ~ N(a + B c, L L^T)``: ``B`` by least squares on the centred rows (the regression
    of the joint Gaussian fit of ``(x, c)``), ``L L^T`` the covariance of the residuals (divided
    by ``N``). Returns a function from contexts ``[M, C]`` to the distribution
    ``tfd.MultivariateNormalTriL`` with batch shape ``[M]``, one row per context.

    Args:
        x: array-like ``[N, D]`` of finite numbers, ``N >= 2``.
        context: array-like ``[N, C]`` of finite numbers, one row per row of ``x``.
        dtype: the distributions' dtype (default: ``x``'s floating dtype, else float32).

    Raises:
        ValueError: a shape that is not ``[N, D]``/``[N, C]`` with the same ``N >= 2``, or NaN
            or Inf.

    Example:
        >>> import numpy as np
        >>> import tfp_coupling as tc
        >>> x, moon = tc.data.two_moons(4000, seed=0, return_labels=True)
        >>> dist_given = tc.conditional_gaussian_fit(x, moon[:, None])
        >>> x_test, moon_test = tc.data.two_moons(1000, seed=1, return_labels=True)
        >>> nll = -float(np.mean(dist_given(moon_test[:, None]).log_prob(x_test)))
        >>> nll < -float(np.mean(tc.gaussian_fit(x).log_prob(x_test)))   # the label helps
        True
    """
    rows, dtype = _rows(x, "conditional_gaussian_fit", "x", dtype)
    c, _ = _rows(context, "conditional_gaussian_fit", "context", dtype)
    if len(c) != len(rows):
        raise ValueError(f"conditional_gaussian_fit: x has {len(rows)} rows, context "
                         f"{len(c)}; give one context row per row of x")
    x64 = rows.astype(np.float64)
    c64 = c.astype(np.float64)
    mean_c = c64.mean(axis=0)
    # lstsq copes with a constant or collinear context column (the minimum-norm solution).
    coef = np.linalg.lstsq(c64 - mean_c, x64 - x64.mean(axis=0), rcond=None)[0]  # [C, D]
    residuals = x64 - (c64 - mean_c) @ coef
    mean, chol = mean_and_cholesky(residuals, who="conditional_gaussian_fit: the rows")
    loc0, coef_t = tf.constant(mean, dtype), tf.constant(coef, dtype)
    mean_c_t, scale_tril = tf.constant(mean_c, dtype), tf.constant(chol, dtype)

    def given(contexts) -> tfp.distributions.MultivariateNormalTriL:
        ctx = tf.cast(contexts, dtype)  # arrays and tensors of any real dtype
        if ctx.shape.rank != 2 or ctx.shape[-1] != coef.shape[0]:
            raise ValueError(f"conditional_gaussian_fit: contexts must be [M, {coef.shape[0]}]; "
                             f"got shape {ctx.shape}")
        return tfp.distributions.MultivariateNormalTriL(
            loc=loc0 + tf.matmul(ctx - mean_c_t, coef_t), scale_tril=scale_tril,
            name="conditional_gaussian_fit")

    return given


def _rows(x, fn: str, what: str, dtype) -> tuple[np.ndarray, tf.DType]:
    """``x`` as a NumPy array ``[N, D]`` of real numbers (``N >= 2``), and the dtype to use."""
    rows = np.asarray(x)
    if rows.ndim != 2 or rows.shape[0] < 2 or rows.shape[1] < 1:
        raise ValueError(f"{fn} takes {what} as rows [N, D] with N >= 2 and D >= 1; got shape "
                         f"{rows.shape}")
    if not np.issubdtype(rows.dtype, np.number) or np.issubdtype(rows.dtype, np.complexfloating):
        raise ValueError(f"{fn} takes real numbers as {what}; got dtype {rows.dtype}")
    if dtype is None:
        dtype = rows.dtype if np.issubdtype(rows.dtype, np.floating) else np.float32
    return rows, tf.as_dtype(dtype)
