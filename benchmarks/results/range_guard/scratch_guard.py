"""Scratch (not adopted): a range guard set after training.

Trains ``realnvp_flow``'s default as ``density_quality.py`` does (best validation epoch), then
fades each coupling to the identity beyond the largest ``|x_a|`` per coordinate that its training
rows reach (``fade_outside`` set after training, so no training row's density changes), and
prints one JSON line per run: test NLL before and after, and the change of the training NLL.

    python benchmarks/results/range_guard/scratch_guard.py wine,breast_cancer,diabetes 5
"""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import keras
import numpy as np
import tensorflow as tf
from density_quality import TOY, BestEpoch, Budget, table_split, toy_split

import tfp_coupling as tc


def run(data: str, seed: int) -> dict:
    s = toy_split(data, seed) if data in TOY else table_split(data, seed)
    budget = Budget(30, 256, 1e-3) if data in TOY else Budget(300, 64, 1e-4)
    keras.utils.set_random_seed(seed)
    model = tc.realnvp_flow([s.train.shape[1]])
    model.compile(optimizer=keras.optimizers.Adam(budget.lr), jit_compile=True)
    best = BestEpoch(s.val)
    model.fit(s.train, batch_size=budget.batch_size, epochs=budget.epochs, verbose=0,
              callbacks=[best])
    model.set_weights(best.weights)

    def nll(x):
        return -float(np.mean(model.log_prob(x))) + s.correction

    couplings = [b for b in model.bijector.bijectors if isinstance(b, tc.Coupling)]
    before, train_before = nll(s.test), nll(s.train)
    bounds, x = {}, tf.constant(s.train)
    for b in model.bijector.bijectors:  # data -> latent: the chain's order
        if isinstance(b, tc.Coupling):
            bounds[b.name] = np.max(np.abs(b.partition.split(x)[0].numpy()), axis=0)
        x = b.inverse(x)
    for b in couplings:
        b.fade_outside = bounds[b.name]
    return {"data": data, "seed": seed, "variant": "relu", "before": before,
            "after": nll(s.test), "train_change": nll(s.train) - train_before}


if __name__ == "__main__":
    for name in sys.argv[1].split(","):
        for seed in range(int(sys.argv[2])):
            print(json.dumps(run(name, seed)), flush=True)
