"""Training: nll/bits_per_dim metrics, XLA, mixed precision, non-finite guard, bad input."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfp_coupling as tc
from tfp_coupling.callbacks import NonFiniteLossError, StopOnNonFiniteLoss


def _flow(**kwargs) -> tc.FlowModel:
    """A small RealNVP without the data-initialised whitening: these tests are about training
    mechanics, from the identity start."""
    return tc.realnvp_flow(event_shape=[2], num_couplings=2, hidden_units=[16], whiten=False,
                           **kwargs)


@pytest.fixture(scope="module")
def moons():
    return tc.data.two_moons(512, seed=0), tc.data.two_moons(256, seed=1)


# -- batches ---------------------------------------------------------------------------------


def _batch_orders(fit_kwargs: dict, epochs: int = 4) -> np.ndarray:
    """The first row's id in every batch, per epoch, of a seeded ``fit`` on arrays."""
    keras.utils.set_random_seed(0)
    model = _flow()
    x = np.stack([np.arange(12.0), np.zeros(12)], 1).astype("float32")

    def first_ids(data):  # replaces the training step: reports the batch, trains nothing
        batch = keras.utils.unpack_x_y_sample_weight(data)[0]
        return {"loss": 0.0, "first": batch[0, 0]}

    model.train_step = first_ids
    seen: list[float] = []
    record = keras.callbacks.LambdaCallback(
        on_train_batch_end=lambda batch, logs: seen.append(float(logs["first"])))
    model.compile(optimizer="sgd")
    model.fit(x, batch_size=4, epochs=epochs, verbose=0, callbacks=[record], **fit_kwargs)
    return np.asarray(seen).reshape(epochs, -1)


def test_seeded_fit_on_arrays_shuffles_every_epoch_anew():
    """Keras' own shuffle of arrays repeats one order in every epoch once a global seed is set
    (measured: [6, 2, 10] four times); ``FlowModel.fit`` draws a new one per epoch, and a rerun
    with the same seed draws the same ones."""
    orders = _batch_orders({})
    assert len({tuple(o) for o in orders}) > 1, orders
    np.testing.assert_array_equal(orders, _batch_orders({}))  # reproducible
    assert len({tuple(o) for o in _batch_orders({"shuffle": False})}) == 1  # still honoured


def test_reshuffled_arrays_keep_validation_split_context_and_weights():
    from tfp_coupling.model.keras_workarounds import reshuffling_dataset

    x = np.arange(20.0).reshape(10, 2)
    context, weight = np.arange(10) * 10, np.ones(10)
    batches, validation = reshuffling_dataset(x, context, weight, 3, validation_split=0.2)
    rows = [tuple(t.numpy() for t in b) for b in batches]
    assert [len(r[0]) for r in rows] == [3, 3, 2]
    xs = np.concatenate([r[0] for r in rows])
    assert sorted(xs[:, 0]) == list(np.arange(0.0, 16.0, 2.0))  # every training row once
    np.testing.assert_array_equal(np.concatenate([r[1] for r in rows]), xs[:, 0] * 5)
    assert xs.dtype == np.float32  # as Keras casts float arrays to floatx
    np.testing.assert_array_equal(validation[0], x[8:])  # the last rows, as Keras takes them
    assert reshuffling_dataset(x, None, weight, 3, 0.0) is None  # a weight without y: Keras'


# -- metrics ---------------------------------------------------------------------------------


def test_fit_and_evaluate_report_nll_and_bits_per_dim(moons):
    train, val = moons
    model = _flow()
    model.report_bits_per_dim = True
    model.bits_per_dim_tracker = keras.metrics.Mean(name="bits_per_dim")
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    history = model.fit(train, batch_size=128, epochs=2, validation_data=val, verbose=0).history
    assert set(history) == {"loss", "nll", "bits_per_dim", "val_loss", "val_nll",
                            "val_bits_per_dim"}
    np.testing.assert_allclose(history["nll"], history["loss"], rtol=1e-6)
    np.testing.assert_allclose(history["bits_per_dim"],
                               np.array(history["nll"]) / (2 * math.log(2)), rtol=1e-5)
    assert history["nll"][1] < history["nll"][0]

    # evaluate == -mean(log_prob) over the whole set, whatever the batching (100 ∤ 256)
    want = -float(np.mean(model.log_prob(val).numpy().astype(np.float64)))
    got = model.evaluate(val, batch_size=100, return_dict=True, verbose=0)
    assert set(got) == {"loss", "nll", "bits_per_dim"}
    assert got["nll"] == pytest.approx(want, abs=1e-5)
    assert got["loss"] == pytest.approx(want, abs=1e-5)
    assert got["bits_per_dim"] == pytest.approx(want / (2 * math.log(2)), abs=1e-5)
    # the last epoch's validation figures were computed on the same model
    assert history["val_nll"][-1] == pytest.approx(want, abs=1e-5)
    # a tf.data pipeline gives the same
    ds = tf.data.Dataset.from_tensor_slices(val).batch(64)
    assert model.evaluate(ds, return_dict=True, verbose=0)["nll"] == pytest.approx(want, abs=1e-5)


def test_bits_per_dim_flag_from_the_constructor():
    model = tc.FlowModel(tc.Rescaling([3]), [3], report_bits_per_dim=True)
    model.compile(optimizer="sgd")
    x = np.random.default_rng(0).normal(size=(64, 3)).astype("float32")
    got = model.evaluate(x, return_dict=True, verbose=0)
    want = -float(np.mean(model.log_prob(x)))
    assert got["nll"] == pytest.approx(want, abs=1e-5)
    assert got["bits_per_dim"] == pytest.approx(want / (3 * math.log(2)), abs=1e-5)
    assert "bits_per_dim" not in _flow().metrics_names


# -- XLA --------------------------------------------------------------------------------------


def test_jit_compile_trains_like_the_graph_step(moons):
    train, _ = moons
    losses = {}
    for jit in (False, True):
        keras.utils.set_random_seed(3)
        model = _flow()
        model.compile(optimizer=keras.optimizers.Adam(1e-2), jit_compile=jit)
        assert model.jit_compile is jit
        losses[jit] = model.fit(train, batch_size=128, epochs=2, shuffle=False,
                                verbose=0).history["loss"]
    assert losses[True][-1] < losses[True][0] - 0.05
    np.testing.assert_allclose(losses[True], losses[False], rtol=1e-4)


# -- mixed precision --------------------------------------------------------------------------


@pytest.fixture(params=["mixed_float16", "mixed_bfloat16"])
def mixed_policy(request):
    keras.config.set_dtype_policy(request.param)
    yield request.param
    keras.config.set_dtype_policy("float32")


def test_mixed_precision_trains_with_float32_log_densities(mixed_policy, moons):
    train, _ = moons
    model = _flow()
    compute = "float16" if mixed_policy == "mixed_float16" else "bfloat16"
    assert all(layer.compute_dtype == compute for layer in model.flow_layers)
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer) == (
        compute == "float16")
    history = model.fit(train, batch_size=128, epochs=2, verbose=0).history
    assert np.isfinite(history["loss"]).all()
    assert history["loss"][-1] < history["loss"][0] - 0.05
    z, ildj = tc.fused.inverse_and_log_det(model.bijector, tf.constant(train[:8]), 1)
    assert z.dtype == ildj.dtype == model.log_prob(train[:8]).dtype == tf.float32
    assert np.isfinite(model.log_prob(train).numpy()).all()


# -- non-finite loss --------------------------------------------------------------------------


def _data_with_extreme_batch(x: np.ndarray, batch: int, batch_size: int) -> tf.data.Dataset:
    """Finite data whose batch ``batch`` holds 1e30 values: its log_prob is -inf."""
    x = x.copy()
    x[batch * batch_size + 3] = 1e30
    return tf.data.Dataset.from_tensor_slices(x).batch(batch_size)


@pytest.mark.parametrize("jit", [False, True])
def test_non_finite_loss_stops_naming_the_batch(moons, jit):
    train, _ = moons
    model = _flow()
    model.compile(optimizer=keras.optimizers.Adam(1e-2), jit_compile=jit)
    with pytest.raises(NonFiniteLossError, match=r"batch index 2 of epoch 1\b"):
        model.fit(_data_with_extreme_batch(train, 2, 64), epochs=2, verbose=0)


def test_stop_without_raising(moons):
    train, _ = moons
    model = _flow()
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    guard = StopOnNonFiniteLoss(raise_error=False)
    history = model.fit(_data_with_extreme_batch(train, 1, 64), epochs=3, callbacks=[guard],
                        verbose=0).history
    assert len(history["loss"]) == 1  # stopped in the first epoch
    assert "batch index 1 of epoch 1" in guard.message


# -- bad input --------------------------------------------------------------------------------


def test_wrong_event_shape_is_rejected_up_front(moons):
    train, _ = moons
    model = _flow()
    model.compile(optimizer="adam")
    with pytest.raises(ValueError, match=r"shape \[512, 3\]; expected \[batch, 2\]"):
        model.fit(np.zeros((512, 3), "float32"), verbose=0)
    with pytest.raises(ValueError, match=r"validation_data has shape \[8, 2, 1\]"):
        model.fit(train, validation_data=np.zeros((8, 2, 1), "float32"), verbose=0)
    with pytest.raises(ValueError, match=r"batches of shape \[None, 4\]"):
        model.evaluate(tf.data.Dataset.from_tensor_slices(np.zeros((8, 4), "float32")).batch(2))
    with pytest.raises(ValueError, match=r"not batches: call dataset.batch"):
        model.fit(tf.data.Dataset.from_tensor_slices(train), verbose=0)
    with pytest.raises(ValueError, match=r"event shape \[2\]"):
        model.log_prob(np.zeros((4, 5), "float32"))
    with pytest.raises(TypeError, match="numbers"):
        model.fit(np.array([["a", "b"]]), verbose=0)
    assert int(model.optimizer.iterations) == 0  # nothing trained


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_or_inf_in_arrays_is_rejected_up_front(moons, bad):
    train, _ = moons
    model = _flow()
    model.compile(optimizer="adam")
    x = train.copy()
    x[37, 1] = bad
    with pytest.raises(ValueError, match=r"NaN or Inf values in 1 example\(s\), first at index 37"):
        model.fit(x, verbose=0)
    with pytest.raises(ValueError, match=r"NaN or Inf"):
        model.evaluate(x, verbose=0)
    with pytest.raises(ValueError, match=r"NaN or Inf value\(s\), first at index \[37, 1\]"):
        model.log_prob(x)
    with pytest.raises(ValueError, match=r"NaN or Inf"):
        model.log_prob(tf.constant(x))


def test_nan_in_a_dataset_names_the_batch(moons):
    train, val = moons
    # No layer set from data: fit's first pass over the data (which would already refuse
    # the NaN, naming its row) does not run, so the NaN is met in training.
    model = _flow(activation="relu", zero_init=True)
    model.compile(optimizer="adam")
    x = train.copy()
    x[200] = np.nan
    ds = tf.data.Dataset.from_tensor_slices(x).batch(64)
    before = [v.numpy() for v in model.trainable_variables]
    with pytest.raises(ValueError, match=r"training batch index 3 of epoch 1 contains NaN or Inf"):
        model.fit(ds, verbose=0)
    assert int(model.optimizer.iterations) == 3  # batches 0-2 trained, batch 3 not applied
    assert all(np.isfinite(v.numpy()).all() for v in model.trainable_variables)
    assert any(np.abs(a - v.numpy()).max() > 0 for a, v in zip(
        before, model.trainable_variables, strict=True))
    with pytest.raises(ValueError, match=r"evaluation batch index 3 contains NaN or Inf"):
        model.evaluate(ds, verbose=0)
    v = val.copy()
    v[70] = np.inf
    val_ds = tf.data.Dataset.from_tensor_slices(v).batch(64)
    with pytest.raises(ValueError, match=r"validation batch index 1 of epoch 1 contains NaN"):
        model.fit(train, batch_size=128, validation_data=val_ds, verbose=0)


# -- best validation epoch --------------------------------------------------------------------


def test_best_weights_checkpoint_keeps_the_best_epoch_and_stops_after_patience(tmp_path):
    """Fed a validation curve 3, 2, 2.5, 2.6: saves after epoch 2 only, stops after epoch 4
    (two epochs without improvement), and a new callback on the same file resumes that state."""
    model = _flow()
    model.compile(optimizer="adam")
    path = tmp_path / "best.weights.h5"
    best = tc.callbacks.BestWeightsCheckpoint(path, patience=2)
    best.set_model(model)
    saved = {}
    for epoch, value in enumerate([3.0, 2.0, 2.5, 2.6]):
        for v in model.trainable_variables:  # a different model every epoch
            v.assign(v + 0.01)
        best.on_epoch_end(epoch, {"val_nll": value})
        if epoch == 1:
            saved = [w.copy() for w in model.get_weights()]
        assert model.stop_training is (epoch == 3), epoch
    assert (best.best_epoch, best.best_value) == (2, 2.0)
    model.load_weights(path)
    for got, want in zip(model.get_weights(), saved, strict=True):
        np.testing.assert_array_equal(got, want)
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    resumed = tc.callbacks.BestWeightsCheckpoint(path, patience=2)
    assert (resumed.best_epoch, resumed.best_value) == (2, 2.0)
    with pytest.raises(KeyError, match="validation_data"):
        resumed.on_epoch_end(0, {"loss": 1.0})
    with pytest.raises(ValueError, match=r"\.weights\.h5"):
        tc.callbacks.BestWeightsCheckpoint(tmp_path / "best.h5")


# -- the best epoch or the start --------------------------------------------------------------


def test_best_or_start_keeps_the_start_unless_the_gain_beats_its_standard_error():
    """Epochs scored on the same 40 rows. Gains of 0.02 and 0.04 nats under a row-to-row spread
    of 0.5 (standard error about 0.08): the start is kept, though epoch 2 is the best. A gain
    of 0.3 with the same spread: the best epoch is kept. k=0: the best epoch whatever the
    noise. A best epoch that is the start stays the start."""
    rng = np.random.default_rng(0)
    start = rng.normal(2.0, 1.0, 40)
    noise = rng.normal(0.0, 1.0, (3, 40))
    noise -= noise.mean(1, keepdims=True)  # each epoch's mean gain is exactly the one written

    def run(gains, k=1.0):
        rule = tc.callbacks.BestOrStart(np.zeros((40, 2), "float32"), k=k)
        for epoch, gain in enumerate(gains):
            rule.observe(epoch, start - gain + (0.5 * noise[epoch - 1] if epoch else 0.0),
                         lambda e=epoch: f"weights {e}")
        return rule.best_epoch, rule.choose(), rule.chosen_epoch

    assert run([0.0, 0.02, 0.04]) == (2, "weights 0", 0)
    assert run([0.0, 0.02, 0.04], k=0.0) == (2, "weights 2", 2)
    assert run([0.0, 0.3, 0.1]) == (1, "weights 1", 1)
    assert run([0.0, -0.2, -0.1]) == (0, "weights 0", 0)
    empty = tc.callbacks.BestOrStart(np.zeros((2, 2), "float32"))
    assert empty.choose() is None
    # The test itself: a constant gain has no noise; a start with an infinite row always loses.
    assert tc.callbacks.gain_beats_noise(start, start - 0.001)
    assert not tc.callbacks.gain_beats_noise(start, start)
    assert tc.callbacks.gain_beats_noise(np.append(start, np.inf), np.append(start, 50.0))
    with pytest.raises(ValueError, match="same rows"):
        tc.callbacks.gain_beats_noise(start, start[:-1])


def test_best_or_start_restores_the_chosen_epoch_in_fit(moons):
    """In ``fit`` the rule restores the weights of the epoch it chose. The last epoch's weights
    are spoilt, so the best epoch is an earlier one and restoring must happen: on two moons,
    far from the Gaussian start, that best epoch; with a gain it can never beat (huge ``k``),
    the start. The model's validation NLLs after ``fit`` are the ones it had at that epoch."""
    train, val = moons
    epochs = 5

    class RecordAndSpoil(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.seen = [-np.asarray(self.model.log_prob(val), np.float64)]

        def on_epoch_end(self, epoch, logs=None):
            if epoch == epochs - 1:  # the last epoch ends far from the data
                for v in self.model.trainable_variables:
                    v.assign(v + 0.5)
            self.seen.append(-np.asarray(self.model.log_prob(val), np.float64))

    for k, chosen in ((1.0, "best"), (1e9, "start")):
        keras.utils.set_random_seed(0)
        model = _flow()
        model.compile(optimizer=keras.optimizers.Adam(1e-2))
        record, rule = RecordAndSpoil(), tc.callbacks.BestOrStart(val[:64], k=k)
        model.fit(train, batch_size=128, epochs=epochs, verbose=0, callbacks=[record, rule])
        assert 0 < rule.best_epoch < epochs
        assert rule.chosen_epoch == (rule.best_epoch if chosen == "best" else 0)
        assert record.seen[epochs].mean() > record.seen[rule.best_epoch].mean()
        np.testing.assert_allclose(-np.asarray(model.log_prob(val), np.float64),
                                   record.seen[rule.chosen_epoch], rtol=0, atol=1e-5)


def test_best_or_start_stops_after_patience(moons):
    """At learning rate 0 no epoch beats the start: ``patience=2`` stops after two epochs and
    keeps the start."""
    model = _flow()
    model.compile(optimizer=keras.optimizers.Adam(0.0))
    rule = tc.callbacks.BestOrStart(moons[1][:64], patience=2)
    history = model.fit(moons[0], batch_size=128, epochs=10, verbose=0, callbacks=[rule])
    assert len(history.history["nll"]) == 2
    assert rule.best_epoch == rule.chosen_epoch == 0


def test_best_or_start_with_a_context_and_bad_arguments():
    model = tc.realnvp_flow([2], num_couplings=2, hidden_units=[8], context_shape=[1])
    model.compile(optimizer="adam")
    x, c = tc.data.two_moons(256, seed=0), np.zeros((256, 1), "float32")
    rule = tc.callbacks.BestOrStart((x[:32], c[:32]), batch_size=10)
    model.fit(x, c, epochs=1, verbose=0, callbacks=[rule])
    assert rule.chosen_epoch in (0, 1)
    np.testing.assert_allclose(rule._row_nll(), -np.asarray(model.log_prob(x[:32], c[:32])),
                               rtol=1e-6)
    with pytest.raises(ValueError, match="k must be"):
        tc.callbacks.BestOrStart(x, k=-1)
    with pytest.raises(ValueError, match="patience"):
        tc.callbacks.BestOrStart(x, patience=0)
    with pytest.raises(ValueError, match="at least 2 validation rows"):
        tc.callbacks.BestOrStart(x[:1])
    with pytest.raises(ValueError, match="pair"):
        tc.callbacks.BestOrStart((x, c, c))
