"""PNG plots of what a flow learned: 2-D densities, sample grids, scatter plots, training curves.

Matplotlib (the ``plot`` extra) draws on the Agg canvas through ``matplotlib.figure.Figure``;
pyplot and the global backend are never touched, so these work headless and inside other
programs. Every function writes its PNG atomically (a temporary file renamed into place) and
returns the path.

Example:
    >>> import numpy as np
    >>> from tfp_coupling import plots
    >>> x = np.random.default_rng(0).normal(size=(500, 2))
    >>> def log_prob(p):  # a standard normal density
    ...     return -0.5 * (p ** 2).sum(-1) - np.log(2 * np.pi)
    >>> plots.density_plot(log_prob, x, x, "/tmp/density.png")  # doctest: +SKIP
    PosixPath('/tmp/density.png')
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from tfp_coupling import atomic

__all__ = ["density_plot", "flow_sample_grid", "sample_grid", "scatter_plot", "training_curve"]


def _figure(width: float, height: float):
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError("plots need matplotlib: pip install 'tfp-coupling[plot]'") from None
    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    atomic.write_with(path, lambda tmp: fig.savefig(tmp, format="png"), suffix=".png")
    return path


def _bounds(*arrays: np.ndarray, margin: float = 0.1) -> tuple[float, float, float, float]:
    pts = np.concatenate([np.asarray(a, np.float64).reshape(-1, 2) for a in arrays])
    pts = pts[np.all(np.isfinite(pts), axis=1)]
    lo, hi = np.percentile(pts, 0.5, axis=0), np.percentile(pts, 99.5, axis=0)
    pad = margin * (hi - lo) + 1e-3
    return float(lo[0] - pad[0]), float(hi[0] + pad[0]), float(lo[1] - pad[1]), float(
        hi[1] + pad[1])


def density_plot(
    log_prob_fn: Callable[[np.ndarray], np.ndarray],
    data: np.ndarray,
    samples: np.ndarray,
    path: str | Path,
    *,
    bounds: Sequence[float] | None = None,
    grid_size: int = 200,
    title: str | None = None,
) -> Path:
    """Three panels for a 2-D density: the data, the learned density ``p(x)``, model samples.

    The middle panel is a heat map of ``exp(log_prob_fn(points))`` on a ``grid_size`` x
    ``grid_size`` grid over ``bounds = (xmin, xmax, ymin, ymax)`` (default: the data's range plus
    10%).

    Args:
        log_prob_fn: maps float32 points ``[M, 2]`` to log-densities ``[M]``.
        data, samples: ``[N, 2]`` arrays (same units as ``log_prob_fn``'s input).
        path: the PNG to write.
    """
    data, samples = np.asarray(data), np.asarray(samples)
    for label, a in (("data", data), ("samples", samples)):
        if a.ndim != 2 or a.shape[1] != 2:
            raise ValueError(f"density_plot needs 2-D points [N, 2]; {label} has shape "
                             f"{list(a.shape)}")
    xmin, xmax, ymin, ymax = bounds if bounds is not None else _bounds(data)
    gx, gy = np.meshgrid(np.linspace(xmin, xmax, grid_size), np.linspace(ymin, ymax, grid_size))
    grid = np.stack([gx.ravel(), gy.ravel()], axis=1).astype(np.float32)
    density = np.exp(np.asarray(log_prob_fn(grid), np.float64)).reshape(grid_size, grid_size)
    density = np.where(np.isfinite(density), density, 0.0)

    fig = _figure(13, 4.4)
    axes = fig.subplots(1, 3)
    extent = (xmin, xmax, ymin, ymax)
    kw = dict(s=2, alpha=0.4, linewidths=0)
    axes[0].scatter(data[:, 0], data[:, 1], color="tab:blue", **kw)
    axes[0].set_title(f"data ({len(data)} points)")
    image = axes[1].imshow(density, origin="lower", extent=extent, aspect="auto",
                           cmap="magma", interpolation="bilinear")
    fig.colorbar(image, ax=axes[1], shrink=0.8, label="p(x)")
    axes[1].set_title("learned density")
    axes[2].scatter(samples[:, 0], samples[:, 1], color="tab:orange", **kw)
    axes[2].set_title(f"model samples ({len(samples)})")
    for ax in axes:
        ax.set_xlim(xmin, xmax)
        ax.set_ylim(ymin, ymax)
        ax.set_xlabel("x1")
    axes[0].set_ylabel("x2")
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def sample_grid(
    images: np.ndarray,
    path: str | Path,
    *,
    ncols: int | None = None,
    value_range: tuple[float, float] = (0.0, 1.0),
    title: str | None = None,
) -> Path:
    """A grid of images ``[N, H, W, C]`` (``C`` = 1 or 3), values clipped to ``value_range``."""
    images = np.asarray(images, np.float64)
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3) or len(images) == 0:
        raise ValueError(f"sample_grid needs images [N, H, W, 1 or 3], got shape "
                         f"{list(images.shape)}")
    lo, hi = value_range
    images = np.clip((images - lo) / (hi - lo), 0.0, 1.0)
    n, h, w, c = images.shape
    ncols = ncols or math.ceil(math.sqrt(n))
    nrows = math.ceil(n / ncols)
    canvas = np.ones((nrows * (h + 1) + 1, ncols * (w + 1) + 1, c))
    for i, img in enumerate(images):
        r, col = divmod(i, ncols)
        canvas[1 + r * (h + 1): 1 + r * (h + 1) + h, 1 + col * (w + 1): 1 + col * (w + 1) + w] = img
    fig = _figure(max(3.0, 0.45 * ncols), max(3.0, 0.45 * nrows) + (0.4 if title else 0))
    ax = fig.add_subplot()
    ax.imshow(canvas[..., 0] if c == 1 else canvas, cmap="gray" if c == 1 else None,
              vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    return _save(fig, path)


def flow_sample_grid(
    model,
    path: str | Path,
    rows: int = 8,
    cols: int = 8,
    temperature: float = 1.0,
    seed: int = 0,
    title: str | None = None,
) -> np.ndarray:
    """Draws ``rows * cols`` images from an image flow at ``temperature`` and saves a grid.

    Samples are clipped to ``[0, num_levels - 1]`` (the logit's ``alpha`` lets the flow reach
    slightly beyond the pixel range) and drawn by :func:`sample_grid`. Returns the images as
    one ``[rows * H, cols * W, C]`` array in ``[0, 1]``.

    Example:
        >>> import tfp_coupling as tc
        >>> model = tc.nice_image_flow([4, 4, 1], hidden_units=[16])
        >>> tc.plots.flow_sample_grid(model, "/tmp/grid.png", rows=2, cols=3).shape
        (8, 12, 1)
    """
    rows, cols = int(rows), int(cols)
    if rows < 1 or cols < 1:
        raise ValueError(f"rows and cols must be >= 1, got {rows} and {cols}")
    levels = float((model.flow_config or {}).get("num_levels", 256))
    x = np.asarray(model.sample(rows * cols, temperature=temperature, seed=seed))
    x = np.clip(x, 0.0, levels - 1.0) / (levels - 1.0)
    sample_grid(x, path, ncols=cols, title=title or f"{model.name}, T = {temperature:g}")
    h, w, c = x.shape[1:]
    return x.reshape(rows, cols, h, w, c).transpose(0, 2, 1, 3, 4).reshape(rows * h, cols * w, c)


def scatter_plot(
    data: np.ndarray, samples: np.ndarray, path: str | Path, *, dims: tuple[int, int] = (0, 1),
    title: str | None = None,
) -> Path:
    """Data and model samples side by side, projected on two coordinates ``dims``."""
    data, samples = np.asarray(data), np.asarray(samples)
    i, j = dims
    for label, a in (("data", data), ("samples", samples)):
        if a.ndim != 2 or a.shape[1] <= max(i, j):
            raise ValueError(f"scatter_plot needs [N, D] arrays with D > {max(i, j)}; {label} "
                             f"has shape {list(a.shape)}")
    xmin, xmax, ymin, ymax = _bounds(data[:, [i, j]])
    fig = _figure(9, 4.4)
    axes = fig.subplots(1, 2, sharex=True, sharey=True)
    kw = dict(s=3, alpha=0.5, linewidths=0)
    axes[0].scatter(data[:, i], data[:, j], color="tab:blue", **kw)
    axes[0].set_title(f"data ({len(data)})")
    axes[1].scatter(samples[:, i], samples[:, j], color="tab:orange", **kw)
    axes[1].set_title(f"model samples ({len(samples)})")
    for ax in axes:
        ax.set_xlim(xmin, xmax)
        ax.set_ylim(ymin, ymax)
        ax.set_xlabel(f"x{i + 1}")
    axes[0].set_ylabel(f"x{j + 1}")
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def training_curve(
    history: Mapping[str, Sequence[float]],
    path: str | Path,
    *,
    ylabel: str = "NLL (nats)",
    title: str | None = None,
    references: Mapping[str, float] | None = None,
) -> Path:
    """One line per entry of ``history`` (e.g. ``train_nll``, ``val_nll``) against the epoch,
    and a dashed horizontal line per entry of ``references`` (e.g. a baseline's NLL)."""
    series = {k: np.asarray(v, np.float64) for k, v in history.items() if len(v)}
    if not series:
        raise ValueError("training_curve: history holds no values")
    fig = _figure(6, 4)
    ax = fig.add_subplot()
    for label, values in series.items():
        ax.plot(np.arange(1, len(values) + 1), values, marker="o" if len(values) < 30 else None,
                markersize=3, label=label)
    for label, value in (references or {}).items():
        ax.axhline(value, color="0.4", linestyle="--", linewidth=1, label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend()
    if title:
        ax.set_title(title)
    return _save(fig, path)
