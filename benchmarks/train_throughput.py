"""Side-by-side training benchmark: tfp-coupling vs TFP's ``tfb.RealNVP`` vs the conditioner floor.

Every contender trains the *same* conditioner architecture (``tfp_coupling.nets.MLP``, Keras 3)
with the same optimizer (Adam) on the same fixed batch, and all of them run in ONE process,
alternating in rounds (round-robin, the starting contender rotating each round), so that a noisy
shared machine slows every contender alike. The table reports the median over rounds.

Contenders (each "full step" = forward, backward and an Adam update of every weight):

* ``floor``: the conditioner networks alone. Each network gets a fixed input ``[B, d_a]`` and a
  fixed cotangent for its output; the step computes the weight gradients *and* the gradients with
  respect to the inputs of every network but the first one applied (a chained coupling must
  backpropagate through its input; the first coupling's input is the data), then applies Adam.
  This is the cost a coupling flow cannot avoid. There is one floor per output width: the
  affine floor (``2 * d_b`` outputs, RealNVP) and the additive floor (``d_b`` outputs, NICE).
* ``chain floor``: the same networks with the data dependencies of a coupling chain and nothing
  else: network ``k + 1`` reads the first ``d_a`` columns of network ``k``'s output (in a flow it
  reads the half coupling ``k`` transformed). No coupling arithmetic, no log-dets, no masks: a
  zero-overhead coupling flow. The independent floor may run its networks side by side on
  several cores; a chain cannot, so this is the bound a flow (ours or TFP's) can actually reach.
* ``tc RealNVP`` / ``tc NICE``: ``tfp_coupling.realnvp_flow`` / ``nice_flow`` trained by the
  model's own Keras train step (``model.train_function``, what ``model.fit`` runs per batch),
  compiled with ``jit_compile=True`` (XLA) or ``False``.
* ``TFP RealNVP``: ``tfb.RealNVP`` couplings (``num_masked = D // 2``) with a ``tfb.Permute``
  (reversal) between couplings, in a ``tfd.TransformedDistribution`` over ``N(0, I)``, trained in
  a ``tf.function`` step (``jit_compile`` on or off) with ``GradientTape`` and the same Keras
  Adam. Its conditioners are the same ``MLP`` layers, held by a ``keras.Model`` and called from a
  small wrapper function (a Keras 3 layer passed straight as ``shift_and_log_scale_fn`` fails).
  TFP's version has no log-scale clamp; ours computes ``5 tanh(s / 5)`` on top.

Also measured: ``log_prob`` (forward only) and sampling throughput of the same three flows, and
the memory one training step needs beyond weights and optimizer state (``--no-memory`` to skip):
for graph-mode steps the peak TensorFlow's CPU allocator holds during the step
(``measure_memory``), for XLA steps the temporary buffer XLA's buffer assignment allocates for
the compiled step, read from the compiler's own dump in a subprocess (``xla_step_memory``).

Ratios are medians of per-round ratios, on wall-clock time and on process CPU time. On a shared
machine the CPU-time ratio is the steadier one: other processes stretch wall time, not the CPU
time a step spends.

Run (from the repository root)::

    python benchmarks/train_throughput.py                 # both workloads, XLA on and off
    python benchmarks/train_throughput.py --quick         # smoke run (2-D, no XLA, 2 rounds)
    python benchmarks/train_throughput.py --workload 784d --rounds 15
    python benchmarks/train_throughput.py --count-ops     # ops and matmuls per step, no timing
    python benchmarks/train_throughput.py --variants      # which part of the step costs what
    python benchmarks/train_throughput.py --tfp-paths     # TFP's log_prob path vs the fused walk
    python benchmarks/train_throughput.py --profile /tmp/prof   # TensorBoard profiler traces

``--variants`` times stripped-down versions of the tfp-coupling RealNVP step (the Keras train
step, a bare tape + Adam step, log-likelihood gradients only, log-likelihood only) next to the
floor. ``--count-ops`` counts graph ops and, under XLA, matrix products per log-likelihood
gradient: a profile that does not move with machine load.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

import tfp_coupling as tc

tfb, tfd = tfp.bijectors, tfp.distributions

WORKLOADS = {
    "2d": dict(dim=2, couplings=8, hidden=(64, 64), batch=512),
    "784d": dict(dim=784, couplings=4, hidden=(512, 512), batch=256),
}


# --------------------------------------------------------------------------------------------
# Contenders
# --------------------------------------------------------------------------------------------


@dataclass
class Contender:
    """A named callable running one unit of work on ``batch`` examples."""

    name: str
    kind: str  # "train", "log_prob" or "sample"
    step: Callable[[], object]
    batch: int
    xla: bool
    floor: str | None = None  # name of the floor this contender is compared with
    times: list[float] = field(default_factory=list)  # wall seconds per step, one per round
    cpu_times: list[float] = field(default_factory=list)  # process CPU seconds per step
    peak_mb: float | None = None
    graph: Callable[[], tf.Graph] | None = None  # the traced step, where there is one to inspect

    def run(self, steps: int) -> float:
        """Runs ``steps`` steps; records and returns wall seconds per step."""
        out = None
        start, cpu = time.perf_counter(), time.process_time()
        for _ in range(steps):
            out = self.step()
        _sync(out)
        wall = (time.perf_counter() - start) / steps
        self.times.append(wall)
        self.cpu_times.append((time.process_time() - cpu) / steps)
        return wall


def _sync(out) -> None:
    """Waits for a step's result (tf.function calls are synchronous on CPU; this is for GPUs)."""
    for t in tf.nest.flatten(out):
        if hasattr(t, "numpy"):
            t.numpy()
            return


def conditioner_nets(dim: int, couplings: int, hidden, params_per_dim: int, seed: int):
    """The conditioners of a ``dim``-D flow: ``MLP(hidden, [params_per_dim * d_b])`` each."""
    keras.utils.set_random_seed(seed)
    nets = []
    for i in range(couplings):
        d_a = dim // 2 if i % 2 == 0 else dim - dim // 2
        d_b = dim - d_a
        net = tc.nets.MLP(hidden, [params_per_dim * d_b], name=f"net_{i}")
        net.build((None, d_a))
        nets.append(net)
    return nets


class _Holder(keras.Model):
    """A Keras model that only owns some layers (so their weights are tracked and trained)."""

    def __init__(self, layers, **kwargs):
        super().__init__(**kwargs)
        self.held = list(layers)

    def call(self, x):  # pragma: no cover - never called
        return x


def _floor_parts(w, params_per_dim: int, seed: int):
    """Conditioners, their variables, a built Adam, fixed inputs ``[B, d_a]`` and cotangents."""
    dim, batch = w["dim"], w["batch"]
    nets = conditioner_nets(dim, w["couplings"], w["hidden"], params_per_dim, seed)
    variables = _Holder(nets).trainable_variables
    opt = keras.optimizers.Adam(1e-4)
    opt.build(variables)
    rng = np.random.default_rng(seed)
    xs = [tf.constant(rng.normal(size=(batch, _d_a(dim, i))).astype("float32"))
          for i in range(len(nets))]
    gs = [tf.constant(rng.normal(size=(batch, params_per_dim * (dim - _d_a(dim, i))))
                      .astype("float32") / batch) for i in range(len(nets))]
    return nets, variables, opt, xs, gs


def floor_contender(name, w, params_per_dim: int, xla: bool, seed: int) -> Contender:
    nets, variables, opt, xs, gs = _floor_parts(w, params_per_dim, seed)

    @tf.function(jit_compile=xla, autograph=False)
    def step(xs, gs):
        with tf.GradientTape() as tape:
            tape.watch(xs[1:])
            outs = [net(x) for net, x in zip(nets, xs, strict=True)]
        # Backward from the fixed output cotangents gs: no loss arithmetic at all.
        grads = tape.gradient(outs, [*variables, *xs[1:]], output_gradients=gs)
        opt.apply_gradients(zip(grads[: len(variables)], variables, strict=True))
        # Return outputs and input gradients so that no compiler drops them as unused.
        return outs, grads[len(variables):]

    return Contender(name, "train", lambda: step(xs, gs), w["batch"], xla,
                     graph=lambda: step.get_concrete_function(xs, gs).graph)


def chain_floor_contender(name, w, params_per_dim: int, xla: bool, seed: int) -> Contender:
    nets, variables, opt, xs, gs = _floor_parts(w, params_per_dim, seed)
    dim = w["dim"]

    @tf.function(jit_compile=xla, autograph=False)
    def step(x, gs):
        with tf.GradientTape() as tape:
            outs, h = [], x
            for i, net in enumerate(nets):
                outs.append(net(h))
                # The next network conditions on what this coupling transformed: d_b(i) columns,
                # and d_b(i) = d_a(i + 1) for alternating halves.
                h = outs[-1][:, : _d_a(dim, i + 1)]
        grads = tape.gradient(outs, variables, output_gradients=gs)
        # The last network's output feeds no gradient: without this edge the executor may
        # compute it after the update, and the step would return post-update outputs.
        with tf.control_dependencies(outs):
            opt.apply_gradients(zip(grads, variables, strict=True))
        return outs

    return Contender(name, "train", lambda: step(xs[0], gs), w["batch"], xla,
                     graph=lambda: step.get_concrete_function(xs[0], gs).graph)


def _d_a(dim: int, i: int) -> int:
    return dim // 2 if i % 2 == 0 else dim - dim // 2


def tc_model(kind: str, w, seed: int):
    keras.utils.set_random_seed(seed)
    # The coupling chain alone, as the floors and TFP's RealNVP: no whitening, clamp 5, ReLU
    # units (realnvp_flow's default gives 2-D data sine units in half of the first layer).
    if kind == "realnvp":
        return tc.realnvp_flow(event_shape=[w["dim"]], num_couplings=w["couplings"],
                               hidden_units=w["hidden"], whiten=False, log_scale_clamp=5.0,
                               sine_scale=None)
    # ReLU units and no mixing, as the floors' conditioners (nice_flow's default gives 2-D
    # data sine units and rotations between the couplings).
    return tc.nice_flow(event_shape=[w["dim"]], num_couplings=w["couplings"],
                        hidden_units=w["hidden"], whiten=False, sine_scale=None, mixing=None)


def tc_train_contender(name, kind: str, w, x, xla: bool, seed: int) -> Contender:
    model = tc_model(kind, w, seed)
    model.compile(optimizer=keras.optimizers.Adam(1e-4), jit_compile=xla)
    model.train_on_batch(x)  # builds optimizer and metrics, makes model.train_function
    data = [(x, None, None)]  # the structure train_on_batch passes: no retrace

    def step():
        # Exactly what model.fit runs per batch (the compiled Keras train step), minus the
        # data pipeline and callbacks.
        return model.train_function(data)

    floor = "floor affine" if kind == "realnvp" else "floor additive"
    return Contender(name, "train", step, w["batch"], xla, floor=f"{floor}{_x(xla)}")


def tfp_realnvp(w, seed: int):
    """TFP's own RealNVP on the same Keras 3 conditioners; returns (distribution, holder)."""
    dim = w["dim"]
    nets = conditioner_nets(dim, w["couplings"], w["hidden"], 2, seed)

    def wrap(net):
        def shift_and_log_scale_fn(x0, output_units, **kwargs):
            shift, log_scale = tf.split(net(x0), 2, axis=-1)
            return shift, log_scale
        return shift_and_log_scale_fn

    links = []
    for i, net in enumerate(nets):
        if i > 0:
            links.append(tfb.Permute(np.arange(dim)[::-1].copy()))
        links.append(tfb.RealNVP(num_masked=_d_a(dim, i), shift_and_log_scale_fn=wrap(net)))
    # As in tfp_coupling's builders, links[0] is applied first in the inverse (data -> base).
    base = tfd.Sample(tfd.Normal(0.0, 1.0), [dim])
    dist = tfd.TransformedDistribution(base, tfb.Chain(links))
    return dist, _Holder(nets)


def tfp_train_contender(name, w, x, xla: bool, seed: int) -> Contender:
    dist, holder = tfp_realnvp(w, seed)
    variables = holder.trainable_variables
    opt = keras.optimizers.Adam(1e-4)
    opt.build(variables)

    @tf.function(jit_compile=xla, autograph=False)
    def step(x):
        with tf.GradientTape() as tape:
            loss = -tf.reduce_mean(dist.log_prob(x))
        grads = tape.gradient(loss, variables)
        opt.apply_gradients(zip(grads, variables, strict=True))
        return loss

    return Contender(name, "train", lambda: step(x), w["batch"], xla,
                     floor=f"floor affine{_x(xla)}")


def eval_contenders(w, x, xla: bool, seed: int) -> list[Contender]:
    """log_prob and sampling for tc RealNVP, tc NICE and TFP RealNVP."""
    out = []
    n = w["batch"]
    for label, kind in (("tc RealNVP", "realnvp"), ("tc NICE", "nice")):
        model = tc_model(kind, w, seed)
        lp = tf.function(model.log_prob, jit_compile=xla, autograph=False)
        smp = tf.function(_sampler(model, n), jit_compile=xla, autograph=False)
        out.append(Contender(f"{label}{_x(xla)}", "log_prob", _bind(lp, x), n, xla))
        out.append(Contender(f"{label}{_x(xla)}", "sample", smp, n, xla))
    dist, _ = tfp_realnvp(w, seed)
    lp = tf.function(dist.log_prob, jit_compile=xla, autograph=False)
    smp = tf.function(lambda: dist.sample(n), jit_compile=xla, autograph=False)
    out.append(Contender(f"TFP RealNVP{_x(xla)}", "log_prob", lambda: lp(x), n, xla))
    out.append(Contender(f"TFP RealNVP{_x(xla)}", "sample", smp, n, xla))
    return out


def _sampler(model, n: int):
    def sample():
        return model.sample(n)
    return sample


def _bind(fn, x):
    return lambda: fn(x)


def _x(xla: bool) -> str:
    return " (XLA)" if xla else ""


def build_contenders(w, seed: int, xla_modes, include_eval: bool) -> list[Contender]:
    x = tf.constant(np.random.default_rng(seed).normal(size=(w["batch"], w["dim"]))
                    .astype("float32"))
    cs: list[Contender] = []
    for xla in xla_modes:
        cs += [
            floor_contender(f"floor affine{_x(xla)}", w, 2, xla, seed),
            floor_contender(f"floor additive{_x(xla)}", w, 1, xla, seed),
            chain_floor_contender(f"chain floor affine{_x(xla)}", w, 2, xla, seed),
            chain_floor_contender(f"chain floor additive{_x(xla)}", w, 1, xla, seed),
            tc_train_contender(f"tc RealNVP{_x(xla)}", "realnvp", w, x, xla, seed),
            tc_train_contender(f"tc NICE{_x(xla)}", "nice", w, x, xla, seed),
            tfp_train_contender(f"TFP RealNVP{_x(xla)}", w, x, xla, seed),
        ]
        if include_eval:
            cs += eval_contenders(w, x, xla, seed)
    return cs


# --------------------------------------------------------------------------------------------
# Measurement
# --------------------------------------------------------------------------------------------


def warm_up(cs: list[Contender], steps: int) -> None:
    for c in cs:
        c.run(steps)  # the first call traces and compiles
        c.run(steps)


def alternate(cs: list[Contender], rounds: int, budget_s: float) -> None:
    """Round-robin: every round runs every contender once, starting one further each round.

    Each contender runs as many steps per round as fit in ``budget_s`` (from its warm-up time).
    """
    steps = {id(c): max(1, min(200, int(budget_s / max(c.times[-1], 1e-6)))) for c in cs}
    for c in cs:
        c.times.clear()
        c.cpu_times.clear()
    for r in range(rounds):
        for c in cs[r % len(cs):] + cs[: r % len(cs)]:
            c.run(steps[id(c)])


def measure_memory(c: Contender) -> None:
    """Peak bytes TensorFlow's CPU allocator holds during one step, above the level before it.

    That counts every tensor the step allocates: activations kept for the backward pass,
    gradients, temporaries, outputs. Weights and optimizer slots exist before the step and are
    not counted. XLA-compiled steps allocate their temporaries outside TensorFlow's allocator:
    ``xla_step_memory`` measures those. The allocator does not count very small tensors either,
    so graph-mode steps on the 2-D workload show about 0.
    """
    if c.xla:
        return
    _sync(c.step())
    tf.config.experimental.reset_memory_stats("CPU:0")
    before = tf.config.experimental.get_memory_info("CPU:0")["current"]
    _sync(c.step())
    c.peak_mb = (tf.config.experimental.get_memory_info("CPU:0")["peak"] - before) / 2**20


def xla_step_memory(w: dict, seed: int) -> dict[str, float]:
    """MB of temporaries of each XLA training step, as XLA's buffer assignment allocates them.

    XLA plans every buffer of a compiled step ahead of time; the "preallocated-temp" allocation
    of its buffer assignment holds all intermediates (activations kept for the backward pass,
    gradients, optimizer temporaries). Weights, optimizer slots and inputs are parameters, not
    counted, as in ``measure_memory``. XLA writes that plan only when ``XLA_FLAGS`` asks for a
    dump before TensorFlow starts, hence a subprocess (``--xla-memory-probe``).
    """
    with tempfile.TemporaryDirectory() as dump:
        env = {**os.environ, "XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} "
                                          f"--xla_dump_to={dump}".strip()}
        proc = subprocess.run(
            [sys.executable, os.path.abspath(__file__), "--xla-memory-probe", dump,
             "--probe-workload", json.dumps(w), "--seed", str(seed)],
            env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
        raise RuntimeError(f"XLA memory probe failed (exit {proc.returncode}); rerun with "
                           f"--no-memory to skip it. Its last output:\n{tail}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _xla_temp_mb(report_files: list[str]) -> float | None:
    """The largest preallocated temporary among XLA memory reports (the training step's)."""
    sizes = []
    for path in report_files:
        with open(path) as f:
            for line in f:
                m = re.search(r"allocation \d+: size ([\d.]+)(B|KiB|MiB|GiB), "
                              r"preallocated-temp", line)
                if m:
                    unit = {"B": 2**-20, "KiB": 2**-10, "MiB": 1.0, "GiB": 2**10}[m.group(2)]
                    sizes.append(float(m.group(1)) * unit)
    return max(sizes) if sizes else None


def _xla_memory_probe(dump: str, w, seed: int) -> None:
    """Builds and runs each XLA training contender once; prints {name: temp MB} as JSON."""
    def reports() -> set[str]:
        return set(glob.glob(os.path.join(dump, "*memory-usage-report.txt")))

    x = tf.constant(np.random.default_rng(seed).normal(size=(w["batch"], w["dim"]))
                    .astype("float32"))
    makers = {
        "floor affine (XLA)": lambda: floor_contender("", w, 2, True, seed),
        "floor additive (XLA)": lambda: floor_contender("", w, 1, True, seed),
        "chain floor affine (XLA)": lambda: chain_floor_contender("", w, 2, True, seed),
        "chain floor additive (XLA)": lambda: chain_floor_contender("", w, 1, True, seed),
        "tc RealNVP (XLA)": lambda: tc_train_contender("", "realnvp", w, x, True, seed),
        "tc NICE (XLA)": lambda: tc_train_contender("", "nice", w, x, True, seed),
        "TFP RealNVP (XLA)": lambda: tfp_train_contender("", w, x, True, seed),
    }
    result = {}
    for name, make in makers.items():
        before = reports()
        _sync(make().step())
        result[name] = _xla_temp_mb(sorted(reports() - before))
    print(json.dumps(result))


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count()
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    return (f"{cpu}, {cores} cores (load avg {load}); Python {platform.python_version()}, "
            f"TF {tf.__version__}, TFP {tfp.__version__}, Keras {keras.__version__}")


def paired_ratio(num: list[float], den: list[float]) -> float:
    """Median over rounds of ``num[r] / den[r]``: both ran in the same round, on the same load."""
    return statistics.median(a / b for a, b in zip(num, den, strict=True))


def report(title: str, cs: list[Contender]) -> str:
    """Markdown tables. Ratios are medians of per-round ratios (wall clock, and process CPU time).

    ``x floor``: step time / the matching floor's (same XLA setting); lower is better, 1 is the
    floor. ``x chain floor``: the same against the chain floor (the networks with a coupling
    chain's data dependencies and nothing else). ``TFP / this``: TFP RealNVP's step time / this
    one's (same XLA setting); higher is better, it is the throughput ratio. On the chain-floor
    rows it is the most any coupling flow with these conditioners can reach.
    """
    by = {(c.name, c.kind): c for c in cs}

    def ratios(num: Contender, den: Contender) -> str:
        return (f"{paired_ratio(num.times, den.times):.2f} / "
                f"{paired_ratio(num.cpu_times, den.cpu_times):.2f}")

    lines = [f"### {title}", ""]
    lines += [
        "| training step | ms / step | samples/s | x floor (wall / CPU) | "
        "x chain floor (wall / CPU) | TFP / this (wall / CPU) | peak MB |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for c in (c for c in cs if c.kind == "train"):
        t = statistics.median(c.times)
        vs_floor = ratios(c, by[(c.floor, "train")]) if c.floor else ""
        chain = by.get(("chain " + c.floor, "train")) if c.floor else None
        vs_chain = ratios(c, chain) if chain is not None else ""
        tfp = by.get(("TFP RealNVP" + _x(c.xla), "train"))
        vs_tfp = (ratios(tfp, c) if tfp is not None and not c.name.startswith("floor")
                  and c is not tfp else "")
        mem = "" if c.peak_mb is None else "<0.1" if c.peak_mb < 0.05 else f"{c.peak_mb:.1f}"
        lines.append(f"| {c.name} | {1e3 * t:.1f} | {c.batch / t:,.0f} | {vs_floor} | "
                     f"{vs_chain} | {vs_tfp} | {mem} |")
    evals = [c for c in cs if c.kind != "train"]
    if evals:
        lines += ["", "| evaluation | log_prob samples/s | TFP / this (wall / CPU) | "
                  "sample samples/s | TFP / this (wall / CPU) |",
                  "| --- | ---: | ---: | ---: | ---: |"]
        for name in dict.fromkeys(c.name for c in evals):
            lp, sm = by[(name, "log_prob")], by[(name, "sample")]
            tfp_name = "TFP RealNVP" + (" (XLA)" if name.endswith("(XLA)") else "")
            lines.append(
                f"| {name} | {lp.batch / statistics.median(lp.times):,.0f} | "
                f"{ratios(by[(tfp_name, 'log_prob')], lp)} | "
                f"{sm.batch / statistics.median(sm.times):,.0f} | "
                f"{ratios(by[(tfp_name, 'sample')], sm)} |")
    return "\n".join(lines)


def profile(cs: list[Contender], logdir: str, steps: int) -> None:
    """Writes a TensorBoard profile (``tensorboard --logdir LOGDIR``, Profile tab) per contender."""
    for c in cs:
        if c.kind != "train":
            continue
        path = os.path.join(logdir, c.name.replace(" ", "_").replace("(", "").replace(")", ""))
        tf.profiler.experimental.start(path)
        c.run(steps)
        tf.profiler.experimental.stop()
        print(f"profile of {c.name}: {path}")


def variants(w, seed: int, xla: bool, rounds: int, budget_s: float) -> str:
    """Where the tfp-coupling RealNVP step's time goes: the full step next to parts of it."""
    x = tf.constant(np.random.default_rng(seed).normal(size=(w["batch"], w["dim"]))
                    .astype("float32"))
    model = tc_model("realnvp", w, seed)
    variables = model.trainable_variables
    opt = keras.optimizers.Adam(1e-4)
    opt.build(variables)

    @tf.function(jit_compile=xla, autograph=False)
    def forward_only(x):
        return model.log_prob(x)

    @tf.function(jit_compile=xla, autograph=False)
    def grads_only(x):
        with tf.GradientTape() as tape:
            loss = -tf.reduce_mean(model.log_prob(x))
        return tape.gradient(loss, variables)

    @tf.function(jit_compile=xla, autograph=False)
    def custom_step(x):
        with tf.GradientTape() as tape:
            loss = -tf.reduce_mean(model.log_prob(x))
        opt.apply_gradients(zip(tape.gradient(loss, variables), variables, strict=True))
        return loss

    cs = [
        floor_contender(f"floor affine{_x(xla)}", w, 2, xla, seed),
        tc_train_contender(f"keras train step{_x(xla)}", "realnvp", w, x, xla, seed),
        Contender(f"tape + Adam, no Keras{_x(xla)}", "train", lambda: custom_step(x), w["batch"],
                  xla),
        Contender(f"log_prob + gradients{_x(xla)}", "train", lambda: grads_only(x), w["batch"],
                  xla),
        Contender(f"log_prob only{_x(xla)}", "train", lambda: forward_only(x), w["batch"], xla),
    ]
    warm_up(cs, 2)
    alternate(cs, rounds, budget_s)
    floor = cs[0]
    lines = ["| variant | ms / step | x floor (wall / CPU) |", "| --- | ---: | ---: |"]
    lines += [f"| {c.name} | {1e3 * statistics.median(c.times):.1f} | "
              f"{paired_ratio(c.times, floor.times):.2f} / "
              f"{paired_ratio(c.cpu_times, floor.cpu_times):.2f} |" for c in cs]
    return "\n".join(lines)


def tfp_paths(w, seed: int, xla: bool, rounds: int, budget_s: float) -> str:
    """Training through TFP's generic path against the fused walk, on the same weights.

    Every row is a ``GradientTape`` + Adam step on the same ``realnvp_flow`` weights; only the
    log-density differs: ``model.log_prob`` (the fused walk), ``model.distribution.log_prob``,
    a ``tfd.TransformedDistribution`` built by hand over the model's ``tc.Chain``, and the same
    links in TFP's own ``tfb.Chain``.
    """
    x = tf.constant(np.random.default_rng(seed).normal(size=(w["batch"], w["dim"]))
                    .astype("float32"))
    model = tc_model("realnvp", w, seed)
    base = tfd.Sample(tfd.Normal(0.0, 1.0), [w["dim"]])
    paths = {
        "model.log_prob (fused walk)": model.log_prob,
        "model.distribution.log_prob": model.distribution.log_prob,
        "TransformedDistribution(tc.Chain)": tfd.TransformedDistribution(
            base, tc.Chain(list(model.bijector.bijectors))).log_prob,
        "TransformedDistribution(tfb.Chain)": tfd.TransformedDistribution(
            base, tfb.Chain(list(model.bijector.bijectors))).log_prob,
    }
    variables = model.distribution.trainable_variables
    cs = []
    for label, log_prob in paths.items():
        opt = keras.optimizers.Adam(1e-4)
        opt.build(variables)
        step = tf.function(_adam_step(log_prob, variables, opt), jit_compile=xla,
                           autograph=False)
        cs.append(Contender(f"{label}{_x(xla)}", "train", _bind(step, x), w["batch"], xla))
    warm_up(cs, 2)
    alternate(cs, rounds, budget_s)
    fused_row = cs[0]
    lines = ["| training step through | ms / step | x fused walk (wall / CPU) |",
             "| --- | ---: | ---: |"]
    lines += [f"| {c.name} | {1e3 * statistics.median(c.times):.1f} | "
              f"{paired_ratio(c.times, fused_row.times):.2f} / "
              f"{paired_ratio(c.cpu_times, fused_row.cpu_times):.2f} |" for c in cs]
    return "\n".join(lines)


def _adam_step(log_prob, variables, opt):
    def step(x):
        with tf.GradientTape() as tape:
            loss = -tf.reduce_mean(log_prob(x))
        opt.apply_gradients(zip(tape.gradient(loss, variables), variables, strict=True))
        return loss
    return step


def _nll_gradient(log_prob, variables):
    def grads(x):
        with tf.GradientTape() as tape:
            loss = -tf.reduce_mean(log_prob(x))
        return tape.gradient(loss, variables)
    return grads


def count_ops(w, seed: int) -> str:
    """Deterministic profile: the work in each log-likelihood gradient, counted, not timed.

    Graph ops of the ``tf.function`` (before Grappler) and, compiled with XLA, the matrix
    products (``dot``) and top-level instructions of the optimized HLO. Useful on a noisy machine,
    where timings move by tens of percent but these counts do not.
    """
    import collections
    import re

    x = tf.constant(np.random.default_rng(seed).normal(size=(w["batch"], w["dim"]))
                    .astype("float32"))
    dist, holder = tfp_realnvp(w, seed)
    fns = {"TFP RealNVP": (dist.log_prob, holder.trainable_variables)}
    for label, kind in (("tc RealNVP", "realnvp"), ("tc NICE", "nice")):
        model = tc_model(kind, w, seed)
        fns[label] = (model.log_prob, model.trainable_variables)
        fns[f"{label}, model.distribution.log_prob"] = (model.distribution.log_prob,
                                                        model.distribution.trainable_variables)
    lines = ["| log_prob gradient | graph ops | of which MatMul | XLA dots | XLA top-level ops |",
             "| --- | ---: | ---: | ---: | ---: |"]
    for label, (log_prob, variables) in fns.items():
        grads = _nll_gradient(log_prob, variables)
        graph = tf.function(grads, autograph=False).get_concrete_function(x).graph
        ops = collections.Counter(op.type for op in graph.get_operations())
        hlo = tf.function(grads, jit_compile=True, autograph=False).experimental_get_compiler_ir(
            x)(stage="optimized_hlo")
        entry = hlo[hlo.index("ENTRY"):]
        lines.append(f"| {label} | {sum(ops.values())} | {ops['MatMul']} | "
                     f"{len(re.findall(r' dot[(]', hlo))} | {entry.count(chr(10)) - 1} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workload", choices=[*WORKLOADS, "all"], default="all")
    parser.add_argument("--rounds", type=int, default=7, help="alternating rounds (median)")
    parser.add_argument("--budget", type=float, default=0.4,
                        help="seconds per contender per round (sets the steps per round)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 2 short rounds, 2-D workload, no XLA")
    parser.add_argument("--xla-only", action="store_true",
                        help="only the XLA (jit_compile=True) runs; skip the graph-mode ones")
    parser.add_argument("--no-eval", action="store_true", help="skip log_prob and sampling")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory pass")
    parser.add_argument("--profile", metavar="LOGDIR",
                        help="also write a TensorBoard profiler trace of each training step")
    parser.add_argument("--variants", action="store_true",
                        help="time parts of the tfp-coupling step instead (profiling aid)")
    parser.add_argument("--tfp-paths", action="store_true",
                        help="time training through TFP's TransformedDistribution.log_prob "
                             "against the fused walk instead")
    parser.add_argument("--count-ops", action="store_true",
                        help="count graph ops and XLA matrix products instead (no timing)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--xla-memory-probe", metavar="DUMP_DIR", help=argparse.SUPPRESS)
    parser.add_argument("--probe-workload", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.xla_memory_probe:  # internal: the subprocess of xla_step_memory
        _xla_memory_probe(args.xla_memory_probe, json.loads(args.probe_workload), args.seed)
        return

    names = list(WORKLOADS) if args.workload == "all" else [args.workload]
    rounds, budget = args.rounds, args.budget
    xla_modes = (True,) if args.xla_only else (True, False)
    if args.quick:
        names = ["2d"] if args.workload == "all" else names
        rounds, budget, xla_modes = 2, 0.05, (False,)
    print(f"machine: {machine()}")
    print(f"median of {rounds} alternating rounds, ~{budget:.2f} s per contender per round\n")
    for name in names:
        w = WORKLOADS[name]
        title = (f"{name}: D={w['dim']}, {w['couplings']} couplings, hidden "
                 f"{list(w['hidden'])}, batch {w['batch']}")
        if args.count_ops:
            print(f"### work per log_prob gradient, {title}\n\n{count_ops(w, args.seed)}\n")
            continue
        if args.tfp_paths:
            for xla in xla_modes:
                print(f"### TFP paths, {title}{_x(xla)}\n")
                print(tfp_paths(w, args.seed, xla, rounds, budget) + "\n", flush=True)
            continue
        if args.variants:
            for xla in xla_modes:
                print(f"### variants, {title}{_x(xla)}\n")
                print(variants(w, args.seed, xla, rounds, budget) + "\n", flush=True)
            continue
        t0 = time.perf_counter()
        cs = build_contenders(w, args.seed, xla_modes, include_eval=not args.no_eval)
        warm_up(cs, 2)
        alternate(cs, rounds, budget)
        if not args.no_memory:
            for c in cs:
                if c.kind == "train":
                    measure_memory(c)
            if any(c.xla for c in cs):
                xla_memory = xla_step_memory(w, args.seed)
                for c in cs:
                    if c.kind == "train" and c.xla:
                        c.peak_mb = xla_memory.get(c.name)
        print(report(title, cs))
        print(f"\n({time.perf_counter() - t0:.0f} s)\n", flush=True)
        if args.profile:
            profile(cs, os.path.join(args.profile, name), 5)


if __name__ == "__main__":
    main()
