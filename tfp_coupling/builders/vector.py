"""Vector flows: NICE and RealNVP stacks of alternating-mask couplings as ``FlowModel``s."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from tfp_coupling import dequantization, masks, nets
from tfp_coupling.bijectors import (
    AdditiveCoupling,
    AffineCoupling,
    Chain,
    Coupling,
    LogScale,
    LULinear,
    Rescaling,
    TransformCoupling,
    TriLAffine,
    TriLAffineParams,
    rational_quadratic_spline,
)
from tfp_coupling.bijectors.linear import rotation_matrix
from tfp_coupling.model.flow_model import FlowModel
from tfp_coupling.model.registry import builder_config

__all__ = ["MIXING_ANGLE", "REALNVP_SINE_SCALE", "SINE_SCALE", "initialize_rescaling",
           "mask_sequence", "nice_flow", "realnvp_flow", "spline_flow"]

# The scale of the sine units nice_flow(sine_scale="auto") gives a conditioner that sees one
# coordinate (benchmarks/README.md, "NICE on rings: sine units in the first layer").
SINE_SCALE = 3.0
# The scale of realnvp_flow(sine_scale="auto")'s sine units, in half of the first layer of each
# conditioner that sees one coordinate (benchmarks/README.md, "RealNVP: sine units in half the
# first layer").
REALNVP_SINE_SCALE = 2.0
# The angle (radians) of the rotation mixing="rotation" starts each learned mixing at
# (benchmarks/README.md, "NICE: 16 couplings and rotations between them").
MIXING_ANGLE = 1.0


def mask_sequence(event_shape: Sequence[int], num: int, kind: str | None = None) -> list[tf.Tensor]:
    """``num`` masks alternating between a mask and its complement.

    ``kind``: ``"half"`` (default for vectors) or ``"alternating"`` for rank-1 events;
    ``"checkerboard"`` (default for images) or ``"channel"`` for ``(H, W, C)`` events.
    """
    shape = [int(d) for d in event_shape]
    if len(shape) == 1:
        kind = kind or "half"
        first = {"half": lambda: masks.half_mask(shape[0]),
                 "alternating": lambda: masks.alternating_mask(shape[0])}.get(kind)
    elif len(shape) == 3:
        kind = kind or "checkerboard"
        first = {"checkerboard": lambda: masks.checkerboard_mask(*shape),
                 "channel": lambda: masks.channel_mask(*shape)}.get(kind)
    else:
        raise ValueError(f"event_shape must be [D] or [H, W, C], got {shape}")
    if first is None:
        raise ValueError(f"mask {kind!r} does not fit event shape {shape}; choose from "
                         f"{'half, alternating' if len(shape) == 1 else 'checkerboard, channel'}")
    m = first()
    return [m if i % 2 == 0 else masks.complement(m) for i in range(num)]


def _coupling_stack(
    coupling_cls: type[Coupling],
    event_shape: Sequence[int],
    num_couplings: int,
    hidden_units: Sequence[int],
    mask: str | None,
    activation: str,
    dtype: tf.DType,
    name: str,
    zero_init: bool = True,
    num_params: int | None = None,
    mixing: str | None = None,
    random_shift: bool = False,
    dropout: float = 0.0,
    small_data_identity: bool = False,
    sine_scale: float | str | None = None,
    sine_fraction: float = 1.0,
    auto_sine_scale: float = SINE_SCALE,
    small_data_sines: bool = True,
    **coupling_kwargs,
) -> list:
    """The couplings with alternating masks; with ``mixing="lu"`` an :class:`LULinear` between
    every two of them (vector events only), starting at the identity; with
    ``mixing="rotation"`` starting at ``rotation_matrix(D, MIXING_ANGLE)``. ``random_shift``
    draws the first ``b`` outputs of each zero-initialised conditioner (an affine coupling's
    shifts) at random. ``activation="auto"`` or ``small_data_identity`` make the conditioners
    :class:`~tfp_coupling.nets.AutoMLP`s, which choose by the training data's size.
    ``sine_scale``: the conditioners' ``sine_scale``; ``"auto"`` gives ``auto_sine_scale`` to those
    that see one coordinate (``x_a`` and any context together) and none to the others;
    ``sine_fraction`` the share of their first layer's units that are sine units; without
    ``small_data_sines`` conditioners that choose by the data drop the ``"auto"`` sine units
    on small data."""
    if int(num_couplings) < 1:
        raise ValueError(f"num_couplings must be >= 1, got {num_couplings}")
    if mixing not in (None, "lu", "rotation"):
        raise ValueError(f"mixing must be None, 'lu' or 'rotation', got {mixing!r}")
    if mixing and len(event_shape) != 1:
        raise ValueError(f"mixing={mixing!r} mixes vector events; the event shape is "
                         f"{list(event_shape)} (image flows mix by their masks and squeezes)")
    if isinstance(sine_scale, str) and sine_scale != "auto":
        raise ValueError(f"sine_scale must be a positive number, 'auto' or None, got "
                         f"{sine_scale!r}")
    policy = nets.conditioner_policy(dtype)
    if num_params is not None:  # a TransformCoupling: its parameter count is an argument
        coupling_kwargs["num_params"] = num_params
    stack = []
    for i, m in enumerate(mask_sequence(event_shape, num_couplings, mask)):
        if mixing and i > 0:
            size = int(event_shape[0])
            stack.append(LULinear(size, dtype=dtype, name=f"{name}_mixing_{i}"))
            if mixing == "rotation":
                stack[-1].set_matrix(rotation_matrix(size, MIXING_ANGLE))
        b_shape = masks.Partition(m).b_shape
        params = coupling_cls.num_params if num_params is None else num_params
        out_shape = (*b_shape[:-1], params * b_shape[-1])
        sine = sine_scale
        if sine == "auto":
            context = coupling_kwargs.get("context_shape") or [0]
            inputs = int(np.prod(masks.Partition(m).a_shape)) + int(np.prod(context))
            sine = auto_sine_scale if inputs == 1 else None
        chosen_by_data = activation == "auto" or small_data_identity
        extra = {"small_data_identity": small_data_identity,
                 "small_data_sines": small_data_sines or sine_scale != "auto"
                 } if chosen_by_data else {}
        net = (nets.AutoMLP if chosen_by_data else nets.MLP)(
            hidden_units, out_shape, activation=activation, zero_init=zero_init,
            random_outputs=b_shape[-1] if random_shift else 0, dropout=dropout, dtype=policy,
            sine_scale=sine, sine_fraction=sine_fraction, name=f"{name}_conditioner_{i}",
            **extra)
        stack.append(coupling_cls(m, net, dtype=dtype, name=f"{name}_coupling_{i}",
                                  **coupling_kwargs))
    return stack


def nice_flow(
    event_shape: Sequence[int],
    num_couplings: int = 16,
    hidden_units: Sequence[int] = (64, 64),
    rescale: bool = True,
    mask: str | None = None,
    activation: str = "relu",
    zero_init: bool = False,
    whiten: bool = True,
    dropout: float = 0.0,
    sine_scale: float | str | None = "auto",
    mixing: str | None = "auto",
    context_shape: Sequence[int] | None = None,
    dtype: tf.DType | str = "float32",
    name: str | None = None,
) -> FlowModel:
    """NICE: additive couplings with alternating masks, then a learned diagonal rescaling.

    ``x = f(z)`` with ``f^{-1} = S ∘ c_K ∘ ... ∘ c_1`` as in Dinh et al. (2014): couplings
    ``c_k`` with ``y_b = x_b + m_k(x_a)`` and, if ``rescale``, ``S(h) = h * exp(s)``. Without
    rescaling the flow is volume-preserving (log-det 0) and cannot match a density's scale.

    The shift networks start random, not at zero: at the identity, the gradient of the NICE loss
    with respect to a shift is ``-E[x_b | x_a]``, which is 0 for data symmetric under
    ``x_b -> -x_b`` (circles, rings), so a zero-initialised NICE never leaves its start there.
    ``zero_init=True`` restores the identity start: use it where some dimensions vary far less
    than others (e.g. flattened pixels), which a random start would shift by many of their
    standard deviations. ``whiten`` as in :func:`realnvp_flow`: a ``TriLAffine`` at the data
    end, set on the first ``fit`` to the data's mean and Cholesky factor. Additive couplings
    change no volume and the rescaling is diagonal, so without it a correlated table starts
    far from its Gaussian fit and 300 epochs do not bring it back (breast_cancer, 3 seeds:
    -13.3 nats against -26.1 whitened; ``whiten=False`` is the paper's model). 16 couplings
    (NICE's paper used 4, of far wider networks): 8 against 4 gained 0.24 nats on circles, and
    16 against 8 at the 2-D budget (30 epochs, 3 seeds, sine units, no mixing): eight
    Gaussians 0.29, circles 0.20, pinwheel 0.11, rings 0.11, two spirals 0.09 nats better,
    checkerboard and two moons 0.01-0.02; tables level (``benchmarks/README.md``, "NICE: 16
    couplings and rotations between them").
    ``dropout`` as in :func:`realnvp_flow`.

    ``mixing="auto"`` puts, on 2-D data, a learned :class:`tfp_coupling.LULinear` between every
    two couplings, starting at the rotation by ``MIXING_ANGLE`` (1 radian; what
    ``mixing="rotation"`` gives any vector data, plane by plane), and none on other sizes;
    ``"lu"`` starts it at the identity, ``None`` leaves it out. Why: on two coordinates
    alternating couplings shear along the two axes only; rotated between them, each shears
    along another direction. The maps stay linear, so the log-det stays constant. At the 2-D
    budget (16 couplings, 3 seeds, against none): two spirals 0.12, rings 0.08, circles 0.06,
    eight Gaussians 0.04, pinwheel 0.03 nats better, two moons and checkerboard level; started
    at the identity it did worse than none (rings +0.06), and with 8 couplings an untrained
    rotation was no better than none. Both together, over 5 seeds (``density_quality.py``):
    rings 0.37 nats below the Gaussian fit (0.21 before), every 2-D density 0.01-0.26 better
    than 8 couplings without mixing, the tables level.

    ``sine_scale="auto"`` gives the conditioners that see one coordinate (every one on 2-D
    data) sine units in their first layer, ``sin(W_1 x_a + b_1)`` with weights drawn in
    ``±3/sqrt(fan_in)`` (:class:`tfp_coupling.nets.MLP`), and the others none; a number gives
    every conditioner that scale, ``None`` none. Why: on rotation-symmetric data every single
    shear of the identity raises the NICE loss, so with ReLU units NICE sits at the Gaussian
    fit on rings for about 90 epochs; the high-frequency shears sine units represent leave that
    plateau at once (rings, 8 couplings, 30 epochs, 5 seeds: 0.21 nats below the Gaussian fit,
    every seed 0.18-0.24 below, where ReLU units end at it; circles 0.07 and two spirals 0.06
    better, the other 2-D densities level within the noise). Where conditioners see three or more
    coordinates they fit worse (6-D data, tables), hence the rule (``benchmarks/README.md``,
    "NICE on rings: sine units"). A larger NICE with sine units (16 couplings of [256, 256],
    200 epochs) diverged on one of six runs without gradient clipping; with
    ``global_clipnorm=1`` that run and eight others (every 2-D density) trained: clip such runs.
    ``context_shape=[c]`` makes it conditional, ``p(x | context)`` (see
    :class:`tfp_coupling.FlowModel`).

    Example:
        >>> import tfp_coupling as tc
        >>> model = tc.nice_flow(event_shape=[4], num_couplings=4, hidden_units=[32])
        >>> len(model.flow_layers)  # the whitening, 4 conditioners, the rescaling weights
        6
        >>> flat = tc.nice_flow([2], num_couplings=2)  # each conditioner sees one coordinate
        >>> [layer.sine_scale for layer in flat.flow_layers if isinstance(layer, tc.nets.MLP)]
        [3.0, 3.0]
        >>> [type(b).__name__ for b in flat.bijector.bijectors]  # a rotation between couplings
        ['TriLAffine', 'AdditiveCoupling', 'LULinear', 'AdditiveCoupling', 'Rescaling']
    """
    dtype = tf.as_dtype(dtype)
    config = builder_config(nice_flow, locals())
    name = name or "nice"
    if mixing not in (None, "auto", "lu", "rotation"):
        raise ValueError(f"mixing must be None, 'auto', 'lu' or 'rotation', got {mixing!r}")
    if mixing == "auto":
        mixing = "rotation" if list(event_shape) == [2] else None
    steps: list = _coupling_stack(AdditiveCoupling, event_shape, num_couplings, hidden_units,
                                  mask, activation, dtype, name, zero_init=zero_init,
                                  dropout=dropout, sine_scale=sine_scale, mixing=mixing,
                                  context_shape=context_shape)
    if rescale:
        steps.append(Rescaling(event_shape, dtype=dtype, name=f"{name}_rescaling"))
    steps = _whitening(event_shape, whiten, dtype, name) + steps
    return FlowModel(Chain(steps, name=name), event_shape, flow_dtype=dtype,
                     flow_config=config, context_shape=context_shape, name=name)


def realnvp_flow(
    event_shape: Sequence[int],
    num_couplings: int = 8,
    hidden_units: Sequence[int] = (64, 64),
    mask: str | None = None,
    log_scale_clamp: float | None = 2.0,
    shift_clamp: float | None = 5.0,
    activation: str = "auto",
    whiten: bool = True,
    normalizing: bool = True,
    mixing: str | None = None,
    zero_init: bool | None = None,
    fade_outside: float | None = None,
    dropout: float = 0.0,
    sine_scale: float | str | None = "auto",
    sine_fraction: float = 0.5,
    small_data_sines: bool = False,
    context_shape: Sequence[int] | None = None,
    dtype: tf.DType | str = "float32",
    name: str | None = None,
) -> FlowModel:
    """RealNVP: affine couplings ``y_b = x_b * exp(s(x_a)) + t(x_a)`` with alternating masks.

    Each coupling's log-scale is soft-clamped to ``(-log_scale_clamp, log_scale_clamp)``
    (see :class:`tfp_coupling.AffineCoupling`). Vector events use half (or alternating) masks,
    image events ``(H, W, C)`` checkerboard (or channel-wise) masks.

    With ``whiten`` (vector events), a :class:`tfp_coupling.TriLAffine` at the data end is set on
    the first ``fit`` to the mean and Cholesky factor of the training data: the untrained flow is
    the full-covariance Gaussian fit up to the random shifts below (exactly it with
    ``zero_init=True``), and the couplings learn what is not Gaussian. On small correlated
    tables this decides whether the flow beats that Gaussian at all.

    **Units and start, chosen by the training data's size** (``activation="auto"``,
    ``zero_init=None``): the first ``fit`` (or :func:`tfp_coupling.initialize_from_data`)
    counts the rows it initialises from (up to 4096). Below ``tc.nets.SMALL_DATA_ROWS`` (2000)
    the conditioners take ``tanh`` units and start at the identity, so the untrained flow is
    exactly the Gaussian fit and model selection can keep it (``tc.callbacks.BestOrStart``
    does unless the validation rows show the trained flow is better beyond their noise); from
    2000 rows on they take ReLU units and the random start below. The choice is a saved weight
    of each :class:`tfp_coupling.nets.AutoMLP`; until it is made the flow computes ReLU units
    from the random start. Passing ``activation`` or ``zero_init`` fixes that half of the
    choice; image events ``(H, W, C)`` take ReLU and the random start, as before. Why
    (``benchmarks/README.md``, "Units chosen by the number of rows"): ReLU units extrapolate
    linearly, and on a few hundred or thousand rows trained long they send some test rows far
    out (ReLU with the random start: wine +0.52 and breast_cancer +2.45 nats above the
    Gaussian fit; 2-D samples of 1000 rows, one seed in five of circles at 20.1 nats); bounded
    units at the Gaussian fit had no such seed. On 8000 rows ReLU units fit the sharp 2-D
    densities better, as well as zuko's RealNVP or better. That was measured training small
    data for hundreds of epochs; with few steps tanh units at the identity lag (two moons,
    1000 rows, 120 steps of Adam 1e-3: 0.31 nats behind ReLU): pass ``activation="relu",
    zero_init=False`` there, or train longer.

    The random start: the conditioners' output layers start with their shift columns random
    (uniform in ``±1/sqrt(fan_in)``, as the hidden layers) and their log-scale columns at 0:
    each coupling starts as a random shift of ``x_b`` given ``x_a``, a map of constant volume,
    so the start keeps the Gaussian fit's volume without sitting at the identity. Paired
    against the identity start over 20 seeds (``fit_ablation.py``): eight Gaussians -0.035 ±
    0.007 nats, pinwheel -0.024 ± 0.007, two moons -0.020 ± 0.009, circles -0.056 ± 0.030;
    against zuko's RealNVP, eight Gaussians -0.026 ± 0.011. Flattened pixels need
    ``zero_init=True`` whatever their number: a random shift moves their near-constant
    background by many standard deviations (the command line passes both settings itself).

    **Sine units on one coordinate** (``sine_scale="auto"``): a conditioner that sees one
    coordinate (every one on 2-D data, every other one on 3-D) computes ``sin(W_1 x_a + b_1)``
    in the first ``sine_fraction`` (half) of its first layer's units and its chosen units in
    the rest, that layer drawn in ``±REALNVP_SINE_SCALE/sqrt(fan_in)`` (2; see
    :class:`tfp_coupling.nets.MLP`); the others have none. A number gives every conditioner
    that scale, ``None`` none. Periodic units give a conditioner on one coordinate functions
    that ReLU units of that width reach only slowly (see :func:`nice_flow` on rings); half of
    them keep the ReLU units' fit of two moons. At the 2-D budget, paired against ReLU units alone
    (``fit_ablation.py``, ``benchmarks/README.md``, "RealNVP: sine units in half the first
    layer"): circles -0.179 ± 0.026 nats (20 seeds; worst seed 0.134 above its mean, 0.228
    before), two spirals -0.127 ± 0.049, rings -0.067 ± 0.017, checkerboard -0.029,
    pinwheel -0.026, eight Gaussians -0.024 (5 seeds), two moons -0.003 ± 0.006 (20 seeds);
    largest epoch ratio 1.39. Sine units in every first-layer unit fit circles as well but
    cost two moons 0.013-0.027 nats at every scale tried, and scale 3 in half of them gave one
    loss spike (1.53x) in 20 circles seeds. Where the first ``fit`` sees fewer than 2000 rows
    (and ``activation`` or ``zero_init`` is left to the data), the sine units become units like
    the rest, tanh by default (``small_data_sines=False``; ``True`` keeps them): with them, two
    small tables nothing was chosen on ended worse on the mean of 5 seeds (table budget,
    paired), engel (141 training rows of 2 columns) by 0.373 ± 0.135 nats (all 5 seeds),
    grunfeld (3 columns) by 0.159 ± 0.129; on 1000-row 2-D samples they gained circles 0.14 on
    the mean, with a wider spread of seeds, and cost two moons 0.02.

    The clamp of 2 (the bijector's default is 5) was chosen by ``benchmarks/fit_ablation.py``:
    with 5, one of three eight-Gaussians seeds ended at a test NLL of 85 nats (a few test
    points sent to enormous latents through several couplings each expanding by up to e^5);
    with 2 the worst seed was 3.41. 8 couplings with hidden [64, 64] is the budget of the
    peer it is compared with in ``benchmarks/density_quality.py``.

    The shift is bounded too, ``t = 5 tanh(t_raw / 5)`` in latent units (``shift_clamp``;
    ``None`` unbounds it): ReLU conditioners grow linearly away from the training data, and an
    unbounded shift sent a few test points of one eight-Gaussians seed in twenty far out in
    the latent space (3.216 nats against a mean of 3.060). Bounded, over the same 20 seeds:
    worst 3.107, mean 3.052; paired against the unbounded shift, eight Gaussians -0.008 ±
    0.007, pinwheel -0.004 ± 0.005 (20 seeds), circles -0.033 ± 0.018, two moons -0.000 ±
    0.007 (5 seeds; ``fit_ablation.py``). Five latent units are ample for whitened data; with
    ``whiten=False`` on data far from zero mean and unit variance, pass ``shift_clamp=None``.

    ``normalizing`` (default on) writes each affine map from data to latent, as the RealNVP
    paper does (see :class:`tfp_coupling.AffineCoupling`). Measured by ``fit_ablation.py`` over
    5 seeds against the other direction, paired: two moons 0.072 nats better, circles 0.146,
    rings 0.018, pinwheel 0.021, eight Gaussians 0.003 worse; largest epoch-to-epoch rise of the
    training NLL 1.12x against 1.39x. ``context_shape=[c]`` makes the flow conditional,
    ``p(x | context)`` (see :class:`tfp_coupling.FlowModel`).

    ``mixing="lu"`` (vector events) puts a learned :class:`tfp_coupling.LULinear` between every
    two couplings: a half mask alone never mixes coordinates within a half. It starts at the
    identity, so the untrained flow is unchanged. Off by default (``benchmarks/README.md``
    has its measurements). ``mixing="rotation"`` starts each at the rotation by
    ``MIXING_ANGLE`` in every coordinate plane (:func:`nice_flow`'s default on 2-D data; not
    measured on RealNVP).

    ``fade_outside=B`` makes every coupling fade to the identity where one of its kept
    coordinates leaves ``[-B, B]`` (raw conditioner outputs times ``exp(-sum relu(|x_a| -
    B)^2)``; see :class:`tfp_coupling.Coupling`), so a row far from the training rows keeps
    the whitened Gaussian's tail instead of what ReLU conditioners extrapolate there. On small
    tables that is where ReLU units lose to the Gaussian fit. ``B = 3`` (``fit_ablation.py``,
    5 seeds, paired against ReLU with the random start): breast_cancer -6.1 nats, wine -0.43,
    diabetes +0.14; but the fade also acts during training, and on 2-D data it is not free
    (pinwheel +0.016 on 5 of 5 seeds, two moons +0.010), so it is off by default. For tables,
    tanh units at the identity (what the default picks below 2000 rows) remain the better
    setting, and the fade makes them worse: diabetes +0.73, breast_cancer +1.44.

    ``dropout=p`` puts dropout at rate ``p`` after every conditioner hidden layer, active only in
    training (``fit``): ``log_prob``, ``sample`` and the exported flow are one fixed bijection.
    Off by default: at 0.1 it costs 2-D fit (two moons +0.041, pinwheel +0.050 nats, worse on
    5 of 5 seeds, ``fit_ablation.py``). At 0.3 on the small tables, paired against ReLU with the
    random start: breast_cancer -7.6 nats, diabetes -0.31, wine -0.04; against tanh at the
    identity: breast_cancer -2.0, diabetes +0.77.

    Example:
        >>> import tfp_coupling as tc
        >>> model = tc.realnvp_flow(event_shape=[2], num_couplings=4, hidden_units=[32, 32])
        >>> model(tc.data.two_moons(8, seed=0)).shape
        TensorShape([8])
        >>> nets = [layer for layer in model.flow_layers if isinstance(layer, tc.nets.MLP)]
        >>> nets[0].sine_scale, nets[0].sine_fraction  # 2-D data: 16 of 32 units are sine units
        (2.0, 0.5)
    """
    dtype = tf.as_dtype(dtype)
    config = builder_config(realnvp_flow, locals())
    name = name or "realnvp"
    if len(event_shape) != 1:  # image events count at most 512 rows: no choice by size
        activation = "relu" if activation == "auto" else activation
        zero_init = False if zero_init is None else zero_init
    steps = _whitening(event_shape, whiten, dtype, name) + _coupling_stack(
        AffineCoupling, event_shape, num_couplings, hidden_units, mask, activation, dtype, name,
        log_scale_clamp=log_scale_clamp, shift_clamp=shift_clamp, normalizing=normalizing,
        mixing=mixing, random_shift=not zero_init, fade_outside=fade_outside, dropout=dropout,
        sine_scale=sine_scale, sine_fraction=sine_fraction, auto_sine_scale=REALNVP_SINE_SCALE,
        small_data_sines=small_data_sines, small_data_identity=zero_init is None,
        context_shape=context_shape)
    return FlowModel(Chain(steps, name=name), event_shape, flow_dtype=dtype,
                     flow_config=config, context_shape=context_shape, name=name)


def spline_flow(
    event_shape: Sequence[int],
    num_couplings: int = 8,
    hidden_units: Sequence[int] = (64, 64),
    num_bins: int = 8,
    bound: float = 5.0,
    mask: str | None = None,
    activation: str = "relu",
    whiten: bool = True,
    dropout: float = 0.0,
    context_shape: Sequence[int] | None = None,
    dtype: tf.DType | str = "float32",
    name: str | None = None,
) -> FlowModel:
    """Neural spline flow: couplings whose elementwise map is TFP's rational-quadratic spline.

    Each coupling is a :class:`tfp_coupling.TransformCoupling` with
    :func:`tfp_coupling.bijectors.rational_quadratic_spline` (``num_bins`` bins on
    ``[-bound, bound]``, the identity outside; ``3 num_bins - 1`` parameters per transformed
    entry), so the flow starts as the identity (whitened, as :func:`realnvp_flow`) and each
    coupling can bend a coordinate far more than an affine map can. Masks, whitening,
    ``dropout`` and ``context_shape`` as in :func:`realnvp_flow`.

    Example:
        >>> import tfp_coupling as tc
        >>> model = tc.spline_flow(event_shape=[2], num_couplings=2, hidden_units=[16])
        >>> model(tc.data.two_moons(8, seed=0)).shape
        TensorShape([8])

    References:
        Durkan, Bekasovs, Murray, Papamakarios. Neural Spline Flows. NeurIPS 2019.
    """
    dtype = tf.as_dtype(dtype)
    config = builder_config(spline_flow, locals())
    name = name or "spline"
    transform = rational_quadratic_spline(num_bins, bound)
    steps = _whitening(event_shape, whiten, dtype, name) + _coupling_stack(
        TransformCoupling, event_shape, num_couplings, hidden_units, mask, activation, dtype,
        name, num_params=transform.num_params, transform_fn=transform, dropout=dropout,
        context_shape=context_shape)
    return FlowModel(Chain(steps, name=name), event_shape, flow_dtype=dtype,
                     flow_config=config, context_shape=context_shape, name=name)


def _whitening(event_shape: Sequence[int], whiten: bool, dtype: tf.DType, name: str) -> list:
    """``[TriLAffine]`` for a whitened vector flow (first in the chain: the data end)."""
    if not whiten or len(event_shape) != 1:
        return []
    return [TriLAffine(int(event_shape[0]), dtype=dtype, name=f"{name}_whitening")]


def initialize_rescaling(model: FlowModel, x, *, bin_width: float | None = None,
                         seed: int = 0) -> None:
    """Starts NICE's scaling ``h = z * exp(s)`` at ``s = log std`` of the training data ``x``.

    With zero-initialised couplings the untrained flow is then a diagonal Gaussian as wide as
    the data in every dimension (a data-dependent start, as ActNorm's). On rescaled images a
    blank background pixel needs ``s`` near ``log(1/256) = -5.5``: from ``s = 0`` Adam would
    need thousands of steps to get there. For discrete data (``bin_width``: the width of one
    quantisation bin in the model's units) ``x`` is dequantised with noise seeded by ``seed``
    and the std is floored at one bin, so that a pixel blank in every training image is not so
    certain that a test image with ink there costs thousands of nats. A model without exactly
    one :class:`~tfp_coupling.LogScale` (one ``Rescaling``), or a whitened one (its
    ``TriLAffine`` already brings the data to unit variance on the first ``fit``), is left
    unchanged.

    Example:
        >>> import numpy as np
        >>> import tfp_coupling as tc
        >>> model = tc.nice_flow([2], num_couplings=2, hidden_units=[8], zero_init=True,
        ...                      whiten=False)
        >>> tc.initialize_rescaling(model, np.array([[0.0, 0.0], [2.0, 20.0]]))
        >>> np.exp(model.flow_layers[-1].log_scale.numpy()).round(3).tolist()
        [1.0, 10.0]
    """
    layers = [layer for layer in model.flow_layers if isinstance(layer, LogScale)]
    if len(layers) != 1 or any(isinstance(layer, TriLAffineParams)
                               for layer in model.flow_layers):
        return
    if bin_width is not None:
        x = dequantization.dequantize(x, np.random.default_rng(seed), bin_width)
    std = np.asarray(x, np.float64).reshape(len(x), -1).std(axis=0)
    floor = bin_width if bin_width is not None else 1e-6  # at least one quantisation bin
    layers[0].log_scale.assign(np.log(np.maximum(std, floor)).reshape(
        layers[0].log_scale.shape).astype(np.float32))
