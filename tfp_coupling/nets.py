"""Conditioner networks: Keras layers that map the kept part of an event to coupling parameters.

Any Keras layer or callable with the contract ``[N, *a_shape] -> [N, *output_shape]`` can be a
conditioner; these are the defaults the flow builders use. Their last layer is zero-initialised,
so a new coupling is the identity and training starts from the base distribution, unless asked
to start some outputs random (``MLP``'s ``zero_init=False`` or ``random_outputs``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import keras
import numpy as np
import tensorflow as tf

from tfp_coupling.bijectors.actnorm import DataInitializedParams

__all__ = ["MLP", "SMALL_DATA_ROWS", "AutoMLP", "FlatMLP", "ResNet", "conditioner_policy"]

# Below this many training rows an AutoMLP takes tanh units and starts at the identity.
SMALL_DATA_ROWS = 2000


def conditioner_policy(flow_dtype: tf.DType) -> str | None:
    """The dtype policy of a flow's conditioners: ``"float64"`` for float64 flows, else None.

    None leaves them on the global policy, so that float32 flows run their conditioners under
    mixed precision when it is set; a float64 flow keeps every computation in float64.
    """
    return flow_dtype.name if flow_dtype == tf.float64 else None


@keras.saving.register_keras_serializable(package="tfp_coupling")
class MLP(keras.layers.Layer):
    """A dense conditioner: flatten, hidden ``Dense`` layers, a zero-initialised output layer.

    Maths: ``out = reshape(W_L relu(... relu(W_1 flatten(x) + b_1) ...) + b_L, output_shape)``
    with ``W_L = 0, b_L = 0`` at initialisation (``zero_init=True``); with ``sine_scale`` the
    first ``relu`` is ``sin`` on the first ``round(sine_fraction * units)`` of its units.

    Hidden weights and biases start uniform in ``±1/sqrt(fan_in)`` (PyTorch's ``Linear``
    default). Random biases matter: with zero biases every first-layer ReLU has its kink at
    ``x = 0``, so on a low-dimensional ``x_a`` (one coordinate, for 2-D data) the untrained
    network is piecewise linear with a single kink, and the flow fits markedly worse (two moons:
    0.714 ± 0.260 against 0.408 ± 0.023 nats over 3 seeds, ``benchmarks/fit_ablation.py``).

    Args:
        hidden_units: widths of the hidden layers, e.g. ``[64, 64]``.
        output_shape: shape of the output per example, e.g. ``[2 * d_b]`` for an affine coupling
            on a vector (shift and log-scale), or ``[H, W, 2 * C]`` for an image.
        activation: hidden activation (any Keras activation name).
        zero_init: zero-initialise the output layer so the coupling starts as the identity;
            ``False`` initialises it like the hidden layers.
        random_outputs: with ``zero_init``, the first ``random_outputs`` entries of the
            output's last axis start like the hidden layers all the same (the rest at zero).
            An affine coupling's shifts come first: passing their number starts the coupling
            at a random shift with log-scale 0, a map of constant volume.
        sine_scale: if given, the first hidden layer's units (its first ``sine_fraction``
            of them) are ``sin(W_1 x + b_1)`` with
            ``W_1`` and ``b_1`` drawn uniform in ``±sine_scale/sqrt(fan_in)``: trainable
            Fourier features (Tancik et al. 2020, Sitzmann et al. 2020). On a conditioner that
            sees one coordinate they give the network the high-frequency functions that ReLU
            units reach only slowly (NICE on rings); on wider inputs (tables, 6-D data) they
            fit worse (``benchmarks/README.md``).
        sine_fraction: with ``sine_scale``, the share of the first layer's units that are sine
            units (the first ``round(sine_fraction * hidden_units[0])``, at least one); the
            others take ``activation``. The whole first layer is drawn at ``sine_scale``.
            Half sine units keep what ReLU units fit well and add the periodic features
            (RealNVP on circles, ``benchmarks/README.md``).
        dropout: rate of a ``Dropout`` after every hidden layer, active only in training
            (``model.fit``), so ``log_prob``, ``sample`` and the exported flow stay
            deterministic. A coupling is a bijection for every dropout draw; in training each
            step sees one random conditioner. A regulariser for small tables.
        **kwargs: passed to ``keras.layers.Layer`` (``name``, ``dtype`` policy).

    Example:
        >>> import numpy as np
        >>> from tfp_coupling.nets import MLP
        >>> net = MLP([16, 16], output_shape=[6])
        >>> out = net(np.ones((4, 3), "float32"))
        >>> out.shape, float(np.abs(out).max())
        (TensorShape([4, 6]), 0.0)
    """

    def __init__(
        self,
        hidden_units: Sequence[int],
        output_shape: Sequence[int] | int,
        activation: str = "relu",
        zero_init: bool = True,
        random_outputs: int = 0,
        dropout: float = 0.0,
        sine_scale: float | None = None,
        sine_fraction: float = 1.0,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if isinstance(output_shape, int):
            output_shape = [output_shape]
        self.hidden_units = [int(u) for u in hidden_units]
        self.output_shape_ = tuple(int(d) for d in output_shape)
        self.activation = activation
        self.zero_init = bool(zero_init)
        self.random_outputs = int(random_outputs)
        self.dropout = float(dropout)
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if any(u < 1 for u in self.hidden_units) or any(d < 1 for d in self.output_shape_):
            raise ValueError(f"hidden_units and output_shape must be positive, got "
                             f"{self.hidden_units} and {list(self.output_shape_)}")
        self.sine_scale = None if sine_scale is None else float(sine_scale)
        if self.sine_scale is not None and not (self.sine_scale > 0 and
                                                math.isfinite(self.sine_scale)):
            raise ValueError(f"sine_scale must be a positive number or None, got {sine_scale}")
        if self.sine_scale is not None and not self.hidden_units:
            raise ValueError("sine_scale needs at least one hidden layer")
        self.sine_fraction = float(sine_fraction)
        if not 0.0 < self.sine_fraction <= 1.0:
            raise ValueError(f"sine_fraction must be in (0, 1], got {sine_fraction}")
        # How many of the first layer's units are sine units (the first ones).
        self._sines = (max(1, round(self.sine_fraction * self.hidden_units[0]))
                       if self.sine_scale is not None else 0)
        if not 0 <= self.random_outputs <= self.output_shape_[-1]:
            raise ValueError(f"random_outputs must be in [0, {self.output_shape_[-1]}] (the "
                             f"output's last axis), got {self.random_outputs}")
        self.flatten = keras.layers.Flatten(dtype=self.dtype_policy)
        sine = self.sine_scale is not None
        self.hidden = [
            keras.layers.Dense(u, activation="linear" if sine and i == 0 else activation,
                               dtype=self.dtype_policy, name=f"hidden_{i}",
                               kernel_initializer=_fan_in_uniform(
                                   self.sine_scale if sine and i == 0 else 1.0))
            for i, u in enumerate(self.hidden_units)
        ]
        self.drop = [_Dropout(self.dropout, dtype=self.dtype_policy, name=f"dropout_{i}")
                     for i in range(len(self.hidden_units) if self.dropout else 0)]
        self.out = keras.layers.Dense(
            math.prod(self.output_shape_),
            kernel_initializer="zeros" if self.zero_init else _fan_in_uniform(),
            dtype=self.dtype_policy, name="out",
        )
        self.reshape = keras.layers.Reshape(self.output_shape_, dtype=self.dtype_policy)

    def build(self, input_shape) -> None:
        shape = self.flatten.compute_output_shape(input_shape)
        self.flatten.build(input_shape)
        for i, layer in enumerate(self.hidden):
            limit = 1.0 / math.sqrt(shape[-1])  # the bias initialiser needs the fan-in
            if i == 0 and self.sine_scale is not None:
                limit *= self.sine_scale
            layer.bias_initializer = keras.initializers.RandomUniform(-limit, limit)
            layer.build(shape)
            shape = layer.compute_output_shape(shape)
        limit = 1.0 / math.sqrt(shape[-1])
        if not self.zero_init:
            self.out.bias_initializer = keras.initializers.RandomUniform(-limit, limit)
        self.out.build(shape)
        if self.zero_init and self.random_outputs:
            self._draw_leading_outputs(limit)
        self.reshape.build(self.out.compute_output_shape(shape))
        self.built = True

    def _draw_leading_outputs(self, limit: float) -> None:
        """Draws the output weights of the first ``random_outputs`` entries of the last axis."""
        # Output j of the flattened layer is entry j % last of the last axis.
        leading = np.arange(math.prod(self.output_shape_)) % self.output_shape_[-1]
        leading = leading < self.random_outputs
        for weight in (self.out.kernel, self.out.bias):
            drawn = keras.random.uniform(weight.shape, -limit, limit, dtype=weight.dtype)
            weight.assign(keras.ops.where(leading, drawn, keras.ops.zeros_like(drawn)))

    def call(self, inputs, training=None):
        h = self.flatten(inputs)
        for i, layer in enumerate(self.hidden):
            h = layer(h)
            if i == 0 and self._sines:
                h = self._sine_units(h)
            else:
                h = self._activate(h)
            if self.drop:
                h = self.drop[i](h, training=training)
        return self.reshape(self.out(h))

    def _activate(self, h):
        return h  # the Dense layers apply the activation

    def _sine_units(self, h):
        """The first layer's units: ``sin`` on the first ``_sines``, the activation on the rest
        (applied here: under ``sine_scale`` that layer's ``Dense`` is linear)."""
        if self._sines == h.shape[-1]:
            return keras.ops.sin(h)
        rest = h[..., self._sines:]
        return keras.ops.concatenate([keras.ops.sin(h[..., :self._sines]),
                                      self._activate_rest(rest)], axis=-1)

    def _activate_rest(self, h):
        return keras.activations.get(self.activation)(h)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], *self.output_shape_)

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "hidden_units": self.hidden_units,
            "output_shape": list(self.output_shape_),
            "activation": self.activation,
            "zero_init": self.zero_init,
            "random_outputs": self.random_outputs,
            "dropout": self.dropout,
            "sine_scale": self.sine_scale,
            "sine_fraction": self.sine_fraction,
        }


@keras.saving.register_keras_serializable(package="tfp_coupling")
class AutoMLP(MLP, DataInitializedParams):
    """An :class:`MLP` whose hidden units and start are chosen by the size of its training data.

    With ``activation="auto"`` the hidden units are ``tanh`` if the data it is first
    initialised with (:func:`tfp_coupling.initialize_from_data`, which ``FlowModel.fit`` runs
    on its first call with up to 4096 training rows) has fewer than ``SMALL_DATA_ROWS`` (2000)
    rows, and ``relu`` otherwise; with ``small_data_identity`` the output layer is also set to
    zero there, so that the coupling starts as the identity whatever ``random_outputs`` drew.
    Before that initialisation the layer computes ReLU units from its drawn start.

    Why: on a few hundred or thousand rows bounded units and a start at the identity keep a
    flow from extrapolating far beyond the training rows (a whitened flow then starts as the
    Gaussian fit, which model selection can keep), while on 8,000 rows ReLU units fit sharp
    densities better (``benchmarks/README.md``, "Units chosen by the number of rows"). The
    choice is the non-trainable weight ``bounded`` (1.0: tanh; only with ``activation="auto"``),
    saved with the model, so a reloaded or resumed model keeps it; the units are
    ``where(bounded, tanh(z), relu(z))``, one traced graph. With ``sine_scale`` and
    ``small_data_sines=False`` small data also turn the first layer's sine units into the chosen
    units (weight ``sines_on``), that layer redrawn as without sine units (its draw divided by
    ``sine_scale``): sine units fit curved 2-D densities from thousands of rows, but on a few
    hundred rows they cost held-out fit (``benchmarks/README.md``).

    Example:
        >>> import numpy as np
        >>> import tfp_coupling as tc
        >>> from tfp_coupling.nets import AutoMLP
        >>> net = AutoMLP([8], output_shape=[2], random_outputs=1)
        >>> x = np.ones((4, 3), "float32")
        >>> float(np.abs(net(x)).max()) > 0  # the drawn start: a random first output
        True
        >>> net.initialize_from(np.zeros((300, 3), "float32"))  # 300 rows: small data
        >>> float(net.bounded.numpy()), float(np.abs(net(x)).max())  # tanh, identity start
        (1.0, 0.0)
    """

    def __init__(
        self,
        hidden_units: Sequence[int],
        output_shape: Sequence[int] | int,
        activation: str = "auto",
        small_data_identity: bool = True,
        zero_init: bool = True,
        random_outputs: int = 0,
        dropout: float = 0.0,
        sine_scale: float | None = None,
        sine_fraction: float = 1.0,
        small_data_sines: bool = True,
        **kwargs,
    ) -> None:
        super().__init__(hidden_units, output_shape,
                         activation="linear" if activation == "auto" else activation,
                         zero_init=zero_init, random_outputs=random_outputs, dropout=dropout,
                         sine_scale=sine_scale, sine_fraction=sine_fraction, **kwargs)
        self.activation = activation
        self.small_data_identity = bool(small_data_identity)
        self.small_data_sines = bool(small_data_sines)
        # The choice of units, a weight so that checkpoints and .keras files restore it; none
        # when the units are given.
        self.bounded = self.add_weight(shape=(), initializer="zeros", name="bounded",
                                       trainable=False) if activation == "auto" else None
        # 1.0 while the first layer's sine units are on; none when small data keep them.
        self.sines_on = self.add_weight(
            shape=(), initializer="ones", name="sines_on", trainable=False,
        ) if self._sines and not self.small_data_sines else None

    def initialize_from(self, y: tf.Tensor) -> None:
        """Chooses the units (and the start) from the number of rows of ``y`` (eager)."""
        self._require_eager()
        small = int(y.shape[0]) < SMALL_DATA_ROWS
        if self.activation == "auto":
            self.bounded.assign(1.0 if small else 0.0)
        if small and self.small_data_identity:
            for weight in (self.out.kernel, self.out.bias):
                weight.assign(keras.ops.zeros_like(weight))
        if small and self.sines_on is not None:
            # Drawn in +-sine_scale/sqrt(fan_in): divided by the scale, the first layer is the
            # plain +-1/sqrt(fan_in) draw a net without sine units gets.
            first = self.hidden[0]
            for weight in (first.kernel, first.bias):
                weight.assign(weight / self.sine_scale)
            self.sines_on.assign(0.0)
        self.initialized.assign(1.0)

    def call(self, inputs, training=None):
        self.initialize_if_pending(inputs)
        return super().call(inputs, training=training)

    def _activate(self, h):
        if self.activation != "auto":
            return h
        return keras.ops.where(self.bounded > 0.5, keras.ops.tanh(h), keras.ops.relu(h))

    def _activate_rest(self, h):
        return self._activate(h) if self.activation == "auto" else super()._activate_rest(h)

    def _sine_units(self, h):
        if self.sines_on is None:
            return super()._sine_units(h)
        return keras.ops.where(self.sines_on > 0.5, super()._sine_units(h),
                               self._activate_rest(h))

    def get_config(self) -> dict:
        return {**super().get_config(), "activation": self.activation,
                "small_data_identity": self.small_data_identity,
                "small_data_sines": self.small_data_sines}


class _Dropout(keras.layers.Dropout):
    """``keras.layers.Dropout`` whose random state is saved with the model's weights.

    Keras saves no seed-generator state, so a fit resumed from a ``.keras`` file or a
    checkpoint would draw other dropout masks than the uninterrupted fit.
    """

    def save_own_variables(self, store) -> None:
        store["0"] = keras.ops.convert_to_numpy(self.seed_generator.state)

    def load_own_variables(self, store) -> None:
        self.seed_generator.state.assign(store["0"])


@keras.saving.register_keras_serializable(package="tfp_coupling")
class ResNet(keras.layers.Layer):
    """A convolutional conditioner for images: 3x3 convolutions with residual blocks.

    Maths (``conv`` a ``kernel_size`` x ``kernel_size`` "same" convolution)::

        h_0 = conv_in(x)                                   [N, H, W, hidden_channels]
        h_k = r * (h_{k-1} + conv_k2(act(conv_k1(act(h_{k-1})))))   k = 1 .. num_blocks
        out = conv_out(act(h_K))                           [N, H, W, output_channels]

    with ``r = 1/sqrt(2)`` if ``scale_residuals`` else 1. ``conv_out`` is zero-initialised
    (``zero_init=True``), so a new coupling is the identity. With He-initialised convolutions
    each unscaled block doubles the variance of ``h``: after 8 blocks its activations are 16x
    those of ``h_0``, Adam's first step (every output weight moves by the learning rate) gives
    every coupling a large shift, and a deep multi-scale flow's NLL went to inf after one step at
    lr 1e-4 (``benchmarks/README.md``, training memory). ``r`` keeps the variance constant.
    It maps ``[N, H, W, C_a]`` to ``[N, H, W, output_channels]``; for a coupling use
    ``output_channels = num_params * C_b`` (``2 * C_b`` for an affine coupling: shift, then
    log-scale). With a checkerboard mask the coupling feeds it the masked image (``C_a = C``);
    with a channel mask the kept channels. Sub-layers follow this layer's dtype policy.

    Args:
        hidden_channels: width of the hidden feature maps.
        num_blocks: number of residual blocks (0 allowed: two convolutions in total).
        output_channels: channels of the output.
        kernel_size: odd convolution size (3 in the RealNVP paper).
        activation: activation name (any Keras activation).
        zero_init: zero-initialise the output convolution.
        scale_residuals: multiply each block's sum by ``1/sqrt(2)`` (off for layers saved
            before it existed).
        **kwargs: passed to ``keras.layers.Layer`` (``name``, ``dtype`` policy).

    Example:
        >>> import numpy as np
        >>> from tfp_coupling.nets import ResNet
        >>> net = ResNet(hidden_channels=8, num_blocks=1, output_channels=2)
        >>> out = net(np.ones((2, 8, 8, 1), "float32"))
        >>> out.shape, float(np.abs(out).max())
        (TensorShape([2, 8, 8, 2]), 0.0)

    References:
        Dinh, Sohl-Dickstein, Bengio. Density estimation using Real NVP. ICLR 2017, section 4.1.
    """

    def __init__(
        self,
        hidden_channels: int,
        num_blocks: int,
        output_channels: int,
        kernel_size: int = 3,
        activation: str = "relu",
        zero_init: bool = True,
        scale_residuals: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.scale_residuals = bool(scale_residuals)
        self.hidden_channels = int(hidden_channels)
        self.num_blocks = int(num_blocks)
        self.output_channels = int(output_channels)
        self.kernel_size = int(kernel_size)
        self.activation = activation
        self.zero_init = bool(zero_init)
        if self.hidden_channels < 1 or self.output_channels < 1 or self.num_blocks < 0:
            raise ValueError(
                f"hidden_channels and output_channels must be >= 1 and num_blocks >= 0, got "
                f"{self.hidden_channels}, {self.output_channels}, {self.num_blocks}")
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be a positive odd integer, got {kernel_size}")
        self.act = keras.layers.Activation(activation, dtype=self.dtype_policy)

        def conv(filters: int, name: str, init: str = "he_normal") -> keras.layers.Conv2D:
            return keras.layers.Conv2D(filters, self.kernel_size, padding="same",
                                       kernel_initializer=init, dtype=self.dtype_policy,
                                       name=name)

        self.conv_in = conv(self.hidden_channels, "conv_in")
        self.blocks = [
            (conv(self.hidden_channels, f"block_{i}_a"), conv(self.hidden_channels, f"block_{i}_b"))
            for i in range(self.num_blocks)
        ]
        self.conv_out = conv(self.output_channels, "conv_out",
                             "zeros" if self.zero_init else "glorot_uniform")

    def build(self, input_shape) -> None:
        if len(input_shape) != 4:
            raise ValueError(f"ResNet expects images [N, H, W, C], got shape {input_shape}")
        self.conv_in.build(input_shape)
        hidden = (*input_shape[:3], self.hidden_channels)
        for a, b in self.blocks:
            a.build(hidden)
            b.build(hidden)
        self.conv_out.build(hidden)
        self.built = True

    def call(self, inputs):
        h = self.conv_in(inputs)
        for a, b in self.blocks:
            h = h + b(self.act(a(self.act(h))))
            if self.scale_residuals:
                h = h * tf.cast(math.sqrt(0.5), h.dtype)
        return self.conv_out(self.act(h))

    def compute_output_shape(self, input_shape):
        return (*input_shape[:3], self.output_channels)

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "hidden_channels": self.hidden_channels,
            "num_blocks": self.num_blocks,
            "output_channels": self.output_channels,
            "kernel_size": self.kernel_size,
            "activation": self.activation,
            "zero_init": self.zero_init,
            "scale_residuals": self.scale_residuals,
        }


class FlatMLP(keras.layers.Layer):
    """An MLP conditioner on the kept entries of a flattened image, for flat masks.

    A mask over the flattened pixel index (NICE's odd/even split) varies over space, so the
    coupling applies it multiplicatively and passes the whole masked image. This layer gathers
    the ``D_a`` kept entries, runs ``MLP(hidden_units) -> num_params * D_b`` on them (the paper's
    network size) and scatters each parameter back to the image shape (zeros on kept entries).
    """

    def __init__(self, mask, hidden_units, num_params: int, activation: str, **kwargs) -> None:
        super().__init__(**kwargs)
        keep = np.asarray(tf.get_static_value(tf.convert_to_tensor(mask)), bool)
        self.image_shape = keep.shape
        flat = keep.reshape(-1)
        self.idx_a = np.flatnonzero(flat)
        idx_b = np.flatnonzero(~flat)
        self.merge_order = np.argsort(np.concatenate([self.idx_a, idx_b]))
        self.num_params = int(num_params)
        self.mlp = MLP(hidden_units, [self.num_params * len(idx_b)], activation=activation,
                            dtype=self.dtype_policy, name="mlp")

    def call(self, inputs):
        flat = tf.reshape(inputs, [-1, len(self.merge_order)])
        out = self.mlp(tf.gather(flat, self.idx_a, axis=1))
        zeros = tf.zeros([tf.shape(out)[0], len(self.idx_a)], out.dtype)
        params = [tf.reshape(tf.gather(tf.concat([zeros, p], axis=1), self.merge_order, axis=1),
                             [-1, *self.image_shape])
                  for p in tf.split(out, self.num_params, axis=-1)]
        return tf.concat(params, axis=-1)


def _fan_in_uniform(scale: float = 1.0) -> keras.initializers.Initializer:
    """``U(-scale/sqrt(fan_in), scale/sqrt(fan_in))`` kernels; ``scale=1`` is PyTorch's
    ``Linear``.

    A new instance per layer: a Keras initializer draws its seed once, when it is made, so one
    shared instance would give every layer of a shape the same weights.
    """
    return keras.initializers.VarianceScaling(scale**2 / 3.0, "fan_in", "uniform")
