"""What every tfp-coupling bijector shares: no result caching, fused calls, input checks.

**Why no caching.** TFP caches ``forward``/``inverse`` results keyed on the input tensor. That is
right for bijectors without weights, and wrong for ours: a conditioner's weights change under
``fit``, ``assign`` or weight loading, and a cached eager result would then be stale. Caching also
hands back the *original* tensor for ``inverse(forward(x))``, which has no gradient path to the
weights. :class:`FlowBijector` therefore computes every call afresh; the cost of TFP's
``inverse`` + ``inverse_log_det_jacobian`` pair is avoided instead by the fused
``forward_and_log_det`` / ``inverse_and_log_det`` methods, which evaluate a conditioner once.
"""

from __future__ import annotations

from collections.abc import Sequence

import tensorflow as tf
import tensorflow_probability as tfp
from tensorflow_probability.python.internal import cache_util

tfb = tfp.bijectors

__all__ = ["Chain", "FlowBijector", "UncachedBijectorCache", "check_event_shape"]


class UncachedBijectorCache(cache_util.BijectorCache):
    """A TFP bijector cache that stores nothing: every lookup calls the bijector again."""

    def _lookup(self, input, forward_name, inverse_name, **kwargs):  # noqa: A002
        return getattr(self.bijector, forward_name)(input, **kwargs)

    def _attributes(self, input, fn_name, **kwargs):  # noqa: A002
        return {}


class FlowBijector(tfb.Bijector):
    """Base of tfp-coupling's bijectors: uncached, fused, and checking its input.

    Subclasses implement ``_forward_and_log_det(x)`` and ``_inverse_and_log_det(y)``, each
    returning the output and the log-det of *that* direction summed over the event; the four TFP
    methods are derived from them. Subclasses whose log-det needs less than the full transform
    may override ``_forward_log_det_jacobian`` / ``_inverse_log_det_jacobian``.
    """

    _cache = UncachedBijectorCache()

    def __init__(
        self,
        event_shape: Sequence[int],
        dtype: tf.DType | str,
        is_constant_jacobian: bool,
        validate_args: bool,
        parameters: dict,
        name: str,
        output_event_shape: Sequence[int] | None = None,
    ) -> None:
        self._event_shape = tuple(int(d) for d in event_shape)
        # Event shape of forward's output; equal to event_shape unless a subclass (Squeeze)
        # reshapes the event. It must have the same rank as event_shape.
        self._output_event_shape = (self._event_shape if output_event_shape is None
                                    else tuple(int(d) for d in output_event_shape))
        if len(self._output_event_shape) != len(self._event_shape):
            raise ValueError(f"output_event_shape {list(self._output_event_shape)} must have the "
                             f"rank of event_shape {list(self._event_shape)}")
        self._flow_dtype = tf.as_dtype(dtype)
        super().__init__(
            forward_min_event_ndims=len(self._event_shape),
            is_constant_jacobian=is_constant_jacobian,
            validate_args=validate_args,
            dtype=None,  # checked by _check_input with a message that names both dtypes
            parameters=parameters,
            name=name,
        )

    @property
    def event_shape(self) -> tuple[int, ...]:
        """The event shape of ``forward``'s input (``x``)."""
        return self._event_shape

    @property
    def output_event_shape(self) -> tuple[int, ...]:
        """The event shape of ``forward``'s output (``y``); ``event_shape`` unless overridden."""
        return self._output_event_shape

    def _forward_event_shape(self, input_shape):
        return self._swap_event_shape(input_shape, self._event_shape, self._output_event_shape)

    def _inverse_event_shape(self, output_shape):
        return self._swap_event_shape(output_shape, self._output_event_shape, self._event_shape)

    def _forward_event_shape_tensor(self, input_shape):
        return self._swap_event_shape_tensor(input_shape, self._output_event_shape)

    def _inverse_event_shape_tensor(self, output_shape):
        return self._swap_event_shape_tensor(output_shape, self._event_shape)

    @staticmethod
    def _swap_event_shape(shape, given, result):
        if given == result:
            return shape
        shape = tf.TensorShape(shape)
        if shape.rank is None:
            return tf.TensorShape(None)
        return shape[: shape.rank - len(given)].concatenate(result)

    def _swap_event_shape_tensor(self, shape, result):
        shape = tf.convert_to_tensor(shape, dtype_hint=tf.int32)
        return tf.concat([shape[: tf.size(shape) - len(result)],
                          tf.constant(result, shape.dtype)], axis=0)

    @property
    def keras_layers(self) -> list:
        """Keras layers that own this bijector's weights; a ``FlowModel`` tracks them."""
        return []

    def forward_and_log_det(self, x: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """``(forward(x), forward_log_det_jacobian(x))`` with one evaluation of the transform."""
        with tf.name_scope(self.name):
            x = self._check_input(x, "x")
            return self._forward_and_log_det(x)

    def inverse_and_log_det(self, y: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """``(inverse(y), inverse_log_det_jacobian(y))`` with one evaluation of the transform."""
        with tf.name_scope(self.name):
            y = self._check_input(y, "y")
            return self._inverse_and_log_det(y)

    def _forward(self, x):
        return self._forward_and_log_det(self._check_input(x, "x"))[0]

    def _inverse(self, y):
        return self._inverse_and_log_det(self._check_input(y, "y"))[0]

    def _forward_log_det_jacobian(self, x):
        return self._forward_and_log_det(self._check_input(x, "x"))[1]

    def _inverse_log_det_jacobian(self, y):
        return self._inverse_and_log_det(self._check_input(y, "y"))[1]

    def _check_input(self, x: tf.Tensor, what: str) -> tf.Tensor:
        """Raises on a wrong dtype or event shape, naming expected and given.

        ``what == "y"`` checks against ``output_event_shape``, anything else against
        ``event_shape``. Static mismatches always raise ``TypeError``/``ValueError``; shapes only
        known at run time are asserted when ``validate_args=True``.
        """
        if isinstance(x, tf.Tensor | tf.Variable) and x.dtype != self._flow_dtype:
            raise TypeError(
                f"{self.name}: {what} has dtype {x.dtype.name}, expected {self._flow_dtype.name}"
            )
        x = tf.convert_to_tensor(x, dtype=self._flow_dtype, name=what)
        expected = list(self._output_event_shape if what == "y" else self._event_shape)
        rank = len(expected)
        if check_event_shape(x.shape, expected, self.name, what):
            return x
        if self.validate_args:
            shape = tf.shape(x)
            with tf.control_dependencies([
                tf.debugging.assert_equal(
                    shape[-rank:], tf.constant(expected, shape.dtype),
                    message=f"{self.name}: {what} event shape differs from expected {expected}",
                )
            ]):
                x = tf.identity(x)
        return x


def check_event_shape(shape: tf.TensorShape, expected: Sequence[int], owner: str,
                      what: str) -> bool:
    """Raises ``ValueError`` naming both shapes if ``shape`` cannot end in ``expected``.

    Checks what is known statically (rank and trailing dimensions); returns ``True`` when the
    event dimensions are all known, so no run-time check is needed. Shared by the bijectors'
    input checks and ``FlowModel``'s, so both speak the same language.

    Example:
        >>> import tensorflow as tf
        >>> check_event_shape(tf.TensorShape([8, 4]), [4], "flow", "x")
        True
    """
    expected = [int(d) for d in expected]
    rank = len(expected)
    if shape.rank is None:
        return False
    if shape.rank < rank:
        raise ValueError(
            f"{owner}: {what} has shape {shape.as_list()} (rank {shape.rank}); "
            f"expected [..., {', '.join(map(str, expected))}] (event rank {rank})"
        )
    given = shape.as_list()[shape.rank - rank:]
    if any(g is not None and g != e for g, e in zip(given, expected, strict=True)):
        raise ValueError(
            f"{owner}: {what} has event shape {given} (full shape {shape.as_list()}); "
            f"expected event shape {expected}"
        )
    return None not in given


class Chain(tfb.Chain):
    """``tfb.Chain`` without TFP's result cache, for chains holding weighted bijectors.

    ``tfb.Chain`` caches ``forward``/``inverse`` by input tensor itself, so even with uncached
    links a chain would return stale values for the same eager tensor after a weight change. This
    subclass computes afresh; it is otherwise ``tfb.Chain`` (same order: the last bijector in the
    list is applied first in ``forward``).
    """

    _cache = UncachedBijectorCache()
