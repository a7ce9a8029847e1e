"""The command line's settings: defaults, the models it trains, and checks of option values.

No TensorFlow here: a bad option is reported before TensorFlow is imported.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import math
from pathlib import Path
from typing import Any

from tfp_coupling import __version__

__all__ = ["DEFAULTS", "IMAGE_MODELS", "NICE_2D_DEFAULTS", "VECTOR_MODELS", "CLIError",
           "new_config"]

DEFAULTS: dict[str, Any] = {
    "model": "realnvp",
    "dataset": "two_moons",
    "couplings": None,  # the model's default: DEFAULT_COUPLINGS
    "hidden": None,  # the model's default: DEFAULT_HIDDEN
    "epochs": None,  # the model's default: DEFAULT_EPOCHS
    "batch_size": 256,
    "lr": 1e-3,
    "schedule": "cosine",
    "clipnorm": 1.0,
    "weight_decay": 0.0,
    "patience": None,
    # Vector models: "best-or-start" keeps the untrained flow (on tables the Gaussian fit)
    # unless the best epoch beats it by more than the validation rows' noise
    # (tc.callbacks.gain_beats_noise). Image models: "best".
    "selection": None,
    "seed": 0,
    "data_dir": None,
    "mixed_precision": None,
    "jit": False,
    "invertible_backprop": False,  # memory-saving gradients; a training mode, not the model
    "activation": None,  # the vector conditioners' hidden units: relu, or tanh on tables
    "mixing": None,  # realnvp: "lu" puts a learned linear map between every two couplings
    "dropout": 0.0,  # realnvp/nice: dropout after the conditioners' hidden layers, in training
    "start": None,  # realnvp/nice: "identity" or "random" shifts; by default chosen by the data
    "context_columns": None,  # a table's columns as the context c of p(x | c)
    "conditional": False,  # images: the one-hot class label as the context
}
# Vector flows: the library's defaults (benchmarks/density_quality.py chose them).
DEFAULT_COUPLINGS = {"nice": 8, "realnvp": 8, "nice-image": 4, "realnvp-image": 3}
# realnvp-image: --hidden is the width (channels) of its ResNet conditioners.
DEFAULT_HIDDEN = {"nice": "128,128", "realnvp": "64,64", "nice-image": "256,256",
                  "realnvp-image": "32"}
DEFAULT_EPOCHS = {"nice": 100, "realnvp": 100, "nice-image": 40, "realnvp-image": 40}
# Tables are usually small (hundreds of rows): at lr 1e-3 a flow overfits within a few epochs and
# single validation rows reach huge NLLs; these won on the benchmark's tables.
# tanh conditioners generalise from a few hundred rows where ReLU ones overfit: on the
# benchmark's tables (5 seeds) RealNVP's test NLL fell by 0.3 (wine), 1.7 (diabetes) and 8.8
# nats (breast_cancer), NICE's by -0.09, 0.03 and 1.4 (then below the Gaussian on all three);
# on 8,000-point 2-D data ReLU fits better (RealNVP, two moons: by 0.06).
TABLE_DEFAULTS = {"lr": 1e-4, "batch_size": 64, "epochs": 300, "activation": "tanh"}
# NICE on 2-D data: its volume-preserving couplings sit at the Gaussian start on densities like
# rings for many epochs, and a larger NICE trained longer, unclipped, leaves it (rings: 0.41
# nats below the Gaussian fit over 3 seeds, where NICE's defaults above end 0.03 below).
NICE_2D_DEFAULTS = {"couplings": 16, "hidden": "256,256", "epochs": 200, "clipnorm": 0.0}
ACTIVATIONS = ("relu", "tanh")
STARTS = ("identity", "random")
# realnvp_flow's default bound on the shift (written here so that parsing needs no TensorFlow).
REALNVP_SHIFT_CLAMP = 5.0
# realnvp_image_flow's default couplings (data -> latent, log-scale clamp 2, shift bound 5),
# recorded in a realnvp-image run's config so that it rebuilds them.
REALNVP_IMAGE_COUPLINGS = {"normalizing": True, "log_scale_clamp": 2.0, "shift_clamp": 5.0}
# The learning rate rises linearly over the first WARMUP_EPOCHS (at most a tenth of the run):
# at full rate from the first step a new flow's first epochs are its least stable.
WARMUP_EPOCHS = 5
# Settings that define a run: --resume refuses to change them.
RUN_SETTINGS = ("model", "dataset", "couplings", "hidden", "activation", "mixing", "dropout",
                "batch_size", "lr", "schedule", "clipnorm", "weight_decay", "seed", "data_dir",
                "mixed_precision")
MIXINGS = ("none", "lu")
MIXED_POLICIES = ("mixed_float16", "mixed_bfloat16")

# Vector flows see flattened examples in model units.
VECTOR_MODELS = {"nice": "NICE: additive couplings + diagonal rescaling",
                 "realnvp": "RealNVP: affine couplings"}
# Image flows (by builder name) see pixel values in [0, 256) and dequantise them themselves.
IMAGE_MODELS = {"realnvp-image": "realnvp_image_flow", "nice-image": "nice_image_flow"}


class CLIError(Exception):
    """A user-facing error: printed as one line on stderr, exit status 1."""


def is_image_model(model: str) -> bool:
    """Whether ``--model`` names an image flow, which takes pixel images as they are."""
    return model in IMAGE_MODELS


def parse_hidden(text: str) -> list[int]:
    parts = [u.strip() for u in str(text).split(",")]
    # Every part must be a number: "8,,8" is a typo, not [8, 8].
    units = [int(u) for u in parts] if all(u.isdigit() for u in parts) else []
    if not units or any(u < 1 for u in units):
        raise CLIError(f"--hidden must be comma-separated positive integers like 64,64; got "
                       f"{text!r}")
    return units


def selection_setting(model: str, selection: str | None) -> str:
    """The weights a run keeps: ``best-or-start`` for vector models, ``best`` for image models
    (a few thousand validation images always tell a trained flow from its start)."""
    if model in IMAGE_MODELS:
        if selection == "best-or-start":
            raise CLIError(f"--selection best-or-start is for the vector models "
                           f"({', '.join(VECTOR_MODELS)}); {model} keeps the best epoch")
        return "best"
    return selection or "best-or-start"


def check_patience(patience: int | None) -> None:
    if patience is not None and patience < 1:
        raise CLIError(f"--patience must be >= 1 (epochs without a better validation NLL), got "
                       f"{patience}")


def fill_defaults(args: argparse.Namespace) -> set[str]:
    """Sets the options the user left out to their defaults; returns those the user gave."""
    given = {k for k in DEFAULTS if getattr(args, k) is not None}
    for k, v in DEFAULTS.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.hidden is None:
        args.hidden = DEFAULT_HIDDEN.get(args.model, "128,128")
    if args.epochs is None:
        args.epochs = DEFAULT_EPOCHS.get(args.model, 100)
    return given


def new_config(args: argparse.Namespace) -> dict:
    """A new run's ``config.json`` from checked options (data fields are added by ``train``)."""
    if args.model not in (*VECTOR_MODELS, *IMAGE_MODELS):
        raise CLIError(f"unknown model {args.model!r}; choose from "
                       f"{', '.join([*VECTOR_MODELS, *IMAGE_MODELS])}")
    for flag, value in (("--epochs", args.epochs), ("--batch-size", args.batch_size)):
        if value < 1:
            raise CLIError(f"{flag} must be >= 1, got {value}")
    if not (args.lr > 0 and math.isfinite(args.lr)):
        raise CLIError(f"--lr must be a positive number, got {args.lr}")
    if not (args.clipnorm >= 0 and math.isfinite(args.clipnorm)):
        raise CLIError(f"--clipnorm must be >= 0 (0: no clipping), got {args.clipnorm}")
    if args.couplings is not None and args.couplings < 1:
        raise CLIError(f"--couplings must be >= 1, got {args.couplings}")
    if not (args.weight_decay >= 0 and math.isfinite(args.weight_decay)):
        raise CLIError(f"--weight-decay must be >= 0, got {args.weight_decay}")
    if args.mixing == "lu" and args.model != "realnvp":
        raise CLIError(f"--mixing lu mixes the coordinates between realnvp's couplings; "
                       f"{args.model} has no such option")
    if not 0.0 <= args.dropout < 1.0:
        raise CLIError(f"--dropout must be in [0, 1), got {args.dropout}")
    for flag, given in (("--activation", args.activation is not None),
                        ("--dropout", bool(args.dropout)), ("--start", args.start is not None)):
        if given and args.model in IMAGE_MODELS:
            raise CLIError(f"{flag} sets the conditioners of the vector models "
                           f"({', '.join(VECTOR_MODELS)}), not those of {args.model}")
    if args.dropout and args.invertible_backprop:
        raise CLIError("--dropout and --invertible-backprop do not combine: the backward pass "
                       "recomputes each conditioner, which would draw another dropout mask")
    check_patience(args.patience)
    hidden = parse_hidden(args.hidden)
    return {
        "format": 1,
        "model": args.model,
        "dataset": args.dataset,
        "data_dir": None if args.data_dir is None else str(Path(args.data_dir).resolve()),
        "couplings": args.couplings or DEFAULT_COUPLINGS.get(args.model, 4),
        "hidden_units": hidden,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "schedule": args.schedule,
        "warmup_epochs": WARMUP_EPOCHS if args.schedule == "cosine" else 0,
        "clipnorm": args.clipnorm,
        "weight_decay": args.weight_decay,
        "patience": args.patience,
        "selection": selection_setting(args.model, args.selection),
        "seed": args.seed,
        "jit": bool(args.jit),
        "invertible_backprop": bool(args.invertible_backprop),
        "activation": None if args.model in IMAGE_MODELS else args.activation or "relu",
        "mixing": mixing_setting(args.mixing),
        "dropout": args.dropout,
        "mixed_precision": args.mixed_precision,
        # Keras' version from its package metadata: importing Keras imports TensorFlow.
        "versions": {"tfp_coupling": __version__,
                     "keras": importlib.metadata.version("keras")},
    }


def starts_at_identity(config: dict) -> bool:
    """Whether a vector run's couplings start at the identity (``zero_init``). Runs written
    before the key: NICE on flattened pixels only, RealNVP never (their weights are restored)."""
    return bool(config.get("zero_init", config["model"] == "nice" and config.get("flatten")))


def mixing_setting(flag: str | None) -> str | None:
    """``--mixing`` as a run records it: ``"lu"``, or None for none (and for runs before it)."""
    return None if flag in (None, "none") else flag
