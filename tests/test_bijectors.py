"""AdditiveCoupling, AffineCoupling and Rescaling through the shared harness, and beyond it:
composition with TFP bijectors, XLA, input validation, one conditioner call per call, and no
stale values after a weight change (with TFP's own RealNVP as the counter-example)."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp
from harness import check_bijector, check_no_stale, randomize_weights
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tfp_coupling as tc
from tfp_coupling import masks
from tfp_coupling.bijectors.linear import rotation_matrix
from tfp_coupling.masks import Partition

tfb, tfd = tfp.bijectors, tfp.distributions

COUPLINGS = [tc.AdditiveCoupling, tc.AffineCoupling]
HYPOTHESIS = settings(max_examples=4, deadline=None, derandomize=True,
                      suppress_health_check=[HealthCheck.function_scoped_fixture,
                                             HealthCheck.too_slow])


def make_coupling(cls, mask, dtype=tf.float64, hidden=(8,), seed=1, scale=0.3, conditioner=None,
                  **kwargs):
    """A coupling with an MLP conditioner whose weights are random (not the identity init)."""
    dtype = tf.as_dtype(dtype)
    part = Partition(mask)
    b_shape = part.b_shape
    if conditioner is None:
        conditioner = tc.nets.MLP(hidden, (*b_shape[:-1], cls.num_params * b_shape[-1]),
                                  dtype=dtype.name)
    bij = cls(mask, conditioner, dtype=dtype, **kwargs)
    bij.forward(tf.zeros((1, *part.event_shape), dtype))  # builds the conditioner
    randomize_weights(bij, seed=seed, scale=scale)
    return bij


def make_rescaling(event_shape, dtype=tf.float64, seed=2, **kwargs):
    bij = tc.Rescaling(event_shape, dtype=dtype, **kwargs)
    randomize_weights(bij, seed=seed, scale=0.5)
    return bij


def vector_mask(kind: str, size: int):
    return masks.half_mask(size) if kind == "half" else masks.alternating_mask(size, parity=1)


def image_mask(kind: str, shape=(4, 4, 2)):
    return masks.checkerboard_mask(*shape) if kind == "checkerboard" else masks.channel_mask(*shape)


# ---------------------------------------------------------------------------------------------
# The harness, float64


@pytest.mark.parametrize("cls", COUPLINGS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("size", [2, 5, 64])
@pytest.mark.parametrize("kind", ["half", "alternating"])
def test_coupling_vector_harness(cls, size, kind):
    # Wide events get smaller weights so that log-scales stay inside the clamp's linear range.
    bij = make_coupling(cls, vector_mask(kind, size), scale=0.3 if size < 64 else 0.1)
    check_bijector(bij, [size])


@pytest.mark.parametrize("cls", COUPLINGS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("kind", ["checkerboard", "channel"])
def test_coupling_image_harness(cls, kind):
    bij = make_coupling(cls, image_mask(kind), scale=0.1)
    check_bijector(bij, [4, 4, 2])


@pytest.mark.parametrize("mask", [masks.half_mask(5), masks.checkerboard_mask(4, 4, 2)],
                         ids=["half", "checkerboard"])
def test_normalizing_affine_coupling_harness(mask):
    """The affine map written data -> latent: forward is the default's inverse map."""
    event = list(Partition(mask).event_shape)
    bij = make_coupling(tc.AffineCoupling, mask, normalizing=True,
                        scale=0.3 if len(event) == 1 else 0.1)
    check_bijector(bij, event)
    plain = tc.AffineCoupling(mask, bij.conditioner, dtype=tf.float64)
    x = np.random.default_rng(0).normal(size=[3, *event])
    np.testing.assert_allclose(bij.forward(x), plain.inverse(x), atol=1e-12)
    np.testing.assert_allclose(bij.forward_log_det_jacobian(x, len(event)),
                               plain.inverse_log_det_jacobian(x, len(event)), atol=1e-12)


@pytest.mark.parametrize("normalizing", [False, True])
def test_shift_clamped_affine_coupling_harness(normalizing):
    """``t = k tanh(t_raw / k)``: inside the bound ~ t_raw, far outside it never beyond ``k``."""
    mask = masks.half_mask(5)
    bij = make_coupling(tc.AffineCoupling, mask, normalizing=normalizing, shift_clamp=0.5)
    check_bijector(bij, [5])
    free = tc.AffineCoupling(mask, bij.conditioner, normalizing=normalizing, dtype=tf.float64)
    x = np.random.default_rng(0).normal(size=[64, 5])
    # A kept half far from the data: the free shift follows the conditioner, the clamped one not.
    far = np.concatenate([x[:, :2] * 1e3, np.zeros([64, 3])], axis=1)
    clamped, unclamped = (np.abs(b.forward(far).numpy()[:, 2:]).max() for b in (bij, free))
    assert unclamped > 10.0 and clamped <= 0.5 * np.exp(5.0) + 1e-9  # |t| < k, scale < e^c
    with pytest.raises(ValueError, match="shift_clamp must be positive"):
        tc.AffineCoupling(mask, bij.conditioner, shift_clamp=0.0)


@pytest.mark.parametrize("cls", COUPLINGS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("mask", [masks.half_mask(5), masks.checkerboard_mask(4, 4, 2)],
                         ids=["half", "checkerboard"])
def test_faded_coupling_harness(cls, mask):
    """``fade_outside=B``: the harness's N(0, 1) draws cross ``B = 0.8`` often, so the fade's
    dependence on ``x_a`` is inside every log-det and round trip checked."""
    event = list(Partition(mask).event_shape)
    kwargs = {"normalizing": True, "shift_clamp": 2.0} if cls is tc.AffineCoupling else {}
    bij = make_coupling(cls, mask, fade_outside=0.8, scale=0.3 if len(event) == 1 else 0.1,
                        **kwargs)
    check_bijector(bij, event)


@pytest.mark.parametrize("cls", COUPLINGS, ids=lambda c: c.__name__)
def test_fade_leaves_the_box_unchanged_and_far_inputs_alone(cls):
    """Inside ``[-B, B]`` the faded coupling is the plain one; far outside, the identity."""
    mask = masks.half_mask(5)
    faded = make_coupling(cls, mask, fade_outside=2.0, scale=1.0)
    plain = cls(mask, faded.conditioner, dtype=tf.float64)
    rng = np.random.default_rng(0)
    inside = np.concatenate([rng.uniform(-2, 2, [16, 2]), rng.normal(size=[16, 3])], axis=1)
    np.testing.assert_allclose(faded.forward(inside), plain.forward(inside), atol=1e-12)
    far = inside.copy()
    far[:, 0] = 8.0  # one kept coordinate 6 beyond the box: weight exp(-36)
    moved = np.abs(plain.forward(far).numpy() - far).max()
    assert moved > 0.1  # the conditioner does act there ...
    np.testing.assert_allclose(faded.forward(far), far, atol=1e-12)  # ... the fade undoes it
    np.testing.assert_allclose(faded.forward_log_det_jacobian(far, 1), 0.0, atol=1e-12)
    with pytest.raises(ValueError, match="fade_outside must be positive"):
        cls(mask, faded.conditioner, fade_outside=0.0)


@pytest.mark.parametrize("event_shape", [[5], [4, 4, 2]])
def test_rescaling_harness(event_shape):
    check_bijector(make_rescaling(event_shape), event_shape)


@pytest.mark.parametrize("size", [1, 2, 7])
def test_tril_affine_harness(size):
    """Random lower triangle, diagonal and bias (not the identity start)."""
    bij = tc.TriLAffine(size, dtype="float64")
    rng = np.random.default_rng(size)
    params = bij.params
    params.lower.assign(rng.normal(size=(size, size)))
    params.log_diag.assign(rng.normal(scale=0.5, size=size))
    params.bias.assign(rng.normal(size=size))
    check_bijector(bij, [size])


@pytest.mark.parametrize("size", [1, 2, 7])
def test_lu_linear_harness(size):
    """Random L, U, diagonal and bias (not the identity start)."""
    bij = tc.LULinear(size, dtype="float64")
    rng = np.random.default_rng(size)
    params = bij.params
    params.lower.assign(rng.normal(scale=0.5, size=(size, size)))
    params.upper.assign(rng.normal(scale=0.5, size=(size, size)))
    params.log_diag.assign(rng.normal(scale=0.5, size=size))
    params.bias.assign(rng.normal(size=size))
    check_bijector(bij, [size])


def test_lu_linear_set_matrix_is_that_matrix():
    """``set_matrix`` factorises without pivoting: rotations (every pivot positive below a right
    angle) and any ``L U`` with a positive diagonal; a negative pivot or a wrong shape raises."""
    x = tf.random.stateless_normal([6, 5], [0, 2], dtype=tf.float64)
    rng = np.random.default_rng(1)
    lu = (np.tril(rng.normal(size=(5, 5)), -1) + np.eye(5)) @ (
        np.triu(rng.normal(size=(5, 5)), 1) + np.diag(rng.uniform(0.5, 2.0, 5)))
    for matrix in (rotation_matrix(5, 1.0), rotation_matrix(5, -1.4), lu):
        bij = tc.LULinear(5, dtype="float64")
        bij.set_matrix(matrix)
        np.testing.assert_allclose(bij.forward(x).numpy(), x.numpy() @ matrix.T, atol=1e-12)
        np.testing.assert_allclose(bij.inverse(bij.forward(x)).numpy(), x.numpy(), atol=1e-12)
        np.testing.assert_allclose(bij.forward_log_det_jacobian(x, 1).numpy(),
                                   np.linalg.slogdet(matrix)[1], atol=1e-12)
    bij = tc.LULinear(2, dtype="float64")
    with pytest.raises(ValueError, match="leading minors must be positive"):
        bij.set_matrix(rotation_matrix(2, 2.0))  # cos 2 < 0: the first pivot
    with pytest.raises(ValueError, match=r"finite \[2, 2\] matrix"):
        bij.set_matrix(np.eye(3))


def test_rotation_matrix_rotates_each_coordinate_plane():
    r = rotation_matrix(5, 0.7)
    np.testing.assert_allclose(r @ r.T, np.eye(5), atol=1e-15)
    np.testing.assert_allclose(r[:2, :2], [[np.cos(0.7), -np.sin(0.7)],
                                           [np.sin(0.7), np.cos(0.7)]])
    np.testing.assert_array_equal(r[4], [0, 0, 0, 0, 1])  # the odd coordinate stays
    assert r[0, 2] == r[2, 0] == 0  # planes (0, 1) and (2, 3) do not mix


def test_lu_linear_starts_as_the_identity_and_is_its_factors():
    bij = tc.LULinear(4, dtype="float64")
    x = tf.random.stateless_normal([5, 4], [0, 1], dtype=tf.float64)
    np.testing.assert_array_equal(bij.forward(x).numpy(), x.numpy())
    rng = np.random.default_rng(0)
    for v in (bij.params.lower, bij.params.upper, bij.params.log_diag, bij.params.bias):
        v.assign(rng.normal(size=v.shape))
    p = {k: getattr(bij.params, k).numpy() for k in ("lower", "upper", "log_diag", "bias")}
    lower = np.tril(p["lower"], -1) + np.eye(4)
    upper = np.triu(p["upper"], 1) + np.diag(np.exp(p["log_diag"]))
    np.testing.assert_allclose(bij.forward(x).numpy(), x.numpy() @ (lower @ upper).T + p["bias"],
                               rtol=1e-12)
    np.testing.assert_allclose(bij.forward_log_det_jacobian(x, 1).numpy(),
                               np.linalg.slogdet(lower @ upper)[1], rtol=1e-12)


def test_tril_affine_initialises_to_the_data_gaussian():
    rng = np.random.default_rng(0)
    y = rng.normal(size=(4000, 3)) @ np.array([[1.0, 0, 0], [2.0, 0.5, 0], [-1, 1, 3]]) + 7.0
    bij = tc.TriLAffine(3, dtype="float64")
    bij.params.initialize_from(y)
    assert bij.params.is_initialized
    x = bij.inverse(tf.constant(y)).numpy()
    np.testing.assert_allclose(x.mean(0), 0.0, atol=1e-8)
    np.testing.assert_allclose(np.cov(x, rowvar=False, bias=True), np.eye(3), atol=1e-5)
    want = -0.5 * np.linalg.slogdet(np.cov(y, rowvar=False, bias=True))[1]
    np.testing.assert_allclose(bij.inverse_log_det_jacobian(tf.constant(y[:2]), 1).numpy(),
                               [want, want], rtol=1e-5)


def test_randomized_weights_are_not_the_identity():
    """The harness runs on non-trivial conditioners: the coupling must move x_b."""
    for cls in COUPLINGS:
        bij = make_coupling(cls, masks.half_mask(4))
        x = tf.random.normal([8, 4], dtype=tf.float64)
        y = bij.forward(x).numpy()
        np.testing.assert_array_equal(y[:, :2], x.numpy()[:, :2])
        assert np.min(np.abs(y[:, 2:] - x.numpy()[:, 2:])) > 1e-3
    ldj = make_coupling(tc.AffineCoupling, masks.half_mask(4)).forward_log_det_jacobian(
        tf.random.normal([8, 4], dtype=tf.float64), event_ndims=1)
    assert np.min(np.abs(ldj.numpy())) > 1e-3


def test_affine_with_pair_conditioner_function_and_no_clamp():
    """A plain function returning ``(shift, log_scale)`` works as conditioner (no Keras layer
    to track then), with and without the log-scale clamp."""
    shift_net = tc.nets.MLP([8], [3], dtype="float64", zero_init=False)
    scale_net = tc.nets.MLP([8], [3], dtype="float64", zero_init=False)

    def conditioner(x_a):
        return shift_net(x_a), scale_net(x_a)

    for clamp in (5.0, None):
        bij = tc.AffineCoupling(masks.alternating_mask(6, 0), conditioner,
                                log_scale_clamp=clamp, dtype=tf.float64)
        bij.forward(tf.zeros([1, 6], tf.float64))
        assert bij.keras_layers == []
        randomize_weights([shift_net, scale_net], seed=4)
        check_bijector(bij, [6], batch_shapes=[(2, 3)],
                       graph_batch_shapes=[(2, 3)] if clamp else [])


def test_log_scale_clamp_bounds_the_scale():
    """A diverging conditioner (raw log-scale 1e3) still gives a finite, invertible map with
    ``|s| < c``: the log-det of 2 transformed entries lies in ``(-2c, 2c)``."""

    def huge(x_a):
        return tf.concat([tf.zeros_like(x_a), 1e3 * tf.ones_like(x_a)], axis=-1)

    for c in (5.0, 2.0):
        bij = tc.AffineCoupling(masks.half_mask(4), huge, log_scale_clamp=c, dtype=tf.float64)
        x = tf.random.normal([3, 4], dtype=tf.float64)
        y, ldj = bij.forward_and_log_det(x)
        np.testing.assert_allclose(ldj.numpy(), np.full(3, 2 * c), rtol=1e-12)
        np.testing.assert_allclose(y.numpy()[:, 2:], x.numpy()[:, 2:] * np.exp(c), rtol=1e-12)
        np.testing.assert_allclose(bij.inverse(y).numpy(), x.numpy(), atol=1e-12)
    # Near 0 the clamp is the identity to first order: s = c tanh(s_raw / c) ~ s_raw.
    bij = tc.AffineCoupling(masks.half_mask(4),
                            lambda x_a: tf.concat([tf.zeros_like(x_a), 1e-4 + 0 * x_a], -1),
                            dtype=tf.float64)
    np.testing.assert_allclose(bij.forward_log_det_jacobian(tf.zeros([1, 4], tf.float64), 1),
                               [2e-4], rtol=1e-7)


def test_harness_catches_a_wrong_log_det():
    """The harness can fail: a coupling whose log-det is off by a constant is rejected."""

    class WrongAffine(tc.AffineCoupling):
        def _log_det(self, x, params):
            return super()._log_det(x, params) + 1e-3

    bij = make_coupling(WrongAffine, masks.half_mask(4))
    with pytest.raises(AssertionError, match="autodiff"):
        check_bijector(bij, [4], batch_shapes=[(3,)])


def test_harness_catches_a_wrong_inverse():
    class WrongInverse(tc.AdditiveCoupling):
        def _inverse_transform(self, y_b, params):
            return y_b - 1.001 * params[0]

    bij = make_coupling(WrongInverse, masks.half_mask(4))
    with pytest.raises(AssertionError, match=r"inverse\(forward\(x\)\) vs x"):
        check_bijector(bij, [4], batch_shapes=[(3,)])


def test_harness_catches_stale_cached_values():
    """``check_no_stale`` fails for a coupling that keeps TFP's default result cache."""
    from tensorflow_probability.python.internal import cache_util

    class CachingAffine(tc.AffineCoupling):
        _cache = cache_util.BijectorCache()

    bij = make_coupling(CachingAffine, masks.half_mask(4))
    with pytest.raises(AssertionError, match="after a weight change vs fresh tensors"):
        check_no_stale(bij, [4])


def test_randomize_weights_is_seeded_and_refuses_unbuilt_layers():
    net = tc.nets.MLP([4], [2])
    with pytest.raises(ValueError, match="no float variable"):
        randomize_weights(net)
    net.build((None, 3))
    first = [v.numpy().copy() for v in randomize_weights(net, seed=5)]
    assert len(first) == 4 and all(np.any(w != 0) for w in first)
    again = [v.numpy().copy() for v in randomize_weights([net], seed=5)]
    other = [v.numpy().copy() for v in randomize_weights(net, seed=6)]
    for a, b, c in zip(first, again, other, strict=True):
        np.testing.assert_array_equal(a, b)
        assert np.any(a != c)


# ---------------------------------------------------------------------------------------------
# float32


@pytest.mark.parametrize("cls", [*COUPLINGS, tc.Rescaling], ids=lambda c: c.__name__)
@pytest.mark.parametrize("event_shape", [[5], [4, 4, 2]])
def test_float32_round_trip_smoke(cls, event_shape):
    if cls is tc.Rescaling:
        bij = make_rescaling(event_shape, dtype=tf.float32)
    else:
        mask = masks.half_mask(5) if len(event_shape) == 1 else image_mask("checkerboard")
        bij = make_coupling(cls, mask, dtype=tf.float32, scale=0.2)
    x = tf.random.normal([3, *event_shape])
    y, fldj = tc.fused.forward_and_log_det(bij, x, len(event_shape))
    assert y.dtype == fldj.dtype == tf.float32 and fldj.shape == (3,)
    np.testing.assert_allclose(bij.inverse(y).numpy(), x.numpy(), rtol=0, atol=1e-5)
    x_back, ildj = tc.fused.inverse_and_log_det(bij, y, len(event_shape))
    np.testing.assert_allclose(x_back.numpy(), x.numpy(), rtol=0, atol=1e-5)
    np.testing.assert_allclose(ildj.numpy(), -fldj.numpy(), rtol=0, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Composition with TFP bijectors


def _composite(chain_cls, dtype=tf.float64):
    c1 = make_coupling(tc.AffineCoupling, masks.half_mask(4), seed=3)
    c2 = make_coupling(tc.AdditiveCoupling, masks.alternating_mask(4, 0), seed=4)
    return chain_cls([
        tfb.Shift(tf.constant([1.0, -2.0, 0.5, 0.0], dtype)),
        c1,
        tfb.Permute([3, 1, 0, 2]),
        tfb.Invert(c2),
        tfb.Scale(tf.constant(1.5, dtype)),
        make_rescaling([4], seed=6),
    ]), [c1, c2]


def test_composes_with_tfp_chain_invert_shift_permute():
    bij, _ = _composite(tc.Chain)
    check_bijector(bij, [4], batch_shapes=[(), (2, 3)])
    plain, _ = _composite(tfb.Chain)  # TFP's own (caching) Chain around our bijectors
    check_bijector(plain, [4], batch_shapes=[(3,)], graph_batch_shapes=[])


def test_composition_inside_transformed_distribution():
    bij, _ = _composite(tc.Chain)
    base = tfd.Sample(tfd.Normal(tf.constant(0.0, tf.float64), 1.0), [4])
    dist = tfd.TransformedDistribution(base, bij)
    x = tf.random.normal([5, 4], dtype=tf.float64)
    z, ildj = tc.fused.inverse_and_log_det(bij, x, 1)
    np.testing.assert_allclose(dist.log_prob(x).numpy(), (base.log_prob(z) + ildj).numpy(),
                               rtol=0, atol=1e-10)
    assert dist.sample(7, seed=1).shape == (7, 4)


def test_invert_of_image_coupling_with_channel_permute():
    c = make_coupling(tc.AffineCoupling, image_mask("channel"), scale=0.1)
    bij = tc.Chain([tfb.Permute([1, 0], axis=-1), tfb.Invert(c)])
    check_bijector(bij, [4, 4, 2], batch_shapes=[(), (2,)])


# ---------------------------------------------------------------------------------------------
# XLA


@pytest.mark.parametrize("case", ["additive", "affine", "affine_image", "rescaling"])
def test_xla_forward_inverse_equal_eager(case):
    if case == "rescaling":
        bij, shape = make_rescaling([4, 4, 2], dtype=tf.float32), (4, 4, 2)
    elif case == "affine_image":
        bij = make_coupling(tc.AffineCoupling, image_mask("checkerboard"), dtype=tf.float32,
                            scale=0.1)
        shape = (4, 4, 2)
    else:
        cls = tc.AdditiveCoupling if case == "additive" else tc.AffineCoupling
        bij, shape = make_coupling(cls, masks.alternating_mask(5, 1), dtype=tf.float32), (5,)
    nd = len(shape)

    @tf.function(jit_compile=True)
    def run(x):
        y, fldj = tc.fused.forward_and_log_det(bij, x, nd)
        return (bij.forward(x), bij.inverse(x), bij.forward_log_det_jacobian(x, nd),
                bij.inverse_log_det_jacobian(x, nd), y, fldj)

    x = tf.random.normal([6, *shape])
    got = run(x)
    eager = (bij.forward(x), bij.inverse(x), bij.forward_log_det_jacobian(x, nd),
             bij.inverse_log_det_jacobian(x, nd), *tc.fused.forward_and_log_det(bij, x, nd))
    for g, e in zip(got, eager, strict=True):
        assert g.shape == e.shape and g.dtype == e.dtype
        np.testing.assert_allclose(g.numpy(), e.numpy(), rtol=0, atol=1e-5)


def test_harness_xla_regime_on_a_coupling():
    check_bijector(make_coupling(tc.AffineCoupling, masks.half_mask(5)), [5],
                   batch_shapes=[(2, 3)], check_xla=True)


# ---------------------------------------------------------------------------------------------
# Input validation


@pytest.mark.parametrize("make", [
    lambda: make_coupling(tc.AffineCoupling, masks.half_mask(4), validate_args=True),
    lambda: make_coupling(tc.AdditiveCoupling, masks.half_mask(4), validate_args=True),
    lambda: make_rescaling([4], validate_args=True),
], ids=["affine", "additive", "rescaling"])
def test_validate_args_errors_name_expected_and_given(make):
    bij = make()
    wrong_dim = tf.zeros([3, 5], tf.float64)
    for call in (bij.forward, bij.inverse,
                 lambda t: bij.forward_log_det_jacobian(t, event_ndims=1),
                 lambda t: bij.inverse_log_det_jacobian(t, event_ndims=1),
                 bij.forward_and_log_det):
        with pytest.raises(ValueError, match=r"event shape \[5\].*expected event shape \[4\]"):
            call(wrong_dim)
    with pytest.raises(TypeError, match="dtype float32, expected float64"):
        bij.forward(tf.zeros([3, 4], tf.float32))
    # NumPy arrays are converted to the flow dtype, as TFP's own bijectors do.
    y = np.linspace(-1.0, 1.0, 12, dtype=np.float32).reshape(3, 4)
    np.testing.assert_array_equal(bij.inverse(y), bij.inverse(tf.constant(y, tf.float64)))
    # Shapes known only at run time are checked when validate_args=True.
    run = tf.function(bij.forward, input_signature=[tf.TensorSpec([None, None], tf.float64)])
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"(?s)event shape differs from expected \[4\].*5"):
        run(wrong_dim)
    np.testing.assert_allclose(run(tf.ones([2, 4], tf.float64)).numpy(),
                               bij.forward(tf.ones([2, 4], tf.float64)).numpy())


def test_validate_args_wrong_rank_for_an_image_coupling():
    bij = make_coupling(tc.AffineCoupling, image_mask("checkerboard"), validate_args=True)
    with pytest.raises(ValueError,
                       match=r"shape \[4, 2\] \(rank 2\); expected \[\.\.\., 4, 4, 2\]"):
        bij.forward(tf.zeros([4, 2], tf.float64))
    with pytest.raises(ValueError, match=r"event shape \[4, 4, 3\].*expected event shape "
                                         r"\[4, 4, 2\]"):
        bij.inverse(tf.zeros([1, 4, 4, 3], tf.float64))


def test_bad_conditioner_output_names_the_shapes():
    net = keras.layers.Dense(3, dtype="float64")  # affine on 2 transformed dims needs 4 outputs
    bij = tc.AffineCoupling(masks.half_mask(4), net, dtype=tf.float64)
    with pytest.raises(ValueError, match=r"output has shape \[2, 3\].*expected \[N, 4\]"):
        bij.forward(tf.zeros([2, 4], tf.float64))
    net = keras.layers.Dense(6, dtype="float64")
    bij = tc.AffineCoupling(masks.half_mask(4), net, dtype=tf.float64)
    with pytest.raises(ValueError, match=r"event shape \[3\] per parameter, expected \[2\]"):
        bij.forward(tf.zeros([2, 4], tf.float64))


def test_constructor_argument_errors():
    with pytest.raises(TypeError, match="conditioner must be callable"):
        tc.AffineCoupling(masks.half_mask(4), 3)
    with pytest.raises(ValueError, match="log_scale_clamp must be positive"):
        tc.AffineCoupling(masks.half_mask(4), lambda x: x, log_scale_clamp=0.0)
    with pytest.raises(ValueError, match=r"scale_layer has event shape \[3\], expected \[4\]"):
        tc.Rescaling([4], scale_layer=tc.LogScale([3]))


# ---------------------------------------------------------------------------------------------
# One conditioner call per call


class CountingConditioner(keras.layers.Layer):
    """Wraps a conditioner and counts its calls (eager)."""

    def __init__(self, inner, **kwargs):
        super().__init__(**kwargs)
        self.inner = inner
        self.calls = 0

    def call(self, x):
        self.calls += 1
        return self.inner(x)


@pytest.mark.parametrize("cls", COUPLINGS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("mask", ["half", "checkerboard"])
def test_conditioner_called_once_per_call(cls, mask):
    m = masks.half_mask(4) if mask == "half" else image_mask("checkerboard")
    part = Partition(m)
    inner = tc.nets.MLP([8], (*part.b_shape[:-1], cls.num_params * part.b_shape[-1]),
                        dtype="float64")
    counter = CountingConditioner(inner, dtype="float64")
    bij = make_coupling(cls, m, conditioner=counter)
    assert bij.keras_layers == [counter]
    x = tf.random.normal([2, 3, *part.event_shape], dtype=tf.float64)
    nd = len(part.event_shape)
    ldj_calls = 0 if cls is tc.AdditiveCoupling else 1  # a constant log-det needs no call
    for call, expected in [
        (lambda: bij.forward(x), 1),
        (lambda: bij.inverse(x), 1),
        (lambda: bij.forward_log_det_jacobian(x, event_ndims=nd), ldj_calls),
        (lambda: bij.inverse_log_det_jacobian(x, event_ndims=nd), ldj_calls),
        (lambda: bij.forward_log_det_jacobian(x, event_ndims=nd + 1), ldj_calls),
        (lambda: bij.forward_and_log_det(x), 1),
        (lambda: bij.inverse_and_log_det(x), 1),
        (lambda: tc.fused.inverse_and_log_det(bij, x, nd), 1),
    ]:
        counter.calls = 0
        call()
        assert counter.calls == expected


def test_flow_log_prob_calls_each_conditioner_once():
    counters, couplings = [], []
    for i, m in enumerate([masks.half_mask(4), masks.complement(masks.half_mask(4))]):
        counter = CountingConditioner(tc.nets.MLP([8], [4], dtype="float64"), dtype="float64")
        couplings.append(tc.AffineCoupling(m, counter, dtype=tf.float64, name=f"c{i}"))
        counters.append(counter)
    model = tc.FlowModel(tc.Chain(couplings), [4], flow_dtype="float64")
    x = tf.random.normal([5, 4], dtype=tf.float64)
    for c in counters:
        c.calls = 0
    model.log_prob(x)
    assert [c.calls for c in counters] == [1, 1]


# ---------------------------------------------------------------------------------------------
# No stale values after a weight change


@pytest.mark.parametrize("case", ["additive", "affine", "affine_image", "rescaling", "chain"])
def test_no_stale_values_after_assign(case):
    if case == "rescaling":
        bij, shape = make_rescaling([5]), [5]
    elif case == "affine_image":
        bij, shape = make_coupling(tc.AffineCoupling, image_mask("channel"), scale=0.1), [4, 4, 2]
    elif case == "chain":
        bij, shape = _composite(tc.Chain)[0], [4]
    else:
        cls = tc.AdditiveCoupling if case == "additive" else tc.AffineCoupling
        bij, shape = make_coupling(cls, masks.half_mask(5)), [5]
    check_no_stale(bij, shape)


def _fresh_log_prob(model, x):
    """Reference log p(x) on a new tensor, through TFP's separate calls."""
    x = tf.identity(x)
    z = model.bijector.inverse(x)
    return (model.base_distribution.log_prob(z)
            + model.bijector.inverse_log_det_jacobian(x, event_ndims=1)).numpy()


def test_model_log_prob_same_tensor_after_assign_fit_and_set_weights():
    model = tc.realnvp_flow([3], num_couplings=2, hidden_units=[8], dtype="float64")
    other = tc.realnvp_flow([3], num_couplings=2, hidden_units=[8], dtype="float64")
    randomize_weights(other.flow_layers, seed=9)
    x = tf.constant(np.random.default_rng(0).normal(size=(16, 3)))

    def values():
        return {"log_prob": model.log_prob(x).numpy(),
                "distribution.log_prob": model.distribution.log_prob(x).numpy(),
                "call": model(x).numpy(),
                "forward": model.forward(x).numpy(), "inverse": model.inverse(x).numpy(),
                "bijector.forward": model.bijector.forward(x).numpy(),
                "bijector.inverse": model.bijector.inverse(x).numpy()}

    def reference():
        fresh = tf.identity(x)
        return {"log_prob": _fresh_log_prob(model, x),
                "distribution.log_prob": _fresh_log_prob(model, x),
                "call": _fresh_log_prob(model, x),
                "forward": model.bijector.forward(fresh).numpy(),
                "inverse": model.bijector.inverse(fresh).numpy(),
                "bijector.forward": model.bijector.forward(fresh).numpy(),
                "bijector.inverse": model.bijector.inverse(fresh).numpy()}

    before = values()
    changes = {
        "assign": lambda: randomize_weights(model, seed=1),
        "fit": lambda: model.fit(x, batch_size=16, epochs=1, verbose=0),
        "set_weights": lambda: model.set_weights(other.get_weights()),
    }
    model.compile(optimizer=keras.optimizers.SGD(0.05))
    for what, change in changes.items():
        change()
        after, ref = values(), reference()
        for key in after:
            np.testing.assert_allclose(after[key], ref[key], rtol=0, atol=1e-10,
                                       err_msg=f"{key} stale after {what}")
        assert np.max(np.abs(after["log_prob"] - before["log_prob"])) > 1e-6, what
        before = after
    np.testing.assert_allclose(model.log_prob(x).numpy(), other.log_prob(x).numpy(), atol=1e-10)


def test_tfp_realnvp_with_keras3_conditioner_returns_stale_log_prob():
    """Documents the TFP behaviour our bijectors avoid (TFP 0.25, Keras 3).

    ``tfb.RealNVP`` caches ``inverse(x)`` by input tensor, so after a weight change the
    ``log_prob`` of the same eager tensor is neither the old value nor the new one (it mixes a
    cached inverse with a recomputed log-det). If this test fails, TFP's behaviour changed.
    """
    keras.utils.set_random_seed(0)
    net = keras.layers.Dense(2, kernel_initializer="random_normal")
    net.build((None, 1))

    def shift_and_log_scale(x, n):
        out = net(x)
        return out[..., :n], out[..., n:]

    bij = tfb.RealNVP(num_masked=1, shift_and_log_scale_fn=shift_and_log_scale)
    dist = tfd.TransformedDistribution(tfd.Sample(tfd.Normal(tf.constant(0.0), 1.0), [2]), bij)
    x = tf.constant([[0.3, -0.7], [1.0, 2.0]])
    old = dist.log_prob(x).numpy()
    for v in net.weights:
        v.assign(v + 0.5)
    same_tensor = dist.log_prob(x).numpy()
    fresh = dist.log_prob(tf.identity(x)).numpy()
    assert not np.allclose(old, fresh, atol=1e-3)  # the weight change matters
    assert not np.allclose(same_tensor, fresh, atol=1e-3)  # stale: not the new value
    assert not np.allclose(same_tensor, old, atol=1e-3)  # and not the old one either

    # The same flow with tfp-coupling's AffineCoupling: the new value.
    net2 = keras.layers.Dense(2, kernel_initializer="random_normal")
    ours = tc.AffineCoupling(masks.half_mask(2), net2, log_scale_clamp=None)
    dist2 = tfd.TransformedDistribution(tfd.Sample(tfd.Normal(tf.constant(0.0), 1.0), [2]),
                                        tc.Chain([ours]))
    dist2.log_prob(x)
    for v in net2.weights:
        v.assign(v + 0.5)
    np.testing.assert_allclose(dist2.log_prob(x).numpy(),
                               dist2.log_prob(tf.identity(x)).numpy(), rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Property tests: shapes and mask choices


@HYPOTHESIS
@given(
    keep=st.lists(st.booleans(), min_size=2, max_size=7).filter(lambda k: any(k) and not all(k)),
    affine=st.booleans(),
    batch=st.lists(st.integers(1, 3), min_size=0, max_size=2).map(tuple),
    seed=st.integers(0, 100),
)
def test_property_any_vector_mask_and_batch_shape(keep, affine, batch, seed):
    cls = tc.AffineCoupling if affine else tc.AdditiveCoupling
    bij = make_coupling(cls, np.array(keep), seed=seed)
    check_bijector(bij, [len(keep)], batch_shapes=[batch], graph_batch_shapes=[], seed=seed)


@HYPOTHESIS
@given(
    hw=st.sampled_from([(1, 2), (2, 2), (2, 3), (3, 3)]),
    channels=st.integers(1, 3),
    kind=st.sampled_from(["checkerboard", "channel"]),
    parity=st.integers(0, 1),
    affine=st.booleans(),
)
def test_property_image_masks(hw, channels, kind, parity, affine):
    if kind == "channel" and channels < 2:
        channels = 2
    shape = (*hw, channels)
    m = (masks.checkerboard_mask(*shape, parity=parity) if kind == "checkerboard"
         else masks.channel_mask(*shape, first=bool(parity)))
    cls = tc.AffineCoupling if affine else tc.AdditiveCoupling
    bij = make_coupling(cls, m, scale=0.2)
    check_bijector(bij, list(shape), batch_shapes=[(2,)], graph_batch_shapes=[])


def test_plain_tfb_chain_caches_but_tc_chain_does_not():
    """Documents the README's caveat: ``tfb.Chain`` caches by input tensor at the chain level
    even around uncached links, so a held result makes ``inverse`` of the same tensor stale after
    a weight change; ``tc.Chain`` gives the new value."""
    results = {}
    for chain in (tfb.Chain, tc.Chain):
        c = make_coupling(tc.AffineCoupling, masks.half_mask(4), dtype=tf.float32, seed=1)
        bij = chain([c, tfb.Shift(1.0)])
        x = tf.random.normal([3, 4])
        z_old = bij.inverse(x)  # held: keeps TFP's cache entry alive
        randomize_weights(c, seed=2)
        z_fresh = bij.inverse(tf.identity(x)).numpy()
        assert not np.allclose(z_fresh, z_old.numpy(), atol=1e-3)
        results[chain.__name__ if chain is tfb.Chain else "tc.Chain"] = np.allclose(
            bij.inverse(x).numpy(), z_fresh, atol=1e-6)
    assert results == {"Chain": False, "tc.Chain": True}


def test_nice_chain_does_not_claim_an_affine_jacobian():
    """TFP trusts ``is_constant_jacobian`` to mean "affine": ``TransformedDistribution.mean()``
    then returns ``f(0)``. A NICE chain is not affine (only its log-det is constant), so the mean
    must not be that silently wrong number."""
    model = tc.nice_flow([2], num_couplings=2, hidden_units=[8], dtype="float64")
    randomize_weights(model.flow_layers, seed=1, scale=1.0)
    coupling = next(b for b in model.bijector.bijectors if isinstance(b, tc.AdditiveCoupling))
    assert not coupling.is_constant_jacobian
    np.testing.assert_array_equal(
        coupling.forward_log_det_jacobian(tf.ones([3, 2], tf.float64), event_ndims=1), 0.0)
    samples = model.distribution.sample(20000, seed=1).numpy()
    f_of_zero = model.forward(tf.zeros([1, 2], tf.float64)).numpy()[0]
    # Monte Carlo error of the mean: about std / sqrt(20000) < 0.02; f(0) is far off.
    assert np.abs(samples.mean(0) - f_of_zero).max() > 0.1
    with pytest.raises(NotImplementedError):
        model.distribution.mean()
