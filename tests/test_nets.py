"""Conditioner networks: initialisation that lets a flow fit from its first step."""

from __future__ import annotations

import keras
import numpy as np

import tfp_coupling as tc


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
