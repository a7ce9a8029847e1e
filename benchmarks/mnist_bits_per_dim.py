"""Test bits/dim of NICE and RealNVP (vector and multi-scale) on real MNIST digits, on CPU.

Data: the MNIST test set (10,000 digits, ``../shared/data/mnist/t10k-images-idx3-ubyte.gz``
relative to the repository root, or ``--data``): the first 8,000 images train, the last 2,000
evaluate. Pixels are the raw 8-bit values; every model dequantises them with uniform noise in
training and maps them to logit space with ``LogitPreprocessing`` (alpha = 0.05), so the figure
printed, ``-log p(x + u) / (784 ln 2)`` on the 2,000 held-out digits (one noise draw, seeded), is
the papers' bits per dimension of discrete pixels.

Budget: every model trains for the same wall-clock time (``--seconds``, default 240 s, counted
after the first step, which traces the training function), batch 64, Adam with learning rate
1e-3 (1e-4 for ``realnvp_vector``, which diverged to NaN after ~400 steps at 1e-3) and the
gradient clipped to global norm 1000 (affine flows' gradient norms jump by 10-100x from step to
step; clipping keeps one jump from wrecking the weights), on whatever CPU cores TensorFlow is
given; the table reports the steps and epochs each
model managed in that time. On a shared machine the steps per second vary with the load. Models:

* ``nice``: NICE with the paper's MNIST settings (4 additive couplings, 5 hidden layers of 1000
  ReLU units, alternating masks, diagonal rescaling), ``tc.nice_image_flow``;
* ``nice_no_rescale``: the same without the rescaling (volume-preserving);
* ``realnvp_vector``: RealNVP on flattened images, 6 affine couplings with 2x1024 MLPs;
* ``realnvp_multiscale``: ``tc.realnvp_image_flow`` with 2 scales (3 checkerboard couplings,
  squeeze, 3 channel couplings, factor out half, then 4 checkerboard couplings), ResNet
  conditioners of 32 channels and 2 residual blocks, ActNorm before each coupling.

Writes a table (``results.md``) and sample grids at temperatures 1.0 and 0.7 into ``--out``.

Run from the repository root::

    python benchmarks/mnist_bits_per_dim.py              # 4 x 240 s of training, ~22 min
    python benchmarks/mnist_bits_per_dim.py --quick      # 4 x 30 s on 2,000 images, ~3 min
"""

from __future__ import annotations

import argparse
import math
import os
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import numpy as np

import tfp_coupling as tc
from tfp_coupling.dequantization import flow_bits_per_dim as bits_per_dim
from tfp_coupling.plots import flow_sample_grid as sample_grid

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "mnist" / "t10k-images-idx3-ubyte.gz"
SHAPE = (28, 28, 1)

# Keyword arguments are passed on to the builder (``image_fit.py`` changes the couplings).
BUILDERS = {
    "nice": lambda **kw: tc.nice_image_flow(SHAPE, num_couplings=4, hidden_units=[1000] * 5,
                                            rescale=True, name="nice", **kw),
    "nice_no_rescale": lambda **kw: tc.nice_image_flow(SHAPE, num_couplings=4,
                                                       hidden_units=[1000] * 5, rescale=False,
                                                       name="nice_no_rescale", **kw),
    "realnvp_vector": lambda **kw: tc.realnvp_flat_image_flow(SHAPE, num_couplings=6,
                                                              hidden_units=[1024, 1024],
                                                              name="realnvp_vector", **kw),
    "realnvp_multiscale": lambda **kw: tc.realnvp_image_flow(SHAPE, num_scales=2,
                                                             num_couplings_per_scale=3,
                                                             num_final_couplings=4,
                                                             hidden_channels=32, num_blocks=2,
                                                             name="realnvp_multiscale", **kw),
}


# Adam's learning rate where it differs from 1e-3: the flat affine flow's unbounded shifts blew
# up (NaN loss after ~400 steps) at 1e-3 in the recorded runs, made with the couplings of then
# (latent -> data, clamp 5, unbounded shift; image_fit.py compares them with today's).
LEARNING_RATES = {"realnvp_vector": 1e-4}
CLIPNORM = 1000.0


class TimeBudget(keras.callbacks.Callback):
    """Stops training after ``seconds`` of wall-clock time, counted from the end of step 1.

    The first step (tracing the training function) is timed separately as ``setup_seconds``,
    so that every model gets the same time to *train*; the budget is checked after every step.
    """

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = float(seconds)
        self.steps = 0
        self.start = 0.0
        self.setup_seconds = 0.0
        self.elapsed = 0.0

    def on_train_begin(self, logs=None):
        self.start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.steps += 1
        now = time.perf_counter()
        if self.steps == 1:
            self.setup_seconds = now - self.start
            self.start = now
            return
        self.elapsed = now - self.start
        if self.elapsed >= self.seconds:
            self.model.stop_training = True


def run(name: str, x_train: np.ndarray, x_test: np.ndarray, seconds: float, batch_size: int,
        out: Path, seed: int) -> dict:
    keras.utils.set_random_seed(seed)
    model = BUILDERS[name]()
    model.compile(optimizer=keras.optimizers.Adam(LEARNING_RATES.get(name, 1e-3),
                                                  global_clipnorm=CLIPNORM))
    start_bpd = bits_per_dim(model, x_test[:500], seed=seed)
    budget = TimeBudget(seconds)
    history = model.fit(x_train, batch_size=batch_size, epochs=10_000, shuffle=True,
                        callbacks=[budget, keras.callbacks.TerminateOnNaN()], verbose=0)
    t0 = time.perf_counter()
    test_bpd = bits_per_dim(model, x_test, seed=seed)
    eval_seconds = time.perf_counter() - t0
    train_bpd = bits_per_dim(model, x_train[:1000], seed=seed)
    train_loss = history.history["loss"][-1] / (math.prod(SHAPE) * math.log(2.0))
    for temperature in (1.0, 0.7):
        sample_grid(model, str(out / f"{name}_T{temperature:g}.png"), rows=6, cols=10,
                    temperature=temperature, seed=seed,
                    title=f"{name}, T = {temperature:g}, {test_bpd:.2f} bits/dim")
    row = dict(model=name, params=sum(int(np.prod(v.shape)) for v in model.trainable_variables),
               steps=budget.steps, epochs=budget.steps * batch_size / len(x_train),
               train_seconds=budget.elapsed, start_bpd=start_bpd, train_bpd=train_loss,
               test_bpd=test_bpd, train_1000_bpd=train_bpd, eval_seconds=eval_seconds)
    print(f"{name:20s} {row['params']:>10,d} params  {row['steps']:5d} steps "
          f"({row['epochs']:.2f} epochs) in {row['train_seconds']:6.1f} s (+ first step "
          f"{budget.setup_seconds:.1f} s)  "
          f"test {test_bpd:.3f} bits/dim (start {start_bpd:.3f}, last-epoch train "
          f"{train_loss:.3f}, first 1000 training images at the end {train_bpd:.3f})", flush=True)
    return row


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA,
                        help="MNIST t10k images IDX file (gzip or raw)")
    parser.add_argument("--seconds", type=float, default=240.0,
                        help="wall-clock training budget per model")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--models", nargs="+", default=list(BUILDERS), choices=list(BUILDERS))
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "mnist")
    parser.add_argument("--quick", action="store_true",
                        help="30 s per model, 2,000 training images (a smoke run)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    images = tc.data.read_idx(args.data)
    if images.shape != (10_000, 28, 28):
        raise ValueError(f"{args.data}: expected the 10,000 MNIST test images, got shape "
                         f"{images.shape}")
    images = images[..., None].astype("float32")  # integer pixel values 0..255
    x_train, x_test = images[:8000], images[8000:]
    seconds = args.seconds
    if args.quick:
        x_train, seconds = x_train[:2000], min(seconds, 30.0)
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"train {len(x_train)} images, test {len(x_test)}; {seconds:g} s per model, batch "
          f"{args.batch_size}; {os.cpu_count()} CPUs visible", flush=True)
    rows = [run(name, x_train, x_test, seconds, args.batch_size, args.out, args.seed)
            for name in args.models]

    lines = [
        f"Budget: {seconds:g} s of training per model (batch {args.batch_size}, Adam 1e-3; "
        f"{', '.join(f'{k} {v:g}' for k, v in LEARNING_RATES.items())}; global gradient "
        f"norm clipped to {CLIPNORM:g}), "
        f"{len(x_train)} training images, {len(x_test)} test images.",
        "",
        "| model | parameters | steps (epochs) | train time (s) | test bits/dim | "
        "train bits/dim (1,000 training images) |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(f"| {r['model']} | {r['params']:,} | {r['steps']} ({r['epochs']:.1f}) | "
                     f"{r['train_seconds']:.0f} | {r['test_bpd']:.3f} | "
                     f"{r['train_1000_bpd']:.3f} |")
    by_name = {r["model"]: r for r in rows}
    if "nice" in by_name and "realnvp_multiscale" in by_name:
        diff = by_name["nice"]["test_bpd"] - by_name["realnvp_multiscale"]["test_bpd"]
        verdict = "lower (better)" if diff > 0 else "higher (worse)"
        lines += ["", f"Multi-scale RealNVP vs NICE at the same budget: {abs(diff):.3f} "
                      f"bits/dim {verdict} than NICE "
                      f"({abs(diff) / by_name['nice']['test_bpd']:.1%} of NICE's figure)."]
    table = "\n".join(lines)
    (args.out / "results.md").write_text(table + "\n")
    print("\n" + table)


if __name__ == "__main__":
    main()
