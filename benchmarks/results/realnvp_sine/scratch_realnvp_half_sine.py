"""Scratch (kept for the record): ``realnvp_flow``'s default with sine units of scale S in the
first half of every conditioner's first-layer units (the other half keeps the default units),
on one 2-D density and seed, with density_quality.py's split, loop and selection:

    python benchmarks/results/realnvp_sine/scratch_realnvp_half_sine.py 3 0 circles
"""
import json
import sys

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[2]))  # benchmarks/
import density_quality as dq
import keras

import tfp_coupling as tc
from tfp_coupling import nets
from tfp_coupling.builders import vector

scale, seed, data = float(sys.argv[1]), int(sys.argv[2]), sys.argv[3]


def call(self, inputs, training=None):
    h = self.flatten(inputs)
    for i, layer in enumerate(self.hidden):
        h = layer(h)
        if i == 0 and self.sine_scale is not None:
            n = h.shape[-1] // 2
            h = keras.ops.concatenate([keras.ops.sin(h[:, :n]), self._activate(h[:, n:])], -1)
        else:
            h = self._activate(h)
    return self.reshape(self.out(h))


nets.MLP.call = call
stack = vector._coupling_stack
vector._coupling_stack = lambda *a, **k: stack(*a, **{**k, "sine_scale": scale})
split = dq.toy_split(data, seed)
test, hist = dq.train_ours(lambda d: tc.realnvp_flow([d]), split, dq.Budget(30, 256, 1e-3), seed)
print(json.dumps({"variant": f"half sine {scale}", "data": data, "seed": seed, "nll": test,
                  "spike": dq.max_epoch_ratio(hist)}))
