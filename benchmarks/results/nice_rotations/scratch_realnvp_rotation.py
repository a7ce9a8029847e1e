"""Scratch (kept for the record): ``realnvp_flow([2], mixing=M)`` on one 2-D density and seed,
with density_quality.py's split, training loop and selection (the 2-D budget):

    python benchmarks/results/nice_rotations/scratch_realnvp_rotation.py rotation 0 circles
"""
import json
import sys

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[2]))  # benchmarks/
import density_quality as dq

import tfp_coupling as tc

mixing, seed, data = sys.argv[1], int(sys.argv[2]), sys.argv[3]
split = dq.toy_split(data, seed)
test, hist = dq.train_ours(
    lambda d: tc.realnvp_flow([d], mixing=None if mixing == "none" else mixing), split,
    dq.Budget(30, 256, 1e-3), seed)
print(json.dumps({"variant": f"realnvp_flow, mixing {mixing}", "data": data, "seed": seed,
                  "nll": test, "spike": dq.max_epoch_ratio(hist)}))
