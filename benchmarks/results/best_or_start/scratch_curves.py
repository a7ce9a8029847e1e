"""Per-row validation and test log-probs of every epoch (0: the start) of the density-quality
protocol (density_quality.py's splits, budgets and seeds), saved to
/tmp/w/<data>_<variant>_<seed>.npz
for scratch_rules.py to apply selection rules to.

    python scratch_curves.py wine,diabetes default 0,1,2,3,4
"""
import sys
import time

import keras
import numpy as np

sys.path.insert(0, "benchmarks")
import density_quality as dq

import tfp_coupling as tc

BUILDS = {"default": lambda d: tc.realnvp_flow([d]),
          "tanh": lambda d: tc.realnvp_flow([d], activation="tanh", zero_init=True),
          "nosine": lambda d: tc.realnvp_flow([d], sine_scale=None)}


class Record(keras.callbacks.Callback):
    def __init__(self, s: dq.Split) -> None:
        super().__init__()
        self.s, self.val, self.test = s, [], []

    def on_train_begin(self, logs=None):
        self.on_epoch_end(-1)

    def on_epoch_end(self, epoch, logs=None):
        self.val.append(np.asarray(self.model.log_prob(self.s.val), np.float64))
        self.test.append(np.asarray(self.model.log_prob(self.s.test), np.float64))


def main(names: str, variant: str, seeds: str) -> None:
    for name in names.split(","):
        for seed in (int(s) for s in seeds.split(",")):
            t0 = time.time()
            toy = name in dq.TOY
            s = dq.toy_split(name, seed) if toy else dq.table_split(name, seed)
            keras.utils.set_random_seed(seed)
            model = BUILDS[variant](s.train.shape[1])
            model.compile(optimizer=keras.optimizers.Adam(1e-3 if toy else 1e-4),
                          jit_compile=True)
            rec = Record(s)
            model.fit(s.train, batch_size=256 if toy else 64, epochs=30 if toy else 300,
                      verbose=0, callbacks=[rec])
            gauss = dq.gaussian_nll(s)
            np.savez(f"/tmp/w/{name}_{variant}_{seed}.npz", val=np.array(rec.val),
                     test=np.array(rec.test), correction=s.correction, gauss=gauss)
            v, t = -np.array(rec.val).mean(1), -np.array(rec.test).mean(1)
            print(seed, "best", int(v.argmin()), round(t[v.argmin()] + s.correction, 3),
                  "gauss", round(gauss, 3), f"{time.time() - t0:.0f}s", flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:4])
