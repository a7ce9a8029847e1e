"""Workarounds for Keras internals that ``FlowModel``'s training steps need."""

from __future__ import annotations

import math

import keras
import numpy as np
import tensorflow as tf

__all__ = ["multi_worker_logs", "reshuffling_dataset"]


def multi_worker_logs(logs: dict) -> dict:
    """Step logs as shape ``[1]`` under multi-worker ``MultiWorkerMirroredStrategy``.

    Keras 3 reduces them with ``strategy.reduce("MEAN", v, axis=0)`` there, which fails on
    scalars ("Invalid reduction dimension 0", tensorflow/tensorflow#72388); on ``[1]`` it returns
    the scalar mean over the replicas.
    """
    strategy = tf.distribute.get_strategy()
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and getattr(
            strategy.extended, "_in_multi_worker_mode", lambda: False)():
        return {k: tf.reshape(v, [1]) for k, v in logs.items()}
    return logs


def _is_array(a) -> bool:
    return isinstance(a, np.ndarray | tf.Tensor)


def reshuffling_dataset(x, y, sample_weight, batch_size: int | None,
                        validation_split: float) -> tuple[tf.data.Dataset, tuple | None] | None:
    """Arrays as a ``tf.data`` pipeline that draws a new permutation every epoch.

    Keras 3 shuffles arrays given to ``fit`` with a ``tf.random.shuffle`` inside its data
    pipeline; once a global seed is set (``keras.utils.set_random_seed``), that op restarts from
    the same seed on every epoch's iterator, so every epoch sees the same batches. Measured on
    ``fit(np.arange(12), batch_size=4, epochs=4)``: the batch order ``[6, 2, 10]`` four times.
    Here the permutation is a ``Dataset.shuffle(..., reshuffle_each_iteration=True)`` of the
    indices: seeded runs stay reproducible and each epoch gets its own order. Float arrays are
    cast to ``keras.config.floatx()`` and ``validation_split`` takes the last rows before
    shuffling, both as Keras does.

    Returns ``(dataset, validation)`` (``validation`` the held-out ``(x[, y[, weight]])`` or
    None), or None when Keras' own path must be kept (not arrays, or a weight without ``y``).
    """
    parts = [x, *([] if y is None else [y]), *([] if sample_weight is None else [sample_weight])]
    if not all(_is_array(p) for p in parts) or (y is None and sample_weight is not None):
        return None
    floatx = keras.config.floatx()
    parts = [tf.cast(p, floatx) if tf.as_dtype(p.dtype).is_floating else tf.convert_to_tensor(p)
             for p in parts]
    n = int(parts[0].shape[0])
    validation = None
    if validation_split:
        split_at = math.ceil(n * (1.0 - validation_split))  # Keras' own rounding
        validation = tuple(p[split_at:] for p in parts)
        parts, n = [p[:split_at] for p in parts], split_at
    parts = tuple(parts)
    batches = (tf.data.Dataset.range(n)
               .shuffle(n, reshuffle_each_iteration=True)
               .batch(batch_size or 32)
               .map(lambda i: tuple(tf.gather(p, i) for p in parts),
                    num_parallel_calls=tf.data.AUTOTUNE)
               .prefetch(tf.data.AUTOTUNE))
    return batches, validation
