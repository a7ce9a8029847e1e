"""Learned linear maps on vectors: the data-initialised whitening and the mixing between couplings.

``TriLAffine`` (lower-triangular) starts as the data's full-covariance Gaussian fit;
``LULinear`` (a full matrix as ``L U``) mixes coordinates between couplings, starting at the
identity.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from tfp_coupling.bijectors.actnorm import DataInitializedParams
from tfp_coupling.bijectors.base import FlowBijector

__all__ = ["LULinear", "LULinearParams", "TriLAffine", "TriLAffineParams", "mean_and_cholesky",
           "rotation_matrix"]


def mean_and_cholesky(y: np.ndarray, epsilon: float = 1e-10, *, who: str = "the data"
                      ) -> tuple[np.ndarray, np.ndarray]:
    """The maximum-likelihood mean of the rows of ``y`` ``[N, D]`` and the Cholesky factor ``L``
    of their covariance (divided by ``N``), in float64: ``cov + eps * mean variance * I = L L^T``.

    The tiny jitter only guards a singular covariance (a constant column, fewer rows than
    columns). Raises ``ValueError`` (starting with ``who``) on NaN, Inf or values too large to
    square.

    Example:
        >>> import numpy as np
        >>> mean, chol = mean_and_cholesky(np.array([[0.0, 0.0], [2.0, 2.0]]))
        >>> mean.tolist(), np.round(chol @ chol.T, 6).tolist()
        ([1.0, 1.0], [[1.0, 1.0], [1.0, 1.0]])
    """
    y = np.asarray(y, np.float64)
    if not np.isfinite(y).all() or not np.isfinite(y.var(axis=0)).all():
        raise ValueError(f"{who} contain NaN, Inf or values too large to square; remove or "
                         f"rescale them")
    size = y.shape[-1]
    cov = np.atleast_2d(np.cov(y, rowvar=False, bias=True))
    jitter = epsilon * max(float(np.trace(cov)) / size, np.finfo(np.float64).tiny)
    return y.mean(axis=0), np.linalg.cholesky(cov + jitter * np.eye(size))


def rotation_matrix(size: int, angle: float) -> np.ndarray:
    """The ``[size, size]`` rotation by ``angle`` (radians) in each coordinate plane
    ``(0, 1), (2, 3), ...``; with an odd ``size`` the last coordinate stays.

    Example:
        >>> np.round(rotation_matrix(2, np.pi / 2), 6).tolist()
        [[0.0, -1.0], [1.0, 0.0]]
    """
    matrix = np.eye(int(size))
    c, s = np.cos(angle), np.sin(angle)
    for i in range(0, int(size) - 1, 2):
        matrix[i:i + 2, i:i + 2] = [[c, -s], [s, c]]
    return matrix


@keras.saving.register_keras_serializable(package="tfp_coupling")
class TriLAffineParams(DataInitializedParams):
    """The Keras layer owning one :class:`TriLAffine`'s weights.

    Weights: trainable ``log_diag`` ``[D]`` (log of ``L``'s diagonal), ``lower`` ``[D, D]`` (only
    its strictly lower triangle is used) and ``bias`` ``[D]``; plus the non-trainable
    ``initialized`` flag of :class:`DataInitializedParams`.
    """

    def __init__(self, size: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.size = int(size)
        d = self.size
        self.log_diag = self.add_weight(shape=(d,), initializer="zeros", name="log_diag")
        self.lower = self.add_weight(shape=(d, d), initializer="zeros", name="lower")
        self.bias = self.add_weight(shape=(d,), initializer="zeros", name="bias")
        self.built = True

    def initialize_from(self, y: tf.Tensor, epsilon: float = 1e-10) -> None:
        """Sets ``bias = mean(y)`` and ``L = cholesky(cov(y) + eps * mean variance * I)``.

        Eager, in float64; the tiny jitter only guards a singular covariance (a constant
        column, fewer rows than columns).
        """
        self._require_eager()
        mean, chol = mean_and_cholesky(np.asarray(y).reshape(-1, self.size), epsilon,
                                       who=f"{self.name}: the data it is initialised from")
        self.bias.assign(mean.astype(self.bias.dtype))
        self.log_diag.assign(np.log(np.diag(chol)).astype(self.log_diag.dtype))
        self.lower.assign(np.tril(chol, -1).astype(self.lower.dtype))
        self.initialized.assign(1.0)

    def get_config(self) -> dict:
        return {**super().get_config(), "size": self.size}


class _VectorLinearMap(FlowBijector):
    """What :class:`TriLAffine` and :class:`LULinear` share: weights in one Keras layer of
    ``params_class``, a vector event ``[D]``, a constant log-det ``sum(log_diag)`` and an
    inverse by triangular solves."""

    params_class: type[keras.layers.Layer]

    def __init__(self, size: int, params, dtype, validate_args: bool, name: str,
                 parameters: dict) -> None:
        size = int(size)
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        if params is None:
            params = self.params_class(size, dtype=tf.as_dtype(dtype).name,
                                       name=f"{name}_params")
        elif params.size != size:
            raise ValueError(f"params are for size {params.size}, not {size}")
        self.params = params
        # copy(), == and parameters then refer to these weights, not to fresh ones.
        parameters["params"] = params
        super().__init__(
            event_shape=[size], dtype=dtype, is_constant_jacobian=True,
            validate_args=validate_args, parameters=parameters, name=name,
        )

    @property
    def keras_layers(self) -> list:
        return [self.params]

    def _log_det(self, x: tf.Tensor, log_diag: tf.Tensor) -> tf.Tensor:
        return tf.fill(tf.shape(x)[:-1], tf.reduce_sum(log_diag))

    def _solve(self, y: tf.Tensor, *triangles: tuple[tf.Tensor, bool]) -> tf.Tensor:
        """``T_k^{-1} ... T_1^{-1} y`` for ``(T, lower)`` pairs, over any batch shape."""
        cols = tf.transpose(tf.reshape(y, [-1, self._event_shape[0]]))
        for matrix, lower in triangles:
            cols = tf.linalg.triangular_solve(matrix, cols, lower=lower)
        return tf.reshape(tf.transpose(cols), tf.shape(y))


class TriLAffine(_VectorLinearMap):
    """A learned affine map ``y = L x + b`` with ``L`` lower-triangular, diagonal positive.

    Maths (``L = tril(lower, -1) + diag(exp(log_diag))``)::

        y = L x + b                 x = L^{-1} (y - b)      (a triangular solve)
        log|det J| = sum(log_diag)

    **Data-dependent initialisation.** Before training, ``b`` and ``L`` are set to the mean and
    the Cholesky factor of the covariance of the data reaching ``y`` (``FlowModel.fit`` does it
    on its first call, from up to 4096 training rows; or call
    :func:`tfp_coupling.initialize_from_data`). Placed at the data end of a vector flow whose
    couplings start as the identity, the untrained flow is then exactly the full-covariance
    Gaussian fitted to the data, and the couplings only have the non-Gaussian rest to learn.
    Before the initialisation ``L = I, b = 0`` (the identity).

    Args:
        size: the event size ``D`` (events are vectors ``[D]``).
        params: an existing :class:`TriLAffineParams` to share instead of creating one.
        dtype: float dtype of the flow.
        validate_args: also check event shapes known only at run time.
        name: bijector name.

    Example:
        >>> import numpy as np, tensorflow as tf
        >>> from tfp_coupling.bijectors import TriLAffine
        >>> b = TriLAffine(3)
        >>> y = np.random.default_rng(0).normal(size=(500, 3)) @ [[2., 0, 0], [1, 1, 0], [0, 1, 3]]
        >>> b.params.initialize_from(y)
        >>> x = b.inverse(tf.constant(y, tf.float32)).numpy()
        >>> bool(np.allclose(np.cov(x, rowvar=False, bias=True), np.eye(3), atol=1e-4))
        True
    """

    params_class = TriLAffineParams

    def __init__(
        self,
        size: int,
        *,
        params: TriLAffineParams | None = None,
        dtype: tf.DType | str = tf.float32,
        validate_args: bool = False,
        name: str = "tril_affine",
    ) -> None:
        super().__init__(size, params, dtype, validate_args, name, dict(locals()))

    def _matrix(self) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        dt = self._flow_dtype
        log_diag = tf.cast(self.params.log_diag, dt)
        lower = tf.linalg.band_part(tf.cast(self.params.lower, dt), -1, 0)
        lower = tf.linalg.set_diag(lower, tf.exp(log_diag))
        return lower, log_diag, tf.cast(self.params.bias, dt)

    def _forward_and_log_det(self, x):
        lower, log_diag, bias = self._matrix()
        return tf.linalg.matvec(lower, x) + bias, self._log_det(x, log_diag)

    def _inverse_and_log_det(self, y):
        self.params.initialize_if_pending(y)
        lower, log_diag, bias = self._matrix()
        return self._solve(y - bias, (lower, True)), -self._log_det(y, log_diag)


@keras.saving.register_keras_serializable(package="tfp_coupling")
class LULinearParams(keras.layers.Layer):
    """The Keras layer owning one :class:`LULinear`'s weights, all zero at the start.

    Weights: ``lower`` ``[D, D]`` (only its strictly lower triangle is used), ``upper``
    ``[D, D]`` (only its strictly upper triangle), ``log_diag`` ``[D]`` (log of ``U``'s
    diagonal) and ``bias`` ``[D]``.
    """

    def __init__(self, size: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.size = int(size)
        d = self.size
        self.lower = self.add_weight(shape=(d, d), initializer="zeros", name="lower")
        self.upper = self.add_weight(shape=(d, d), initializer="zeros", name="upper")
        self.log_diag = self.add_weight(shape=(d,), initializer="zeros", name="log_diag")
        self.bias = self.add_weight(shape=(d,), initializer="zeros", name="bias")
        self.built = True

    def get_config(self) -> dict:
        return {**super().get_config(), "size": self.size}


class LULinear(_VectorLinearMap):
    """A learned invertible linear map ``y = L U x + b``, written as its LU factors.

    Maths (``L`` unit lower-triangular, ``U`` upper-triangular with diagonal
    ``exp(log_diag)``, so ``L U`` is any invertible matrix whose leading minors are positive)::

        y = L (U x) + b             x = U^{-1} L^{-1} (y - b)   (two triangular solves)
        log|det J| = sum(log_diag)

    Between the couplings of a vector flow it mixes coordinates that a fixed mask keeps in one
    half (Glow's invertible 1x1 convolution, written for vectors; nflows' ``LULinear``). Every
    weight starts at zero: the map starts as the identity, so a flow's untrained density does
    not change when mixing is added. Forward and inverse cost ``O(D^2)`` per row, the log-det
    ``O(D)``; no matrix is inverted or factorised during training.

    Args:
        size: the event size ``D`` (events are vectors ``[D]``).
        params: an existing :class:`LULinearParams` to share instead of creating one.
        dtype: float dtype of the flow.
        validate_args: also check event shapes known only at run time.
        name: bijector name.

    Example:
        >>> import numpy as np, tensorflow as tf
        >>> from tfp_coupling.bijectors import LULinear
        >>> b = LULinear(3, dtype="float64")
        >>> _ = b.params.upper.assign(np.triu(np.ones((3, 3)), 1))
        >>> x = tf.constant([[1.0, 2.0, 3.0]], tf.float64)
        >>> b.forward(x).numpy(), b.inverse(b.forward(x)).numpy()
        (array([[6., 5., 3.]]), array([[1., 2., 3.]]))
    """

    params_class = LULinearParams

    def __init__(
        self,
        size: int,
        *,
        params: LULinearParams | None = None,
        dtype: tf.DType | str = tf.float32,
        validate_args: bool = False,
        name: str = "lu_linear",
    ) -> None:
        super().__init__(size, params, dtype, validate_args, name, dict(locals()))

    def set_matrix(self, matrix: np.ndarray) -> None:
        """Sets the weights so that the map is ``y = M x`` (bias 0) for ``M = matrix``.

        ``M = L U`` is factorised without pivoting (Doolittle, in float64): it must have
        positive leading principal minors, as every ``L U`` here does (a rotation by less than
        a right angle in each plane has them). Raises ``ValueError`` otherwise.

        Example:
            >>> import numpy as np, tensorflow as tf
            >>> from tfp_coupling.bijectors import LULinear
            >>> from tfp_coupling.bijectors.linear import rotation_matrix
            >>> b = LULinear(2, dtype="float64")
            >>> b.set_matrix(rotation_matrix(2, np.pi / 2 - 0.5))
            >>> np.round(b.forward(tf.constant([[1.0, 0.0]], tf.float64)).numpy(), 4)
            array([[0.4794, 0.8776]])
        """
        a = np.array(matrix, np.float64)
        d = self.params.size
        if a.shape != (d, d) or not np.isfinite(a).all():
            raise ValueError(f"set_matrix needs a finite [{d}, {d}] matrix, got shape "
                             f"{a.shape}")
        for k in range(d):  # a holds L below its diagonal, U on and above it
            if not a[k, k] > 0:
                raise ValueError(f"the matrix's leading minors must be positive (an L U with a "
                                 f"positive diagonal); pivot {k} is {a[k, k]:.3g}")
            a[k + 1:, k] /= a[k, k]
            a[k + 1:, k + 1:] -= np.outer(a[k + 1:, k], a[k, k + 1:])
        self.params.lower.assign(np.tril(a, -1))
        self.params.upper.assign(np.triu(a, 1))
        self.params.log_diag.assign(np.log(np.diag(a)))
        self.params.bias.assign(np.zeros(d))

    def _factors(self) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
        dt = self._flow_dtype
        log_diag = tf.cast(self.params.log_diag, dt)
        strict_lower = tf.linalg.set_diag(
            tf.linalg.band_part(tf.cast(self.params.lower, dt), -1, 0), tf.zeros_like(log_diag))
        lower = strict_lower + tf.eye(self.params.size, dtype=dt)
        upper = tf.linalg.set_diag(tf.linalg.band_part(tf.cast(self.params.upper, dt), 0, -1),
                                   tf.exp(log_diag))
        return lower, upper, log_diag, tf.cast(self.params.bias, dt)

    def _forward_and_log_det(self, x):
        lower, upper, log_diag, bias = self._factors()
        y = tf.linalg.matvec(lower, tf.linalg.matvec(upper, x)) + bias
        return y, self._log_det(x, log_diag)

    def _inverse_and_log_det(self, y):
        lower, upper, log_diag, bias = self._factors()
        x = self._solve(y - bias, (lower, True), (upper, False))
        return x, -self._log_det(y, log_diag)
