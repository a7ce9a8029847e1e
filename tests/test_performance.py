"""Performance contracts that do not depend on timing: the training step is traced once.

``fit`` over several epochs of same-shaped batches must reuse the traced (and, with
``jit_compile=True``, XLA-compiled) training step: a retrace per epoch or per batch would cost
seconds each time. Timings themselves live in ``benchmarks/train_throughput.py``, not in tests.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest

import tfp_coupling as tc


def _traced_functions(fn, seen=None) -> list:
    """Every ``tf.function`` reachable from ``fn`` through closures (Keras's train function)."""
    seen = set() if seen is None else seen
    found = []
    if id(fn) in seen:
        return found
    seen.add(id(fn))
    if hasattr(fn, "experimental_get_tracing_count"):
        found.append(fn)
        fn = getattr(fn, "python_function", None)
    for cell in getattr(fn, "__closure__", None) or ():
        try:
            value = cell.cell_contents
        except ValueError:  # empty cell
            continue
        if callable(value):
            found += _traced_functions(value, seen)
    wrapped = getattr(fn, "__wrapped__", None)
    if wrapped is not None:
        found += _traced_functions(wrapped, seen)
    return found


class _TraceLog(keras.callbacks.Callback):
    """Records, after every epoch, how often the step was traced so far."""

    def __init__(self, python_traces: list) -> None:
        super().__init__()
        self.python_traces = python_traces
        self.per_epoch: list[tuple[int, tuple[int, ...]]] = []

    def on_epoch_end(self, epoch, logs=None) -> None:
        functions = _traced_functions(self.model.train_function)
        counts = tuple(f.experimental_get_tracing_count() for f in functions)
        self.per_epoch.append((len(self.python_traces), counts))


@pytest.mark.parametrize("jit_compile", [False, True], ids=["graph", "xla"])
@pytest.mark.parametrize("builder", ["realnvp_flow", "nice_flow"])
def test_fit_does_not_retrace_after_first_epoch(builder: str, jit_compile: bool) -> None:
    keras.utils.set_random_seed(0)
    model = tc.get_builder(builder)(event_shape=[4], num_couplings=2, hidden_units=[8])
    model.compile(optimizer=keras.optimizers.Adam(1e-3), jit_compile=jit_compile)
    python_traces: list[int] = []
    keras_train_step = model.train_step

    def counting_train_step(data):
        python_traces.append(1)  # Python runs this body only while tracing
        return keras_train_step(data)

    model.train_step = counting_train_step
    x = np.random.default_rng(0).normal(size=(32, 4)).astype("float32")
    log = _TraceLog(python_traces)
    # 32 examples in batches of 16: every batch has the same shape.
    model.fit(x, batch_size=16, epochs=3, verbose=0, callbacks=[log])
    model.fit(x, batch_size=16, epochs=1, verbose=0, callbacks=[log])  # a second fit call too

    first_traces, first_counts = log.per_epoch[0]
    assert first_traces >= 1, "the training step was never traced: the test saw nothing"
    assert first_counts and all(c >= 1 for c in first_counts), (
        "no traced tf.function found in model.train_function")
    for epoch, (traces, counts) in enumerate(log.per_epoch[1:], start=2):
        assert traces == first_traces, (
            f"train step retraced in epoch {epoch}: {traces} traces, {first_traces} after epoch 1")
        assert counts == first_counts, (
            f"tf.function tracing counts grew in epoch {epoch}: {counts} vs {first_counts}")


def test_trace_counter_sees_a_retrace() -> None:
    """The check above can fail: a new batch shape does retrace, and the counter sees it."""
    keras.utils.set_random_seed(0)
    model = tc.realnvp_flow(event_shape=[4], num_couplings=2, hidden_units=[8])
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    python_traces: list[int] = []
    keras_train_step = model.train_step

    def counting_train_step(data):
        python_traces.append(1)
        return keras_train_step(data)

    model.train_step = counting_train_step
    rng = np.random.default_rng(0)
    model.train_on_batch(rng.normal(size=(16, 4)).astype("float32"))
    warmed_up = len(python_traces)  # the first call may trace twice (it creates variables)
    model.train_on_batch(rng.normal(size=(16, 4)).astype("float32"))
    assert len(python_traces) == warmed_up >= 1
    model.train_on_batch(rng.normal(size=(8, 4)).astype("float32"))  # a new batch size
    assert len(python_traces) > warmed_up
