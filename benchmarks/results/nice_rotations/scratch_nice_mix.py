"""Scratch (kept for the record): nice_flow with sine units and mixing between its couplings,
on one density or table and seed, with density_quality.py's split, training loop and selection:

    K=16 ANGLE=1.0 OUT=runs.jsonl python benchmarks/results/nice_rotations/scratch_nice_mix.py \
        rot 0 rings

Variants: ``default`` (no mixing), ``lu`` (an LULinear between couplings at the identity),
``rot`` (started at the rotation by ANGLE), ``rotfix`` (the same, untrained), ``orth`` (started at
a random orthogonal matrix: Glow's start, pivoted LU). Env: K couplings (8), HID hidden sizes
("64,64"), ANGLE (pi/4), EPOCHS on 2-D data (30), OUT the JSON-lines file. ``rot`` with ANGLE=1.0
is ``nice_flow``'s default on 2-D data since; ``default`` is ``nice_flow(..., mixing=None)``.
"""
import json
import math
import os
import sys
import time

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[2]))  # benchmarks/
import density_quality as dq
import numpy as np
import tensorflow as tf

import tfp_coupling as tc
from tfp_coupling.bijectors import AdditiveCoupling, Chain, LULinear, Rescaling
from tfp_coupling.builders import vector
from tfp_coupling.model import FlowModel

variant, seed, data = sys.argv[1], int(sys.argv[2]), sys.argv[3]
table = data in ("wine", "diabetes", "breast_cancer")
split = dq.table_split(data, seed) if table else dq.toy_split(data, seed)
gaussian = dq.gaussian_nll(split)
K = int(os.environ.get("K", 8))
HID = tuple(int(u) for u in os.environ.get("HID", "64,64").split(","))
ANGLE = float(os.environ.get("ANGLE", math.pi / 4))


def orthogonal_lu(d: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Strict L, strict U and log|diag U| of ``P^T Q S``: Q Haar-random, P its pivoting, S the
    column signs that make U's diagonal positive."""
    q, r = np.linalg.qr(rng.normal(size=(d, d)))
    a = q * np.sign(np.diag(r))
    for k in range(d):
        p = k + int(np.argmax(np.abs(a[k:, k])))
        a[[k, p]] = a[[p, k]]
        a[k + 1:, k] /= a[k, k]
        a[k + 1:, k + 1:] -= np.outer(a[k + 1:, k], a[k, k + 1:])
    upper = np.triu(a) * np.sign(np.diag(a))
    return np.tril(a, -1), np.triu(upper, 1), np.log(np.diag(upper))


def build(d: int) -> FlowModel:
    if variant == "default":
        return tc.nice_flow([d], num_couplings=K, hidden_units=HID, mixing=None)
    steps = vector._coupling_stack(AdditiveCoupling, [d], K, HID, None, "relu", tf.float32,
                                   "nice", zero_init=False, sine_scale="auto", mixing="lu")
    mixings = [s for s in steps if isinstance(s, LULinear)]
    for i, mixing in enumerate(mixings):
        p = mixing.params
        if variant.startswith("rot"):
            c, s = math.cos(ANGLE), math.sin(ANGLE)
            p.lower.assign([[0, 0], [s / c, 0]])
            p.upper.assign([[0, -s], [0, 0]])
            p.log_diag.assign([math.log(c), -math.log(c)])
            if variant == "rotfix":
                for w in (p.lower, p.upper, p.log_diag, p.bias):
                    w.trainable = False
        elif variant == "orth":
            lower, upper, log_diag = orthogonal_lu(d, np.random.default_rng(seed * 1000 + i))
            p.lower.assign(lower)
            p.upper.assign(upper)
            p.log_diag.assign(log_diag)
    steps.append(Rescaling([d], dtype=tf.float32, name="nice_rescaling"))
    steps = vector._whitening([d], True, tf.float32, "nice") + steps
    return FlowModel(Chain(steps, name="nice"), [d], flow_dtype=tf.float32, name="nice")


start = time.time()
budget = (dq.Budget(300, 64, 1e-4) if table
          else dq.Budget(int(os.environ.get("EPOCHS", 30)), 256, 1e-3))
test, hist = dq.train_ours(build, split, budget, seed)
spike = dq.max_epoch_ratio(hist)
print(f"{variant} K{K} {HID} a{ANGLE:.3f} seed {seed} {data}: gaussian {gaussian:.3f} test "
      f"{test:.3f} (gain {gaussian - test:.3f}) maxratio {spike:.2f} {time.time() - start:.0f}s")
with open(os.environ.get("OUT", "nice_mix.jsonl"), "a") as f:
    f.write(json.dumps({"variant": f"{variant} K{K} a{ANGLE}", "data": data, "seed": seed,
                        "nll": test, "gaussian": gaussian, "spike": spike,
                        "history": hist}) + "\n")
