"""NICE's learned diagonal rescaling, with its weight in a Keras layer."""

from __future__ import annotations

from collections.abc import Sequence

import keras
import tensorflow as tf

from tfp_coupling.bijectors.base import FlowBijector

__all__ = ["LogScale", "Rescaling"]


@keras.saving.register_keras_serializable(package="tfp_coupling")
class LogScale(keras.layers.Layer):
    """A Keras layer that owns one trainable log-scale vector ``s`` over an event shape.

    It exists so that the scale is a Keras variable a ``keras.Model`` tracks, trains and saves
    (Keras 3 does not track plain ``tf.Variable`` objects held inside a TFP bijector).
    Calling it returns ``s`` itself.
    """

    def __init__(self, event_shape: Sequence[int], initial_value: float = 0.0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.event_shape = tuple(int(d) for d in event_shape)
        self.initial_value = float(initial_value)
        self.log_scale = self.add_weight(
            shape=self.event_shape,
            initializer=keras.initializers.Constant(self.initial_value),
            name="log_scale",
            trainable=True,
        )
        self.built = True

    def call(self, inputs=None):
        return self.log_scale

    def get_config(self) -> dict:
        return {**super().get_config(), "event_shape": list(self.event_shape),
                "initial_value": self.initial_value}


class Rescaling(FlowBijector):
    """NICE's diagonal scaling layer with a learned log-scale (Dinh et al., 2014, section 3.3).

    Maths::

        y = x * exp(s)          x = y * exp(-s)          log|det J| = sum(s)

    ``s`` has the event shape and is a trainable Keras weight (``scale_layer.log_scale``), so a
    flow of additive couplings followed by this layer can change volume.

    Args:
        event_shape: shape of one event, e.g. ``[784]`` or ``[28, 28, 1]``.
        initial_log_scale: starting value of every entry of ``s`` (0: identity).
        scale_layer: an existing :class:`LogScale` to share instead of creating one.
        dtype: float dtype of the flow.
        validate_args: also check event shapes known only at run time.
        name: bijector name.

    Example:
        >>> import tensorflow as tf
        >>> from tfp_coupling import Rescaling
        >>> b = Rescaling([3], initial_log_scale=0.5)
        >>> float(b.forward_log_det_jacobian(tf.zeros([3]), event_ndims=1))
        1.5
    """

    def __init__(
        self,
        event_shape: Sequence[int],
        *,
        initial_log_scale: float = 0.0,
        scale_layer: LogScale | None = None,
        dtype: tf.DType | str = tf.float32,
        validate_args: bool = False,
        name: str = "rescaling",
    ) -> None:
        parameters = dict(locals())
        if scale_layer is None:
            scale_layer = LogScale(event_shape, initial_log_scale, dtype=tf.as_dtype(dtype).name,
                                   name=f"{name}_log_scale")
        elif tuple(scale_layer.event_shape) != tuple(event_shape):
            raise ValueError(f"scale_layer has event shape {list(scale_layer.event_shape)}, "
                             f"expected {list(event_shape)}")
        self.scale_layer = scale_layer
        # copy(), == and parameters then refer to these weights, not to fresh ones.
        parameters["scale_layer"] = scale_layer
        super().__init__(
            event_shape=event_shape, dtype=dtype, is_constant_jacobian=True,
            validate_args=validate_args, parameters=parameters, name=name,
        )

    @property
    def keras_layers(self) -> list:
        return [self.scale_layer]

    def _log_scale(self) -> tf.Tensor:
        return tf.cast(self.scale_layer.log_scale, self._flow_dtype)

    def _log_det(self, x: tf.Tensor) -> tf.Tensor:
        s = tf.reduce_sum(self._log_scale())
        return tf.fill(tf.shape(x)[: -len(self._event_shape)], s)

    def _forward_and_log_det(self, x):
        return x * tf.exp(self._log_scale()), self._log_det(x)

    def _inverse_and_log_det(self, y):
        return y * tf.exp(-self._log_scale()), -self._log_det(y)
