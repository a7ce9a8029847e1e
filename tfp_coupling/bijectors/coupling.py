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

import math
from collections.abc import Callable, Sequence

import keras
import tensorflow as tf
import tensorflow_probability as tfp

from tfp_coupling.bijectors.base import FlowBijector, check_context_given
from tfp_coupling.masks import Partition

tfb = tfp.bijectors

__all__ = [
    "AdditiveCoupling",
    "AffineCoupling",
    "Coupling",
    "TransformCoupling",
    "rational_quadratic_spline",
]

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

    **Conditional couplings** (``context_shape=[c]``) model ``p(x | context)``: every call takes
    ``context=`` a tensor ``[*batch, c]`` (or ``[c]``, broadcast over the batch), and the
    conditioner sees ``x_a`` with the context appended on its last axis (tiled over the other
    event axes of an image), so its input has ``c`` more features or channels. Pass it as
    ``forward(x, context=c)``, through ``tc.Chain`` (which hands ``context`` to every
    conditional link) and through ``TransformedDistribution.log_prob(x,
    bijector_kwargs={"context": c})``.

    **Fading to the identity** (``fade_outside=B``): the raw conditioner outputs are multiplied
    by ``w(x_a) = exp(-sum_i relu(|x_a,i| - B)^2)``, which is 1 while every kept coordinate is
    within ``[-B, B]`` and falls to 0 beyond: a coupling whose raw parameters 0 are the
    identity (:class:`AdditiveCoupling`, :class:`AffineCoupling`; not a spline's) then leaves
    inputs far outside the box alone, instead of
    applying what its conditioner extrapolates there. ``w`` depends on ``x_a`` only, so the
    map stays a coupling with the same inverse and log-det formulas.

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
        context_shape: Sequence[int] | None = None,
        fade_outside: float | None = None,
        dtype: tf.DType | str = tf.float32,
        is_constant_jacobian: bool = False,
        validate_args: bool = False,
        parameters: dict | None = None,
        name: str = "coupling",
    ) -> None:
        if fade_outside is not None and not fade_outside > 0:
            raise ValueError(f"fade_outside must be positive or None, got {fade_outside}")
        self.fade_outside = fade_outside
        if context_shape is not None:
            context_shape = tuple(int(d) for d in context_shape)
            if len(context_shape) != 1 or context_shape[0] < 1:
                raise ValueError(f"context_shape must be [c] with c >= 1 (a context vector), got "
                                 f"{list(context_shape)}")
        self.context_shape = context_shape
        if not callable(conditioner):
            raise TypeError(f"conditioner must be callable (a Keras layer or function), got "
                            f"{type(conditioner).__name__}")
        self.partition = Partition(mask)
        self.conditioner = conditioner
        if _is_keras_layer(conditioner) and not conditioner.built:
            # Create the conditioner's weights now, so that trainable_variables lists them
            # before the first call (a plain TF training loop reads them first).
            with tf.init_scope():
                x_a = tf.zeros([1, *self.partition.a_shape], tf.as_dtype(dtype))
                context = (None if context_shape is None
                           else tf.zeros([1, *context_shape], tf.as_dtype(dtype)))
                conditioner(self._conditioner_input(x_a, context))
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

    @property
    def is_conditional(self) -> bool:
        """Whether every call needs a ``context`` (``context_shape`` was given)."""
        return self.context_shape is not None

    def _check_context(self, context) -> tf.Tensor | None:
        """The context as a flow-dtype tensor; raises if given to an unconditional coupling or
        missing from a conditional one, or if its last axis is not ``context_shape``."""
        if not check_context_given(self.name, self.context_shape, context):
            return None
        context = self._check_dtype(context, "context")
        c = self.context_shape[0]
        if context.shape.rank == 0 or (context.shape.rank is not None
                                       and context.shape[-1] not in (None, c)):
            raise ValueError(f"{self.name}: context has shape {context.shape.as_list()}, "
                             f"expected [..., {c}]")
        return context

    def _conditioner_input(self, x_a: tf.Tensor, context: tf.Tensor | None) -> tf.Tensor:
        """``x_a``, with the context broadcast to its batch and event axes and appended."""
        if context is None:
            return x_a
        shape = tf.concat([tf.shape(x_a)[:-1], tf.shape(context)[-1:]], axis=0)
        a_rank = len(self.partition.a_shape)
        if a_rank > 1:  # an image: [*batch, c] -> [*batch, 1, 1, c] -> tiled over H, W
            context = tf.reshape(context, tf.concat(
                [tf.shape(context)[:-1], [1] * (a_rank - 1), tf.shape(context)[-1:]], axis=0))
        return tf.concat([x_a, tf.broadcast_to(context, shape)], axis=-1)

    def _run_conditioner(self, x_a: tf.Tensor, context: tf.Tensor | None = None) -> list[tf.Tensor]:
        """Runs the conditioner once on ``x_a`` (any batch shape) and returns its parameters."""
        a_rank = len(self.partition.a_shape)
        context = self._check_context(context)
        # With exactly one batch axis (as in training) x_a already has the conditioner's layout:
        # no reshapes in and out (they would be graph ops in every step, forward and backward).
        flat = x_a.shape.rank == a_rank + 1
        inputs = self._conditioner_input(x_a, context)
        if flat:
            out = self.conditioner(inputs)
        else:
            batch_shape = tf.shape(x_a)[:-a_rank]
            out = self.conditioner(tf.reshape(inputs, tf.concat(
                [[-1], tf.shape(inputs)[-a_rank:]], axis=0)))
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
        if self.fade_outside is not None:
            params = self._fade(x_a, params)
        return [self.partition.mask_params(p) for p in self._constrain(params)]

    def _fade(self, x_a: tf.Tensor, params: list[tf.Tensor]) -> list[tf.Tensor]:
        """``params * exp(-sum relu(|x_a| - B)^2)``, the sum over the kept part's event axes."""
        a_rank, b_rank = len(self.partition.a_shape), len(self.partition.b_shape)
        excess = tf.nn.relu(tf.abs(x_a) - tf.constant(self.fade_outside, x_a.dtype))
        weight = tf.exp(-tf.reduce_sum(tf.square(excess), axis=list(range(-a_rank, 0))))
        weight = weight[(...,) + (None,) * b_rank]
        return [p * weight for p in params]

    def _constrain(self, params: list[tf.Tensor]) -> list[tf.Tensor]:
        """Maps raw conditioner outputs to transform parameters (identity by default)."""
        return params

    def _sum_event(self, t: tf.Tensor) -> tf.Tensor:
        return tf.reduce_sum(t, axis=list(range(-len(self._event_shape), 0)))

    def _batch_zeros(self, x: tf.Tensor) -> tf.Tensor:
        return tf.zeros(tf.shape(x)[: -len(self._event_shape)], dtype=x.dtype)

    def _forward_and_log_det(self, x, context=None):
        x_a, x_b = self.partition.split(x)
        y_b, ldj = self._forward_parts(x_a, x_b, context)
        return self.partition.merge(x_a, y_b), ldj

    def _inverse_and_log_det(self, y, context=None):
        y_a, y_b = self.partition.split(y)
        x_b, ldj = self._inverse_parts(y_a, y_b, context)
        return self.partition.merge(y_a, x_b), ldj

    def _forward_parts(self, x_a: tf.Tensor, x_b: tf.Tensor,
                       context: tf.Tensor | None = None) -> tuple[tf.Tensor, tf.Tensor]:
        """``(y_b, log-det)`` from the split halves (``y_a = x_a``): the coupling without the
        split and merge, which ``composition.fused`` skips between chained couplings."""
        params = self._run_conditioner(x_a, context)
        return self._transform(x_b, params), self._log_det(x_a, params)

    def _inverse_parts(self, y_a: tf.Tensor, y_b: tf.Tensor,
                       context: tf.Tensor | None = None) -> tuple[tf.Tensor, tf.Tensor]:
        """``(x_b, inverse log-det)`` from the split halves (``x_a = y_a``)."""
        params = self._run_conditioner(y_a, context)
        return self._inverse_transform(y_b, params), -self._log_det(y_a, params)

    def _forward_log_det_jacobian(self, x, context=None):
        x = self._check_input(x, "x")
        return self._log_det(x, self._run_conditioner(self.partition.split(x)[0], context))

    def _inverse_log_det_jacobian(self, y, context=None):
        y = self._check_input(y, "y")
        return -self._log_det(y, self._run_conditioner(self.partition.split(y)[0], context))

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
        fade_outside: ``B``: the coupling fades to the identity where a kept coordinate leaves
            ``[-B, B]`` (see :class:`Coupling`); default ``None``, no fading.
        context_shape: ``[c]`` for a conditional coupling (see :class:`Coupling`).
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
        fade_outside: float | None = None,
        context_shape: Sequence[int] | None = None,
        dtype: tf.DType | str = tf.float32,
        validate_args: bool = False,
        name: str = "additive_coupling",
    ) -> None:
        super().__init__(
            mask, shift_fn, context_shape=context_shape, fade_outside=fade_outside, dtype=dtype,
            is_constant_jacobian=False, validate_args=validate_args, parameters=dict(locals()),
            name=name,
        )

    def _transform(self, x_b, params):
        return x_b + params[0]

    def _inverse_transform(self, y_b, params):
        return y_b - params[0]

    def _log_det(self, x, params):
        return self._batch_zeros(x)

    def _forward_log_det_jacobian(self, x, context=None):
        self._check_context(context)
        return self._batch_zeros(self._check_input(x, "x"))  # no conditioner call needed

    def _inverse_log_det_jacobian(self, y, context=None):
        self._check_context(context)
        return self._batch_zeros(self._check_input(y, "y"))


class AffineCoupling(Coupling):
    """RealNVP's affine coupling (Dinh et al., 2016).

    Maths::

        s = c * tanh(s_raw(x_a) / c)        (smooth clamp, |s| < c; s_raw if c is None)
        t = k * tanh(t_raw(x_a) / k)        (only with shift_clamp=k; else t = t_raw)
        y_a = x_a                           x_a = y_a
        y_b = x_b * exp(s) + t(x_a)         x_b = (y_b - t(y_a)) * exp(-s)
        log|det J| = sum(s)

    The soft clamp keeps the scale ``exp(s)`` in ``(exp(-c), exp(c))``: never 0, never inf, even
    for a diverging conditioner, while its slope 1 at 0 leaves small log-scales untouched. The
    optional shift clamp bounds ``t`` the same way: a ReLU conditioner grows linearly away from
    its training data, and an unbounded shift carries that growth into the output.

    With ``normalizing=True`` the affine map is written in the data -> latent direction, as in
    the RealNVP paper and zuko (``forward`` maps latent to data, so it is the inverse map)::

        forward (latent -> data):  y_b = (x_b - t(x_a)) * exp(-s)
        inverse (data -> latent):  x_b = y_b * exp(s(y_a)) + t(y_a)
        log|det J| = -sum(s)

    The same family of maps from the same identity start; only training differs: the shift
    acts in latent units, where the default's NLL sees ``(x_b - t) * exp(-s)`` and the shift's
    gradient is scaled by ``exp(-s)``. ``realnvp_flow`` uses it (see its docstring for why).

    Args:
        mask: boolean array over the event; ``True`` marks the kept part ``x_a``.
        shift_and_log_scale_fn: conditioner returning ``[N, ..., 2 * b]`` (shift first, then raw
            log-scale, split along the last axis) or a pair ``(shift, log_scale)``.
        log_scale_clamp: ``c`` above (default 5.0); ``None`` disables the clamp.
        shift_clamp: ``k`` above (default ``None``: the shift is not bounded).
        normalizing: write the map in the data -> latent direction (above).
        fade_outside: ``B``: the coupling fades to the identity where a kept coordinate leaves
            ``[-B, B]`` (see :class:`Coupling`); default ``None``, no fading.
        context_shape: ``[c]`` for a conditional coupling (see :class:`Coupling`).
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
        shift_clamp: float | None = None,
        normalizing: bool = False,
        fade_outside: float | None = None,
        context_shape: Sequence[int] | None = None,
        dtype: tf.DType | str = tf.float32,
        validate_args: bool = False,
        name: str = "affine_coupling",
    ) -> None:
        parameters = dict(locals())
        for what in ("log_scale_clamp", "shift_clamp"):
            if parameters[what] is not None and not parameters[what] > 0:
                raise ValueError(f"{what} must be positive or None, got {parameters[what]}")
        self.log_scale_clamp = log_scale_clamp
        self.shift_clamp = shift_clamp
        self.normalizing = bool(normalizing)
        super().__init__(
            mask, shift_and_log_scale_fn, context_shape=context_shape,
            fade_outside=fade_outside, dtype=dtype, is_constant_jacobian=False,
            validate_args=validate_args, parameters=parameters, name=name,
        )

    def _constrain(self, params):
        shift, log_scale = params
        c = self.log_scale_clamp
        if c is not None:
            log_scale = tf.tanh(log_scale * (1.0 / c)) * c  # a multiply is cheaper than a divide
        k = self.shift_clamp
        if k is not None:
            shift = tf.tanh(shift * (1.0 / k)) * k
        return [shift, log_scale]

    def _transform(self, x_b, params):
        shift, log_scale = params
        if self.normalizing:
            return (x_b - shift) * tf.exp(-log_scale)
        return x_b * tf.exp(log_scale) + shift

    def _inverse_transform(self, y_b, params):
        shift, log_scale = params
        if self.normalizing:
            return y_b * tf.exp(log_scale) + shift
        return (y_b - shift) * tf.exp(-log_scale)

    def _log_det(self, x, params):
        log_det = self._sum_event(params[1])
        return -log_det if self.normalizing else log_det


TransformFn = Callable[[list[tf.Tensor]], tfb.Bijector]


class TransformCoupling(Coupling):
    """A coupling whose elementwise map is any TFP bijector built from the parameters.

    Maths (``g_theta`` an elementwise, scalar TFP bijector; ``theta = conditioner(x_a)``)::

        y_a = x_a                       x_a = y_a
        y_b = g_theta(x_b)              x_b = g_theta^{-1}(y_b)
        log|det J| = sum over x_b of log|g_theta'(x_b)|

    ``transform_fn(params)`` receives the conditioner's ``num_params`` outputs, each shaped like
    ``x_b`` (``[*batch, *b_shape]``), and returns the bijector ``g_theta``, e.g. TFP's
    ``tfb.RationalQuadraticSpline`` (see :func:`rational_quadratic_spline`). This is TFP's
    ``bijector_fn`` and distrax's inner bijector: a new elementwise map needs no new coupling
    class. With a masking (checkerboard) partition the kept entries are passed through
    unchanged whatever the map does at them.

    Args:
        mask: boolean array over the event; ``True`` marks the kept part ``x_a``.
        conditioner: returns ``[N, ..., num_params * b]`` (split along the last axis) or a
            sequence of ``num_params`` tensors ``[N, *b_shape]``.
        transform_fn: ``list of num_params tensors -> elementwise tfb.Bijector``.
        num_params: parameters per transformed entry.
        context_shape: ``[c]`` for a conditional coupling (see :class:`Coupling`).
        dtype: float dtype of the flow.
        validate_args: also check event shapes known only at run time.
        name: bijector name.

    Example:
        >>> import numpy as np, tensorflow as tf, tensorflow_probability as tfp
        >>> from tfp_coupling import TransformCoupling, masks, nets
        >>> shift = lambda params: tfp.bijectors.Shift(params[0])   # NICE, written as a map
        >>> b = TransformCoupling(masks.half_mask(4), nets.MLP([8], output_shape=[2]), shift, 1)
        >>> x = tf.random.normal([3, 4])
        >>> bool(np.allclose(b.inverse(b.forward(x)), x))
        True
    """

    def __init__(
        self,
        mask,
        conditioner: Conditioner,
        transform_fn: TransformFn,
        num_params: int,
        *,
        context_shape: Sequence[int] | None = None,
        dtype: tf.DType | str = tf.float32,
        validate_args: bool = False,
        name: str = "transform_coupling",
    ) -> None:
        if not callable(transform_fn):
            raise TypeError(f"transform_fn must be callable (parameters -> tfb.Bijector), got "
                            f"{type(transform_fn).__name__}")
        if int(num_params) < 1:
            raise ValueError(f"num_params must be >= 1, got {num_params}")
        self.transform_fn = transform_fn
        self.num_params = int(num_params)
        super().__init__(
            mask, conditioner, context_shape=context_shape, dtype=dtype,
            is_constant_jacobian=False, validate_args=validate_args, parameters=dict(locals()),
            name=name,
        )

    def _elementwise(self, x_a: tf.Tensor, context: tf.Tensor | None) -> tfb.Bijector:
        return self.transform_fn(self._run_conditioner(x_a, context))

    def _keep_entries(self, x_b: tf.Tensor, out_b: tf.Tensor, ldj: tf.Tensor):
        """The map's output and summed log-det, with kept entries passed through."""
        # A constant-Jacobian map (tfb.Shift, tfb.Scale) returns an unbatched log-det.
        ldj = tf.broadcast_to(ldj, tf.shape(x_b))
        if self.partition.splits_by_masking:
            keep = tf.constant(self.partition.keep)
            out_b = tf.where(keep, x_b, out_b)
            ldj = tf.where(keep, tf.zeros_like(ldj), ldj)
        return out_b, self._sum_event(ldj)

    def _forward_parts(self, x_a, x_b, context=None):
        g = self._elementwise(x_a, context)
        return self._keep_entries(x_b, g.forward(x_b), g.forward_log_det_jacobian(x_b, 0))

    def _inverse_parts(self, y_a, y_b, context=None):
        g = self._elementwise(y_a, context)
        return self._keep_entries(y_b, g.inverse(y_b), g.inverse_log_det_jacobian(y_b, 0))

    def _forward_log_det_jacobian(self, x, context=None):
        x = self._check_input(x, "x")
        return self._forward_parts(*self.partition.split(x), context)[1]

    def _inverse_log_det_jacobian(self, y, context=None):
        y = self._check_input(y, "y")
        return self._inverse_parts(*self.partition.split(y), context)[1]


def rational_quadratic_spline(num_bins: int = 8, bound: float = 5.0,
                              min_width: float = 1e-3, min_slope: float = 1e-3) -> TransformFn:
    """A ``transform_fn`` for :class:`TransformCoupling`: TFP's monotonic rational-quadratic
    spline (Durkan et al., 2019) on ``[-bound, bound]``, the identity outside.

    Takes ``3 * num_bins - 1`` parameters per entry (``num_bins`` widths, ``num_bins`` heights,
    ``num_bins - 1`` inner knot slopes) and maps them as::

        widths  = min_width + (2 bound - num_bins min_width) softmax(raw_w)   (same for heights)
        slopes  = min_slope + softplus(raw_s + c),   softplus(c) = 1 - min_slope

    so all-zero parameters (a zero-initialised conditioner) give equal bins and unit slopes:
    the identity map, as for the additive and affine couplings.

    Example:
        >>> import numpy as np, tensorflow as tf
        >>> from tfp_coupling import TransformCoupling, masks, nets
        >>> from tfp_coupling.bijectors import rational_quadratic_spline
        >>> b = TransformCoupling(masks.half_mask(4), nets.MLP([8], output_shape=[2 * 23]),
        ...                       rational_quadratic_spline(8), num_params=23)
        >>> x = tf.random.normal([3, 4])
        >>> bool(np.allclose(b.forward(x), x))   # identity at the start
        True

    References:
        Durkan, Bekasovs, Murray, Papamakarios. Neural Spline Flows. NeurIPS 2019.
    """
    if int(num_bins) < 2:
        raise ValueError(f"num_bins must be >= 2, got {num_bins}")
    if not bound > 0 or not 0 < min_width * num_bins < 2 * bound or not min_slope > 0:
        raise ValueError(f"need bound > 0, 0 < num_bins * min_width < 2 * bound and "
                         f"min_slope > 0; got bound={bound}, min_width={min_width}, "
                         f"min_slope={min_slope}")
    k = int(num_bins)
    slope_shift = math.log(math.expm1(1.0 - min_slope))

    def transform_fn(params: list[tf.Tensor]) -> tfb.Bijector:
        raw = tf.stack(params, axis=-1)
        dtype = raw.dtype
        raw_w, raw_h, raw_s = tf.split(raw, [k, k, k - 1], axis=-1)
        span = tf.constant(2.0 * bound - k * min_width, dtype)

        def bins(r):
            return tf.constant(min_width, dtype) + span * tf.math.softmax(r, axis=-1)

        slopes = tf.constant(min_slope, dtype) + tf.math.softplus(
            raw_s + tf.constant(slope_shift, dtype))
        return tfb.RationalQuadraticSpline(bins(raw_w), bins(raw_h), slopes,
                                           range_min=tf.constant(-bound, dtype))

    transform_fn.num_params = 3 * k - 1
    return transform_fn


def _is_keras_layer(obj) -> bool:
    return isinstance(obj, keras.layers.Layer)
