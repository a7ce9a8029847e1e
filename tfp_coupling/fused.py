"""Fused passes through any TFP bijector: the output and its log-det in one walk.

TFP's ``TransformedDistribution.log_prob`` calls ``inverse`` and then ``inverse_log_det_jacobian``
and relies on its result cache to avoid computing the inverse twice. tfp-coupling bijectors do not
cache (see :mod:`tfp_coupling.bijectors.base`), so the flow model walks the bijector itself and
asks each tfp-coupling bijector for both results at once: one conditioner call per coupling.
``tfb.Chain`` and ``tfb.Invert`` are walked through; any other TFP bijector is called in the
ordinary way (``forward`` + ``forward_log_det_jacobian``).

Example:
    >>> import tensorflow as tf, tensorflow_probability as tfp
    >>> from tfp_coupling import Rescaling, fused
    >>> b = tfp.bijectors.Chain([tfp.bijectors.Shift(1.0), Rescaling([2], initial_log_scale=1.0)])
    >>> y, ldj = fused.forward_and_log_det(b, tf.zeros([3, 2]), event_ndims=1)
    >>> y.numpy()[0].tolist(), ldj.numpy().tolist()
    ([1.0, 1.0], [2.0, 2.0, 2.0])
"""

from __future__ import annotations

import tensorflow as tf
import tensorflow_probability as tfp
from tensorflow_probability.python.bijectors import chain as _chain

from tfp_coupling.bijectors.base import FlowBijector

tfb = tfp.bijectors

__all__ = ["collect_keras_layers", "forward_and_log_det", "inverse_and_log_det"]


def forward_and_log_det(
    bijector: tfb.Bijector, x: tf.Tensor, event_ndims: int
) -> tuple[tf.Tensor, tf.Tensor]:
    """Returns ``(bijector.forward(x), bijector.forward_log_det_jacobian(x, event_ndims))``."""
    y, ldj, _ = _walk(bijector, x, event_ndims, forward=True)
    return y, ldj


def inverse_and_log_det(
    bijector: tfb.Bijector, y: tf.Tensor, event_ndims: int
) -> tuple[tf.Tensor, tf.Tensor]:
    """Returns ``(bijector.inverse(y), bijector.inverse_log_det_jacobian(y, event_ndims))``."""
    x, ldj, _ = _walk(bijector, y, event_ndims, forward=False)
    return x, ldj


def collect_keras_layers(bijector: tfb.Bijector) -> list:
    """Every Keras layer owning weights inside ``bijector`` (through Chain and Invert)."""
    layers: list = []
    for b in _leaves(bijector):
        if isinstance(b, FlowBijector):
            layers.extend(l for l in b.keras_layers if all(l is not m for m in layers))
    return layers


def _leaves(bijector: tfb.Bijector):
    if isinstance(bijector, _chain._Chain):
        for b in bijector.bijectors:
            yield from _leaves(b)
    elif isinstance(bijector, tfb.Invert):
        yield from _leaves(bijector.bijector)
    else:
        yield bijector


def _walk(bijector, x, event_ndims: int, forward: bool):
    if isinstance(bijector, _chain._Chain):
        links = bijector.bijectors
        total = None
        for b in reversed(links) if forward else links:
            x, ldj, event_ndims = _walk(b, x, event_ndims, forward)
            total = ldj if total is None else total + ldj
        return x, total, event_ndims
    if isinstance(bijector, tfb.Invert):
        return _walk(bijector.bijector, x, event_ndims, not forward)
    if isinstance(bijector, FlowBijector):
        out, ldj = (bijector.forward_and_log_det(x) if forward
                    else bijector.inverse_and_log_det(x))
        extra = event_ndims - len(bijector.event_shape)
        if extra > 0:
            ldj = tf.reduce_sum(ldj, axis=list(range(-extra, 0)))
        return out, ldj, event_ndims
    if forward:
        ldj = bijector.forward_log_det_jacobian(x, event_ndims=event_ndims)
        return bijector.forward(x), ldj, bijector.forward_event_ndims(event_ndims)
    ldj = bijector.inverse_log_det_jacobian(x, event_ndims=event_ndims)
    return bijector.inverse(x), ldj, bijector.inverse_event_ndims(event_ndims)
