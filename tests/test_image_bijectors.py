"""Image bijectors through the shared harness: Squeeze, ActNorm, LogitPreprocessing, FactorOut,
couplings with checkerboard and channel masks and the ResNet conditioner.

Everything runs in float64 with tolerance 1e-5 (log-dets against the autodiff Jacobian) at image
shapes (8, 8, 1), (28, 28, 1) and (16, 16, 3). To stay within the test-time budget the
784-dimensional case uses one batch shape (2,) and the others () and (2, 3).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp
from harness import check_bijector, check_no_stale, randomize_weights

import tfp_coupling as tc
from tfp_coupling import masks, nets

tfb, tfd = tfp.bijectors, tfp.distributions
F64 = tf.float64
SHAPES = [(8, 8, 1), (28, 28, 1), (16, 16, 3)]


def batches(shape) -> tuple:
    return ((2,),) if math.prod(shape) > 700 else ((), (2, 3))


def pixels(shape, rng):
    """Dequantised 8-bit pixels: valid inverse inputs of the logit preprocessing."""
    return rng.integers(0, 256, size=shape) + rng.uniform(size=shape)


def resnet_coupling(mask, cls=tc.AffineCoupling, seed=0, hidden=4, blocks=1):
    """A coupling with a float64 ResNet conditioner, built and moved off the identity."""
    partition = masks.Partition(mask)
    out = cls.num_params * partition.b_shape[-1]
    bij = cls(mask, nets.ResNet(hidden, blocks, out, dtype="float64"), dtype=F64)
    bij.forward(tf.zeros((1, *partition.event_shape), F64))
    randomize_weights(bij, seed=seed, scale=0.2)
    return bij


# ------------------------------------------------------------------------------ Squeeze


@pytest.mark.parametrize("shape", SHAPES)
def test_squeeze_harness(shape):
    check_bijector(tc.Squeeze(shape, dtype=F64), shape, batch_shapes=batches(shape))


def test_squeeze_matches_space_to_depth_and_reports_shapes(rng):
    b = tc.Squeeze([4, 6, 3])
    x = rng.normal(size=(2, 5, 4, 6, 3)).astype("float32")
    y = b.forward(x)
    ref = tf.nn.space_to_depth(x.reshape(10, 4, 6, 3), 2).numpy().reshape(2, 5, 2, 3, 12)
    np.testing.assert_array_equal(y.numpy(), ref)
    assert b.forward_event_shape([4, 6, 3]) == [2, 3, 12]
    assert b.inverse_event_shape([2, 3, 12]) == [4, 6, 3]
    assert tfb.Invert(b).forward_event_shape([2, 3, 12]) == [4, 6, 3]
    assert b.forward_event_shape_tensor([7, 4, 6, 3]).numpy().tolist() == [7, 2, 3, 12]
    assert b.output_event_shape == (2, 3, 12)


def test_squeeze_rejects_bad_shapes():
    with pytest.raises(ValueError, match="multiples of factor 2"):
        tc.Squeeze([5, 4, 1])
    with pytest.raises(ValueError, match=r"\(H, W, C\)"):
        tc.Squeeze([16])
    with pytest.raises(ValueError, match=r"expected event shape \[2, 2, 4\]"):
        tc.Squeeze([4, 4, 1]).inverse(tf.zeros([1, 4, 4, 1]))


# ------------------------------------------------------------------------------ ActNorm


@pytest.mark.parametrize("shape", SHAPES)
def test_actnorm_harness_before_data_init(shape):
    b = tc.ActNorm(shape, dtype=F64)
    randomize_weights(b, seed=1, trainable_only=True)
    assert not b.params.is_initialized
    check_bijector(b, shape, batch_shapes=batches(shape))
    check_no_stale(b, shape)


@pytest.mark.parametrize("shape", SHAPES)
def test_actnorm_harness_after_data_init(shape, rng):
    b = tc.ActNorm(shape, dtype=F64)
    data = rng.normal(size=(16, *shape)) * rng.uniform(0.5, 4.0, size=shape[-1]) + 3.0
    b.params.initialize_from(tf.constant(data))
    assert b.params.is_initialized
    x, ildj = b.inverse_and_log_det(data)
    flat = x.numpy().reshape(-1, shape[-1])
    np.testing.assert_allclose(flat.mean(axis=0), 0.0, atol=1e-8)
    np.testing.assert_allclose(flat.std(axis=0), 1.0, atol=1e-5)
    std = data.reshape(-1, shape[-1]).std(axis=0)
    by_hand = -math.prod(shape[:-1]) * np.log(std + 1e-6).sum()  # eps of initialize_from
    np.testing.assert_allclose(ildj.numpy(), by_hand, atol=1e-8)
    check_bijector(b, shape, batch_shapes=batches(shape), inverse_inputs=lambda s, r: (
        r.normal(size=s) * 2.0 + 3.0))


def test_initialize_actnorm_normalises_the_first_batch_in_a_model(rng):
    model = tc.realnvp_image_flow([8, 8, 1], num_scales=1, num_final_couplings=2,
                                  hidden_channels=4, num_blocks=0, dtype="float64")
    layers = tc.bijectors.actnorm_layers(model)
    assert len(layers) == 2 and not any(layer.is_initialized for layer in layers)
    x = rng.integers(0, 256, size=(64, 8, 8, 1))
    assert tc.initialize_actnorm(model, x) == 2
    assert all(layer.is_initialized for layer in layers)
    assert tc.initialize_actnorm(model, x) == 0  # already initialised: nothing to do
    # The first ActNorm sees the logits of the (dequantised) batch: after it, mean 0, std 1.
    logit, actnorm = model.bijector.bijectors[:2]
    noisy = x + np.random.default_rng(0).uniform(size=x.shape)  # initialize_actnorm's noise
    h = actnorm.inverse(logit.inverse(noisy)).numpy()
    assert abs(h.mean()) < 1e-6 and abs(h.std() - 1.0) < 1e-5


# ------------------------------------------------------------------------------ logit


@pytest.mark.parametrize("shape", SHAPES)
def test_logit_preprocessing_harness(shape):
    b = tc.LogitPreprocessing(shape, alpha=0.05, dtype=F64)
    check_bijector(b, shape, batch_shapes=batches(shape),
                   inputs=lambda s, r: 3.0 * r.normal(size=s), inverse_inputs=pixels)


def test_logit_preprocessing_values(rng):
    b = tc.LogitPreprocessing([3], alpha=0.1, num_levels=16, dtype=F64)
    x = np.array([[0.0, 8.0, 15.9]])
    p = 0.1 + 0.8 * x / 16
    z, ildj = b.inverse_and_log_det(x)
    np.testing.assert_allclose(z.numpy(), np.log(p / (1 - p)), atol=1e-12)
    np.testing.assert_allclose(ildj.numpy(), [np.sum(np.log(0.8 / 16) - np.log(p * (1 - p)))],
                               atol=1e-12)


def test_logit_preprocessing_with_a_logistic_base_is_uniform_on_the_pixel_cube(rng):
    """alpha = 0 and a standard logistic base: the density is 256^-D, i.e. exactly 8 bits/dim."""
    d = 5
    dist = tfd.TransformedDistribution(
        tfd.Sample(tfd.Logistic(tf.constant(0.0, F64), tf.constant(1.0, F64)), [d]),
        tc.LogitPreprocessing([d], alpha=0.0, dtype=F64))
    x = pixels((4, d), rng)
    bits = -dist.log_prob(x).numpy() / (d * math.log(2.0))
    np.testing.assert_allclose(bits, 8.0, atol=1e-9)


def test_logit_preprocessing_rejects_bad_arguments():
    with pytest.raises(ValueError, match="alpha"):
        tc.LogitPreprocessing([4], alpha=0.5)
    with pytest.raises(ValueError, match="num_levels"):
        tc.LogitPreprocessing([4], num_levels=1)


# ------------------------------------------------------------------------------ couplings


@pytest.mark.parametrize(("shape", "parity"), list(zip(SHAPES, (0, 1, 0), strict=True)))
def test_affine_checkerboard_coupling_with_resnet_harness(shape, parity):
    b = resnet_coupling(masks.checkerboard_mask(*shape, parity=parity), seed=parity)
    check_bijector(b, shape, batch_shapes=batches(shape))


@pytest.mark.parametrize(("shape", "first"), [((16, 16, 3), True), ((4, 4, 4), False)])
def test_affine_channel_coupling_with_resnet_harness(shape, first):
    b = resnet_coupling(masks.channel_mask(*shape, first=first), seed=int(first))
    check_bijector(b, shape, batch_shapes=batches(shape))


@pytest.mark.parametrize("shape", [(8, 8, 1), (16, 16, 3)])
def test_additive_checkerboard_coupling_with_resnet_harness(shape):
    b = resnet_coupling(masks.checkerboard_mask(*shape), cls=tc.AdditiveCoupling)
    check_bijector(b, shape, batch_shapes=batches(shape))
    check_no_stale(b, shape)


def test_resnet_output_shape_zero_init_and_policy():
    net = nets.ResNet(hidden_channels=6, num_blocks=2, output_channels=4)
    out = net(np.ones((2, 8, 8, 3), "float32"))
    assert out.shape == (2, 8, 8, 4) and float(tf.reduce_max(tf.abs(out))) == 0.0
    assert len(net.trainable_variables) == 2 * (1 + 2 * 2 + 1)  # kernel and bias per conv
    half = nets.ResNet(4, 1, 2, dtype="mixed_float16")
    assert half(np.ones((1, 4, 4, 1), "float32")).dtype == tf.float16
    assert nets.ResNet.from_config(net.get_config()).get_config() == net.get_config()
    with pytest.raises(ValueError, match="kernel_size"):
        nets.ResNet(4, 1, 2, kernel_size=2)


def test_checkerboard_coupling_conditioner_sees_only_the_kept_pixels(rng):
    """Changing transformed pixels never changes the parameters: y_a = x_a and y_b's shift."""
    shape = (8, 8, 1)
    mask = masks.checkerboard_mask(*shape)
    b = resnet_coupling(mask, seed=3)
    x = rng.normal(size=(1, *shape))
    x2 = np.where(mask.numpy(), x, rng.normal(size=x.shape))  # same kept, new transformed
    y, y2 = b.forward(x).numpy(), b.forward(x2).numpy()
    keep = mask.numpy()[None]
    np.testing.assert_array_equal(y[keep], x[keep])
    params = b._run_conditioner(tf.constant(x * keep))
    np.testing.assert_allclose(y2[~keep], (x2 * np.exp(params[1]) + params[0]).numpy()[~keep],
                               atol=1e-12)


# ------------------------------------------------------------------------------ FactorOut


def test_factor_out_harness_on_a_channel_slice():
    shape = (16, 16, 3)  # the inner coupling acts on channel 0 only
    inner = resnet_coupling(masks.checkerboard_mask(16, 16, 1), seed=4)
    b = tc.FactorOut(shape, inner, num_kept=1, dtype=F64)
    assert b.keras_layers == inner.keras_layers
    check_bijector(b, shape, batch_shapes=batches(shape))
    x = np.random.default_rng(1).normal(size=(2, *shape))
    np.testing.assert_array_equal(b.forward(x).numpy()[..., 1:], x[..., 1:])


def test_one_multiscale_level_harness():
    """Squeeze, channel coupling, factor out half, (inner checkerboard coupling), unsqueeze."""
    shape = (28, 28, 1)
    h, w, c = shape
    squeezed = (h // 2, w // 2, 4 * c)
    inner = tc.Chain([resnet_coupling(masks.checkerboard_mask(h // 2, w // 2, 2 * c), seed=5)])
    level = tc.Chain([
        tfb.Invert(tc.Squeeze(shape, dtype=F64)),
        resnet_coupling(masks.channel_mask(*squeezed), seed=6),
        tc.FactorOut(squeezed, inner, dtype=F64),
        tc.Squeeze(shape, dtype=F64),
    ])
    check_bijector(level, shape, batch_shapes=batches(shape))


def test_factor_out_rejects_bad_arguments():
    inner = tc.Rescaling([4, 4, 1])
    with pytest.raises(ValueError, match="num_kept"):
        tc.FactorOut([4, 4, 2], inner, num_kept=2)
    with pytest.raises(TypeError, match="TFP bijector"):
        tc.FactorOut([4, 4, 2], lambda x: x)
    with pytest.raises(ValueError, match="must keep the event shape"):
        tc.FactorOut([4, 4, 2], tc.Squeeze([4, 4, 1]))
