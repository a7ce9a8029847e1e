"""``FlowModel``: a normalizing flow as a Keras 3 model that trains with ``fit``."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence

import keras
import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from tfp_coupling import dequantization
from tfp_coupling.bijectors.actnorm import data_initialized_layers, initialize_from_data
from tfp_coupling.bijectors.base import check_context_given, check_event_shape
from tfp_coupling.callbacks import StopOnNonFiniteLoss
from tfp_coupling.composition import fused
from tfp_coupling.composition.invertible_backprop import (
    inverse_and_log_det as inverse_and_log_det_rebuilt,
)
from tfp_coupling.model import inputs, keras_workarounds, registry
from tfp_coupling.model.export import export_flow
from tfp_coupling.model.sampling import base_noise

_NONFINITE_DATA = "tfp_coupling: batch contains NaN or Inf values"

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
    with one fused inverse pass (one conditioner call per coupling, see
    :mod:`tfp_coupling.composition.fused`).

    Attributes:
        bijector: the TFP bijector ``f`` mapping base samples to data (a ``tfp_coupling.Chain``
            for the built-in builders; any TFP bijector works).
        distribution: ``tfd.TransformedDistribution(N(0, I), bijector)``; its ``log_prob`` equals
            ``model.log_prob`` (TFP's generic path; inside ``tf.function`` it costs the same, one
            conditioner call per coupling, eagerly about three).
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
        dequantize: the data are integer-valued (e.g. 8-bit pixels): ``fit`` and ``evaluate`` add
            uniform noise ``u ~ U[0, 1)`` to each value, so that the flow's density on the
            continuous values lower-bounds the probability of the discrete ones.
        report_bits_per_dim: also report ``bits_per_dim = nll / (D ln 2)`` (``D`` the event size),
            the figure image-flow papers report.
        context_shape: ``[c]`` for a conditional flow ``p(x | context)`` (its couplings built
            with the same ``context_shape``). Then ``log_prob(x, context)``,
            ``sample(n, context=...)``, ``forward``/``inverse`` take a context, ``model((x, c))``
            returns ``log p(x | c)``, and ``fit(x, context)`` trains on pairs (the context is
            Keras' ``y``: ``fit(x, c)``, ``fit((x, c))``, ``validation_data=(x_val, c_val)`` and a
            dataset of ``(x, c)`` batches all work).
        invertible_backprop: train with memory-saving gradients: ``log_prob``'s gradient
            rebuilds each step's input from its output with the exact inverse and re-runs the
            step, instead of storing every step's activations
            (:mod:`tfp_coupling.composition.invertible_backprop`). Training memory then stays
            about one coupling's activations whatever the depth, for one extra conditioner
            call per coupling (steps 1.2-1.35x slower in ``benchmarks/memory.py``); values and
            gradients are those of the ordinary pass (to round-off). Also settable by
            ``compile(invertible_backprop=...)``; saved with the model's config.

    Conditional example:
        >>> import numpy as np
        >>> import tfp_coupling as tc
        >>> model = tc.realnvp_flow([2], num_couplings=2, hidden_units=[16], context_shape=[1])
        >>> model.compile(optimizer="adam")
        >>> rng = np.random.default_rng(0)
        >>> x, c = rng.normal(size=(64, 2)), rng.integers(0, 2, (64, 1))
        >>> history = model.fit(x, c, batch_size=32, epochs=1, verbose=0)
        >>> model.log_prob(x[:3], c[:3]).shape, model.sample(5, context=[1.0], seed=1).shape
        (TensorShape([3]), TensorShape([5, 2]))

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
        context_shape: Sequence[int] | None = None,
        invertible_backprop: bool = False,
        **kwargs,
    ) -> None:
        flow_dtype = tf.as_dtype(flow_dtype)
        if not flow_dtype.is_floating:
            raise TypeError(f"flow_dtype must be a float dtype, got {flow_dtype.name}")
        # The model itself computes in the flow dtype: Keras must not cast data to float16.
        kwargs.setdefault("dtype", flow_dtype.name)
        super().__init__(**kwargs)
        self.event_shape = inputs.strict_shape(event_shape, "event_shape")
        self.context_shape = (None if context_shape is None
                              else inputs.strict_shape(context_shape, "context_shape"))
        self.flow_dtype = flow_dtype
        self.flow_config = dict(flow_config) if flow_config is not None else None
        self.dequantize = bool(dequantize)
        self.report_bits_per_dim = bool(report_bits_per_dim)
        self.invertible_backprop = bool(invertible_backprop)
        self.noise_seed = keras.random.SeedGenerator(0)
        # Reported by fit/evaluate next to the loss (see compute_metrics).
        self.nll_tracker = keras.metrics.Mean(name="nll")
        self.bits_per_dim_tracker = (keras.metrics.Mean(name="bits_per_dim")
                                     if self.report_bits_per_dim else None)
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
        self.log_prob(tf.zeros((1, *self.event_shape), flow_dtype),
                      None if self.context_shape is None
                      else tf.zeros((1, *self.context_shape), flow_dtype))
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
            x = inputs.cast_without_overflow(x, self.flow_dtype, self.name)
        x = tf.convert_to_tensor(x)
        if x.dtype != self.flow_dtype:
            if not (x.dtype.is_floating or x.dtype.is_integer):
                raise TypeError(f"{self.name}: data must be numeric, got dtype {x.dtype.name}")
            x = tf.cast(x, self.flow_dtype)
        check_event_shape(x.shape, self.event_shape, self.name, "data")
        if tf.executing_eagerly() and not isinstance(x, keras.KerasTensor):
            finite = tf.math.is_finite(x)
            if not bool(tf.reduce_all(finite)):
                bad = tf.where(~finite).numpy()
                raise ValueError(
                    f"{self.name}: data contains {len(bad)} NaN or Inf value(s), first at index "
                    f"{bad[0].tolist()}; remove or replace them before computing log_prob"
                )
        return x

    @property
    def is_conditional(self) -> bool:
        """Whether this flow models ``p(x | context)``."""
        return self.context_shape is not None

    def _as_context(self, context, rows=None) -> tf.Tensor | None:
        """The context as a flow-dtype tensor ``[N, c]`` (a ``[c]`` context is broadcast to
        ``rows``); raises if it is missing, unexpected, mis-shaped or not finite."""
        if not check_context_given(self.name, self.context_shape, context):
            return None
        if isinstance(context, np.ndarray | float | int | list):
            context = np.asarray(context)
            if context.dtype.kind not in "fiub":
                raise TypeError(f"{self.name}: context must be numeric, got dtype "
                                f"{context.dtype}")
            context = inputs.cast_without_overflow(context, self.flow_dtype, self.name)
        context = tf.convert_to_tensor(context)
        if context.dtype != self.flow_dtype:
            if not (context.dtype.is_floating or context.dtype.is_integer):
                raise TypeError(f"{self.name}: context must be numeric, got dtype "
                                f"{context.dtype.name}")
            context = tf.cast(context, self.flow_dtype)
        if context.shape.rank == len(self.context_shape) and rows is not None:
            context = tf.broadcast_to(context, tf.concat(
                [tf.reshape(rows, [1]), tf.constant(self.context_shape, tf.int32)], axis=0))
        check_event_shape(context.shape, self.context_shape, self.name, "context")
        if tf.executing_eagerly() and not isinstance(context, keras.KerasTensor):
            if not bool(tf.reduce_all(tf.math.is_finite(context))):
                raise ValueError(f"{self.name}: context contains NaN or Inf values")
        return context

    def log_prob(self, x, context=None) -> tf.Tensor:
        """``log p(x)`` (or ``log p(x | context)``) per example, in nats, in ``flow_dtype``.

        ``context``: ``[N, c]``, or ``[c]`` for the same context for every example.
        """
        x = self._as_input(x)
        context = self._as_context(context, tf.shape(x)[0])
        walk = (inverse_and_log_det_rebuilt if self.invertible_backprop
                else fused.inverse_and_log_det)
        z, ildj = walk(self.bijector, x, len(self.event_shape), context=context)
        # The base N(0, I) log-density in closed form, -|z|^2 / 2 - D log(2 pi) / 2: equal to
        # self._base.log_prob(z) with two elementwise passes over z where TFP's
        # Sample(Normal).log_prob takes about five (and as many in the gradient).
        axes = list(range(-len(self.event_shape), 0))
        return (-0.5 * tf.reduce_sum(tf.square(z), axis=axes)
                - 0.5 * self.event_size * math.log(2.0 * math.pi)) + ildj

    def call(self, x, training: bool = False):
        if self.is_conditional and isinstance(x, tuple | list) and len(x) == 2:
            return self.log_prob(*x)
        return self.log_prob(x)

    def _with_context_as_input(self, data):
        """For a conditional flow, Keras' ``(x, y=context)`` batch becomes ``((x, context),)``,
        so that the model's call sees both."""
        if not self.is_conditional:
            return data
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        if y is None:
            raise ValueError(f"{self.name}: this flow is conditional: fit/evaluate need "
                             f"(x, context) pairs, e.g. model.fit(x, context)")
        return keras.utils.pack_x_y_sample_weight((x, y), None, sample_weight)

    def _dequantized(self, data):
        """The batch with ``u ~ U[0, 1)`` added to ``x`` when ``dequantize`` is on.

        Used by ``fit`` and ``evaluate`` alike, so both report the dequantised likelihood (the
        papers' bits/dim); ``log_prob`` and ``model(x)`` evaluate ``x`` as given.
        """
        if not self.dequantize:
            return data
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        x = self._as_input(x)
        x = x + keras.random.uniform(tf.shape(x), dtype=x.dtype, seed=self.noise_seed)
        return keras.utils.pack_x_y_sample_weight(x, y, sample_weight)


    @property
    def event_size(self) -> int:
        """Number of dimensions ``D`` of one example."""
        return int(np.prod(self.event_shape))

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """Mean negative log-likelihood (nats per example), plus any layer losses.

        Under a ``tf.distribute`` strategy each replica's mean is divided by the number of
        replicas, as Keras does for compiled losses, so that the summed gradients are those of the
        global-batch mean.
        """
        nll = -y_pred
        if sample_weight is not None:
            w = tf.cast(tf.reshape(sample_weight, tf.shape(nll)), nll.dtype)
            loss = tf.reduce_sum(nll * w) / tf.reduce_sum(w)
        else:
            loss = tf.reduce_mean(nll)
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        if replicas > 1:
            loss = loss / tf.cast(replicas, loss.dtype)
        for extra in self.losses:
            loss = loss + tf.cast(self._aggregate_additional_loss(extra), loss.dtype)
        return loss

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        """Updates ``nll`` (nats per example) and, if reported, ``bits_per_dim``.

        ``bits_per_dim = nll / (D ln 2)`` with ``D = event_size``. Both are example-weighted means
        over the epoch, so ``evaluate`` returns ``-mean(log_prob(x))`` over the whole data set.
        """
        nll = -tf.cast(y_pred, tf.float32)
        weight = None
        if sample_weight is not None:
            weight = tf.reshape(tf.cast(sample_weight, tf.float32), tf.shape(nll))
        self.nll_tracker.update_state(nll, sample_weight=weight)
        if self.bits_per_dim_tracker is not None:
            self.bits_per_dim_tracker.update_state(
                dequantization.bits_per_dim(nll, self.event_size), sample_weight=weight)
        return super().compute_metrics(x, y, y_pred, sample_weight=sample_weight)

    # -- training: options, input checks, non-finite guard ---------------------------------------

    def compile(self, optimizer="adam", *args, invertible_backprop: bool | None = None,
                **kwargs) -> None:
        """``keras.Model.compile``; under ``mixed_float16`` the optimizer gets loss scaling.

        The model computes in ``flow_dtype``, so Keras would not see the float16 conditioners and
        would not wrap the optimizer in a ``LossScaleOptimizer``: this method does
        (``auto_scale_loss=False`` turns it off). ``jit_compile=True`` compiles each training step
        with XLA. ``invertible_backprop`` (if given) sets the model's memory-saving training
        mode (see :class:`FlowModel`).
        """
        if invertible_backprop is not None:
            self.invertible_backprop = bool(invertible_backprop)
        super().compile(optimizer, *args, **kwargs)
        self._check_xla_devices()
        if (kwargs.get("auto_scale_loss", True) and self.optimizer is not None
                and not isinstance(self.optimizer, keras.optimizers.LossScaleOptimizer)
                and any(layer.dtype_policy.compute_dtype == "float16"
                        for layer in self.flow_layers)):
            self.optimizer = keras.optimizers.LossScaleOptimizer(
                self.optimizer, name="loss_scale_optimizer")

    def _check_xla_devices(self) -> None:
        """Refuses ``jit_compile=True`` under a strategy mirroring over several CPU devices.

        TensorFlow cannot run such a step: each replica's variables live on their own logical
        CPU, and the compiled step fails at the first batch with "Trying to access resource ...
        located in device CPU:1" (plain Keras models too). Said here, before any training.
        """
        strategy = self.distribute_strategy
        if self.jit_compile is not True or strategy.num_replicas_in_sync < 2:
            return
        devices = strategy.extended.worker_devices  # this worker's replicas
        cpus = [d for d in devices if tf.DeviceSpec.from_string(d).device_type == "CPU"]
        if len(devices) > 1 and len(cpus) == len(devices):
            raise ValueError(
                f"{self.name}: jit_compile=True cannot train under a tf.distribute strategy over "
                f"{len(cpus)} CPU devices (TensorFlow's XLA step cannot reach the variables of "
                f"the other replicas' devices); compile with jit_compile=False here, or mirror "
                f"over GPUs")

    def compile_from_config(self, config: dict) -> None:
        """Recompiles a loaded model (``keras.models.load_model``), optimizer state included."""
        self.compile(**keras.saving.deserialize_keras_object(config))
        if self.optimizer is not None and self.built:
            self.optimizer.build(self.trainable_variables)  # so saved optimizer state can load

    def _finite_batch_guard(self, data):
        """A context in which every op runs after a NaN/Inf assertion on the batch's inputs.

        So a bad batch fails before any variable (weights, optimizer step) changes. XLA drops
        Assert ops: under ``jit_compile`` a NaN batch shows up as a non-finite loss instead,
        which ``StopOnNonFiniteLoss`` reports with its batch.
        """
        if self.jit_compile:
            return contextlib.nullcontext()
        x = keras.utils.unpack_x_y_sample_weight(data)[0]
        checks = [tf.debugging.Assert(tf.reduce_all(tf.math.is_finite(t)), [_NONFINITE_DATA])
                  for t in tf.nest.flatten(x) if t.dtype.is_floating]
        return tf.control_dependencies(checks)

    def train_step(self, data):
        if self.invertible_backprop and any(  # checked when the step is traced
                isinstance(layer, keras.layers.Dropout) and layer.rate > 0
                for layer in self._flatten_layers()):
            raise ValueError(f"{self.name}: invertible_backprop recomputes every conditioner in "
                             f"the backward pass, which would draw another dropout mask than "
                             f"the forward pass: build the flow with dropout=0, or compile "
                             f"with invertible_backprop=False")
        with self._finite_batch_guard(data):
            data = self._with_context_as_input(self._dequantized(data))
            return keras_workarounds.multi_worker_logs(super().train_step(data))

    def test_step(self, data):
        with self._finite_batch_guard(data):
            data = self._with_context_as_input(self._dequantized(data))
            return keras_workarounds.multi_worker_logs(super().test_step(data))

    def _nonfinite_data_error(self, error: tf.errors.InvalidArgumentError,
                              guard: StopOnNonFiniteLoss) -> Exception:
        if _NONFINITE_DATA not in str(error.message):
            return error
        return ValueError(
            f"{self.name}: {guard.where()} contains NaN or Inf values; remove or replace them, "
            f"e.g. dataset.filter(lambda x: tf.reduce_all(tf.math.is_finite(x))) before batching")

    def fit(self, x=None, y=None, batch_size=None, epochs=1, verbose="auto", callbacks=None,
            validation_split=0.0, validation_data=None, **kwargs):
        """``keras.Model.fit`` with input checks and a guard against non-finite losses.

        ``x`` of the wrong event shape, or arrays with NaN/Inf, raise ``ValueError`` before
        training starts; a batch of a dataset holding NaN/Inf raises ``ValueError`` naming the
        batch. Unless ``callbacks`` holds one already, a
        :class:`tfp_coupling.callbacks.StopOnNonFiniteLoss` is added: a NaN/Inf loss raises
        ``NonFiniteLossError`` naming the epoch and batch, before any checkpoint of that epoch
        is written.

        Arrays are fed through a pipeline that shuffles them anew every epoch: Keras' own
        shuffle of arrays repeats one order in every epoch once a global seed is set
        (:func:`tfp_coupling.model.keras_workarounds.reshuffling_dataset`).

        On the first call, layers initialised from data (``ActNorm``, ``TriLAffine``, the
        ``AutoMLP`` conditioners of ``realnvp_flow``'s default) that are not initialised yet
        are set from the first training rows (up to 4096 for vector events,
        512 for images; see :func:`tfp_coupling.initialize_from_data`).
        """
        inputs.check_data(x, self.event_shape, self.name, "x")
        x, y = self._split_pairs(x, y)
        if self.is_conditional:
            inputs.check_data(y, self.context_shape, self.name, "context (y)")
        if any(not layer.is_initialized for layer in data_initialized_layers(self)):
            rows = inputs.initialization_rows(x, self.event_shape, self.name)
            context = None
            if self.is_conditional:
                context = (inputs.initialization_rows(x, self.event_shape, self.name, part=1)
                           if isinstance(x, tf.data.Dataset) else np.asarray(y[:len(rows)]))
            initialize_from_data(self, rows, context=context)
        if validation_data is not None:
            val_x = (validation_data[0] if isinstance(validation_data, tuple | list)
                     else validation_data)
            inputs.check_data(val_x, self.event_shape, self.name, "validation_data")
        if kwargs.get("shuffle", True) is True:  # a fresh permutation per epoch, also seeded
            piped = keras_workarounds.reshuffling_dataset(
                x, y, kwargs.get("sample_weight"), batch_size, validation_split)
            if piped is not None:
                x, validation = piped
                y = batch_size = None
                kwargs.pop("sample_weight", None)
                kwargs["shuffle"] = False  # done by the pipeline (and Keras would warn)
                if validation is not None and validation_data is None:
                    validation_data = validation
                validation_split = 0.0
        guard = None
        if not isinstance(callbacks, keras.callbacks.CallbackList):
            callbacks = list(callbacks or [])
            guard = next((c for c in callbacks if isinstance(c, StopOnNonFiniteLoss)), None)
            if guard is None:
                terminate = any(isinstance(c, keras.callbacks.TerminateOnNaN) for c in callbacks)
                guard = StopOnNonFiniteLoss(raise_error=not terminate)
                callbacks.insert(0, guard)
        try:
            return super().fit(x=x, y=y, batch_size=batch_size, epochs=epochs, verbose=verbose,
                               callbacks=callbacks, validation_split=validation_split,
                               validation_data=validation_data, **kwargs)
        except tf.errors.InvalidArgumentError as e:
            if guard is None:
                raise
            raise self._nonfinite_data_error(e, guard) from None

    def _split_pairs(self, x, y):
        """``fit((x, c))`` as ``fit(x, c)``, for a conditional flow given arrays."""
        if (self.is_conditional and y is None and isinstance(x, tuple | list) and len(x) == 2
                and not isinstance(x, tf.data.Dataset)):
            return x[0], x[1]
        return x, y

    def evaluate(self, x=None, y=None, batch_size=None, verbose="auto", sample_weight=None,
                 steps=None, callbacks=None, return_dict=False, **kwargs):
        """``keras.Model.evaluate`` returning ``loss`` and ``nll`` (and ``bits_per_dim``).

        Both equal ``-mean(log_prob(x))`` over the data (example-weighted); data are checked as
        in ``fit``.
        """
        if kwargs.get("_use_cached_eval_dataset") or isinstance(
                callbacks, keras.callbacks.CallbackList):  # validation inside fit
            return super().evaluate(x=x, y=y, batch_size=batch_size, verbose=verbose,
                                    sample_weight=sample_weight, steps=steps,
                                    callbacks=callbacks, return_dict=return_dict, **kwargs)
        x, y = self._split_pairs(x, y)
        inputs.check_data(x, self.event_shape, self.name, "x")
        if self.is_conditional:
            inputs.check_data(y, self.context_shape, self.name, "context (y)")
        guard = StopOnNonFiniteLoss(raise_error=False)  # here only to know the batch
        callbacks = [*list(callbacks or []), guard]
        try:
            return super().evaluate(x=x, y=y, batch_size=batch_size, verbose=verbose,
                                    sample_weight=sample_weight, steps=steps,
                                    callbacks=callbacks, return_dict=return_dict, **kwargs)
        except tf.errors.InvalidArgumentError as e:
            raise self._nonfinite_data_error(e, guard) from None

    def export(self, filepath, format: str = "tf_saved_model",  # noqa: A002 (Keras's name)
               verbose: bool | None = None, input_signature=None, overwrite: bool = False,
               **kwargs) -> None:
        """Writes a SavedModel with ``log_prob``, ``sample``, ``forward``, ``inverse`` endpoints.

        It loads with ``tf.saved_model.load(filepath)`` without tfp-coupling; see
        :mod:`tfp_coupling.model.export` for the signatures. An existing SavedModel at
        ``filepath`` is replaced only with ``overwrite=True``, and only once the new one is
        complete; any other existing folder content is never deleted.

        Example:
            >>> import tempfile, tensorflow as tf, tfp_coupling as tc
            >>> model = tc.nice_flow(event_shape=[2], num_couplings=2, hidden_units=[8])
            >>> path = tempfile.mkdtemp() + "/flow"
            >>> model.export(path)
            >>> loaded = tf.saved_model.load(path)
            >>> loaded.sample(4, 0.5, 7).shape
            TensorShape([4, 2])
        """
        if format != "tf_saved_model" or input_signature is not None or kwargs:
            raise ValueError(
                f"{self.name}: FlowModel.export writes a TF SavedModel with fixed signatures "
                f"(format='tf_saved_model', no input_signature or other options); got "
                f"format={format!r}, input_signature={input_signature!r}, options {sorted(kwargs)}"
            )
        export_flow(self, filepath, verbose=bool(verbose), overwrite=overwrite)

    def sample(self, n: int, temperature: float = 1.0, seed: int | None = None,
               context=None) -> tf.Tensor:
        """Draws ``n`` samples ``f(T * z)``, ``z ~ N(0, I)``, with temperature ``T``.

        An integer ``seed`` makes the draw reproducible (stateless sampling). ``temperature=0``
        gives ``f(0)`` ``n`` times (the image of the base distribution's mode). A conditional
        flow needs ``context``: ``[c]`` (every draw from ``p(x | c)``) or ``[n, c]`` (one
        context per draw).
        """
        if not tf.is_tensor(n):
            n = inputs.whole_number(n, "n")
        if not tf.is_tensor(temperature) and not (
                isinstance(temperature, int | float | np.number) and math.isfinite(temperature)
                and temperature >= 0):
            raise ValueError(f"{self.name}: temperature must be a finite number >= 0, got "
                             f"{temperature!r}")
        shape = tf.concat([tf.reshape(tf.cast(n, tf.int32), [1]),
                           tf.constant(self.event_shape, tf.int32)], axis=0)
        z = base_noise(shape, self.flow_dtype, None if seed is None else int(seed))
        # A Python number goes straight to the flow dtype (tf.cast would round it to float32).
        temperature = (tf.cast(temperature, self.flow_dtype) if tf.is_tensor(temperature)
                       else tf.constant(temperature, self.flow_dtype))
        z = z * temperature
        context = self._as_context(context, tf.shape(z)[0])
        return fused.forward_and_log_det(self.bijector, z, len(self.event_shape),
                                         context=context)[0]

    def forward(self, z, context=None) -> tf.Tensor:
        """Maps base points to data: ``x = f(z)`` (``f(z; context)`` if conditional)."""
        z = self._as_input(z)
        context = self._as_context(context, tf.shape(z)[0])
        return fused.forward_and_log_det(self.bijector, z, len(self.event_shape),
                                         context=context)[0]

    def inverse(self, x, context=None) -> tf.Tensor:
        """Maps data to base points: ``z = f^{-1}(x)`` (``f^{-1}(x; context)`` if
        conditional)."""
        x = self._as_input(x)
        context = self._as_context(context, tf.shape(x)[0])
        return fused.inverse_and_log_det(self.bijector, x, len(self.event_shape),
                                         context=context)[0]

    def get_config(self) -> dict:
        if self.flow_config is None:
            raise NotImplementedError(
                "This FlowModel was built from a custom bijector; only flows made by a "
                "tfp_coupling builder (realnvp_flow, nice_flow, ...) can be saved as .keras. "
                "Save weights with model.save_weights instead."
            )
        return {"name": self.name, "flow_config": self.flow_config,
                "invertible_backprop": self.invertible_backprop}

    @classmethod
    def from_config(cls, config: dict) -> FlowModel:
        flow_config = dict(config["flow_config"])
        builder = flow_config.pop("builder")
        model = registry.get_builder(builder)(
            **registry.config_with_defaults(builder, flow_config), name=config.get("name"))
        # A training option, not the flow's architecture: the builders do not take it.
        model.invertible_backprop = bool(config.get("invertible_backprop", False))
        return model
