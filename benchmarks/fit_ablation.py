"""Fit ablation: which design choice of a RealNVP flow decides its held-out NLL and its spikes.

Every row changes one choice of an 8-coupling, hidden [64, 64] affine flow on standardised 2-D
data (Adam 1e-3, batch 256, 30 epochs, test NLL of the best validation epoch, in data units), and
prints ``mean ± sd (worst)`` over seeds per density plus the largest epoch-to-epoch ratio of the
mean training NLL (``spike``; above 1.5 is a loss spike). ``zuko`` is the PyTorch peer with the
same budget (needs the ``benchmarks`` extra).

Rows:

* ``zero biases``: the conditioners' hidden layers Glorot-initialised with zero biases (the
  Keras default, which tfp-coupling used before).
* ``fan-in``: hidden weights and biases uniform in ``±1/sqrt(fan_in)`` (``tc.nets.MLP`` now).
* ``fan-in, clamp 2``: log-scale soft clamp ``2 tanh(s / 2)`` instead of ``5 tanh(s / 5)``.
* ``fan-in, data->latent``: the affine map in the normalizing direction, as in the RealNVP paper
  (the flow's bijector is ``tfb.Invert`` of the coupling chain).
* ``fan-in, data->latent, sigmoid``: and the scale ``sigmoid(s + 2) + 1e-3`` (nflows, Glow):
  the data->latent map never expands through a coupling.
* ``fan-in, clip 1``: global gradient-norm clipping at 1.

Usage::

    python benchmarks/fit_ablation.py                      # 3 seeds, three densities
    python benchmarks/fit_ablation.py --quick              # smoke run
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import keras
import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp
from density_quality import (
    Budget,
    Cell,
    max_epoch_ratio,
    peer_available,
    toy_split,
    train_ours,
    train_zuko,
)

import tfp_coupling as tc

VARIANTS: dict[str, dict] = {
    "zero biases": {"init": "zero_bias"},
    "fan-in": {},
    "fan-in, clamp 2": {"clamp": 2.0},
    "fan-in, data->latent": {"normalizing": True},
    "fan-in, data->latent, sigmoid": {"normalizing": True, "sigmoid": True},
    "fan-in, clip 1": {"clip": 1.0},
}


class SigmoidScaleCoupling(tc.AffineCoupling):
    """Affine coupling with ``exp(s) = sigmoid(s_raw + 2) + 1e-3`` (nflows' and Glow's form)."""

    def _constrain(self, params):
        shift, raw = params
        return [shift, tf.math.log(tf.sigmoid(raw + 2.0) + 1e-3)]


def build(variant: dict, dim: int, couplings: int = 8, hidden=(64, 64)) -> tc.FlowModel:
    steps = []
    for m in tc.mask_sequence([dim], couplings):
        b = tc.masks.Partition(m).b_shape[-1]
        net = tc.nets.MLP(hidden, [2 * b])
        if variant.get("sigmoid"):
            steps.append(SigmoidScaleCoupling(m, net, log_scale_clamp=None))
        else:
            steps.append(tc.AffineCoupling(m, net, log_scale_clamp=variant.get("clamp", 5.0)))
    chain = tc.Chain(steps)
    bijector = tfp.bijectors.Invert(chain) if variant.get("normalizing") else chain
    model = tc.FlowModel(bijector, [dim])
    if variant.get("init") == "zero_bias":
        rng = np.random.default_rng(int(keras.random.randint((), 0, 2**30)))
        for layer in model.flow_layers:
            for dense in layer.hidden:
                fan_in, fan_out = dense.kernel.shape
                limit = np.sqrt(6.0 / (fan_in + fan_out))
                dense.kernel.assign(rng.uniform(-limit, limit, dense.kernel.shape))
                dense.bias.assign(np.zeros(dense.bias.shape))
    return model


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", nargs="*",
                        default=["two_moons", "eight_gaussians", "circles"])
    parser.add_argument("--variants", nargs="*", choices=list(VARIANTS),
                        default=[v for v in VARIANTS if "sigmoid" not in v])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--no-peer", action="store_true", help="skip the zuko row")
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny data, 1 seed")
    args = parser.parse_args(argv)
    n = None
    if args.quick:
        args.seeds, args.epochs, n = 1, 2, 512
        args.datasets = args.datasets[:1]
    budget = Budget(args.epochs, 256, 1e-3)
    rows = list(args.variants) + (["zuko"] if peer_available() and not args.no_peer else [])
    cells = {(r, d): Cell() for r in rows for d in args.datasets}
    for d in args.datasets:
        for seed in range(args.seeds):
            split = toy_split(d, seed, n)
            for r in rows:
                if r == "zuko":
                    nll, hist = train_zuko(split, budget, seed)
                else:
                    v = VARIANTS[r]
                    nll, hist = train_ours(lambda dim, v=v: build(v, dim), split, budget, seed,
                                           clipnorm=v.get("clip"))
                cells[r, d].add(nll, hist)
                print(f"{d} seed {seed} {r}: {nll:.3f}, spike {max_epoch_ratio(hist):.2f}",
                      flush=True)
    print(f"\nTest NLL (nats), mean ± sd (worst) over {args.seeds} seed(s), {args.epochs} "
          f"epochs; spike = max epoch ratio over all runs of the row\n")
    print("| variant | " + " | ".join(args.datasets) + " | spike |")
    print("| --- |" + " --- |" * (len(args.datasets) + 1))
    for r in rows:
        spike = max(cells[r, d].spike for d in args.datasets)
        print(f"| {r} | " + " | ".join(cells[r, d].text() for d in args.datasets)
              + f" | {spike:.2f} |")


if __name__ == "__main__":
    main()
