"""2-D toy densities generated from a seed, and their exact log-densities.

Each generator takes ``(n, seed)`` and returns float32 ``[n, 2]`` points in random order.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from tfp_coupling.data.info import SPLITS, DatasetInfo

__all__ = ["TOY_2D", "checkerboard", "circles", "eight_gaussians", "pinwheel", "rings",
           "true_log_prob", "two_moons", "two_spirals"]

TOY_SIZES = {"train": 8000, "validation": 2000, "test": 2000}


def check_n(n: int) -> int:
    if int(n) != n or int(n) < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    return int(n)


def two_moons(n: int, noise: float = 0.05, seed: int | None = 0,
              return_labels: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """``n`` points of the two interleaving half circles, ``float32`` of shape ``[n, 2]``.

    The same construction as scikit-learn's ``make_moons`` (upper moon centred at the origin,
    lower moon shifted by ``(1, 0.5)``), plus Gaussian noise of scale ``noise``. With
    ``return_labels``, also which moon each point is on (``int32``, 0 upper, 1 lower): a
    context for a conditional flow.

    Example:
        >>> from tfp_coupling.data import two_moons
        >>> two_moons(4, seed=0).shape
        (4, 2)
        >>> x, moon = two_moons(4, seed=0, return_labels=True)
        >>> sorted(moon.tolist())
        [0, 0, 1, 1]
    """
    if int(n) < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    rng = np.random.default_rng(seed)
    n_upper = n // 2
    n_lower = n - n_upper
    t_upper = np.linspace(0.0, np.pi, n_upper)
    t_lower = np.linspace(0.0, np.pi, n_lower)
    upper = np.stack([np.cos(t_upper), np.sin(t_upper)], axis=1)
    lower = np.stack([1.0 - np.cos(t_lower), 0.5 - np.sin(t_lower)], axis=1)
    x = np.concatenate([upper, lower], axis=0)
    labels = np.repeat(np.array([0, 1], np.int32), [n_upper, n_lower])
    order = rng.permutation(n)
    x = x[order] + rng.normal(scale=noise, size=(n, 2))
    if return_labels:
        return x.astype(np.float32), labels[order]
    return x.astype(np.float32)


def circles(n: int, seed: int | None = 0) -> np.ndarray:
    """Two concentric noisy circles of radius 2 and 1 (half the points each), noise 0.1.

    Example:
        >>> from tfp_coupling.data import circles
        >>> circles(6, seed=0).shape
        (6, 2)
    """
    n = check_n(n)
    rng = np.random.default_rng(seed)
    radius = np.where(rng.random(n) < 0.5, 2.0, 1.0)
    angle = rng.uniform(0.0, 2 * np.pi, n)
    x = radius[:, None] * np.stack([np.cos(angle), np.sin(angle)], axis=1)
    return (x + rng.normal(scale=0.1, size=(n, 2))).astype(np.float32)


def eight_gaussians(n: int, seed: int | None = 0) -> np.ndarray:
    """A mixture of 8 equal Gaussians (std 0.35) centred on a circle of radius 2√2.

    Example:
        >>> from tfp_coupling.data import eight_gaussians
        >>> eight_gaussians(3, seed=0).shape
        (3, 2)
    """
    n = check_n(n)
    rng = np.random.default_rng(seed)
    angle = rng.integers(0, 8, n) * (np.pi / 4)
    centres = 2 * np.sqrt(2) * np.stack([np.cos(angle), np.sin(angle)], axis=1)
    return (centres + rng.normal(scale=0.5 / np.sqrt(2), size=(n, 2))).astype(np.float32)


def checkerboard(n: int, seed: int | None = 0) -> np.ndarray:
    """Uniform on the 8 black squares (side 2) of a 4x4 checkerboard covering ``[-4, 4]^2``.

    Example:
        >>> from tfp_coupling.data import checkerboard
        >>> checkerboard(3, seed=0).shape
        (3, 2)
    """
    n = check_n(n)
    rng = np.random.default_rng(seed)
    x1 = rng.uniform(-2.0, 2.0, n)
    x2 = rng.random(n) - 2.0 * rng.integers(0, 2, n) + np.floor(x1) % 2
    return (2.0 * np.stack([x1, x2], axis=1)).astype(np.float32)


def pinwheel(n: int, seed: int | None = 0) -> np.ndarray:
    """Five curved arms of a pinwheel (the construction of the FFJORD toy data).

    Example:
        >>> from tfp_coupling.data import pinwheel
        >>> pinwheel(5, seed=0).shape
        (5, 2)
    """
    n = check_n(n)
    rng = np.random.default_rng(seed)
    num_arms, radial_std, tangential_std, rate = 5, 0.3, 0.1, 0.25
    arm = rng.integers(0, num_arms, n)
    features = rng.normal(size=(n, 2)) * np.array([radial_std, tangential_std])
    features[:, 0] += 1.0
    angle = arm * (2 * np.pi / num_arms) + rate * np.exp(features[:, 0])
    c, s = np.cos(angle), np.sin(angle)
    rotations = np.stack([np.stack([c, -s], axis=1), np.stack([s, c], axis=1)], axis=1)
    return (2.0 * np.einsum("ti,tij->tj", features, rotations)).astype(np.float32)


def two_spirals(n: int, seed: int | None = 0) -> np.ndarray:
    """Two interleaved spirals (one and a half turns each), noise 0.1.

    Example:
        >>> from tfp_coupling.data import two_spirals
        >>> two_spirals(4, seed=0).shape
        (4, 2)
    """
    n = check_n(n)
    rng = np.random.default_rng(seed)
    t = np.sqrt(rng.random(n)) * 3 * np.pi
    sign = np.where(rng.random(n) < 0.5, 1.0, -1.0)
    x = np.stack([-np.cos(t) * t, np.sin(t) * t], axis=1) + rng.random((n, 2)) * 0.5
    x = sign[:, None] * x / 3.0
    return (x + rng.normal(scale=0.1, size=(n, 2))).astype(np.float32)


def rings(n: int, seed: int | None = 0) -> np.ndarray:
    """Four concentric rings of radius 0.75, 1.5, 2.25 and 3 (equal shares), noise 0.08.

    Example:
        >>> from tfp_coupling.data import rings
        >>> rings(4, seed=0).shape
        (4, 2)
    """
    n = check_n(n)
    rng = np.random.default_rng(seed)
    radius = 0.75 * rng.integers(1, 5, n)
    angle = rng.uniform(0.0, 2 * np.pi, n)
    x = radius[:, None] * np.stack([np.cos(angle), np.sin(angle)], axis=1)
    return (x + rng.normal(scale=0.08, size=(n, 2))).astype(np.float32)


def _curve_log_density(x: np.ndarray, nodes: np.ndarray, weights: np.ndarray,
                       noise: float) -> np.ndarray:
    """``log sum_k w_k N(x; node_k, noise^2 I)`` for ``x`` of shape ``[N, 2]``, in chunks.

    A toy density whose points are a curve plus Gaussian noise is this mixture in the limit of
    many nodes; with node spacing far below ``noise`` the quadrature error is negligible.
    """
    x = np.asarray(x, np.float64).reshape(-1, 2)
    log_w = np.log(weights)[None, :] - np.log(2 * np.pi * noise**2)
    out = np.empty(len(x))
    for i in range(0, len(x), 512):
        d2 = ((x[i:i + 512, None, :] - nodes[None, :, :]) ** 2).sum(-1)
        a = log_w - d2 / (2 * noise**2)
        top = a.max(axis=1, keepdims=True)
        out[i:i + 512] = (top + np.log(np.exp(a - top).sum(axis=1, keepdims=True)))[:, 0]
    return out


def _nodes_per_curve(length: float, noise: float) -> int:
    """Quadrature nodes for a curve of ``length``: spaced ``noise / 4`` apart, at which the
    sum of Gaussians equals their integral along the curve to far below float precision."""
    return int(np.ceil(4 * length / noise))


def _circle_nodes(radii: list[float], shares: list[float], noise: float):
    nodes, weights = [], []
    for r, share in zip(radii, shares, strict=True):
        m = _nodes_per_curve(2 * np.pi * r, noise)
        angle = (np.arange(m) + 0.5) * (2 * np.pi / m)
        nodes.append(r * np.stack([np.cos(angle), np.sin(angle)], axis=1))
        weights.append(np.full(m, share / m))
    return np.concatenate(nodes), np.concatenate(weights)


def true_log_prob(name: str, x: np.ndarray) -> np.ndarray:
    """The exact log-density (nats, data units) of a toy density's generating process at ``x``.

    It is the best test NLL any model can reach on that data: ``-mean(true_log_prob(name, x))``.
    Known for ``two_moons`` (noise 0.05), ``circles``, ``rings``, ``eight_gaussians`` (mixtures
    of Gaussian noise around curves or points, evaluated by quadrature along the curves) and
    ``checkerboard`` (uniform on 8 squares of area 4: ``log(1/32)`` inside, ``-inf`` outside).

    Example:
        >>> import numpy as np
        >>> from tfp_coupling import data
        >>> x = data.two_moons(2000, seed=1)
        >>> round(float(-data.true_log_prob("two_moons", x).mean()), 1)
        0.3
    """
    x = np.asarray(x, np.float64)
    if x.ndim != 2 or x.shape[1] != 2:
        raise ValueError(f"x must have shape [N, 2], got {list(x.shape)}")
    if name == "two_moons":
        m = _nodes_per_curve(np.pi, 0.05)
        t = (np.arange(m) + 0.5) * (np.pi / m)
        upper = np.stack([np.cos(t), np.sin(t)], axis=1)
        lower = np.stack([1.0 - np.cos(t), 0.5 - np.sin(t)], axis=1)
        return _curve_log_density(x, np.concatenate([upper, lower]),
                                  np.full(2 * m, 0.5 / m), 0.05)
    if name == "circles":
        return _curve_log_density(x, *_circle_nodes([2.0, 1.0], [0.5, 0.5], 0.1), 0.1)
    if name == "rings":
        rings = _circle_nodes([0.75, 1.5, 2.25, 3.0], [0.25] * 4, 0.08)
        return _curve_log_density(x, *rings, 0.08)
    if name == "eight_gaussians":
        angle = np.arange(8) * (np.pi / 4)
        centres = 2 * np.sqrt(2) * np.stack([np.cos(angle), np.sin(angle)], axis=1)
        return _curve_log_density(x, centres, np.full(8, 1 / 8), 0.5 / np.sqrt(2))
    if name == "checkerboard":
        square = np.floor(x / 2).sum(axis=1)  # black squares: even sum of square indices
        inside = (np.abs(x) <= 4).all(axis=1) & (square % 2 == 0)
        return np.where(inside, -np.log(32.0), -np.inf)
    raise ValueError(f"no closed-form density for {name!r}; known: two_moons, circles, rings, "
                     f"eight_gaussians, checkerboard")


TOY_2D: dict[str, Callable[..., np.ndarray]] = {
    "two_moons": two_moons,
    "circles": circles,
    "eight_gaussians": eight_gaussians,
    "checkerboard": checkerboard,
    "pinwheel": pinwheel,
    "two_spirals": two_spirals,
    "rings": rings,
}


def load_splits(name: str, seed: int) -> tuple[dict[str, np.ndarray], DatasetInfo]:
    """The three splits of a toy density, cut from one pool drawn from ``seed``."""
    total = sum(TOY_SIZES.values())
    pool = TOY_2D[name](total, seed=seed)
    splits, start = {}, 0
    for s in SPLITS:
        splits[s] = pool[start:start + TOY_SIZES[s]]
        start += TOY_SIZES[s]
    info = DatasetInfo(name, "toy2d", (2,), dict(TOY_SIZES), np.zeros(2), np.ones(2),
                       source=f"generated locally (seed {seed})")
    return splits, info
