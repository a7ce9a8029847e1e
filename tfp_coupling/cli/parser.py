"""The ``tfp-coupling`` argument parser: subcommands train, evaluate, sample and export."""

from __future__ import annotations

import argparse

from tfp_coupling import __version__
from tfp_coupling.cli import commands
from tfp_coupling.cli.options import (
    ACTIVATIONS,
    DEFAULT_COUPLINGS,
    DEFAULT_HIDDEN,
    DEFAULTS,
    MIXED_POLICIES,
    MIXINGS,
    NICE_2D_DEFAULTS,
    STARTS,
    TABLE_DEFAULTS,
    VECTOR_MODELS,
)
from tfp_coupling.data import DATASETS

__all__ = ["build_parser"]


def build_parser() -> argparse.ArgumentParser:
    """The ``tfp-coupling`` argument parser (subcommands train, evaluate, sample, export)."""
    parser = argparse.ArgumentParser(
        prog="tfp-coupling",
        description="Train, evaluate, sample and export NICE/RealNVP normalizing flows.")
    parser.add_argument("--version", action="version", version=f"tfp-coupling {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    t = sub.add_parser(
        "train", help="train a flow and write a run folder",
        description="Train a flow by maximum likelihood and write runs/<name>/ with "
                    "checkpoints, model.keras, saved_model/, PNG plots, config.json and "
                    "metrics.json (written last). With no options: RealNVP on two moons.")
    choices = ", ".join(VECTOR_MODELS)
    t.add_argument("--model", help=f"flow: {choices} (image flows, if installed: realnvp-image, "
                                   f"nice-image); default {DEFAULTS['model']}")
    t.add_argument("--dataset", help=f"{', '.join(DATASETS)}, or a .npy/.csv file; default "
                                     f"{DEFAULTS['dataset']}")
    t.add_argument("--data-dir", help="folder of MNIST-format IDX files for offline mnist / "
                                      "fashion_mnist (e.g. ../shared/data/mnist)")
    t.add_argument("--context-columns", metavar="COLS",
                   help="train p(x | c) on a table: these columns (header names or numbers from "
                        "1, comma-separated) are the context c, standardised like the rest; "
                        "the other columns are x")
    t.add_argument("--conditional", action="store_true", default=None,
                   help="train p(image | class) on mnist, fashion_mnist or cifar10 (models "
                        "realnvp-image, nice, realnvp): the context is the one-hot label, read "
                        "from the *-labels-idx1-ubyte files beside the images or from "
                        "tensorflow-datasets")
    c, h, n = DEFAULT_COUPLINGS, DEFAULT_HIDDEN, NICE_2D_DEFAULTS
    t.add_argument("--couplings", type=int, help=f"number of coupling layers (default: "
                                                 f"{c['realnvp']} realnvp, {c['nice']} nice, "
                                                 f"{c['nice-image']} nice-image; realnvp-image:"
                                                 f" per scale, {c['realnvp-image']}; nice on 2-D "
                                                 f"data {n['couplings']})")
    t.add_argument("--hidden", help=f"hidden units of each conditioner MLP, comma-separated "
                                    f"(default {h['realnvp']} realnvp, {h['nice']} nice; "
                                    f"nice-image {h['nice-image']}; realnvp-image: channels, "
                                    f"{h['realnvp-image']}; nice on 2-D data {n['hidden']})")
    t.add_argument("--activation", choices=ACTIVATIONS,
                   help="hidden units of the realnvp/nice conditioners (default relu; tables "
                        "tanh)")
    t.add_argument("--mixing", choices=MIXINGS,
                   help="realnvp: 'lu' puts a learned invertible linear map (LULinear, identity "
                        "at the start) between every two couplings (default none)")
    t.add_argument("--start", choices=STARTS,
                   help="realnvp/nice: untrained couplings at the identity (the flow starts as "
                        "the whitened Gaussian fit) or with random shifts (default: random on "
                        "2-D data, identity on tables and flattened images)")
    t.add_argument("--dropout", type=float,
                   help="realnvp/nice: dropout rate after every conditioner hidden layer, in "
                        "training only (default 0); a regulariser for small tables")
    t.add_argument("--epochs", type=int, help=f"epochs (default 100; image models 40, tables "
                                              f"{TABLE_DEFAULTS['epochs']}, nice on 2-D data "
                                              f"{n['epochs']})")
    t.add_argument("--batch-size", type=int, help=f"batch size (default "
                                                  f"{DEFAULTS['batch_size']})")
    t.add_argument("--lr", type=float, help=f"Adam learning rate (default {DEFAULTS['lr']})")
    t.add_argument("--schedule", choices=("cosine", "constant"),
                   help="learning-rate schedule: cosine decay to lr/50 over --epochs, or "
                        "constant (default cosine)")
    t.add_argument("--clipnorm", type=float, help="clip the global gradient norm to this "
                                                  "(0: off; default 1.0, nice on 2-D data 0)")
    t.add_argument("--weight-decay", type=float,
                   help="decoupled weight decay (AdamW) per step, relative to the learning rate "
                        "(default 0: plain Adam)")
    t.add_argument("--patience", type=int,
                   help="stop when the validation NLL has not improved for this many epochs "
                        "(default: train all --epochs); the best validation epoch's weights are "
                        "kept either way")
    t.add_argument("--selection", choices=("best-or-start", "best"),
                   help="the weights kept: the best validation epoch, or (best-or-start, the "
                        "default for vector models) the untrained flow when the best epoch's "
                        "gain over it is within one standard error of the validation rows")
    t.add_argument("--seed", type=int, help="seed for data, weights and shuffling (default 0)")
    t.add_argument("--jit", action="store_true", default=None, help="compile with XLA")
    t.add_argument("--invertible-backprop", action="store_true", default=None,
                   help="memory-saving training: the backward pass rebuilds each layer's input "
                        "with the exact inverse instead of storing it (training memory stays "
                        "flat in depth; steps take about 1.3x as long)")
    t.add_argument("--mixed-precision", choices=MIXED_POLICIES,
                   help="Keras mixed-precision policy (log-dets stay float32)")
    t.add_argument("--out", default="runs", help="folder holding run folders (default runs)")
    t.add_argument("--name", help="run folder name (default <model>-<dataset>-<time>)")
    t.add_argument("--resume", metavar="RUN", help="continue the run in folder RUN (unfinished, "
                                                   "or with a larger --epochs)")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(func=commands.train)

    e = sub.add_parser("evaluate", help="NLL (and bits/dim) of a run on a dataset split",
                       description="Report the mean negative log-likelihood (nats per example, "
                                   "in the data's units) and, for images, bits per dimension.")
    e.add_argument("run", help="run folder")
    e.add_argument("--split", default="test", choices=("train", "validation", "test", "all"))
    e.add_argument("--dataset", help="another dataset or file (default: the run's); tables are "
                                     "standardised with the run's training statistics")
    e.add_argument("--data-dir", help="IDX folder for mnist / fashion_mnist")
    e.add_argument("--seed", type=int, help="dequantisation noise seed (images; default: the "
                                            "one training used for that split)")
    e.add_argument("--json", action="store_true", help="print one JSON object")
    e.set_defaults(func=commands.evaluate)

    s = sub.add_parser("sample", help="draw samples from a run (.npy and .png)",
                       description="Draw samples in the data's units; write them as .npy and "
                                   "a picture beside it (.png). A conditional table run "
                                   "(--context-columns) writes whole rows in the table's column "
                                   "order, the context columns holding the context of each "
                                   "draw: --context, or by default the test split's rows' "
                                   "contexts in turn. A class-conditional run (--conditional) "
                                   "draws -n images of each class (or of class --context), "
                                   "class by class, and pictures them one row per class.")
    s.add_argument("run", help="run folder")
    s.add_argument("-n", type=int, default=1000,
                   help="number of samples (default 1000; class-conditional runs: per class)")
    s.add_argument("--context", metavar="C",
                   help="conditional runs: the context of every draw, the context columns' "
                        "values comma-separated in the data's units, or a class label")
    s.add_argument("--temperature", type=float, default=1.0, help="scale of the base noise")
    s.add_argument("--seed", type=int, default=0, help="sampling seed")
    s.add_argument("--out", help="output .npy (default RUN/samples.npy); the picture goes "
                                 "beside it as .png")
    s.add_argument("--overwrite", action="store_true",
                   help="replace an existing --out .npy and its .png")
    s.set_defaults(func=commands.sample)

    x = sub.add_parser("export", help="write a run's model as a TensorFlow SavedModel",
                       description="Export log_prob, sample, forward and inverse signatures "
                                   "with keras.export.ExportArchive. Inputs are in model units: "
                                   "x standardised with the shift and scale in RUN/config.json "
                                   "(data), images as pixel values. A conditional run's "
                                   "signatures also take a context [N, c], also in model units: "
                                   "the context columns standardised with config.json's "
                                   "context.data shift and scale, or the one-hot class label; "
                                   "its sample takes the contexts and draws one example per "
                                   "row.")
    x.add_argument("run", help="run folder")
    x.add_argument("--out", help="SavedModel folder (default RUN/saved_model); a new or empty "
                                 "folder, or an earlier SavedModel with --overwrite")
    x.add_argument("--overwrite", action="store_true",
                   help="replace an earlier SavedModel at --out (nothing else is ever replaced)")
    x.set_defaults(func=commands.export)
    return parser
