"""The training benchmark's contenders run and its report holds every row (no timings checked)."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
from shared_data import MNIST_IMAGES, needs_mnist

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "train_throughput.py"
TINY = dict(dim=4, couplings=3, hidden=(8,), batch=16)


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("train_throughput", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_every_contender_trains_and_is_reported(bench):
    cs = bench.build_contenders(TINY, seed=0, xla_modes=(False,), include_eval=True)
    bench.warm_up(cs, 1)
    bench.alternate(cs, rounds=2, budget_s=0.0)
    training_table = bench.report("tiny", cs).split("\n\n")[1]  # then the evaluation table
    rows = {line.split("|")[1].strip(): line for line in training_table.splitlines()
            if line.startswith("| ") and not line.startswith("| ---")}
    for name in ("floor affine", "chain floor affine", "chain floor additive", "tc RealNVP",
                 "tc NICE", "TFP RealNVP"):
        assert name in rows, name
    ratio = r"\d+\.\d\d / \d+\.\d\d"
    # tc rows: x floor, x chain floor and TFP / this; chain-floor rows: TFP / this.
    assert len(re.findall(ratio, rows["tc RealNVP"])) == 3
    assert len(re.findall(ratio, rows["chain floor affine"])) == 1


@pytest.mark.parametrize("params_per_dim", [1, 2])
def test_chain_floor_trains_every_network(bench, params_per_dim):
    # Output layers start at zero (checked on the same seed's fresh networks, eagerly)...
    fresh = bench.conditioner_nets(TINY["dim"], TINY["couplings"], TINY["hidden"],
                                   params_per_dim, seed=0)
    x = np.ones((TINY["batch"], TINY["dim"]), "float32")
    assert all(np.abs(net(x[:, : bench._d_a(TINY["dim"], i)])).max() == 0
               for i, net in enumerate(fresh))
    # ...so outputs that are non-zero after a step show that the step trained every network.
    c = bench.chain_floor_contender("chain", TINY, params_per_dim, xla=False, seed=0)
    c.step()
    after = [o.numpy() for o in c.step()]
    d_b = [TINY["dim"] - bench._d_a(TINY["dim"], i) for i in range(TINY["couplings"])]
    assert [o.shape for o in after] == [(TINY["batch"], params_per_dim * d) for d in d_b]
    assert all(np.abs(o).max() > 0 and np.isfinite(o).all() for o in after)


def test_xla_step_memory_reads_the_compilers_buffer_assignment(bench):
    memory = bench.xla_step_memory(TINY, seed=0)
    names = {c.name for c in bench.build_contenders(TINY, 0, (True,), include_eval=False)}
    assert set(memory) == names
    # Every step keeps at least its input batch's activations: B * hidden floats per network.
    at_least = TINY["batch"] * TINY["hidden"][0] * 4 / 2**20
    assert all(mb is not None and at_least <= mb < 10 for mb in memory.values()), memory


@pytest.mark.parametrize("params_per_dim", [1, 2])
def test_chain_floor_backpropagates_through_the_chain(bench, params_per_dim):
    """Same matrix products as the floor, which asks for every later network's input gradient.

    A chain whose networks did not read the previous output would skip the first layer's input
    gradient of every network but the first: K - 1 fewer products.
    """
    def matmuls(contender) -> int:
        return sum(op.type == "MatMul" for op in contender.graph().get_operations())

    chain = bench.chain_floor_contender("c", TINY, params_per_dim, xla=False, seed=0)
    floor = bench.floor_contender("f", TINY, params_per_dim, xla=False, seed=0)
    layers = len(TINY["hidden"]) + 1
    # forward, weight gradients and input gradients: all but the first network's first layer's
    assert matmuls(chain) == matmuls(floor) == TINY["couplings"] * 3 * layers - 1


def _load_benchmark(name: str):
    path = BENCH.parent / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_density_quality_smoke():
    """Two epochs on 256 points, one seed: every column is filled, the true NLL is the lowest,
    and the table reports the spike row (the full run is `python benchmarks/density_quality.py`);
    with ``selection="best-or-start"`` too."""
    dq = _load_benchmark("density_quality")
    budget = dq.Budget(epochs=2, batch_size=64, lr=1e-3)
    gated = dq.run(["two_moons"], [], seeds=1, toy_budget=budget, table_budget=budget,
                   with_peer=False, toy_n=256, log=lambda *_: None, only=["realnvp"],
                   selection="best-or-start").splitlines()[2].split("|")[2:-1]
    assert float(gated[-1]) < float(gated[1])  # realnvp below the Gaussian fit
    table = dq.run(["two_moons"], [], seeds=1, toy_budget=budget, table_budget=budget,
                   with_peer=False, toy_n=256, log=lambda *_: None)
    lines = table.splitlines()
    assert lines[0] == "| data | true | gaussian | nice | realnvp |"
    cells = [c.strip() for c in lines[2].split("|")[1:-1]]
    assert cells[0] == "two_moons"
    values = [float(c) for c in cells[1:]]
    assert all(np.isfinite(values)) and values[0] == min(values)
    assert lines[3].startswith("| spike (max epoch ratio) |")
    assert lines[4].startswith("| largest epoch rise (nats) |")


def test_density_quality_nice_cli_column_only_when_named():
    """The command line's 2-D NICE trains only when asked for, on 2-D data only, and through
    the command line's warm-up and cosine schedule."""
    dq = _load_benchmark("density_quality")
    budget = dq.Budget(epochs=2, batch_size=64, lr=1e-3)
    table = dq.run(["two_moons"], [], seeds=1, toy_budget=budget, table_budget=budget,
                   with_peer=False, toy_n=256, log=lambda *_: None, only=["nice cli"],
                   own_budgets={"nice cli": dq.Budget(2, 64, 1e-3, cosine=True)})
    lines = table.splitlines()
    assert lines[0] == "| data | true | gaussian | nice cli |"
    cells = [c.strip() for c in lines[2].split("|")[1:-1]]
    assert np.isfinite(float(cells[-1])) and float(cells[-1]) > float(cells[1])  # above true
    assert "nice cli" not in dq.run([], [], seeds=1, toy_budget=budget, table_budget=budget,
                                    with_peer=False, log=lambda *_: None).splitlines()[0]
    # The cosine budget decays the rate to a fiftieth by the last step; a constant one stays.
    models = []

    def build(d):
        models.append(dq.tc.nice_flow([d], num_couplings=2, hidden_units=(8,)))
        return models[-1]

    split = dq.toy_split("two_moons", 0, 128)
    for cosine in (True, False):
        dq.train_ours(build, split, dq.Budget(2, 64, 1e-3, cosine=cosine), seed=0)
    assert float(models[0].optimizer.learning_rate) == pytest.approx(2e-5, rel=1e-3)
    assert float(models[1].optimizer.learning_rate) == pytest.approx(1e-3)


def test_spike_measures_the_ratio_and_the_rise_in_nats():
    dq = _load_benchmark("density_quality")
    # Near 0 a small rise is a large ratio; below 0 a large rise has no ratio at all.
    assert dq.max_epoch_ratio([1.0, 0.1, 2.1]) == pytest.approx(21.0)
    assert dq.max_epoch_rise([1.0, 0.1, 2.1]) == pytest.approx(2.0)
    assert dq.max_epoch_ratio([-13.0, -11.0]) == 1.0
    assert dq.max_epoch_rise([-13.0, -11.0, -12.5]) == pytest.approx(2.0)
    assert dq.max_epoch_rise([3.0, 2.0, 1.0]) == 0.0
    cell = dq.Cell()
    cell.add(0.5, [5.0, 6.0])
    cell.add(0.4, [-3.0, 0.5, 0.0])
    assert (cell.spike, cell.rise) == (pytest.approx(1.2), pytest.approx(3.5))


def test_density_quality_tanh_column_on_tables_only(monkeypatch):
    """The tables' tanh contender trains on tables and leaves the 2-D rows empty ("-")."""
    dq = _load_benchmark("density_quality")
    rng = np.random.default_rng(0)

    def fake_table(name, seed):
        x = rng.normal(size=(96, 4)).astype("float32") @ np.triu(np.ones((4, 4), "float32"))
        x = (x - x[:64].mean(0)) / x[:64].std(0)
        return dq.Split(x[:64], x[64:80], x[80:], correction=0.0)

    monkeypatch.setattr(dq, "table_split", fake_table)
    budget = dq.Budget(epochs=2, batch_size=32, lr=1e-3)
    table = dq.run(["two_moons"], ["wine"], seeds=1, toy_budget=budget, table_budget=budget,
                   with_peer=False, toy_n=256, log=lambda *_: None)
    lines = table.splitlines()
    assert lines[0] == "| data | true | gaussian | nice | realnvp | realnvp tanh |"
    toy = [c.strip() for c in lines[2].split("|")[1:-1]]
    wine = [c.strip() for c in lines[3].split("|")[1:-1]]
    assert toy[0] == "two_moons" and toy[-1] == "-"
    assert wine[0] == "wine" and wine[1] == "-" and np.isfinite(float(wine[-1]))
    # Rerunning one column trains that contender alone (the true and Gaussian columns stay).
    table = dq.run([], ["wine"], seeds=1, toy_budget=budget, table_budget=budget,
                   with_peer=False, log=lambda *_: None, only=["realnvp tanh"])
    assert table.splitlines()[0] == "| data | true | gaussian | realnvp tanh |"


def test_fit_ablation_variants_build_and_differ():
    import keras

    ab = _load_benchmark("fit_ablation")
    x = np.random.default_rng(0).normal(size=(64, 2)).astype("float32")
    small = {"couplings": 2, "hidden": (8,)}
    zero = ab.build({**ab.VARIANTS["zero biases"], **small}, 2)
    assert all(not np.any(d.bias.numpy()) for layer in zero.flow_layers for d in layer.hidden)
    for name, variant in ab.VARIANTS.items():
        model = ab.build({**variant, **small}, 2)
        assert np.isfinite(model.log_prob(x).numpy()).all(), name
    # The wider-first-layer rows scale what the builder drew, not nothing.
    first = []
    for variant in ({"builder": True, "activation": "tanh"}, ab.VARIANTS["tanh, first layer x3"]):
        keras.utils.set_random_seed(0)
        model = ab.build({**variant, **small}, 2)
        first.append([w.numpy() for w in model.flow_layers[1].hidden[0].weights])
    for plain, wide in zip(*first, strict=True):
        np.testing.assert_allclose(wide, 3.0 * plain, rtol=1e-6)
    # "relu, then tanh" computes its second hidden layer with tanh, its first with ReLU.
    two = {"couplings": 2, "hidden": (8, 8)}
    model = ab.build({**ab.VARIANTS["relu, then tanh"], **two}, 2)
    net = model.flow_layers[1]
    a = net.hidden[1](net.hidden[0](x[:, :1])).numpy()
    assert a.min() < 0 and np.abs(a).max() < 1  # tanh: signed and bounded; ReLU would be >= 0
    assert net.hidden[0](x[:, :1]).numpy().min() == 0.0
    # "random shift start" draws the shift columns of the output layer, not the log-scale ones.
    net = ab.build({**ab.VARIANTS["random shift start"], **two}, 2).flow_layers[1]
    kernel, bias = net.out.kernel.numpy(), net.out.bias.numpy()
    assert np.all(kernel[:, 0] != 0) and bias[0] != 0
    assert not np.any(kernel[:, 1]) and bias[1] == 0
    # Rows recorded with the identity start still build it; the "realnvp_flow" row draws.
    net = ab.build({**ab.VARIANTS["default, shift clamp 5"], **two}, 2).flow_layers[1]
    assert not np.any(net.out.kernel.numpy())
    net = ab.build({**ab.VARIANTS["realnvp_flow"], **two}, 2).flow_layers[1]
    assert np.all(net.out.kernel.numpy()[:, 0] != 0) and not np.any(net.out.kernel.numpy()[:, 1])
    # NICE rows recorded with ReLU units still build them; the sine row scales the same draw
    # and computes sine units, as nice_flow's default does.
    def nice_net(name: str):
        keras.utils.set_random_seed(0)
        return next(layer for layer in ab.build({**ab.VARIANTS[name], **two}, 2).flow_layers
                    if isinstance(layer, ab.tc.nets.MLP))

    relu, sine = nice_net("nice 8, whiten"), nice_net("nice 8, whiten, sine first x3")
    assert relu.sine_scale is None and sine.sine_scale == 3.0
    assert nice_net("nice_flow").sine_scale == 3.0
    # Rows recorded before the rotations build none; the rotation row mixes between couplings.
    def mixings(name: str) -> int:
        model = ab.build({**ab.VARIANTS[name], **two}, 2)
        return sum(isinstance(b, ab.tc.LULinear) for b in model.bijector.bijectors)

    assert mixings("nice_flow") == mixings("nice 16, whiten, sine") == 0
    assert mixings("nice 16, whiten, sine, rotations") == two["couplings"] - 1
    for plain, wide in zip(relu.hidden[0].weights, sine.hidden[0].weights, strict=True):
        np.testing.assert_allclose(wide.numpy(), 3.0 * plain.numpy(), rtol=1e-6)
    h = x[:, :1] @ sine.hidden[0].kernel.numpy() + sine.hidden[0].bias.numpy()
    np.testing.assert_allclose(sine.hidden[0](x[:, :1]).numpy(), h, rtol=1e-5, atol=1e-6)
    assert (np.sin(h) < 0).any()  # the units the row trains; the layer itself is linear


def test_fit_ablation_sinh_arcsinh_passes_the_bijector_harness():
    """The marginal sinh-arcsinh row's bijector, away from its identity start."""
    from harness import check_bijector, randomize_weights

    ab = _load_benchmark("fit_ablation")
    bijector = ab.MarginalSinhArcsinh(3, dtype="float64")
    randomize_weights(bijector, seed=1, scale=0.5)
    assert np.abs(bijector.tail.log_scale.numpy()).min() > 0  # not the identity
    check_bijector(bijector, [3], inputs=lambda shape, rng: 3.0 * rng.normal(size=shape))
    model = ab.build({**ab.VARIANTS["realnvp_flow, sinh-arcsinh"], "couplings": 2,
                      "hidden": (8,)}, 3)
    assert any(isinstance(b, ab.MarginalSinhArcsinh) for b in model.bijector.bijectors)


def test_fit_ablation_records_small_2d_runs_by_their_rows(tmp_path):
    """``--rows N`` trains on N rows per split and records the run as '<density>, N rows',
    so that it is never mistaken for (or reused as) a run on the default 8,000 rows."""
    ab = _load_benchmark("fit_ablation")
    results = tmp_path / "runs.jsonl"
    ab.main(["--datasets", "two_moons", "--rows", "96", "--seeds", "1", "--epochs", "1",
             "--no-peer", "--variants", "realnvp_flow", "--results", str(results)])
    records = [json.loads(line) for line in results.read_text().splitlines()]
    assert [(r["variant"], r["data"]) for r in records] == [("realnvp_flow", "two_moons, 96 rows")]
    assert np.isfinite(records[0]["nll"]) and len(records[0]["history"]) == 1


def test_held_out_tables_load_without_a_download():
    pytest.importorskip("statsmodels")
    pytest.importorskip("sklearn")
    dq = _load_benchmark("density_quality")
    for name, columns in dq.HELD_OUT_TABLES.items():
        s = dq.table_split(name, seed=0)
        width = 4 if columns is None else len(columns)  # iris: 4 measurements
        assert s.train.shape[1] == s.val.shape[1] == s.test.shape[1] == width, name
        assert np.isfinite(s.train).all() and abs(s.train.mean(0)).max() < 1e-5, name


def test_memory_benchmark_smoke():
    """One tiny flow in both modes: the XLA plans are read, and the table has both rows (the
    full run is `python benchmarks/memory.py`)."""
    mem = _load_benchmark("memory")
    flow = dict(shape=(8, 8, 1), couplings=4, hidden=4, blocks=1, batch=4, seed=0,
                graph=False, modes=list(mem.MODES))
    result = mem.measure(flow, rounds=1, budget=0.0)
    assert set(result) == {"ordinary", "memory-saving"}
    assert all(r["xla_mb"] is not None and r["xla_mb"] > 0 for r in result.values()), result
    # Even this tiny flow keeps less with memory saving on.
    assert result["memory-saving"]["xla_mb"] < result["ordinary"]["xla_mb"], result
    rows = [line for line in mem.table([(flow, result)]).splitlines()
            if line.startswith("| 8x8x1 |")]
    assert [r.split("|")[3].strip() for r in rows] == ["ordinary", "memory-saving"]
    assert all(r.split("|")[-2].strip() for r in rows)  # the time ratio column is filled


def test_memory_benchmark_train_and_vector_smoke():
    """``--train`` trains with memory saving and reports each step; ``--vector`` builds the
    784-D-style vector flow on standard normal rows."""
    import argparse

    mem = _load_benchmark("memory")
    images = mem.blob_images((8, 8, 3), 4, seed=0)
    assert images.shape == (4, 8, 8, 3) and 0 <= images.min() and images.max() <= 255
    assert np.array_equal(images, np.round(images)) and images.std() > 10
    args = argparse.Namespace(estimate_shape=[8, 8, 3], estimate_couplings=4,
                              estimate_batch=4, hidden=4, blocks=1, seed=0, lr=1e-3, train=2)
    report = mem.train_large(args)
    steps = [line.split("|") for line in report.splitlines() if line.startswith("| ")][2:]
    assert len(steps) == 2 and all(np.isfinite(float(s[2])) for s in steps)
    assert "held-out NLL before training" in report and "after 2 steps" in report
    model = mem.build((16,), 4, 8, 1, 0)
    assert not model.invertible_backprop and len(model.bijector.bijectors) == 4
    assert np.isfinite(model.log_prob(mem.pixels((16,), 3, 0)).numpy()).all()


def test_zuko_twin_starts_and_trains_like_zuko():
    """zuko's RealNVP and its tfp-coupling twin: equal densities at zuko's initial weights, and
    the same first epoch on the same batches (Keras' fit and Adam against PyTorch's)."""
    pytest.importorskip("torch")
    pytest.importorskip("zuko")
    twin = _load_benchmark("zuko_twin")
    rec = twin.run("pinwheel", seed=0, epochs=1, n=512, batch_size=64)
    assert rec["start"]["twin"] == pytest.approx(rec["start"]["zuko"], abs=1e-4)
    assert rec["first_epoch"]["twin"] == pytest.approx(rec["first_epoch"]["zuko"], abs=1e-3)
    assert rec["zuko"] < rec["start"]["zuko"] and rec["twin"] < rec["start"]["twin"]  # trained
    row = twin.table([rec]).splitlines()[2]
    assert row.startswith("| pinwheel | 1 |")


@needs_mnist
def test_image_fit_smoke(monkeypatch):
    """Each batch's NLL is recovered from Keras' running mean; a tiny run fills its row (the
    full run is `python benchmarks/image_fit.py`)."""
    fit = _load_benchmark("image_fit")
    losses = fit.BatchLosses()
    losses.on_epoch_begin(0)
    for running_mean in (4.0, 3.0, 4.0):  # batches 4, 2, 6
        losses.on_train_batch_end(0, {"loss": running_mean})
    np.testing.assert_allclose(losses.epochs, [[4.0, 2.0, 6.0]])

    monkeypatch.setitem(fit.MODELS, "flat", lambda **kw: fit.tc.realnvp_flat_image_flow(
        fit.SHAPE, num_couplings=2, hidden_units=[8], **kw))
    x = fit.tc.data.read_idx(MNIST_IMAGES)[:96, :, :, None].astype("float32")
    rows = [fit.run("flat", v, 0, x[:64], x[64:], steps=4, lr=1e-3, clipnorm=None,
                    batch_size=32) for v in ("before", "vector defaults")]
    for r in rows:
        assert r["steps"] == 4 and len(r["epoch_bpd"]) == 2 and not r["diverged"]
        assert np.isfinite(r["test_bpd"]) and r["test_bpd"] < r["start_bpd"]
    assert rows[0]["test_bpd"] != rows[1]["test_bpd"]  # the rows build different couplings
    table = fit.table(rows, ["flat"], ["before", "vector defaults"]).splitlines()
    assert [line.split("|")[2].strip() for line in table[2:]] == ["before", "vector defaults"]


def test_image_warmup_schedules_and_unclipped_gradient_norms():
    """The schedules `image_warmup.py` compares warm up as they say (the command line's rule:
    whole epochs, none under 10; the alternative: a tenth of the steps), and its optimizer sees
    every step's unclipped gradient norm (the full run is `python benchmarks/image_warmup.py`)."""
    w = _load_benchmark("image_warmup")
    new, old, long = w.learning_rate("clinew2"), w.learning_rate("cli2"), w.learning_rate("cli40")
    assert float(new(0)) == pytest.approx(1e-4) and float(new(25)) == pytest.approx(1e-3)
    assert float(old(0)) == pytest.approx(1e-3)  # the rule of before: no warm-up in 2 epochs
    assert float(long(250)) < 1e-3 and float(long(500)) == pytest.approx(1e-3)
    with pytest.raises(ValueError, match="unknown schedule"):
        w.learning_rate("nope")

    model = w.tc.realnvp_flow([2], num_couplings=2, hidden_units=[8])
    optimizer = w.NormAdam(1e-3, global_clipnorm=1e-3)
    w.NormAdam.norms = []
    model.compile(optimizer=optimizer, run_eagerly=True)
    model.fit(w.tc.data.two_moons(64, seed=0), batch_size=16, epochs=1, verbose=0)
    assert len(w.NormAdam.norms) == 4 and all(n > 1e-3 for n in w.NormAdam.norms)

    record = {"lr": "clinew2", "clip": 1.0, "seed": 0, "test": 1.5, "norms": [2.0] * 60,
              "batches": [[1.0, 9.0, 1.0], [2.0, 2.0, 3.0]], "seconds": 1.0}
    row = w.table([record]).splitlines()[2].split("|")
    assert [c.strip() for c in row[5:9]] == ["9.0 (1)", "1.5", "1.000 2.000", "1.500"]
