"""Export a ``FlowModel`` as a TensorFlow SavedModel that loads without tfp-coupling.

The SavedModel is written with ``keras.export.ExportArchive`` (the model is tracked, one endpoint
per function), so it holds plain TensorFlow graphs and variables: ``tf.saved_model.load(path)``
works in a process that has TensorFlow only, and ``saved_model_cli`` / TF Serving see its
signatures. Every endpoint takes and returns ``flow_dtype`` (float32 by default; also for a model
trained under a mixed-precision policy) with a dynamic batch dimension:

============================  =========================================  ======================
endpoint (callable attribute  maths                                      serving signature
and serving signature)                                                   inputs -> output_0
============================  =========================================  ======================
``log_prob(x)``               ``log p(x)`` per example, nats              ``x [N, *event]`` ->
                                                                         ``[N]``
``sample(n)``                 ``f(T z)``, ``z ~ N(0, I)``, ``T = 1``     ``n`` int32 scalar ->
                                                                         ``[n, *event]``
``sample_with_options(n,      same, temperature ``T``; ``seed >= 0``:   ``n``, ``temperature``
temperature, seed)``          reproducible (stateless) draw, ``< 0``:    float, ``seed`` int32
                              random                                     -> ``[n, *event]``
``forward(z)``                ``x = f(z)``                               ``z`` -> ``[N, *event]``
``inverse(x)``                ``z = f^{-1}(x)``                          ``x`` -> ``[N, *event]``
============================  =========================================  ======================

A conditional flow (``context_shape=[c]``) gets the same endpoints with a ``context [N, c]``
input: ``log_prob(x, context)``, ``forward(z, context)``, ``inverse(x, context)``, and
``sample(context)`` / ``sample_with_options(context, temperature, seed)``, which draw one example
per context row.

The callable ``loaded.sample`` also accepts the options: ``loaded.sample(n)``,
``loaded.sample(n, temperature)`` and ``loaded.sample(n, temperature, seed)`` all work, and with
the same ``seed`` return what ``model.sample(n, temperature, seed)`` returns. ``serving_default``
is ``log_prob``. Each signature returns one tensor under the key ``output_0``.

The archive is written to a temporary folder beside ``filepath`` and renamed into place only once
complete, so a failed export leaves an earlier export at ``filepath`` intact. An existing
``filepath`` is never deleted unless asked: ``overwrite=True`` replaces an earlier SavedModel
(a folder holding ``saved_model.pb``); any other non-empty folder is refused even then.

Example:
    >>> import tempfile, numpy as np, tensorflow as tf, tfp_coupling as tc
    >>> from tfp_coupling.model.export import export_flow
    >>> model = tc.realnvp_flow(event_shape=[2], num_couplings=2, hidden_units=[8])
    >>> path = tempfile.mkdtemp() + "/flow"
    >>> export_flow(model, path)  # the same as model.export(path)
    >>> loaded = tf.saved_model.load(path)
    >>> x = tc.data.two_moons(4, seed=0)
    >>> bool(np.allclose(loaded.log_prob(x), model.log_prob(x), atol=1e-5))
    True
    >>> loaded.sample(3).shape, sorted(loaded.signatures)[:2]
    (TensorShape([3, 2]), ['forward', 'inverse'])
"""

from __future__ import annotations

import os
import shutil
import uuid
from typing import TYPE_CHECKING

import keras
import tensorflow as tf

from tfp_coupling import atomic
from tfp_coupling.model.sampling import base_noise

if TYPE_CHECKING:
    from tfp_coupling.model.flow_model import FlowModel

__all__ = ["MAX_SAMPLE_VALUES", "check_export_target", "export_flow"]

#: Most values one ``sample`` call may return (512 MiB of float32): a larger ``n`` is refused
#: with a message rather than killed by the kernel for want of memory. Draw in batches.
MAX_SAMPLE_VALUES = 2**27


def _check(condition, message: str) -> tf.Operation:
    """An assertion in the exported graph; it fails with ``message`` (InvalidArgumentError)."""
    return tf.debugging.Assert(condition, [message])


def _checked_input(x: tf.Tensor, endpoint: str, name: str) -> tf.Tensor:
    """``x`` once it is known to be finite: NaN in gives an error, not NaN out."""
    with tf.control_dependencies([_check(tf.reduce_all(tf.math.is_finite(x)),
                                         f"{endpoint}: input {name} contains NaN or Inf")]):
        return tf.identity(x)


def _draw_base(model: FlowModel, n, temperature, seed) -> tf.Tensor:
    """``T * z`` with ``z ~ N(0, I)`` of shape ``[n, *event]``, drawn as ``model.sample`` does.

    ``n`` must be in ``[0, MAX_SAMPLE_VALUES / event size]`` and the temperature finite and
    positive; otherwise the call fails with a message saying so.
    """
    dtype = model.flow_dtype
    n = tf.cast(n, tf.int32)
    temperature = tf.cast(temperature, dtype)
    limit = MAX_SAMPLE_VALUES // model.event_size
    checks = [
        _check(n >= 0, "sample: n must be >= 0"),
        _check(n <= limit, f"sample: n must be <= {limit} ({MAX_SAMPLE_VALUES} values per call); "
                           f"draw more in batches"),
        _check(tf.math.is_finite(temperature) & (temperature > 0),
               "sample: temperature must be a finite number > 0"),
    ]
    with tf.control_dependencies(checks):
        n = tf.identity(n)
    shape = tf.concat([tf.reshape(n, [1]), tf.constant(model.event_shape, tf.int32)], axis=0)
    if isinstance(seed, int) and seed < 0:  # the Python default: random, decided when tracing
        seed = None
    return base_noise(shape, dtype, seed) * temperature


def _build_archive(model: FlowModel) -> keras.export.ExportArchive:
    """One endpoint per function; a conditional flow's take a ``context [N, c]`` as well, and
    its ``sample`` draws one example per context row instead of taking ``n``."""
    dtype = model.flow_dtype
    event = list(model.event_shape)
    x_spec = tf.TensorSpec([None, *event], dtype, name="x")
    z_spec = tf.TensorSpec([None, *event], dtype, name="z")
    t_spec = tf.TensorSpec([], dtype, name="temperature")
    s_spec = tf.TensorSpec([], tf.int32, name="seed")
    if model.is_conditional:
        context = [tf.TensorSpec([None, *model.context_shape], dtype, name="context")]
        first = context[0]  # sample(context): one draw per row
    else:
        context = []
        first = tf.TensorSpec([], tf.int32, name="n")

    def checked_context(endpoint, *c):
        return [_checked_input(t, endpoint, "context") for t in c]

    def log_prob(x, *c):
        return model.log_prob(_checked_input(x, "log_prob", "x"),
                              *checked_context("log_prob", *c))

    def forward(z, *c):
        return model.forward(_checked_input(z, "forward", "z"), *checked_context("forward", *c))

    def inverse(x, *c):
        return model.inverse(_checked_input(x, "inverse", "x"), *checked_context("inverse", *c))

    if model.is_conditional:
        def sample(context, temperature=1.0, seed=-1):
            (c,) = checked_context("sample", context)
            return model.forward(_draw_base(model, tf.shape(c)[0], temperature, seed), c)
    else:
        def sample(n, temperature=1.0, seed=-1):
            return model.forward(_draw_base(model, n, temperature, seed))

    # One tf.function, three traces: the first (n or context only) is the serving signature, the
    # others let the loaded callable take a temperature and a seed.
    sample_fn = tf.function(sample, autograph=False)
    sample_fn.get_concrete_function(first)
    sample_fn.get_concrete_function(first, t_spec)
    sample_fn.get_concrete_function(first, t_spec, s_spec)

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("log_prob", log_prob, input_signature=[x_spec, *context])  # default
    archive.add_endpoint("sample", sample_fn)
    archive.add_endpoint("sample_with_options", sample, input_signature=[first, t_spec, s_spec])
    archive.add_endpoint("forward", forward, input_signature=[z_spec, *context])
    archive.add_endpoint("inverse", inverse, input_signature=[x_spec, *context])
    return archive


def _is_saved_model(folder: str) -> bool:
    return os.path.isfile(os.path.join(folder, "saved_model.pb"))


def check_export_target(filepath: str | os.PathLike, overwrite: bool = False) -> None:
    """Raises ``FileExistsError`` unless a SavedModel may be written at ``filepath``.

    Allowed: a path that does not exist, an empty folder, or (with ``overwrite``) an earlier
    SavedModel. A file, or a folder holding anything else (a run folder, a user's data), is
    never replaced: the export would delete what it holds.
    """
    filepath = os.fspath(filepath)
    if os.path.isfile(filepath):
        raise FileExistsError(f"cannot export to {filepath!r}: it is a file, not a folder")
    if not os.path.isdir(filepath) or not os.listdir(filepath):
        return
    if not _is_saved_model(filepath):
        raise FileExistsError(f"cannot export to {filepath!r}: the folder holds files that are "
                              f"not a SavedModel, which the export would delete; choose a new "
                              f"or empty folder")
    if not overwrite:
        raise FileExistsError(f"cannot export to {filepath!r}: a SavedModel is already there; "
                              f"pass overwrite=True to replace it")


def export_flow(model: FlowModel, filepath: str | os.PathLike, verbose: bool = False,
                overwrite: bool = False) -> None:
    """Writes ``model`` as a SavedModel at ``filepath`` (see the module docstring).

    Args:
        model: the flow to export.
        filepath: the SavedModel folder: new, empty, or an earlier SavedModel (``overwrite``),
            which is replaced only after the new one is complete.
        verbose: print the endpoints and the variables they use.
        overwrite: replace an earlier SavedModel at ``filepath``.

    Raises:
        FileExistsError: ``filepath`` is a file, a folder holding other files, or a SavedModel
            and ``overwrite`` is false.
    """
    filepath = os.fspath(filepath)
    target = os.path.abspath(filepath)
    check_export_target(target, overwrite)
    parent = os.path.dirname(target)
    os.makedirs(parent, exist_ok=True)
    with atomic.temporary_sibling_folder(target) as tmp:
        archive = _build_archive(model)
        archive.write_out(os.fspath(tmp), verbose=verbose)
        atomic.fsync_tree(tmp)
        check_export_target(target, overwrite)  # it may have changed while the export ran
        old = None
        if os.path.exists(target):
            old = os.path.join(parent, f".{os.path.basename(target)}{atomic.TEMP_MARKER}old-"
                                       f"{uuid.uuid4().hex}")
            os.rename(target, old)
        try:
            os.rename(tmp, target)
        except OSError:
            if old is not None:
                os.rename(old, target)  # put the earlier export back
            raise
        atomic.fsync_folder(parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
