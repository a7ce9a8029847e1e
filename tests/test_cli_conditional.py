"""Conditional runs of the command line: ``--context-columns`` on tables, ``--conditional`` on
MNIST labels, and what evaluate, sample, export and ``--resume`` make of them."""

from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest
from shared_data import MNIST_DIR, needs_mnist
from test_cli import _error_line, _train
from without_package import PREAMBLE, run_child

from tfp_coupling import cli, data
from tfp_coupling.cli import tasks

SEED = 1
FAST = ["--epochs", "10", "--lr", "3e-3", "--batch-size", "32", "--seed", str(SEED)]


def _shifted_table(folder: Path) -> tuple[Path, Path]:
    """``shift`` (a whole number 0..4, column 2) moves ``x1, x2`` by 3 * shift: most of their
    spread is the shift's, so ``p(x | shift)`` is far narrower than ``p(x)``. The same rows
    without the shift column go to a second file (same row count: the same splits)."""
    rng = np.random.default_rng(0)
    n = 800
    shift = rng.integers(0, 5, n).astype(float)
    x1 = 3 * shift + rng.normal(size=n)
    x2 = -3 * shift + 0.5 * x1 + rng.normal(size=n)
    with_context, without = folder / "shifted.csv", folder / "plain.csv"
    with_context.write_text("x1,shift,x2\n" + "".join(
        f"{a:.6f},{s:.0f},{b:.6f}\n" for a, s, b in zip(x1, shift, x2, strict=True)))
    without.write_text("x1,x2\n" + "".join(
        f"{a:.6f},{b:.6f}\n" for a, b in zip(x1, x2, strict=True)))
    return with_context, without


@pytest.fixture(scope="module")
def table_runs(tmp_path_factory):
    """A conditional run (context: the shift column, by name) and an unconditional run on
    the same x columns, both 10 epochs."""
    folder = tmp_path_factory.mktemp("tables")
    with_context, without = _shifted_table(folder)
    runs = folder / "runs"
    assert _train(runs, "cond", "--dataset", str(with_context), "--context-columns", "shift",
                  *FAST) == 0
    assert _train(runs, "plain", "--dataset", str(without), *FAST) == 0
    return runs / "cond", runs / "plain", with_context


def test_conditional_table_run_records_its_context(table_runs):
    cond, _, table = table_runs
    config = json.loads((cond / "config.json").read_text())
    context = config["context"]
    assert context["kind"] == "columns" and context["columns"] == [1]
    assert context["names"] == ["shift"]
    # The context's own standardisation (training split), saved beside the data's.
    c_info = data.DatasetInfo.from_json(context["data"])
    x = data.load(str(table), "train", seed=SEED, normalize=False)
    np.testing.assert_allclose(c_info.shift, [x[:, 1].mean()], rtol=1e-6)
    np.testing.assert_allclose(c_info.scale, [x[:, 1].std()], rtol=1e-5)
    assert config["event_size"] == 2
    np.testing.assert_allclose(data.DatasetInfo.from_json(config["data"]).shift,
                               x[:, [0, 2]].mean(axis=0), rtol=1e-5)
    model = keras.models.load_model(cond / "model.keras", compile=False)
    assert model.context_shape == (1,)


def test_the_context_lowers_the_evaluated_nll(table_runs, capsys):
    cond, plain, _ = table_runs
    nll = {}
    for run in (cond, plain):
        capsys.readouterr()
        assert cli.main(["evaluate", str(run), "--json"]) == 0
        result = json.loads(capsys.readouterr().out)
        metrics = json.loads((run / "metrics.json").read_text())
        assert result["nll"] == pytest.approx(metrics["test_nll"], abs=1e-4)
        nll[run.name] = result["nll"]
        nll[f"gaussian {run.name}"] = metrics["gaussian_test_nll"]
    # Both in the units of x1, x2: knowing the shift is worth about 1.6 nats (log 5 less overlap).
    assert nll["cond"] < nll["plain"] - 0.8, nll
    # The conditional run's baseline is the Gaussian of x given the shift (here the true model
    # class), not of x alone: as much better, and what the joint Gaussian fit's conditional
    # (the Schur complement, computed here on the rows in x's own units) says.
    assert nll["gaussian cond"] < nll["gaussian plain"] - 0.8, nll
    config = json.loads((cond / "config.json").read_text())
    joint = {}
    for split in ("train", "test"):
        d = tasks.load_run_data(config, split)  # the context standardised: the same conditional
        joint[split] = np.hstack([d.info.to_data_units(d.x).astype(np.float64), d.context])
    mean = joint["train"].mean(0)
    cov = np.cov(joint["train"], rowvar=False, bias=True)
    sxx, sxc, scc = cov[:2, :2], cov[:2, 2:], cov[2:, 2:]
    gain = sxc @ np.linalg.inv(scc)
    resid = joint["test"][:, :2] - mean[:2] - (joint["test"][:, 2:] - mean[2:]) @ gain.T
    s = sxx - gain @ sxc.T
    want = np.mean(0.5 * (np.einsum("ni,ij,nj->n", resid, np.linalg.inv(s), resid)
                          + np.linalg.slogdet(s)[1] + 2 * np.log(2 * np.pi)))
    assert nll["gaussian cond"] == pytest.approx(want, abs=1e-4)


def test_sample_takes_a_context_in_the_data_units(table_runs, tmp_path, capsys):
    cond, _, _ = table_runs
    out = tmp_path / "s.npy"
    assert cli.main(["sample", str(cond), "-n", "400", "--context", "4", "--out",
                     str(out)]) == 0
    rows = np.load(out)
    assert rows.shape == (400, 3) and (tmp_path / "s.png").is_file()
    np.testing.assert_allclose(rows[:, 1], 4.0, atol=1e-4)  # whole rows, the context in place
    assert abs(rows[:, 0].mean() - 12.0) < 1.5 and abs(rows[:, 2].mean() + 6.0) < 1.5
    # By default each draw takes a test row's context in turn.
    assert cli.main(["sample", str(cond), "-n", "200", "--out", str(tmp_path / "d.npy")]) == 0
    default = np.load(tmp_path / "d.npy")
    test = np.asarray(data.load(json.loads((cond / "config.json").read_text())["dataset"],
                                "test", seed=SEED, normalize=False))
    np.testing.assert_allclose(default[:, 1], test[np.arange(200) % len(test), 1], atol=1e-4)
    capsys.readouterr()
    assert cli.main(["sample", str(cond), "--context", "1,2", "--out",
                     str(tmp_path / "e.npy")]) == 1
    assert "--context must be 1 finite number(s) for shift" in _error_line(capsys)


def test_export_takes_the_standardised_context(table_runs, tmp_path, capsys):
    import tensorflow as tf

    cond, _, _ = table_runs
    assert cli.main(["export", str(cond), "--out", str(tmp_path / "flow")]) == 0
    assert "context [N, 1]: standardised shift" in capsys.readouterr().out
    loaded = tf.saved_model.load(str(tmp_path / "flow"))
    model = keras.models.load_model(cond / "model.keras", compile=False)
    x = np.array([[0.1, 0.2], [1.0, -1.0]], np.float32)
    c = np.array([[-0.5], [1.2]], np.float32)
    np.testing.assert_allclose(loaded.log_prob(x, c), model.log_prob(x, c), atol=1e-5)


def test_resume_keeps_the_context(table_runs, tmp_path, capsys):
    cond, _, _ = table_runs
    run = tmp_path / "cond"
    shutil.copytree(cond, run)
    assert cli.main(["train", "--resume", str(run), "--context-columns", "1", "--epochs",
                     "11"]) == 1
    assert "cannot change --context-columns" in _error_line(capsys)
    assert cli.main(["train", "--resume", str(run), "--context-columns", "2", "--epochs", "11",
                     "--quiet"]) == 0  # column 2 is "shift": the same context
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["history"]["epoch"] == list(range(1, 12))
    assert metrics["config"]["context"]["columns"] == [1]
    assert keras.models.load_model(run / "model.keras", compile=False).context_shape == (1,)


@pytest.mark.parametrize("args, message", [
    (["--context-columns", "nope"], "--context-columns: {table}: no column 'nope'; give names "
                                    "x1, shift, x2 or numbers 1..3"),
    (["--context-columns", "4"], "no column '4'"),
    (["--context-columns", "x1,shift,x2"], "lists all 3 columns of"),
    (["--context-columns", "x1,x2"], "lists all but 1 of the 3 columns"),
    (["--context-columns", "shift,2"], "names a column twice"),
    (["--context-columns", "shift", "--conditional"], "exclude each other"),
    (["--conditional"], "--conditional conditions on class labels"),
    (["--dataset", "two_moons", "--context-columns", "1"],
     "--context-columns needs a table (a .csv or .npy file); 'two_moons' is a built-in 2-D"),
])
def test_bad_context_options(tmp_path, capsys, args, message):
    table, _ = _shifted_table(tmp_path)
    args = ["--dataset", str(table), *args] if "--dataset" not in args else args
    assert _train(tmp_path / "runs", "x", *args) == 1
    assert message.format(table=table) in _error_line(capsys)
    assert not (tmp_path / "runs" / "x").exists()


def test_only_modelled_integer_columns_get_the_continuity_note(tmp_path, capsys):
    from tfp_coupling.cli import commands

    table, _ = _shifted_table(tmp_path)
    _, info = data.load(str(table), with_info=True)
    commands._check_vectors(info, str(table), False, [1])  # "shift" is only conditioned on
    assert capsys.readouterr().err == ""
    commands._check_vectors(info, str(table), False)
    assert f"column(s) 2 of {table} hold whole numbers" in capsys.readouterr().err


def test_context_on_an_unconditional_run_is_refused(table_runs, tmp_path, capsys):
    _, plain, _ = table_runs
    assert cli.main(["sample", str(plain), "--context", "1", "--out",
                     str(tmp_path / "s.npy")]) == 1
    assert "this run is unconditional" in _error_line(capsys)


# --------------------------------------------------------------------------------------------
# MNIST


def _small_mnist(folder: Path, n: int = 400) -> Path:
    """The first ``n`` test images and labels of the real MNIST as a new IDX folder."""
    import gzip

    for kind, header in (("images", 16), ("labels", 8)):
        with gzip.open(MNIST_DIR / f"t10k-{kind}-idx{3 if kind == 'images' else 1}-ubyte.gz",
                       "rb") as f:
            raw = f.read()
        size = 784 if kind == "images" else 1
        head = bytearray(raw[:header])
        head[4:8] = n.to_bytes(4, "big")
        with gzip.open(folder / f"t10k-{kind}-idx{3 if kind == 'images' else 1}-ubyte.gz",
                       "wb") as f:
            f.write(bytes(head) + raw[header:header + n * size])
    return folder


_CHILD = PREAMBLE + textwrap.dedent("""
    import numpy as np
    import tensorflow as tf

    path, inputs, out = sys.argv[1:4]
    d = np.load(inputs)
    m = tf.saved_model.load(path)
    np.savez(out, log_prob=m.log_prob(d["x"], d["c"]).numpy(),
             sample=m.sample(d["c"], 1.0, 3).numpy())
""")


@needs_mnist
def test_class_conditional_mnist_run(tmp_path, capsys):
    (tmp_path / "mnist").mkdir()
    folder = _small_mnist(tmp_path / "mnist")
    # A flattened NICE (a realnvp-image run works the same, at ten times the tracing time).
    assert _train(tmp_path / "runs", "m", "--dataset", "mnist", "--data-dir", str(folder),
                  "--model", "nice", "--conditional", "--couplings", "2", "--hidden", "8",
                  "--epochs", "1", "--batch-size", "100") == 0
    run = tmp_path / "runs" / "m"
    config = json.loads((run / "config.json").read_text())
    assert config["context"] == {"kind": "class", "classes": 10, "dataset": "mnist"}
    assert (run / "samples.png").is_file()
    capsys.readouterr()
    assert cli.main(["evaluate", str(run), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["examples"] == 80 and 0 < result["bits_per_dim"] < 8
    # Per-class draws: -n per class, class by class; a grid with one row per class.
    assert cli.main(["sample", str(run), "-n", "3", "--out", str(tmp_path / "s.npy")]) == 0
    draws = np.load(tmp_path / "s.npy")
    assert draws.shape == (30, 28, 28, 1)
    assert not np.allclose(draws[0], draws[3])  # same base noise, another class
    assert (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"
    assert cli.main(["sample", str(run), "-n", "3", "--context", "1", "--out",
                     str(tmp_path / "one.npy")]) == 0
    np.testing.assert_allclose(np.load(tmp_path / "one.npy"), draws[3:6], atol=1e-4)

    # The exported SavedModel takes one-hot classes, and loads without the package.
    model = keras.models.load_model(run / "model.keras", compile=False)
    x = data.load("mnist", "test", data_dir=folder, n=4).reshape(4, -1)
    c = np.eye(10, dtype=np.float32)[data.load_labels("mnist", "test", data_dir=folder, n=4)]
    np.savez(tmp_path / "in.npz", x=x, c=c)
    run_child(_CHILD, tmp_path, run / "saved_model", tmp_path / "in.npz", tmp_path / "out.npz")
    out = np.load(tmp_path / "out.npz")
    np.testing.assert_allclose(out["log_prob"], model.log_prob(x, c), rtol=1e-5, atol=1e-3)
    assert out["sample"].shape == (4, 784)
    # The image flow a realnvp-image run builds takes the same one-hot context.
    config.update(model="realnvp-image", image_shape=[28, 28, 1], hidden_units=[4],
                  couplings=1)
    assert tasks.build_model(config).context_shape == (10,)


@needs_mnist
def test_missing_labels_and_unsupported_models(tmp_path, capsys):
    folder = tmp_path / "mnist"
    folder.mkdir()
    shutil.copy(MNIST_DIR / "t10k-images-idx3-ubyte.gz", folder)
    assert _train(tmp_path / "runs", "x", "--dataset", "mnist", "--data-dir", str(folder),
                  "--model", "nice", "--conditional") == 1
    assert (f"no class labels for {folder / 't10k-images-idx3-ubyte.gz'}: expected "
            f"t10k-labels-idx1-ubyte[.gz] beside it") in _error_line(capsys)
    assert _train(tmp_path / "runs", "x", "--dataset", "mnist", "--data-dir", str(MNIST_DIR),
                  "--model", "nice-image", "--conditional") == 1
    assert "--conditional works with --model realnvp-image, nice or realnvp" in \
        _error_line(capsys)
    assert not (tmp_path / "runs" / "x").exists()
