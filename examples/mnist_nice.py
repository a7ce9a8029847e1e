"""NICE on MNIST as in the NICE paper (Dinh et al., 2014, section 5.1), small and offline.

Inputs as in the paper: 8-bit pixels ``k`` are dequantised and rescaled, ``x = (k + u) / 256``
with fresh ``u ~ U[0, 1)`` every epoch, and flattened to ``D = 784``. The flow: additive
couplings with alternating (odd/even) masks and ReLU MLP conditioners, then NICE's diagonal
rescaling. Differences from the paper, to run in minutes on a laptop CPU: fewer and narrower
hidden layers, a standard Normal prior instead of the logistic one, the scaling initialised
from the data (the per-pixel standard deviation, at least one bin), and (offline) the 10,000
images of the MNIST test file, split by :func:`tfp_coupling.data.load` into 7,000 train, 1,000
validation, 2,000 test.

Reported: test bits per dimension of the discrete pixels,

    bits/dim = (NLL_model + D log 256) / (D ln 2),

where ``NLL_model`` is the mean NLL (nats) of the dequantised, rescaled test images (one seeded
draw of noise); ``+ D log 256`` undoes the division by 256 (the data-unit correction of
``DatasetInfo``). Lower is better; 8 is a uniform distribution over the 256 values.

Run: ``python examples/mnist_nice.py`` (reads ``../shared/data/mnist`` next to the repository,
or ``--data-dir``); writes ``mnist_nice_samples.png``.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

import tfp_coupling as tc
from tfp_coupling import data, plots

SHARED_MNIST = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist"


def bits_per_dim(model, x, info, seed: int) -> float:
    """Test bits/dim: dequantise once (seeded), NLL in model units, correct, convert."""
    x = info.dequantize(x, np.random.default_rng(seed))
    nll = -np.mean(np.concatenate([model.log_prob(x[i:i + 500]) for i in range(0, len(x), 500)]))
    return info.bits_per_dim(float(nll) - info.log_det_correction)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=str(SHARED_MNIST))
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--couplings", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=256, help="units per hidden layer")
    parser.add_argument("--layers", type=int, default=2, help="hidden layers per conditioner")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="mnist_nice_samples.png")
    args = parser.parse_args()
    keras.utils.set_random_seed(args.seed)

    splits = {}
    for split in data.SPLITS:
        x, info = data.load("mnist", split, data_dir=args.data_dir, with_info=True)
        splits[split] = x.reshape(len(x), -1)  # [N, 784], k / 256
    d = splits["train"].shape[1]
    print(f"MNIST from {info.source}: " +
          ", ".join(f"{k} {len(v)}" for k, v in splits.items()))

    model = tc.nice_flow([d], num_couplings=args.couplings,
                         hidden_units=[args.hidden] * args.layers, mask="alternating",
                         rescale=True, zero_init=True,  # pixels: start at the identity
                         whiten=False)  # the paper's model; near-constant pixels
    # Data-dependent start (as ActNorm does): NICE's scaling S(h) = h * exp(s) begins at the
    # per-pixel standard deviation of the dequantised training images, so the untrained flow is
    # already a diagonal Gaussian about as wide as the data (from s = 0, Adam would need
    # thousands of steps to reach s = -5.5). The floor of one quantisation bin keeps pixels that
    # are blank in all training images from being so certain that a test image with ink there
    # costs thousands of nats under the Gaussian prior.
    scale = next(layer for layer in model.flow_layers if isinstance(layer, tc.LogScale))
    dequantized = info.dequantize(splits["train"], np.random.default_rng(args.seed))
    scale.log_scale.assign(np.log(np.maximum(dequantized.std(axis=0), info.bin_width)))
    steps = args.epochs * math.ceil(len(splits["train"]) / args.batch_size)
    schedule = keras.optimizers.schedules.CosineDecay(args.lr, steps, alpha=0.02)
    model.compile(optimizer=keras.optimizers.Adam(schedule, epsilon=1e-4))  # NICE paper: 1e-4
    width = info.bin_width
    train = (tf.data.Dataset.from_tensor_slices(splits["train"])
             .shuffle(len(splits["train"]), seed=args.seed).batch(args.batch_size)
             .map(lambda b: b + tf.random.uniform(tf.shape(b), 0.0, width)).prefetch(2))
    val = info.dequantize(splits["validation"], np.random.default_rng(args.seed + 1))

    print(f"NICE: {args.couplings} additive couplings, MLP {[args.hidden] * args.layers}, "
          f"rescaling; {model.count_params():,} parameters")
    print(f"before training: test {bits_per_dim(model, splits['test'], info, 2):.3f} bits/dim")
    start = time.perf_counter()
    history = model.fit(train, epochs=args.epochs, validation_data=(val,), shuffle=False,
                        verbose=2)
    elapsed = time.perf_counter() - start
    val_bpd = [info.bits_per_dim(v - info.log_det_correction)
               for v in history.history["val_loss"]]
    print("validation bits/dim by epoch: " + " ".join(f"{v:.2f}" for v in val_bpd))
    test_bpd = bits_per_dim(model, splits["test"], info, 2)
    print(f"test bits/dim: {test_bpd:.3f}  ({args.epochs} epochs, {elapsed:.0f} s training)")

    samples = info.to_data_units(np.asarray(model.sample(64, temperature=1.0, seed=0)))
    plots.sample_grid(samples.reshape(-1, 28, 28, 1), args.out, value_range=(0, 255),
                      title=f"NICE samples, test {test_bpd:.2f} bits/dim")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
