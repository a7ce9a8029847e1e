"""Scratch (kept for the record): ``realnvp_flow``'s default with sine units of scale S in
every conditioner's first layer, on one 2-D density and seed, with density_quality.py's split,
training loop and selection (the 2-D budget); prints one JSON line:

    python benchmarks/results/realnvp_sine/scratch_realnvp_sine.py 1.5 0 two_moons >> runs.jsonl
"""
import json
import sys

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[2]))  # benchmarks/
import density_quality as dq

import tfp_coupling as tc
from tfp_coupling.builders import vector

scale, seed, data = float(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
stack = vector._coupling_stack
if scale > 0:  # realnvp_flow has no sine_scale argument: give it to every conditioner
    vector._coupling_stack = lambda *a, **k: stack(*a, **{**k, "sine_scale": scale})
split = dq.toy_split(data, seed)
test, hist = dq.train_ours(lambda d: tc.realnvp_flow([d]), split, dq.Budget(30, 256, 1e-3), seed)
print(json.dumps({"variant": f"sine {scale}", "data": data, "seed": seed, "nll": test,
                  "spike": dq.max_epoch_ratio(hist)}))
