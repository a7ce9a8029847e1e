"""Image flows' first epochs under the command line's clipping and warm-up: batch spikes, gradients.

``image_fit.py`` found that the multi-scale RealNVP, clipped at a global gradient norm of 1 and
trained at Adam 1e-3 from the first step, has first epochs with single batches 50-300 times the
epoch's median NLL. This script asks why, and what the command line's schedule does about it.
One run per call: ``tc.realnvp_image_flow`` as in ``image_fit.py`` (``multiscale``, its default
couplings), the first 8,000 digits of ``../shared/data/mnist`` (125 steps of batch 64 per epoch),
test bits/dim on the last 2,000 (one seeded noise draw).

Learning rate (``--schedule``), Adam at 1e-3 after the warm-up:

* ``const``: 1e-3 from the first step (``image_fit.py``'s budget);
* ``warmN``: linear from 1e-4 over N steps, then constant;
* ``cliN``: the command line's cosine schedule for an N-epoch run, from 1e-4 up to 1e-3 over
  ``min(5, N // 10)`` whole epochs (none below 10 epochs), then down to 2e-5;
* ``clinewN``: the same with the warm-up over a tenth of the run's steps, at most 5 epochs, so
  that runs under 10 epochs warm up too (measured, not adopted).

``--epochs`` may be fewer than the schedule's N: the first epochs of a longer run.
``--eager`` also records every step's unclipped global gradient norm (slower). Each run appends
one JSON line to ``--results``; ``--table`` prints the table of a results file::

    python benchmarks/image_warmup.py --seed 0 --clipnorm 1 --schedule clinew2 --epochs 2 \\
        --results runs.jsonl
    python benchmarks/image_warmup.py --table runs.jsonl
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path
from typing import ClassVar

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import keras
import numpy as np
import tensorflow as tf
from image_fit import VARIANTS, BatchLosses
from mnist_bits_per_dim import BUILDERS, DEFAULT_DATA, SHAPE

import tfp_coupling as tc
from tfp_coupling.cli.options import WARMUP_EPOCHS
from tfp_coupling.cli.tasks import learning_rate_schedule
from tfp_coupling.dequantization import flow_bits_per_dim

STEPS_PER_EPOCH, BATCH = 125, 64


class NormAdam(keras.optimizers.Adam):
    """Adam that records each step's global gradient norm before clipping (eager runs only)."""

    norms: ClassVar[list[float]] = []

    def _clip_gradients(self, grads):
        if tf.executing_eagerly():
            self.norms.append(float(tf.linalg.global_norm([g for g in grads if g is not None])))
        return super()._clip_gradients(grads)


def learning_rate(schedule: str, lr: float = 1e-3):
    spe = STEPS_PER_EPOCH
    if schedule == "const":
        return lr
    if schedule.startswith("warm"):
        return keras.optimizers.schedules.CosineDecay(
            lr / 10, decay_steps=10**9, alpha=1.0, warmup_target=lr,
            warmup_steps=int(schedule[4:]))
    if schedule.startswith("cli") and not schedule.startswith("clinew"):
        return learning_rate_schedule({"lr": lr, "schedule": "cosine", "epochs": int(schedule[3:]),
                                       "warmup_epochs": WARMUP_EPOCHS}, spe)
    if not schedule.startswith("clinew"):
        raise ValueError(f"unknown schedule {schedule!r}")
    # The command line's schedule counted in steps instead of epochs: its warm-up of
    # min(warmup_epochs, epochs // 10) "epochs" is then min(5 epochs, a tenth of the steps).
    steps = int(schedule[6:]) * spe
    return learning_rate_schedule({"lr": lr, "schedule": "cosine", "epochs": steps,
                                   "warmup_epochs": WARMUP_EPOCHS * spe}, 1)


def run(seed: int, clipnorm: float, schedule: str, epochs: int, eager: bool,
        data: Path = DEFAULT_DATA) -> dict:
    images = tc.data.read_idx(data)[..., None].astype("float32")
    x_train, x_test = images[:8000], images[8000:]
    keras.utils.set_random_seed(seed)
    model = BUILDERS["realnvp_multiscale"](**VARIANTS["vector defaults"])
    optimizer = NormAdam(learning_rate(schedule), global_clipnorm=clipnorm or None)
    NormAdam.norms = []
    model.compile(optimizer=optimizer, run_eagerly=eager)
    losses = BatchLosses()
    t0 = time.time()
    model.fit(x_train[: STEPS_PER_EPOCH * BATCH], batch_size=BATCH, epochs=epochs, shuffle=True,
              callbacks=[losses, keras.callbacks.TerminateOnNaN()], verbose=0)
    to_bpd = 1 / (math.prod(SHAPE) * math.log(2))
    test = flow_bits_per_dim(model, x_test, seed=seed)
    return dict(test=test, seed=seed, clip=clipnorm, lr=schedule, norms=NormAdam.norms,
                batches=[[b * to_bpd for b in e] for e in losses.epochs],
                seconds=time.time() - t0)


def table(records: list[dict]) -> str:
    lines = ["| schedule | clip | seed | epochs | first-epoch batch spike (batch) | later epochs' "
             "largest | epoch medians (bits/dim) | test bits/dim | gradient norm, median of "
             "steps 1-50 / 51-250 |",
             "| --- | --- | ---: | ---: | ---: | ---: | --- | ---: | --- |"]
    for r in records:
        spikes = [max(e) / statistics.median(e) for e in r["batches"]]
        first = r["batches"][0]
        norms = (f"{np.median(r['norms'][:50]):,.0f} / {np.median(r['norms'][50:250]):,.0f}"
                 if r["norms"] else "-")
        test = f"{r['test']:.3f}" if "test" in r else "-"
        lines.append(
            f"| {r['lr']} | {r['clip'] or 'none'} | {r['seed']} | {len(r['batches'])} | "
            f"{spikes[0]:.1f} ({int(np.argmax(first))}) | {max(spikes[1:], default=1.0):.1f} | "
            f"{' '.join(f'{statistics.median(e):.3f}' for e in r['batches'])} | {test} | "
            f"{norms} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--clipnorm", type=float, default=1.0, help="0: no clipping")
    parser.add_argument("--schedule", default="cli40",
                        help="const, warmN, cliN or clinewN (default: the command line's "
                             "40-epoch image run)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs to train (default 3)")
    parser.add_argument("--eager", action="store_true", help="record gradient norms")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--results", type=Path, help="JSON lines, appended")
    parser.add_argument("--table", type=Path, help="print the table of this results file")
    args = parser.parse_args(argv)
    if args.table:
        print(table([json.loads(line) for line in args.table.read_text().splitlines() if line]))
        return
    learning_rate(args.schedule)  # an unknown schedule fails before the data are read
    r = run(args.seed, args.clipnorm, args.schedule, args.epochs, args.eager, args.data)
    if args.results:
        with args.results.open("a") as f:
            f.write(json.dumps(r) + "\n")
    print(table([r]))


if __name__ == "__main__":
    main()
