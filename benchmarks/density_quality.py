"""Density quality: held-out NLL of tfp-coupling flows against a Gaussian and a PyTorch peer.

One table, every cell the test NLL in nats per example in the data's own units, as
``mean ± sd (worst)`` over seeds; lower is better. Each seed redraws the toy data (or reshuffles a
table's rows before its 60/20/20 split) and the weights. Data are standardised with the training
split's statistics for every contender, and the log-det of that standardisation is added back,
so every column is comparable with the ``true`` one (the generating density, where known).

Contenders:

* ``gaussian``: full-covariance Gaussian fitted (maximum likelihood) on the training rows.
* ``nice``, ``realnvp``: ``tc.nice_flow`` / ``tc.realnvp_flow`` with their defaults. The
  RealNVP default (8 couplings, hidden [64, 64]) is also the matched budget of the peer. Its
  units and start follow the training rows: tanh at the identity on the tables (fewer than
  2000 rows), ReLU with a random start on the 2-D densities (8,000 rows).
* ``realnvp tanh`` (tables only): ``tc.realnvp_flow(..., activation="tanh", zero_init=True)``,
  what the command line uses for tables: the same setting as ``realnvp`` there, given
  explicitly (other weight draws: the random start is not drawn).
* ``nice cli`` (2-D only, only when named in ``--contenders``): the command line's NICE on
  2-D data, ``tc.nice_flow(..., num_couplings=16, hidden_units=[256, 256], sine_scale=None,
  mixing=None)``,
  trained as ``tfp-coupling train`` does (200 epochs, Adam 1e-3 with a 5-epoch warm-up and
  cosine decay, batch 256, no clipping): about 6 minutes a run on 2 cores.
* ``zuko K8``: zuko's ``RealNVP`` (PyTorch) with the same couplings, hidden sizes, optimiser,
  batch size, epochs, data and model selection; needs the ``benchmarks`` extra (torch, zuko).

All flows train with the same budget: Adam (2-D: learning rate 1e-3, batch 256, 30 epochs;
tables: 1e-4, batch 64, 300 epochs), and report the test NLL of the epoch
``tc.callbacks.BestOrStart`` keeps (the model selection the CLI does): the one with the best
validation NLL, or the untrained start (epoch 0) if that epoch's gain over it is within one
paired standard error of the validation rows. ``--selection best`` keeps the best epoch always
(the start counted as epoch 0), as every run before 2026-12-05 did.
``spike`` is the largest ratio of one epoch's mean training NLL to the previous epoch's over all
runs of a contender (where the previous is positive): above 1.5 is a loss spike. Where the NLL
nears or crosses 0 (tables, in standardised units) a ratio says little, so the largest rise
from one epoch to the next, in nats, is reported too.

Usage (from the repository root)::

    python benchmarks/density_quality.py                 # every 2-D density and table, 3 seeds
    python benchmarks/density_quality.py --quick         # smoke run: tiny data, 1 seed
    python benchmarks/density_quality.py --datasets two_moons rings --tables --seeds 5
    python benchmarks/density_quality.py --contenders realnvp "realnvp tanh" --seeds 5
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import numpy as np

import tfp_coupling as tc

TOY = ("two_moons", "circles", "rings", "eight_gaussians", "checkerboard", "pinwheel",
       "two_spirals")
TABLES = ("wine", "diabetes", "breast_cancer")
# Tables that chose nothing: held out to check a rule chosen on TABLES (statsmodels' and
# scikit-learn's bundled copies; the columns that are near-discrete or an index are dropped).
HELD_OUT_TABLES = {
    "iris": None,
    "engel": ["income", "foodexp"],
    "grunfeld": ["invest", "value", "capital"],
    "macrodata": ["realgdp", "realcons", "realinv", "realgovt", "realdpi", "cpi", "m1",
                  "tbilrate", "unemp", "pop", "infl", "realint"],
    "star98": ["NABOVE", "NBELOW", "LOWINC", "PERASIAN", "PERBLACK", "PERHISP", "PERMINTE",
               "AVYRSEXP", "AVSALK", "PERSPENK", "PTRATIO", "PCTAF", "PERMINTE_AVYRSEXP",
               "PERMINTE_AVSAL", "AVYRSEXP_AVSAL", "PERSPEN_PTRATIO", "PERSPEN_PCTAF",
               "PTRATIO_PCTAF"],
}
PEER_K, PEER_HIDDEN = 8, (64, 64)


@dataclass
class Split:
    """Standardised train/validation/test rows and the log-det of the standardisation."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    correction: float  # sum(log scale): add to a model-unit NLL to get data units
    true_nll: float | None = None


def toy_split(name: str, seed: int, n: int | None = None) -> Split:
    parts = [tc.data.load(name, s, seed=seed, n=n) for s in ("train", "validation", "test")]
    true = None
    if name in ("two_moons", "circles", "rings", "eight_gaussians", "checkerboard"):
        true = float(-tc.data.true_log_prob(name, parts[2]).mean())
    return _standardise(*parts, true_nll=true)


def table_split(name: str, seed: int) -> Split:
    """A bundled table (no download), rows shuffled by ``seed``, 60/20/20.

    ``TABLES`` and iris come with scikit-learn, the other ``HELD_OUT_TABLES`` with statsmodels.
    diabetes drops its binary ``sex`` column: a continuous density on two values is unbounded.
    """
    if HELD_OUT_TABLES.get(name):
        import statsmodels.api as sm

        frame = getattr(sm.datasets, name).load_pandas().data
        x = frame[HELD_OUT_TABLES[name]].to_numpy(np.float64)
    else:
        from sklearn import datasets

        x = getattr(datasets, f"load_{name}")().data.astype(np.float64)
    if name == "diabetes":
        x = np.delete(x, 1, axis=1)
    x = x[np.random.default_rng(seed).permutation(len(x))]
    a, b = int(0.6 * len(x)), int(0.8 * len(x))
    return _standardise(x[:a], x[a:b], x[b:])


def _standardise(train, val, test, true_nll=None) -> Split:
    mean, std = train.mean(0), train.std(0)

    def f(x):
        return ((x - mean) / std).astype(np.float32)

    return Split(f(train), f(val), f(test), float(np.log(std).sum()), true_nll)


def gaussian_nll(s: Split) -> float:
    gauss = tc.gaussian_fit(s.train, dtype="float64")
    return -float(np.mean(gauss.log_prob(s.test.astype(np.float64)))) + s.correction


@dataclass
class Budget:
    epochs: int
    batch_size: int
    lr: float
    cosine: bool = False  # the command line's schedule: warm-up, then cosine decay


class BestEpoch(keras.callbacks.Callback):
    """Keeps the weights with the lowest validation NLL, the untrained start included."""

    def __init__(self, val: np.ndarray) -> None:
        super().__init__()
        self.val, self.best, self.weights = val, math.inf, None

    def on_train_begin(self, logs=None):
        self.on_epoch_end(-1)
        self.start_weights = self.model.get_weights()

    def on_epoch_end(self, epoch, logs=None):
        nll = -float(np.mean(self.model.log_prob(self.val)))
        if nll < self.best:
            self.best, self.weights = nll, self.model.get_weights()


def train_ours(build: Callable[[int], tc.FlowModel], s: Split, budget: Budget, seed: int,
               clipnorm: float | None = None, weight_decay: float | None = None,
               info: dict | None = None, epsilon: float = 1e-7, selection: str = "best"):
    """``(test NLL, epoch-mean training NLLs)`` of a tfp-coupling flow.

    ``selection``: ``"best"`` (the epoch of lowest validation NLL) or ``"best-or-start"``
    (``tc.callbacks.BestOrStart``: that epoch if its validation gain over the start beats one
    paired standard error, else the start).
    ``weight_decay``: Keras' decoupled decay (``w -= lr * weight_decay * w`` per step, AdamW).
    ``info``, if given, receives ``start``: the test NLL of the untrained (initialised) flow.
    ``epsilon``: Adam's (Keras' default 1e-7; PyTorch's, the peer's, is 1e-8).
    """
    keras.utils.set_random_seed(seed)
    model = build(s.train.shape[1])
    lr = budget.lr
    if budget.cosine:
        from tfp_coupling.cli.options import WARMUP_EPOCHS
        from tfp_coupling.cli.tasks import learning_rate_schedule

        lr = learning_rate_schedule(
            {"lr": lr, "schedule": "cosine", "epochs": budget.epochs,
             "warmup_epochs": WARMUP_EPOCHS}, math.ceil(len(s.train) / budget.batch_size))
    opt = keras.optimizers.Adam(lr, global_clipnorm=clipnorm, weight_decay=weight_decay,
                                epsilon=epsilon)
    if weight_decay:  # decay the conditioners only, not the data-initialised whitening/ActNorm
        from tfp_coupling.bijectors.actnorm import data_initialized_layers

        opt.exclude_from_weight_decay(var_list=[
            v for layer in data_initialized_layers(model) for v in layer.weights])
    model.compile(optimizer=opt, jit_compile=True)
    if selection == "best-or-start":
        rule = tc.callbacks.BestOrStart(s.val)  # restores its choice when fit ends
        hist = model.fit(s.train, batch_size=budget.batch_size, epochs=budget.epochs,
                         verbose=0, callbacks=[rule])
    else:
        best = BestEpoch(s.val)
        hist = model.fit(s.train, batch_size=budget.batch_size, epochs=budget.epochs,
                         verbose=0, callbacks=[best])
        if info is not None:
            model.set_weights(best.start_weights)
            info["start"] = -float(np.mean(model.log_prob(s.test))) + s.correction
        model.set_weights(best.weights)
    test = -float(np.mean(model.log_prob(s.test))) + s.correction
    return test, [float(v) for v in hist.history["nll"]]


def train_zuko(s: Split, budget: Budget, seed: int, selection: str = "best"):
    """The same protocol for zuko's RealNVP (shuffled batches, Adam, best validation epoch, or
    with ``selection="best-or-start"`` the library's rule on the same per-row NLLs)."""
    import copy

    import torch
    import zuko

    torch.manual_seed(seed)
    flow = zuko.flows.RealNVP(s.train.shape[1], transforms=PEER_K, hidden_features=PEER_HIDDEN)
    opt = torch.optim.Adam(flow.parameters(), lr=budget.lr)
    x, val, test = (torch.from_numpy(a) for a in (s.train, s.val, s.test))
    gen = torch.Generator().manual_seed(seed)
    history, best, best_test = [], math.inf, math.nan
    rule = tc.callbacks.BestOrStart(s.val)

    def observe(epoch: int) -> None:
        if selection == "best-or-start":
            rule.observe(epoch, -flow().log_prob(val).numpy(),
                         lambda: copy.deepcopy(flow.state_dict()))

    with torch.no_grad():
        best, best_test = (-flow().log_prob(a).mean().item() for a in (val, test))
        observe(0)
    for _ in range(budget.epochs):
        total = 0.0
        for idx in torch.randperm(len(x), generator=gen).split(budget.batch_size):
            loss = -flow().log_prob(x[idx]).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        history.append(total / len(x))
        with torch.no_grad():
            v = -flow().log_prob(val).mean().item()
            if v < best:
                best, best_test = v, -flow().log_prob(test).mean().item()
            observe(len(history))
    if selection == "best-or-start":
        flow.load_state_dict(rule.choose())
        with torch.no_grad():
            best_test = -flow().log_prob(test).mean().item()
    return best_test + s.correction, history


def max_epoch_ratio(history: list[float]) -> float:
    ratios = [b / a for a, b in itertools.pairwise(history) if a > 0]
    return max(ratios, default=1.0)


def max_epoch_rise(history: list[float]) -> float:
    """The largest rise of the mean training NLL from one epoch to the next, in nats (0 if it
    never rises): unlike the ratio, meaningful where the NLL is near or below 0 (tables)."""
    return max([b - a for a, b in itertools.pairwise(history)] + [0.0])


@dataclass
class Cell:
    values: list[float] = field(default_factory=list)
    spike: float = 1.0
    rise: float = 0.0

    def add(self, value: float, history: list[float] | None = None) -> None:
        self.values.append(value)
        if history:
            self.spike = max(self.spike, max_epoch_ratio(history))
            self.rise = max(self.rise, max_epoch_rise(history))

    def text(self) -> str:
        v = np.asarray(self.values)
        if len(v) == 0:
            return "-"
        if len(v) == 1:
            return f"{v[0]:.3f}"
        return f"{v.mean():.3f} ± {v.std(ddof=1):.3f} ({v.max():.3f})"


# Contenders trained on tables only: on the 2-D densities ReLU conditioners fit better.
TABLE_ONLY = ("realnvp tanh",)
# Contenders trained on 2-D data only, with their own budget, and only when asked for by name.
TOY_ONLY = {"nice cli": Budget(200, 256, 1e-3, cosine=True)}


def contenders(with_peer: bool) -> dict[str, Callable | None]:
    def nice(d):
        return tc.nice_flow([d])

    def realnvp(d):
        return tc.realnvp_flow([d])

    def realnvp_tanh(d):
        return tc.realnvp_flow([d], activation="tanh", zero_init=True)

    def nice_cli(d):
        return tc.nice_flow([d], num_couplings=16, hidden_units=(256, 256), sine_scale=None,
                            mixing=None)

    out: dict[str, Callable | None] = {"nice": nice, "realnvp": realnvp,
                                       "realnvp tanh": realnvp_tanh, "nice cli": nice_cli}
    if with_peer:
        out["zuko K8"] = None
    return out


def peer_available() -> bool:
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in ("torch", "zuko"))


def run(datasets, tables, seeds: int, toy_budget: Budget, table_budget: Budget,
        with_peer: bool, toy_n: int | None = None, log=print,
        only: list[str] | None = None, own_budgets: dict[str, Budget] | None = None,
        selection: str = "best") -> str:
    """The table; ``own_budgets`` (default ``TOY_ONLY``) replace the 2-D budget of those
    contenders."""
    own_budgets = TOY_ONLY if own_budgets is None else own_budgets
    names = contenders(with_peer)
    if only is None:
        names = {k: v for k, v in names.items() if k not in TOY_ONLY}
    else:  # rerun some columns; the data of a seed do not depend on the rest
        names = {k: v for k, v in names.items() if k in only}
    if not tables:
        names = {k: v for k, v in names.items() if k not in TABLE_ONLY}
    if not datasets:
        names = {k: v for k, v in names.items() if k not in TOY_ONLY}
    rows = []
    spikes, rises = {k: 1.0 for k in names}, {k: 0.0 for k in names}
    jobs = [(d, "toy") for d in datasets] + [(t, "table") for t in tables]
    for name, kind in jobs:
        cells = {k: Cell() for k in ("true", "gaussian", *names)}
        budget = toy_budget if kind == "toy" else table_budget
        for seed in range(seeds):
            s = toy_split(name, seed, toy_n) if kind == "toy" else table_split(name, seed)
            if s.true_nll is not None:
                cells["true"].add(s.true_nll)
            cells["gaussian"].add(gaussian_nll(s))
            for label, build in names.items():
                if (kind == "toy" and label in TABLE_ONLY) or (
                        kind == "table" and label in TOY_ONLY):
                    continue
                start = time.perf_counter()
                if build is None:
                    nll, hist = train_zuko(s, budget, seed, selection)
                else:
                    nll, hist = train_ours(build, s, own_budgets.get(label, budget), seed,
                                           selection=selection)
                cells[label].add(nll, hist)
                log(f"{name} seed {seed} {label}: {nll:.3f} nats, spike "
                    f"{max_epoch_ratio(hist):.2f} (rise {max_epoch_rise(hist):.2f} nats), "
                    f"{time.perf_counter() - start:.0f} s")
        for k in names:
            spikes[k] = max(spikes[k], cells[k].spike)
            rises[k] = max(rises[k], cells[k].rise)
        rows.append((name, cells))
    cols = ["true", "gaussian", *names]
    lines = [f"| data | {' | '.join(cols)} |", "| --- |" + " --- |" * len(cols)]
    for name, cells in rows:
        lines.append(f"| {name} | " + " | ".join(cells[c].text() for c in cols) + " |")
    lines.append("| spike (max epoch ratio) | - | - | "
                 + " | ".join(f"{spikes[k]:.2f}" for k in names) + " |")
    lines.append("| largest epoch rise (nats) | - | - | "
                 + " | ".join(f"{rises[k]:.2f}" for k in names) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", nargs="*", default=list(TOY), choices=TOY)
    parser.add_argument("--tables", nargs="*", default=list(TABLES), choices=TABLES)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=30, help="2-D densities (default 30)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--table-epochs", type=int, default=300)
    parser.add_argument("--table-batch-size", type=int, default=64)
    parser.add_argument("--table-lr", type=float, default=1e-4)
    parser.add_argument("--no-peer", action="store_true", help="skip the zuko column")
    parser.add_argument("--contenders", nargs="+", choices=[*contenders(True)],
                        help="train only these (default: every contender)")
    parser.add_argument("--selection", choices=("best-or-start", "best"),
                        default="best-or-start",
                        help="the epoch each flow reports: the lowest validation NLL only if "
                             "its gain over the start beats one paired standard error "
                             "(tc.callbacks.BestOrStart, default), or the lowest always")
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny data, 1 seed")
    args = parser.parse_args(argv)
    with_peer = not args.no_peer and peer_available()
    if not args.no_peer and not with_peer:
        print("torch/zuko not installed (pip install -e '.[benchmarks]'): no peer column",
              file=sys.stderr)
    toy_n, own_budgets = None, TOY_ONLY
    if args.quick:  # every contender on the tiny budget
        args.seeds, args.epochs, args.table_epochs, toy_n = 1, 2, 2, 512
        args.datasets, args.tables, own_budgets = args.datasets[:1], args.tables[:1], {}
    table = run(args.datasets, args.tables, args.seeds,
                Budget(args.epochs, args.batch_size, args.lr),
                Budget(args.table_epochs, args.table_batch_size, args.table_lr),
                with_peer, toy_n=toy_n, only=args.contenders, own_budgets=own_budgets,
                selection=args.selection)
    print(f"\nTest NLL, nats per example, mean ± sd (worst) over {args.seeds} seed(s); "
          f"2-D: Adam {args.lr}, batch {args.batch_size}, {args.epochs} epochs; tables: Adam "
          f"{args.table_lr}, batch {args.table_batch_size}, {args.table_epochs} epochs; "
          f"selection: {args.selection}"
          + "".join(f"; {k}: Adam {b.lr}, batch {b.batch_size}, {b.epochs} epochs, warm-up and "
                    f"cosine decay" for k, b in own_budgets.items() if k in (args.contenders or ()))
          + "\n")
    print(table)


if __name__ == "__main__":
    main()
