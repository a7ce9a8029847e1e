"""SavedModel export: loads without tfp_coupling, signatures for saved_model_cli, atomic writes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from without_package import PREAMBLE

import tfp_coupling as tc

VENV_BIN = Path(sys.executable).parent
SIGNATURES = ("log_prob", "sample", "sample_with_options", "forward", "inverse")


def _perturb(model: keras.Model, seed: int, scale: float = 0.3) -> None:
    """Moves every weight away from its (identity) initialisation, so outputs are non-trivial."""
    rng = np.random.default_rng(seed)
    for v in model.trainable_variables:
        v.assign(v.numpy() + scale * rng.normal(size=v.shape).astype(v.dtype))


@pytest.fixture(scope="module")
def moons_flow():
    """A two-moons RealNVP, trained a little and then perturbed."""
    keras.utils.set_random_seed(1)
    model = tc.realnvp_flow(event_shape=[2], num_couplings=4, hidden_units=[16, 16])
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    model.fit(tc.data.two_moons(512, seed=0), batch_size=128, epochs=2, verbose=0)
    _perturb(model, seed=2, scale=0.05)
    return model


@pytest.fixture(scope="module")
def exported(moons_flow, tmp_path_factory):
    path = tmp_path_factory.mktemp("export") / "moons_flow"
    moons_flow.export(path)
    return path


# Runs in a fresh interpreter in which `import tfp_coupling` and `import tensorflow_probability`
# fail (the package is installed editable in the venv, so a meta path finder blocks both),
# loads the SavedModel with TensorFlow only and writes every endpoint's output to an .npz file.
_CHILD = PREAMBLE + textwrap.dedent("""

    import numpy as np
    import tensorflow as tf

    path, inputs, out = sys.argv[1:4]
    data = np.load(inputs)
    loaded = tf.saved_model.load(path)
    sig = loaded.signatures
    res = {
        "log_prob": loaded.log_prob(data["x"]).numpy(),
        "forward": loaded.forward(data["z"]).numpy(),
        "inverse": loaded.inverse(data["x"]).numpy(),
        "sample": loaded.sample(7, 0.8, 3).numpy(),
        "sample_n_only": loaded.sample(5).numpy(),
        "sample_opts": loaded.sample_with_options(n=7, temperature=0.8, seed=3).numpy(),
        "sig_log_prob": sig["log_prob"](x=tf.constant(data["x"]))["output_0"].numpy(),
        "sig_forward": sig["forward"](z=tf.constant(data["z"]))["output_0"].numpy(),
        "sig_inverse": sig["inverse"](x=tf.constant(data["x"]))["output_0"].numpy(),
        "sig_sample": sig["sample"](n=tf.constant(6))["output_0"].numpy(),
        "sig_sample_opts": sig["sample_with_options"](
            n=tf.constant(7), temperature=tf.constant(0.8), seed=tf.constant(3)
        )["output_0"].numpy(),
    }
    np.savez(out, **res)
    print(json.dumps({"blocked": blocked, "modules": sorted(
        m for m in sys.modules if m.split(".")[0] in BLOCKED), "signatures": sorted(sig)}))
""")


def test_saved_model_loads_without_the_package(moons_flow, exported, tmp_path):
    rng = np.random.default_rng(3)
    x = tc.data.two_moons(64, seed=5)
    z = rng.normal(size=(64, 2)).astype("float32")
    np.savez(tmp_path / "inputs.npz", x=x, z=z)
    script = tmp_path / "child.py"
    script.write_text(_CHILD)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    proc = subprocess.run(
        [sys.executable, "-I", str(script), str(exported), str(tmp_path / "inputs.npz"),
         str(tmp_path / "out.npz")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    assert info["blocked"] == ["tfp_coupling", "tensorflow_probability"]
    assert info["modules"] == []
    assert set(SIGNATURES) <= set(info["signatures"])
    out = np.load(tmp_path / "out.npz")

    want_lp = moons_flow.log_prob(x).numpy()
    want_fwd = moons_flow.forward(z).numpy()
    want_inv = moons_flow.inverse(x).numpy()
    want_sample = moons_flow.sample(7, temperature=0.8, seed=3).numpy()
    # A non-trivial flow, with log-densities of a size where 1e-5 is a float32 tolerance.
    assert np.std(want_lp) > 0.1 and np.abs(want_fwd - z).max() > 0.1
    assert np.abs(want_lp).max() < 50
    for key, want in [("log_prob", want_lp), ("sig_log_prob", want_lp), ("forward", want_fwd),
                      ("sig_forward", want_fwd), ("inverse", want_inv), ("sig_inverse", want_inv),
                      ("sample", want_sample), ("sample_opts", want_sample),
                      ("sig_sample_opts", want_sample)]:
        np.testing.assert_allclose(out[key], want, atol=1e-5, rtol=0, err_msg=key)
    assert out["sample_n_only"].shape == (5, 2) and out["sig_sample"].shape == (6, 2)
    assert np.isfinite(out["sig_sample"]).all()
    # An unseeded draw is a fresh draw, not the seeded one.
    assert np.abs(out["sample_n_only"] - want_sample[:5]).max() > 1e-3


def test_saved_model_cli_show_and_run(moons_flow, exported, tmp_path):
    cli = str(VENV_BIN / "saved_model_cli")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    show = subprocess.run([cli, "show", "--dir", str(exported), "--all"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert show.returncode == 0, show.stderr[-2000:]
    for name in (*SIGNATURES, "serving_default"):
        assert f"signature_def['{name}']" in show.stdout
    assert "inputs['x'] tensor_info" in show.stdout and "inputs['z'] tensor_info" in show.stdout
    assert "inputs['n'] tensor_info" in show.stdout and "(-1, 2)" in show.stdout

    x = np.array([[0.1, 0.2], [1.5, -0.4], [-1.0, 0.5]], np.float32)
    run = subprocess.run(
        [cli, "run", "--dir", str(exported), "--tag_set", "serve", "--signature_def", "log_prob",
         "--input_exprs", f"x={x.tolist()}", "--outdir", str(tmp_path / "cli_out")],
        env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    got = np.load(tmp_path / "cli_out" / "output_0.npy")
    np.testing.assert_allclose(got, moons_flow.log_prob(x).numpy(), atol=1e-5, rtol=0)


def _check_in_process(model: tc.FlowModel, path: Path, rng: np.random.Generator,
                      graph: bool = False) -> None:
    """The loaded export against the model, called eagerly or (``graph``) in a tf.function."""
    loaded = tf.saved_model.load(str(path))
    shape = (5, *model.event_shape)
    z = rng.normal(size=shape).astype("float32")
    x = model.forward(z).numpy()
    for name, arg in [("log_prob", x), ("forward", z), ("inverse", x)]:
        got = getattr(loaded, name)(arg)
        assert got.dtype == tf.float32
        call = tf.function(getattr(model, name)) if graph else getattr(model, name)
        np.testing.assert_allclose(got.numpy(), call(arg).numpy(), atol=1e-5, rtol=0,
                                   err_msg=name)
    def sample():
        return model.sample(4, temperature=0.5, seed=11)

    expected = (tf.function(sample) if graph else sample)()
    np.testing.assert_allclose(loaded.sample(4, 0.5, 11).numpy(), expected.numpy(), atol=1e-5)
    for sig in ("log_prob", "inverse"):
        spec = loaded.signatures[sig].structured_input_signature[1]["x"]
        assert spec.dtype == tf.float32 and spec.shape.as_list() == [None, *model.event_shape]


def test_export_image_event_shape(tmp_path, rng):
    model = tc.realnvp_flow(event_shape=[4, 4, 1], num_couplings=2, hidden_units=[8])
    _perturb(model, seed=4, scale=0.1)
    model.export(tmp_path / "image_flow")
    _check_in_process(model, tmp_path / "image_flow", rng)


def test_export_of_a_flow_trained_with_dropout_is_deterministic(tmp_path, rng):
    """The endpoints run the conditioners outside training: no dropout mask, the same numbers
    on every call, equal to the model's."""
    keras.utils.set_random_seed(2)
    model = tc.nice_flow(event_shape=[3], num_couplings=2, hidden_units=[16], dropout=0.5)
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    model.fit(rng.normal(size=(256, 3)).astype("float32"), batch_size=64, epochs=1, verbose=0)
    _perturb(model, seed=5, scale=0.1)
    model.export(tmp_path / "dropout")
    _check_in_process(model, tmp_path / "dropout", rng)
    loaded, x = tf.saved_model.load(str(tmp_path / "dropout")), model.sample(5, seed=1)
    np.testing.assert_array_equal(loaded.log_prob(x).numpy(), loaded.log_prob(x).numpy())


@pytest.fixture
def mixed_float16():
    keras.config.set_dtype_policy("mixed_float16")
    yield
    keras.config.set_dtype_policy("float32")


def test_export_after_mixed_precision_training(mixed_float16, tmp_path, rng):
    model = tc.realnvp_flow(event_shape=[2], num_couplings=2, hidden_units=[16])
    nets = [layer for layer in model.flow_layers if isinstance(layer, tc.nets.MLP)]
    assert nets and all(layer.compute_dtype == "float16" for layer in nets)
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    model.fit(tc.data.two_moons(256, seed=0), batch_size=64, epochs=1, verbose=0)
    keras.config.set_dtype_policy("float32")
    model.export(tmp_path / "mixed")
    # Against the model's graph: in graphs Grappler fuses each Dense's MatMul and BiasAdd, which
    # rounds float16 otherwise than eager ops (log_prob 3e-5 to 8e-5 apart here; equal with
    # the remapper off), and an export is a graph.
    _check_in_process(model, tmp_path / "mixed", rng, graph=True)


def test_export_replaces_atomically_and_a_failed_export_keeps_the_old_one(
        moons_flow, exported, tmp_path, monkeypatch):
    path = tmp_path / "flow"
    shutil.copytree(exported, path)  # an earlier export (of moons_flow)
    other = tc.nice_flow(event_shape=[2], num_couplings=2, hidden_units=[8])
    _perturb(other, seed=5, scale=0.1)
    other.export(path, overwrite=True)  # replaces it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["flow"]
    x = tc.data.two_moons(8, seed=1)
    loaded = tf.saved_model.load(str(path))  # keep a reference: it owns the variables
    np.testing.assert_allclose(loaded.log_prob(x).numpy(), other.log_prob(x).numpy(), atol=1e-5)
    assert np.abs(other.log_prob(x) - moons_flow.log_prob(x)).max() > 1e-2
    del loaded

    def broken_save(*args, **kwargs):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(tf.saved_model, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        moons_flow.export(path, overwrite=True)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["flow"]  # no temporary folder left
    loaded = tf.saved_model.load(str(path))
    np.testing.assert_allclose(loaded.log_prob(x).numpy(), other.log_prob(x).numpy(), atol=1e-5)


def test_export_rejects_other_formats(tmp_path):
    model = tc.nice_flow(event_shape=[2], num_couplings=2, hidden_units=[8])
    with pytest.raises(ValueError, match="tf_saved_model"):
        model.export(tmp_path / "flow", format="onnx")
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(FileExistsError, match="is a file"):
        model.export(tmp_path / "file")


def test_export_never_deletes_what_it_did_not_write(moons_flow, exported, tmp_path):
    from tfp_coupling import atomic

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    for overwrite in (False, True):
        with pytest.raises(FileExistsError, match="not a SavedModel, which the export would "
                                                  "delete"):
            moons_flow.export(mine, overwrite=overwrite)
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]
    earlier = tmp_path / "earlier"
    shutil.copytree(exported, earlier)
    with pytest.raises(FileExistsError, match="a SavedModel is already there; pass "
                                              "overwrite=True"):
        moons_flow.export(earlier)
    empty = tmp_path / "empty"
    empty.mkdir()
    moons_flow.export(empty)  # an empty folder holds nothing to lose
    assert (empty / "saved_model.pb").is_file()
    assert (empty.stat().st_mode & 0o777) == atomic.default_folder_mode()  # not mkdtemp's 0700
    assert sorted(p.name for p in tmp_path.iterdir()) == ["earlier", "empty", "mine"]


def test_saved_model_endpoints_check_their_inputs(exported):
    from tfp_coupling.model.export import MAX_SAMPLE_VALUES

    loaded = tf.saved_model.load(str(exported))
    nan = np.array([[0.0, np.nan]], np.float32)
    limit = MAX_SAMPLE_VALUES // 2
    bad_calls = [
        (lambda: loaded.sample(-1), "sample: n must be >= 0"),
        (lambda: loaded.signatures["sample"](n=tf.constant(-3)), "sample: n must be >= 0"),
        (lambda: loaded.sample(limit + 1), f"sample: n must be <= {limit}"),
        (lambda: loaded.sample(2, 0.0), "temperature must be a finite number > 0"),
        (lambda: loaded.sample(2, -1.0, 3), "temperature must be a finite number > 0"),
        (lambda: loaded.sample_with_options(2, float("nan"), 3),
         "temperature must be a finite number > 0"),
        (lambda: loaded.log_prob(nan), "log_prob: input x contains NaN or Inf"),
        (lambda: loaded.signatures["log_prob"](x=tf.constant(nan)),
         "log_prob: input x contains NaN or Inf"),
        (lambda: loaded.inverse(nan), "inverse: input x contains NaN or Inf"),
        (lambda: loaded.forward(nan), "forward: input z contains NaN or Inf"),
    ]
    for call, message in bad_calls:
        with pytest.raises(tf.errors.InvalidArgumentError, match=message):
            call()
    assert loaded.sample(0).shape == (0, 2)  # the edges are fine
    assert np.isfinite(loaded.sample(3, 1e-3, 1).numpy()).all()
