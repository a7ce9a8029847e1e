"""Image flows' fit and stability: held-out bits/dim and loss spikes on MNIST digits, over seeds.

The vector flow's defaults were chosen by ``fit_ablation.py`` (each affine map written data ->
latent, the log-scale clamped by ``2 tanh(s / 2)``, the shift bounded by ``5 tanh(t / 5)``).
This script asks the same questions of the image flows, one change per row, at one fixed step
budget: every row builds its flow from the same seed and trains it on the same data.

Data: the MNIST test set (``../shared/data/mnist``, or ``--data``): the first 8,000 digits
train, the last 2,000 evaluate (``-log p(x + u) / (784 ln 2)``, one seeded noise draw).
Budget: ``--steps`` (default 625, five epochs) of batch 64, Adam ``--lr`` (default 1e-3, Keras'
default, what ``model.compile(optimizer="adam")`` gives), no gradient clipping unless
``--clipnorm``. Reported per row: test bits/dim ``mean ± sd (worst)`` over seeds, the largest
ratio of an epoch's mean training NLL to the previous epoch's (``epoch spike``; the fit-quality
target is at most 1.5), the largest ratio of one batch's NLL to the median batch NLL of its
epoch (``batch spike``), and the runs that ended in a non-finite loss (``diverged``; their test
figure is left out of the mean).

Models (``--models``): ``multiscale``, ``tc.realnvp_image_flow`` as in
``mnist_bits_per_dim.py`` (2 scales, 3 + 3 + 4 couplings, ResNet conditioners of 32 channels,
2 blocks, ActNorm); ``flat``, ``tc.realnvp_flat_image_flow`` (6 couplings of 2 x 1024 ReLU
units on the flattened digit). Rows (``--variants``): ``before`` (clamp 5, latent -> data,
unbounded shift), ``data->latent``, ``clamp 2``, ``shift clamp 5`` and ``vector defaults``
(all three, as ``realnvp_flow`` has them).

Run from the repository root::

    python benchmarks/image_fit.py --models flat --seeds 3 --results runs.jsonl
    python benchmarks/image_fit.py --quick      # a smoke run
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import keras
import numpy as np
from mnist_bits_per_dim import BUILDERS, DEFAULT_DATA, SHAPE

import tfp_coupling as tc
from tfp_coupling.dequantization import flow_bits_per_dim

# The two RealNVP flows of mnist_bits_per_dim.py, under shorter names.
MODELS = {"multiscale": BUILDERS["realnvp_multiscale"], "flat": BUILDERS["realnvp_vector"]}
VARIANTS: dict[str, dict] = {
    "before": {"log_scale_clamp": 5.0, "normalizing": False, "shift_clamp": None},
    "data->latent": {"log_scale_clamp": 5.0, "normalizing": True, "shift_clamp": None},
    "clamp 2": {"log_scale_clamp": 2.0, "normalizing": False, "shift_clamp": None},
    "shift clamp 5": {"log_scale_clamp": 5.0, "normalizing": False, "shift_clamp": 5.0},
    "vector defaults": {"log_scale_clamp": 2.0, "normalizing": True, "shift_clamp": 5.0},
}


class BatchLosses(keras.callbacks.Callback):
    """Each batch's own training NLL, recovered from Keras' running epoch mean, per epoch."""

    def __init__(self) -> None:
        super().__init__()
        self.epochs: list[list[float]] = []

    def on_epoch_begin(self, epoch, logs=None):
        self.epochs.append([])
        self._mean = 0.0

    def on_train_batch_end(self, batch, logs=None):
        mean = float(logs["loss"])
        k = len(self.epochs[-1]) + 1  # equal batches: mean_k = ((k - 1) mean_{k-1} + l_k) / k
        self.epochs[-1].append(k * mean - (k - 1) * self._mean)
        self._mean = mean


def run(model_name: str, variant: str, seed: int, x_train: np.ndarray, x_test: np.ndarray,
        steps: int, lr: float, clipnorm: float | None, batch_size: int) -> dict:
    keras.utils.set_random_seed(seed)
    model = MODELS[model_name](**VARIANTS[variant])
    model.compile(optimizer=keras.optimizers.Adam(lr, global_clipnorm=clipnorm))
    start = flow_bits_per_dim(model, x_test[:500], seed=seed)
    per_epoch = len(x_train) // batch_size
    losses = BatchLosses()
    t0 = time.perf_counter()
    model.fit(x_train[: per_epoch * batch_size], batch_size=batch_size,
              epochs=math.ceil(steps / per_epoch), shuffle=True,
              callbacks=[losses, keras.callbacks.TerminateOnNaN()], verbose=0)
    seconds = time.perf_counter() - t0
    batches = [b for epoch in losses.epochs for b in epoch]
    diverged = not all(math.isfinite(b) for b in batches)
    means = [statistics.fmean(e) for e in losses.epochs if e]
    test = float("nan") if diverged else flow_bits_per_dim(model, x_test, seed=seed)
    to_bpd = 1.0 / (math.prod(SHAPE) * math.log(2.0))
    return dict(
        model=model_name, variant=variant, seed=seed, steps=len(batches), lr=lr,
        clipnorm=clipnorm, start_bpd=start, test_bpd=test, diverged=diverged,
        epoch_bpd=[m * to_bpd for m in means],
        epoch_spike=max((b / a for a, b in itertools.pairwise(means)), default=1.0),
        batch_spike=max(max(e) / statistics.median(e) for e in losses.epochs if e)
        if not diverged else float("inf"),
        seconds=seconds)


def table(records: list[dict], models: list[str], variants: list[str]) -> str:
    lines = ["| model | row | test bits/dim | epoch spike | batch spike | diverged | runs |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: |"]
    for m in models:
        for v in variants:
            rs = [r for r in records if r["model"] == m and r["variant"] == v]
            if not rs:
                continue
            ok = [r["test_bpd"] for r in rs if not r["diverged"]]
            fit = (f"{statistics.fmean(ok):.3f} ± {statistics.stdev(ok) if len(ok) > 1 else 0:.3f}"
                   f" ({max(ok):.3f})" if ok else "-")
            spikes = [r["epoch_spike"] for r in rs if not r["diverged"]]
            batch = [r["batch_spike"] for r in rs if not r["diverged"]]
            lines.append(f"| {m} | {v} | {fit} | {max(spikes, default=float('nan')):.2f} | "
                         f"{max(batch, default=float('nan')):.2f} | "
                         f"{sum(r['diverged'] for r in rs)} | {len(rs)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--variants", nargs="+", default=["before", "vector defaults"],
                        choices=list(VARIANTS))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=625)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--clipnorm", type=float, default=0.0, help="0: no clipping")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--results", type=Path, help="JSON lines, appended; rows in it are reused")
    parser.add_argument("--quick", action="store_true", help="a smoke run on 640 digits")
    args = parser.parse_args(argv)

    images = tc.data.read_idx(args.data)[..., None].astype("float32")
    x_train, x_test = images[:8000], images[8000:]
    steps, seeds = args.steps, range(args.first_seed, args.first_seed + args.seeds)
    if args.quick:
        x_train, x_test, steps, seeds = x_train[:640], x_test[:200], 20, range(1)
    clip = args.clipnorm or None
    done = []
    if args.results and args.results.exists():
        done = [json.loads(line) for line in args.results.read_text().splitlines() if line]
    records = []
    for m in args.models:
        for v in args.variants:
            for seed in seeds:
                key = (m, v, seed, steps, args.lr, clip)
                old = [r for r in done if (r["model"], r["variant"], r["seed"], r["steps"],
                                           r["lr"], r["clipnorm"]) == key]
                r = old[0] if old else run(m, v, seed, x_train, x_test, steps, args.lr, clip,
                                           args.batch_size)
                records.append(r)
                print(f"{m:10s} {v:16s} seed {seed}: test {r['test_bpd']:.3f} bits/dim (start "
                      f"{r['start_bpd']:.3f}), epochs "
                      f"{' '.join(f'{b:.3f}' for b in r['epoch_bpd'])}, spike "
                      f"{r['epoch_spike']:.2f}/{r['batch_spike']:.2f}"
                      f"{' DIVERGED' if r['diverged'] else ''}, {r['seconds']:.0f} s", flush=True)
                if args.results and not old:
                    with args.results.open("a") as f:
                        f.write(json.dumps(r) + "\n")
    print(f"\n{steps} steps of batch {args.batch_size}, Adam {args.lr:g}, clipnorm "
          f"{clip or 'none'}; {len(x_train)} training digits, {len(x_test)} test digits\n")
    print(table(records, args.models, args.variants))


if __name__ == "__main__":
    main()
