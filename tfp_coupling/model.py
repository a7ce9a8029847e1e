"""``FlowModel``: a normalizing flow as a Keras 3 model that trains with ``fit``."""

from __future__ import annotations

from collections.abc import Sequence

import keras
import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from tfp_coupling import fused

tfb = tfp.bijectors
tfd = tfp.distributions

__all__ = ["FlowModel"]


@keras.saving.register_keras_serializable(package="tfp_coupling")
class FlowModel(keras.Model):
    """A flow ``x = f(z)``, ``z ~ N(0, I)``, trained by maximum likelihood with ``model.fit``.

    Maths::

        log p(x) = log N(f^{-1}(x); 0, I) + log|det d f^{-1}(x) / dx|

    ``model(x)`` returns ``log p(x)`` per example; the training loss is the mean negative
    log-likelihood in nats, so ``model.fit(x)`` needs no targets. The log-likelihood is computed
    with one fused inverse pass (one conditioner call per coupling, see :mod:`tfp_coupling.fused`).

    Attributes:
        bijector: the TFP bijector ``f`` mapping base samples to data (a ``tfp_coupling.Chain``
            for the built-in builders; any TFP bijector works).
        distribution: ``tfd.TransformedDistribution(N(0, I), bijector)``; its ``log_prob`` equals
            ``model.log_prob`` (computed by TFP's generic path instead of the fused one).
        flow_layers: the Keras layers owning the flow's weights (conditioners, scales). The model
            tracks them, so ``trainable_variables``, ``fit``, ``save`` and checkpoints see every
            weight.

    The base distribution and every log-det stay in ``flow_dtype`` (float32 by default) even
    under a mixed-precision policy: conditioners compute in float16/bfloat16 and their outputs
    are cast back.

    Args:
        bijector: the flow, base -> data.
        event_shape: shape of one example, e.g. ``[2]`` or ``[28, 28, 1]``.
        flow_layers: Keras layers holding the weights; found in ``bijector`` if omitted.
        flow_dtype: float dtype of data, base distribution and log-dets.
        flow_config: how a builder made this flow (``{"builder": name, **kwargs}``), used by
            ``get_config``/``from_config`` to rebuild it when loading a ``.keras`` file.
        dequantize: the data are integer-valued (e.g. 8-bit pixels): in training, add uniform
            noise ``u ~ U[0, 1)`` to each value, so that the flow's density on the continuous
            values lower-bounds the probability of the discrete ones.
        report_bits_per_dim: also report ``bits_per_dim = nll / (D ln 2)`` (``D`` the event size),
            the figure image-flow papers report.

    Example:
        >>> import numpy as np
        >>> import tfp_coupling as tc
        >>> model = tc.realnvp_flow(event_shape=[2], num_couplings=2, hidden_units=[16])
        >>> model.compile(optimizer="adam")
        >>> x = np.random.default_rng(0).normal(size=(256, 2)).astype("float32")
        >>> history = model.fit(x, batch_size=64, epochs=1, verbose=0)
        >>> model.log_prob(x[:3]).shape, model.sample(5, seed=1).shape
        (TensorShape([3]), TensorShape([5, 2]))
    """

    def __init__(
        self,
        bijector: tfb.Bijector,
        event_shape: Sequence[int],
        *,
        flow_layers: Sequence[keras.layers.Layer] | None = None,
        flow_dtype: tf.DType | str = "float32",
        flow_config: dict | None = None,
        dequantize: bool = False,
        report_bits_per_dim: bool = False,
        **kwargs,
    ) -> None:
        flow_dtype = tf.as_dtype(flow_dtype)
        if not flow_dtype.is_floating:
            raise TypeError(f"flow_dtype must be a float dtype, got {flow_dtype.name}")
        # The model itself computes in the flow dtype: Keras must not cast data to float16.
        kwargs.setdefault("dtype", flow_dtype.name)
        super().__init__(**kwargs)
        self.event_shape = tuple(int(d) for d in event_shape)
        self.flow_dtype = flow_dtype
        self.flow_config = dict(flow_config) if flow_config is not None else None
        self.dequantize = bool(dequantize)
        self.report_bits_per_dim = bool(report_bits_per_dim)
        self.noise_seed = keras.random.SeedGenerator(0)
        layers = list(flow_layers) if flow_layers is not None else fused.collect_keras_layers(
            bijector)
        self.flow_layers = layers
        # Not a Keras layer: hold it outside Keras/TF tracking; its weights live in flow_layers.
        self.__dict__["_flow_bijector"] = bijector
        base = tfd.Sample(
            tfd.Normal(tf.zeros([], flow_dtype), tf.ones([], flow_dtype)),
            sample_shape=self.event_shape,
        )
        self.__dict__["_base"] = base
        self.__dict__["_distribution"] = tfd.TransformedDistribution(base, bijector)
        # Create every weight now, eagerly, so fit/save/load see a built model.
        self.log_prob(tf.zeros((1, *self.event_shape), flow_dtype))
        self.built = True

    @property
    def bijector(self) -> tfb.Bijector:
        return self._flow_bijector

    @property
    def base_distribution(self) -> tfd.Distribution:
        return self._base

    @property
    def distribution(self) -> tfd.TransformedDistribution:
        return self._distribution

    def _as_input(self, x) -> tf.Tensor:
        if isinstance(x, np.ndarray | float | int | list):
            x = np.asarray(x)
            if x.dtype.kind not in "fiu":
                raise TypeError(f"{self.name}: data must be numeric, got dtype {x.dtype}")
            x = x.astype(self.flow_dtype.as_numpy_dtype)
        x = tf.convert_to_tensor(x)
        if x.dtype != self.flow_dtype:
            if not (x.dtype.is_floating or x.dtype.is_integer):
                raise TypeError(f"{self.name}: data must be numeric, got dtype {x.dtype.name}")
            x = tf.cast(x, self.flow_dtype)
        rank = len(self.event_shape)
        if x.shape.rank is not None:
            given = x.shape.as_list()[max(x.shape.rank - rank, 0):]
            if x.shape.rank < rank or any(
                    g is not None and g != e for g, e in zip(given, self.event_shape, strict=True)):
                raise ValueError(
                    f"{self.name}: data has shape {x.shape.as_list()}; expected "
                    f"[batch, {', '.join(map(str, self.event_shape))}] "
                    f"(event shape {list(self.event_shape)})"
                )
        return x

    def log_prob(self, x) -> tf.Tensor:
        """``log p(x)`` per example, in nats, in ``flow_dtype``."""
        x = self._as_input(x)
        z, ildj = fused.inverse_and_log_det(self.bijector, x, len(self.event_shape))
        return self._base.log_prob(z) + ildj

    def call(self, x, training: bool = False):
        if training and self.dequantize:
            x = self._as_input(x)
            x = x + keras.random.uniform(tf.shape(x), dtype=x.dtype, seed=self.noise_seed)
        return self.log_prob(x)

    @property
    def event_size(self) -> int:
        """Number of dimensions ``D`` of one example."""
        return int(np.prod(self.event_shape))

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """Mean negative log-likelihood (nats per example), plus any layer losses."""
        nll = -y_pred
        if sample_weight is not None:
            w = tf.cast(tf.reshape(sample_weight, tf.shape(nll)), nll.dtype)
            loss = tf.reduce_sum(nll * w) / tf.reduce_sum(w)
        else:
            loss = tf.reduce_mean(nll)
        if self.losses:
            loss = loss + tf.cast(tf.add_n(self.losses), loss.dtype)
        return loss

    def sample(self, n: int, temperature: float = 1.0, seed: int | None = None) -> tf.Tensor:
        """Draws ``n`` samples ``f(T * z)``, ``z ~ N(0, I)``, with temperature ``T``.

        An integer ``seed`` makes the draw reproducible (stateless sampling).
        """
        shape = tf.concat([tf.reshape(tf.cast(n, tf.int32), [1]),
                           tf.constant(self.event_shape, tf.int32)], axis=0)
        if seed is None:
            z = tf.random.normal(shape, dtype=self.flow_dtype)
        else:
            z = tf.random.stateless_normal(shape, seed=[int(seed), 0], dtype=self.flow_dtype)
        z = z * tf.cast(temperature, self.flow_dtype)
        return fused.forward_and_log_det(self.bijector, z, len(self.event_shape))[0]

    def forward(self, z) -> tf.Tensor:
        """Maps base points to data: ``x = f(z)``."""
        z = self._as_input(z)
        return fused.forward_and_log_det(self.bijector, z, len(self.event_shape))[0]

    def inverse(self, x) -> tf.Tensor:
        """Maps data to base points: ``z = f^{-1}(x)``."""
        x = self._as_input(x)
        return fused.inverse_and_log_det(self.bijector, x, len(self.event_shape))[0]

    def get_config(self) -> dict:
        if self.flow_config is None:
            raise NotImplementedError(
                "This FlowModel was built from a custom bijector; only flows made by a "
                "tfp_coupling builder (realnvp_flow, nice_flow, ...) can be saved as .keras. "
                "Save weights with model.save_weights instead."
            )
        return {"name": self.name, "flow_config": self.flow_config}

    @classmethod
    def from_config(cls, config: dict) -> FlowModel:
        from tfp_coupling import flows

        flow_config = dict(config["flow_config"])
        builder = flows.get_builder(flow_config.pop("builder"))
        return builder(**flow_config, name=config.get("name"))
