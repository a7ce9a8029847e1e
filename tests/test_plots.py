"""PNG plots: written atomically, showing what they are given, refusing wrong shapes."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("matplotlib")
from matplotlib.image import imread

from tfp_coupling import plots


def _png(path):
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return imread(path)


def _only_file(folder, name):
    assert sorted(p.name for p in folder.iterdir()) == [name]  # no temporary files left


def test_density_plot_evaluates_the_density_on_a_grid_over_the_bounds(tmp_path):
    calls = []

    def log_prob(points):
        calls.append(points)
        return -0.5 * (points ** 2).sum(axis=1) - np.log(2 * np.pi)

    x = np.random.default_rng(0).normal(size=(300, 2))
    path = plots.density_plot(log_prob, x, x[::-1], tmp_path / "d.png", bounds=(-3, 2, -1, 4),
                              grid_size=50)
    assert path == tmp_path / "d.png"
    _only_file(tmp_path, "d.png")
    (grid,) = calls
    assert grid.shape == (2500, 2) and grid.dtype == np.float32
    np.testing.assert_allclose(grid.min(axis=0), [-3, -1])
    np.testing.assert_allclose(grid.max(axis=0), [2, 4])
    image = _png(path)
    assert image.shape[0] > 300 and image.shape[1] > 1000
    assert image[..., :3].std() > 0.05  # not a blank canvas


def test_density_plot_default_bounds_cover_the_data(tmp_path):
    seen = []

    def log_prob(points):
        seen.append(points)
        return np.zeros(len(points))

    x = np.random.default_rng(1).uniform([10, -5], [12, -4], size=(400, 2))
    plots.density_plot(log_prob, x, x, tmp_path / "d.png", grid_size=20)
    lo, hi = seen[0].min(axis=0), seen[0].max(axis=0)
    assert np.all(lo < x.min(axis=0) + 0.05) and np.all(hi > x.max(axis=0) - 0.05)
    assert np.all(lo > x.min(axis=0) - 1) and np.all(hi < x.max(axis=0) + 1)


def test_density_plot_rejects_non_2d_points_and_leaves_nothing(tmp_path):
    with pytest.raises(ValueError, match=r"needs 2-D points \[N, 2\]; samples has shape"):
        plots.density_plot(lambda p: np.zeros(len(p)), np.zeros((5, 2)), np.zeros((5, 3)),
                           tmp_path / "d.png")

    def broken(points):
        raise RuntimeError("model failed")

    with pytest.raises(RuntimeError):
        plots.density_plot(broken, np.zeros((5, 2)), np.zeros((5, 2)), tmp_path / "d.png")
    assert list(tmp_path.iterdir()) == []


def test_sample_grid_shows_the_images(tmp_path):
    images = np.zeros((6, 8, 8, 1))
    images[0] = 255.0  # one white image among black ones
    path = plots.sample_grid(images, tmp_path / "g.png", ncols=3, value_range=(0, 255))
    _only_file(tmp_path, "g.png")
    image = _png(path)[..., :3]
    assert (image > 0.95).mean() > 0.05 and (image < 0.05).mean() > 0.2
    with pytest.raises(ValueError, match=r"needs images \[N, H, W, 1 or 3\]"):
        plots.sample_grid(np.zeros((2, 8, 8, 2)), tmp_path / "bad.png")


def test_scatter_plot_and_training_curve(tmp_path):
    x = np.random.default_rng(0).normal(size=(100, 4))
    _png(plots.scatter_plot(x, x + 1, tmp_path / "s.png", dims=(1, 3)))
    with pytest.raises(ValueError, match="D > 4"):
        plots.scatter_plot(x, x, tmp_path / "s2.png", dims=(0, 4))
    curve = plots.training_curve({"train": [3.0, 2.0, 1.5], "val": [3.1, 2.2, 1.9]},
                                 tmp_path / "c.png")
    _png(curve)
    with pytest.raises(ValueError, match="no values"):
        plots.training_curve({"train": []}, tmp_path / "c2.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.png", "s.png"]


def test_training_curve_draws_reference_levels(tmp_path, monkeypatch):
    drawn = {}
    save = plots._save

    def keep(fig, path):
        drawn["lines"] = {line.get_label(): line.get_ydata() for line in fig.axes[0].get_lines()}
        return save(fig, path)

    monkeypatch.setattr(plots, "_save", keep)
    _png(plots.training_curve({"val": [3.1, 2.2, 1.9]}, tmp_path / "c.png",
                              references={"Gaussian fit": 2.5}))
    assert set(drawn["lines"]) == {"val", "Gaussian fit"}
    assert np.all(np.asarray(drawn["lines"]["Gaussian fit"]) == 2.5)  # a level line
