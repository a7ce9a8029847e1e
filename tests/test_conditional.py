"""Conditional flows p(x | context): FlowModel, fit on pairs, saving, SavedModel export."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp
from without_package import PREAMBLE, run_child

import tfp_coupling as tc

tfd = tfp.distributions


def _labelled_moons(n: int, seed: int):
    x, label = tc.data.two_moons(n, seed=seed, return_labels=True)
    return x, label[:, None].astype("float32")


@pytest.fixture(scope="module")
def moons_pair():
    keras.utils.set_random_seed(3)
    x, c = _labelled_moons(1024, seed=0)
    model = tc.realnvp_flow([2], num_couplings=4, hidden_units=[32, 32], context_shape=[1])
    model.compile(optimizer=keras.optimizers.Adam(3e-3))
    model.fit(x, c, batch_size=128, epochs=4, verbose=0)
    return model, x, c


@pytest.mark.parametrize("builder", [tc.realnvp_flow, tc.nice_flow, tc.spline_flow],
                         ids=lambda b: b.__name__)
def test_conditional_builders_pass_the_flow_harness(builder):
    from harness import check_bijector, randomize_weights

    model = builder([3], num_couplings=2, hidden_units=[8], context_shape=[2], dtype="float64")
    randomize_weights(model.flow_layers, seed=1, scale=0.2)
    check_bijector(model.bijector, [3], context=np.array([0.3, -0.7]))
    x = np.random.default_rng(0).normal(size=(5, 3))
    c = np.random.default_rng(1).normal(size=(5, 2))
    z, ildj = tc.fused.inverse_and_log_det(model.bijector, tf.constant(x), 1, context=c)
    expected = tfd.Sample(tfd.Normal(np.float64(0), 1), [3]).log_prob(z) + ildj
    np.testing.assert_allclose(model.log_prob(x, c), expected, atol=1e-10)
    np.testing.assert_allclose(model.distribution.log_prob(x, bijector_kwargs={"context": c}),
                               expected, atol=1e-10)


def test_fit_on_pairs_learns_the_context(moons_pair):
    model = moons_pair[0]
    test_x, test_c = _labelled_moons(1024, seed=1)
    right = float(-np.mean(model.log_prob(test_x, test_c)))
    wrong = float(-np.mean(model.log_prob(test_x, 1.0 - test_c)))
    assert wrong > right + 1.0, (right, wrong)
    # Draws for each moon land on that moon: the upper moon has y > 0.5 - x / 2 mostly.
    upper = model.sample(500, context=[0.0], seed=1).numpy()
    lower = model.sample(500, context=[1.0], seed=1).numpy()
    assert upper[:, 1].mean() > lower[:, 1].mean() + 0.4


def test_fit_spellings_and_errors(moons_pair):
    model, x, c = moons_pair
    for history in (model.fit((x, c), batch_size=256, epochs=1, verbose=0),
                    model.fit(tf.data.Dataset.from_tensor_slices((x, c)).batch(256), epochs=1,
                              verbose=0),
                    model.fit(x, c, batch_size=256, epochs=1, verbose=0,
                              validation_data=(x[:256], c[:256]))):
        assert np.isfinite(history.history["loss"]).all()
    _, nll = model.evaluate(x, c, verbose=0)
    np.testing.assert_allclose(nll, -np.mean(model.log_prob(x, c)), rtol=1e-5)
    np.testing.assert_allclose(model((x[:4], c[:4])), model.log_prob(x[:4], c[:4]))
    with pytest.raises(ValueError, match=r"conditional.*pass a context"):
        model.log_prob(x[:4])
    with pytest.raises(ValueError, match="fit/evaluate need"):
        model.fit(x, batch_size=256, epochs=1, verbose=0)
    with pytest.raises(ValueError, match="NaN or Inf"):
        model.log_prob(x[:2], [[np.nan], [0.0]])
    with pytest.raises(ValueError, match=r"context has event shape \[2\]"):
        model.log_prob(x[:2], np.zeros((2, 2)))
    with pytest.raises(ValueError, match="not conditional"):
        tc.realnvp_flow([2], num_couplings=2, hidden_units=[4]).log_prob(x[:2], c[:2])


def test_save_and_reload(moons_pair, tmp_path):
    model, x, c = moons_pair
    model.save(tmp_path / "flow.keras")
    loaded = keras.models.load_model(tmp_path / "flow.keras")
    assert loaded.context_shape == (1,)
    np.testing.assert_allclose(loaded.log_prob(x[:8], c[:8]), model.log_prob(x[:8], c[:8]),
                               atol=1e-6)


_CHILD = PREAMBLE + textwrap.dedent("""
    import numpy as np
    import tensorflow as tf

    path, inputs, out = sys.argv[1:4]
    d = np.load(inputs)
    m = tf.saved_model.load(path)
    sig = m.signatures
    np.savez(out,
             log_prob=m.log_prob(d["x"], d["c"]).numpy(),
             sig_log_prob=sig["log_prob"](x=tf.constant(d["x"]),
                                          context=tf.constant(d["c"]))["output_0"].numpy(),
             forward=m.forward(d["z"], d["c"]).numpy(),
             inverse=m.inverse(d["x"], d["c"]).numpy(),
             sample=m.sample(d["c"], 0.8, 3).numpy(),
             sig_sample=sig["sample"](context=tf.constant(d["c"]))["output_0"].numpy())
    print(json.dumps(sorted(sig)))
""")


def test_export_with_context_loads_without_the_package(moons_pair, tmp_path):
    model, x, c = moons_pair
    model.export(tmp_path / "flow")
    x, c = x[:16], c[:16]
    z = np.random.default_rng(2).normal(size=(16, 2)).astype("float32")
    np.savez(tmp_path / "in.npz", x=x, c=c, z=z)
    proc = run_child(_CHILD, tmp_path, tmp_path / "flow", tmp_path / "in.npz",
                     tmp_path / "out.npz")
    assert {"log_prob", "sample", "forward", "inverse"} <= set(
        json.loads(proc.stdout.strip().splitlines()[-1]))
    out = np.load(tmp_path / "out.npz")
    want = model.log_prob(x, c).numpy()
    np.testing.assert_allclose(out["log_prob"], want, atol=1e-5)
    np.testing.assert_allclose(out["sig_log_prob"], want, atol=1e-5)
    np.testing.assert_allclose(out["forward"], model.forward(z, c), atol=1e-5)
    np.testing.assert_allclose(out["inverse"], model.inverse(x, c), atol=1e-5)
    # One draw per context row, the same draw as model.sample with that seed.
    np.testing.assert_allclose(out["sample"], model.sample(16, 0.8, 3, context=c), atol=1e-5)
    assert out["sig_sample"].shape == (16, 2)


def test_class_conditional_image_flow():
    from harness import check_bijector, randomize_weights

    model = tc.realnvp_image_flow([4, 4, 1], num_scales=2, num_couplings_per_scale=1,
                                  num_final_couplings=1, hidden_channels=4, num_blocks=1,
                                  context_shape=[3], dtype="float64")
    randomize_weights(model, seed=2, scale=0.05, trainable_only=True)
    one_hot = np.eye(3)[1]
    x = np.random.default_rng(0).uniform(1, 255, size=(2, 4, 4, 1))
    # Forward maps base points to pixels; the inverse direction needs pixels in (0, 256).
    check_bijector(model.bijector, [4, 4, 1], context=one_hot, batch_shapes=((), (3,)),
                   inverse_inputs=lambda shape, rng: rng.uniform(1, 255, size=shape))
    assert np.abs(model.log_prob(x, one_hot) - model.log_prob(x, np.eye(3)[2])).max() > 1e-4
    # fit on (images, one-hot classes): ActNorm initialised from the first rows and contexts.
    images = np.random.default_rng(1).integers(0, 256, size=(64, 4, 4, 1))
    classes = np.eye(3)[np.arange(64) % 3]
    model.compile(optimizer="adam")
    history = model.fit(images, classes, batch_size=32, epochs=1, verbose=0)
    assert np.isfinite(history.history["bits_per_dim"]).all()
    assert model.sample(3, context=one_hot, seed=0).shape == (3, 4, 4, 1)


def test_conditional_export_runs_in_saved_model_cli(moons_pair, tmp_path):
    from pathlib import Path

    model, _, _ = moons_pair
    model.export(tmp_path / "flow")
    cli = str(Path(sys.executable).parent / "saved_model_cli")
    x = np.array([[0.1, 0.2], [1.5, -0.4], [-1.0, 0.5]], np.float32)
    c = np.array([[0.0], [1.0], [1.0]], np.float32)
    run = subprocess.run(
        [cli, "run", "--dir", str(tmp_path / "flow"), "--tag_set", "serve", "--signature_def",
         "log_prob", "--input_exprs", f"x={x.tolist()};context={c.tolist()}",
         "--outdir", str(tmp_path / "out")],
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"), capture_output=True, text=True,
        timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    np.testing.assert_allclose(np.load(tmp_path / "out" / "output_0.npy"),
                               model.log_prob(x, c), atol=1e-5)
