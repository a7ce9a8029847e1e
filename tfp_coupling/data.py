"""Datasets. Two moons, generated locally (no network), seeded."""

from __future__ import annotations

import numpy as np

__all__ = ["two_moons"]


def two_moons(n: int, noise: float = 0.05, seed: int | None = 0) -> np.ndarray:
    """``n`` points of the two interleaving half circles, ``float32`` of shape ``[n, 2]``.

    The same construction as scikit-learn's ``make_moons`` (upper moon centred at the origin,
    lower moon shifted by ``(1, 0.5)``), plus Gaussian noise of scale ``noise``.

    Example:
        >>> from tfp_coupling.data import two_moons
        >>> two_moons(4, seed=0).shape
        (4, 2)
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
    x = x[rng.permutation(n)] + rng.normal(scale=noise, size=(n, 2))
    return x.astype(np.float32)
