"""Base noise ``z ~ N(0, I)``: drawn the same way by ``FlowModel.sample`` and the SavedModel."""

from __future__ import annotations

import tensorflow as tf

__all__ = ["base_noise"]


def base_noise(shape: tf.Tensor, dtype: tf.DType, seed=None) -> tf.Tensor:
    """Standard Normal noise of ``shape``; reproducible (stateless) for a seed.

    ``seed``: ``None`` draws from TensorFlow's global random state; a Python int always draws
    statelessly from ``[seed, 0]``; a tensor decides in the graph (``>= 0``: stateless, ``< 0``:
    random), which lets an exported ``sample`` take the seed as an input.
    """
    if seed is None:
        return tf.random.normal(shape, dtype=dtype)
    if isinstance(seed, int):
        return tf.random.stateless_normal(shape, seed=[seed, 0], dtype=dtype)
    seed = tf.cast(seed, tf.int32)
    return tf.cond(
        seed >= 0,
        lambda: tf.random.stateless_normal(shape, seed=tf.stack([seed, 0]), dtype=dtype),
        lambda: tf.random.normal(shape, dtype=dtype),
    )
