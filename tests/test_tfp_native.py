"""tfp-coupling used as plain TFP: variables, batch shapes, copies, dtypes, affine-ness."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

import tfp_coupling as tc
from tfp_coupling import masks, nets

tfb, tfd = tfp.bijectors, tfp.distributions


def _base(dim: int, dtype=tf.float32) -> tfd.Distribution:
    return tfd.Sample(tfd.Normal(tf.zeros([], dtype), tf.ones([], dtype)), sample_shape=[dim])


def _couplings(dim: int = 2, count: int = 4, cls=tc.AffineCoupling) -> list[tfb.Bijector]:
    out = []
    for i in range(count):
        mask = masks.half_mask(dim, first=i % 2 == 0)
        b = tc.masks.Partition(mask).b_shape[-1]
        params = 2 if cls is tc.AffineCoupling else 1
        out.append(cls(mask, nets.MLP([32, 32], output_shape=[params * b])))
    return out


def _layer_variables(bijectors) -> set[int]:
    """ids of the tf.Variables behind every Keras layer of ``bijectors``."""
    return {id(v.value) for b in bijectors for layer in b.keras_layers
            for v in layer.trainable_weights}


@pytest.mark.parametrize("chain_cls", [tc.Chain, tfb.Chain], ids=["tc.Chain", "tfb.Chain"])
def test_distribution_lists_every_weight_before_any_call(chain_cls):
    links = [tc.Rescaling([2]), *_couplings()]
    dist = tfd.TransformedDistribution(_base(2), chain_cls(links))
    got = {id(v) for v in dist.trainable_variables}
    assert got == _layer_variables(links)
    assert len(got) == 1 + 4 * 6  # the scale; 3 dense layers (kernel, bias) per conditioner
    assert all(isinstance(v, tf.Variable) for v in dist.trainable_variables)
    for b in links:
        assert {id(v) for v in b.trainable_variables} == _layer_variables([b])


def test_plain_gradient_tape_loop_lowers_the_nll():
    x = tc.data.load("two_moons", "train", seed=0, n=1024).astype(np.float32)
    x = (x - x.mean(0)) / x.std(0)
    dist = tfd.TransformedDistribution(_base(2), tc.Chain(_couplings()))
    optimizer = keras.optimizers.Adam(1e-2)
    variables = dist.trainable_variables

    @tf.function
    def step(batch):
        with tf.GradientTape() as tape:
            loss = -tf.reduce_mean(dist.log_prob(batch))
        grads = tape.gradient(loss, variables)
        optimizer.apply_gradients(zip(grads, variables, strict=True))
        return loss, grads

    start = float(-tf.reduce_mean(dist.log_prob(x)))
    for i in range(150):
        _, grads = step(x[(i % 4) * 256:(i % 4 + 1) * 256])
    assert all(g is not None for g in grads)
    end = float(-tf.reduce_mean(dist.log_prob(x)))
    assert end < start - 0.5, (start, end)


def test_flow_model_distribution_has_the_models_weights():
    model = tc.realnvp_flow([3])
    got = {id(v) for v in model.distribution.trainable_variables}
    assert got == {id(v.value) for v in model.trainable_variables}


@pytest.mark.parametrize("make", [
    lambda: tc.Rescaling([3]),
    lambda: tc.ActNorm([4, 4, 2]),
    lambda: tc.TriLAffine(3),
    lambda: tc.LULinear(3),
    lambda: _couplings(4, 1)[0],
    lambda: _couplings(4, 1, tc.AdditiveCoupling)[0],
    lambda: tc.Squeeze([4, 4, 1]),
    lambda: tc.LogitPreprocessing([4]),
    lambda: tc.Chain(_couplings(4, 2)),
], ids=["rescaling", "actnorm", "tril", "lu", "affine", "additive", "squeeze", "logit", "chain"])
def test_batch_shape_copy_and_equality(make):
    bij = make()
    assert bij.experimental_batch_shape() == tf.TensorShape([])
    copy = bij.copy()
    assert copy == bij and hash(copy) == hash(bij)
    # The copy computes with the same weights, not with freshly initialised ones.
    for mine, theirs in zip(bij.trainable_variables, copy.trainable_variables, strict=True):
        assert mine is theirs


def test_copy_keeps_trained_weights_and_a_new_bijector_differs():
    r = tc.Rescaling([3], initial_log_scale=0.5)
    r.scale_layer.log_scale.assign([0.1, 0.2, 0.3])
    x = tf.ones([2, 3])
    np.testing.assert_array_equal(r.copy().forward(x), r.forward(x))
    assert r != tc.Rescaling([3], initial_log_scale=0.5)  # other weights


def test_numpy_input_is_converted_like_tfp_and_wrong_tensors_are_named():
    bij = _couplings(4, 1)[0]
    x64 = np.random.default_rng(0).normal(size=(3, 4))
    np.testing.assert_array_equal(bij.forward(x64), bij.forward(tf.constant(x64, tf.float32)))
    np.testing.assert_array_equal(tfb.Scale(2.0).forward(x64), 2.0 * x64.astype(np.float32))
    with pytest.raises(TypeError, match="x has dtype float64, expected float32"):
        bij.forward(tf.constant(x64))
    assert bij.dtype == tf.float32


def test_nice_mean_is_not_the_image_of_the_base_mean():
    """A NICE chain is not affine: TFP must not report ``mean() = f(0)``."""
    links = [tc.Rescaling([2], initial_log_scale=0.3),
             *_couplings(2, 3, tc.AdditiveCoupling)]
    dist = tfd.TransformedDistribution(_base(2), tc.Chain(links))
    assert not dist.bijector.is_constant_jacobian
    with pytest.raises(NotImplementedError):
        dist.mean()


def test_affine_chain_mean_matches_monte_carlo():
    tril = tc.TriLAffine(2)
    tril.params.initialize_from(
        np.random.default_rng(1).normal(size=(500, 2)) @ [[2.0, 0.0], [1.0, 0.5]] + [3.0, -1.0])
    links = [tril, tc.Rescaling([2], initial_log_scale=0.2)]
    dist = tfd.TransformedDistribution(_base(2), tc.Chain(links))
    assert dist.bijector.is_constant_jacobian
    draws = dist.sample(200_000, seed=tf.constant([1, 2], tf.int32))
    np.testing.assert_allclose(dist.mean(), tf.reduce_mean(draws, 0), atol=0.02)


def test_float64_sampling_temperature_stays_in_float64():
    model = tc.realnvp_flow([2], dtype="float64")
    shape = [5, 2]
    z = tf.random.stateless_normal(shape, seed=[3, 0], dtype=tf.float64)
    expected = model.forward(z * tf.constant(0.1, tf.float64))
    np.testing.assert_array_equal(model.sample(5, temperature=0.1, seed=3), expected)


class CountingConditioner(keras.layers.Layer):
    """Wraps a conditioner and counts its calls (at trace time inside ``tf.function``)."""

    def __init__(self, inner: keras.layers.Layer) -> None:
        super().__init__()
        self.inner = inner
        self.calls = 0

    def call(self, x):
        self.calls += 1
        return self.inner(x)


def _counted_couplings(count: int = 4) -> list[tc.AffineCoupling]:
    return [tc.AffineCoupling(
        masks.half_mask(2, first=i % 2 == 0),
        CountingConditioner(nets.MLP([16], output_shape=[2], zero_init=False)))
        for i in range(count)]


@pytest.mark.parametrize("chain_cls", [tc.Chain, tfb.Chain], ids=["tc.Chain", "tfb.Chain"])
def test_transformed_distribution_log_prob_calls_each_conditioner_once_in_a_graph(chain_cls):
    links = _counted_couplings()
    dist = tfd.TransformedDistribution(_base(2), chain_cls(links))
    variables = dist.trainable_variables

    @tf.function
    def loss_and_grads(x):
        with tf.GradientTape() as tape:
            loss = -tf.reduce_mean(dist.log_prob(x))
        return loss, tape.gradient(loss, variables)

    for b in links:
        b.conditioner.calls = 0
    x = tf.random.stateless_normal([64, 2], seed=[1, 2])
    loss, grads = loss_and_grads(x)
    assert [b.conditioner.calls for b in links] == [1, 1, 1, 1]
    # The same values and gradients as the fused walk, computed eagerly.
    with tf.GradientTape() as tape:
        z, ildj = tc.fused.inverse_and_log_det(dist.bijector, x, 1)
        expected = -tf.reduce_mean(dist.distribution.log_prob(z) + ildj)
    np.testing.assert_allclose(loss, expected, rtol=1e-6)
    for g, e in zip(grads, tape.gradient(expected, variables), strict=True):
        np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-6)


def test_eager_log_prob_sees_new_weights_for_the_same_tensor():
    links = _counted_couplings(2)
    dist = tfd.TransformedDistribution(_base(2), tc.Chain(links))
    x = tf.random.stateless_normal([8, 2], seed=[3, 4])
    before = dist.log_prob(x).numpy()
    for v in dist.trainable_variables:
        v.assign(v + 0.1)
    after = dist.log_prob(x).numpy()
    z, ildj = tc.fused.inverse_and_log_det(dist.bijector, x, 1)
    np.testing.assert_allclose(after, dist.distribution.log_prob(z) + ildj, rtol=1e-6)
    assert np.abs(after - before).max() > 1e-3


# --------------------------------------------------------------------------------------------
# Pluggable elementwise maps: TransformCoupling with TFP's rational-quadratic spline


def _spline_coupling(mask, bins: int = 5, seed: int = 1, scale: float = 0.5,
                     dtype=tf.float64) -> tc.TransformCoupling:
    from harness import randomize_weights

    part = masks.Partition(mask)
    fn = tc.bijectors.rational_quadratic_spline(bins, bound=3.0)
    b_shape = part.b_shape
    net = nets.MLP([8], (*b_shape[:-1], fn.num_params * b_shape[-1]), dtype=tf.as_dtype(dtype).name)
    bij = tc.TransformCoupling(mask, net, fn, fn.num_params, dtype=dtype)
    randomize_weights(bij, seed=seed, scale=scale)
    return bij


@pytest.mark.parametrize("mask", [
    masks.half_mask(5), masks.alternating_mask(6, parity=1),
    masks.checkerboard_mask(4, 4, 2), masks.channel_mask(4, 4, 2),
], ids=["half", "alternating", "checkerboard", "channel"])
def test_spline_coupling_harness(mask):
    from harness import check_bijector

    event = list(masks.Partition(mask).event_shape)
    # Image conditioners see 16-32 inputs: smaller weights keep the bins moderate, so that
    # round trips measure round-off, not the conditioning of near-degenerate bins.
    bij = _spline_coupling(mask, scale=0.5 if len(event) == 1 else 0.1)
    x = np.random.default_rng(0).normal(size=[3, *event])
    assert np.abs(bij.forward(x) - x).max() > 0.05  # the random conditioner is not the identity
    check_bijector(bij, event)


def test_spline_starts_as_the_identity_and_fuses_with_affine_couplings():
    fn = tc.bijectors.rational_quadratic_spline(8)
    spline = tc.TransformCoupling(masks.half_mask(4), nets.MLP([8], [2 * fn.num_params]), fn,
                                  fn.num_params)
    x = tf.random.stateless_normal([16, 4], seed=[5, 6])
    np.testing.assert_allclose(spline.forward(x), x, atol=1e-5)
    from harness import randomize_weights

    affine = _couplings(4, 1)[0]
    randomize_weights(affine, seed=1, scale=0.3)
    chain = tc.Chain([spline, affine])
    fused_y, fused_ldj = tc.fused.forward_and_log_det(chain, x, 1)
    np.testing.assert_allclose(fused_y, chain.forward(x), atol=1e-5)
    np.testing.assert_allclose(fused_ldj, chain.forward_log_det_jacobian(x, 1), atol=1e-5)


def test_transform_coupling_rejects_bad_arguments():
    with pytest.raises(TypeError, match="transform_fn must be callable"):
        tc.TransformCoupling(masks.half_mask(2), nets.MLP([4], [1]), None, 1)
    with pytest.raises(ValueError, match="num_bins must be >= 2"):
        tc.bijectors.rational_quadratic_spline(1)


# --------------------------------------------------------------------------------------------
# Conditional couplings: p(x | context)


def _conditional(cls, mask, context_dim: int = 3, seed: int = 1, scale: float = 0.3):
    from harness import randomize_weights

    part = masks.Partition(mask)
    b_shape = part.b_shape
    if cls is tc.TransformCoupling:
        fn = tc.bijectors.rational_quadratic_spline(4, bound=3.0)
        net = nets.MLP([8], (*b_shape[:-1], fn.num_params * b_shape[-1]), dtype="float64")
        bij = cls(mask, net, fn, fn.num_params, context_shape=[context_dim], dtype=tf.float64)
    else:
        net = nets.MLP([8], (*b_shape[:-1], cls.num_params * b_shape[-1]), dtype="float64")
        bij = cls(mask, net, context_shape=[context_dim], dtype=tf.float64)
    randomize_weights(bij, seed=seed, scale=scale)
    return bij


@pytest.mark.parametrize("cls", [tc.AdditiveCoupling, tc.AffineCoupling, tc.TransformCoupling],
                         ids=lambda c: c.__name__)
@pytest.mark.parametrize("mask", [masks.half_mask(5), masks.checkerboard_mask(4, 4, 2)],
                         ids=["half", "checkerboard"])
def test_conditional_coupling_harness(cls, mask):
    from harness import check_bijector

    event = list(masks.Partition(mask).event_shape)
    bij = _conditional(cls, mask, scale=0.3 if len(event) == 1 else 0.1)
    context = np.array([0.5, -1.0, 2.0])
    x = np.random.default_rng(0).normal(size=[4, *event])
    # The context reaches the conditioner: another context gives another map.
    assert np.abs(bij.forward(x, context=context) - bij.forward(x, context=-context)).max() > 1e-3
    check_bijector(bij, event, context=context)


def test_conditional_chain_harness_and_per_example_context():
    from harness import check_bijector

    links = [tc.Rescaling([4], dtype=tf.float64),
             *[_conditional(tc.AffineCoupling, masks.half_mask(4, first=i % 2 == 0), seed=i)
               for i in range(3)]]
    chain = tc.Chain(links)
    assert chain.is_conditional
    check_bijector(chain, [4], context=np.array([1.0, 0.0, -1.0]))
    # One context per example: each row is transformed with its own context.
    x = tf.random.stateless_normal([5, 4], seed=[1, 1], dtype=tf.float64)
    c = tf.random.stateless_normal([5, 3], seed=[2, 2], dtype=tf.float64)
    rows = [chain.forward(x[i], context=c[i]) for i in range(5)]
    np.testing.assert_allclose(chain.forward(x, context=c), tf.stack(rows), atol=1e-12)
    dist = tfd.TransformedDistribution(_base(4, tf.float64), chain)
    z, ildj = tc.fused.inverse_and_log_det(chain, x, 1, context=c)
    np.testing.assert_allclose(dist.log_prob(x, bijector_kwargs={"context": c}),
                               dist.distribution.log_prob(z) + ildj, atol=1e-10)


def test_conditional_errors_name_the_problem():
    bij = _conditional(tc.AffineCoupling, masks.half_mask(4))
    x = tf.zeros([2, 4], tf.float64)
    with pytest.raises(ValueError, match=r"conditional .*pass a context"):
        bij.forward(x)
    with pytest.raises(ValueError, match=r"context has shape \[2, 5\], expected \[..., 3\]"):
        bij.forward(x, context=np.zeros([2, 5]))
    plain = _couplings(4, 1)[0]
    with pytest.raises(ValueError, match="not conditional"):
        plain.forward(tf.zeros([2, 4]), context=np.zeros([2, 3]))
    with pytest.raises(ValueError, match="context_shape must be"):
        tc.AffineCoupling(masks.half_mask(4), nets.MLP([4], [4]), context_shape=[2, 2])


def test_a_tf_module_and_a_users_keras_model_train_the_flow():
    links = _couplings()
    dist = tfd.TransformedDistribution(_base(2), tc.Chain(links))

    class Holder(tf.Module):
        def __init__(self, d):
            super().__init__()
            self.dist = d

    assert {id(v) for v in Holder(dist).trainable_variables} == {
        id(v) for v in dist.trainable_variables}

    class UserModel(keras.Model):
        """A user's own Keras model: it tracks the flow's layers, as FlowModel does."""

        def __init__(self, d):
            super().__init__()
            self.flow_layers = tc.fused.collect_keras_layers(d.bijector)
            self.__dict__["dist"] = d  # not a Keras layer: kept out of Keras' tracking

        def call(self, x):
            return self.dist.log_prob(x)

    x = tc.data.load("two_moons", "train", n=1024)
    x = (x - x.mean(0)) / x.std(0)
    model = UserModel(dist)
    model.compile(optimizer=keras.optimizers.Adam(1e-2),
                  loss=lambda _, log_p: -tf.reduce_mean(log_p))
    assert len(model.trainable_variables) == len(dist.trainable_variables)
    start = float(-np.mean(dist.log_prob(x)))
    model.fit(x, np.zeros(len(x)), batch_size=256, epochs=30, verbose=0)
    assert float(-np.mean(dist.log_prob(x))) < start - 0.5
