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

from tfp_coupling.bijectors.base import Chain, FlowBijector
from tfp_coupling.bijectors.coupling import Coupling

tfb = tfp.bijectors

# The chains to walk: ``tfb.Chain`` and the classes it derives from below ``tfb.Composition``.
# ``tfb.Chain(links)`` returns an instance of its non-CompositeTensor base class when a link is
# not a CompositeTensor (every tfp-coupling bijector), so ``isinstance(b, tfb.Chain)`` alone
# would miss most chains. Subclasses (``Glow``, ``FillScaleTriL``, ...) are chains too, and so
# is tfp-coupling's own ``Chain`` (a ``tfb.Composition``).
_CHAIN_CLASSES = (*(c for c in tfb.Chain.__mro__
                    if issubclass(c, tfb.Composition) and c is not tfb.Composition), Chain)

__all__ = ["collect_keras_layers", "forward_and_log_det", "inverse_and_log_det"]


def forward_and_log_det(
    bijector: tfb.Bijector, x: tf.Tensor, event_ndims: int, context: tf.Tensor | None = None
) -> tuple[tf.Tensor, tf.Tensor]:
    """Returns ``(bijector.forward(x), bijector.forward_log_det_jacobian(x, event_ndims))``.

    ``context`` is handed to every conditional link (``link.is_conditional``).
    """
    y, ldj, _ = _walk(bijector, x, event_ndims, forward=True, context=context)
    return y, ldj


def inverse_and_log_det(
    bijector: tfb.Bijector, y: tf.Tensor, event_ndims: int, context: tf.Tensor | None = None
) -> tuple[tf.Tensor, tf.Tensor]:
    """Returns ``(bijector.inverse(y), bijector.inverse_log_det_jacobian(y, event_ndims))``."""
    x, ldj, _ = _walk(bijector, y, event_ndims, forward=False, context=context)
    return x, ldj


def collect_keras_layers(bijector: tfb.Bijector) -> list:
    """Every Keras layer owning weights inside ``bijector`` (through Chain and Invert)."""
    layers: list = []
    for b in _leaves(bijector):
        if isinstance(b, FlowBijector):
            layers.extend(l for l in b.keras_layers if all(l is not m for m in layers))
    return layers


def _leaves(bijector: tfb.Bijector):
    if isinstance(bijector, _CHAIN_CLASSES):
        for b in bijector.bijectors:
            yield from _leaves(b)
    elif isinstance(bijector, tfb.Invert):
        yield from _leaves(bijector.bijector)
    else:
        yield bijector


def _walk(bijector, x, event_ndims: int, forward: bool, context=None):
    if isinstance(bijector, _CHAIN_CLASSES):
        links = list(reversed(bijector.bijectors) if forward else bijector.bijectors)
        ldjs = []
        i = 0
        while i < len(links):
            run = _coupling_run(links, i)
            if len(run) > 1:
                x, ldj = _walk_coupling_run(run, x, event_ndims, forward, context)
            else:
                x, ldj, event_ndims = _walk(links[i], x, event_ndims, forward, context)
            ldjs.append(ldj)
            i += len(run)
        # One sum of all log-dets (fused), not a chain of pairwise additions.
        return x, _sum_log_dets(ldjs), event_ndims
    if isinstance(bijector, tfb.Invert):
        return _walk(bijector.bijector, x, event_ndims, not forward, context)
    if isinstance(bijector, FlowBijector):
        kwargs = {"context": context} if bijector.is_conditional else {}
        out, ldj = (bijector.forward_and_log_det(x, **kwargs) if forward
                    else bijector.inverse_and_log_det(x, **kwargs))
        return out, _sum_extra_event_dims(ldj, event_ndims, bijector), event_ndims
    if forward:
        ldj = bijector.forward_log_det_jacobian(x, event_ndims=event_ndims)
        return bijector.forward(x), ldj, bijector.forward_event_ndims(event_ndims)
    ldj = bijector.inverse_log_det_jacobian(x, event_ndims=event_ndims)
    return bijector.inverse(x), ldj, bijector.inverse_event_ndims(event_ndims)


def _sum_log_dets(ldjs: list) -> tf.Tensor:
    """Sums log-dets with one ``add_n`` when their shapes agree, else with broadcasting.

    TFP's constant-Jacobian bijectors (``Shift``, ``Scale``, ...) return an unbatched log-det
    (shape ``[]``), which ``add_n`` cannot add to a batched one.
    """
    if len(ldjs) == 1:
        return ldjs[0]
    shapes = {tuple(l.shape.as_list()) if l.shape.rank is not None else None for l in ldjs}
    if len(shapes) == 1 and None not in shapes and None not in next(iter(shapes)):
        return tf.add_n(ldjs)
    total = ldjs[0]
    for l in ldjs[1:]:
        total = total + l
    return total


def _uses_coupling_parts(b) -> bool:
    """A ``Coupling`` whose forward and inverse are ``Coupling``'s own split, parts, merge.

    Only then may the walk call its ``_forward_parts``/``_inverse_parts`` on halves; a subclass
    that overrides ``_forward_and_log_det`` or ``_inverse_and_log_det`` is called whole.
    """
    cls = type(b)
    return (isinstance(b, Coupling)
            and cls._forward_and_log_det is Coupling._forward_and_log_det
            and cls._inverse_and_log_det is Coupling._inverse_and_log_det)


def _coupling_run(links, i: int) -> list:
    """The longest run of couplings from ``links[i]`` in which each hands its halves over."""
    run = [links[i]]
    if not _uses_coupling_parts(links[i]):
        return run
    for b in links[i + 1:]:
        prev = run[-1]
        if not (_uses_coupling_parts(b) and prev.partition.swaps_halves_with(b.partition)
                and prev.dtype == b.dtype and prev._flow_dtype == b._flow_dtype):
            break
        run.append(b)
    return run


def _walk_coupling_run(run, x, event_ndims: int, forward: bool, context=None):
    """Chained couplings on the split halves: one split at the start, one merge at the end.

    Coupling ``k`` maps halves ``(a, b)`` to ``(a, b')``; the next one keeps what this one
    transformed, so its halves are ``(b', a)``. This skips a merge (concat) and a split per
    coupling, forward and in the gradient.
    """
    first = run[0]
    x = first._check_input(x, "x" if forward else "y")
    a, b = first.partition.split(x)
    ldjs = []
    for k, c in enumerate(run):
        with tf.name_scope(c.name):
            c_context = context if c.is_conditional else None
            b, ldj = (c._forward_parts(a, b, c_context) if forward
                      else c._inverse_parts(a, b, c_context))
        ldjs.append(ldj)
        if k < len(run) - 1:
            a, b = b, a
    out = run[-1].partition.merge(a, b)
    return out, _sum_extra_event_dims(_sum_log_dets(ldjs), event_ndims, first)


def _sum_extra_event_dims(ldj: tf.Tensor, event_ndims: int, bijector: FlowBijector) -> tf.Tensor:
    """Sums a log-det over the event dims beyond the bijector's own (TFP's event_ndims rule)."""
    extra = event_ndims - len(bijector.event_shape)
    if extra > 0:
        ldj = tf.reduce_sum(ldj, axis=list(range(-extra, 0)))
    return ldj
