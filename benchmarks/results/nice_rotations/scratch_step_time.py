"""Scratch (kept for the record): training step time of nice_flow with 8 and 16 couplings,
without and with mixing, alternating the models in rounds (XLA, batch 256, rings):

    python benchmarks/results/nice_rotations/scratch_step_time.py
"""
import time

import keras
import numpy as np

import tfp_coupling as tc

ROUNDS, STEPS = 9, 32
x = tc.data.rings(STEPS * 256, seed=0).astype("float32")
x = (x - x.mean(0)) / x.std(0)
settings = {"K8 none": {"num_couplings": 8, "mixing": None}, "K16 none": {"mixing": None},
            "K16 rot": {}, "K16 lu": {"mixing": "lu"}}
models = {}
for name, kwargs in settings.items():
    keras.utils.set_random_seed(0)
    model = tc.nice_flow([2], **kwargs)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), jit_compile=True)
    model.fit(x, batch_size=256, epochs=1, verbose=0)  # compile outside the timing
    models[name] = model
times: dict[str, list[float]] = {name: [] for name in models}
for _ in range(ROUNDS):
    for name, model in models.items():
        start = time.perf_counter()
        model.fit(x, batch_size=256, epochs=1, verbose=0)
        times[name].append((time.perf_counter() - start) / STEPS * 1000)
for name, values in times.items():
    print(f"{name}: {np.median(values):.2f} ms/step (median of {ROUNDS} rounds)")
