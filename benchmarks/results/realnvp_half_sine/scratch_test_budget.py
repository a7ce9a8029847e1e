"""Scratch (kept for the record): the default RealNVP and ReLU units alone on the data of
tests/test_fit_quality.py's circles budget test, for the seeds given:

    python benchmarks/results/realnvp_half_sine/scratch_test_budget.py circles 0,1,2
"""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "tests"))
import keras
import numpy as np
from test_fit_quality import _nll, _standardised

import tfp_coupling as tc

name = sys.argv[1]
train, test = _standardised(name, 8000)
gaussian = -float(np.mean(tc.gaussian_fit(train, dtype="float64").log_prob(
    test.astype(np.float64))))
for seed in [int(s) for s in sys.argv[2].split(",")]:
    for sine in ("auto", None):
        keras.utils.set_random_seed(seed)
        model = tc.realnvp_flow([2], sine_scale=sine)
        model.compile(optimizer=keras.optimizers.Adam(1e-3), jit_compile=True)
        model.fit(train, batch_size=256, epochs=30, verbose=0)
        nll = _nll(model, test)
        print(json.dumps({"data": name, "seed": seed, "sine": sine, "nll": nll,
                          "gaussian": gaussian, "below": gaussian - nll}), flush=True)
