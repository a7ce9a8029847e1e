"""How the training step time of tfp-coupling RealNVP grows with event size and coupling count.

Two sweeps, each measured in alternating rounds (median) next to the conditioner-only floor and
chain floor of the same configuration (see ``train_throughput.py`` for what they are):

* event size ``D`` in 2 ... 3072 with 4 couplings, hidden ``[256, 256]``, batch 256;
* number of couplings ``K`` in 2 ... 16 with ``D = 784``, hidden ``[256, 256]``, batch 256.

With fixed hidden widths a coupling's conditioner costs ``B (D/2 H + H^2 + H D)`` multiply-adds
forward, so the step time is affine in ``D`` (a constant ``H^2`` part plus a part proportional
to ``D``) and proportional to ``K``; the table shows it, with the ratio to the floor, which stays
flat if the flow adds no cost that grows faster than the conditioners.

Run: ``python benchmarks/scaling.py`` (``--quick`` for a smoke run, ``--xla`` to compile steps).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np
import tensorflow as tf
from train_throughput import (
    alternate,
    chain_floor_contender,
    floor_contender,
    machine,
    paired_ratio,
    tc_train_contender,
    warm_up,
)


def sweep(configs: list[dict], xla: bool, rounds: int, budget: float, seed: int) -> list[tuple]:
    pairs = []
    for w in configs:
        x = tf.constant(np.random.default_rng(seed).normal(size=(w["batch"], w["dim"]))
                        .astype("float32"))
        flow = tc_train_contender(f"D={w['dim']} K={w['couplings']}", "realnvp", w, x, xla, seed)
        floor = floor_contender("floor", w, 2, xla, seed)
        chain = chain_floor_contender("chain floor", w, 2, xla, seed)
        pairs.append((w, flow, floor, chain))
    everything = [c for _, *cs in pairs for c in cs]
    warm_up(everything, 2)
    alternate(everything, rounds, budget)
    return pairs


def table(pairs: list[tuple], key: str) -> str:
    """The sweep as a table, plus a least-squares line ``t = a + b * size`` through it."""
    lines = [f"| {key} | ms / step | floor ms / step | x floor (wall / CPU) | "
             "x chain floor (wall / CPU) | line fit ms |",
             "| ---: | ---: | ---: | ---: | ---: | ---: |"]
    size = np.array([w["dim"] if key == "D" else w["couplings"] for w, *_ in pairs], float)
    t = np.array([1e3 * statistics.median(flow.times) for _, flow, *_ in pairs])
    slope, intercept = np.polyfit(size, t, 1)

    def ratios(num, den) -> str:
        return (f"{paired_ratio(num.times, den.times):.2f} / "
                f"{paired_ratio(num.cpu_times, den.cpu_times):.2f}")

    for (_, flow, floor, chain), n, ms in zip(pairs, size, t, strict=True):
        lines.append(f"| {int(n)} | {ms:.2f} | {1e3 * statistics.median(floor.times):.2f} | "
                     f"{ratios(flow, floor)} | {ratios(flow, chain)} | "
                     f"{intercept + slope * n:.2f} |")
    unit = "1000 dims" if key == "D" else "coupling"
    scale = 1000 if key == "D" else 1
    lines.append(f"\nline fit: {intercept:.2f} ms + {scale * slope:.2f} ms per {unit}")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--budget", type=float, default=0.25,
                        help="seconds per configuration per round")
    parser.add_argument("--xla", action="store_true", help="jit_compile=True for every step")
    parser.add_argument("--quick", action="store_true", help="smoke run: few sizes, 2 rounds")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    dims = [2, 8, 32, 128, 512, 784, 1536, 3072]
    ks = [2, 4, 8, 16]
    rounds, budget = args.rounds, args.budget
    if args.quick:
        dims, ks, rounds, budget = [2, 64, 256], [2, 4], 2, 0.05
    hidden, batch = (256, 256), 256
    print(f"machine: {machine()}")
    print(f"median of {rounds} alternating rounds; hidden {list(hidden)}, batch {batch}, "
          f"jit_compile={args.xla}\n")
    configs = [dict(dim=d, couplings=4, hidden=hidden, batch=batch) for d in dims]
    print("### step time vs event size D (4 couplings)\n")
    print(table(sweep(configs, args.xla, rounds, budget, args.seed), "D") + "\n", flush=True)
    configs = [dict(dim=784 if not args.quick else 64, couplings=k, hidden=hidden, batch=batch)
               for k in ks]
    print(f"### step time vs number of couplings K (D = {configs[0]['dim']})\n")
    print(table(sweep(configs, args.xla, rounds, budget, args.seed), "K"))


if __name__ == "__main__":
    main()
