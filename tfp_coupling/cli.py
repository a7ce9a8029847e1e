"""The ``tfp-coupling`` command line: train, evaluate, sample and export flows.

Usage (``python -m tfp_coupling`` works the same)::

    tfp-coupling train                          # RealNVP on the embedded two moons -> runs/<name>/
    tfp-coupling train --model nice --dataset pinwheel --epochs 30 --name pinwheel-nice
    tfp-coupling train --dataset mnist --data-dir ../shared/data/mnist --model nice
    tfp-coupling train --resume runs/pinwheel-nice --epochs 60   # continue (or finish) a run
    tfp-coupling evaluate runs/pinwheel-nice --split test
    tfp-coupling sample runs/pinwheel-nice -n 2000
    tfp-coupling export runs/pinwheel-nice --out /tmp/pinwheel_flow

A run folder holds ``config.json`` (written first: everything needed to rebuild the model and
the data), ``checkpoints/`` (:class:`~tfp_coupling.checkpoint.AtomicCheckpoint` state: weights,
optimizer, epoch; and the per-epoch history), ``model.keras``, ``saved_model/``, PNG plots, and
``metrics.json``, written last and atomically: a folder without ``metrics.json`` is an
unfinished run (resume it with ``--resume``).

Nothing the user owns is replaced without ``--overwrite``: ``export --out`` and ``sample --out``
refuse existing outputs (``export`` replaces only an earlier SavedModel, and never other files).

Units: the model sees data in *model units* ``x_model = (x - shift) / scale`` (tables are
standardised with the training split's statistics, flattened images divided by 256). Every NLL
the CLI reports is in the data's own units, ``nll_data = nll_model + sum(log scale)``;
``metrics.json`` records ``shift``, ``scale`` and that correction. The SavedModel works in model
units.

Errors (unknown dataset, missing file, NaN in a table, unwritable output folder, a diverging
run, a full disk) print one line ``tfp-coupling: error: ...`` on stderr and exit with status 1;
usage errors exit with status 2. TensorFlow is imported only once the options are checked, and
without its start-up log lines.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

__all__ = ["CLIError", "build_parser", "main"]

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
    "seed": 0,
    "data_dir": None,
    "mixed_precision": None,
    "jit": False,
}
# Vector flows: the library's defaults (benchmarks/density_quality.py chose them).
DEFAULT_COUPLINGS = {"nice": 4, "realnvp": 8, "nice-image": 4, "realnvp-image": 3}
# realnvp-image: --hidden is the width (channels) of its ResNet conditioners.
DEFAULT_HIDDEN = {"nice": "128,128", "realnvp": "64,64", "nice-image": "256,256",
                  "realnvp-image": "32"}
DEFAULT_EPOCHS = {"nice": 100, "realnvp": 100, "nice-image": 40, "realnvp-image": 40}
# Tables are usually small (hundreds of rows): at lr 1e-3 a flow overfits within a few epochs and
# single validation rows reach huge NLLs; these won on the benchmark's tables.
TABLE_DEFAULTS = {"lr": 1e-4, "batch_size": 64, "epochs": 300}
# The learning rate rises linearly over the first WARMUP_EPOCHS (at most a tenth of the run):
# at full rate from the first step a new flow's first epochs are its least stable.
WARMUP_EPOCHS = 5
# Settings that define a run: --resume refuses to change them.
RUN_SETTINGS = ("model", "dataset", "couplings", "hidden", "batch_size", "lr", "schedule",
                "clipnorm", "weight_decay", "seed", "data_dir", "mixed_precision")
MIXED_POLICIES = ("mixed_float16", "mixed_bfloat16")


class CLIError(Exception):
    """A user-facing error: printed as one line on stderr, exit status 1."""


# --------------------------------------------------------------------------------------------
# Models the CLI can train. Vector flows see flattened examples in model units; image flows (if
# tfp_coupling provides them) see raw pixels in [0, 256) and dequantise themselves.


def _vector_models() -> dict[str, str]:
    return {"nice": "NICE: additive couplings + diagonal rescaling",
            "realnvp": "RealNVP: affine couplings"}


@functools.lru_cache(maxsize=1)
def _image_models() -> dict[str, str]:
    """Image builders present in this installation (``--model realnvp-image`` etc).

    Found without importing them (that would import TensorFlow before the options are checked).
    """
    import importlib.util

    if importlib.util.find_spec("tfp_coupling.image_flows") is None:
        return {}
    return {"realnvp-image": "realnvp_image_flow", "nice-image": "nice_image_flow"}


def _build_model(config: dict):
    """The FlowModel described by a run's ``config`` (called under the run's dtype policy)."""
    from tfp_coupling import flows, image_flows  # noqa: F401  (registers the image builders)

    hidden = config["hidden_units"]
    couplings = config["couplings"]
    if config["model"] == "nice":
        # Flattened pixels: background pixels vary by far less than a random shift moves them,
        # so NICE starts at the identity there (their data are not symmetric anyway).
        return flows.nice_flow([config["event_size"]], num_couplings=couplings,
                               hidden_units=hidden, zero_init=bool(config.get("flatten")))
    if config["model"] == "realnvp":
        return flows.realnvp_flow([config["event_size"]], num_couplings=couplings,
                                  hidden_units=hidden)
    builder = flows.get_builder(_image_models()[config["model"]])
    if config["model"] == "realnvp-image":  # multi-scale, conv conditioners
        return builder(config["image_shape"], num_couplings_per_scale=couplings,
                       hidden_channels=hidden[0])
    return builder(config["image_shape"], num_couplings=couplings, hidden_units=hidden)


# --------------------------------------------------------------------------------------------
# Small helpers


def _file_mode() -> int:
    """The permissions a plain ``open(path, "w")`` would give (mkstemp's files are 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _atomic_write_text(path: Path, text: str) -> None:
    """Writes ``text`` to ``path`` via a temporary file in the same folder, fsync and a rename."""
    from tfp_coupling import atomic

    atomic.write_text(path, text)


def _write_json(path: Path, obj: Any) -> None:
    _atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as e:
        raise CLIError(f"cannot read {path}: {e}") from None


def _parse_hidden(text: str) -> list[int]:
    parts = [u.strip() for u in str(text).split(",")]
    # Every part must be a number: "8,,8" is a typo, not [8, 8].
    units = [int(u) for u in parts] if all(u.isdigit() for u in parts) else []
    if not units or any(u < 1 for u in units):
        raise CLIError(f"--hidden must be comma-separated positive integers like 64,64; got "
                       f"{text!r}")
    return units


def _is_complete(run: Path) -> bool:
    """A run is complete once ``metrics.json`` (written last) and ``model.keras`` both exist."""
    return (run / "metrics.json").is_file() and (run / "model.keras").is_file()


def _run_dir(path: str | Path) -> Path:
    run = Path(path)
    if not run.is_dir():
        raise CLIError(f"run folder not found: {run}")
    if not (run / "config.json").is_file():
        raise CLIError(f"{run} is not a run folder (no config.json)")
    return run


def _set_quiet_tf() -> None:
    """Imports TensorFlow without its start-up log lines (users read an error's first line)."""
    from tfp_coupling.errors import import_tensorflow_quietly

    import_tensorflow_quietly()


# --------------------------------------------------------------------------------------------
# Data as a run sees it


def _load_run_data(config: dict, split: str, dataset: str | None = None,
                   data_dir: str | None = None):
    """``(x_model, info)`` for one split, shaped for the run's model."""
    import numpy as np

    from tfp_coupling import data
    from tfp_coupling.data import DatasetInfo

    saved = DatasetInfo.from_json(config["data"])
    name = dataset or config["dataset"]
    data_dir = data_dir if data_dir is not None else config.get("data_dir")
    raw_pixels = config["model"] in _image_models()
    x, info = data.load(name, split, seed=config["seed"], data_dir=data_dir,
                        normalize=not raw_pixels, with_info=True,
                        standardization=saved if saved.kind != "image" else None)
    expected = tuple(config["image_shape"] or ()) if raw_pixels else (config["event_size"],)
    if not raw_pixels:
        x = x.reshape(len(x), -1)
    if tuple(x.shape[1:]) != expected:
        raise CLIError(f"dataset {name!r} has examples of shape {list(info.event_shape)}; the "
                       f"run's model expects {list(expected)}")
    return np.ascontiguousarray(x), info


def _noise_seed(config: dict, split: str) -> int:
    """Seed of the dequantisation noise for evaluating a split (as train used it)."""
    return config["seed"] + {"train": 0, "validation": 1, "test": 2, "all": 3}[split]


def _eval_nll(model, x, info, *, batch_size: int = 1000, seed: int = 0) -> float:
    """Mean NLL in the data's units (nats per example); discrete data dequantised (seeded)."""
    import numpy as np

    if info.discrete:
        x = info.dequantize(x, np.random.default_rng(seed))
    total = 0.0
    for start in range(0, len(x), batch_size):
        total += float(-np.sum(np.asarray(model.log_prob(x[start:start + batch_size]),
                                          np.float64)))
    return total / len(x) - info.log_det_correction


# --------------------------------------------------------------------------------------------
# train


def _history_callback(path: Path, history: list[dict], correction: float):
    import keras

    class EpochRecorder(keras.callbacks.Callback):
        """Appends each epoch's train/validation NLL (data units) and time to history.json."""

        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            logs = logs or {}
            train = logs.get("nll", logs.get("loss"))
            val = logs.get("val_nll", logs.get("val_loss"))
            history.append({
                "epoch": epoch + 1,
                "train_nll": None if train is None else float(train) - correction,
                "val_nll": None if val is None else float(val) - correction,
                "time_s": time.perf_counter() - self.start,
            })
            _write_json(path, history)

    return EpochRecorder()


def _train_dataset(x, info, batch_size: int, seed: int, raw_pixels: bool):
    """Shuffled batches; discrete data get fresh uniform dequantisation noise every epoch."""
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices(x).shuffle(
        len(x), seed=seed, reshuffle_each_iteration=True).batch(batch_size)
    if info.discrete and not raw_pixels:  # image builders dequantise themselves
        width = float(info.bin_width)
        ds = ds.map(lambda b: b + tf.random.uniform(tf.shape(b), 0.0, width, dtype=b.dtype))
    return ds.prefetch(2)


def _prepare_out(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".write-test-"):
            pass
    except OSError as e:
        raise CLIError(f"output folder {out} is not writable: {e.strerror or e}") from None


def _new_config(args: argparse.Namespace) -> dict:
    if args.model not in (*_vector_models(), *_image_models()):
        raise CLIError(f"unknown model {args.model!r}; choose from "
                       f"{', '.join([*_vector_models(), *_image_models()])}")
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
    _check_patience(args.patience)
    hidden = _parse_hidden(args.hidden)
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
        "seed": args.seed,
        "jit": bool(args.jit),
        "mixed_precision": args.mixed_precision,
        "versions": {"tfp_coupling": _version(), "keras": _keras_version()},
    }


def _check_patience(patience: int | None) -> None:
    if patience is not None and patience < 1:
        raise CLIError(f"--patience must be >= 1 (epochs without a better validation NLL), got "
                       f"{patience}")


def _keras_version() -> str:
    """Keras' version, read from its package metadata (importing Keras imports TensorFlow)."""
    import importlib.metadata

    return importlib.metadata.version("keras")


def _version() -> str:
    import tfp_coupling

    return tfp_coupling.__version__


def _unique_name(out: Path, base: str) -> str:
    name, i = base, 2
    while (out / name).exists():
        name, i = f"{base}-{i}", i + 1
    return name


def _create_run_folder(run: Path, config: dict) -> None:
    """Creates ``run`` holding ``config.json`` and ``checkpoints/``, all at once.

    The folder is assembled under a temporary name beside ``run`` and renamed into place, so an
    interruption never leaves a run folder without its ``config.json`` (which ``--resume`` and
    every other command need).
    """
    import shutil

    from tfp_coupling import atomic

    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{run.name}{atomic.TEMP_MARKER}", dir=run.parent))
    except OSError as e:
        raise CLIError(f"cannot create run folder {run}: {e.strerror or e}") from None
    try:
        os.chmod(tmp, atomic.default_folder_mode())
        (tmp / "checkpoints").mkdir()
        _write_json(tmp / "config.json", config)
        atomic.fsync_tree(tmp)
        os.rename(tmp, run)  # fails if a run of that name appeared meanwhile
        atomic.fsync_folder(run.parent)
    except OSError as e:
        raise CLIError(f"cannot create run folder {run}: {e.strerror or e}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _remove_stale_temporaries(run: Path) -> None:
    """Deletes what a killed earlier attempt left half-written in the run folder.

    (Temporary exports, models and plots: each is renamed into place only when complete, so a
    leftover is never the only copy of anything.)
    """
    from tfp_coupling import atomic

    atomic.remove_stale_temporaries(run, also=(".model.*.keras",))


def _remove_failed_start(run: Path) -> None:
    """Deletes the run folder this command created if it failed before any epoch was saved.

    So that a retry with the same ``--name`` (after fixing the data or the learning rate)
    starts afresh instead of being told to ``--resume`` a run with nothing to resume.
    """
    import shutil

    from tfp_coupling.checkpoint import AtomicCheckpoint, CheckpointError

    try:
        if AtomicCheckpoint.completed_epochs(run / "checkpoints") > 0:
            return
    except CheckpointError:
        return
    shutil.rmtree(run, ignore_errors=True)


def _check_vectors(info, dataset: str, raw_pixels: bool) -> None:
    """Refuses data a coupling flow cannot model; notes integer-valued table columns."""
    if not raw_pixels and info.event_size < 2:
        raise CLIError(f"{dataset}: examples have {info.event_size} value(s); a coupling flow "
                       f"needs at least 2 (it transforms one part of each example given the "
                       f"other)")
    if info.integer_columns:
        columns = ", ".join(str(c + 1) for c in info.integer_columns)
        print(f"tfp-coupling: note: column(s) {columns} of {dataset} hold whole numbers only; "
              f"the flow treats them as continuous, so its NLL is a density there, not the "
              f"probability of the integers (dequantise: add uniform noise in [0, 1) to those "
              f"columns in the file)", file=sys.stderr)


def _dataset_label(dataset: str) -> str:
    return Path(dataset).stem if dataset.lower().endswith((".npy", ".csv")) else dataset


def _cmd_train(args: argparse.Namespace) -> int:
    start_wall = time.perf_counter()
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:  # checked before hours of training
        raise CLIError("train writes PNG plots and needs matplotlib: "
                       "pip install 'tfp-coupling[plot]'")
    given = {k for k in DEFAULTS if getattr(args, k) is not None}
    for k, v in DEFAULTS.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.hidden is None:
        args.hidden = DEFAULT_HIDDEN.get(args.model, "128,128")
    if args.epochs is None:
        args.epochs = DEFAULT_EPOCHS.get(args.model, 100)

    if args.resume is not None:
        run = _run_dir(args.resume)
        config = _read_json(run / "config.json")
        if args.data_dir is not None:
            args.data_dir = str(Path(args.data_dir).resolve())
        if args.dataset.lower().endswith((".npy", ".csv")):
            args.dataset = str(Path(args.dataset).expanduser().resolve())
        changed = [k for k in RUN_SETTINGS if k in given and k != "hidden"
                   and config.get(k) != getattr(args, k)]
        if "hidden" in given and _parse_hidden(args.hidden) != config["hidden_units"]:
            changed.append("hidden")
        if changed:
            raise CLIError(f"--resume continues {run} with its saved settings; it cannot change "
                           f"{', '.join('--' + k.replace('_', '-') for k in changed)} "
                           f"(start a new run instead)")
        if _is_complete(run):
            if "epochs" not in given or args.epochs <= config["epochs"]:
                raise CLIError(f"run {run} is already complete ({config['epochs']} epochs); "
                               f"pass --epochs N > {config['epochs']} to train it further")
        if "epochs" in given:
            config["epochs"] = args.epochs
        if "jit" in given:
            config["jit"] = bool(args.jit)
        if "patience" in given:
            _check_patience(args.patience)
            config["patience"] = args.patience
        x_train, info = _load_run_data(config, "train")
        x_val, _ = _load_run_data(config, "validation")
        x_test, _ = _load_run_data(config, "test")
        (run / "metrics.json").unlink(missing_ok=True)  # no longer complete while training
        _remove_stale_temporaries(run)
        _write_json(run / "config.json", config)
    else:
        config = _new_config(args)
        raw_pixels = args.model in _image_models()
        from tfp_coupling import data

        x_train, info = data.load(args.dataset, "train", seed=args.seed, data_dir=args.data_dir,
                                  normalize=not raw_pixels, with_info=True)
        if info.kind == "image" and not raw_pixels:
            config["flatten"] = True
        if info.kind != "image" and raw_pixels:
            raise CLIError(f"--model {args.model} needs an image dataset; {args.dataset!r} "
                           f"holds vectors of shape {list(info.event_shape)}")
        _check_vectors(info, args.dataset, raw_pixels)
        if info.kind == "tabular":
            config["dataset"] = info.name  # the resolved path: resume/evaluate from anywhere
            config.update({k: v for k, v in TABLE_DEFAULTS.items() if k not in given})
        config["event_size"] = info.event_size
        config["image_shape"] = list(info.event_shape) if info.kind == "image" else None
        config["data"] = info.to_json()
        out = Path(args.out)
        _prepare_out(out)
        name = args.name or _unique_name(
            out, f"{args.model}-{_dataset_label(args.dataset)}-{time.strftime('%Y%m%d-%H%M%S')}")
        if "/" in name or name in ("", ".", ".."):
            raise CLIError(f"--name must be a plain folder name, got {name!r}")
        run = out / name
        if run.exists():
            state = "complete" if _is_complete(run) else "unfinished"
            raise CLIError(f"run folder {run} already exists ({state}); choose another --name "
                           f"or continue it with --resume {run}")
        x_train, _ = _load_run_data(config, "train")
        x_val, _ = _load_run_data(config, "validation")
        x_test, _ = _load_run_data(config, "test")
        _create_run_folder(run, config)

    _set_quiet_tf()
    import keras

    policy_before = keras.config.dtype_policy()
    try:
        if config["mixed_precision"]:
            keras.mixed_precision.set_global_policy(config["mixed_precision"])
        metrics = _train(run, config, info, x_train, x_val, x_test, verbose=0 if args.quiet else 1)
    except Exception:
        if args.resume is None:
            _remove_failed_start(run)
        raise
    finally:
        keras.mixed_precision.set_global_policy(policy_before)
    metrics["wall_time_s"] = time.perf_counter() - start_wall
    _write_json(run / "metrics.json", metrics)  # last: marks the run complete
    bpd = metrics["test_bits_per_dim"]
    print(f"run folder: {run}")
    print(f"test NLL: {metrics['test_nll']:.4f} nats" +
          (f" ({bpd:.4f} bits/dim)" if bpd is not None else "") +
          f"; {len(metrics['history']['train_nll'])} epochs, wall time "
          f"{metrics['wall_time_s']:.1f} s")
    return 0


def _train(run: Path, config: dict, info, x_train, x_val, x_test, verbose: int) -> dict:
    import keras
    import numpy as np

    from tfp_coupling.callbacks import BestWeightsCheckpoint
    from tfp_coupling.checkpoint import AtomicCheckpoint, adopt_keras_backup

    raw_pixels = config["model"] in _image_models()
    keras.utils.set_random_seed(config["seed"])
    model = _build_model(config)
    lr = config["lr"]
    if config["schedule"] == "cosine":  # from lr down to lr / 50 over all epochs' steps
        per_epoch = math.ceil(len(x_train) / config["batch_size"])
        warmup = per_epoch * min(config.get("warmup_epochs", 0), config["epochs"] // 10)
        lr = keras.optimizers.schedules.CosineDecay(
            lr / 10 if warmup else lr, decay_steps=config["epochs"] * per_epoch - warmup,
            alpha=0.02, warmup_target=lr if warmup else None, warmup_steps=warmup)
    clip = config["clipnorm"] or None
    decay = config.get("weight_decay") or 0.0
    optimizer = (keras.optimizers.AdamW(lr, weight_decay=decay, global_clipnorm=clip) if decay
                 else keras.optimizers.Adam(lr, global_clipnorm=clip))
    if config["mixed_precision"] == "mixed_float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    model.compile(optimizer=optimizer, jit_compile=bool(config["jit"]))

    ckpt = run / "checkpoints"
    ckpt.mkdir(exist_ok=True)
    history_path = ckpt / "history.json"
    history = _read_json(history_path) if history_path.is_file() else []
    adopt_keras_backup(ckpt, ckpt / "backup")  # run folders of earlier versions
    done = AtomicCheckpoint.completed_epochs(ckpt)
    history = [h for h in history if h["epoch"] <= done]  # drop epochs not in the checkpoint

    if done == 0 and config["model"] == "nice":
        _init_nice_scaling(model, x_train, info, config["seed"])
    correction = info.log_det_correction
    val = x_val
    if info.discrete and not model.dequantize:  # image models' evaluate dequantises itself
        val = info.dequantize(x_val, np.random.default_rng(_noise_seed(config, "validation")))
    best = BestWeightsCheckpoint(ckpt / "best.weights.h5", patience=config.get("patience"))
    callbacks = [  # the best weights are written before the backup that marks the epoch done
        _history_callback(history_path, history, correction),
        best,
        AtomicCheckpoint(ckpt),
    ]
    train_ds = _train_dataset(x_train, info, config["batch_size"], config["seed"], raw_pixels)
    model.fit(train_ds, epochs=config["epochs"], validation_data=(val,), shuffle=False,
              callbacks=callbacks, verbose=verbose)
    if best.path.is_file():  # evaluate, save and export the best validation epoch's weights
        model.load_weights(best.path)

    test_nll = _eval_nll(model, x_test, info, seed=_noise_seed(config, "test"))
    val_nll = _eval_nll(model, x_val, info, seed=_noise_seed(config, "validation"))
    _save_model(model, run / "model.keras")
    from tfp_coupling.export import export_flow

    export_flow(model, run / "saved_model", overwrite=True)  # the run's own, from an earlier try
    plots = _plot_run(run, model, config, info, x_test, history)
    train_nll = [h["train_nll"] for h in history]
    val_hist = [h["val_nll"] for h in history]
    bpd = info.bits_per_dim
    return {
        "complete": True,
        "model": config["model"],
        "dataset": config["dataset"],
        "units": "nats per example in the data's own units (model-unit NLL + sum(log scale))",
        "history": {
            "epoch": [h["epoch"] for h in history],
            "train_nll": train_nll,
            "val_nll": val_hist,
            **({"train_bits_per_dim": [bpd(v) for v in train_nll],
                "val_bits_per_dim": [bpd(v) for v in val_hist]} if info.discrete else {}),
            "time_s": [h["time_s"] for h in history],
        },
        "best_epoch": best.best_epoch or None,
        "val_nll": val_nll,
        "test_nll": test_nll,
        "test_bits_per_dim": bpd(test_nll),
        "val_bits_per_dim": bpd(val_nll),
        "num_parameters": int(sum(np.prod(v.shape) for v in model.trainable_variables)),
        "train_time_s": float(sum(h["time_s"] for h in history)),
        "log_det_correction": correction,
        "plots": [p.name for p in plots],
        "config": config,
    }


def _init_nice_scaling(model, x_train, info, seed: int) -> None:
    """Starts NICE's scaling ``h = z * exp(s)`` at ``s = log std`` of the training data.

    With zero-initialised couplings the untrained flow is then a diagonal Gaussian as wide as
    the data in every dimension (a data-dependent start, as ActNorm's). On rescaled images a
    blank background pixel needs ``s`` near ``log(1/256) = -5.5``: from ``s = 0`` Adam would
    need thousands of steps to get there. For discrete data the std is floored at one
    quantisation bin, so that a pixel blank in every training image is not so certain that a
    test image with ink there costs thousands of nats.
    """
    import numpy as np

    from tfp_coupling.bijectors import LogScale

    layers = [layer for layer in model.flow_layers if isinstance(layer, LogScale)]
    if len(layers) != 1:
        return
    x = info.dequantize(x_train, np.random.default_rng(seed)) if info.discrete else x_train
    std = np.asarray(x, np.float64).reshape(len(x), -1).std(axis=0)
    floor = info.bin_width if info.discrete else 1e-6  # at least one quantisation bin
    layers[0].log_scale.assign(np.log(np.maximum(std, floor)).reshape(
        layers[0].log_scale.shape).astype(np.float32))


def _save_model(model, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".model.", suffix=".keras", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, _file_mode())
    try:
        model.save(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _to_data_units(samples, config: dict, info):
    """Model samples -> the data's units and shape (images: pixel values, [N, H, W, C])."""
    import numpy as np

    x = np.asarray(samples, np.float32)
    if config["model"] in _image_models():
        return x
    x = info.to_data_units(x)
    if config.get("flatten"):
        x = x.reshape(len(x), *config["image_shape"])
    return x


def _plot_run(run: Path, model, config: dict, info, x_test, history, n: int = 2000) -> list:
    import numpy as np

    from tfp_coupling import plots

    out = []
    curves = {"train NLL": [h["train_nll"] for h in history],
              "validation NLL": [h["val_nll"] for h in history]}
    out.append(plots.training_curve(curves, run / "training_curve.png",
                                    title=f"{config['model']} on {config['dataset']}"))
    samples = np.asarray(model.sample(n if info.kind != "image" else 64, seed=config["seed"]))
    if info.kind == "image":
        pixels = _to_data_units(samples, config, info)
        out.append(plots.sample_grid(pixels, run / "samples.png", value_range=(0.0, 255.0),
                                     title=f"{config['model']} samples"))
    elif config["event_size"] == 2:
        def log_prob(points):
            z = info.to_model_units(points)
            return info.log_prob_to_data_units(np.asarray(model.log_prob(z), np.float64))

        out.append(plots.density_plot(
            log_prob, info.to_data_units(x_test), info.to_data_units(samples),
            run / "density.png", title=f"{config['model']} on {config['dataset']}"))
    else:
        out.append(plots.scatter_plot(info.to_data_units(x_test), info.to_data_units(samples),
                                      run / "samples.png",
                                      title=f"{config['model']}: first two columns"))
    return out


# --------------------------------------------------------------------------------------------
# evaluate / sample / export


def _load_run_model(run: Path):
    path = run / "model.keras"
    if not _is_complete(run):
        # model.keras may be an earlier model: an interrupted `--resume --epochs N` keeps it
        # until the new one is saved, so only metrics.json (written last) marks it current.
        missing = "model.keras" if (run / "metrics.json").is_file() else "metrics.json"
        raise CLIError(f"run {run} is unfinished (no {missing}); complete it with "
                       f"tfp-coupling train --resume {run}")
    _set_quiet_tf()
    import keras

    import tfp_coupling

    tfp_coupling.load_all()  # registers the builders and custom objects
    try:
        return keras.models.load_model(path, compile=False)
    except Exception as e:  # zipfile, h5py and Keras raise many kinds for a damaged file
        reason = " ".join(f"{type(e).__name__}: {e}".split())[:160]
        raise CLIError(f"cannot load {path}: the file is damaged or not a Keras model "
                       f"({reason}); recreate it with tfp-coupling train --resume {run} after "
                       f"deleting it") from None


def _cmd_evaluate(args: argparse.Namespace) -> int:
    run = _run_dir(args.run)
    config = _read_json(run / "config.json")
    model = _load_run_model(run)
    x, info = _load_run_data(config, args.split, args.dataset, args.data_dir)
    seed = args.seed if args.seed is not None else _noise_seed(config, args.split)
    nll = _eval_nll(model, x, info, seed=seed)
    bpd = info.bits_per_dim(nll)
    result = {"run": str(run), "dataset": args.dataset or config["dataset"], "split": args.split,
              "examples": len(x), "nll": nll, "bits_per_dim": bpd}
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{result['dataset']} {args.split} ({len(x)} examples): NLL {nll:.4f} nats" +
              (f", {bpd:.4f} bits/dim" if bpd is not None else ""))
    return 0


def _cmd_sample(args: argparse.Namespace) -> int:
    import numpy as np

    from tfp_coupling import plots

    run = _run_dir(args.run)
    if args.n < 1:
        raise CLIError(f"-n must be >= 1, got {args.n}")
    if not (args.temperature > 0 and math.isfinite(args.temperature)):
        raise CLIError(f"--temperature must be a finite number > 0, got {args.temperature}")
    config = _read_json(run / "config.json")
    out = Path(args.out) if args.out else run / "samples.npy"
    if out.suffix != ".npy":
        raise CLIError(f"--out must end in .npy, got {out}")
    if not out.parent.is_dir():
        raise CLIError(f"output folder not found: {out.parent}")
    if args.out and not args.overwrite:  # RUN/samples.* are the run's own, refreshed freely
        existing = [p for p in (out, out.with_suffix(".png")) if p.exists()]
        if existing:
            raise CLIError(f"{existing[0]} already exists; pass --overwrite to replace "
                           f"{' and '.join(str(p) for p in existing)}")
    model = _load_run_model(run)
    from tfp_coupling.data import DatasetInfo

    info = DatasetInfo.from_json(config["data"])
    z = model.sample(args.n, temperature=args.temperature, seed=args.seed)
    samples = _to_data_units(z, config, info)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.stem}.", suffix=".npy", dir=out.parent)
    try:
        os.chmod(tmp, _file_mode())
        with os.fdopen(fd, "wb") as f:
            np.save(f, samples)
        os.replace(tmp, out)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise CLIError(f"cannot write {out}: {e.strerror or e}") from None
    png = out.with_suffix(".png")
    if info.kind == "image":
        plots.sample_grid(samples[:64], png, value_range=(0.0, 255.0),
                          title=f"{config['model']} samples, T = {args.temperature:g}")
    else:
        x, _ = _load_run_data(config, "test")
        plots.scatter_plot(info.to_data_units(x), samples, png,
                           title=f"{config['model']} samples, T = {args.temperature:g}")
    print(f"wrote {len(samples)} samples to {out} and {png}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    run = _run_dir(args.run)
    # RUN/saved_model is the run's own export (train writes it): refreshing it loses nothing.
    out = Path(args.out) if args.out else run / "saved_model"
    overwrite = args.overwrite or not args.out
    _check_export_out(out, overwrite)  # before loading TensorFlow and the model
    model = _load_run_model(run)
    from tfp_coupling.export import export_flow

    try:
        export_flow(model, out, overwrite=overwrite)
    except FileExistsError:
        _check_export_out(out, overwrite)  # the folder changed meanwhile: say how
        raise
    except OSError as e:
        raise CLIError(f"cannot export to {out}: {e.strerror or e}") from None
    print(f"wrote SavedModel to {out} (signatures log_prob, sample, sample_with_options, "
          f"forward, inverse; inputs in model units, see {run / 'metrics.json'})")
    return 0


def _check_export_out(out: Path, overwrite: bool) -> None:
    """Refuses an ``--out`` whose contents the export would delete (see ``--overwrite``)."""
    if out.is_file():
        raise CLIError(f"--out {out} is a file; give a folder for the SavedModel")
    if not out.is_dir() or not any(out.iterdir()):
        return
    if not (out / "saved_model.pb").is_file():
        raise CLIError(f"--out {out} is a folder holding other files (not a SavedModel); "
                       f"exporting there would delete them: choose a new or empty folder")
    if not overwrite:
        raise CLIError(f"--out {out} already holds a SavedModel; pass --overwrite to replace it")


# --------------------------------------------------------------------------------------------
# argparse


def build_parser() -> argparse.ArgumentParser:
    """The ``tfp-coupling`` argument parser (subcommands train, evaluate, sample, export)."""
    from tfp_coupling import __version__
    from tfp_coupling.data import DATASETS

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
    choices = ", ".join(_vector_models())
    t.add_argument("--model", help=f"flow: {choices} (image flows, if installed: realnvp-image, "
                                   f"nice-image); default {DEFAULTS['model']}")
    t.add_argument("--dataset", help=f"{', '.join(DATASETS)}, or a .npy/.csv file; default "
                                     f"{DEFAULTS['dataset']}")
    t.add_argument("--data-dir", help="folder of MNIST-format IDX files for offline mnist / "
                                      "fashion_mnist (e.g. ../shared/data/mnist)")
    t.add_argument("--couplings", type=int, help="number of coupling layers (default: 8 "
                                                 "realnvp, 4 nice; realnvp-image: per scale, 3)")
    t.add_argument("--hidden", help="hidden units of each conditioner MLP, comma-separated "
                                    "(default 64,64 realnvp, 128,128 nice; nice-image 256,256; "
                                    "realnvp-image: channels, 32)")
    t.add_argument("--epochs", type=int, help="epochs (default 100; image models 40)")
    t.add_argument("--batch-size", type=int, help=f"batch size (default "
                                                  f"{DEFAULTS['batch_size']})")
    t.add_argument("--lr", type=float, help=f"Adam learning rate (default {DEFAULTS['lr']})")
    t.add_argument("--schedule", choices=("cosine", "constant"),
                   help="learning-rate schedule: cosine decay to lr/50 over --epochs, or "
                        "constant (default cosine)")
    t.add_argument("--clipnorm", type=float, help="clip the global gradient norm to this "
                                                  "(0: off; default 1.0)")
    t.add_argument("--weight-decay", type=float,
                   help="decoupled weight decay (AdamW) per step, relative to the learning rate "
                        "(default 0: plain Adam)")
    t.add_argument("--patience", type=int,
                   help="stop when the validation NLL has not improved for this many epochs "
                        "(default: train all --epochs); the best validation epoch's weights are "
                        "kept either way")
    t.add_argument("--seed", type=int, help="seed for data, weights and shuffling (default 0)")
    t.add_argument("--jit", action="store_true", default=None, help="compile with XLA")
    t.add_argument("--mixed-precision", choices=MIXED_POLICIES,
                   help="Keras mixed-precision policy (log-dets stay float32)")
    t.add_argument("--out", default="runs", help="folder holding run folders (default runs)")
    t.add_argument("--name", help="run folder name (default <model>-<dataset>-<time>)")
    t.add_argument("--resume", metavar="RUN", help="continue the run in folder RUN (unfinished, "
                                                   "or with a larger --epochs)")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(func=_cmd_train)

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
    e.set_defaults(func=_cmd_evaluate)

    s = sub.add_parser("sample", help="draw samples from a run (.npy and .png)",
                       description="Draw samples in the data's units; write them as .npy and "
                                   "a picture beside it (.png).")
    s.add_argument("run", help="run folder")
    s.add_argument("-n", type=int, default=1000, help="number of samples (default 1000)")
    s.add_argument("--temperature", type=float, default=1.0, help="scale of the base noise")
    s.add_argument("--seed", type=int, default=0, help="sampling seed")
    s.add_argument("--out", help="output .npy (default RUN/samples.npy); the picture goes "
                                 "beside it as .png")
    s.add_argument("--overwrite", action="store_true",
                   help="replace an existing --out .npy and its .png")
    s.set_defaults(func=_cmd_sample)

    x = sub.add_parser("export", help="write a run's model as a TensorFlow SavedModel",
                       description="Export log_prob, sample, forward and inverse signatures "
                                   "(model units) with keras.export.ExportArchive.")
    x.add_argument("run", help="run folder")
    x.add_argument("--out", help="SavedModel folder (default RUN/saved_model); a new or empty "
                                 "folder, or an earlier SavedModel with --overwrite")
    x.add_argument("--overwrite", action="store_true",
                   help="replace an earlier SavedModel at --out (nothing else is ever replaced)")
    x.set_defaults(func=_cmd_export)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Runs the command line; returns the exit status (0 ok, 1 error, 2 usage).

    Every failure is reported as one line ``tfp-coupling: error: ...`` on stderr, never a
    traceback (set ``TFP_COUPLING_TRACEBACK=1`` to see one).
    """
    from tfp_coupling.errors import one_line_message, quiet_tensorflow_startup

    quiet_tensorflow_startup()  # before anything imports TensorFlow
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except Exception as e:
        if os.environ.get("TFP_COUPLING_TRACEBACK"):
            raise
        print(f"tfp-coupling: error: {one_line_message(e, expected=(CLIError,))}",
              file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("tfp-coupling: interrupted (an unfinished run can be continued with --resume)",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
