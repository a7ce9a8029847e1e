"""What every tfp-coupling bijector shares: safe caching, fused calls, input checks.

**Caching.** TFP caches ``forward``/``inverse`` results keyed on the input tensor. That is right
for bijectors without weights, and wrong for ours in eager mode: a conditioner's weights change
under ``fit``, ``assign`` or weight loading, and a cached eager result would then be stale.
:class:`GraphMemoCache` therefore caches nothing eagerly, and inside a graph (where a result
reads the weights when it runs) remembers each bijector's last call, so that TFP's
``log_prob`` (``inverse`` and then a log-det at the same point) runs every conditioner once.
The fused ``forward_and_log_det`` / ``inverse_and_log_det`` methods give both results from one
pass in any mode.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence

import tensorflow as tf
import tensorflow_probability as tfp
from tensorflow_probability.python.internal import cache_util

tfb = tfp.bijectors

__all__ = ["Chain", "FlowBijector", "GraphMemoCache", "check_event_shape"]


class GraphMemoCache(cache_util.BijectorCache):
    """TFP's bijector cache, restricted to what is safe with weights that change.

    **Eagerly, nothing is cached**: every call computes afresh, so a weight change (``fit``,
    ``assign``, loading) is always seen, even for the same input tensor.

    **Inside a graph** (``tf.function``, XLA), each bijector remembers its last call per
    direction, keyed by the identity of the symbolic input tensor, together with the log-det
    computed in the same pass (for a :class:`FlowBijector`, one conditioner call gives both).
    TFP's ``TransformedDistribution.log_prob`` asks for ``inverse(y)`` and then for the log-det
    at the same ``y`` (or, through ``experimental_compute_density_correction``, at the
    resulting ``x``); those later requests are answered from the memo, so a coupling's
    conditioner runs once per ``log_prob``, as in the fused walk of ``FlowModel.log_prob``. A
    symbolic result reads the weights when the graph runs, so across calls of a ``tf.function``
    it cannot be stale; only a weight assigned *between* two calls on the same tensor inside one
    traced function would go unseen (as with TFP's own cache). A keyword argument (a context)
    is part of the key, by identity; one that cannot be weakly referenced turns the memo off.
    """

    def _memo(self) -> dict:
        # Held in the instance dict directly: tf.Module's __setattr__ would wrap it for
        # checkpoint tracking, and _TF_MODULE_IGNORED_PROPERTIES hides it from variable walks.
        return self.bijector.__dict__.setdefault("_graph_memo", {})

    def _hit(self, input, fn_name, kwargs):  # noqa: A002 (TFP's argument name)
        entry = self._memo().get(fn_name)
        if (entry is not None and entry[0]() is input and entry[3].keys() == kwargs.keys()
                and all(ref() is kwargs[k] for k, ref in entry[3].items())):
            return entry
        return None

    def _lookup(self, input, forward_name, inverse_name, **kwargs):  # noqa: A002
        bijector = self.bijector
        kwarg_refs = _weak_refs(kwargs)
        if kwarg_refs is None or tf.executing_eagerly():
            return getattr(bijector, forward_name)(input, **kwargs)
        hit = self._hit(input, forward_name, kwargs)
        if hit is not None:
            return hit[1]
        attrs = {}
        if isinstance(bijector, FlowBijector):
            forward = forward_name == "_forward"
            if forward:
                output, fldj = bijector._forward_and_log_det(bijector._check_input(input, "x"),
                                                             **kwargs)
                attrs["ildj"] = -fldj
            else:
                output, attrs["ildj"] = bijector._inverse_and_log_det(
                    bijector._check_input(input, "y"), **kwargs)
        else:
            output = getattr(bijector, forward_name)(input, **kwargs)
        # Attributes are shared by both directions, as in TFP: ildj(y) = -fldj(inverse(y)).
        memo = self._memo()
        memo[forward_name] = (weakref.ref(input), output, attrs, kwarg_refs)
        memo[inverse_name] = (weakref.ref(output), input, attrs, kwarg_refs)
        return output

    def _attributes(self, input, fn_name, **kwargs):  # noqa: A002
        if tf.executing_eagerly() or _weak_refs(kwargs) is None:
            return {}
        hit = self._hit(input, fn_name, kwargs)
        return hit[2] if hit is not None else {}


def _weak_refs(kwargs: dict) -> dict | None:
    """Weak references to keyword arguments (a context tensor), or None if one cannot have
    one (a Python list): such a call is not memoised."""
    try:
        return {k: weakref.ref(v) for k, v in kwargs.items()}
    except TypeError:
        return None


class FlowBijector(tfb.Bijector):
    """Base of tfp-coupling's bijectors: uncached, fused, and checking its input.

    Subclasses implement ``_forward_and_log_det(x)`` and ``_inverse_and_log_det(y)``, each
    returning the output and the log-det of *that* direction summed over the event; the four TFP
    methods are derived from them. Subclasses whose log-det needs less than the full transform
    may override ``_forward_log_det_jacobian`` / ``_inverse_log_det_jacobian``.
    """

    _cache = GraphMemoCache()
    _TF_MODULE_IGNORED_PROPERTIES = frozenset(
        tfb.Bijector._TF_MODULE_IGNORED_PROPERTIES | {"_graph_memo"})

    def __init__(
        self,
        event_shape: Sequence[int],
        dtype: tf.DType | str,
        is_constant_jacobian: bool,
        validate_args: bool,
        parameters: dict,
        name: str,
        output_event_shape: Sequence[int] | None = None,
    ) -> None:
        self._event_shape = tuple(int(d) for d in event_shape)
        # Event shape of forward's output; equal to event_shape unless a subclass (Squeeze)
        # reshapes the event. It must have the same rank as event_shape.
        self._output_event_shape = (self._event_shape if output_event_shape is None
                                    else tuple(int(d) for d in output_event_shape))
        if len(self._output_event_shape) != len(self._event_shape):
            raise ValueError(f"output_event_shape {list(self._output_event_shape)} must have the "
                             f"rank of event_shape {list(self._event_shape)}")
        self._flow_dtype = tf.as_dtype(dtype)
        super().__init__(
            forward_min_event_ndims=len(self._event_shape),
            is_constant_jacobian=is_constant_jacobian,
            validate_args=validate_args,
            # As TFP's own bijectors: NumPy arrays and Python numbers are converted to this
            # dtype, a tensor of another dtype is an error.
            dtype=self._flow_dtype,
            parameters=parameters,
            name=name,
        )
        self._expose_variables()

    @classmethod
    def _parameter_properties(cls, dtype, num_classes=None):
        # No parameter carries a batch shape: weights live in Keras layers and are shared by
        # the whole batch, so TFP's batch-shape queries give [].
        return {}

    def _expose_variables(self) -> None:
        """Puts the TF variables behind ``keras_layers`` where ``tf.Module`` looks for them.

        Keras 3 variables are not ``tf.Variable`` objects, and ``tf.Module`` (which TFP
        bijectors and distributions are) finds variables by walking instance attributes. This
        attribute makes ``bijector.trainable_variables``, a ``tfb.Chain``'s and a
        ``tfd.TransformedDistribution``'s list this bijector's weights, so a plain
        ``tf.GradientTape`` loop over ``dist.trainable_variables`` trains them.
        """
        self._layer_variables = tuple(
            _tf_variable(v) for layer in self.keras_layers for v in layer.weights)

    @property
    def variables(self) -> tuple[tf.Variable, ...]:
        """The TF variables of this bijector's Keras layers (trainable or not)."""
        self._expose_variables()  # a conditioner may have been built since construction
        return self._layer_variables

    @property
    def trainable_variables(self) -> tuple[tf.Variable, ...]:
        """The trainable TF variables of this bijector's Keras layers."""
        return tuple(v for v in self.variables if v.trainable)

    @property
    def non_trainable_variables(self) -> tuple[tf.Variable, ...]:
        return tuple(v for v in self.variables if not v.trainable)

    @property
    def event_shape(self) -> tuple[int, ...]:
        """The event shape of ``forward``'s input (``x``)."""
        return self._event_shape

    @property
    def output_event_shape(self) -> tuple[int, ...]:
        """The event shape of ``forward``'s output (``y``); ``event_shape`` unless overridden."""
        return self._output_event_shape

    def _forward_event_shape(self, input_shape):
        return self._swap_event_shape(input_shape, self._event_shape, self._output_event_shape)

    def _inverse_event_shape(self, output_shape):
        return self._swap_event_shape(output_shape, self._output_event_shape, self._event_shape)

    def _forward_event_shape_tensor(self, input_shape):
        return self._swap_event_shape_tensor(input_shape, self._output_event_shape)

    def _inverse_event_shape_tensor(self, output_shape):
        return self._swap_event_shape_tensor(output_shape, self._event_shape)

    @staticmethod
    def _swap_event_shape(shape, given, result):
        if given == result:
            return shape
        shape = tf.TensorShape(shape)
        if shape.rank is None:
            return tf.TensorShape(None)
        return shape[: shape.rank - len(given)].concatenate(result)

    def _swap_event_shape_tensor(self, shape, result):
        shape = tf.convert_to_tensor(shape, dtype_hint=tf.int32)
        return tf.concat([shape[: tf.size(shape) - len(result)],
                          tf.constant(result, shape.dtype)], axis=0)

    @property
    def keras_layers(self) -> list:
        """Keras layers that own this bijector's weights; a ``FlowModel`` tracks them."""
        return []

    # TFP's public methods convert their input before a subclass sees it; these overrides check
    # its dtype first, so a tensor of the wrong dtype gets the message of _check_dtype, while
    # NumPy arrays and Python numbers are converted to the flow dtype as TFP's bijectors do.
    # They call the base class by name and are not converted by AutoGraph: inside a
    # tf.function, AutoGraph's rewrite of a zero-argument super() can bind the wrong method.
    @tf.autograph.experimental.do_not_convert
    def forward(self, x, name: str = "forward", **kwargs) -> tf.Tensor:
        return tfb.Bijector.forward(self, self._check_dtype(x, "x"), name=name, **kwargs)

    @tf.autograph.experimental.do_not_convert
    def inverse(self, y, name: str = "inverse", **kwargs) -> tf.Tensor:
        return tfb.Bijector.inverse(self, self._check_dtype(y, "y"), name=name, **kwargs)

    @tf.autograph.experimental.do_not_convert
    def forward_log_det_jacobian(self, x, event_ndims=None, name: str = "forward_log_det_jacobian",
                                 **kwargs) -> tf.Tensor:
        return tfb.Bijector.forward_log_det_jacobian(self, self._check_dtype(x, "x"), event_ndims,
                                                     name=name, **kwargs)

    @tf.autograph.experimental.do_not_convert
    def inverse_log_det_jacobian(self, y, event_ndims=None, name: str = "inverse_log_det_jacobian",
                                 **kwargs) -> tf.Tensor:
        return tfb.Bijector.inverse_log_det_jacobian(self, self._check_dtype(y, "y"), event_ndims,
                                                     name=name, **kwargs)

    @property
    def is_conditional(self) -> bool:
        """Whether calls take a ``context=`` keyword (conditional couplings)."""
        return False

    def forward_and_log_det(self, x: tf.Tensor, **kwargs) -> tuple[tf.Tensor, tf.Tensor]:
        """``(forward(x), forward_log_det_jacobian(x))`` with one evaluation of the transform.

        ``kwargs``: ``context=`` for a conditional bijector.
        """
        with tf.name_scope(self.name):
            x = self._check_input(x, "x")
            return self._forward_and_log_det(x, **kwargs)

    def inverse_and_log_det(self, y: tf.Tensor, **kwargs) -> tuple[tf.Tensor, tf.Tensor]:
        """``(inverse(y), inverse_log_det_jacobian(y))`` with one evaluation of the transform."""
        with tf.name_scope(self.name):
            y = self._check_input(y, "y")
            return self._inverse_and_log_det(y, **kwargs)

    def _forward(self, x, **kwargs):
        return self._forward_and_log_det(self._check_input(x, "x"), **kwargs)[0]

    def _inverse(self, y, **kwargs):
        return self._inverse_and_log_det(self._check_input(y, "y"), **kwargs)[0]

    def _forward_log_det_jacobian(self, x, **kwargs):
        return self._forward_and_log_det(self._check_input(x, "x"), **kwargs)[1]

    def _inverse_log_det_jacobian(self, y, **kwargs):
        return self._inverse_and_log_det(self._check_input(y, "y"), **kwargs)[1]

    def _check_dtype(self, x, what: str) -> tf.Tensor:
        """``x`` as a tensor of the flow dtype; ``TypeError`` for a tensor of another dtype."""
        if isinstance(x, tf.Tensor | tf.Variable) and x.dtype != self._flow_dtype:
            raise TypeError(
                f"{self.name}: {what} has dtype {x.dtype.name}, expected {self._flow_dtype.name}"
            )
        return tf.convert_to_tensor(x, dtype=self._flow_dtype, name=what)

    def _check_input(self, x: tf.Tensor, what: str) -> tf.Tensor:
        """Raises on a wrong dtype or event shape, naming expected and given.

        ``what == "y"`` checks against ``output_event_shape``, anything else against
        ``event_shape``. Static mismatches always raise ``TypeError``/``ValueError``; shapes only
        known at run time are asserted when ``validate_args=True``.
        """
        x = self._check_dtype(x, what)
        expected = list(self._output_event_shape if what == "y" else self._event_shape)
        rank = len(expected)
        if check_event_shape(x.shape, expected, self.name, what):
            return x
        if self.validate_args:
            shape = tf.shape(x)
            with tf.control_dependencies([
                tf.debugging.assert_equal(
                    shape[-rank:], tf.constant(expected, shape.dtype),
                    message=f"{self.name}: {what} event shape differs from expected {expected}",
                )
            ]):
                x = tf.identity(x)
        return x


def check_context_given(owner: str, context_shape, context) -> bool:
    """Raises ``ValueError`` unless a context is given exactly when ``context_shape`` is set.

    Returns whether there is a context to use. Shared by conditional couplings and
    ``FlowModel`` so that both say the same thing.
    """
    if context_shape is None:
        if context is not None:
            raise ValueError(f"{owner}: got a context, but it is not conditional (build it "
                             f"with context_shape=[c])")
        return False
    if context is None:
        raise ValueError(f"{owner}: it is conditional (context_shape {list(context_shape)}): "
                         f"pass a context")
    return True


def _tf_variable(variable) -> tf.Variable:
    """The ``tf.Variable`` behind a Keras 3 variable (TensorFlow backend)."""
    if isinstance(variable, tf.Variable):
        return variable
    with tf.init_scope():  # outside any autocast scope, ``value`` is the variable itself
        value = variable.value
    if not isinstance(value, tf.Variable):
        raise TypeError(f"cannot find the tf.Variable behind {variable!r}; tfp-coupling needs "
                        f"Keras' TensorFlow backend")
    return value


def check_event_shape(shape: tf.TensorShape, expected: Sequence[int], owner: str,
                      what: str) -> bool:
    """Raises ``ValueError`` naming both shapes if ``shape`` cannot end in ``expected``.

    Checks what is known statically (rank and trailing dimensions); returns ``True`` when the
    event dimensions are all known, so no run-time check is needed. Shared by the bijectors'
    input checks and ``FlowModel``'s, so both speak the same language.

    Example:
        >>> import tensorflow as tf
        >>> check_event_shape(tf.TensorShape([8, 4]), [4], "flow", "x")
        True
    """
    expected = [int(d) for d in expected]
    rank = len(expected)
    if shape.rank is None:
        return False
    if shape.rank < rank:
        raise ValueError(
            f"{owner}: {what} has shape {shape.as_list()} (rank {shape.rank}); "
            f"expected [..., {', '.join(map(str, expected))}] (event rank {rank})"
        )
    given = shape.as_list()[shape.rank - rank:]
    if any(g is not None and g != e for g, e in zip(given, expected, strict=True)):
        raise ValueError(
            f"{owner}: {what} has event shape {given} (full shape {shape.as_list()}); "
            f"expected event shape {expected}"
        )
    return None not in given


class Chain(tfb.Composition):
    """A chain of bijectors, as ``tfb.Chain``, with :class:`GraphMemoCache` instead of TFP's cache.

    Same order as ``tfb.Chain``: the last bijector in the list is applied first in ``forward``.
    It differs in two ways, both needed for chains of weighted bijectors:

    * no eager result cache: ``tfb.Chain`` caches ``forward``/``inverse`` by input tensor itself,
      so it would return stale values for the same eager tensor after a weight change;
    * not a ``CompositeTensor``: TFP makes ``tfb.Chain`` one, and ``tf.Module`` then looks for
      variables in its tensor components only, so a ``tfd.TransformedDistribution`` over it
      would report no ``trainable_variables``. This chain is walked as a module, and
      ``dist.trainable_variables`` lists the weights of every link.

    Example:
        >>> import tensorflow as tf, tensorflow_probability as tfp
        >>> from tfp_coupling import AffineCoupling, Chain, Rescaling, masks, nets
        >>> flow = Chain([Rescaling([2]), AffineCoupling(masks.half_mask(2),
        ...                                              nets.MLP([8], output_shape=[2]))])
        >>> dist = tfp.distributions.TransformedDistribution(
        ...     tfp.distributions.MultivariateNormalDiag(tf.zeros(2)), flow)
        >>> len(dist.trainable_variables)  # the scale, and the MLP's weights and biases
        5
    """

    _cache = GraphMemoCache()
    _TF_MODULE_IGNORED_PROPERTIES = frozenset(
        tfb.Composition._TF_MODULE_IGNORED_PROPERTIES | {"_graph_memo"})

    def __init__(
        self,
        bijectors: Sequence[tfb.Bijector] | None = None,
        validate_args: bool = False,
        validate_event_size: bool = False,
        parameters: dict | None = None,
        name: str | None = None,
    ) -> None:
        parameters = dict(locals()) if parameters is None else parameters
        if name is None:
            name = ("identity" if not bijectors
                    else "_of_".join(["chain"] + [b.name for b in bijectors]).replace("/", ""))
        # An empty chain is a single-part identity; otherwise TFP infers the event ndims.
        min_event_ndims = None if bijectors else 0
        with tf.name_scope(name) as name:
            super().__init__(
                bijectors=bijectors or (),
                validate_args=validate_args,
                validate_event_size=validate_event_size,
                forward_min_event_ndims=min_event_ndims,
                inverse_min_event_ndims=min_event_ndims,
                parameters=parameters,
                name=name,
            )

    @property
    def is_conditional(self) -> bool:
        """Whether some link takes a ``context`` (which the chain hands to all such links)."""
        return any(getattr(b, "is_conditional", False) for b in self._bijectors)

    def _link_kwargs(self, bijector, kwargs: dict) -> dict:
        """A link's keyword arguments: TFP's by-name ones, plus ``context`` for conditional
        links (one context conditions the whole chain)."""
        out = dict(kwargs.get(bijector.name, {}))
        if "context" in kwargs and getattr(bijector, "is_conditional", False):
            out.setdefault("context", kwargs["context"])
        return out

    def _walk_forward(self, step_fn, x, **kwargs):
        for bijector in reversed(self._bijectors):
            x = step_fn(bijector, x, **self._link_kwargs(bijector, kwargs))
        return x

    def _walk_inverse(self, step_fn, y, **kwargs):
        for bijector in self._bijectors:
            y = step_fn(bijector, y, **self._link_kwargs(bijector, kwargs))
        return y
