"""The shared correctness harness every bijector and flow of tfp-coupling goes through.

Import it from any test module in ``tests/`` (pytest puts ``tests/`` on ``sys.path``)::

    from harness import check_bijector, check_flow, check_no_stale, randomize_weights

Typical use for a bijector with Keras weights::

    bij = tc.AffineCoupling(mask, tc.nets.MLP([16], output_shape=[4], dtype="float64"),
                            dtype=tf.float64)
    bij.forward(tf.zeros([1, 4], tf.float64))      # build the conditioner's weights
    randomize_weights(bij.keras_layers, seed=1)   # leave the identity initialisation
    check_bijector(bij, event_shape=[4])          # float64, batch shapes (), (3,), (2, 3)

What :func:`check_bijector` proves, for every batch shape (``x`` has shape
``[*batch, *event_shape]``, ``y`` has ``[*batch, *forward_event_shape(event_shape)]``):

* shapes and dtypes: ``forward``/``inverse`` keep the batch shape and map the event shape as
  ``bijector.forward_event_shape`` says (the identity for shape-preserving bijectors, so a
  ``Squeeze`` works too); both log-dets have exactly the batch shape; everything is in ``dtype``;
* round trips: ``|inverse(forward(x)) - x| <= atol`` and ``|forward(inverse(y)) - y| <= atol``;
* log-dets against autodiff: ``forward_log_det_jacobian(x)`` equals ``log|det dy/dx|`` from
  ``tf.GradientTape.batch_jacobian`` + ``tf.linalg.slogdet`` on the flattened event, and the
  same for ``inverse_log_det_jacobian(y)`` (the Jacobian is taken on a *fresh* tensor,
  ``tf.identity``, since a cached result would hide the graph from the tape);
* ``fldj(x) == -ildj(forward(x))`` and ``ildj(y) == -fldj(inverse(y))``;
* batch independence: example 0 of a batch gives the same values computed alone;
* fused calls: ``tc.fused.forward_and_log_det`` / ``inverse_and_log_det`` (and a
  ``FlowBijector``'s own methods of those names) agree with the separate calls;
* execution regimes: the same values eagerly (every batch shape), inside ``tf.function`` with
  dynamic (``None``) batch dimensions (``graph_batch_shapes``, default the last batch shape: each
  costs a trace) and, with ``check_xla=True``, under ``tf.function(jit_compile=True)``.

The autodiff Jacobians of all batch shapes are computed in one ``batch_jacobian`` per direction
(the examples of every batch shape stacked), since each call costs a ``pfor`` trace.

:func:`check_no_stale` proves that after new weights are assigned the *same* eager tensor gives
the new values (TFP caches results by input tensor). :func:`check_flow` runs
:func:`check_bijector` on a ``FlowModel``'s bijector and checks its log-density
(``log_prob == base.log_prob(inverse) + ildj == distribution.log_prob``), ``sample`` and variable
tracking.

Failures raise ``AssertionError`` naming the bijector, the batch shape, the check, the largest
error and the tolerance. Tolerances are absolute: by default 1e-10 in float64 (round-off, so a
float32 detour of about 1e-8 fails) and 1e-5 in float32 (round trip and log-det). Values of
order 1 are assumed: draw inputs and random weights so that
the outputs stay moderate (e.g. smaller ``scale`` in ``randomize_weights`` for wide events),
or the absolute tolerance measures round-off of large numbers rather than bugs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence

import keras
import numpy as np
import tensorflow as tf

from tfp_coupling import AffineCoupling, fused
from tfp_coupling.bijectors.base import FlowBijector

__all__ = [
    "check_bijector",
    "check_flow",
    "check_no_stale",
    "default_atol",
    "randomize_weights",
]

BatchShapes = Sequence[Sequence[int]]
Inputs = np.ndarray | tf.Tensor | Callable[[tuple[int, ...], np.random.Generator], np.ndarray]

#: Absolute tolerance per dtype used by :func:`check_bijector` and :func:`check_flow` when none
#: is given: round-off for float64, 1e-5 for float32. Small float32 flows with moderate random
#: weights meet it (measured
#: round-trip and log-det errors <= 3e-6 for 3-coupling NICE/RealNVP at event sizes 2 to 64);
#: deep float32 flows may need a larger, justified tolerance.
_DEFAULT_ATOL = {tf.float64: 1e-10, tf.float32: 1e-5}


def default_atol(dtype: tf.DType | str) -> float:
    """The harness's default absolute tolerance for ``dtype`` (1e-5 for float64)."""
    dtype = tf.as_dtype(dtype)
    if dtype not in _DEFAULT_ATOL:
        raise ValueError(f"no default tolerance for dtype {dtype.name}; pass atol explicitly")
    return _DEFAULT_ATOL[dtype]


# --------------------------------------------------------------------------------------------
# Weights


def _layers_of(obj) -> list:
    """Keras layers in ``obj``: a layer/model, a TFP bijector, or an iterable of those."""
    if isinstance(obj, keras.layers.Layer):  # keras.Model is a Layer too
        return [obj]
    if isinstance(obj, FlowBijector) or hasattr(obj, "forward_min_event_ndims"):
        return fused.collect_keras_layers(obj)
    if isinstance(obj, Iterable) and not isinstance(obj, str | bytes):
        layers = []
        for item in obj:
            layers.extend(_layers_of(item))
        return layers
    raise TypeError(f"randomize_weights: expected a Keras layer or model, a TFP bijector or a "
                    f"list of those, got {type(obj).__name__}")


def randomize_weights(obj, seed: int = 0, scale: float = 0.3,
                      trainable_only: bool = False) -> list:
    """Assigns seeded ``N(0, scale^2)`` values to every float variable of ``obj``.

    Use it so that conditioners are *not* at their zero (identity) initialisation: a coupling
    whose last layer is zero is the identity and passes invertibility checks trivially.

    Args:
        obj: a Keras layer or model, a TFP bijector (its Keras layers are found through
            ``tc.fused.collect_keras_layers``, i.e. through Chain/Invert), or a list of
            those. Layers must be built (call the bijector once first).
        seed: seed of the numpy generator; the same seed gives the same weights.
        scale: standard deviation of the values.
        trainable_only: leave non-trainable variables (e.g. an initialisation flag) alone.

    Returns:
        The variables that were assigned (each at most once, in a deterministic order).

    Raises:
        ValueError: if no float variable was found (layers not built yet?).
    """
    rng = np.random.default_rng(seed)
    seen: set[int] = set()
    assigned = []
    for layer in _layers_of(obj):
        variables = layer.trainable_variables if trainable_only else layer.variables
        for v in variables:
            if id(v) in seen:
                continue
            seen.add(id(v))
            dtype = np.dtype(keras.backend.standardize_dtype(v.dtype))
            if dtype.kind != "f":  # seed-generator states, counters, flags
                continue
            v.assign(rng.normal(0.0, scale, size=tuple(v.shape)).astype(dtype))
            assigned.append(v)
    if not assigned:
        raise ValueError("randomize_weights found no float variable to assign; build the layers "
                         "first (e.g. call the bijector once) and pass the layers that own them")
    return assigned


# --------------------------------------------------------------------------------------------
# Helpers


def _max_err(a, b) -> float:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.size == 0:
        return 0.0
    return float(np.max(np.abs(a - b)))


def _assert_close(what: str, actual, expected, atol: float, ctx: str) -> None:
    actual, expected = np.asarray(actual), np.asarray(expected)
    if actual.shape != expected.shape:
        raise AssertionError(f"{ctx}: {what}: shape {list(actual.shape)} != expected "
                             f"{list(expected.shape)}")
    if not np.all(np.isfinite(actual)):
        raise AssertionError(f"{ctx}: {what}: non-finite values {actual}")
    err = _max_err(actual, expected)
    if not err <= atol:
        raise AssertionError(f"{ctx}: {what}: max abs error {err:.3e} > atol {atol:.1e}")


def _assert_shape_dtype(what: str, t: tf.Tensor, shape: Sequence[int], dtype: tf.DType,
                        ctx: str) -> None:
    if list(t.shape) != list(shape):
        raise AssertionError(f"{ctx}: {what} has shape {t.shape.as_list()}, expected "
                             f"{list(shape)}")
    if t.dtype != dtype:
        raise AssertionError(f"{ctx}: {what} has dtype {t.dtype.name}, expected {dtype.name}")


def _draw(inputs: Inputs | None, shape: tuple[int, ...], rng: np.random.Generator,
          dtype: tf.DType) -> tf.Tensor:
    if inputs is None:
        value = rng.normal(size=shape)
    elif callable(inputs):
        value = inputs(shape, rng)
    else:
        value = inputs
    value = np.asarray(value, dtype=dtype.as_numpy_dtype)
    if value.shape != shape:
        raise ValueError(f"inputs have shape {list(value.shape)}, expected {list(shape)}")
    return tf.constant(value)


def _autodiff_log_det(fn: Callable[[tf.Tensor], tf.Tensor], x: tf.Tensor,
                      event_in: Sequence[int], event_out: Sequence[int]) -> tuple[np.ndarray,
                                                                                    np.ndarray]:
    """``log|det d fn(x) / dx|`` per example, by ``batch_jacobian`` + ``slogdet``.

    The event is flattened to ``D`` entries; the batch to ``N`` (1 for an unbatched input).
    Returns ``(log_abs_det, sign)`` with the batch shape of ``x``.
    """
    batch = x.shape[: x.shape.rank - len(event_in)].as_list()
    n = math.prod(batch)
    d_in, d_out = math.prod(event_in), math.prod(event_out)
    # A fresh tensor: a bijector that caches by input would otherwise return a stored result
    # that is not connected to this tape.
    x_flat = tf.identity(tf.reshape(x, [n, d_in]))
    with tf.GradientTape() as tape:
        tape.watch(x_flat)
        y = fn(tf.reshape(x_flat, [n, *event_in]))
        y_flat = tf.reshape(y, [n, d_out])
    jac = tape.batch_jacobian(y_flat, x_flat)
    if jac is None:
        raise AssertionError("autodiff Jacobian is None: the output does not depend on the input "
                             "through the tape (a cached result?)")
    sign, log_abs_det = tf.linalg.slogdet(jac)
    return (np.reshape(log_abs_det.numpy(), batch), np.reshape(sign.numpy(), batch))


def _evaluate(bijector, x: tf.Tensor, y: tf.Tensor, nd_in: int, nd_out: int,
              compositions: bool = True, kw: dict | None = None) -> dict:
    """Every quantity the checks compare, for inputs ``x`` (forward) and ``y`` (inverse).

    ``kw`` (``{"context": c}`` for a conditional bijector) goes to every call.
    """
    kw = kw or {}
    out = {
        "forward(x)": bijector.forward(x, **kw),
        "inverse(y)": bijector.inverse(y, **kw),
        "fldj(x)": bijector.forward_log_det_jacobian(x, event_ndims=nd_in, **kw),
        "ildj(y)": bijector.inverse_log_det_jacobian(y, event_ndims=nd_out, **kw),
    }
    if compositions:
        fwd, inv = out["forward(x)"], out["inverse(y)"]
        out.update({
            "inverse(forward(x))": bijector.inverse(fwd, **kw),
            "forward(inverse(y))": bijector.forward(inv, **kw),
            "ildj(forward(x))": bijector.inverse_log_det_jacobian(fwd, event_ndims=nd_out, **kw),
            "fldj(inverse(y))": bijector.forward_log_det_jacobian(inv, event_ndims=nd_in, **kw),
        })
    fy, fldj = fused.forward_and_log_det(bijector, x, nd_in, **kw)
    ix, ildj = fused.inverse_and_log_det(bijector, y, nd_out, **kw)
    out.update({"fused.forward_and_log_det(x)[0]": fy, "fused.forward_and_log_det(x)[1]": fldj,
                "fused.inverse_and_log_det(y)[0]": ix, "fused.inverse_and_log_det(y)[1]": ildj})
    if isinstance(bijector, FlowBijector):
        my, mldj = bijector.forward_and_log_det(x, **kw)
        mx, mildj = bijector.inverse_and_log_det(y, **kw)
        out.update({"forward_and_log_det(x)[0]": my, "forward_and_log_det(x)[1]": mldj,
                    "inverse_and_log_det(y)[0]": mx, "inverse_and_log_det(y)[1]": mildj})
    return out


# --------------------------------------------------------------------------------------------
# Bijectors


def check_bijector(
    bijector,
    event_shape: Sequence[int],
    dtype: tf.DType | str = tf.float64,
    batch_shapes: BatchShapes = ((), (3,), (2, 3)),
    atol: float | None = None,
    inputs: Inputs | None = None,
    inverse_inputs: Inputs | None = None,
    check_xla: bool = False,
    graph_batch_shapes: BatchShapes | None = None,
    seed: int = 0,
    context: np.ndarray | tf.Tensor | None = None,
) -> None:
    """Proves a bijector correct on ``event_shape`` (see the module docstring for the list).

    Args:
        bijector: any TFP bijector (tfp-coupling's or a composition with TFP's own).
        event_shape: the event shape of the *forward input* ``x``.
        dtype: dtype of inputs, outputs and log-dets (float64 for tight log-det checks).
        batch_shapes: leading batch shapes to try.
        atol: absolute tolerance of every comparison (round trips, log-dets, regimes).
        inputs: valid forward inputs when ``N(0, 1)`` draws are not (e.g. values in ``(0, 1)``
            for a logit bijector): an array of shape ``[*batch, *event_shape]`` (then its batch
            shape replaces ``batch_shapes``) or a callable ``inputs(shape, rng) -> array``
            called once per batch shape.
        inverse_inputs: the same for the inverse direction. Default: ``N(0, 1)`` draws if
            ``inputs`` is None, else ``forward`` of a second draw of ``inputs`` (always valid).
        check_xla: also compare against ``tf.function(jit_compile=True)``.
        graph_batch_shapes: batch shapes compared in graph mode (each costs a trace); default
            the last of ``batch_shapes`` (the most general one), traced with all batch
            dimensions dynamic (``None``).
        seed: seed of the input draws.
        context: for a conditional bijector, a context ``[c]`` passed to every call (it
            broadcasts over every batch shape).

    Raises:
        AssertionError: naming the failed check, the batch shape, the error and ``atol``.
    """
    dtype = tf.as_dtype(dtype)
    kw = {} if context is None else {"context": tf.constant(context, dtype)}
    atol = default_atol(dtype) if atol is None else atol
    event_in = tuple(int(d) for d in event_shape)
    event_out = tuple(int(d) for d in bijector.forward_event_shape(event_in))
    nd_in, nd_out = len(event_in), len(event_out)
    if math.prod(event_in) != math.prod(event_out):
        raise AssertionError(f"{bijector.name}: forward_event_shape({list(event_in)}) = "
                             f"{list(event_out)} changes the event size")
    rng = np.random.default_rng(seed)
    if inputs is not None and not callable(inputs):
        arr = np.asarray(inputs)
        batch_shapes = [arr.shape[: arr.ndim - nd_in]]
    batch_shapes = [tuple(int(b) for b in batch) for batch in batch_shapes]
    if graph_batch_shapes is None:
        graph_batch_shapes = batch_shapes[-1:]
    graph_batch_shapes = [tuple(int(b) for b in batch) for batch in graph_batch_shapes]

    cases = []
    for batch in batch_shapes:
        x = _draw(inputs, (*batch, *event_in), rng, dtype)
        if inverse_inputs is not None:
            y = _draw(inverse_inputs, (*batch, *event_out), rng, dtype)
        elif inputs is None:
            y = _draw(None, (*batch, *event_out), rng, dtype)
        else:
            y = bijector.forward(_draw(inputs, (*batch, *event_in), rng, dtype), **kw)
        cases.append((batch, x, y))

    # The autodiff reference, for all batch shapes at once (one Jacobian per direction).
    flat_x = tf.concat([tf.reshape(x, [-1, *event_in]) for _, x, _ in cases], axis=0)
    flat_y = tf.concat([tf.reshape(y, [-1, *event_out]) for _, _, y in cases], axis=0)
    ad_f, sign_f = _autodiff_log_det(lambda t: bijector.forward(t, **kw), flat_x, event_in,
                                     event_out)
    ad_i, sign_i = _autodiff_log_det(lambda t: bijector.inverse(t, **kw), flat_y, event_out,
                                     event_in)
    if np.any(sign_f == 0) or np.any(sign_i == 0):
        raise AssertionError(f"{bijector.name}: singular Jacobian (slogdet sign 0)")
    offsets = np.cumsum([0] + [math.prod(batch) for batch, _, _ in cases])

    for i, (batch, x, y) in enumerate(cases):
        ctx = f"{bijector.name} (event {list(event_in)}, batch {list(batch)}, {dtype.name})"
        # Eager values, shapes and dtypes.
        ref = _evaluate(bijector, x, y, nd_in, nd_out, kw=kw)
        for key in ("forward(x)", "forward(inverse(y))"):
            _assert_shape_dtype(key, ref[key], (*batch, *event_out), dtype, ctx)
        for key in ("inverse(y)", "inverse(forward(x))"):
            _assert_shape_dtype(key, ref[key], (*batch, *event_in), dtype, ctx)
        for key in ("fldj(x)", "ildj(y)", "fldj(inverse(y))", "ildj(forward(x))"):
            _assert_shape_dtype(key, ref[key], batch, dtype, ctx)
        for key, value in ref.items():
            if not np.all(np.isfinite(value.numpy())):
                raise AssertionError(f"{ctx}: {key} has non-finite values")

        # Round trips.
        _assert_close("inverse(forward(x)) vs x", ref["inverse(forward(x))"], x, atol, ctx)
        _assert_close("forward(inverse(y)) vs y", ref["forward(inverse(y))"], y, atol, ctx)

        # Log-dets against autodiff (computed on fresh tensors) and against each other.
        sl = slice(offsets[i], offsets[i + 1])
        _assert_close("fldj(x) vs autodiff log|det J|", ref["fldj(x)"],
                      np.reshape(ad_f[sl], batch), atol, ctx)
        _assert_close("ildj(y) vs autodiff log|det J^-1|", ref["ildj(y)"],
                      np.reshape(ad_i[sl], batch), atol, ctx)
        _assert_close("fldj(x) vs -ildj(forward(x))", ref["fldj(x)"],
                      -ref["ildj(forward(x))"].numpy(), atol, ctx)
        _assert_close("ildj(y) vs -fldj(inverse(y))", ref["ildj(y)"],
                      -ref["fldj(inverse(y))"].numpy(), atol, ctx)

        # Fused calls agree with the separate ones.
        pairs = [("fused.forward_and_log_det(x)", "forward(x)", "fldj(x)"),
                 ("fused.inverse_and_log_det(y)", "inverse(y)", "ildj(y)")]
        if isinstance(bijector, FlowBijector):
            pairs += [("forward_and_log_det(x)", "forward(x)", "fldj(x)"),
                      ("inverse_and_log_det(y)", "inverse(y)", "ildj(y)")]
        for name, out_key, ldj_key in pairs:
            _assert_close(f"{name}[0] vs {out_key}", ref[f"{name}[0]"], ref[out_key], atol, ctx)
            _assert_close(f"{name}[1] vs {ldj_key}", ref[f"{name}[1]"], ref[ldj_key], atol, ctx)

        # Batch independence: example 0 alone gives the same values.
        if batch:
            first = (0,) * len(batch)
            alone = _evaluate(bijector, x[first], y[first], nd_in, nd_out, compositions=False,
                              kw=kw)
            for key in ("forward(x)", "inverse(y)", "fldj(x)", "ildj(y)"):
                _assert_close(f"{key} of example 0 alone vs in the batch", alone[key],
                              ref[key].numpy()[first], atol, ctx)

        # Graph mode with dynamic batch dimensions, and XLA.
        if batch not in graph_batch_shapes and not check_xla:
            continue

        def fn(x_, y_):
            return _evaluate(bijector, x_, y_, nd_in, nd_out, compositions=False, kw=kw)

        regimes = {}
        if batch in graph_batch_shapes:
            sig = [tf.TensorSpec([None] * len(batch) + list(event_in), dtype),
                   tf.TensorSpec([None] * len(batch) + list(event_out), dtype)]
            regimes["tf.function"] = tf.function(fn, input_signature=sig)
        if check_xla and batch == batch_shapes[-1]:
            regimes["tf.function(jit_compile=True)"] = tf.function(fn, jit_compile=True)
        for regime, f in regimes.items():
            got = f(x, y)
            for key, value in got.items():
                _assert_shape_dtype(f"{key} [{regime}]", value, ref[key].shape, dtype, ctx)
                _assert_close(f"{key}: {regime} vs eager", value, ref[key], atol, ctx)


def check_no_stale(
    bijector,
    event_shape: Sequence[int],
    layers=None,
    dtype: tf.DType | str = tf.float64,
    batch_shape: Sequence[int] = (3,),
    atol: float = 1e-5,
    seed: int = 0,
    scale: float = 0.3,
    trainable_only: bool = True,
) -> None:
    """After a weight change, the *same* eager tensor gives the new weights' values.

    Evaluates ``forward``, ``inverse`` and both log-dets (and the fused calls) of one tensor,
    assigns new random weights to ``layers`` (default: the bijector's Keras layers; only the
    trainable ones unless ``trainable_only=False``, so flags such as ActNorm's ``initialized``
    are left alone), evaluates the same tensor again and compares with a reference computed on
    fresh copies (``tf.identity``). Also asserts that the values did change, so the check can
    fail.
    """
    dtype = tf.as_dtype(dtype)
    atol = default_atol(dtype) if atol is None else atol
    event_in = tuple(int(d) for d in event_shape)
    event_out = tuple(int(d) for d in bijector.forward_event_shape(event_in))
    nd_in, nd_out = len(event_in), len(event_out)
    rng = np.random.default_rng(seed)
    x = _draw(None, (*tuple(batch_shape), *event_in), rng, dtype)
    y = _draw(None, (*tuple(batch_shape), *event_out), rng, dtype)
    ctx = f"{bijector.name} (event {list(event_in)}, {dtype.name})"
    layers = bijector if layers is None else layers
    before = _evaluate(bijector, x, y, nd_in, nd_out)
    randomize_weights(layers, seed=seed + 1000, scale=scale, trainable_only=trainable_only)
    after = _evaluate(bijector, x, y, nd_in, nd_out)
    fresh = _evaluate(bijector, tf.identity(x), tf.identity(y), nd_in, nd_out)
    changed = False
    for key, value in after.items():
        _assert_close(f"{key} after a weight change vs fresh tensors", value, fresh[key], atol,
                      ctx)
        changed = changed or _max_err(before[key], fresh[key]) > atol
    if not changed:
        raise AssertionError(f"{ctx}: no value changed after new weights were assigned; the "
                             f"check cannot tell stale from fresh (wrong layers?)")


# --------------------------------------------------------------------------------------------
# Flow models


def check_flow(
    model,
    batch_shapes: BatchShapes = ((), (3,), (2, 3)),
    atol: float | None = None,
    check_bijector_too: bool = True,
    seed: int = 0,
) -> None:
    """Proves a ``tfp_coupling.FlowModel`` consistent: its bijector, log-density and sampler.

    Checks, in the model's ``flow_dtype`` (``atol`` defaults to :func:`default_atol`):

    * ``check_bijector(model.bijector, base event shape)`` on the same batch shapes (the base
      event shape is ``bijector.inverse_event_shape(model.event_shape)``, usually the same);
    * ``log_prob(x) == base.log_prob(inverse(x)) + ildj(x)`` (TFP's separate calls),
      ``== model.distribution.log_prob(x)`` (TFP's generic path), ``== model(x)`` and ``==`` the
      same inside ``tf.function``; the base log-density equals ``-|z|^2/2 - D/2 log(2 pi)``;
      ``log_prob`` has the batch shape and the flow dtype;
    * ``forward(inverse(x)) == x``;
    * ``sample(n)`` has shape ``[n, *event_shape]`` and the flow dtype, is finite, is
      reproducible with a seed and differs between seeds; temperature 0 gives ``forward(0)``;
    * ``trainable_variables`` are exactly the variables of ``flow_layers``.
    """
    dtype = tf.as_dtype(model.flow_dtype)
    atol = default_atol(dtype) if atol is None else atol
    event = tuple(model.event_shape)  # data side
    base_event = tuple(int(n) for n in model.bijector.inverse_event_shape(event))  # base side
    nd = len(event)
    d = math.prod(event)
    name = model.name
    if check_bijector_too:
        check_bijector(model.bijector, base_event, dtype=dtype, batch_shapes=batch_shapes,
                       atol=atol, seed=seed)
    rng = np.random.default_rng(seed + 1)
    for batch in batch_shapes:
        batch = tuple(int(b) for b in batch)
        ctx = f"{name} (event {list(event)}, batch {list(batch)}, {dtype.name})"
        x = _draw(None, (*batch, *event), rng, dtype)
        lp = model.log_prob(x)
        _assert_shape_dtype("log_prob(x)", lp, batch, dtype, ctx)
        z = model.inverse(x)
        _assert_shape_dtype("inverse(x)", z, (*batch, *base_event), dtype, ctx)
        base = model.base_distribution.log_prob(z)
        zz = z.numpy().astype(np.float64).reshape((*batch, d))
        by_hand = -0.5 * np.sum(zz**2, axis=-1) - 0.5 * d * np.log(2 * np.pi)
        _assert_close("base log_prob vs -|z|^2/2 - D/2 log(2 pi)", base, by_hand,
                      atol * max(1.0, float(np.max(np.abs(by_hand)))), ctx)
        ildj = model.bijector.inverse_log_det_jacobian(x, event_ndims=nd)
        _assert_close("log_prob(x) vs base.log_prob(inverse(x)) + ildj(x)", lp, base + ildj,
                      atol, ctx)
        _assert_close("log_prob(x) vs distribution.log_prob(x)", lp,
                      model.distribution.log_prob(x), atol, ctx)
        if batch == tuple(batch_shapes[-1]):  # one trace, dynamic batch dimensions
            sig = [tf.TensorSpec([None] * len(batch) + list(event), dtype)]
            _assert_close("log_prob(x) vs tf.function(log_prob)(x)", lp,
                          tf.function(model.log_prob, input_signature=sig)(x), atol, ctx)
        if len(batch) == 1:  # Keras calls take one batch axis
            _assert_close("log_prob(x) vs model(x)", lp, model(x), atol, ctx)
        _assert_close("forward(inverse(x)) vs x", model.forward(z), x, atol, ctx)

    ctx = f"{name} sample"
    s1 = model.sample(7, seed=1)
    _assert_shape_dtype("sample(7)", s1, (7, *event), dtype, ctx)
    if not np.all(np.isfinite(s1.numpy())):
        raise AssertionError(f"{ctx}: non-finite samples")
    _assert_close("sample(seed=1) twice", model.sample(7, seed=1), s1, 0.0, ctx)
    if _max_err(model.sample(7, seed=2), s1) == 0.0:
        raise AssertionError(f"{ctx}: seeds 1 and 2 gave the same samples")
    cold = model.sample(3, temperature=0.0, seed=1)
    _assert_close("sample(temperature=0) vs forward(0)", cold,
                  model.forward(tf.zeros((3, *base_event), dtype)), atol, ctx)
    if not np.all(np.isfinite(model.log_prob(s1).numpy())):
        raise AssertionError(f"{ctx}: log_prob of samples is not finite")

    model_vars = {id(v) for v in model.trainable_variables}
    layer_vars = {id(v) for layer in model.flow_layers for v in layer.trainable_variables}
    if model_vars != layer_vars:
        raise AssertionError(f"{name}: model.trainable_variables ({len(model_vars)}) are not the "
                             f"variables of flow_layers ({len(layer_vars)})")


def affine_couplings(bijector) -> list:
    """Every ``AffineCoupling`` inside ``bijector``, through chains, inversions and factor-outs
    (for tests of what a builder built)."""
    inner = [*getattr(bijector, "bijectors", ()), getattr(bijector, "bijector", None),
             getattr(bijector, "inner", None)]
    found = [bijector] if isinstance(bijector, AffineCoupling) else []
    for b in inner:
        if b is not None:
            found += affine_couplings(b)
    return found
