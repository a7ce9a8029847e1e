"""Training memory and step time, ordinary vs memory-saving (``invertible_backprop``) training.

Both modes train the same multi-scale ``realnvp_image_flow`` (2 scales, ActNorm, factor-out; a
depth of ``K`` couplings is ``K / 4`` couplings per scale and ``K / 2`` final ones) on the same
fixed batch of 8-bit pixels, through the model's own Keras train step (``model.train_function``,
what ``fit`` runs per batch). For each flow, both modes and one table row each:

* **XLA temp MB**: the temporary buffer XLA's buffer assignment plans for the compiled step
  (``jit_compile=True``); it holds every intermediate, so it is the step's peak beyond weights,
  optimizer state and the batch. Read from the compiler's dump, as ``train_throughput.py``
  does (``_xla_temp_mb``).
* **allocator peak MB**: without XLA, the peak TensorFlow's CPU allocator holds during one step
  above the level before it (``train_throughput.measure_memory``).
* **ms / step** and **x ordinary**: the XLA step's median time, and the median of per-round
  ratios memory-saving / ordinary (wall clock / process CPU time); the two modes alternate in
  rounds in one process, so a busy moment of a shared machine slows both alike.

Each flow is measured in its own subprocess: ``XLA_FLAGS`` must ask for the dump before
TensorFlow starts, and one flow's allocations do not move the next one's peak.

``--estimate`` instead compiles and runs the memory-saving XLA step of one larger flow at the
full batch (default: 64x64x3, 32 couplings, batch 64) and reads the ordinary step's plan from
the same flow at a small batch, scaled linearly to the full batch (every activation is linear in
the batch), so that the ordinary step is never run where it may not fit.

Run (from the repository root)::

    python benchmarks/memory.py                  # the full table (batch 16, see --batch)
    python benchmarks/memory.py --quick          # smoke run: tiny flows, 1 round
    python benchmarks/memory.py --estimate       # 64x64x3, 32 couplings, batch 64
    python benchmarks/memory.py --estimate --plan-only --hidden 64 --blocks 8   # plans only
    python benchmarks/memory.py --train 12 --hidden 64 --blocks 8   # train that flow, saving on
    python benchmarks/memory.py --vector         # 784-D realnvp_flow, 4 to 32 couplings

``--train N`` trains the ``--estimate`` flow with memory saving for ``N`` Adam steps at the full
batch on synthetic 8-bit images with structure to learn (a few soft coloured blobs on a coloured
background, a fresh batch each step), printing each step's training NLL in bits per dimension,
its time and the process's resident peak, and the NLL of a held-out batch before and after.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import keras
import numpy as np
import tensorflow as tf

# The measurements are train_throughput's own, shared (this folder is on sys.path above).
from train_throughput import (
    Contender,
    _xla_temp_mb,
    alternate,
    machine,
    measure_memory,
    paired_ratio,
    warm_up,
)

import tfp_coupling as tc

MODES = {"ordinary": False, "memory-saving": True}

# (image shape, couplings): depth at a fixed image size, then the image size.
FULL = [((28, 28, 1), k) for k in (4, 8, 16, 32)] + [((64, 64, 3), k) for k in (8, 32)]
QUICK = [((8, 8, 1), k) for k in (4, 8)]
# --vector: the 784-D RealNVP (hidden [512, 512], batch 256) of the first measurement.
VECTOR = [((784,), k) for k in (4, 8, 16, 32)]


def build(shape, couplings: int, hidden: int, blocks: int, seed: int):
    """The benchmarked flow: 2 scales, ``couplings`` couplings in all; for a vector shape
    ``[D]``, ``realnvp_flow`` with hidden ``[hidden, hidden]`` (unwhitened: a batch of a few
    rows has no full-rank covariance)."""
    if len(shape) == 1:
        keras.utils.set_random_seed(seed)
        return tc.realnvp_flow(shape, num_couplings=couplings, hidden_units=[hidden, hidden],
                               whiten=False)
    if couplings % 4:
        raise ValueError(f"couplings must be a multiple of 4, got {couplings}")
    keras.utils.set_random_seed(seed)
    return tc.realnvp_image_flow(shape, num_scales=2, num_couplings_per_scale=couplings // 4,
                                 num_final_couplings=couplings // 2, hidden_channels=hidden,
                                 num_blocks=blocks)


def pixels(shape, batch: int, seed: int) -> tf.Tensor:
    """8-bit pixels for an image flow; standard normal rows for a vector one."""
    rng = np.random.default_rng(seed)
    if len(shape) == 1:
        return tf.constant(rng.normal(size=(batch, *shape)).astype("float32"))
    return tf.constant(rng.integers(0, 256, (batch, *shape)).astype("float32"))


def blob_images(shape, n: int, seed: int) -> np.ndarray:
    """``n`` 8-bit images: 2-5 soft coloured Gaussian blobs on a coloured background."""
    rng = np.random.default_rng(seed)
    h, w, c = shape
    yy, xx = np.meshgrid(np.linspace(0, 1, h), np.linspace(0, 1, w), indexing="ij")
    img = np.broadcast_to(rng.uniform(0, 255, (n, 1, 1, c)), (n, h, w, c)).copy()
    for k in range(5):
        on = (k < rng.integers(2, 6, n)).astype("float64")[:, None, None]
        cy, cx, r = (rng.uniform(lo, hi, (n, 1, 1)) for lo, hi in
                     ((0, 1), (0, 1), (0.05, 0.3)))
        bump = on * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r ** 2))
        img += bump[..., None] * (rng.uniform(0, 255, (n, 1, 1, c)) - img)
    return np.clip(np.round(img), 0, 255).astype("float32")


def train_large(args) -> str:
    """Trains the ``--estimate`` flow with memory saving, one fresh batch per step."""
    shape, k, batch = tuple(args.estimate_shape), args.estimate_couplings, args.estimate_batch
    dims = float(np.prod(shape))
    bits = 1.0 / (dims * np.log(2.0))
    model = build(shape, k, args.hidden, args.blocks, args.seed)
    held_out = blob_images(shape, batch, args.seed + 1)
    tc.initialize_from_data(model, blob_images(shape, batch, args.seed + 2))
    model.compile(optimizer=keras.optimizers.Adam(args.lr), jit_compile=True,
                  invertible_backprop=True)
    score = tf.function(lambda x: -tf.reduce_mean(model.log_prob(x)), jit_compile=True)
    lines = [f"### {'x'.join(map(str, shape))}, {k} couplings, hidden {args.hidden}, "
             f"{args.blocks} block(s), batch {batch}, memory saving, Adam {args.lr:g}", "",
             f"held-out NLL before training: {float(score(held_out)) * bits:.3f} bits/dim", "",
             "| step | training NLL (bits/dim) | seconds | resident peak GiB |",
             "| ---: | ---: | ---: | ---: |"]
    print("\n".join(lines), flush=True)
    for step in range(args.train):
        x = blob_images(shape, batch, args.seed + 100 + step)
        model.reset_metrics()  # the step's own loss, not a running mean
        t0 = time.perf_counter()
        nll = float(model.train_on_batch(x, return_dict=True)["nll"])
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
        lines.append(f"| {step} | {nll * bits:.3f} | {time.perf_counter() - t0:,.0f} | "
                     f"{rss:.2f} |")
        print(lines[-1], flush=True)
    lines += ["", f"held-out NLL after {args.train} steps: "
              f"{float(score(held_out)) * bits:.3f} bits/dim"]
    print(lines[-1], flush=True)
    return "\n".join(lines)


def train_contender(name: str, flow: dict, x, saving: bool, xla: bool) -> Contender:
    """The model's Keras train step in one mode, built and run once."""
    model = build(flow["shape"], flow["couplings"], flow["hidden"], flow["blocks"], flow["seed"])
    tc.initialize_from_data(model, x.numpy())  # ActNorm as fit would set it
    model.compile(optimizer=keras.optimizers.Adam(1e-4), jit_compile=xla,
                  invertible_backprop=saving)
    model.train_on_batch(x)  # builds optimizer and metrics, makes model.train_function
    data = [(x, None, None)]  # the structure train_on_batch passes: no retrace
    return Contender(name, "train", lambda: model.train_function(data), int(x.shape[0]), xla)


def probe(flow: dict, dump: str, rounds: int, budget: float, timed: bool) -> dict:
    """In the subprocess: every measurement of one flow, both modes, as a dict."""
    def reports() -> set[str]:
        return set(glob.glob(os.path.join(dump, "*memory-usage-report.txt")))

    x = pixels(flow["shape"], flow["batch"], flow["seed"])
    out: dict = {mode: {} for mode in flow["modes"]}
    xla_cs = []
    for mode in flow["modes"]:
        before = reports()
        c = train_contender(mode, flow, x, MODES[mode], xla=True)
        out[mode]["xla_mb"] = _xla_temp_mb(sorted(reports() - before))
        xla_cs.append(c)
    if flow["graph"]:
        for mode in flow["modes"]:
            c = train_contender(mode, flow, x, MODES[mode], xla=False)
            measure_memory(c)
            out[mode]["alloc_mb"] = c.peak_mb
            del c
    if timed:
        warm_up(xla_cs, 1)
        alternate(xla_cs, rounds, budget)
        base = xla_cs[0]
        for c in xla_cs:
            out[c.name]["ms"] = 1e3 * statistics.median(c.times)
            out[c.name]["ratio"] = [paired_ratio(c.times, base.times),
                                    paired_ratio(c.cpu_times, base.cpu_times)]
    return out


def measure(flow: dict, rounds: int, budget: float, timed: bool = True) -> dict:
    """Runs :func:`probe` for ``flow`` in a subprocess with XLA's dump switched on."""
    with tempfile.TemporaryDirectory() as dump:
        env = {**os.environ, "XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} "
                                          f"--xla_dump_to={dump}".strip()}
        proc = subprocess.run(
            [sys.executable, os.path.abspath(__file__), "--probe", json.dumps(flow),
             "--dump", dump, "--rounds", str(rounds), "--budget", str(budget),
             *([] if timed else ["--untimed"])],
            env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
        raise RuntimeError(f"memory probe failed (exit {proc.returncode}):\n{tail}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _mb(value) -> str:
    return "" if value is None else f"{value:,.1f}"


def table(rows: list[tuple[dict, dict]]) -> str:
    lines = ["| event | couplings | mode | XLA temp MB | allocator peak MB | ms / step (XLA) | "
             "x ordinary (wall / CPU) |", "| --- | ---: | --- | ---: | ---: | ---: | ---: |"]
    for flow, result in rows:
        image = "x".join(map(str, flow["shape"]))
        for mode, r in result.items():
            ratio = "" if "ratio" not in r else f"{r['ratio'][0]:.2f} / {r['ratio'][1]:.2f}"
            ms = "" if "ms" not in r else f"{r['ms']:,.0f}"
            lines.append(f"| {image} | {flow['couplings']} | {mode} | {_mb(r.get('xla_mb'))} | "
                         f"{_mb(r.get('alloc_mb'))} | {ms} | {ratio} |")
    return "\n".join(lines)


def estimate(args) -> str:
    """The large flow: memory-saving step run at the full batch, ordinary plan at a small one."""
    shape, k = tuple(args.estimate_shape), args.estimate_couplings
    flow = dict(shape=shape, couplings=k, hidden=args.hidden, blocks=args.blocks,
                seed=args.seed, graph=False)
    small = measure({**flow, "batch": args.estimate_small_batch,
                     "modes": ["ordinary", "memory-saving"]}, 0, 0.0, timed=False)
    scale = args.estimate_batch / args.estimate_small_batch
    if args.plan_only:
        full, run = {"memory-saving": {"xla_mb": None}}, "not run"
    else:
        t0 = time.perf_counter()
        full = measure({**flow, "batch": args.estimate_batch, "modes": ["memory-saving"]},
                       1, 0.0, timed=True)
        run = (f"{full['memory-saving']['ms'] / 1e3:,.1f} s / step "
               f"({time.perf_counter() - t0:.0f} s with compile)")
    saving_full = full["memory-saving"]["xla_mb"]
    image = "x".join(map(str, shape))
    return "\n".join([
        f"### {image}, {k} couplings, hidden {args.hidden}, {args.blocks} block(s), "
        f"batch {args.estimate_batch}", "",
        "| mode | XLA temp MB at batch " f"{args.estimate_small_batch} | XLA temp MB at batch "
        f"{args.estimate_batch} | step run at batch {args.estimate_batch} |",
        "| --- | ---: | ---: | --- |",
        f"| ordinary | {_mb(small['ordinary']['xla_mb'])} | "
        f"{_mb(small['ordinary']['xla_mb'] * scale)} (x{scale:g}, estimate) | not run |",
        f"| memory-saving | {_mb(small['memory-saving']['xla_mb'])} | "
        + (f"{_mb(saving_full)} (planned) | " if saving_full is not None else
           f"{_mb(small['memory-saving']['xla_mb'] * scale)} (x{scale:g}, estimate) | ")
        + f"{run} |",
    ])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 8x8 flows, 1 round")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--hidden", type=int, default=32, help="conditioner channels")
    parser.add_argument("--blocks", type=int, default=2, help="residual blocks per conditioner")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (median)")
    parser.add_argument("--budget", type=float, default=1.0,
                        help="seconds per mode per round (sets the steps per round)")
    parser.add_argument("--no-graph", action="store_true",
                        help="skip the non-XLA allocator peak")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--estimate", action="store_true",
                        help="the large-flow estimate and memory-saving run instead")
    parser.add_argument("--estimate-shape", type=int, nargs=3, default=[64, 64, 3])
    parser.add_argument("--estimate-couplings", type=int, default=32)
    parser.add_argument("--estimate-batch", type=int, default=64)
    parser.add_argument("--estimate-small-batch", type=int, default=4)
    parser.add_argument("--plan-only", action="store_true",
                        help="with --estimate: both modes' plans at the small batch, no run")
    parser.add_argument("--vector", action="store_true",
                        help="784-D realnvp_flow rows (hidden [512, 512], batch 256) instead")
    parser.add_argument("--train", type=int, metavar="STEPS",
                        help="train the --estimate flow with memory saving for STEPS steps")
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam's learning rate (--train)")
    parser.add_argument("--probe", help=argparse.SUPPRESS)
    parser.add_argument("--dump", help=argparse.SUPPRESS)
    parser.add_argument("--untimed", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.probe:  # internal: the subprocess of measure()
        flow = json.loads(args.probe)
        flow["shape"] = tuple(flow["shape"])
        print(json.dumps(probe(flow, args.dump, args.rounds, args.budget, not args.untimed)))
        return

    print(f"machine: {machine()}\n")
    if args.train:
        train_large(args)
        return
    if args.estimate:
        print(estimate(args), flush=True)
        return
    configs, rounds, budget = FULL, args.rounds, args.budget
    hidden, blocks, batch = args.hidden, args.blocks, args.batch
    if args.quick:
        configs, rounds, budget, hidden, blocks, batch = QUICK, 1, 0.0, 4, 1, 4
    if args.vector:
        configs, hidden, batch = VECTOR, 512, 256
        print(f"realnvp_flow, hidden [{hidden}, {hidden}], unwhitened, batch {batch}; "
              f"median of {rounds} alternating rounds\n", flush=True)
    else:
        print(f"realnvp_image_flow, 2 scales, hidden {hidden} channels, {blocks} residual "
              f"block(s), batch {batch}; median of {rounds} alternating rounds\n", flush=True)
    rows = []
    for shape, k in configs:
        flow = dict(shape=shape, couplings=k, hidden=hidden, blocks=blocks, batch=batch,
                    seed=args.seed, graph=not args.no_graph, modes=list(MODES))
        t0 = time.perf_counter()
        rows.append((flow, measure(flow, rounds, budget)))
        print(f"  {'x'.join(map(str, shape))}, {k} couplings: {time.perf_counter() - t0:.0f} s",
              file=sys.stderr, flush=True)
    print(table(rows))


if __name__ == "__main__":
    main()
