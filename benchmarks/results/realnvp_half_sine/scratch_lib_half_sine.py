"""Scratch (kept for the record): ``realnvp_flow`` with sine units of scale S in the first
fraction F of every one-coordinate conditioner's first-layer units, through the library's own
``sine_scale``/``sine_fraction`` (the same draws and numbers as
``results/realnvp_sine/scratch_realnvp_half_sine.py``'s monkey patch: circles seed 1 repeats
2.273321568965912), with density_quality.py's split, loop and selection:

    python benchmarks/results/realnvp_half_sine/scratch_lib_half_sine.py 2 0 circles 0.5
"""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # benchmarks/
import density_quality as dq

import tfp_coupling as tc

scale, seed, data = sys.argv[1], int(sys.argv[2]), sys.argv[3]
frac = float(sys.argv[4]) if len(sys.argv) > 4 else 0.5
scale = scale if scale in ("auto",) else (None if scale == "none" else float(scale))
split = dq.toy_split(data, seed)
test, hist = dq.train_ours(lambda d: tc.realnvp_flow([d], sine_scale=scale, sine_fraction=frac),
                           split, dq.Budget(30, 256, 1e-3), seed)
print(json.dumps({"variant": f"lib sine {scale} frac {frac}", "data": data, "seed": seed,
                  "nll": test, "spike": dq.max_epoch_ratio(hist),
                  "history": [float(h) for h in hist]}))
