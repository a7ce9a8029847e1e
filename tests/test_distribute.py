"""tf.distribute: MirroredStrategy on two logical CPUs matches one device; multi-worker example.

Logical devices must be configured before TensorFlow initialises its devices, so each check runs
in a fresh subprocess.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

_MIRRORED = textwrap.dedent("""
    import json
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

    import keras
    import numpy as np
    import tfp_coupling as tc

    x = tc.data.two_moons(768, seed=0)
    val = tc.data.two_moons(256, seed=1)
    keras.utils.set_random_seed(0)
    init = tc.realnvp_flow(event_shape=[2], num_couplings=2, hidden_units=[16])
    init_weights = init.get_weights()
    start_nll = -float(np.mean(init.log_prob(val)))

    def train(strategy):
        with strategy.scope():
            model = tc.realnvp_flow(event_shape=[2], num_couplings=2, hidden_units=[16])
            model.set_weights(init_weights)
            # Plain SGD: unlike Adam it is not invariant to the gradient's scale, so a wrongly
            # reduced loss (summed instead of averaged over replicas) changes the result.
            model.compile(optimizer=keras.optimizers.SGD(0.05))
        history = model.fit(x, batch_size=128, epochs=2, shuffle=False, validation_data=val,
                            verbose=0).history
        ev = model.evaluate(val, batch_size=128, return_dict=True, verbose=0)
        return dict(replicas=strategy.num_replicas_in_sync, loss=history["loss"],
                    val_nll=history["val_nll"], eval_nll=ev["nll"],
                    nll=-float(np.mean(model.log_prob(val))),
                    weights=[w.tolist() for w in model.get_weights()])

    one = train(tf.distribute.get_strategy())
    two = train(tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))

    with tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]).scope():
        model = tc.realnvp_flow(event_shape=[2], num_couplings=2, hidden_units=[16])
        try:
            model.compile(optimizer="adam", jit_compile=True)
            xla_error = None
        except ValueError as error:
            xla_error = str(error)
    print(json.dumps(dict(start_nll=start_nll, one=one, two=two, xla_error=xla_error)))
""")


def _run(code: str, timeout: float) -> dict:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def mirrored() -> dict:
    return _run(_MIRRORED, timeout=300)


def test_mirrored_strategy_matches_one_device(mirrored):
    import numpy as np

    out = mirrored
    one, two = out["one"], out["two"]
    assert one["replicas"] == 1 and two["replicas"] == 2
    assert one["nll"] < out["start_nll"] - 0.05  # it trained
    np.testing.assert_allclose(two["loss"], one["loss"], rtol=1e-5)
    np.testing.assert_allclose(two["val_nll"], one["val_nll"], rtol=1e-5)
    assert two["nll"] == pytest.approx(one["nll"], abs=1e-5)
    assert two["eval_nll"] == pytest.approx(one["nll"], abs=1e-5)
    for a, b in zip(one["weights"], two["weights"], strict=True):
        np.testing.assert_allclose(np.array(b), np.array(a), atol=1e-5)


def test_xla_over_several_cpu_devices_is_refused_at_compile(mirrored):
    # TensorFlow fails such a step at its first batch with an error about resource devices.
    assert "jit_compile=True" in mirrored["xla_error"]
    assert "2 CPU devices" in mirrored["xla_error"]


@pytest.mark.slow  # 40-55 s on 2 shared cores: three TF processes and a gRPC ring
def test_multi_worker_example_two_local_workers(tmp_path):
    import keras
    import numpy as np

    import tfp_coupling as tc

    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    saved = tmp_path / "chief.keras"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "multi_worker.py"), "--epochs", "2",
         "--examples", "1024", "--couplings", "2", "--hidden", "16", "--learning-rate", "1e-2",
         "--save", str(saved),
         "--timeout", "240"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["workers"] == 2 and summary["spread"] <= 1e-5
    assert "2 replicas" in proc.stdout
    # The chief's model is the trained one: it loads and reproduces the reported test NLL.
    model = keras.models.load_model(saved)
    test = tc.data.two_moons(1024, seed=1)
    assert -float(np.mean(model.log_prob(test))) == pytest.approx(summary["nll"], abs=1e-5)
    assert summary["nll"] < summary["start_nll"] - 0.05  # it trained
