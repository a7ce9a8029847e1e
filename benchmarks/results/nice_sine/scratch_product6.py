"""Scratch (kept for the record): is the ReLU-vs-tanh trade driven by event size or by number
of rows? Also run for NICE's sine units on 6-D data:

    python benchmarks/results/nice_sine/scratch_product6.py product \
        benchmarks/results/nice_sine/product6.jsonl "nice 8, whiten|nice 8, whiten, sine first x3" 3


A: 2-D densities with 300 rows per split, table budget (Adam 1e-4, batch 64, 300 epochs).
B: 6-D product (two moons x eight Gaussians x circles, independent), 8,000 rows, 2-D budget.
"""
import json
import sys
import time

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[2]))  # benchmarks/
import numpy as np
from density_quality import (
    Budget,
    _standardise,
    gaussian_nll,
    max_epoch_ratio,
    toy_split,
    train_ours,
)
from fit_ablation import VARIANTS, build

import tfp_coupling as tc

mode, out = sys.argv[1], sys.argv[2]
variants = sys.argv[3].split("|") if len(sys.argv) > 3 else ["realnvp_flow", "table setting"]
seeds = range(int(sys.argv[4]) if len(sys.argv) > 4 else 3)

def product_split(seed, names=("two_moons", "eight_gaussians", "circles")):
    parts, true = [], 0.0
    for k, name in enumerate(names):
        p = [tc.data.load(name, s, seed=1000 * seed + k) for s in ("train", "validation", "test")]
        rng = np.random.default_rng(seed * 7 + k)
        p = [a[rng.permutation(len(a))] for a in p]
        parts.append(p)
        true += float(-tc.data.true_log_prob(name, p[2]).mean())
    cols = [np.concatenate([pp[i] for pp in parts], axis=1) for i in range(3)]
    return _standardise(*cols, true_nll=true)

done = set()
try:
    for line in open(out):
        r = json.loads(line)
        done.add((r["variant"], r["data"], r["seed"]))
except FileNotFoundError:
    pass
jobs = []
if mode == "small":
    budget = Budget(300, 64, 1e-4)
    for d in ("two_moons", "eight_gaussians", "pinwheel"):
        for seed in seeds:
            jobs.append((d, seed, lambda d=d, seed=seed: toy_split(d, seed, 300)))
else:
    budget = Budget(30, 256, 1e-3)
    for seed in seeds:
        jobs.append(("product6", seed, lambda seed=seed: product_split(seed)))
for d, seed, mk in jobs:
    split = mk()
    for r in ["gaussian", *variants]:
        if (r, d, seed) in done:
            continue
        t = time.perf_counter()
        if r == "gaussian":
            nll, hist = gaussian_nll(split), []
        else:
            v = VARIANTS[r]
            nll, hist = train_ours(lambda dim, v=v: build(v, dim), split, budget, seed)
        rec = {"variant": r, "data": d, "seed": seed, "nll": nll, "true": split.true_nll,
               "spike": max_epoch_ratio(hist), "n_train": len(split.train)}
        open(out, "a").write(json.dumps(rec) + "\n")
        print(d, seed, r, f"{nll:.3f}", f"true {split.true_nll}",
              f"{time.perf_counter() - t:.0f}s", flush=True)
