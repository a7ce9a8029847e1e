"""What the commands do once their options are checked: train, evaluate, sample, export.

Imported by :mod:`tfp_coupling.cli.commands` only after TensorFlow was imported quietly.

Units: the model sees data in *model units* ``x_model = (x - shift) / scale`` (tables are
standardised with the training split's statistics, flattened images divided by 256). Every NLL
reported is in the data's own units, ``nll_data = nll_model + sum(log scale)``; ``metrics.json``
records ``shift``, ``scale`` and that correction. The SavedModel works in model units.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from tfp_coupling import atomic, dequantization, plots
from tfp_coupling.builders import initialize_rescaling, nice_flow, realnvp_flow
from tfp_coupling.callbacks import BestWeightsCheckpoint
from tfp_coupling.checkpoint import AtomicCheckpoint, CheckpointError, adopt_keras_backup
from tfp_coupling.cli.options import IMAGE_MODELS, CLIError, is_image_model
from tfp_coupling.cli.run_folder import RunFolder, check_export_out, load_run_data, noise_seed
from tfp_coupling.data import DatasetInfo
from tfp_coupling.model import FlowModel, get_builder
from tfp_coupling.model.export import export_flow

__all__ = ["build_model", "eval_nll", "evaluate", "export", "sample", "train"]


def build_model(config: dict) -> FlowModel:
    """The FlowModel described by a run's ``config`` (called under the run's dtype policy)."""
    hidden = config["hidden_units"]
    couplings = config["couplings"]
    if config["model"] == "nice":
        # Flattened pixels: background pixels vary by far less than a random shift moves them,
        # so NICE starts at the identity there (their data are not symmetric anyway).
        return nice_flow([config["event_size"]], num_couplings=couplings, hidden_units=hidden,
                         zero_init=bool(config.get("flatten")))
    if config["model"] == "realnvp":
        return realnvp_flow([config["event_size"]], num_couplings=couplings,
                            hidden_units=hidden)
    builder = get_builder(IMAGE_MODELS[config["model"]])
    if config["model"] == "realnvp-image":  # multi-scale, conv conditioners
        return builder(config["image_shape"], num_couplings_per_scale=couplings,
                       hidden_channels=hidden[0])
    return builder(config["image_shape"], num_couplings=couplings, hidden_units=hidden)


def eval_nll(model: FlowModel, x, info: DatasetInfo, *, batch_size: int = 1000,
             seed: int = 0) -> float:
    """Mean NLL in the data's units (nats per example); discrete data dequantised (seeded)."""
    rng = np.random.default_rng(seed) if info.discrete else None
    nll = dequantization.mean_nll(model.log_prob, x, rng=rng, bin_width=info.bin_width or 1.0,
                                  batch_size=batch_size)
    return nll - info.log_det_correction


# --------------------------------------------------------------------------------------------
# train


def train(run: RunFolder, config: dict, info: DatasetInfo, x_train, x_val, x_test,
          verbose: int, remove_on_failure: bool) -> dict:
    """Trains (or continues) the run under its dtype policy; returns its metrics.

    With ``remove_on_failure`` (a new run), a failure before the first epoch is saved deletes
    the run folder, so that a retry with the same ``--name`` starts afresh instead of being
    told to ``--resume`` a run with nothing to resume.
    """
    policy_before = keras.config.dtype_policy()
    try:
        if config["mixed_precision"]:
            keras.mixed_precision.set_global_policy(config["mixed_precision"])
        return _train(run, config, info, x_train, x_val, x_test, verbose)
    except Exception:
        if remove_on_failure and _completed_epochs(run) == 0:
            shutil.rmtree(run.path, ignore_errors=True)
        raise
    finally:
        keras.mixed_precision.set_global_policy(policy_before)


def _completed_epochs(run: RunFolder) -> int | None:
    try:
        return AtomicCheckpoint.completed_epochs(run.checkpoints)
    except CheckpointError:
        return None


def _optimizer(config: dict, steps_per_epoch: int) -> keras.optimizers.Optimizer:
    lr = config["lr"]
    if config["schedule"] == "cosine":  # from lr down to lr / 50 over all epochs' steps
        warmup = steps_per_epoch * min(config.get("warmup_epochs", 0), config["epochs"] // 10)
        lr = keras.optimizers.schedules.CosineDecay(
            lr / 10 if warmup else lr, decay_steps=config["epochs"] * steps_per_epoch - warmup,
            alpha=0.02, warmup_target=lr if warmup else None, warmup_steps=warmup)
    clip = config["clipnorm"] or None
    decay = config.get("weight_decay") or 0.0
    optimizer = (keras.optimizers.AdamW(lr, weight_decay=decay, global_clipnorm=clip) if decay
                 else keras.optimizers.Adam(lr, global_clipnorm=clip))
    if config["mixed_precision"] == "mixed_float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


def _train(run: RunFolder, config: dict, info: DatasetInfo, x_train, x_val, x_test,
           verbose: int) -> dict:
    keras.utils.set_random_seed(config["seed"])
    model = build_model(config)
    model.compile(optimizer=_optimizer(config, math.ceil(len(x_train) / config["batch_size"])),
                  jit_compile=bool(config["jit"]))

    run.checkpoints.mkdir(exist_ok=True)
    adopt_keras_backup(run.checkpoints, run.checkpoints / "backup")  # earlier versions' runs
    done = AtomicCheckpoint.completed_epochs(run.checkpoints)
    # Drop epochs the checkpoint does not hold.
    history = [h for h in run.read_history() if h["epoch"] <= done]

    if done == 0 and config["model"] == "nice":
        initialize_rescaling(model, x_train, bin_width=info.bin_width, seed=config["seed"])
    correction = info.log_det_correction
    val = x_val
    if info.discrete and not model.dequantize:  # image models' evaluate dequantises itself
        val = info.dequantize(x_val, np.random.default_rng(noise_seed(config, "validation")))
    best = BestWeightsCheckpoint(run.best_weights_path, patience=config.get("patience"))
    callbacks = [  # the best weights are written before the backup that marks the epoch done
        _EpochRecorder(run, history, correction),
        best,
        AtomicCheckpoint(run.checkpoints),
    ]
    train_ds = _train_dataset(x_train, info, config["batch_size"], config["seed"],
                              is_image_model(config["model"]))
    model.fit(train_ds, epochs=config["epochs"], validation_data=(val,), shuffle=False,
              callbacks=callbacks, verbose=verbose)
    if best.path.is_file():  # evaluate, save and export the best validation epoch's weights
        model.load_weights(best.path)

    test_nll = eval_nll(model, x_test, info, seed=noise_seed(config, "test"))
    val_nll = eval_nll(model, x_val, info, seed=noise_seed(config, "validation"))
    atomic.write_with(run.model_path, lambda tmp: model.save(str(tmp)), suffix=".keras")
    export_flow(model, run.saved_model_path, overwrite=True)  # the run's own, from a retry
    plot_files = _plot_run(run, model, config, info, x_test, history)
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
        "plots": [p.name for p in plot_files],
        "config": config,
    }


class _EpochRecorder(keras.callbacks.Callback):
    """Appends each epoch's train/validation NLL (data units) and time to history.json."""

    def __init__(self, run: RunFolder, history: list[dict], correction: float) -> None:
        super().__init__()
        self.run, self.history, self.correction = run, history, correction

    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        train = logs.get("nll", logs.get("loss"))
        val = logs.get("val_nll", logs.get("val_loss"))
        self.history.append({
            "epoch": epoch + 1,
            "train_nll": None if train is None else float(train) - self.correction,
            "val_nll": None if val is None else float(val) - self.correction,
            "time_s": time.perf_counter() - self.start,
        })
        self.run.write_history(self.history)


def _train_dataset(x, info: DatasetInfo, batch_size: int, seed: int, image_model: bool):
    """Shuffled batches; discrete data get fresh uniform dequantisation noise every epoch."""
    ds = tf.data.Dataset.from_tensor_slices(x).shuffle(
        len(x), seed=seed, reshuffle_each_iteration=True).batch(batch_size)
    if info.discrete and not image_model:  # image models dequantise themselves (FlowModel)
        width = float(info.bin_width)
        ds = ds.map(lambda b: b + tf.random.uniform(tf.shape(b), 0.0, width, dtype=b.dtype))
    return ds.prefetch(2)


def _to_data_units(samples, config: dict, info: DatasetInfo) -> np.ndarray:
    """Model samples -> the data's units and shape (images: pixel values, [N, H, W, C])."""
    x = np.asarray(samples, np.float32)
    if is_image_model(config["model"]):
        return x
    x = info.to_data_units(x)
    if config.get("flatten"):
        x = x.reshape(len(x), *config["image_shape"])
    return x


def _plot_run(run: RunFolder, model: FlowModel, config: dict, info: DatasetInfo, x_test,
              history: list[dict], n: int = 2000) -> list[Path]:
    out = []
    curves = {"train NLL": [h["train_nll"] for h in history],
              "validation NLL": [h["val_nll"] for h in history]}
    out.append(plots.training_curve(curves, run.path / "training_curve.png",
                                    title=f"{config['model']} on {config['dataset']}"))
    samples = np.asarray(model.sample(n if info.kind != "image" else 64, seed=config["seed"]))
    if info.kind == "image":
        pixels = _to_data_units(samples, config, info)
        out.append(plots.sample_grid(pixels, run.path / "samples.png", value_range=(0.0, 255.0),
                                     title=f"{config['model']} samples"))
    elif config["event_size"] == 2:
        def log_prob(points):
            z = info.to_model_units(points)
            return info.log_prob_to_data_units(np.asarray(model.log_prob(z), np.float64))

        out.append(plots.density_plot(
            log_prob, info.to_data_units(x_test), info.to_data_units(samples),
            run.path / "density.png", title=f"{config['model']} on {config['dataset']}"))
    else:
        out.append(plots.scatter_plot(info.to_data_units(x_test), info.to_data_units(samples),
                                      run.path / "samples.png",
                                      title=f"{config['model']}: first two columns"))
    return out


# --------------------------------------------------------------------------------------------
# evaluate / sample / export


def load_run_model(run: RunFolder) -> FlowModel:
    """The run's ``model.keras``; a damaged file is a ``CLIError`` saying how to recreate it."""
    try:
        return keras.models.load_model(run.model_path, compile=False)
    except Exception as e:  # zipfile, h5py and Keras raise many kinds for a damaged file
        reason = " ".join(f"{type(e).__name__}: {e}".split())[:160]
        raise CLIError(f"cannot load {run.model_path}: the file is damaged or not a Keras model "
                       f"({reason}); recreate it with tfp-coupling train --resume {run} after "
                       f"deleting it") from None


def evaluate(run: RunFolder, args: argparse.Namespace) -> int:
    config = run.read_config()
    model = load_run_model(run)
    x, info = load_run_data(config, args.split, args.dataset, args.data_dir)
    seed = args.seed if args.seed is not None else noise_seed(config, args.split)
    nll = eval_nll(model, x, info, seed=seed)
    bpd = info.bits_per_dim(nll)
    result = {"run": str(run), "dataset": args.dataset or config["dataset"], "split": args.split,
              "examples": len(x), "nll": nll, "bits_per_dim": bpd}
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{result['dataset']} {args.split} ({len(x)} examples): NLL {nll:.4f} nats" +
              (f", {bpd:.4f} bits/dim" if bpd is not None else ""))
    return 0


def sample(run: RunFolder, args: argparse.Namespace, out: Path) -> int:
    config = run.read_config()
    model = load_run_model(run)
    info = DatasetInfo.from_json(config["data"])
    z = model.sample(args.n, temperature=args.temperature, seed=args.seed)
    samples = _to_data_units(z, config, info)
    try:
        atomic.write_with(out, lambda tmp: np.save(tmp, samples), suffix=".npy")
    except OSError as e:
        raise CLIError(f"cannot write {out}: {e.strerror or e}") from None
    png = out.with_suffix(".png")
    if info.kind == "image":
        plots.sample_grid(samples[:64], png, value_range=(0.0, 255.0),
                          title=f"{config['model']} samples, T = {args.temperature:g}")
    else:
        x, _ = load_run_data(config, "test")
        plots.scatter_plot(info.to_data_units(x), samples, png,
                           title=f"{config['model']} samples, T = {args.temperature:g}")
    print(f"wrote {len(samples)} samples to {out} and {png}")
    return 0


def export(run: RunFolder, out: Path, overwrite: bool) -> int:
    model = load_run_model(run)
    try:
        export_flow(model, out, overwrite=overwrite)
    except FileExistsError:
        check_export_out(out, overwrite)  # the folder changed meanwhile: say how
        raise
    except OSError as e:
        raise CLIError(f"cannot export to {out}: {e.strerror or e}") from None
    print(f"wrote SavedModel to {out} (signatures log_prob, sample, sample_with_options, "
          f"forward, inverse; inputs in model units, see {run.metrics_path})")
    return 0
