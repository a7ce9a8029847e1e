"""Memory-saving training (``invertible_backprop``): the ordinary path's gradients, rebuilt.

Gradients are compared with the ordinary walk's in float64, on weights away from the identity
start, so that a reconstruction error of even 1e-9 shows; a deliberately wrong reconstruction is
checked to fail the same comparison.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from harness import randomize_weights
from test_bijectors import CountingConditioner

import tfp_coupling as tc
from tfp_coupling.composition import invertible_backprop

ROOT = Path(__file__).resolve().parents[1]
ATOL = 1e-9  # relative to the largest gradient entry; float64 round-off is ~1e-14 here


def _vector(builder: str, **kwargs):
    def make():
        return tc.get_builder(builder)([6], num_couplings=4, hidden_units=[8], dtype="float64",
                                       **kwargs)
    return make


def _image():
    # 2 scales: ActNorm before every coupling, squeeze, channel couplings and a factor-out.
    return tc.realnvp_image_flow([4, 4, 2], num_scales=2, num_couplings_per_scale=2,
                                 num_final_couplings=2, hidden_channels=4, num_blocks=1,
                                 dtype="float64")


FLOWS = {
    "realnvp_whitened": _vector("realnvp_flow", whiten=True),
    "nice_rescaled": _vector("nice_flow", rescale=True),
    "realnvp_conditional": _vector("realnvp_flow", context_shape=[2]),
    "realnvp_lu_mixing": _vector("realnvp_flow", mixing="lu"),
    "realnvp_image_multiscale": _image,
}


def _flow_and_data(name: str):
    """A float64 flow with data-initialised and then randomised weights, and a batch."""
    model = FLOWS[name]()
    rng = np.random.default_rng(1)
    if name.startswith("realnvp_image"):
        x = rng.integers(0, 256, (8, *model.event_shape)).astype("float64")
        x = x + rng.uniform(size=x.shape)  # dequantised, as in training
    else:
        x = rng.normal(size=(8, *model.event_shape)) @ np.diag([1.0, 2.0, 0.5, 1.0, 3.0, 1.0])
    context = rng.normal(size=(8, 2)) if model.is_conditional else None
    tc.initialize_from_data(model, x, context=context)  # ActNorm / TriLAffine from the batch
    # Away from the zero-initialised identity start; the data-set whitening and ActNorm
    # layers keep their values (the conditioners, data-initialised too, are randomised).
    randomize_weights([layer for layer in model.flow_layers
                       if not isinstance(layer, tc.bijectors.ActNormParams
                                         | tc.bijectors.TriLAffineParams)],
                      seed=2, scale=0.1 if name.startswith("realnvp_image") else 0.3,
                      trainable_only=True)
    return model, tf.constant(x), None if context is None else tf.constant(context)


def _gradients(model, x, context, saving: bool, regime: str) -> list[np.ndarray]:
    """Loss, gradients of the mean NLL w.r.t. every weight (and the context), one regime."""
    model.invertible_backprop = saving
    sources = list(model.trainable_variables)

    def loss_and_grads(x, context):
        with tf.GradientTape() as tape:
            if context is not None:
                tape.watch(context)
            loss = -tf.reduce_mean(model.log_prob(x, context))
        extra = [context] if context is not None else []
        return [loss, *tape.gradient(loss, [*sources, *extra])]

    if regime != "eager":
        loss_and_grads = tf.function(loss_and_grads, jit_compile=regime == "xla")
    return [np.asarray(g) for g in loss_and_grads(x, context)]


def _max_error(model, x, context, regime: str) -> tuple[float, float]:
    saving = _gradients(model, x, context, True, regime)
    ordinary = _gradients(model, x, context, False, regime)
    assert len(saving) == len(ordinary) > 2
    assert all(g is not None for g in saving)
    scale = max(1.0, max(float(np.abs(g).max()) for g in ordinary))
    error = max(float(np.abs(a - b).max()) for a, b in zip(saving, ordinary, strict=True))
    return error / scale, scale


@pytest.mark.parametrize("regime", ["eager", "graph"])
@pytest.mark.parametrize("name", list(FLOWS))
def test_gradients_equal_the_ordinary_path(name: str, regime: str):
    model, x, context = _flow_and_data(name)
    error, scale = _max_error(model, x, context, regime)
    assert scale > 1e-3, "gradients vanish: the comparison would prove nothing"
    assert error <= ATOL, f"{name} ({regime}): relative gradient error {error:.1e}"


@pytest.mark.parametrize("name", ["realnvp_whitened", "realnvp_image_multiscale"])
def test_gradients_equal_the_ordinary_path_under_xla(name: str):
    model, x, context = _flow_and_data(name)
    error, _ = _max_error(model, x, context, "xla")
    assert error <= ATOL, f"{name} (XLA): relative gradient error {error:.1e}"


@pytest.mark.parametrize("step", ["actnorm", "coupling"])
def test_a_wrong_reconstruction_is_caught(monkeypatch, step: str):
    """The comparison above can fail: one rebuilt input off by 1e-6 breaks it (the correct
    path is at about 1e-14)."""
    model, x, context = _flow_and_data("realnvp_image_multiscale")
    if step == "actnorm":
        undo = invertible_backprop._Link.undo

        def slightly_wrong(self, outs, context):
            ins = undo(self, outs, context)
            return [ins[0] + 1e-6] if isinstance(self.bijector, tc.ActNorm) else ins

        monkeypatch.setattr(invertible_backprop._Link, "undo", slightly_wrong)
    else:
        rebuild = invertible_backprop._Halves.rebuild

        def slightly_wrong(self, outs, context, tape):
            return rebuild(self, [outs[0] + 1e-6, *outs[1:]], context, tape)

        monkeypatch.setattr(invertible_backprop._Halves, "rebuild", slightly_wrong)
    error, _ = _max_error(model, x, context, "graph")
    assert error > ATOL, f"a wrong reconstruction went unnoticed (error {error:.1e})"


def test_log_prob_is_unchanged():
    model, x, _ = _flow_and_data("realnvp_image_multiscale")
    ordinary = model.log_prob(x).numpy()
    model.invertible_backprop = True
    np.testing.assert_allclose(model.log_prob(x).numpy(), ordinary, rtol=0, atol=1e-12)


def test_fit_trains_as_the_ordinary_mode():
    """Same start, same batches: memory-saving fit lowers the loss along the ordinary path."""
    x = tc.data.two_moons(512, seed=0)
    runs = {}
    for saving in (False, True):
        keras.utils.set_random_seed(0)
        # ReLU from the random start: on 512 rows the default's tanh units at the identity
        # move too little in 12 steps for the loss check below.
        model = tc.realnvp_flow([2], num_couplings=4, hidden_units=[16], activation="relu",
                                zero_init=False)
        model.compile(optimizer=keras.optimizers.Adam(1e-2), invertible_backprop=saving)
        assert model.invertible_backprop is saving
        history = model.fit(x, batch_size=128, epochs=3, shuffle=False, verbose=0).history
        runs[saving] = history["loss"], model.get_weights()
    loss, weights = runs[True]
    assert loss[-1] < loss[0] - 0.05, loss
    np.testing.assert_allclose(loss, runs[False][0], rtol=1e-4)
    for a, b in zip(weights, runs[False][1], strict=True):
        np.testing.assert_allclose(a, b, atol=1e-4)


@pytest.mark.slow  # ~20 s: an XLA compile of an image flow's train step
def test_image_fit_with_xla_and_dequantisation():
    keras.utils.set_random_seed(0)
    model = tc.realnvp_image_flow([8, 8, 1], num_scales=2, num_couplings_per_scale=1,
                                  num_final_couplings=2, hidden_channels=8, num_blocks=1)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), jit_compile=True,
                  invertible_backprop=True)
    x = np.random.default_rng(0).integers(0, 128, (64, 8, 8, 1))
    history = model.fit(x, batch_size=32, epochs=4, verbose=0).history
    assert np.isfinite(history["loss"]).all() and history["loss"][-1] < history["loss"][0]


def test_mixed_float16_matches_the_ordinary_mode():
    """Conditioners in float16, log-dets and the rebuilt inputs in float32."""
    x = np.random.default_rng(0).integers(0, 256, (16, 8, 8, 1)).astype("float32")
    policy = keras.mixed_precision.dtype_policy()
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        runs = {}
        for saving in (False, True):
            keras.utils.set_random_seed(0)
            model = tc.realnvp_image_flow([8, 8, 1], num_scales=2, num_couplings_per_scale=1,
                                          num_final_couplings=2, hidden_channels=8, num_blocks=1)
            model.compile(optimizer=keras.optimizers.Adam(1e-3), invertible_backprop=saving)
            history = model.fit(x, batch_size=8, epochs=2, shuffle=False, verbose=0).history
            assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
            assert model.log_prob(x[:2]).dtype == tf.float32
            runs[saving] = history["loss"], model.get_weights()
    finally:
        keras.mixed_precision.set_global_policy(policy)
    np.testing.assert_allclose(runs[True][0], runs[False][0], rtol=1e-4)
    for a, b in zip(runs[True][1], runs[False][1], strict=True):
        np.testing.assert_allclose(a, b, atol=1e-3)


def test_mode_survives_save_and_load(tmp_path):
    model = tc.realnvp_flow([2], num_couplings=2, hidden_units=[8])
    model.compile(optimizer="adam", invertible_backprop=True)
    config = model.get_config()
    assert config["invertible_backprop"] is True
    assert tc.FlowModel.from_config(json.loads(json.dumps(config))).invertible_backprop
    path = tmp_path / "flow.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert loaded.invertible_backprop is True
    x = tc.data.two_moons(8, seed=0)
    np.testing.assert_allclose(loaded.log_prob(x), model.log_prob(x), atol=1e-6)
    # The default stays off, and configs written before the option load with it off.
    plain = tc.realnvp_flow([2], num_couplings=2, hidden_units=[8])
    assert plain.invertible_backprop is False
    old = {k: v for k, v in plain.get_config().items() if k != "invertible_backprop"}
    assert tc.FlowModel.from_config(old).invertible_backprop is False


def test_ordinary_tfp_links_are_walked_between_rebuilt_runs():
    """A plain TFP bijector (not rebuilt) splits the run; gradients still match."""
    import tensorflow_probability as tfp

    tfb = tfp.bijectors
    keras.utils.set_random_seed(0)
    inner = tc.realnvp_flow([4], num_couplings=2, hidden_units=[8], whiten=False,
                            dtype="float64")
    randomize_weights(inner.flow_layers, seed=3, trainable_only=True)
    links = list(inner.bijector.bijectors)
    chain = tc.Chain([links[0], tfb.Shift(tf.constant([0.5, -1.0, 0.0, 2.0], tf.float64)),
                      tfb.Scale(tf.constant(1.5, tf.float64)), links[1]])
    x = tf.constant(np.random.default_rng(0).normal(size=(5, 4)))
    variables = inner.trainable_variables

    def grads(walk):
        with tf.GradientTape() as tape:
            z, ildj = walk(chain, x, 1)
            loss = tf.reduce_sum(z ** 2) - tf.reduce_sum(ildj)
        return [loss, *tape.gradient(loss, variables)]

    saved = grads(invertible_backprop.inverse_and_log_det)
    ordinary = grads(tc.fused.inverse_and_log_det)
    for a, b in zip(saved, ordinary, strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-10)


@pytest.mark.parametrize("num", [1, 3], ids=["lone coupling", "chain of 3"])
def test_backward_pass_adds_one_conditioner_call_per_coupling(num: int):
    """Rebuilding a coupling's input and re-running it share one conditioner call, for a lone
    coupling as for a chained one: 2 calls per coupling for a gradient, not 3."""
    from tfp_coupling import masks, nets

    keras.utils.set_random_seed(0)
    couplings = [tc.AffineCoupling(masks.half_mask(4, first=i % 2 == 0), CountingConditioner(
        nets.MLP([8], output_shape=[4], zero_init=False, dtype="float64"), dtype="float64"),
        dtype="float64") for i in range(num)]
    bijector = couplings[0] if num == 1 else tc.Chain(couplings)
    x = tf.constant(np.random.default_rng(0).normal(size=(5, 4)))
    variables = [v for c in couplings for v in c.trainable_variables]
    assert variables

    def grads(walk):
        with tf.GradientTape() as tape:
            z, ildj = walk(bijector, x, 1)
            loss = tf.reduce_sum(z ** 2) - tf.reduce_sum(ildj)
        return [loss, *tape.gradient(loss, variables)]

    ordinary = grads(tc.fused.inverse_and_log_det)
    for c in couplings:
        c.conditioner.calls = 0
    saved = grads(invertible_backprop.inverse_and_log_det)
    assert [c.conditioner.calls for c in couplings] == [2] * num
    for a, b in zip(saved, ordinary, strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-10)


_MIRRORED = textwrap.dedent("""
    import json
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

    import keras
    import numpy as np
    import tfp_coupling as tc

    x = tc.data.two_moons(512, seed=0)
    keras.utils.set_random_seed(0)
    start = tc.realnvp_flow(event_shape=[2], num_couplings=3, hidden_units=[16]).get_weights()

    def train(strategy, saving):
        with strategy.scope():
            model = tc.realnvp_flow(event_shape=[2], num_couplings=3, hidden_units=[16])
            model.set_weights(start)
            model.compile(optimizer=keras.optimizers.SGD(0.05), invertible_backprop=saving)
        loss = model.fit(x, batch_size=128, epochs=2, shuffle=False, verbose=0).history["loss"]
        return dict(loss=loss, weights=[w.tolist() for w in model.get_weights()])

    one = train(tf.distribute.get_strategy(), False)
    two = train(tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]), True)
    print(json.dumps(dict(one=one, two=two)))
""")


def test_mirrored_strategy_matches_ordinary_one_device():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run([sys.executable, "-c", _MIRRORED], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    np.testing.assert_allclose(out["two"]["loss"], out["one"]["loss"], rtol=1e-5)
    for a, b in zip(out["one"]["weights"], out["two"]["weights"], strict=True):
        np.testing.assert_allclose(np.array(b), np.array(a), atol=1e-5)
