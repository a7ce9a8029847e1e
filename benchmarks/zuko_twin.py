"""zuko's RealNVP and its exact twin in tfp-coupling, from the same weights and batches.

Is the gap between ``tc.realnvp_flow`` and zuko's ``RealNVP`` in the flow or in the training?
This script builds zuko's flow (8 affine couplings, hidden [64, 64]) and the same flow written
with tfp-coupling (no whitening, zuko's soft clip ``s / (1 + |s| / ln 1e3)`` on the log-scale,
affine maps data -> latent, random output layers: ``fit_ablation.py``'s ``zuko-like`` row),
copies zuko's initial weights into the twin, and trains both on the density benchmark's 2-D
budget (Adam 1e-3 with PyTorch's epsilon 1e-8, batch 256, 30 epochs) on the *same* batches in
the same order: zuko with its own loop, the twin with ``FlowModel.fit``. Each reports the test
NLL of its best validation epoch, as in ``density_quality.py`` (the zuko column reproduces that
benchmark's zuko runs exactly).

If Keras, TFP and tfp-coupling trained differently from PyTorch and zuko, the twin would trail
zuko on the mean; what is left is float32 rounding, which two runs of one algorithm amplify
differently after the first epoch.

Rerun (needs the ``benchmarks`` extra)::

    python benchmarks/zuko_twin.py --datasets pinwheel eight_gaussians --seeds 10
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import keras
import numpy as np
import tensorflow as tf
from density_quality import PEER_HIDDEN, PEER_K, TOY, toy_split
from fit_ablation import VARIANTS, build

import tfp_coupling as tc

ZUKO_CLIP = -math.log(1e-3)  # zuko's MonotonicAffineTransform: slope 1e-3


def twin_flows(seed: int):
    """``(zuko flow, tfp-coupling twin)`` with equal weights: zuko's, drawn from ``seed``."""
    import torch
    import zuko

    torch.manual_seed(seed)
    flow = zuko.flows.RealNVP(2, transforms=PEER_K, hidden_features=PEER_HIDDEN)
    keras.utils.set_random_seed(seed)
    model = build(VARIANTS["zuko-like, fresh shuffle"], 2)
    mlps = [layer for layer in model.flow_layers if isinstance(layer, tc.nets.MLP)]
    # zuko's transforms run data -> latent in list order, as the twin's chain does from its
    # data end; both alternate masks starting with x_1 transformed given x_0.
    for mlp, t in zip(mlps, flow.transform.transforms, strict=True):
        linears = [m for m in t.hyper if hasattr(m, "weight")]
        for dense, lin in zip([*mlp.hidden, mlp.out], linears, strict=True):
            dense.kernel.assign(lin.weight.detach().numpy().T)
            dense.bias.assign(lin.bias.detach().numpy())
    for coupling in model.bijector.bijectors:
        coupling.log_scale_clamp = ZUKO_CLIP
    return flow, model


def run(data: str, seed: int, epochs: int = 30, n: int | None = None,
        batch_size: int = 256) -> dict:
    """Trains both on the same batches; test NLLs (best validation epoch) and first-epoch means."""
    import torch

    torch.set_num_threads(1)  # tiny matrices: one thread is faster on a shared machine
    s = toy_split(data, seed, n)
    flow, model = twin_flows(seed)
    opt = torch.optim.Adam(flow.parameters(), lr=1e-3, eps=1e-8)
    model.compile(optimizer=keras.optimizers.Adam(1e-3, epsilon=1e-8), jit_compile=True)
    x = torch.from_numpy(s.train)

    def nll_zuko(a):
        with torch.no_grad():
            return -flow().log_prob(torch.from_numpy(a)).mean().item()

    def nll_twin(a):
        return -float(np.mean(model.log_prob(a)))

    start = {"zuko": nll_zuko(s.test), "twin": nll_twin(s.test)}
    best = {"zuko": (nll_zuko(s.val), start["zuko"]), "twin": (nll_twin(s.val), start["twin"])}
    first = {}
    gen = torch.Generator().manual_seed(seed)  # density_quality.train_zuko's batch order
    for epoch in range(epochs):
        perm = torch.randperm(len(x), generator=gen)
        total = 0.0
        for idx in perm.split(batch_size):
            loss = -flow().log_prob(x[idx]).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        batches = tf.data.Dataset.from_tensor_slices(s.train[perm.numpy()]).batch(batch_size)
        hist = model.fit(batches, epochs=1, verbose=0, shuffle=False)
        if epoch == 0:
            first = {"zuko": total / len(x), "twin": float(hist.history["nll"][0])}
        for name, nll in (("zuko", nll_zuko), ("twin", nll_twin)):
            val = nll(s.val)
            if val < best[name][0]:
                best[name] = (val, nll(s.test))
    return {"data": data, "seed": seed, "epochs": epochs,
            **{name: best[name][1] + s.correction for name in best},
            "start": {k: v + s.correction for k, v in start.items()}, "first_epoch": first}


def table(records: list[dict]) -> str:
    lines = ["| data | seeds | zuko | twin | twin - zuko (paired) | largest seed difference |",
             "| --- | --- | --- | --- | --- | --- |"]
    for data in dict.fromkeys(r["data"] for r in records):
        rs = [r for r in records if r["data"] == data]
        z, t = [r["zuko"] for r in rs], [r["twin"] for r in rs]
        d = [b - a for a, b in zip(z, t, strict=True)]
        se = statistics.stdev(d) / math.sqrt(len(d)) if len(d) > 1 else math.nan

        def cell(v):
            return f"{statistics.mean(v):.3f} ± {statistics.stdev(v) if len(v) > 1 else 0:.3f}"

        lines.append(f"| {data} | {len(rs)} | {cell(z)} | {cell(t)} | "
                     f"{statistics.mean(d):+.3f} ± {se:.3f} | {max(d, key=abs):+.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", nargs="*", choices=TOY,
                        default=["pinwheel", "eight_gaussians"])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--results", help="JSON-lines file to append every run to")
    args = parser.parse_args(argv)
    records = []
    for data in args.datasets:
        for seed in range(args.seeds):
            rec = run(data, seed)
            records.append(rec)
            print(f"{data} seed {seed}: zuko {rec['zuko']:.3f}, twin {rec['twin']:.3f}",
                  flush=True)
            if args.results:
                with open(args.results, "a") as f:
                    f.write(json.dumps(rec) + "\n")
    print("\nTest NLL (nats) of the best validation epoch, mean ± sd over seeds; the paired "
          "difference as mean ± standard error\n")
    print(table(records))


if __name__ == "__main__":
    main()
