"""Activation normalisation (Glow): a per-channel affine map with data-dependent initialisation."""

from __future__ import annotations

import math
from collections.abc import Sequence

import keras
import numpy as np
import tensorflow as tf

from tfp_coupling.bijectors.base import FlowBijector

__all__ = [
    "ActNorm",
    "ActNormParams",
    "DataInitializedParams",
    "actnorm_layers",
    "data_initialized_layers",
    "initialize_actnorm",
    "initialize_from_data",
]


class DataInitializedParams(keras.layers.Layer):
    """Base of the layers that are set from data before training (ActNorm, TriLAffine, and the
    ``AutoMLP`` conditioners, which choose their units by the number of rows).

    Holds a non-trainable scalar ``initialized`` (0.0 until :meth:`initialize_from` has run,
    then 1.0), saved with the model so a reloaded model is not initialised again, and the
    ``pending_init`` switch that :func:`initialize_from_data` turns on for one eager pass, during
    which the bijector calls :meth:`initialize_from` with the data reaching it.
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.initialized = self.add_weight(shape=(), initializer="zeros", name="initialized",
                                           trainable=False)
        self.pending_init = False

    @property
    def is_initialized(self) -> bool:
        return bool(tf.convert_to_tensor(self.initialized).numpy() > 0.5)

    def initialize_from(self, y: tf.Tensor) -> None:
        """Sets the weights from ``y``, the data on the bijector's output side."""
        raise NotImplementedError

    def initialize_if_pending(self, y: tf.Tensor) -> None:
        """Called by the bijector's inverse with the data reaching it: initialises once."""
        if self.pending_init:
            self.initialize_from(y)
            self.pending_init = False

    def _require_eager(self) -> None:
        if not tf.executing_eagerly():
            raise RuntimeError(f"{self.name}: data-dependent initialisation runs eagerly; call "
                               f"tfp_coupling.initialize_from_data(model, x) outside "
                               f"tf.function")


@keras.saving.register_keras_serializable(package="tfp_coupling")
class ActNormParams(DataInitializedParams):
    """The Keras layer owning one :class:`ActNorm`'s weights.

    Weights: trainable ``log_scale`` and ``bias`` of shape ``[C]``, and the non-trainable
    ``initialized`` flag of :class:`DataInitializedParams`.
    """

    def __init__(self, num_channels: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.num_channels = int(num_channels)
        self.log_scale = self.add_weight(shape=(self.num_channels,), initializer="zeros",
                                         name="log_scale", trainable=True)
        self.bias = self.add_weight(shape=(self.num_channels,), initializer="zeros",
                                    name="bias", trainable=True)
        self.built = True

    def initialize_from(self, y: tf.Tensor, epsilon: float = 1e-6) -> None:
        """Sets ``bias = mean(y)`` and ``log_scale = log(std(y) + eps)`` per channel (eager)."""
        self._require_eager()
        y = tf.reshape(tf.cast(y, tf.float64), [-1, self.num_channels])
        mean = tf.reduce_mean(y, axis=0)
        std = tf.math.reduce_std(y, axis=0)
        self.bias.assign(tf.cast(mean, self.bias.dtype))
        self.log_scale.assign(tf.cast(tf.math.log(std + epsilon), self.log_scale.dtype))
        self.initialized.assign(1.0)

    def call(self, inputs=None):
        return self.log_scale, self.bias

    def get_config(self) -> dict:
        return {**super().get_config(), "num_channels": self.num_channels}


class ActNorm(FlowBijector):
    """Per-channel affine map with learned scale and bias (Kingma and Dhariwal, 2018).

    Maths (``s``, ``b`` of shape ``[C]``, broadcast over the other event axes)::

        y = x * exp(s) + b          x = (y - b) * exp(-s)
        log|det J| = (H * W) * sum(s)        (for an (H, W, C) event; prod of all but the
                                               last event axis in general)

    **Data-dependent initialisation.** ``y`` is the data side: the flow's data -> latent pass
    runs ``inverse``. Glow initialises ``b`` and ``s`` so that this inverse maps the first batch
    to zero mean and unit variance per channel: ``b = mean(y)``, ``s = log(std(y))``.
    :func:`initialize_actnorm` does it for every ``ActNorm`` of a model in one eager
    ``log_prob`` pass (each layer sees the activations that reach it after the earlier layers
    are initialised); the image builders' models call it on the first batch of their first
    ``fit``. Before that, ``s = b = 0`` (the identity) and the bijector is valid in either state.
    The state is the non-trainable weight ``initialized``, saved with the model.

    Args:
        event_shape: event shape, channels last, e.g. ``[28, 28, 1]``.
        params: an existing :class:`ActNormParams` to share instead of creating one.
        dtype: float dtype of the flow.
        validate_args: also check event shapes known only at run time.
        name: bijector name.

    Example:
        >>> import numpy as np, tensorflow as tf
        >>> from tfp_coupling.bijectors import ActNorm
        >>> b = ActNorm([4, 4, 2])
        >>> y = tf.random.normal([8, 4, 4, 2]) * 3.0 + 1.0
        >>> b.params.initialize_from(y)
        >>> x, ildj = b.inverse_and_log_det(y)
        >>> bool(np.allclose(tf.math.reduce_std(x, axis=[0, 1, 2]), 1.0, atol=1e-4))
        True

    References:
        Kingma, Dhariwal. Glow: Generative Flow with Invertible 1x1 Convolutions. NeurIPS 2018.
    """

    def __init__(
        self,
        event_shape: Sequence[int],
        *,
        params: ActNormParams | None = None,
        dtype: tf.DType | str = tf.float32,
        validate_args: bool = False,
        name: str = "actnorm",
    ) -> None:
        parameters = dict(locals())
        shape = [int(d) for d in event_shape]
        if not shape or min(shape) < 1:
            raise ValueError(f"event_shape must be non-empty and positive, got {shape}")
        if params is None:
            params = ActNormParams(shape[-1], dtype=tf.as_dtype(dtype).name, name=f"{name}_params")
        elif params.num_channels != shape[-1]:
            raise ValueError(f"params has {params.num_channels} channels, event shape {shape} "
                             f"has {shape[-1]}")
        self.params = params
        # copy(), == and parameters then refer to these weights, not to fresh ones.
        parameters["params"] = params
        self._positions = math.prod(shape[:-1])
        super().__init__(
            event_shape=shape, dtype=dtype, is_constant_jacobian=True,
            validate_args=validate_args, parameters=parameters, name=name,
        )

    @property
    def keras_layers(self) -> list:
        return [self.params]

    def _scale_bias(self) -> tuple[tf.Tensor, tf.Tensor]:
        return (tf.cast(self.params.log_scale, self._flow_dtype),
                tf.cast(self.params.bias, self._flow_dtype))

    def _log_det(self, x: tf.Tensor, log_scale: tf.Tensor) -> tf.Tensor:
        ldj = self._positions * tf.reduce_sum(log_scale)
        return tf.fill(tf.shape(x)[: -len(self._event_shape)], ldj)

    def _forward_and_log_det(self, x):
        log_scale, bias = self._scale_bias()
        return x * tf.exp(log_scale) + bias, self._log_det(x, log_scale)

    def _inverse_and_log_det(self, y):
        self.params.initialize_if_pending(y)
        log_scale, bias = self._scale_bias()
        return (y - bias) * tf.exp(-log_scale), -self._log_det(y, log_scale)


def actnorm_layers(model) -> list[ActNormParams]:
    """The :class:`ActNormParams` layers of a ``FlowModel`` (or a list of Keras layers)."""
    layers = getattr(model, "flow_layers", model)
    return [layer for layer in layers if isinstance(layer, ActNormParams)]


def data_initialized_layers(model) -> list[DataInitializedParams]:
    """The layers of a ``FlowModel`` (or a list of Keras layers) that are set from data."""
    layers = getattr(model, "flow_layers", model)
    return [layer for layer in layers if isinstance(layer, DataInitializedParams)]


def initialize_from_data(model, x, force: bool = False, seed: int = 0, context=None) -> int:
    """Data-dependent initialisation of every ``ActNorm``, ``TriLAffine`` and ``AutoMLP``.

    Runs one eager ``model.log_prob`` pass over the batch ``x`` in which each not yet initialised
    layer (all of them if ``force``) sets its weights from the activations reaching it: an
    ActNorm maps them to zero mean and unit variance per channel, a TriLAffine whitens them
    (zero mean, identity covariance), an ``AutoMLP`` conditioner chooses its units (and start)
    by their number of rows. If the model dequantises (``model.dequantize``), uniform
    noise is added to ``x`` first, as in training. ``FlowModel.fit`` calls it on its first call;
    it is not meant to run inside ``tf.function``/XLA. ``initialize_actnorm`` is the same
    function under its older name.

    Args:
        model: a ``tfp_coupling.FlowModel``.
        x: a batch of data ``[N, *event_shape]`` (a few hundred examples for ActNorm; a
            TriLAffine estimates a covariance, so more rows than dimensions).
        force: re-initialise layers that are already initialised.
        seed: seed of the dequantisation noise.
        context: the rows' contexts, for a conditional flow.

    Returns:
        The number of layers initialised.

    Example:
        >>> import numpy as np
        >>> import tfp_coupling as tc
        >>> model = tc.realnvp_image_flow([8, 8, 1], num_scales=1, hidden_channels=8)
        >>> x = np.random.default_rng(0).integers(0, 256, (16, 8, 8, 1))
        >>> tc.initialize_actnorm(model, x) > 0
        True
    """
    layers = [layer for layer in data_initialized_layers(model)
              if force or not layer.is_initialized]
    if not layers:
        return 0
    x = np.asarray(x, dtype=model.flow_dtype.as_numpy_dtype)
    if getattr(model, "dequantize", False):
        x = x + np.random.default_rng(seed).uniform(size=x.shape).astype(x.dtype)
    for layer in layers:
        layer.pending_init = True
    try:
        model.log_prob(x) if context is None else model.log_prob(x, context)
    finally:
        missed = [layer.name for layer in layers if layer.pending_init]
        for layer in layers:
            layer.pending_init = False
    if missed:
        raise RuntimeError(f"layers {missed} were not reached by model.log_prob")
    return len(layers)


initialize_actnorm = initialize_from_data
