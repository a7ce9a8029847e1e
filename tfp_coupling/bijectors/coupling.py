"""Coupling bijectors: one general path, with NICE and RealNVP as thin choices on it.

A coupling splits its input with a mask into a kept part ``x_a`` and a transformed part ``x_b``,
runs a conditioner network once on ``x_a`` to get parameters, and applies an elementwise
invertible map to ``x_b``::

    y_a = x_a
    y_b = h(x_b; conditioner(x_a))
    log|det J| = sum over the event of log|h'(x_b)|

Because ``y_a = x_a``, the inverse runs the same conditioner on ``y_a``. The Jacobian is
triangular, so its log-determinant is the sum of the elementwise log-derivatives.

:class:`AdditiveCoupling` (NICE): ``h(x; t) = x + t``, log-det 0.
:class:`AffineCoupling` (RealNVP): ``h(x; t, s) = x * exp(s) + t``, log-det ``sum(s)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import keras
import tensorflow as tf

from tfp_coupling.bijectors.base import FlowBijector
from tfp_coupling.masks import Partition

__all__ = ["AdditiveCoupling", "AffineCoupling", "Coupling"]

Conditioner = Callable[[tf.Tensor], tf.Tensor | Sequence[tf.Tensor]]


class Coupling(FlowBijector):
    """A mask-split coupling ``y_b = h(x_b; conditioner(x_a))``; subclasses choose ``h``.

    The conditioner is called once per ``forward``/``inverse``/log-det call, always with one batch
    axis: ``x_a`` reshaped to ``[N, *a_shape]`` (``a_shape`` is ``Partition(mask).a_shape``; for a
    multiplicative checkerboard mask it is the whole event, masked). It returns either one tensor
    ``[N, *b_shape[:-1], num_params * b_shape[-1]]`` (split along the last axis in the order the
    subclass documents) or a sequence of ``num_params`` tensors ``[N, *b_shape]``. Outputs in
    another float dtype (mixed precision) are cast to the flow dtype, so log-dets stay in it.

    A conditioner that is a Keras layer is held as an attribute and listed in ``keras_layers``,
    so that a ``keras.Model`` holding this bijector tracks, trains and saves its weights.

    Subclasses set ``num_params`` and implement ``_transform``, ``_inverse_transform`` and
    ``_log_det`` on the parameters; everything else (split, merge, the conditioner call, checks)
    lives here.
    """

    num_params: int = 1

    def __init__(
        self,
        mask,
        conditioner: Conditioner,
        *,
        dtype: tf.DType | str = tf.float32,
        is_constant_jacobian: bool = False,
        validate_args: bool = False,
        parameters: dict | None = None,
        name: str = "coupling",
    ) -> None:
        if not callable(conditioner):
            raise TypeError(f"conditioner must be callable (a Keras layer or function), got "
                            f"{type(conditioner).__name__}")
        self.partition = Partition(mask)
        self.conditioner = conditioner
        super().__init__(
            event_shape=self.partition.event_shape,
            dtype=dtype,
            is_constant_jacobian=is_constant_jacobian,
            validate_args=validate_args,
            parameters=parameters if parameters is not None else dict(locals()),
            name=name,
        )

    @property
    def keras_layers(self) -> list:
        return [self.conditioner] if _is_keras_layer(self.conditioner) else []

    def _run_conditioner(self, x_a: tf.Tensor) -> list[tf.Tensor]:
        """Runs the conditioner once on ``x_a`` (any batch shape) and returns its parameters."""
        a_rank = len(self.partition.a_shape)
        # With exactly one batch axis (as in training) x_a already has the conditioner's layout:
        # no reshapes in and out (they would be graph ops in every step, forward and backward).
        flat = x_a.shape.rank == a_rank + 1
        if flat:
            out = self.conditioner(x_a)
        else:
            batch_shape = tf.shape(x_a)[:-a_rank]
            out = self.conditioner(tf.reshape(x_a, (-1, *self.partition.a_shape)))
        if not isinstance(out, list | tuple):
            last = out.shape[-1] if out.shape.rank else None
            if last is not None and last % self.num_params:
                b_shape = self.partition.b_shape
                expected = [*b_shape[:-1], self.num_params * b_shape[-1]]
                raise ValueError(
                    f"{self.name}: conditioner output has shape {out.shape.as_list()}; its last "
                    f"axis must hold {self.num_params} parameter(s) for the transformed part, "
                    f"expected [N, {', '.join(map(str, expected))}]"
                )
        parts = list(out) if isinstance(out, list | tuple) else tf.split(
            out, self.num_params, axis=-1)
        if len(parts) != self.num_params:
            raise ValueError(f"{self.name}: conditioner returned {len(parts)} outputs, expected "
                             f"{self.num_params}")
        b_shape = self.partition.b_shape
        params = []
        for p in parts:
            given = None if p.shape.rank is None else p.shape[1:].as_list()
            if given is not None and (len(given) != len(b_shape) or any(
                    g is not None and g != e for g, e in zip(given, b_shape, strict=False))):
                raise ValueError(
                    f"{self.name}: conditioner output has event shape {given} per "
                    f"parameter, expected {list(b_shape)} ({self.num_params} parameter(s) for the "
                    f"transformed part)"
                )
            p = tf.cast(p, self._flow_dtype)  # a no-op unless the conditioner is mixed-precision
            if not flat or given is None or None in given:
                batch = tf.shape(x_a)[:-a_rank] if flat else batch_shape
                p = tf.reshape(p, tf.concat([batch, b_shape], axis=0))
            params.append(p)
        return [self.partition.mask_params(p) for p in self._constrain(params)]

    def _constrain(self, params: list[tf.Tensor]) -> list[tf.Tensor]:
        """Maps raw conditioner outputs to transform parameters (identity by default)."""
        return params

    def _sum_event(self, t: tf.Tensor) -> tf.Tensor:
        return tf.reduce_sum(t, axis=list(range(-len(self._event_shape), 0)))

    def _batch_zeros(self, x: tf.Tensor) -> tf.Tensor:
        return tf.zeros(tf.shape(x)[: -len(self._event_shape)], dtype=x.dtype)

    def _forward_and_log_det(self, x):
        x_a, x_b = self.partition.split(x)
        y_b, ldj = self._forward_parts(x_a, x_b)
        return self.partition.merge(x_a, y_b), ldj

    def _inverse_and_log_det(self, y):
        y_a, y_b = self.partition.split(y)
        x_b, ldj = self._inverse_parts(y_a, y_b)
        return self.partition.merge(y_a, x_b), ldj

    def _forward_parts(self, x_a: tf.Tensor, x_b: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """``(y_b, log-det)`` from the split halves (``y_a = x_a``): the coupling without the
        split and merge, which ``composition.fused`` skips between chained couplings."""
        params = self._run_conditioner(x_a)
        return self._transform(x_b, params), self._log_det(x_a, params)

    def _inverse_parts(self, y_a: tf.Tensor, y_b: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """``(x_b, inverse log-det)`` from the split halves (``x_a = y_a``)."""
        params = self._run_conditioner(y_a)
        return self._inverse_transform(y_b, params), -self._log_det(y_a, params)

    def _forward_log_det_jacobian(self, x):
        x = self._check_input(x, "x")
        return self._log_det(x, self._run_conditioner(self.partition.split(x)[0]))

    def _inverse_log_det_jacobian(self, y):
        y = self._check_input(y, "y")
        return -self._log_det(y, self._run_conditioner(self.partition.split(y)[0]))

    def _transform(self, x_b: tf.Tensor, params: list[tf.Tensor]) -> tf.Tensor:
        raise NotImplementedError

    def _inverse_transform(self, y_b: tf.Tensor, params: list[tf.Tensor]) -> tf.Tensor:
        raise NotImplementedError

    def _log_det(self, x: tf.Tensor, params: list[tf.Tensor]) -> tf.Tensor:
        """Forward log-det summed over the event; ``x`` (or ``x_a``) gives the batch shape."""
        raise NotImplementedError


class AdditiveCoupling(Coupling):
    """NICE's additive coupling (Dinh et al., 2014).

    Maths::

        y_a = x_a                   x_a = y_a
        y_b = x_b + m(x_a)          x_b = y_b - m(y_a)
        log|det J| = 0

    Volume-preserving: pair it with :class:`Rescaling` to let the flow change volume. Its
    log-det is the constant 0, but its Jacobian is not constant (the map is not affine), so
    ``is_constant_jacobian`` is ``False``: TFP reads that flag as "affine" and would otherwise
    report ``TransformedDistribution.mean()`` as ``f(base mean)``, which is wrong here.

    Args:
        mask: boolean array over the event; ``True`` marks the kept part ``x_a``.
        shift_fn: conditioner ``m``, ``[N, *a_shape] -> [N, *b_shape]`` (a Keras layer such as
            ``tfp_coupling.nets.MLP``, or any callable).
        dtype: float dtype of the flow (inputs, outputs and log-det).
        validate_args: also check event shapes known only at run time.
        name: bijector name.

    Example:
        >>> import numpy as np, tensorflow as tf
        >>> from tfp_coupling import AdditiveCoupling, masks, nets
        >>> b = AdditiveCoupling(masks.half_mask(4), nets.MLP([8], output_shape=[2]))
        >>> x = tf.random.normal([3, 4])
        >>> bool(np.allclose(b.inverse(b.forward(x)), x))
        True

    References:
        Dinh, Krueger, Bengio. NICE: Non-linear Independent Components Estimation. 2014.
    """

    num_params = 1

    def __init__(
        self,
        mask,
        shift_fn: Conditioner,
        *,
        dtype: tf.DType | str = tf.float32,
        validate_args: bool = False,
        name: str = "additive_coupling",
    ) -> None:
        super().__init__(
            mask, shift_fn, dtype=dtype, is_constant_jacobian=False,
            validate_args=validate_args, parameters=dict(locals()), name=name,
        )

    def _transform(self, x_b, params):
        return x_b + params[0]

    def _inverse_transform(self, y_b, params):
        return y_b - params[0]

    def _log_det(self, x, params):
        return self._batch_zeros(x)

    def _forward_log_det_jacobian(self, x):
        return self._batch_zeros(self._check_input(x, "x"))  # no conditioner call needed

    def _inverse_log_det_jacobian(self, y):
        return self._batch_zeros(self._check_input(y, "y"))


class AffineCoupling(Coupling):
    """RealNVP's affine coupling (Dinh et al., 2016).

    Maths::

        s = c * tanh(s_raw(x_a) / c)        (smooth clamp, |s| < c; s_raw if c is None)
        y_a = x_a                           x_a = y_a
        y_b = x_b * exp(s) + t(x_a)         x_b = (y_b - t(y_a)) * exp(-s)
        log|det J| = sum(s)

    The soft clamp keeps the scale ``exp(s)`` in ``(exp(-c), exp(c))``: never 0, never inf, even
    for a diverging conditioner, while its slope 1 at 0 leaves small log-scales untouched.

    Args:
        mask: boolean array over the event; ``True`` marks the kept part ``x_a``.
        shift_and_log_scale_fn: conditioner returning ``[N, ..., 2 * b]`` (shift first, then raw
            log-scale, split along the last axis) or a pair ``(shift, log_scale)``.
        log_scale_clamp: ``c`` above (default 5.0); ``None`` disables the clamp.
        dtype: float dtype of the flow.
        validate_args: also check event shapes known only at run time.
        name: bijector name.

    Example:
        >>> import numpy as np, tensorflow as tf
        >>> from tfp_coupling import AffineCoupling, masks, nets
        >>> b = AffineCoupling(masks.half_mask(4), nets.MLP([8], output_shape=[4]))
        >>> x = tf.random.normal([3, 4])
        >>> bool(np.allclose(b.inverse(b.forward(x)), x))
        True
        >>> b.forward_log_det_jacobian(x, event_ndims=1).shape
        TensorShape([3])

    References:
        Dinh, Sohl-Dickstein, Bengio. Density estimation using Real NVP. ICLR 2017.
    """

    num_params = 2

    def __init__(
        self,
        mask,
        shift_and_log_scale_fn: Conditioner,
        *,
        log_scale_clamp: float | None = 5.0,
        dtype: tf.DType | str = tf.float32,
        validate_args: bool = False,
        name: str = "affine_coupling",
    ) -> None:
        if log_scale_clamp is not None and not log_scale_clamp > 0:
            raise ValueError(f"log_scale_clamp must be positive or None, got {log_scale_clamp}")
        self.log_scale_clamp = log_scale_clamp
        super().__init__(
            mask, shift_and_log_scale_fn, dtype=dtype, is_constant_jacobian=False,
            validate_args=validate_args, parameters=dict(locals()), name=name,
        )

    def _constrain(self, params):
        shift, log_scale = params
        c = self.log_scale_clamp
        if c is not None:
            log_scale = tf.tanh(log_scale * (1.0 / c)) * c  # a multiply is cheaper than a divide
        return [shift, log_scale]

    def _transform(self, x_b, params):
        shift, log_scale = params
        return x_b * tf.exp(log_scale) + shift

    def _inverse_transform(self, y_b, params):
        shift, log_scale = params
        return (y_b - shift) * tf.exp(-log_scale)

    def _log_det(self, x, params):
        return self._sum_event(params[1])


def _is_keras_layer(obj) -> bool:
    return isinstance(obj, keras.layers.Layer)
