"""Scratch run (2026-12-05): 1000 rows of 2-D data on the 2-D budget (Adam 1e-3, batch 256,
30 epochs: 120 steps), ReLU with the random start against tanh at the identity, seeds 0-2.
Run from the repository root: python benchmarks/results/auto_units/scratch_short_budget.py"""

import sys

sys.path.insert(0, "benchmarks")

import numpy as np
from density_quality import Budget, toy_split, train_ours

import tfp_coupling as tc

SETTINGS = {
    "relu": lambda d: tc.realnvp_flow([d], activation="relu", zero_init=False),
    "tanh": lambda d: tc.realnvp_flow([d], activation="tanh", zero_init=True),
}
for name in ("two_moons", "eight_gaussians"):
    res = {k: [] for k in SETTINGS}
    for seed in range(3):
        s = toy_split(name, seed, 1000)
        for k, build in SETTINGS.items():
            res[k].append(train_ours(build, s, Budget(30, 256, 1e-3), seed)[0])
    print(name, 1000, {k: np.round(v, 3).tolist() for k, v in res.items()}, flush=True)
