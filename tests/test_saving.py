""".keras save/load with optimizer state, resume after an interrupted fit, intact checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfp_coupling as tc
from tfp_coupling.callbacks import NonFiniteLossError

BUILDERS = {
    "nice": lambda: tc.nice_flow(event_shape=[2], num_couplings=2, hidden_units=[16]),
    "realnvp": lambda: tc.realnvp_flow(event_shape=[2], num_couplings=2, hidden_units=[16]),
    "realnvp_lu": lambda: tc.realnvp_flow(event_shape=[2], num_couplings=2, hidden_units=[16],
                                          mixing="lu"),
    # A fade inside the data's range, so that a load that lost it would change log_prob.
    "realnvp_fade": lambda: tc.realnvp_flow(event_shape=[2], num_couplings=2, hidden_units=[16],
                                            fade_outside=1.0),
    # Dropout draws its masks from a seed generator: one more epoch after a load repeats them
    # only if its state is saved too.
    "realnvp_dropout": lambda: tc.realnvp_flow(event_shape=[2], num_couplings=2,
                                               hidden_units=[16], dropout=0.2),
}


def _weights(model: keras.Model) -> list[np.ndarray]:
    return [v.numpy() for v in model.trainable_variables]


@pytest.mark.parametrize("kind", sorted(BUILDERS))
def test_keras_round_trip_with_optimizer_state(kind, tmp_path):
    x = tc.data.two_moons(512, seed=0)
    model = BUILDERS[kind]()
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    model.fit(x, batch_size=128, epochs=2, shuffle=False, verbose=0)
    model.save(tmp_path / "flow.keras")
    loaded = keras.models.load_model(tmp_path / "flow.keras")

    assert type(loaded) is tc.FlowModel and loaded.get_config() == model.get_config()
    assert [type(b).__name__ for b in loaded.bijector.bijectors] == [
        type(b).__name__ for b in model.bijector.bijectors]
    assert len(loaded.flow_layers) == len(model.flow_layers)
    assert np.abs(model.log_prob(x) - model.base_distribution.log_prob(x)).max() > 1e-2
    np.testing.assert_array_equal(loaded.log_prob(x).numpy(), model.log_prob(x).numpy())
    np.testing.assert_array_equal(loaded.sample(5, seed=3).numpy(), model.sample(5, seed=3).numpy())
    # Optimizer state: same step count and moments, so one more epoch gives the same weights.
    assert int(loaded.optimizer.iterations) == int(model.optimizer.iterations) == 8
    for a, b in zip(model.optimizer.variables, loaded.optimizer.variables, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    model.fit(x, batch_size=128, epochs=1, shuffle=False, verbose=0)
    loaded.fit(x, batch_size=128, epochs=1, shuffle=False, verbose=0)
    for a, b in zip(_weights(model), _weights(loaded), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)


class _Interrupt(keras.callbacks.Callback):
    """Simulates a crash at the end of epoch ``at`` (after the epoch's backup was written)."""

    def __init__(self, at: int) -> None:
        super().__init__()
        self.at = at

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.at:
            raise KeyboardInterrupt(f"interrupted after epoch {epoch + 1}")


def _fresh_model(dropout: float = 0.0) -> tc.FlowModel:
    keras.utils.set_random_seed(7)  # the same initial weights each time
    model = tc.realnvp_flow(event_shape=[2], num_couplings=2, hidden_units=[16], dropout=dropout)
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    return model


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_backup_and_restore_resumes_an_interrupted_fit(tmp_path, dropout):
    """The resumed fit repeats the uninterrupted one; with dropout only if the masks' random
    state was restored too."""
    x = tc.data.two_moons(512, seed=0)
    fit = dict(batch_size=128, epochs=4, shuffle=False, verbose=0)

    reference = _fresh_model(dropout)
    ref_history = reference.fit(x, **fit).history

    backup = str(tmp_path / "backup")
    first = _fresh_model(dropout)
    with pytest.raises(KeyboardInterrupt):
        first.fit(x, callbacks=[keras.callbacks.BackupAndRestore(backup), _Interrupt(at=1)],
                  **fit)
    resumed = _fresh_model(dropout)  # a new process would start like this
    history = resumed.fit(x, callbacks=[keras.callbacks.BackupAndRestore(backup)], **fit).history

    assert len(history["loss"]) == 2  # epochs 3 and 4 only: epochs 1-2 were restored
    assert int(resumed.optimizer.iterations) == int(reference.optimizer.iterations) == 16
    np.testing.assert_allclose(history["loss"], ref_history["loss"][2:], rtol=1e-5)
    for a, b in zip(_weights(reference), _weights(resumed), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_nan_loss_does_not_overwrite_checkpoints(tmp_path):
    x = tc.data.two_moons(512, seed=0)
    ckpt = tmp_path / "best.keras"
    model = BUILDERS["realnvp"]()
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    model.fit(x, batch_size=128, epochs=1, verbose=0,
              callbacks=[keras.callbacks.ModelCheckpoint(ckpt)])
    saved = ckpt.read_bytes()
    good = model.log_prob(x[:16]).numpy()

    # One batch of extreme (finite) values sends the loss to inf in the second epoch.
    bad = x.copy()
    bad[300:310] = 1e30
    data = tf.data.Dataset.from_tensor_slices(bad).batch(128)
    with pytest.raises(NonFiniteLossError, match="batch index 2 of epoch 1"):
        model.fit(data, epochs=2, verbose=0, callbacks=[keras.callbacks.ModelCheckpoint(ckpt)])
    assert ckpt.read_bytes() == saved
    np.testing.assert_array_equal(keras.models.load_model(ckpt).log_prob(x[:16]).numpy(), good)


@pytest.mark.parametrize("name", ["realnvp", "nice"])
def test_keras_files_written_by_version_0_1_0_still_load(name):
    """Flows saved before the builders gained whitening and new defaults rebuild the layers
    they were saved with and give the same log-densities."""
    data = Path(__file__).parent / "data"
    saved = json.loads((data / "saved_v0.1.0.json").read_text())
    model = keras.models.load_model(data / f"{name}_v0.1.0.keras")
    x = np.asarray(saved["x"], np.float32)
    np.testing.assert_allclose(model.log_prob(x).numpy(), saved["log_prob"][name], rtol=1e-5)
    assert not any(isinstance(layer, tc.bijectors.TriLAffineParams)
                   for layer in model.flow_layers)


def test_realnvp_saved_before_the_shift_bound_rebuilds_unbounded():
    """A config without ``shift_clamp`` was written when the shift was not bounded."""
    model = tc.realnvp_flow([2], num_couplings=2, hidden_units=[8])
    config = model.get_config()

    def shift_clamps(config: dict) -> set:
        return {b.shift_clamp for b in tc.FlowModel.from_config(config).bijector.bijectors
                if isinstance(b, tc.AffineCoupling)}

    assert shift_clamps(config) == {5.0}
    old = {**config, "flow_config": {k: v for k, v in config["flow_config"].items()
                                     if k != "shift_clamp"}}
    assert shift_clamps(old) == {None}


def test_realnvp_saved_before_the_random_shift_start_rebuilds_at_the_identity():
    """A config without ``zero_init`` was written when every output layer started at zero."""
    config = tc.realnvp_flow([2], num_couplings=2, hidden_units=[8]).get_config()
    assert config["flow_config"]["zero_init"] is None  # decided by the data on the first fit

    def output_kernels(config: dict) -> list:
        model = tc.FlowModel.from_config(config)
        return [layer.out.kernel.numpy() for layer in model.flow_layers
                if isinstance(layer, tc.nets.MLP)]

    assert all(np.any(k) for k in output_kernels(config))
    old = {**config, "flow_config": {k: v for k, v in config["flow_config"].items()
                                     if k != "zero_init"}}
    assert not any(np.any(k) for k in output_kernels(old))


MAIN_4F3303E = Path(__file__).parent / "data" / "main_4f3303e"


@pytest.mark.parametrize("name", ["realnvp_image", "nice_image", "realnvp_whiten"])
def test_keras_files_written_before_the_package_layout_still_load(name):
    """``.keras`` files store the classes' registered names and the builder's name: both must
    survive moving the classes and builders between modules (files made by make_artifacts.py
    with the code of commit 4f3303e)."""
    saved = json.loads((MAIN_4F3303E / "saved_main.json").read_text())
    model = keras.models.load_model(MAIN_4F3303E / f"{name}_main.keras")
    x = np.asarray(saved["x_image" if "image" in name else "x_vector"], np.float32)
    np.testing.assert_allclose(model.log_prob(x).numpy(), saved["log_prob"][name], rtol=1e-5,
                               atol=1e-4)


def test_saved_model_written_before_the_package_layout_still_loads():
    saved = json.loads((MAIN_4F3303E / "saved_main.json").read_text())
    loaded = tf.saved_model.load(str(MAIN_4F3303E / "realnvp_whiten_savedmodel"))
    x = np.asarray(saved["x_vector"], np.float32)
    np.testing.assert_allclose(loaded.log_prob(x).numpy(), saved["log_prob"]["realnvp_whiten"],
                               rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(loaded.sample(3, 0.5, 7).numpy(), saved["sample_seed7"],
                               rtol=1e-5, atol=1e-5)
