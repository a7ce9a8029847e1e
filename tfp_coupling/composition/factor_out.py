"""Multi-scale factoring out: an inner bijector acts on the first channels, the rest pass."""

from __future__ import annotations

from collections.abc import Sequence

import tensorflow as tf
import tensorflow_probability as tfp

from tfp_coupling.bijectors.base import FlowBijector
from tfp_coupling.composition import fused

__all__ = ["FactorOut"]


class FactorOut(FlowBijector):
    """Applies ``inner`` to the first ``k`` channels and leaves the other channels unchanged.

    Maths (channels last; ``x_1 = x[..., :k]``, ``x_2 = x[..., k:]``)::

        y = concat(inner.forward(x_1), x_2)         x = concat(inner.inverse(y_1), y_2)
        log|det J| = log|det J_inner(x_1)|

    This is RealNVP's multi-scale factoring out (section 3.6): in the data -> latent direction
    (``inverse``) the channels ``k:`` are "factored out", they go straight to the standard Normal
    base distribution, and every later step of the flow (``inner``) acts only on the kept
    channels ``:k``. Nesting ``FactorOut`` gives the multi-scale stack. ``inner`` must keep the
    event shape ``(..., k)`` (it may squeeze inside, as long as it unsqueezes again); it may be
    any TFP bijector, and chains of tfp-coupling bijectors inside it are walked with fused calls.

    Args:
        event_shape: event shape ``(..., C)``, channels last.
        inner: bijector on events of shape ``(..., k)``.
        num_kept: ``k``, the number of leading channels ``inner`` acts on (default ``C // 2``).
        dtype: float dtype of the flow.
        validate_args: also check event shapes known only at run time.
        name: bijector name.

    Example:
        >>> import tensorflow as tf
        >>> from tfp_coupling import Rescaling
        >>> from tfp_coupling.composition import FactorOut
        >>> b = FactorOut([2, 2, 4], Rescaling([2, 2, 2], initial_log_scale=1.0))
        >>> y, ldj = b.forward_and_log_det(tf.ones([1, 2, 2, 4]))
        >>> [round(float(v), 3) for v in y[0, 0, 0]], float(ldj[0])
        ([2.718, 2.718, 1.0, 1.0], 8.0)

    References:
        Dinh, Sohl-Dickstein, Bengio. Density estimation using Real NVP. ICLR 2017.
    """

    def __init__(
        self,
        event_shape: Sequence[int],
        inner: tfp.bijectors.Bijector,
        *,
        num_kept: int | None = None,
        dtype: tf.DType | str = tf.float32,
        validate_args: bool = False,
        name: str = "factor_out",
    ) -> None:
        parameters = dict(locals())
        shape = [int(d) for d in event_shape]
        if not shape:
            raise ValueError("event_shape must have at least one axis (channels last)")
        c = shape[-1]
        k = c // 2 if num_kept is None else int(num_kept)
        if not 0 < k < c:
            raise ValueError(f"num_kept must be in [1, {c - 1}] for {c} channels, got {k}")
        if not isinstance(inner, tfp.bijectors.Bijector):
            raise TypeError(f"inner must be a TFP bijector, got {type(inner).__name__}")
        self.inner = inner
        self.num_kept = k
        self.inner_event_shape = (*shape[:-1], k)
        inner_out = tf.TensorShape(inner.forward_event_shape(self.inner_event_shape))
        if inner_out.is_fully_defined() and tuple(inner_out) != self.inner_event_shape:
            raise ValueError(f"inner must keep the event shape {list(self.inner_event_shape)} of "
                             f"the kept channels; it maps it to {inner_out.as_list()}")
        super().__init__(
            event_shape=shape, dtype=dtype, is_constant_jacobian=False,
            validate_args=validate_args, parameters=parameters, name=name,
        )

    @property
    def keras_layers(self) -> list:
        return fused.collect_keras_layers(self.inner)

    @property
    def is_conditional(self) -> bool:
        """Whether ``inner`` takes a ``context`` (passed on to it)."""
        return bool(getattr(self.inner, "is_conditional", False))

    def _apply(self, x: tf.Tensor, forward: bool, context) -> tuple[tf.Tensor, tf.Tensor]:
        k = self.num_kept
        walk = fused.forward_and_log_det if forward else fused.inverse_and_log_det
        y_1, ldj = walk(self.inner, x[..., :k], len(self.inner_event_shape), context=context)
        return tf.concat([y_1, x[..., k:]], axis=-1), ldj

    def _forward_and_log_det(self, x, context=None):
        return self._apply(x, forward=True, context=context)

    def _inverse_and_log_det(self, y, context=None):
        return self._apply(y, forward=False, context=context)
