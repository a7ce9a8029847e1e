"""Conditioner networks: Keras layers that map the kept part of an event to coupling parameters.

Any Keras layer or callable with the contract ``[N, *a_shape] -> [N, *output_shape]`` can be a
conditioner; these are the defaults the flow builders use. Their last layer is zero-initialised,
so a new coupling is the identity and training starts from the base distribution.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import keras

__all__ = ["MLP"]


@keras.saving.register_keras_serializable(package="tfp_coupling")
class MLP(keras.layers.Layer):
    """A dense conditioner: flatten, hidden ``Dense`` layers, a zero-initialised output layer.

    Maths: ``out = reshape(W_L relu(... relu(W_1 flatten(x) + b_1) ...) + b_L, output_shape)``
    with ``W_L = 0, b_L = 0`` at initialisation (``zero_init=True``).

    Args:
        hidden_units: widths of the hidden layers, e.g. ``[64, 64]``.
        output_shape: shape of the output per example, e.g. ``[2 * d_b]`` for an affine coupling
            on a vector (shift and log-scale), or ``[H, W, 2 * C]`` for an image.
        activation: hidden activation (any Keras activation name).
        zero_init: zero-initialise the output layer so the coupling starts as the identity.
        **kwargs: passed to ``keras.layers.Layer`` (``name``, ``dtype`` policy).

    Example:
        >>> import numpy as np
        >>> from tfp_coupling.nets import MLP
        >>> net = MLP([16, 16], output_shape=[6])
        >>> out = net(np.ones((4, 3), "float32"))
        >>> out.shape, float(abs(out).max())
        (TensorShape([4, 6]), 0.0)
    """

    def __init__(
        self,
        hidden_units: Sequence[int],
        output_shape: Sequence[int] | int,
        activation: str = "relu",
        zero_init: bool = True,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if isinstance(output_shape, int):
            output_shape = [output_shape]
        self.hidden_units = [int(u) for u in hidden_units]
        self.output_shape_ = tuple(int(d) for d in output_shape)
        self.activation = activation
        self.zero_init = bool(zero_init)
        if any(u < 1 for u in self.hidden_units) or any(d < 1 for d in self.output_shape_):
            raise ValueError(f"hidden_units and output_shape must be positive, got "
                             f"{self.hidden_units} and {list(self.output_shape_)}")
        self.flatten = keras.layers.Flatten(dtype=self.dtype_policy)
        self.hidden = [
            keras.layers.Dense(u, activation=activation, dtype=self.dtype_policy,
                               name=f"hidden_{i}")
            for i, u in enumerate(self.hidden_units)
        ]
        init = "zeros" if self.zero_init else "glorot_uniform"
        self.out = keras.layers.Dense(
            math.prod(self.output_shape_), kernel_initializer=init, bias_initializer="zeros",
            dtype=self.dtype_policy, name="out",
        )
        self.reshape = keras.layers.Reshape(self.output_shape_, dtype=self.dtype_policy)

    def build(self, input_shape) -> None:
        shape = self.flatten.compute_output_shape(input_shape)
        self.flatten.build(input_shape)
        for layer in self.hidden:
            layer.build(shape)
            shape = layer.compute_output_shape(shape)
        self.out.build(shape)
        self.reshape.build(self.out.compute_output_shape(shape))
        self.built = True

    def call(self, inputs):
        h = self.flatten(inputs)
        for layer in self.hidden:
            h = layer(h)
        return self.reshape(self.out(h))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], *self.output_shape_)

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "hidden_units": self.hidden_units,
            "output_shape": list(self.output_shape_),
            "activation": self.activation,
            "zero_init": self.zero_init,
        }
