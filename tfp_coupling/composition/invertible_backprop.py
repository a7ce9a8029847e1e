"""Invertible backpropagation: gradients of a flow's walk without storing its activations.

The ordinary walk (:mod:`tfp_coupling.composition.fused`) keeps, for the backward pass, every
step's input and every conditioner's activations, so training memory grows with the number of
couplings. Every tfp-coupling bijector is exactly invertible, so the backward pass can rebuild
each step's input from its output instead (i-RevNet, MemCNN, Glow's ``memory_saving_gradients``).
For the walk ``h_0 -> h_1 -> ... -> h_n`` with steps ``h_k = f_k(h_{k-1})`` and log-dets
``l_k(h_{k-1})``, the gradient walks back from ``(dh_n, dL)`` (``L = sum_k l_k``)::

    h_{k-1} = f_k^{-1}(h_k)                                     (exact inverse, not taped)
    dh_{k-1}, dtheta_k += VJP of (f_k, l_k) at h_{k-1} against (dh_k, dL)   (step k re-run)

so a run of steps stores only its final output: memory is one step's activations, whatever
the depth. The price is one extra conditioner call per coupling in the backward pass: a
coupling's kept half passes through unchanged, so the inverse and the re-run share one call.

What is rebuilt: tfp-coupling's own bijectors (couplings, ``ActNorm``, ``Rescaling``,
``TriLAffine``, ``LULinear``, ``LogitPreprocessing``, ``Squeeze``), walked through ``Chain``,
``Invert`` and ``FactorOut``. A ``FactorOut``'s factored channels pass straight to the output:
the walk parks them on a stack and the backward pass takes them (and their gradients) back from
it. Any other TFP bijector is walked in the ordinary way (its input stored), between two
rebuilt runs. The run's input is rebuilt too, so nothing before it (e.g. the dequantisation
noise added to the data) needs to be invertible or stored. Data-dependent initialisation
(``ActNorm``, ``TriLAffine``) happens in the forward pass of
:func:`tfp_coupling.initialize_from_data`, before any gradient; a re-run in the backward pass
never initialises (no layer is pending by then).

Limits: first-order gradients only (``tf.custom_gradient``); conditioners must be
deterministic functions of their inputs (no dropout, no batch statistics), since they run
twice; rebuilt inputs differ from the true ones by round-off that grows with depth, so
gradients agree with the ordinary walk's to round-off (about 1e-14 relative in float64 on the
test flows), not bit for bit.

Example:
    >>> import numpy as np, tensorflow as tf
    >>> import tfp_coupling as tc
    >>> from tfp_coupling.composition import invertible_backprop
    >>> model = tc.realnvp_flow([4], num_couplings=4, hidden_units=[8], whiten=False)
    >>> _ = [v.assign(0.3 * tf.random.stateless_normal(v.shape, [i, 0]))
    ...      for i, v in enumerate(model.trainable_variables)]
    >>> x = tf.random.stateless_normal([16, 4], [1, 2])
    >>> def grads(walk):
    ...     with tf.GradientTape() as tape:
    ...         z, ildj = walk(model.bijector, x, event_ndims=1)
    ...         loss = tf.reduce_mean(0.5 * tf.reduce_sum(z ** 2, -1) - ildj)
    ...     return tape.gradient(loss, model.trainable_variables)
    >>> saved, ordinary = grads(invertible_backprop.inverse_and_log_det), grads(
    ...     tc.fused.inverse_and_log_det)
    >>> max(float(tf.reduce_max(abs(a - b))) for a, b in zip(saved, ordinary)) < 1e-5
    True

References:
    Gomez, Ren, Urtasun, Grosse. The Reversible Residual Network. NeurIPS 2017.
    Jacobsen, Smeulders, Oyallon. i-RevNet: Deep Invertible Networks. ICLR 2018.
"""

from __future__ import annotations

import itertools

import tensorflow as tf
import tensorflow_probability as tfp

# TensorFlow has no public way to pause every tape: tf.recompute_grad uses this one too.
from tensorflow.python.eager import record

from tfp_coupling.bijectors.base import FlowBijector
from tfp_coupling.bijectors.coupling import Coupling
from tfp_coupling.composition import fused
from tfp_coupling.composition.factor_out import FactorOut

tfb = tfp.bijectors

__all__ = ["forward_and_log_det", "inverse_and_log_det"]


def inverse_and_log_det(
    bijector: tfb.Bijector, y: tf.Tensor, event_ndims: int, context: tf.Tensor | None = None
) -> tuple[tf.Tensor, tf.Tensor]:
    """:func:`tfp_coupling.fused.inverse_and_log_det`, with memory-saving gradients."""
    return _walk(bijector, y, event_ndims, forward=False, context=context)


def forward_and_log_det(
    bijector: tfb.Bijector, x: tf.Tensor, event_ndims: int, context: tf.Tensor | None = None
) -> tuple[tf.Tensor, tf.Tensor]:
    """:func:`tfp_coupling.fused.forward_and_log_det`, with memory-saving gradients."""
    return _walk(bijector, x, event_ndims, forward=True, context=context)


# -- steps: a walk as a stack machine --------------------------------------------------------
#
# The walk's state is a list of tensors: the stream being transformed first, then the channels
# each enclosing FactorOut parked. A step takes its ``arity_in`` leading tensors and puts back
# ``arity_out``; ``run`` goes in the walk's direction (with a log-det or None), ``undo`` is its
# exact inverse. Links between chained couplings are carried as halves ``(a, b)`` as in the
# fused walk, so no merge-then-split is computed between them.


class _Step:
    arity_in = arity_out = 1
    rebuilt = True  # False: an ordinary TFP bijector, walked with its input stored

    def run(self, ins: list, context) -> tuple[list, tf.Tensor | None]:
        raise NotImplementedError

    def undo(self, outs: list, context) -> list:
        raise NotImplementedError

    def rebuild(self, outs: list, context, tape: tf.GradientTape) -> tuple[list, list, object]:
        """``(ins, run(ins))`` from ``outs``: the inverse untaped, the re-run on ``tape``."""
        with tape.stop_recording():
            ins = self.undo(outs, context)
        tape.watch(ins)
        return (ins, *self.run(ins, context))


class _Link(_Step):
    """One bijector applied whole (any TFP bijector; only FlowBijectors are rebuilt)."""

    def __init__(self, bijector, forward: bool, event_ndims: int) -> None:
        self.bijector, self.forward, self.event_ndims = bijector, forward, event_ndims
        self.rebuilt = isinstance(bijector, FlowBijector)

    def run(self, ins, context):
        out, ldj, _ = fused._walk(self.bijector, ins[0], self.event_ndims, self.forward, context)
        return [out], ldj

    def undo(self, outs, context):
        nd = self.out_event_ndims
        return [fused._walk(self.bijector, outs[0], nd, not self.forward, context)[0]]

    @property
    def out_event_ndims(self) -> int:
        if isinstance(self.bijector, FlowBijector):
            return self.event_ndims
        return (self.bijector.forward_event_ndims(self.event_ndims) if self.forward
                else self.bijector.inverse_event_ndims(self.event_ndims))


class _Split(_Step):
    """``x -> (x_a, x_b)`` at the start of a run of couplings (one coupling is a run too)."""

    arity_out = 2

    def __init__(self, coupling, what: str) -> None:
        self.coupling, self.what = coupling, what

    def run(self, ins, context):
        return list(self.coupling.partition.split(self.coupling._check_input(ins[0],
                                                                            self.what))), None

    def undo(self, outs, context):
        return [self.coupling.partition.merge(*outs)]


class _Merge(_Step):
    """``(a, b) -> x`` at the end of a run of chained couplings."""

    arity_in = 2

    def __init__(self, partition) -> None:
        self.partition = partition

    def run(self, ins, context):
        return [self.partition.merge(*ins)], None

    def undo(self, outs, context):
        return list(self.partition.split(outs[0]))


class _Halves(_Step):
    """A coupling on halves: ``(a, b) -> (a, b')``, handed on as ``(b', a)`` if ``swap``.

    ``a`` passes through unchanged, so rebuilding the input and re-running the coupling need
    the conditioner's parameters at the same point: :meth:`rebuild` computes them once (on the
    tape) for both, so the backward pass adds one conditioner call per coupling, not two.
    """

    arity_in = arity_out = 2

    def __init__(self, coupling, forward: bool, event_ndims: int, swap: bool) -> None:
        self.coupling, self.forward, self.event_ndims, self.swap = (coupling, forward,
                                                                    event_ndims, swap)
        # Couplings that override their parts (TransformCoupling) are rebuilt the general way.
        cls = type(coupling)
        self.shares_parameters = (cls._forward_parts is Coupling._forward_parts
                                  and cls._inverse_parts is Coupling._inverse_parts)

    def _parts(self, forward: bool, a, b, context):
        c = self.coupling
        with tf.name_scope(c.name):
            ctx = context if c.is_conditional else None
            return c._forward_parts(a, b, ctx) if forward else c._inverse_parts(a, b, ctx)

    def run(self, ins, context):
        a, b = ins
        b, ldj = self._parts(self.forward, a, b, context)
        ldj = fused._sum_extra_event_dims(ldj, self.event_ndims, self.coupling)
        return ([b, a] if self.swap else [a, b]), ldj

    def undo(self, outs, context):
        b, a = outs if self.swap else outs[::-1]
        return [a, self._parts(not self.forward, a, b, context)[0]]

    def rebuild(self, outs, context, tape):
        if not self.shares_parameters:
            return super().rebuild(outs, context, tape)
        c = self.coupling
        b, a = outs if self.swap else outs[::-1]
        tape.watch(a)
        with tf.name_scope(c.name):
            params = c._run_conditioner(a, context if c.is_conditional else None)
            transform, inverse = ((c._transform, c._inverse_transform) if self.forward
                                  else (c._inverse_transform, c._transform))
            with tape.stop_recording():
                b_in = inverse(b, params)
            tape.watch(b_in)
            b = transform(b_in, params)
            ldj = c._log_det(a, params) if self.forward else -c._log_det(a, params)
        ldj = fused._sum_extra_event_dims(ldj, self.event_ndims, c)
        return [a, b_in], ([b, a] if self.swap else [a, b]), ldj


class _Park(_Step):
    """A FactorOut's entry: ``x -> (x[..., :k], x[..., k:])``; the second waits on the stack."""

    arity_out = 2

    def __init__(self, num_kept: int) -> None:
        self.k = num_kept

    def run(self, ins, context):
        x = ins[0]
        return [x[..., :self.k], x[..., self.k:]], None

    def undo(self, outs, context):
        return [tf.concat(outs, axis=-1)]


class _Unpark(_Step):
    """A FactorOut's exit: the transformed kept channels and the parked ones, concatenated."""

    arity_in = 2

    def __init__(self, num_kept: int) -> None:
        self.k = num_kept

    def run(self, ins, context):
        return [tf.concat(ins, axis=-1)], None

    def undo(self, outs, context):
        y = outs[0]
        return [y[..., :self.k], y[..., self.k:]]


def _plan(bijector, event_ndims: int, forward: bool) -> tuple[list[_Step], int]:
    """The steps of ``fused._walk(bijector, ...)`` in walk order, and the output event ndims."""
    if isinstance(bijector, fused._CHAIN_CLASSES):
        links = list(reversed(bijector.bijectors) if forward else bijector.bijectors)
        steps: list[_Step] = []
        i = 0
        while i < len(links):
            run = fused._coupling_run(links, i)
            if fused._uses_coupling_parts(run[0]):
                steps += _coupling_steps(run, event_ndims, forward)
            else:
                more, event_ndims = _plan(links[i], event_ndims, forward)
                steps += more
            i += len(run)
        return steps, event_ndims
    if isinstance(bijector, tfb.Invert):
        return _plan(bijector.bijector, event_ndims, not forward)
    if isinstance(bijector, FactorOut) and event_ndims == len(bijector.event_shape):
        inner, _ = _plan(bijector.inner, len(bijector.inner_event_shape), forward)
        return [_Park(bijector.num_kept), *inner, _Unpark(bijector.num_kept)], event_ndims
    if fused._uses_coupling_parts(bijector):  # a lone coupling: its rebuild shares one call too
        return _coupling_steps([bijector], event_ndims, forward), event_ndims
    link = _Link(bijector, forward, event_ndims)
    return [link], link.out_event_ndims


def _coupling_steps(run: list, event_ndims: int, forward: bool) -> list[_Step]:
    """A run of chained couplings on halves: one split, the couplings, one merge."""
    return [_Split(run[0], "x" if forward else "y"),
            *(_Halves(c, forward, event_ndims, swap=k < len(run) - 1) for k, c in enumerate(run)),
            _Merge(run[-1].partition)]


# -- the walk ----------------------------------------------------------------------------------


# Plain Python over lists of steps, nothing to convert: AutoGraph would only re-read the source.
@tf.autograph.experimental.do_not_convert
def _walk(bijector, x, event_ndims: int, forward: bool, context):
    steps, _ = _plan(bijector, event_ndims, forward)
    state, ldjs = [x], []
    for rebuilt, group in itertools.groupby(steps, key=lambda s: s.rebuilt):
        group = list(group)
        if rebuilt:
            state, ldj = _rebuilt_run(group, state, context)
        else:
            state, ldj = _apply(group, state, context)
        if ldj is not None:
            ldjs.append(ldj)
    if len(state) != 1:
        raise AssertionError(f"walk ended with {len(state)} tensors; a FactorOut was not closed")
    total = fused._sum_log_dets(ldjs) if ldjs else tf.zeros([], x.dtype)
    return state[0], total


def _apply(steps: list[_Step], state: list, context) -> tuple[list, tf.Tensor | None]:
    """Runs ``steps`` on the leading tensors of ``state``; the summed log-det (or None)."""
    ldjs = []
    for s in steps:
        outs, ldj = s.run(state[:s.arity_in], context)
        state = [*outs, *state[s.arity_in:]]
        if ldj is not None:
            ldjs.append(ldj)
    return state, (fused._sum_log_dets(ldjs) if ldjs else None)


def _rebuilt_run(steps: list[_Step], state: list, context) -> tuple[list, tf.Tensor | None]:
    """``_apply`` as one ``tf.custom_gradient`` whose gradient rebuilds instead of storing."""
    n = len(state)
    if not any(isinstance(s, _Link | _Halves) for s in steps):
        return _apply(steps, state, context)  # only splits and concats: nothing to save
    dtype = state[0].dtype

    @tf.custom_gradient
    def run(*args):
        ctx = args[n] if context is not None else None
        # Not taped: an enclosing GradientTape would otherwise keep every intermediate alive
        # (eagerly), which is exactly what this run avoids.
        with record.stop_recording():
            outs, ldj = _apply(steps, list(args[:n]), ctx)
        if ldj is None:
            ldj = tf.zeros([], dtype)

        def grad_fn(*grads, variables=None):
            # Closes over the run's outputs only: every other tensor is rebuilt from them.
            return _backward(steps, outs, ldj, list(grads), ctx, variables)

        return (*outs, ldj), grad_fn

    args = [*state, context] if context is not None else state
    *outs, ldj = run(*args)
    return outs, ldj


def _backward(steps, outs, ldj, grads, context, variables):
    """Walks ``steps`` backwards from the run's outputs and their cotangents."""
    state = list(outs)
    d_state = [tf.zeros_like(o) if g is None else g for o, g in zip(outs, grads[:-1],
                                                                    strict=True)]
    d_ldj = tf.zeros_like(ldj) if grads[-1] is None else grads[-1]
    variables = list(variables or [])
    d_vars: list = [None] * len(variables)
    d_context = None
    for s in reversed(steps):
        n_out = s.arity_out
        outs_s, d_outs = state[:n_out], d_state[:n_out]
        if not tf.executing_eagerly():
            outs_s = _after(outs_s, d_outs[0])
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(variables)
            if context is not None:
                tape.watch(context)
            ins, new_outs, step_ldj = s.rebuild(outs_s, context, tape)
        targets, cotangents = list(new_outs), list(d_outs)
        if step_ldj is not None:
            if step_ldj.shape.rank == d_ldj.shape.rank:
                targets.append(step_ldj)
                cotangents.append(d_ldj)
            else:  # a log-det broadcast into the run's sum: contract it with the sum's cotangent
                targets.append(tf.reduce_sum(step_ldj * d_ldj))
                cotangents.append(tf.ones([], d_ldj.dtype))
        sources = [*ins, *variables, *([context] if context is not None else [])]
        g = tape.gradient(targets, sources, output_gradients=cotangents)
        d_ins, g_vars = g[:len(ins)], g[len(ins):len(ins) + len(variables)]
        d_ins = [tf.zeros_like(t) if d is None else d for t, d in zip(ins, d_ins, strict=True)]
        for i, gv in enumerate(g_vars):
            if gv is not None:
                d_vars[i] = gv if d_vars[i] is None else d_vars[i] + gv
        if context is not None and g[-1] is not None:
            d_context = g[-1] if d_context is None else d_context + g[-1]
        state = [*ins, *state[n_out:]]
        d_state = [*d_ins, *d_state[n_out:]]
    d_args = list(d_state)
    if context is not None:
        d_args.append(tf.zeros_like(context) if d_context is None else d_context)
    return (d_args, d_vars) if variables else d_args


def _after(tensors: list, cotangent: tf.Tensor) -> list:
    """``tensors``, made to depend on ``cotangent``: a step is rebuilt only once the gradient
    reaches it.

    Without it the inverses, which need only the run's outputs, may all run as early as the
    scheduler likes (TF's executor runs every ready op; XLA reorders freely and drops control
    dependencies) and every rebuilt input would be alive at once. The added value is 0 unless
    the cotangent is NaN (then the gradient is NaN anyway): a form no compiler can fold away,
    as in ``tf.recompute_grad``.
    """
    first = tf.reshape(cotangent, [-1])[:1]
    first = tf.reduce_max(first)
    zero = tf.where(tf.equal(first, first), tf.zeros([], first.dtype),
                    tf.constant(float("nan"), first.dtype))
    return [t + tf.cast(zero, t.dtype) for t in tensors]
