"""Conditioner networks: initialisation that lets a flow fit from its first step."""

from __future__ import annotations

import keras
import numpy as np
import pytest

import tfp_coupling as tc
from tfp_coupling.nets import MLP, AutoMLP


def test_mlp_hidden_biases_spread_the_relu_kinks_over_the_data():
    """On a 1-D input (a coupling of 2-D data) the first layer's ReLU kinks sit at ``-b / w``.
    Zero biases put all of them at 0 (a piecewise-linear net with one kink, which fits two moons
    0.3 nats worse); the initialisation must spread them over the standardised data range."""
    net = tc.nets.MLP([64, 64], output_shape=[2])
    net.build((None, 1))
    first = net.hidden[0]
    kinks = -first.bias.numpy() / first.kernel.numpy()[0]
    inside = kinks[np.abs(kinks) < 2.0]
    assert len(inside) >= 16, kinks
    assert np.ptp(inside) > 2.0, inside
    for layer in net.hidden:
        limit = 1.0 / np.sqrt(layer.kernel.shape[0])
        assert np.abs(layer.bias.numpy()).max() <= limit
        assert np.abs(layer.bias.numpy()).std() > 0.2 * limit
    # The output layer stays zero: a new coupling is the identity.
    assert not np.any(net.out.kernel.numpy()) and not np.any(net.out.bias.numpy())


def test_mlp_initialisation_is_seeded_and_differs_between_layers():
    def first_bias():
        keras.utils.set_random_seed(3)
        nets = [tc.nets.MLP([8], output_shape=[1]) for _ in range(2)]
        for n in nets:
            n.build((None, 1))
        return [n.hidden[0].bias.numpy() for n in nets]

    a, b = first_bias(), first_bias()
    np.testing.assert_array_equal(a[0], b[0])
    assert not np.allclose(a[0], a[1])


def test_mlp_random_outputs_draws_only_the_leading_entries_of_the_last_axis():
    """``random_outputs=k`` starts the first ``k`` entries of the output's last axis random (an
    affine coupling's shifts) and the rest at zero (its log-scales), on vectors and images."""
    keras.utils.set_random_seed(0)
    for shape, k in (([6], 3), ([2, 3, 4], 2)):
        net = tc.nets.MLP([16], output_shape=shape, random_outputs=k)
        out = np.asarray(net(np.random.default_rng(0).normal(size=(32, 5)).astype("float32")))
        assert out.shape == (32, *shape)
        assert np.all(np.abs(out[..., :k]).max(axis=0) > 0), out[..., :k]
        assert not np.any(out[..., k:])
        limit = 1.0 / np.sqrt(16)
        assert 0 < np.abs(net.out.kernel.numpy()).max() <= limit
        config = net.get_config()
        assert config["random_outputs"] == k
        assert tc.nets.MLP.from_config(config).random_outputs == k
    for k in (-1, 7):
        with pytest.raises(ValueError, match="random_outputs must be in \\[0, 6\\]"):
            tc.nets.MLP([4], output_shape=[6], random_outputs=k)


def _resnet_features(net: tc.nets.ResNet, x: np.ndarray) -> np.ndarray:
    """What ``net`` feeds its output convolution: ``act(h_K)``."""
    net(x)  # builds
    h = net.conv_in(x)
    for a, b in net.blocks:
        h = h + b(net.act(a(net.act(h))))
        if net.scale_residuals:
            h = h * np.sqrt(0.5)
    return np.asarray(net.act(h))


def test_scaled_resnet_blocks_keep_the_activation_scale_with_depth():
    """Unscaled He-initialised residual blocks double the variance of ``h`` each: 8 blocks give
    the output convolution inputs 16x larger, and Adam's first step then moves a deep flow's
    shifts far enough to send its NLL to inf. Scaled by 1/sqrt(2) the scale stays put."""
    x = np.random.default_rng(0).normal(size=(8, 8, 8, 4)).astype("float32")
    std = {}
    for scaled in (False, True):
        for blocks in (1, 8):
            keras.utils.set_random_seed(0)
            net = tc.nets.ResNet(32, blocks, 2, scale_residuals=scaled)
            std[scaled, blocks] = float(_resnet_features(net, x).std())
            out = np.asarray(net(x))
            assert np.all(out == 0.0)  # still the identity coupling at the start
    assert std[False, 8] > 4 * std[False, 1], std
    assert std[True, 8] < 2 * std[True, 1], std


def test_image_flow_scales_its_blocks_and_old_configs_do_not():
    model = tc.realnvp_image_flow([8, 8, 1], num_scales=1, hidden_channels=8, num_blocks=2,
                                  num_final_couplings=1, actnorm=False)
    nets = [layer for layer in model.flow_layers if isinstance(layer, tc.nets.ResNet)]
    assert nets and all(net.scale_residuals for net in nets)
    config = {k: v for k, v in model.get_config()["flow_config"].items()
              if k != "scale_residuals"}  # as a file saved before the option existed
    old = type(model).from_config({"name": "old", "flow_config": config})
    assert not any(layer.scale_residuals for layer in old.flow_layers
                   if isinstance(layer, tc.nets.ResNet))


def test_mlp_dropout_acts_in_training_only():
    """Outside training the conditioner is one fixed function (a coupling stays one bijection);
    in training each call draws a new mask."""
    keras.utils.set_random_seed(0)
    net = tc.nets.MLP([32, 32], output_shape=[4], zero_init=False, dropout=0.5)
    x = np.random.default_rng(0).normal(size=(16, 3)).astype("float32")
    plain = np.asarray(net(x))
    np.testing.assert_array_equal(np.asarray(net(x)), plain)
    np.testing.assert_array_equal(np.asarray(net(x, training=False)), plain)
    first, second = np.asarray(net(x, training=True)), np.asarray(net(x, training=True))
    assert np.abs(first - plain).max() > 1e-2 and np.abs(first - second).max() > 1e-2
    assert len(net.drop) == 2 and not tc.nets.MLP([8], output_shape=[2]).drop
    assert tc.nets.MLP.from_config(net.get_config()).dropout == 0.5
    for rate in (-0.1, 1.0, float("nan")):
        with pytest.raises(ValueError, match="dropout must be in \\[0, 1\\)"):
            tc.nets.MLP([8], output_shape=[2], dropout=rate)


@pytest.mark.parametrize("bounded", [1.0, 0.0])
def test_auto_mlp_computes_the_units_its_choice_names(bounded):
    """With the same weights an AutoMLP equals MLP(activation="tanh") when ``bounded`` is 1 and
    MLP(activation="relu") when it is 0 (and differs from the other)."""
    x = np.random.default_rng(0).normal(size=(16, 3)).astype("float32") * 2
    auto = AutoMLP([8, 8], output_shape=[4], zero_init=False)
    auto(x)
    auto.bounded.assign(bounded)
    outs = {}
    for act in ("tanh", "relu"):
        mlp = MLP([8, 8], output_shape=[4], activation=act, zero_init=False)
        mlp(x)
        for a, b in zip([*auto.hidden, auto.out], [*mlp.hidden, mlp.out], strict=True):
            b.set_weights(a.get_weights())
        outs[act] = mlp(x).numpy()
    same, other = ("tanh", "relu") if bounded else ("relu", "tanh")
    np.testing.assert_allclose(auto(x).numpy(), outs[same], rtol=1e-6, atol=1e-6)
    assert np.abs(auto(x).numpy() - outs[other]).max() > 1e-2


def test_mlp_sine_units_in_the_first_layer_only():
    """``sine_scale=w``: the first hidden layer computes ``sin(W_1 x + b_1)`` with ``W_1, b_1``
    drawn in ``±w/sqrt(fan_in)``, the later ones keep their activation; the setting is saved."""
    keras.utils.set_random_seed(0)
    x = np.random.default_rng(0).normal(size=(64, 1)).astype("float32")
    net = MLP([32, 16], output_shape=[2], zero_init=False, sine_scale=3.0)
    out = net(x).numpy()
    first, second = net.hidden
    for weight in (first.kernel, first.bias):
        w = np.abs(weight.numpy())
        assert w.max() <= 3.0 and w.max() > 1.5, w  # fan-in 1: the range is ±3
    h = np.sin(x @ first.kernel.numpy() + first.bias.numpy())
    h = np.maximum(h @ second.kernel.numpy() + second.bias.numpy(), 0.0)
    np.testing.assert_allclose(out, h @ net.out.kernel.numpy() + net.out.bias.numpy(),
                               rtol=1e-5, atol=1e-5)
    limit = 1.0 / np.sqrt(32)  # the second layer as without sine units
    assert np.abs(second.kernel.numpy()).max() <= limit
    again = MLP.from_config(net.get_config())
    assert again.sine_scale == 3.0
    assert MLP([8], output_shape=[2]).sine_scale is None
    assert AutoMLP([8], output_shape=[2], sine_scale=2.0).sine_scale == 2.0
    for bad in (0.0, -1.0, float("inf")):
        with pytest.raises(ValueError, match="sine_scale must be a positive number"):
            MLP([8], output_shape=[2], sine_scale=bad)
    with pytest.raises(ValueError, match="sine_scale needs at least one hidden layer"):
        MLP([], output_shape=[2], sine_scale=3.0)


@pytest.mark.parametrize("activation", ["relu", "tanh", "auto"])
def test_mlp_sine_fraction_makes_the_first_units_sine_and_the_rest_the_activation(activation):
    """``sine_fraction=f``: the first ``round(f * units)`` first-layer units are ``sin``, the
    others the activation (an AutoMLP's chosen units); the whole layer is drawn at the scale."""
    keras.utils.set_random_seed(1)
    x = np.random.default_rng(1).normal(size=(64, 1)).astype("float32")
    cls, extra = (AutoMLP, {"small_data_identity": False}) if activation == "auto" else (MLP, {})
    net = cls([10, 8], output_shape=[2], zero_init=False, activation=activation,
              sine_scale=3.0, sine_fraction=0.4, **extra)
    if activation == "auto":
        net(x)
        net.initialize_from(np.zeros((300, 1), "float32"))  # 300 rows: tanh units
        assert float(net.bounded.numpy()) == 1.0
    out = net(x).numpy()
    first, second = net.hidden
    assert np.abs(first.kernel.numpy()).max() > 1.5  # the ReLU/tanh units too: ±3 at fan-in 1
    z = x @ first.kernel.numpy() + first.bias.numpy()
    act = np.tanh if activation in ("tanh", "auto") else (lambda v: np.maximum(v, 0.0))
    h = np.concatenate([np.sin(z[:, :4]), act(z[:, 4:])], axis=-1)  # round(0.4 * 10) = 4
    later = act(h @ second.kernel.numpy() + second.bias.numpy())
    np.testing.assert_allclose(out, later @ net.out.kernel.numpy() + net.out.bias.numpy(),
                               rtol=1e-5, atol=1e-5)
    again = cls.from_config(net.get_config())
    assert (again.sine_fraction, again._sines) == (0.4, 4)
    # A config saved before the option has all sine units; one unit at least.
    old = {k: v for k, v in MLP([6], [2], sine_scale=3.0).get_config().items()
           if k != "sine_fraction"}
    assert MLP.from_config(old)._sines == 6
    assert MLP([6], [2], sine_scale=3.0, sine_fraction=0.01)._sines == 1
    for bad in (0.0, -0.5, 1.5):
        with pytest.raises(ValueError, match="sine_fraction must be in"):
            MLP([8], output_shape=[2], sine_scale=3.0, sine_fraction=bad)


@pytest.mark.parametrize("rows", [300, 3000])
def test_auto_mlp_without_small_data_sines_drops_them_on_few_rows(rows):
    """``small_data_sines=False``: below 2000 rows every first-layer unit is the chosen (tanh)
    unit and that layer is the draw divided by ``sine_scale``; from 2000 rows the sine units
    stay (beside ReLU units). The choice is a saved weight; old configs keep the sines."""
    keras.utils.set_random_seed(2)
    x = np.random.default_rng(2).normal(size=(64, 1)).astype("float32")
    net = AutoMLP([10, 8], output_shape=[2], zero_init=False, small_data_identity=False,
                  sine_scale=2.0, sine_fraction=0.5, small_data_sines=False)
    net(x)
    first, second = net.hidden
    drawn = first.kernel.numpy(), first.bias.numpy()
    net.initialize_from(np.zeros((rows, 1), "float32"))
    small = rows < 2000
    assert float(net.sines_on.numpy()) == (0.0 if small else 1.0)
    scale = 2.0 if small else 1.0
    np.testing.assert_allclose(first.kernel.numpy(), drawn[0] / scale, rtol=1e-6)
    np.testing.assert_allclose(first.bias.numpy(), drawn[1] / scale, rtol=1e-6)
    act = np.tanh if small else (lambda v: np.maximum(v, 0.0))
    z = x @ first.kernel.numpy() + first.bias.numpy()
    h = act(z) if small else np.concatenate([np.sin(z[:, :5]), act(z[:, 5:])], axis=-1)
    later = act(h @ second.kernel.numpy() + second.bias.numpy())
    want = later @ net.out.kernel.numpy() + net.out.bias.numpy()
    np.testing.assert_allclose(net(x).numpy(), want, rtol=1e-5, atol=1e-5)
    assert AutoMLP.from_config(net.get_config()).small_data_sines is False
    old = {k: v for k, v in net.get_config().items() if k != "small_data_sines"}
    assert AutoMLP.from_config(old).sines_on is None  # sines on any number of rows, as before
