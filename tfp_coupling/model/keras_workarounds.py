"""Workarounds for Keras internals that ``FlowModel``'s training steps need."""

from __future__ import annotations

import tensorflow as tf

__all__ = ["multi_worker_logs"]


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
