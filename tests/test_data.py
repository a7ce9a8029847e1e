"""Datasets: the 2-D toy densities, tables (standardisation and its log-det), MNIST offline."""

from __future__ import annotations

import gzip
import math
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from shared_data import MNIST_DIR, needs_mnist

from tfp_coupling import data

# ------------------------------------------------------------------------------------------
# 2-D toy densities


@pytest.mark.parametrize("name", sorted(data.TOY_2D))
def test_toy_splits_shape_determinism_and_disjointness(name):
    splits = {s: data.load(name, s) for s in data.SPLITS}
    for s, x in splits.items():
        assert x.shape == (data.TOY_SIZES[s], 2) and x.dtype == np.float32
        assert np.all(np.isfinite(x))
    again = data.load(name, "test")
    np.testing.assert_array_equal(again, splits["test"])
    other_seed = data.load(name, "test", seed=1)
    assert not np.allclose(other_seed, splits["test"])
    train_rows = {r.tobytes() for r in splits["train"]}
    assert not any(r.tobytes() in train_rows for r in splits["test"])
    both = data.load(name, "all")
    np.testing.assert_array_equal(both, np.concatenate([splits[s] for s in data.SPLITS]))
    _, info = data.load(name, "train", with_info=True)
    assert info.kind == "toy2d" and info.event_shape == (2,)
    assert info.log_det_correction == 0.0 and not info.discrete
    assert data.load(name, "train", n=10).shape == (10, 2)


def test_toy_densities_have_their_shapes():
    r = np.linalg.norm(data.load("rings", "train"), axis=1)
    ring = np.round(r / 0.75)
    assert set(np.unique(ring)) == {1, 2, 3, 4}
    assert np.abs(r - 0.75 * ring).mean() < 0.1
    r = np.linalg.norm(data.load("circles", "train"), axis=1)
    assert np.mean(np.minimum(abs(r - 1), abs(r - 2)) < 0.3) > 0.97
    x = data.load("eight_gaussians", "train")
    angle = np.round(np.arctan2(x[:, 1], x[:, 0]) / (np.pi / 4)) % 8
    counts = np.bincount(angle.astype(int), minlength=8)
    assert counts.min() > 0.1 * len(x)
    np.testing.assert_allclose(np.linalg.norm(x, axis=1).mean(), 2 * math.sqrt(2), atol=0.1)
    x = data.load("checkerboard", "train")
    assert np.all(np.abs(x) <= 4)
    square = (np.floor(x[:, 0] / 2) + np.floor(x[:, 1] / 2)) % 2
    assert np.all(square == square[0])  # every point on one colour of the board
    x = data.load("two_spirals", "train")
    np.testing.assert_allclose(x.mean(axis=0), 0.0, atol=0.15)  # point-symmetric pair
    x = data.load("pinwheel", "train")
    assert np.abs(np.linalg.norm(x, axis=1).mean() - 2.0) < 0.5


def test_two_moons_keeps_its_signature():
    x = data.two_moons(100, noise=0.0, seed=3).astype(np.float64)
    r_upper = np.linalg.norm(x, axis=1)  # upper moon: unit circle about the origin
    r_lower = np.linalg.norm(x - [1.0, 0.5], axis=1)  # lower moon: unit circle about (1, 0.5)
    on_upper = np.isclose(r_upper, 1.0, atol=1e-5) & (x[:, 1] >= -1e-6)
    on_lower = np.isclose(r_lower, 1.0, atol=1e-5) & (x[:, 1] <= 0.5 + 1e-6)
    assert np.all(on_upper | on_lower) and on_upper.sum() == on_lower.sum() == 50
    np.testing.assert_array_equal(data.two_moons(5, seed=1), data.two_moons(5, seed=1))


def test_unknown_names_and_splits():
    with pytest.raises(ValueError, match=r"unknown dataset 'moons2'.*two_moons"):
        data.load("moons2")
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        data.load("two_moons", "dev")
    with pytest.raises(ValueError, match="positive integer"):
        data.load("rings", n=0)


# ------------------------------------------------------------------------------------------
# tables


def _write_csv(path: Path, x: np.ndarray, header: str | None = "a,b,c") -> Path:
    lines = ([header] if header else []) + [",".join(f"{v:.17g}" for v in row) for row in x]
    path.write_text("\n".join(lines) + "\n")
    return path


def _gaussian_table(n=500, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 3)) * np.array([0.5, 3.0, 10.0]) + np.array([1.0, -2.0, 40.0])


def test_csv_standardised_with_training_statistics(tmp_path):
    x = _gaussian_table()
    path = _write_csv(tmp_path / "t.csv", x)
    train, info = data.load(str(path), "train", with_info=True)
    val, test = data.load(str(path), "validation"), data.load(str(path), "test")
    assert info.kind == "tabular" and info.event_shape == (3,)
    assert (len(train), len(val), len(test)) == (400, 50, 50)
    np.testing.assert_allclose(train.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(train.std(axis=0), 1.0, atol=1e-5)
    raw_train = info.to_data_units(train).astype(np.float64)
    # The rows are the file's rows, and the statistics are those of the training rows only.
    nearest = np.abs(raw_train[:, None, :] - x[None, :, :]).max(axis=2).min(axis=1)
    assert nearest.max() < 1e-4
    np.testing.assert_allclose(info.shift, raw_train.mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(info.scale, raw_train.std(axis=0), rtol=1e-4)
    assert not np.allclose(info.scale, x.std(axis=0), rtol=1e-6)  # not the whole file's
    np.testing.assert_allclose(info.log_det_correction, -np.log(info.scale).sum())


def test_standardisation_correction_gives_the_density_in_data_units(tmp_path):
    # A "model" that is exactly N(0, I) in model units is the Gaussian N(shift, diag scale^2)
    # in data units: log p_data(x) = log N(z; 0, I) - sum(log scale).
    x = _gaussian_table()
    path = _write_csv(tmp_path / "t.csv", x, header=None)
    z, info = data.load(str(path), "test", with_info=True)
    log_p_model = -0.5 * (z.astype(np.float64) ** 2).sum(1) - 1.5 * math.log(2 * math.pi)
    log_p_data = info.log_prob_to_data_units(log_p_model)
    raw = info.to_data_units(z).astype(np.float64)
    expected = (-0.5 * (((raw - info.shift) / info.scale) ** 2).sum(1)
                - np.log(info.scale).sum() - 1.5 * math.log(2 * math.pi))
    np.testing.assert_allclose(log_p_data, expected, rtol=1e-5)
    # Doubling the data's units lowers every log-density by D log 2.
    path2 = _write_csv(tmp_path / "t2.csv", 2 * x, header=None)
    _, info2 = data.load(str(path2), "test", with_info=True)
    np.testing.assert_allclose(info.log_det_correction - info2.log_det_correction,
                               3 * math.log(2), rtol=1e-6)


def test_npy_tables_and_reused_statistics(tmp_path):
    x = _gaussian_table()
    np.save(tmp_path / "t.npy", x)
    np.save(tmp_path / "shifted.npy", x + 100.0)
    a, info = data.load(str(tmp_path / "t.npy"), "train", with_info=True)
    b, info_b = data.load(str(tmp_path / "shifted.npy"), "train", standardization=info,
                          with_info=True)
    np.testing.assert_allclose(b - a, np.broadcast_to(100.0 / info.scale, a.shape), rtol=1e-5)
    np.testing.assert_array_equal(info_b.scale, info.scale)
    raw, info_raw = data.load(str(tmp_path / "t.npy"), "all", normalize=False, with_info=True)
    np.testing.assert_allclose(np.sort(raw, axis=0), np.sort(x, axis=0).astype(np.float32))
    assert info_raw.log_det_correction == 0.0


@pytest.mark.parametrize("content, match", [
    ("a,b\n1,2\n3,nan\n" + "1,2\n" * 10, r"NaN/inf value\(s\), first at data row 2, column 2"),
    ("a,b\n1,2\n3,\n" + "1,2\n" * 10, r"line 3, column 2: '' is not a number"),
    ("1,2\n3,x\n" + "1,2\n" * 10, r"line 2, column 2: 'x' is not a number"),
    ("1,2\n3,4,5\n" + "1,2\n" * 10, "line 2 has 3 columns, expected 2"),
    ("1,2\n3,4\n", "2 rows; need at least 10"),
    ("a,b\n", "no data rows"),
    ("".join(f"{i},5\n" for i in range(20)), r"column\(s\) 2 are constant"),
])
def test_bad_csv_files_name_the_problem(tmp_path, content, match):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(ValueError, match=match):
        data.load(str(path))


@pytest.mark.parametrize("shape", [(50,), (20, 3, 2)])
def test_npy_of_wrong_shape(tmp_path, shape):
    np.save(tmp_path / "x.npy", np.ones(shape))
    with pytest.raises(ValueError, match=r"expected a 2-D array \[examples, features\]"):
        data.load(str(tmp_path / "x.npy"))


def test_missing_table_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"data file not found: .*nope\.csv"):
        data.load(str(tmp_path / "nope.csv"))


# ------------------------------------------------------------------------------------------
# images


@needs_mnist
def test_mnist_offline_from_the_shared_test_file():
    raw = data.read_idx(MNIST_DIR / "t10k-images-idx3-ubyte.gz")
    splits = {}
    for s in data.SPLITS:
        splits[s], info = data.load("mnist", s, data_dir=MNIST_DIR, with_info=True)
    assert {s: len(x) for s, x in splits.items()} == {"train": 7000, "validation": 1000,
                                                       "test": 2000}
    assert info.sizes == {"train": 7000, "validation": 1000, "test": 2000}
    assert info.kind == "image" and info.discrete and info.event_shape == (28, 28, 1)
    np.testing.assert_array_equal(splits["train"][..., 0] * 256, raw[:7000])
    np.testing.assert_array_equal(splits["validation"][..., 0] * 256, raw[7000:8000])
    np.testing.assert_array_equal(splits["test"][..., 0] * 256, raw[8000:])
    assert splits["test"].max() < 1.0 and info.bin_width == 1 / 256
    np.testing.assert_allclose(info.log_det_correction, -784 * math.log(256))
    # bits/dim of the data-unit NLL: D log(256) nats of a uniform density = 8 bits per pixel.
    assert info.bits_per_dim(784 * math.log(256)) == pytest.approx(8.0)
    deq = info.dequantize(splits["test"][:5], np.random.default_rng(0))
    assert np.all(deq >= splits["test"][:5]) and np.all(deq < splits["test"][:5] + 1 / 256)
    # The parent folder (holding mnist/) works too, and normalize=False keeps pixel values.
    x, info_raw = data.load("mnist", "test", data_dir=MNIST_DIR.parent, normalize=False,
                            with_info=True)
    np.testing.assert_array_equal(x[..., 0], raw[8000:])
    assert info_raw.log_det_correction == 0.0 and info_raw.bin_width == 1.0


def test_idx_folder_with_a_training_file(tmp_path):
    rng = np.random.default_rng(0)
    train = rng.integers(0, 256, (200, 4, 4), dtype=np.uint8)
    test = rng.integers(0, 256, (30, 4, 4), dtype=np.uint8)
    for name, arr in (("train", train), ("t10k", test)):
        header = bytes([0, 0, 8, 3]) + b"".join(d.to_bytes(4, "big") for d in arr.shape)
        with gzip.open(tmp_path / f"{name}-images-idx3-ubyte.gz", "wb") as f:
            f.write(header + arr.tobytes())
    x, info = data.load("fashion_mnist", "validation", data_dir=tmp_path, normalize=False,
                        with_info=True)
    np.testing.assert_array_equal(x[..., 0], train[180:])
    assert info.sizes == {"train": 180, "validation": 20, "test": 30}
    np.testing.assert_array_equal(data.load("fashion_mnist", "test", data_dir=tmp_path,
                                            normalize=False)[..., 0], test)


def _write_idx(path: Path, arr: np.ndarray) -> None:
    header = bytes([0, 0, 8, arr.ndim]) + b"".join(d.to_bytes(4, "big") for d in arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


def test_labels_come_split_as_the_images(tmp_path):
    rng = np.random.default_rng(0)
    for name, n in (("train", 200), ("t10k", 30)):
        _write_idx(tmp_path / f"{name}-images-idx3-ubyte.gz", np.zeros((n, 4, 4)))
        _write_idx(tmp_path / f"{name}-labels-idx1-ubyte.gz", rng.integers(0, 10, n))
    train = data.read_idx(tmp_path / "train-labels-idx1-ubyte.gz")
    np.testing.assert_array_equal(data.load_labels("mnist", "validation", data_dir=tmp_path),
                                  train[180:])
    assert len(data.load_labels("mnist", "all", data_dir=tmp_path)) == 230
    assert data.load_labels("mnist", "test", data_dir=tmp_path).dtype == np.int64
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.full(29, 3))
    with pytest.raises(ValueError, match=r"expected 30 labels \(one per image of "
                                         r"t10k-images-idx3-ubyte.gz\), got shape \[29\]"):
        data.load_labels("mnist", data_dir=tmp_path)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.full(30, 10))
    with pytest.raises(ValueError, match=r"test split holds label 10, outside 0\.\.9"):
        data.load_labels("mnist", data_dir=tmp_path)
    (tmp_path / "train-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError, match="expected train-labels-idx1-ubyte"):
        data.load_labels("mnist", data_dir=tmp_path)
    with pytest.raises(ValueError, match="'two_moons' has no class labels"):
        data.load_labels("two_moons")


def test_labels_from_tensorflow_datasets(monkeypatch):
    def fake_load(name, split, batch_size):
        n = {"train[:90%]": 9, "train[90%:]": 1, "test": 4}[split]
        return {"image": np.zeros((n, 2, 2, 1), np.uint8), "label": np.arange(n) % 10}

    monkeypatch.delenv(data.DATA_DIR_ENV, raising=False)
    monkeypatch.setitem(sys.modules, "tensorflow_datasets",
                        types.SimpleNamespace(load=fake_load, as_numpy=lambda x: x))
    np.testing.assert_array_equal(data.load_labels("cifar10", "test"), [0, 1, 2, 3])
    assert len(data.load_labels("cifar10", "train")) == len(data.load("cifar10", "train")) == 9


@needs_mnist
def test_mnist_labels_match_the_shared_images():
    labels = data.load_labels("mnist", "train", data_dir=MNIST_DIR)
    assert len(labels) == len(data.load("mnist", "train", data_dir=MNIST_DIR)) == 7000
    assert labels[:5].tolist() == [7, 2, 1, 0, 4]  # MNIST's first test digits
    assert np.bincount(labels, minlength=10).min() > 500


def test_idx_folder_problems(tmp_path):
    with pytest.raises(FileNotFoundError, match="data folder not found"):
        data.load("mnist", data_dir=tmp_path / "absent")
    with pytest.raises(FileNotFoundError, match=r"no mnist IDX files in .*t10k-images-idx3-ubyte"):
        data.load("mnist", data_dir=tmp_path)
    labels = np.arange(20, dtype=np.uint8)
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(
        bytes([0, 0, 8, 1]) + (20).to_bytes(4, "big") + labels.tobytes())
    with pytest.raises(ValueError, match=r"expected uint8 images of shape \[N, H, W\]"):
        data.load("mnist", data_dir=tmp_path)
    with pytest.raises(ValueError, match="cifar10 install tensorflow-datasets"):
        data.load("cifar10", data_dir=tmp_path)


def test_without_tensorflow_datasets_the_message_says_what_to_install(monkeypatch):
    monkeypatch.delenv(data.DATA_DIR_ENV, raising=False)
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # import fails
    with pytest.raises(ValueError) as e:
        data.load("mnist")
    message = str(e.value)
    assert "tensorflow-datasets is not installed" in message
    assert "pip install 'tfp-coupling[data]'" in message
    assert "data_dir" in message and "t10k-images-idx3-ubyte.gz" in message


def test_tensorflow_datasets_failing_offline(monkeypatch):
    def failing_load(*args, **kwargs):
        raise ConnectionError("Failed to resolve 'storage.googleapis.com'")

    monkeypatch.delenv(data.DATA_DIR_ENV, raising=False)
    monkeypatch.setitem(sys.modules, "tensorflow_datasets",
                        types.SimpleNamespace(load=failing_load, as_numpy=lambda x: x))
    with pytest.raises(ValueError, match=r"cannot load 'cifar10' from tensorflow-datasets "
                                         r"\(ConnectionError: Failed to resolve") as e:
        data.load("cifar10")
    assert "needs network the first time" in str(e.value)


@needs_mnist
def test_data_dir_from_the_environment(monkeypatch):
    monkeypatch.setenv(data.DATA_DIR_ENV, str(MNIST_DIR))
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)
    assert data.load("mnist", "test", n=3).shape == (3, 28, 28, 1)


def test_dataset_info_json_round_trip():
    x, info = data.load("two_moons", "test", with_info=True)
    back = data.DatasetInfo.from_json(info.to_json())
    assert back.event_shape == info.event_shape and back.kind == info.kind
    np.testing.assert_array_equal(back.to_model_units(x), x)


# ------------------------------------------------------------------------------------------
# tables: numbers that must not be silently wrong


def _timestamp_table(tmp_path, n: int = 400) -> Path:
    rng = np.random.default_rng(0)
    x = np.stack([1.7e9 + rng.normal(0.0, 100.0, n), rng.normal(size=n),
                  rng.integers(0, 5, n).astype(float)], axis=1)
    np.save(tmp_path / "stamps.npy", x)
    return tmp_path / "stamps.npy"


def test_a_large_offset_column_keeps_its_resolution(tmp_path):
    path = _timestamp_table(tmp_path)
    x, info = data.load(str(path), "train", with_info=True)
    # Reloading with the saved statistics (as resume and evaluate do) gives the same values,
    # not values rounded through float32 data units (spacing 128 at 1.7e9).
    again = data.load(str(path), "train", standardization=info)
    np.testing.assert_allclose(again, x, atol=1e-6)
    assert len(np.unique(again[:, 0])) == len(x)
    back = info.to_data_units(x)
    assert back.dtype == np.float64 and len(np.unique(back[:, 0])) == len(x)
    raw = np.load(path)
    order = np.random.default_rng(0).permutation(len(raw))  # load's split of the rows
    np.testing.assert_allclose(back, raw[order[:len(x)]], rtol=0, atol=1e-3)
    small = data.load("two_moons", "test", with_info=True)[1]
    assert small.to_data_units(np.zeros((1, 2))).dtype == np.float32  # ordinary data: float32


def test_integer_columns_are_recorded(tmp_path):
    info = data.load(str(_timestamp_table(tmp_path)), with_info=True)[1]
    assert info.integer_columns == (2,)
    assert data.DatasetInfo.from_json(info.to_json()).integer_columns == (2,)


def test_a_column_constant_up_to_rounding_error_is_refused(tmp_path):
    rng = np.random.default_rng(0)
    x = np.stack([rng.normal(size=50), np.where(rng.random(50) < 0.5, 0.1 + 0.2, 0.3)], axis=1)
    assert 0 < x[:, 1].std() < 1e-16  # 0.30000000000000004 and 0.3
    np.save(tmp_path / "x.npy", x)
    with pytest.raises(ValueError, match=r"column\(s\) 2 are constant in the training split "
                                         r"\(up to rounding error\)"):
        data.load(str(tmp_path / "x.npy"))


def test_values_beyond_float32_in_model_units_are_named(tmp_path):
    np.savetxt(tmp_path / "big.csv", np.full((20, 2), 1e39), delimiter=",")
    unit = data.load("two_moons", with_info=True)[1]  # shift 0, scale 1
    with pytest.raises(ValueError, match=r"value 1e\+39 \(train split, column 1\) is beyond "
                                         r"float32's range"):
        data.load(str(tmp_path / "big.csv"), standardization=unit)


def test_a_folder_is_not_a_missing_file(tmp_path):
    (tmp_path / "d.csv").mkdir()
    with pytest.raises(ValueError, match=r"d\.csv is a folder; give the path of a \.npy or "
                                         r"\.csv file"):
        data.load(str(tmp_path / "d.csv"))


@pytest.mark.parametrize("content, reason", [
    (b"garbage, not gzip", r"BadGzipFile: Not a gzipped file"),
    (gzip.compress(np.random.default_rng(0).bytes(4000))[:2000],
     r"EOFError: Compressed file ended"),
])
def test_broken_gzip_files_name_the_file(tmp_path, content, reason):
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(content)
    with pytest.raises(ValueError, match=r"t10k-images-idx3-ubyte\.gz: not a complete gzip file "
                                         rf"\({reason}.*\); download it again"):
        data.load("mnist", data_dir=tmp_path)


def test_a_broken_tensorflow_datasets_is_not_called_missing(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def broken(name, *args, **kwargs):
        if name == "tensorflow_datasets":
            raise ModuleNotFoundError("No module named 'importlib_resources'",
                                      name="importlib_resources")
        return real_import(name, *args, **kwargs)

    monkeypatch.delenv(data.DATA_DIR_ENV, raising=False)
    monkeypatch.setattr(builtins, "__import__", broken)
    with pytest.raises(ValueError, match=r"tensorflow-datasets is installed but does not import "
                                         r"\(ModuleNotFoundError: No module named "
                                         r"'importlib_resources'\); repair it, e\.g\. pip install "
                                         r"importlib_resources"):
        data.load("mnist")
