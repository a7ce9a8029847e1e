"""The image flow builders: multi-scale RealNVP and NICE on flattened images.

Small models on 8x8 images for the exact checks (the shared harness's ``check_flow`` in
float64), the real MNIST digits in ``../shared/data/mnist`` for a short fit.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf
from harness import affine_couplings, check_flow, randomize_weights
from shared_data import MNIST_IMAGES, needs_mnist
from without_package import PREAMBLE

import tfp_coupling as tc
from tfp_coupling.dequantization import flow_bits_per_dim as bits_per_dim
from tfp_coupling.plots import flow_sample_grid as sample_grid

LN2 = math.log(2.0)


def small_realnvp(shape=(8, 8, 1), dtype="float32", **kwargs):
    kwargs = {"num_scales": 2, "num_couplings_per_scale": 2, "num_final_couplings": 2,
              "hidden_channels": 4, "num_blocks": 1, **kwargs}
    return tc.realnvp_image_flow(shape, dtype=dtype, **kwargs)


def small_nice(shape=(8, 8, 1), dtype="float32", **kwargs):
    return tc.nice_image_flow(shape, hidden_units=kwargs.pop("hidden_units", [16]), dtype=dtype,
                              **kwargs)


def digits(n: int) -> np.ndarray:
    images = tc.data.read_idx(MNIST_IMAGES)
    return images[:n, :, :, None].astype("float32")


def test_realnvp_image_flow_check_flow_float64():
    model = small_realnvp(dtype="float64")
    # Scale 0.05: larger random ResNets push forward(z) into the saturated ends of the sigmoid,
    # where no float format can invert the logit to 1e-5 (|logit| > ~25 in float64).
    randomize_weights(model, seed=1, scale=0.05, trainable_only=True)
    check_flow(model, batch_shapes=((), (3,)))


# realnvp_image_flow's and realnvp_flat_image_flow's coupling arguments before they took the
# vector flow's (normalizing, clamp 2, shift bound 5).
BEFORE = {"normalizing": False, "log_scale_clamp": 5.0, "shift_clamp": None}


def test_realnvp_image_flow_before_its_coupling_defaults_check_flow_float64():
    """The couplings of before (latent -> data, clamp 5, unbounded shift) stay exact too."""
    model = small_realnvp(dtype="float64", **BEFORE)
    randomize_weights(model, seed=1, scale=0.05, trainable_only=True)
    check_flow(model, batch_shapes=((3,),))


@pytest.mark.parametrize("builder, kwargs", [
    (tc.realnvp_image_flow, {"num_scales": 2, "num_couplings_per_scale": 1,
                             "num_final_couplings": 1, "hidden_channels": 4, "num_blocks": 1}),
    (tc.realnvp_flat_image_flow, {"num_couplings": 2, "hidden_units": [8]}),
])
def test_realnvp_image_flows_take_the_vector_flows_couplings_and_old_files_keep_theirs(
        builder, kwargs):
    def forms(model) -> set:
        couplings = affine_couplings(model.bijector)
        assert len(couplings) == (3 if builder is tc.realnvp_image_flow else 2)
        return {(b.normalizing, b.log_scale_clamp, b.shift_clamp) for b in couplings}

    model = builder([8, 8, 1], **kwargs)
    assert forms(model) == {(True, 2.0, 5.0)}
    assert forms(builder([8, 8, 1], **kwargs, **BEFORE)) == {(False, 5.0, None)}
    # A config saved before the options existed (it records its clamp, 5) rebuilds the old flow.
    config = {k: v for k, v in model.get_config()["flow_config"].items()
              if k not in ("normalizing", "shift_clamp")}
    config["log_scale_clamp"] = 5.0
    old = type(model).from_config({"name": "old", "flow_config": config})
    assert forms(old) == {(False, 5.0, None)}


def test_nice_image_flow_check_flow_float64():
    model = small_nice(dtype="float64")
    randomize_weights(model, seed=2, scale=0.2)
    check_flow(model, batch_shapes=((), (3,)))


def test_realnvp_image_flow_structure_and_arguments():
    model = tc.realnvp_image_flow([28, 28, 1], num_scales=2, hidden_channels=4, num_blocks=1)
    names = [layer.name for layer in model.flow_layers]
    assert sum("resnet" in n for n in names) == 3 + 3 + 4  # the paper's stack for 2 scales
    assert sum("actnorm" in n for n in names) == 10
    assert isinstance(model, tc.ImageFlowModel) and model.dequantize
    assert model.report_bits_per_dim and model.event_shape == (28, 28, 1)
    with pytest.raises(ValueError, match="divisible by 2 \\*\\* \\(num_scales - 1\\) = 8"):
        tc.realnvp_image_flow([28, 28, 1], num_scales=4)
    with pytest.raises(ValueError, match=r"image_shape must be \(H, W, C\)"):
        tc.realnvp_image_flow([784])
    with pytest.raises(ValueError, match="num_final_couplings"):
        tc.realnvp_image_flow([8, 8, 1], num_final_couplings=0)


def test_factored_out_channels_skip_the_later_scales(rng):
    """Changing a pixel moves z everywhere; but the factored-out z does not see scale 1."""
    model = small_realnvp()
    randomize_weights(model, seed=3, scale=0.2, trainable_only=True)
    x = rng.integers(0, 256, size=(2, 8, 8, 1)).astype("float32")
    chain = model.bijector.bijectors
    k = next(i for i, b in enumerate(chain) if isinstance(b, tc.FactorOut))
    factor_out = chain[k]
    # The latent of the factored-out channels equals the scale-0 output without the inner flow.
    h = x
    for b in chain[:k]:
        h = b.inverse(h)
    z_squeezed = factor_out.inverse(h)
    np.testing.assert_array_equal(z_squeezed[..., 2:], h[..., 2:])
    assert np.abs(z_squeezed[..., :2] - h[..., :2]).max() > 1e-3  # the inner flow acts
    z = model.inverse(x)
    np.testing.assert_allclose(tc.Squeeze([8, 8, 1]).forward(z), z_squeezed, atol=1e-5)


def test_nice_image_flow_structure():
    model = small_nice(num_couplings=4, rescale=True)
    assert [type(b).__name__ for b in model.bijector.bijectors] == (
        ["LogitPreprocessing"] + ["AdditiveCoupling"] * 4 + ["Rescaling"])
    assert len(model.flow_layers) == 5
    # Masks alternate over the flattened index; consecutive couplings use complements.
    m0, m1 = (b.partition.keep.reshape(-1) for b in model.bijector.bijectors[1:3])
    assert m0[::2].all() and not m0[1::2].any() and (m1 == ~m0).all()
    assert len(small_nice(rescale=False).flow_layers) == 4
    assert tc.nice_image_flow.__defaults__[:2] == (4, (1000,) * 5)  # the paper's MNIST model


@pytest.mark.parametrize("builder", [small_realnvp, small_nice])
def test_one_fit_step_changes_every_weight(builder, rng):
    model = builder()
    randomize_weights(model, seed=4, scale=0.1, trainable_only=True)
    x = rng.integers(0, 256, size=(16, 8, 8, 1)).astype("float32")
    tc.initialize_actnorm(model, x)  # so that fit's own initialisation does not move weights
    before = [v.numpy().copy() for v in model.trainable_variables]
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    history = model.fit(x, batch_size=16, epochs=1, verbose=0)
    assert {"loss", "nll", "bits_per_dim"} <= set(history.history)
    unchanged = [v.path for v, b in zip(model.trainable_variables, before, strict=True)
                 if np.array_equal(v.numpy(), b)]
    assert unchanged == []


def test_first_fit_initialises_actnorm_and_later_fits_do_not(rng):
    model = small_realnvp()
    x = rng.integers(0, 256, size=(32, 8, 8, 1)).astype("float32")
    layers = tc.bijectors.actnorm_layers(model)
    model.compile(optimizer=keras.optimizers.Adam(0.0))  # lr 0: only the initialisation acts
    model.fit(x, batch_size=16, epochs=1, verbose=0)
    assert all(layer.is_initialized for layer in layers)
    biases = [layer.bias.numpy().copy() for layer in layers]
    assert all(np.abs(b).max() > 0 for b in biases)
    model.fit(x[::-1] * 0.5, batch_size=16, epochs=1, verbose=0)
    for layer, b in zip(layers, biases, strict=True):
        np.testing.assert_array_equal(layer.bias.numpy(), b)


@needs_mnist
@pytest.mark.parametrize("builder", ["realnvp", "nice"])
def test_tiny_fit_lowers_nll_on_real_digits(builder):
    keras.utils.set_random_seed(0)
    x = digits(96)
    if builder == "realnvp":
        model = tc.realnvp_image_flow([28, 28, 1], num_scales=2, num_couplings_per_scale=2,
                                      num_final_couplings=2, hidden_channels=8, num_blocks=1)
        lr = 3e-3
    else:
        model = tc.nice_image_flow([28, 28, 1], hidden_units=[64])
        lr = 3e-3
    tc.initialize_actnorm(model, x)
    before = bits_per_dim(model, x, seed=1)
    model.compile(optimizer=keras.optimizers.Adam(lr))
    model.fit(x, batch_size=32, epochs=4, verbose=0)
    after = bits_per_dim(model, x, seed=1)
    assert after < before - 0.3, (before, after)
    # evaluate dequantises integer pixels as fit does: its bits_per_dim is -mean log p(x + u) /
    # (D ln 2) for fresh noise u, so it matches bits_per_dim's seeded draw up to the spread over
    # noise draws, and a second evaluate (new noise) gives a different value.
    result = model.evaluate(x, batch_size=48, verbose=0, return_dict=True)
    again = model.evaluate(x, batch_size=48, verbose=0, return_dict=True)
    np.testing.assert_allclose(result["nll"], result["bits_per_dim"] * 784 * LN2, rtol=1e-5)
    assert abs(result["bits_per_dim"] - after) < 0.05, (result, after)
    assert result["bits_per_dim"] != again["bits_per_dim"]


def test_sampling_with_temperature_and_the_grid(tmp_path, rng):
    model = small_realnvp()
    randomize_weights(model, seed=5, scale=0.2, trainable_only=True)
    s = model.sample(6, temperature=0.7, seed=3)
    assert s.shape == (6, 8, 8, 1) and np.isfinite(s.numpy()).all()
    # Temperature scales the base draw: T * z with the same z.
    z = tf.random.stateless_normal([6, 8, 8, 1], seed=[3, 0])
    np.testing.assert_allclose(s, model.forward(0.7 * z), atol=1e-3)
    # Samples map into the pixel range widened by alpha: [-0.05 * 256 / 0.9, 0.95 * 256 / 0.9].
    lo, hi = -256 * 0.05 / 0.9, 256 * 0.95 / 0.9
    assert s.numpy().min() >= lo - 1e-3 and s.numpy().max() <= hi + 1e-3
    grid = sample_grid(model, str(tmp_path / "grid.png"), rows=2, cols=3, temperature=0.5)
    assert grid.shape == (16, 24, 1) and 0.0 <= grid.min() and grid.max() <= 1.0
    assert (tmp_path / "grid.png").stat().st_size > 0


def test_bits_per_dim_helper_matches_log_prob(rng):
    model = small_nice()
    randomize_weights(model, seed=6, scale=0.2)
    x = rng.integers(0, 256, size=(10, 8, 8, 1))
    noisy = tc.dequantization.dequantize(x, np.random.default_rng(7))
    want = -model.log_prob(noisy).numpy().mean() / (64 * LN2)
    np.testing.assert_allclose(bits_per_dim(model, x, batch_size=4, seed=7), want, rtol=1e-5)


@pytest.mark.parametrize("builder", [small_realnvp, small_nice])
def test_keras_save_and_load(builder, tmp_path, rng):
    model = builder()
    x = rng.integers(0, 256, size=(8, 8, 8, 1)).astype("float32")
    tc.initialize_actnorm(model, x)
    randomize_weights(model, seed=8, scale=0.1, trainable_only=True)
    path = tmp_path / "flow.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert type(loaded) is type(model) and loaded.flow_config == model.flow_config
    np.testing.assert_allclose(loaded.log_prob(x), model.log_prob(x), atol=1e-4)
    assert all(layer.is_initialized for layer in tc.bijectors.actnorm_layers(loaded))


_CHILD = PREAMBLE + textwrap.dedent("""
    import numpy as np
    import tensorflow as tf

    path, inputs, out = sys.argv[1:4]
    loaded = tf.saved_model.load(path)
    x = np.load(inputs)["x"]
    np.savez(out, log_prob=loaded.log_prob(x).numpy(), sample=loaded.sample(5, 0.7, 3).numpy())
    print(json.dumps(sorted(m for m in sys.modules if m.startswith("tfp_coupling"))))
""")


def test_exported_image_flow_works_without_the_package(tmp_path, rng):
    model = small_realnvp()
    x = rng.integers(0, 256, size=(6, 8, 8, 1)).astype("float32")
    tc.initialize_actnorm(model, x)
    randomize_weights(model, seed=9, scale=0.1, trainable_only=True)
    model.export(tmp_path / "image_flow")
    np.savez(tmp_path / "inputs.npz", x=x)
    (tmp_path / "child.py").write_text(_CHILD)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    proc = subprocess.run(
        [sys.executable, "-I", str(tmp_path / "child.py"), str(tmp_path / "image_flow"),
         str(tmp_path / "inputs.npz"), str(tmp_path / "out.npz")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []
    out = np.load(tmp_path / "out.npz")
    np.testing.assert_allclose(out["log_prob"], model.log_prob(x), atol=1e-3)
    np.testing.assert_allclose(out["sample"], model.sample(5, temperature=0.7, seed=3), atol=1e-3)
