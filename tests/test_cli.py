"""The ``tfp-coupling`` command line, end to end with tiny models and epoch counts."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest
from harness import affine_couplings
from shared_data import MNIST_DIR, needs_mnist

import tfp_coupling as tc
from tfp_coupling import cli
from tfp_coupling.cli import tasks

TINY = ["--couplings", "2", "--hidden", "16", "--quiet"]


def _train(out: Path, name: str, *extra: str) -> int:
    return cli.main(["train", "--out", str(out), "--name", name, *TINY, *extra])


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("tfp-coupling: error: ")
    return err[0]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """One finished two-moons run (2 epochs), shared by the evaluate/sample/export tests."""
    out = tmp_path_factory.mktemp("runs")
    assert _train(out, "moons", "--epochs", "2", "--lr", "3e-3") == 0
    return out / "moons"


def test_train_writes_a_complete_run_folder(run):
    names = {p.name for p in run.iterdir()}
    assert {"config.json", "metrics.json", "model.keras", "saved_model", "checkpoints",
            "density.png", "training_curve.png"} <= names
    assert not [n for n in names if n.startswith(".")]  # no temporary files left
    metrics = json.loads((run / "metrics.json").read_text())
    config = json.loads((run / "config.json").read_text())
    assert metrics["complete"] and metrics["config"] == config
    assert config["model"] == "realnvp" and config["dataset"] == "two_moons"
    assert config["couplings"] == 2 and config["hidden_units"] == [16]
    # The run records realnvp_flow's bound on the shift; runs written before rebuild unbounded.
    import inspect

    assert config["shift_clamp"] == inspect.signature(tc.realnvp_flow).parameters[
        "shift_clamp"].default == 5.0

    def shift_clamps(config: dict) -> set:
        return {b.shift_clamp for b in tasks.build_model(config).bijector.bijectors
                if isinstance(b, tc.AffineCoupling)}

    assert shift_clamps(config) == {5.0}
    assert shift_clamps({k: v for k, v in config.items() if k != "shift_clamp"}) == {None}

    def output_kernels(config: dict) -> list:
        return [layer.out.kernel.numpy() for layer in tasks.build_model(config).flow_layers
                if isinstance(layer, tc.nets.MLP)]

    # Random shifts to start (recorded), except on flattened pixels and tables (see below).
    assert config["zero_init"] is False
    assert all(np.any(k) for k in output_kernels(config))
    assert not any(np.any(k) for k in output_kernels({**config, "zero_init": True}))
    assert metrics["history"]["epoch"] == [1, 2]
    for key in ("train_nll", "val_nll", "time_s"):
        assert len(metrics["history"][key]) == 2 and all(map(math.isfinite,
                                                             metrics["history"][key]))
    # Training helped: below the NLL of the identity flow's N(0, I) on the test split.
    from tfp_coupling import data

    x = data.load("two_moons", "test")
    base_nll = float(np.mean(0.5 * (x.astype(np.float64) ** 2).sum(1) + math.log(2 * math.pi)))
    assert metrics["test_nll"] < base_nll - 0.3
    assert metrics["test_bits_per_dim"] is None  # continuous data: no bits/dim
    assert metrics["wall_time_s"] >= metrics["train_time_s"] > 0
    # The saved model is the trained one, and its test NLL is the reported one.
    model = keras.models.load_model(run / "model.keras", compile=False)
    nll = -float(np.mean(np.asarray(model.log_prob(x), np.float64)))
    assert nll == pytest.approx(metrics["test_nll"], abs=1e-4)


def test_saved_model_matches_the_run(run):
    import tensorflow as tf

    from tfp_coupling import data

    loaded = tf.saved_model.load(str(run / "saved_model"))
    model = keras.models.load_model(run / "model.keras", compile=False)
    x = data.load("two_moons", "test", n=64)
    np.testing.assert_allclose(loaded.log_prob(x), model.log_prob(x), rtol=1e-5, atol=1e-5)


def test_evaluate(run, capsys):
    metrics = json.loads((run / "metrics.json").read_text())
    assert cli.main(["evaluate", str(run), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["split"] == "test" and result["examples"] == 2000
    assert result["nll"] == pytest.approx(metrics["test_nll"], rel=1e-6)
    assert result["gaussian_nll"] == pytest.approx(metrics["gaussian_test_nll"], rel=1e-9)
    assert cli.main(["evaluate", str(run), "--split", "validation"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("two_moons validation (2000 examples): NLL ")
    assert float(line.split("NLL ")[1].split()[0]) == pytest.approx(metrics["val_nll"], abs=1e-3)
    assert line.endswith(f"(a full-covariance Gaussian fit: {metrics['gaussian_val_nll']:.4f})")
    # Another 2-D dataset is accepted and is much less likely under a two-moons model.
    assert cli.main(["evaluate", str(run), "--dataset", "checkerboard", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["nll"] > metrics["test_nll"] + 1.0


def test_sample(run, tmp_path, capsys):
    out = tmp_path / "s.npy"
    assert cli.main(["sample", str(run), "-n", "300", "--seed", "3", "--out", str(out)]) == 0
    assert "wrote 300 samples" in capsys.readouterr().out
    samples = np.load(out)
    assert samples.shape == (300, 2) and np.all(np.isfinite(samples))
    assert (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"
    model = keras.models.load_model(run / "model.keras", compile=False)
    np.testing.assert_allclose(samples, model.sample(300, seed=3), rtol=1e-5, atol=1e-5)
    cold = tmp_path / "cold.npy"
    assert cli.main(["sample", str(run), "-n", "300", "--seed", "3", "--temperature", "0.5",
                     "--out", str(cold)]) == 0
    assert np.load(cold).std(axis=0).sum() < samples.std(axis=0).sum()


def test_export(run, tmp_path, capsys):
    import tensorflow as tf

    out = tmp_path / "exported"
    assert cli.main(["export", str(run), "--out", str(out)]) == 0
    assert str(out) in capsys.readouterr().out
    loaded = tf.saved_model.load(str(out))
    assert {"log_prob", "sample", "forward", "inverse"} <= set(loaded.signatures)
    assert loaded.sample(5).shape == (5, 2)


def test_interrupted_run_resumes_from_its_checkpoint(tmp_path, monkeypatch, capsys):
    from tfp_coupling.checkpoint import AtomicCheckpoint

    original = AtomicCheckpoint.on_epoch_end

    def interrupt_after_first_epoch(self, epoch, logs=None):
        original(self, epoch, logs)
        raise KeyboardInterrupt

    monkeypatch.setattr(AtomicCheckpoint, "on_epoch_end",
                        interrupt_after_first_epoch)
    assert _train(tmp_path, "r", "--epochs", "2") == 130
    monkeypatch.undo()
    run = tmp_path / "r"
    assert "--resume" in capsys.readouterr().err
    assert not (run / "metrics.json").exists() and not (run / "model.keras").exists()
    first = json.loads((run / "checkpoints" / "history.json").read_text())
    assert [h["epoch"] for h in first] == [1]
    # An unfinished run cannot be evaluated, and says how to finish it.
    assert cli.main(["evaluate", str(run)]) == 1
    assert "unfinished" in _error_line(capsys)

    assert cli.main(["train", "--resume", str(run), "--quiet"]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["history"]["epoch"] == [1, 2]
    assert metrics["history"]["time_s"][0] == first[0]["time_s"]  # epoch 1 was not redone

    # A complete run is extended only by asking for more epochs, and never with new settings.
    assert cli.main(["train", "--resume", str(run), "--quiet"]) == 1
    assert "already complete (2 epochs)" in _error_line(capsys)
    assert cli.main(["train", "--resume", str(run), "--lr", "0.1", "--epochs", "3"]) == 1
    assert "cannot change --lr" in _error_line(capsys)
    assert (run / "metrics.json").exists()
    assert cli.main(["train", "--resume", str(run), "--epochs", "3", "--quiet"]) == 0
    metrics3 = json.loads((run / "metrics.json").read_text())
    assert metrics3["history"]["epoch"] == [1, 2, 3]
    assert metrics3["history"]["time_s"][:2] == metrics["history"]["time_s"]
    assert metrics3["config"]["epochs"] == 3


def test_table_nll_is_reported_in_the_data_units(tmp_path, capsys):
    # The same table in units 10x larger: identical standardised data, so (same seed) the same
    # model, and a data-unit NLL larger by D log 10.
    x = np.random.default_rng(0).normal(size=(300, 3)) @ np.array(
        [[1.0, 0.5, 0.0], [0.0, 1.0, 0.3], [0.0, 0.0, 2.0]]) + 5.0
    np.save(tmp_path / "a.npy", x)
    np.save(tmp_path / "b.npy", 10 * x)
    for name in ("a", "b"):
        assert _train(tmp_path / "runs", name, "--dataset", str(tmp_path / f"{name}.npy"),
                      "--epochs", "1", "--batch-size", "64", "--model", "nice") == 0
    nll = {n: json.loads((tmp_path / "runs" / n / "metrics.json").read_text())["test_nll"]
           for n in ("a", "b")}
    assert nll["b"] - nll["a"] == pytest.approx(3 * math.log(10), abs=1e-3)
    assert (tmp_path / "runs" / "a" / "samples.png").is_file()
    # evaluate on another file standardises it with the run's training statistics.
    capsys.readouterr()
    assert cli.main(["evaluate", str(tmp_path / "runs" / "a"), "--dataset",
                     str(tmp_path / "b.npy"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["nll"] > nll["b"] + 10
    # NICE runs on vectors are whitened; a run written before that (no "whiten" key) rebuilds
    # unwhitened, so that its checkpoints still fit the model.
    config = json.loads((tmp_path / "runs" / "a" / "config.json").read_text())
    assert config["whiten"] is True

    def whitened(config: dict) -> bool:
        return any(isinstance(layer, tc.bijectors.TriLAffineParams)
                   for layer in tasks.build_model(config).flow_layers)

    assert whitened(config)
    assert not whitened({k: v for k, v in config.items() if k != "whiten"})
    # Tables train tanh conditioners (NICE's here, RealNVP's in the test below); a run
    # written before the option rebuilds with ReLU; --resume keeps the run's.
    assert config["activation"] == "tanh"

    def activations(config: dict) -> set[str]:
        return {layer.activation for layer in tasks.build_model(config).flow_layers
                if isinstance(layer, tc.nets.MLP)}

    assert activations(config) == {"tanh"}
    assert activations({k: v for k, v in config.items() if k != "activation"}) == {"relu"}
    assert cli.main(["train", "--resume", str(tmp_path / "runs" / "a"), "--activation", "relu",
                     "--epochs", "2"]) == 1
    assert "cannot change --activation" in _error_line(capsys)
    old = tmp_path / "runs" / "a" / "config.json"  # as written before the option: ReLU
    old.write_text(json.dumps({k: v for k, v in config.items() if k != "activation"}))
    assert cli.main(["train", "--resume", str(old.parent), "--activation", "relu", "--epochs",
                     "2", "--quiet"]) == 0
    assert json.loads(old.read_text())["activation"] == "relu"


def test_runs_report_the_gaussian_fit_and_say_when_the_flow_is_worse(run, tmp_path, capsys):
    from tfp_coupling.cli.run_folder import load_run_data

    metrics = json.loads((run / "metrics.json").read_text())
    config = json.loads((run / "config.json").read_text())

    def data_units(split: str) -> np.ndarray:
        d = load_run_data(config, split)
        return d.info.to_data_units(d.x).astype(np.float64)

    # Fitted here on the rows in the data's units (the fit is affine-equivariant, so this is
    # the run's fit on standardised rows, moved to the data's units).
    gauss = tc.gaussian_fit(data_units("train"))
    for split, key in (("test", "gaussian_test_nll"), ("validation", "gaussian_val_nll")):
        nll = -float(np.mean(gauss.log_prob(data_units(split))))
        assert metrics[key] == pytest.approx(nll, abs=1e-4)
    # Gaussian rows: the fit is near the truth, an untrained flow with random shifts is not.
    x = np.random.default_rng(0).normal(size=(300, 3)) @ np.array(
        [[1.0, 0.5, 0.0], [0.0, 1.0, 0.3], [0.0, 0.0, 2.0]])
    np.save(tmp_path / "g.npy", x)
    capsys.readouterr()
    assert _train(tmp_path / "runs", "g", "--dataset", str(tmp_path / "g.npy"), "--epochs", "1",
                  "--start", "random", "--lr", "1e-9") == 0
    out, err = capsys.readouterr()
    metrics = json.loads((tmp_path / "runs" / "g" / "metrics.json").read_text())
    assert metrics["test_nll"] > metrics["gaussian_test_nll"]
    assert f"(a full-covariance Gaussian fit: {metrics['gaussian_test_nll']:.4f})" in out
    note = err.strip().splitlines()[-1]
    assert "test NLL is above the Gaussian fit's by" in note
    # It suggests what the run has not tried: tables already train tanh conditioners.
    assert "--start identity" in note and "--dropout 0.3" in note
    assert "--activation tanh" not in note


def test_lu_mixing_run_is_recorded_rebuilt_and_kept_on_resume(tmp_path, capsys):
    assert _train(tmp_path, "lu", "--mixing", "lu", "--epochs", "1") == 0
    folder = tmp_path / "lu"
    config = json.loads((folder / "config.json").read_text())
    assert config["mixing"] == "lu"

    def mixings(config: dict) -> int:
        return sum(isinstance(layer, tc.bijectors.LULinearParams)
                   for layer in tasks.build_model(config).flow_layers)

    assert mixings(config) == 1  # between the two couplings
    assert mixings({k: v for k, v in config.items() if k != "mixing"}) == 0  # older runs
    model = keras.models.load_model(folder / "model.keras", compile=False)
    assert any(isinstance(layer, tc.bijectors.LULinearParams) for layer in model.flow_layers)
    assert cli.main(["train", "--resume", str(folder), "--mixing", "none", "--epochs", "2"]) == 1
    assert "cannot change --mixing" in _error_line(capsys)
    assert cli.main(["train", "--resume", str(folder), "--mixing", "lu", "--epochs", "2",
                     "--quiet"]) == 0
    assert json.loads((folder / "metrics.json").read_text())["history"]["epoch"] == [1, 2]


def test_start_is_chosen_by_the_data_or_by_the_flag_and_kept_on_resume(tmp_path, capsys):
    """Random shifts on 2-D data, the identity on tables; ``--start`` overrides both."""
    table = tmp_path / "t.npy"
    np.save(table, np.random.default_rng(0).normal(size=(200, 3)))
    runs = {"moons": [], "moons-identity": ["--start", "identity"],
            "nice-identity": ["--model", "nice", "--start", "identity"],
            "table": ["--dataset", str(table)], "table-random": ["--dataset", str(table),
                                                                 "--start", "random"]}
    for name, extra in runs.items():
        assert _train(tmp_path, name, "--epochs", "1", *extra) == 0
    configs = {name: json.loads((tmp_path / name / "config.json").read_text()) for name in runs}
    assert {name: c["zero_init"] for name, c in configs.items()} == {
        "moons": False, "moons-identity": True, "nice-identity": True, "table": True,
        "table-random": False}

    def random_outputs(config: dict) -> set[bool]:
        """Whether each conditioner's output layer starts with any non-zero weight."""
        keras.utils.set_random_seed(0)
        model = tasks.build_model(config)
        model(np.zeros((1, config["event_size"]), "float32"))
        return {bool(np.any(layer.out.kernel.numpy())) for layer in model.flow_layers
                if isinstance(layer, tc.nets.MLP)}

    assert random_outputs(configs["moons"]) == {True}
    assert random_outputs(configs["moons-identity"]) == random_outputs(
        configs["nice-identity"]) == {False}
    # Runs written before the key: NICE random unless on flattened pixels, RealNVP random.
    old = {k: v for k, v in configs["nice-identity"].items() if k != "zero_init"}
    assert random_outputs(old) == {True}
    assert random_outputs({**old, "flatten": True}) == {False}
    folder = str(tmp_path / "table")
    capsys.readouterr()  # the runs' own notes
    assert cli.main(["train", "--resume", folder, "--start", "random", "--epochs", "2"]) == 1
    assert "cannot change --start" in _error_line(capsys)
    assert cli.main(["train", "--resume", folder, "--start", "identity", "--epochs", "2",
                     "--quiet"]) == 0


def test_dropout_run_is_recorded_rebuilt_and_kept_on_resume(tmp_path, capsys):
    assert _train(tmp_path, "d", "--model", "nice", "--dropout", "0.2", "--epochs", "1") == 0
    folder = tmp_path / "d"
    config = json.loads((folder / "config.json").read_text())
    assert config["dropout"] == 0.2

    def rates(config: dict) -> set[float]:
        return {layer.dropout for layer in tasks.build_model(config).flow_layers
                if isinstance(layer, tc.nets.MLP)}

    assert rates(config) == {0.2}
    assert rates({k: v for k, v in config.items() if k != "dropout"}) == {0.0}  # older runs
    capsys.readouterr()  # the run's own notes
    assert cli.main(["train", "--resume", str(folder), "--dropout", "0", "--epochs", "2"]) == 1
    assert "cannot change --dropout" in _error_line(capsys)
    assert cli.main(["train", "--resume", str(folder), "--epochs", "2", "--quiet"]) == 0
    assert json.loads((folder / "metrics.json").read_text())["history"]["epoch"] == [1, 2]


@needs_mnist
def test_mnist_offline_run_reports_bits_per_dim(tmp_path, capsys):
    from tfp_coupling import data

    assert _train(tmp_path, "m", "--dataset", "mnist", "--data-dir", str(MNIST_DIR),
                  "--model", "nice", "--batch-size", "500", "--hidden",
                  "8", "--lr", "0.01", "--epochs", "2") == 0
    metrics = json.loads((tmp_path / "m" / "metrics.json").read_text())
    assert "gaussian_test_nll" not in metrics  # dequantised pixels: no Gaussian baseline
    bpd = metrics["test_bits_per_dim"]
    assert bpd == pytest.approx(metrics["test_nll"] / (784 * math.log(2)))
    assert bpd < 8.0  # better than a uniform distribution over the 256 pixel values
    # ... and better than where training started (NICE's scaling set from the data's std).
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    x, info = data.load("mnist", "train", data_dir=MNIST_DIR, with_info=True)
    keras.utils.set_random_seed(config["seed"])
    start = tasks.build_model(config)
    tc.initialize_rescaling(start, x.reshape(len(x), -1), bin_width=info.bin_width,
                            seed=config["seed"])
    x_test = data.load("mnist", "test", data_dir=MNIST_DIR).reshape(-1, 784)
    start_bpd = info.bits_per_dim(tasks.eval_nll(start, x_test, info, seed=2))
    assert bpd < start_bpd - 0.05
    assert (tmp_path / "m" / "samples.png").is_file()
    capsys.readouterr()
    assert cli.main(["evaluate", str(tmp_path / "m"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["nll"] == pytest.approx(metrics["test_nll"], rel=1e-6)  # same noise draw
    assert result["gaussian_nll"] is None
    assert result["bits_per_dim"] == pytest.approx(bpd, rel=1e-6)
    assert cli.main(["sample", str(tmp_path / "m"), "-n", "4"]) == 0
    assert np.load(tmp_path / "m" / "samples.npy").shape == (4, 28, 28, 1)


@needs_mnist
def test_realnvp_image_runs_record_their_couplings_and_older_runs_rebuild_theirs(tmp_path):
    from tfp_coupling.cli import commands, options, parser

    args = parser.build_parser().parse_args(
        ["train", "--dataset", "mnist", "--data-dir", str(MNIST_DIR), "--model",
         "realnvp-image", "--hidden", "4", "--couplings", "1", "--out", str(tmp_path)])
    _, config = commands._new_run(args, options.fill_defaults(args))
    import inspect

    recorded = (config["normalizing"], config["log_scale_clamp"], config["shift_clamp"])
    defaults = inspect.signature(tc.realnvp_image_flow).parameters
    assert recorded == tuple(defaults[k].default for k in (
        "normalizing", "log_scale_clamp", "shift_clamp")) == (True, 2.0, 5.0)

    def forms(config: dict) -> set:
        return {(c.normalizing, c.log_scale_clamp, c.shift_clamp)
                for c in affine_couplings(tasks.build_model(config).bijector)}

    assert forms(config) == {(True, 2.0, 5.0)}
    older = {k: v for k, v in config.items()
             if k not in ("normalizing", "log_scale_clamp", "shift_clamp")}
    assert forms(older) == {(False, 5.0, None)}


@pytest.mark.parametrize("epochs, warmup", [(5, 0), (40, 4), (100, 5)])
def test_cosine_schedule_warms_up_over_whole_epochs_then_decays_to_a_fiftieth(
        epochs, warmup):
    # The warm-up: min(warmup_epochs, epochs // 10) whole epochs, none in runs under 10 epochs.
    config = {"lr": 1e-3, "schedule": "cosine", "epochs": epochs, "warmup_epochs": 5}
    rate = tasks.learning_rate_schedule(config, 10)
    start = 1e-4 if warmup else 1e-3
    assert float(rate(0)) == pytest.approx(start)
    assert float(rate(10 * warmup)) == pytest.approx(1e-3)
    if warmup:
        assert float(rate(5 * warmup)) == pytest.approx(5.5e-4)  # halfway up, linearly
    assert float(rate(10 * epochs)) == pytest.approx(2e-5)
    assert tasks.learning_rate_schedule({**config, "schedule": "constant"}, 10) == 1e-3


@pytest.mark.parametrize("args, message", [
    (["--dataset", "nope"], "unknown dataset 'nope'"),
    (["--dataset", "{tmp}/missing.csv"], "data file not found: {tmp}/missing.csv"),
    (["--dataset", "{tmp}/nan.csv"], "NaN/inf value(s), first at data row 3, column 2"),
    (["--out", "{tmp}/file.txt/runs"], "output folder {tmp}/file.txt/runs is not writable"),
    (["--hidden", "64,x"], "--hidden must be comma-separated positive integers"),
    (["--epochs", "0"], "--epochs must be >= 1"),
    (["--model", "realnvp-image"], "needs an image dataset"),
    (["--model", "realnvp-image", "--activation", "tanh"], "not those of realnvp-image"),
    (["--model", "glow"], "unknown model 'glow'"),
    (["--model", "nice", "--mixing", "lu"], "nice has no such option"),
    (["--dropout", "1"], "--dropout must be in [0, 1), got 1.0"),
    (["--dropout", "nan"], "--dropout must be in [0, 1), got nan"),
    (["--model", "nice-image", "--dropout", "0.1"], "--dropout sets the conditioners of the"),
    (["--dropout", "0.1", "--invertible-backprop"], "do not combine"),
    (["--model", "realnvp-image", "--start", "random"], "(nice, realnvp), not those of realnvp-"),
])
def test_bad_input_gives_one_line_and_no_run_folder(tmp_path, capsys, args, message):
    (tmp_path / "nan.csv").write_text("a,b\n" + "1,2\n" * 2 + "3,nan\n" + "4,5\n" * 20)
    (tmp_path / "file.txt").write_text("not a folder")
    args = [a.format(tmp=tmp_path) for a in args]
    out = ["--out", str(tmp_path / "runs")] if "--out" not in args else []
    assert cli.main(["train", *out, "--name", "x", *TINY, *args]) == 1
    assert message.format(tmp=tmp_path) in _error_line(capsys)
    assert not (tmp_path / "runs" / "x").exists()


def test_other_bad_input(tmp_path, capsys, run):
    assert cli.main(["evaluate", str(tmp_path)]) == 1
    assert "is not a run folder (no config.json)" in _error_line(capsys)
    assert cli.main(["sample", str(tmp_path / "absent")]) == 1
    assert "run folder not found" in _error_line(capsys)
    assert cli.main(["sample", str(run), "--out", str(tmp_path / "s.txt")]) == 1
    assert "--out must end in .npy" in _error_line(capsys)
    assert cli.main(["evaluate", str(run), "--dataset", "mnist", "--data-dir",
                     str(tmp_path)]) == 1
    assert "no mnist IDX files" in _error_line(capsys)
    # An existing run folder is never overwritten.
    assert cli.main(["train", "--out", str(run.parent), "--name", run.name, *TINY]) == 1
    assert "already exists (complete)" in _error_line(capsys)
    with pytest.raises(SystemExit) as e:
        cli.main(["train", "--epochs", "many"])
    assert e.value.code == 2


@pytest.mark.parametrize("command", ["train", "evaluate", "sample", "export"])
def test_help(command, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main([command, "--help"])
    assert e.value.code == 0
    assert f"usage: tfp-coupling {command}" in capsys.readouterr().out


def test_python_dash_m_trains_with_a_progress_bar(tmp_path):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run(
        [sys.executable, "-m", "tfp_coupling", "train", "--epochs", "1", "--couplings", "2",
         "--hidden", "8", "--dataset", "rings", "--out", str(tmp_path), "--name", "sub",
         "--mixed-precision", "mixed_bfloat16"],
        capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "32/32" in proc.stdout and "nll:" in proc.stdout  # Keras' progress bar
    assert f"run folder: {tmp_path / 'sub'}" in proc.stdout
    metrics = json.loads((tmp_path / "sub" / "metrics.json").read_text())
    assert metrics["config"]["mixed_precision"] == "mixed_bfloat16"
    assert math.isfinite(metrics["test_nll"])


def test_train_without_matplotlib_fails_before_training(tmp_path, capsys, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "matplotlib" else real(name, *a))
    assert cli.main(["train", "--out", str(tmp_path / "runs"), "--name", "x"]) == 1
    assert "pip install 'tfp-coupling[plot]'" in _error_line(capsys)
    assert not (tmp_path / "runs").exists()


def test_version(capsys):
    import tfp_coupling

    with pytest.raises(SystemExit) as e:
        cli.main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == f"tfp-coupling {tfp_coupling.__version__}"


def test_best_validation_epoch_is_kept_and_patience_stops(tmp_path, capsys):
    """The run's model is the best validation epoch's (not the last), and ``--patience 1``
    stops one epoch after the last improvement."""
    assert _train(tmp_path, "p", "--epochs", "8", "--patience", "1", "--lr", "0.05",
                  "--schedule", "constant") == 0
    run = tmp_path / "p"
    metrics = json.loads((run / "metrics.json").read_text())
    val = metrics["history"]["val_nll"]
    best = int(np.argmin(val)) + 1
    assert metrics["best_epoch"] == best
    assert len(val) == 8 or len(val) == best + 1
    assert metrics["val_nll"] == pytest.approx(val[best - 1], abs=1e-4)
    loaded = keras.models.load_model(run / "model.keras")
    from tfp_coupling import data

    x_val = data.load("two_moons", "validation")
    assert -float(np.mean(loaded.log_prob(x_val))) == pytest.approx(val[best - 1], abs=1e-4)
    assert cli.main(["train", "--out", str(tmp_path), "--name", "q", "--patience", "0"]) == 1
    assert "--patience must be >= 1" in _error_line(capsys)


def test_table_runs_get_the_small_data_defaults(tmp_path):
    rng = np.random.default_rng(0)
    table = tmp_path / "t.npy"
    np.save(table, rng.normal(size=(300, 3)) @ [[1.0, 0.5, 0], [0, 1, 0.3], [0, 0, 1]])
    assert _train(tmp_path, "t", "--dataset", str(table), "--epochs", "2") == 0
    config = json.loads((tmp_path / "t" / "config.json").read_text())
    assert (config["lr"], config["batch_size"], config["epochs"]) == (1e-4, 64, 2)
    assert config["activation"] == "tanh"  # RealNVP's conditioners, as for NICE above
    # The identity start, so that the untrained flow (epoch 0 of the model selection) is the
    # Gaussian fit; the run's flow is built that way.
    assert config["zero_init"] is True
    model = keras.models.load_model(tmp_path / "t" / "model.keras")
    assert model.flow_config["zero_init"] is True


def test_nice_on_2d_data_gets_a_larger_longer_unclipped_run(tmp_path):
    def config(name: str, *extra: str) -> dict:
        assert cli.main(["train", "--out", str(tmp_path), "--name", name, "--quiet", "--epochs",
                         "1", *extra]) == 0
        return json.loads((tmp_path / name / "config.json").read_text())

    def settings(c: dict) -> tuple:
        return c["couplings"], c["hidden_units"], c["clipnorm"]

    rings = config("rings", "--model", "nice", "--dataset", "rings")
    assert settings(rings) == (16, [256, 256], 0.0)
    # What the user gives is kept; other data and models keep their defaults.
    assert settings(config("given", "--model", "nice", "--couplings", "2", "--hidden", "8",
                           "--clipnorm", "0.5")) == (2, [8], 0.5)
    table = tmp_path / "t.npy"
    np.save(table, np.random.default_rng(0).normal(size=(200, 3)))
    assert settings(config("table", "--model", "nice", "--dataset", str(table),
                           "--couplings", "2")) == (2, [128, 128], 1.0)

    # Without nice_flow's sine units (with them this larger, unclipped NICE diverged once).
    nets = [layer for layer in tasks.build_model(rings).flow_layers
            if isinstance(layer, tc.nets.MLP)]
    assert len(nets) == 16 and all(net.sine_scale is None for net in nets)
    assert settings(config("realnvp", "--couplings", "2")) == (2, [64, 64], 1.0)
    # The epochs too (a run of 200 is not made here): parsed as the command line does.
    from tfp_coupling.cli import commands, options, parser

    args = parser.build_parser().parse_args(["train", "--model", "nice", "--out", str(tmp_path)])
    given = options.fill_defaults(args)
    assert commands._new_run(args, given)[1]["epochs"] == 200


def _run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """``python -m tfp_coupling ARGS`` on this checkout, with the user's default environment."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    repo = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join([repo, *filter(None, [env.get("PYTHONPATH")])])
    return subprocess.run([sys.executable, "-m", "tfp_coupling", *args], capture_output=True,
                          text=True, timeout=timeout, env=env)


@pytest.mark.parametrize("args, status", [
    (["--help"], 0),
    (["train", "--help"], 0),
    (["train", "--epochs", "many"], 2),
    (["train", "--epochs", "0"], 1),
    (["train", "--hidden", "8,,8"], 1),
    (["evaluate", "/nonexistent/run"], 1),
])
def test_help_and_option_errors_are_fast_and_do_not_import_tensorflow(args, status):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "tfp_coupling", *args], capture_output=True,
                          text=True, timeout=60, env=env)
    elapsed = time.perf_counter() - start
    assert proc.returncode == status, proc.stderr
    assert elapsed < 2.0, elapsed
    if status:
        assert proc.stderr.splitlines()[0].startswith(("tfp-coupling: error: ", "usage: "))
        assert "Traceback" not in proc.stderr
    imports = subprocess.run([sys.executable, "-X", "importtime", "-m", "tfp_coupling", *args],
                             capture_output=True, text=True, timeout=60, env=env).stderr
    assert "| tfp_coupling.cli" in imports  # the check below looks at the right output
    assert not [line for line in imports.splitlines() if "| tensorflow" in line]


def test_a_plain_import_still_registers_the_flows_for_keras(run):
    code = ("import sys, keras, tfp_coupling; m = keras.models.load_model(sys.argv[1]); "
            "print(type(m).__name__)")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
           "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run([sys.executable, "-c", code, str(run / "model.keras")],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "FlowModel"


def test_errors_after_tensorflow_loads_are_one_clean_line(tmp_path):
    (tmp_path / "config.json").write_text("{}")  # a run folder whose model is missing
    (tmp_path / "metrics.json").write_text("{}")
    proc = _run_cli("evaluate", str(tmp_path))
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [
        f"tfp-coupling: error: run {tmp_path} is unfinished (no model.keras); complete it with "
        f"tfp-coupling train --resume {tmp_path}"]


def test_export_never_deletes_the_users_files(run, tmp_path, capsys):
    before = sorted(p.name for p in run.iterdir())
    assert cli.main(["export", str(run), "--out", str(run)]) == 1
    assert "holding other files (not a SavedModel)" in _error_line(capsys)
    assert cli.main(["export", str(run), "--out", str(run), "--overwrite"]) == 1
    assert "exporting there would delete them" in _error_line(capsys)
    assert sorted(p.name for p in run.iterdir()) == before
    assert json.loads((run / "metrics.json").read_text())["complete"]
    out = tmp_path / "flow"
    assert cli.main(["export", str(run), "--out", str(out)]) == 0
    capsys.readouterr()
    assert cli.main(["export", str(run), "--out", str(out)]) == 1
    assert "already holds a SavedModel; pass --overwrite" in _error_line(capsys)
    assert cli.main(["export", str(run), "--out", str(out), "--overwrite"]) == 0
    assert cli.main(["export", str(run)]) == 0  # the run's own RUN/saved_model is refreshed


def test_a_table_far_from_zero_trains_and_samples_at_full_resolution(tmp_path, capsys):
    rng = np.random.default_rng(0)
    n = 600
    x = np.stack([1.7e9 + rng.normal(0.0, 100.0, n), rng.normal(size=n),
                  rng.integers(0, 5, n).astype(float)], axis=1)
    np.save(tmp_path / "stamps.npy", x)
    assert _train(tmp_path / "runs", "t", "--dataset", str(tmp_path / "stamps.npy"),
                  "--model", "nice", "--epochs", "1", "--batch-size", "100") == 0
    err = capsys.readouterr().err
    assert (f"tfp-coupling: note: column(s) 3 of {tmp_path / 'stamps.npy'} hold whole numbers "
            f"only; the flow treats them as continuous") in err
    run = tmp_path / "runs" / "t"
    out = tmp_path / "s.npy"
    assert cli.main(["sample", str(run), "-n", "500", "--out", str(out)]) == 0
    samples = np.load(out)
    assert samples.dtype == np.float64
    assert len(np.unique(samples[:, 0])) > 450  # not a handful of float32 steps of 128
    assert abs(np.median(samples[:, 0]) - 1.7e9) < 300
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test_nll"] < 20  # about log(100) + 2 nats, not a spike's 1e3
    # Sampling again to the same --out needs --overwrite (both files exist).
    capsys.readouterr()
    assert cli.main(["sample", str(run), "-n", "5", "--out", str(out)]) == 1
    assert f"{out} already exists; pass --overwrite to replace {out} and " \
           f"{out.with_suffix('.png')}" in _error_line(capsys)
    assert len(np.load(out)) == 500
    assert cli.main(["sample", str(run), "-n", "5", "--out", str(out), "--overwrite"]) == 0
    assert len(np.load(out)) == 5


def test_evaluate_a_file_in_the_units_of_a_built_in_dataset_run(run, tmp_path, capsys):
    from tfp_coupling import data

    np.save(tmp_path / "points.npy", data.load("two_moons", "test"))
    metrics = json.loads((run / "metrics.json").read_text())
    capsys.readouterr()
    assert cli.main(["evaluate", str(run), "--dataset", str(tmp_path / "points.npy"),
                     "--split", "all", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["nll"] == pytest.approx(metrics["test_nll"],
                                                                       abs=1e-4)


def test_an_interrupted_extension_is_not_evaluated_as_finished(tmp_path, monkeypatch, capsys):
    from tfp_coupling.checkpoint import AtomicCheckpoint

    assert _train(tmp_path, "r", "--epochs", "1") == 0
    run = tmp_path / "r"

    def interrupt(self, epoch, logs=None):
        raise KeyboardInterrupt

    monkeypatch.setattr(AtomicCheckpoint, "on_epoch_end", interrupt)
    assert cli.main(["train", "--resume", str(run), "--epochs", "2", "--quiet"]) == 130
    monkeypatch.undo()
    capsys.readouterr()
    for command in (["evaluate", str(run)], ["sample", str(run)], ["export", str(run)]):
        assert cli.main(command) == 1
        assert _error_line(capsys) == (f"tfp-coupling: error: run {run} is unfinished (no "
                                       f"metrics.json); complete it with tfp-coupling train "
                                       f"--resume {run}")
    # A run whose model.keras is lost is finished by --resume, not sent round in circles.
    assert cli.main(["train", "--resume", str(run), "--quiet"]) == 0
    (run / "model.keras").unlink()
    assert cli.main(["evaluate", str(run)]) == 1
    assert "is unfinished (no model.keras)" in _error_line(capsys)
    assert cli.main(["train", "--resume", str(run), "--quiet"]) == 0
    assert cli.main(["evaluate", str(run)]) == 0


def test_a_failed_start_leaves_no_run_folder(tmp_path, capsys):
    args = ["--lr", "1e30", "--clipnorm", "0", "--schedule", "constant", "--epochs", "2"]
    assert _train(tmp_path, "d", *args) == 1
    assert "non-finite loss" in _error_line(capsys)
    assert not (tmp_path / "d").exists()  # so that a retry with the same --name starts afresh
    assert _train(tmp_path, "d", "--epochs", "1") == 0


def test_invertible_backprop_trains_the_same_run_and_is_recorded(tmp_path):
    # Memory-saving gradients equal the stored ones, so the same seeded run ends at the same
    # weights; the mode is recorded, kept by the saved model and switchable on --resume.
    assert _train(tmp_path, "plain", "--epochs", "1", "--dataset", "rings") == 0
    assert _train(tmp_path, "saving", "--epochs", "1", "--dataset", "rings",
                  "--invertible-backprop") == 0
    plain, saving = (json.loads((tmp_path / n / "metrics.json").read_text())
                     for n in ("plain", "saving"))
    assert saving["config"]["invertible_backprop"] is True
    assert plain["config"]["invertible_backprop"] is False
    assert saving["test_nll"] == pytest.approx(plain["test_nll"], abs=1e-4)
    model = keras.models.load_model(tmp_path / "saving" / "model.keras", compile=False)
    assert model.invertible_backprop
    assert cli.main(["train", "--resume", str(tmp_path / "plain"), "--epochs", "2",
                     "--invertible-backprop", "--quiet"]) == 0
    config = json.loads((tmp_path / "plain" / "config.json").read_text())
    assert config["invertible_backprop"] is True


def test_vector_runs_keep_the_untrained_flow_unless_the_best_epoch_beats_it(tmp_path,
                                                                            monkeypatch, capsys):
    """``--selection best-or-start`` (vector models' default) scores the validation rows under
    the untrained flow and the best epoch and keeps the untrained one when
    ``gain_beats_noise`` says no: on a table that is the Gaussian fit, so the run's test NLL is
    the Gaussian's. ``--selection best`` keeps the best epoch without asking."""
    calls = []

    def no_gain(start_nll, best_nll, k=1.0):
        calls.append((start_nll, best_nll))
        return False

    monkeypatch.setattr(tasks, "gain_beats_noise", no_gain)
    table = tmp_path / "t.npy"
    np.save(table, np.random.default_rng(0).normal(size=(300, 3)) @ [[1.0, 0.5, 0], [0, 1, 0.3],
                                                                     [0, 0, 1]])
    assert _train(tmp_path, "kept", "--dataset", str(table), "--epochs", "2") == 0
    err = capsys.readouterr().err
    assert "note: kept the untrained flow" in err and "above the Gaussian" not in err
    metrics = json.loads((tmp_path / "kept" / "metrics.json").read_text())
    assert metrics["config"]["selection"] == "best-or-start"
    assert metrics["best_epoch"] >= 1 and metrics["chosen_epoch"] == 0
    assert metrics["test_nll"] == pytest.approx(metrics["gaussian_test_nll"], abs=1e-4)
    from tfp_coupling.cli.run_folder import load_run_data

    val = load_run_data(metrics["config"], "validation")
    (start_nll, best_nll), = calls
    assert start_nll.shape == best_nll.shape == (len(val.x),)
    assert not np.allclose(start_nll, best_nll)
    correction = val.info.log_det_correction
    assert float(np.mean(start_nll)) - correction == pytest.approx(metrics["val_nll"], abs=1e-4)

    assert _train(tmp_path, "best", "--dataset", str(table), "--epochs", "2",
                  "--selection", "best") == 0
    metrics = json.loads((tmp_path / "best" / "metrics.json").read_text())
    assert len(calls) == 1 and metrics["chosen_epoch"] == metrics["best_epoch"] >= 1
    assert abs(metrics["test_nll"] - metrics["gaussian_test_nll"]) > 1e-4
    capsys.readouterr()
    assert cli.main(["train", "--out", str(tmp_path), "--name", "img", "--model", "realnvp-image",
                     "--selection", "best-or-start"]) == 1
    assert "--selection best-or-start is for the vector models" in _error_line(capsys)
