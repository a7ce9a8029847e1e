"""Train RealNVP on two moons with ``model.fit`` and print the NLL before and after.

Run: ``python examples/two_moons.py`` (about 30 s on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import time

import keras
import numpy as np

import tfp_coupling as tc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    keras.utils.set_random_seed(args.seed)
    train = tc.data.two_moons(4096, seed=args.seed)
    test = tc.data.two_moons(1024, seed=args.seed + 1)
    model = tc.realnvp_flow(event_shape=[2], num_couplings=6, hidden_units=[64, 64])
    model.compile(optimizer=keras.optimizers.Adam(2e-3))
    before = -float(np.mean(model.log_prob(test)))
    start = time.perf_counter()
    model.fit(train, batch_size=256, epochs=args.epochs, verbose=2)
    after = -float(np.mean(model.log_prob(test)))
    print(f"test NLL (nats): {before:.3f} before, {after:.3f} after "
          f"{args.epochs} epochs in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
