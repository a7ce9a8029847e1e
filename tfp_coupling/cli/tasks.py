"""What the commands do once their options are checked: train, evaluate, sample, export.

Imported by :mod:`tfp_coupling.cli.commands` only after TensorFlow was imported quietly.

Units: the model sees data in *model units* ``x_model = (x - shift) / scale`` (tables are
standardised with the training split's statistics, flattened images divided by 256). Every NLL
reported is in the data's own units, ``nll_data = nll_model + sum(log scale)``; ``metrics.json``
records ``shift``, ``scale`` and that correction. The SavedModel works in model units.

A conditional run models ``p(x | c)`` with each example's own context ``c`` (model units too,
see :mod:`tfp_coupling.cli.context`); its NLL is ``-mean log p(x | c)``. The context is not
modelled, so the correction covers the ``x`` columns only.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from tfp_coupling import atomic, dequantization, plots
from tfp_coupling.baseline import conditional_gaussian_fit, gaussian_fit
from tfp_coupling.builders import initialize_rescaling, nice_flow, realnvp_flow
from tfp_coupling.callbacks import BestWeightsCheckpoint, gain_beats_noise, row_nll
from tfp_coupling.checkpoint import AtomicCheckpoint, CheckpointError, adopt_keras_backup
from tfp_coupling.cli.context import context_size, describe, one_hot
from tfp_coupling.cli.options import IMAGE_MODELS, CLIError, is_image_model, starts_at_identity
from tfp_coupling.cli.run_folder import (
    RunData,
    RunFolder,
    check_export_out,
    load_run_data,
    noise_seed,
)
from tfp_coupling.data import DatasetInfo
from tfp_coupling.model import FlowModel, get_builder
from tfp_coupling.model.export import export_flow

__all__ = ["build_model", "eval_nll", "evaluate", "export", "learning_rate_schedule", "sample",
           "train"]


def build_model(config: dict) -> FlowModel:
    """The FlowModel described by a run's ``config`` (called under the run's dtype policy)."""
    hidden = config["hidden_units"]
    couplings = config["couplings"]
    c = context_size(config)
    context = {} if c is None else {"context_shape": [c]}
    activation = config.get("activation") or "relu"  # runs written before the option: relu
    if config["model"] == "nice":
        # The start is recorded (identity on flattened pixels unless --start says otherwise).
        # Runs written before NICE was whitened have no "whiten" key and rebuild without it.
        # No sine units and no mixing (nice_flow's defaults on 2-D data): with sine units the
        # command line's larger, unclipped 2-D NICE diverged on one of six runs
        # (benchmarks/README.md); its recipe was measured without either.
        return nice_flow([config["event_size"]], num_couplings=couplings, hidden_units=hidden,
                         zero_init=starts_at_identity(config),
                         whiten=bool(config.get("whiten", False)), activation=activation,
                         dropout=config.get("dropout", 0.0), sine_scale=None, mixing=None,
                         **context)
    if config["model"] == "realnvp":
        # Runs written before the shift was bounded have no "shift_clamp" key: unbounded.
        # No sine units (realnvp_flow's default on 2-D data): the command line's recipe was
        # measured with ReLU units, and runs written before rebuild the same layers.
        return realnvp_flow([config["event_size"]], num_couplings=couplings,
                            hidden_units=hidden, activation=activation,
                            mixing=config.get("mixing"), shift_clamp=config.get("shift_clamp"),
                            zero_init=starts_at_identity(config),
                            dropout=config.get("dropout", 0.0), sine_scale=None, **context)
    builder = get_builder(IMAGE_MODELS[config["model"]])
    if config["model"] == "realnvp-image":  # multi-scale, conv conditioners
        # Runs written before the blocks were scaled, or before the couplings took the vector
        # flow's form, have no key and rebuild as they were.
        return builder(config["image_shape"], num_couplings_per_scale=couplings,
                       hidden_channels=hidden[0],
                       scale_residuals=bool(config.get("scale_residuals", False)),
                       normalizing=bool(config.get("normalizing", False)),
                       log_scale_clamp=config.get("log_scale_clamp", 5.0),
                       shift_clamp=config.get("shift_clamp"), **context)
    return builder(config["image_shape"], num_couplings=couplings, hidden_units=hidden)


def eval_nll(model: FlowModel, x, info: DatasetInfo, *, batch_size: int = 1000,
             seed: int = 0, context=None) -> float:
    """Mean NLL in the data's units (nats per example); discrete data dequantised (seeded).

    A conditional model scores each example with its own ``context`` row.
    """
    rng = np.random.default_rng(seed) if info.discrete else None
    nll = dequantization.mean_nll(model.log_prob, x, rng=rng, bin_width=info.bin_width or 1.0,
                                  batch_size=batch_size, context=context)
    return nll - info.log_det_correction


# --------------------------------------------------------------------------------------------
# train


def train(run: RunFolder, config: dict, train: RunData, val: RunData, test: RunData,
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
        return _train(run, config, train, val, test, verbose)
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


def learning_rate_schedule(config: dict, steps_per_epoch: int
                           ) -> float | keras.optimizers.schedules.LearningRateSchedule:
    """A run's learning rate: ``config["lr"]``, or with the cosine schedule a linear rise from
    lr / 10 over ``min(warmup_epochs, epochs // 10)`` whole epochs, then cosine decay to lr / 50
    at the last step."""
    lr = config["lr"]
    if config["schedule"] != "cosine":
        return lr
    warmup = steps_per_epoch * min(config.get("warmup_epochs", 0), config["epochs"] // 10)
    return keras.optimizers.schedules.CosineDecay(
        lr / 10 if warmup else lr, decay_steps=config["epochs"] * steps_per_epoch - warmup,
        alpha=0.02, warmup_target=lr if warmup else None, warmup_steps=warmup)


def _optimizer(config: dict, steps_per_epoch: int) -> keras.optimizers.Optimizer:
    lr = learning_rate_schedule(config, steps_per_epoch)
    clip = config["clipnorm"] or None
    decay = config.get("weight_decay") or 0.0
    optimizer = (keras.optimizers.AdamW(lr, weight_decay=decay, global_clipnorm=clip) if decay
                 else keras.optimizers.Adam(lr, global_clipnorm=clip))
    if config["mixed_precision"] == "mixed_float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


def _train(run: RunFolder, config: dict, train: RunData, val: RunData, test: RunData,
           verbose: int) -> dict:
    info, x_train = train.info, train.x
    keras.utils.set_random_seed(config["seed"])
    model = build_model(config)
    model.compile(optimizer=_optimizer(config, math.ceil(len(x_train) / config["batch_size"])),
                  jit_compile=bool(config["jit"]),
                  # Runs saved before the option existed trained without it.
                  invertible_backprop=bool(config.get("invertible_backprop", False)))

    run.checkpoints.mkdir(exist_ok=True)
    adopt_keras_backup(run.checkpoints, run.checkpoints / "backup")  # earlier versions' runs
    done = AtomicCheckpoint.completed_epochs(run.checkpoints)
    # Drop epochs the checkpoint does not hold.
    history = [h for h in run.read_history() if h["epoch"] <= done]

    if done == 0 and config["model"] == "nice":
        initialize_rescaling(model, x_train, bin_width=info.bin_width, seed=config["seed"])
    correction = info.log_det_correction
    x_val = val.x
    if info.discrete and not model.dequantize:  # image models' evaluate dequantises itself
        x_val = info.dequantize(val.x, np.random.default_rng(noise_seed(config, "validation")))
    best = BestWeightsCheckpoint(run.best_weights_path, patience=config.get("patience"))
    callbacks = [  # the best weights are written before the backup that marks the epoch done
        _EpochRecorder(run, history, correction),
        best,
        AtomicCheckpoint(run.checkpoints),
    ]
    # The start, for --selection best-or-start (image models keep the best epoch: no copy of
    # their weights); a resumed run keeps its own (one begun by an earlier version has none).
    if done == 0 and not is_image_model(config["model"]):
        callbacks.insert(0, _SaveStart(_start_weights_path(run)))
    train_ds = _train_dataset(train, config["batch_size"], config["seed"],
                              is_image_model(config["model"]))
    validation = (x_val,) if val.context is None else (x_val, val.context)
    model.fit(train_ds, epochs=config["epochs"], validation_data=validation, shuffle=False,
              callbacks=callbacks, verbose=verbose)
    chosen_epoch = best.best_epoch or None
    if best.path.is_file():  # evaluate, save and export the best validation epoch's weights
        model.load_weights(best.path)
        # Runs saved before the option existed kept the best epoch.
        if config.get("selection", "best") == "best-or-start" and _keeps_start(
                model, run, best.path, x_val, val.context):
            chosen_epoch = 0

    test_nll = eval_nll(model, test.x, info, seed=noise_seed(config, "test"),
                        context=test.context)
    val_nll = eval_nll(model, val.x, info, seed=noise_seed(config, "validation"),
                       context=val.context)
    baseline = _gaussian_baseline(config, train)
    gaussian = {} if baseline is None else {"gaussian_val_nll": baseline(val),
                                            "gaussian_test_nll": baseline(test)}
    atomic.write_with(run.model_path, lambda tmp: model.save(str(tmp)), suffix=".keras")
    export_flow(model, run.saved_model_path, overwrite=True)  # the run's own, from a retry
    plot_files = _plot_run(run, model, config, test, history,
                           gaussian_val_nll=gaussian.get("gaussian_val_nll"))
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
        "chosen_epoch": chosen_epoch,  # the weights evaluated and saved; 0: the untrained flow
        "val_nll": val_nll,
        "test_nll": test_nll,
        **gaussian,
        "test_bits_per_dim": bpd(test_nll),
        "val_bits_per_dim": bpd(val_nll),
        "num_parameters": int(sum(np.prod(v.shape) for v in model.trainable_variables)),
        "train_time_s": float(sum(h["time_s"] for h in history)),
        "log_det_correction": correction,
        "plots": [p.name for p in plot_files],
        "config": config,
    }


def _scores_gaussian_baseline(config: dict, info) -> bool:
    """Whether a run is scored against the Gaussian fit: continuous vectors, not pixels."""
    return not (is_image_model(config["model"]) or info.discrete)


def _gaussian_baseline(config: dict, train: RunData) -> Callable[[RunData], float] | None:
    """The mean NLL (data units) that the full-covariance Gaussian fitted to the training rows
    (of ``x`` given the context, in a conditional run) gives a split: the baseline a flow must
    beat. None for pixels (a Gaussian of dequantised pixels is no such baseline)."""
    if not _scores_gaussian_baseline(config, train.info):
        return None
    if train.context is None:
        gauss = gaussian_fit(train.x, dtype=tf.float64)
    else:
        given = conditional_gaussian_fit(train.x, train.context, dtype=tf.float64)

    def nll(split: RunData) -> float:
        dist = gauss if split.context is None else given(split.context)
        log_p = dist.log_prob(np.asarray(split.x, np.float64))
        return -float(np.mean(log_p)) - split.info.log_det_correction

    return nll


def _start_weights_path(run: RunFolder) -> Path:
    return run.checkpoints / "start_weights.npz"


class _SaveStart(keras.callbacks.Callback):
    """Saves the untrained flow's weights, after ``fit`` has initialised it from the data, when
    a new run starts. The model's weights only: it has no optimizer state yet."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path

    def on_train_begin(self, logs=None) -> None:
        weights = self.model.get_weights()
        atomic.write_with(self.path, lambda tmp: np.savez(tmp, *weights), suffix=".npz")


def _keeps_start(model: FlowModel, run: RunFolder, best_path: Path, x_val, context) -> bool:
    """Whether the untrained flow is kept: the best epoch (loaded in ``model``) does not beat it
    by more than one paired standard error on the validation rows. Leaves ``model`` holding the
    weights kept. False when the run has no start weights (begun by an earlier version)."""
    start_path = _start_weights_path(run)
    if not start_path.is_file() or len(x_val) < 2:
        return False
    best_nll = row_nll(model, x_val, context, batch_size=1000)
    with np.load(start_path) as start:
        model.set_weights([start[f"arr_{i}"] for i in range(len(start.files))])
    if not gain_beats_noise(row_nll(model, x_val, context, batch_size=1000), best_nll):
        return True
    model.load_weights(best_path)
    return False


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


def _train_dataset(train: RunData, batch_size: int, seed: int, image_model: bool):
    """Shuffled batches (of ``(x, context)`` pairs if conditional); discrete data get fresh
    uniform dequantisation noise every epoch."""
    elements = train.x if train.context is None else (train.x, train.context)
    ds = tf.data.Dataset.from_tensor_slices(elements).shuffle(
        len(train.x), seed=seed, reshuffle_each_iteration=True).batch(batch_size)
    if train.info.discrete and not image_model:  # image models dequantise themselves
        width = float(train.info.bin_width)

        def noisy(b):
            return b + tf.random.uniform(tf.shape(b), 0.0, width, dtype=b.dtype)

        ds = ds.map(noisy if train.context is None else lambda b, c: (noisy(b), c))
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


def _plot_run(run: RunFolder, model: FlowModel, config: dict, test: RunData,
              history: list[dict], n: int = 2000, gaussian_val_nll: float | None = None
              ) -> list[Path]:
    info, x_test = test.info, test.x
    out = []
    curves = {"train NLL": [h["train_nll"] for h in history],
              "validation NLL": [h["val_nll"] for h in history]}
    references = ({} if gaussian_val_nll is None
                  else {"Gaussian fit, validation NLL": gaussian_val_nll})
    out.append(plots.training_curve(curves, run.path / "training_curve.png",
                                    title=f"{config['model']} on {config['dataset']}",
                                    references=references))
    context = config.get("context")
    if context is not None and context["kind"] == "class":
        classes = range(context["classes"])
        pixels = _to_data_units(_class_draws(model, classes, 8, 1.0, config["seed"]), config,
                                info)
        out.append(plots.sample_grid(pixels, run.path / "samples.png", ncols=8,
                                     value_range=(0.0, 255.0),
                                     title=f"{config['model']} samples, one row per class"))
        return out
    if context is not None:  # a table: draws for the test rows' contexts
        samples = np.asarray(model.sample(n, seed=config["seed"],
                                          context=_cycled(test.context, n)))
    else:
        samples = np.asarray(model.sample(n if info.kind != "image" else 64,
                                          seed=config["seed"]))
    if info.kind == "image":
        pixels = _to_data_units(samples, config, info)
        out.append(plots.sample_grid(pixels, run.path / "samples.png", value_range=(0.0, 255.0),
                                     title=f"{config['model']} samples"))
    elif config["event_size"] == 2 and context is None:
        def log_prob(points):
            z = info.to_model_units(points)
            return info.log_prob_to_data_units(np.asarray(model.log_prob(z), np.float64))

        out.append(plots.density_plot(
            log_prob, info.to_data_units(x_test), info.to_data_units(samples),
            run.path / "density.png", title=f"{config['model']} on {config['dataset']}"))
    else:
        given = " given the test contexts" if context is not None else ""
        out.append(plots.scatter_plot(info.to_data_units(x_test), info.to_data_units(samples),
                                      run.path / "samples.png",
                                      title=f"{config['model']}: first two columns{given}"))
    return out


def _cycled(rows: np.ndarray, n: int) -> np.ndarray:
    """``n`` rows: ``rows`` repeated in order (draw ``i`` gets row ``i mod len(rows)``)."""
    return rows[np.arange(n) % len(rows)]


def _class_draws(model: FlowModel, classes, n: int, temperature: float, seed: int) -> np.ndarray:
    """``n`` draws of each class in turn, class-major ``[len(classes) * n, ...]``. Every class
    gets the same base noise, so draw ``j`` of each class differs by its class only."""
    num_classes = model.context_shape[0]
    return np.concatenate([
        np.asarray(model.sample(n, temperature=temperature, seed=seed,
                                context=one_hot([k], num_classes)[0]))
        for k in classes])


def _table_rows(config: dict, x: np.ndarray, context: np.ndarray) -> np.ndarray:
    """Samples ``x`` (data units) and their model-unit contexts as whole rows of the table, in
    its column order."""
    columns = config["context"]["columns"]
    c = DatasetInfo.from_json(config["context"]["data"]).to_data_units(context)
    rows = np.empty((len(x), x.shape[1] + c.shape[1]), np.result_type(x, c))
    rows[:, [i for i in range(rows.shape[1]) if i not in columns]] = x
    rows[:, columns] = c
    return rows


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
    x, context, info = load_run_data(config, args.split, args.dataset, args.data_dir)
    seed = args.seed if args.seed is not None else noise_seed(config, args.split)
    nll = eval_nll(model, x, info, seed=seed, context=context)
    bpd = info.bits_per_dim(nll)
    baseline = (_gaussian_baseline(config, load_run_data(config, "train"))
                if _scores_gaussian_baseline(config, info) else None)  # pixels: rows not read
    gauss = None if baseline is None else baseline(RunData(x, context, info))
    result = {"run": str(run), "dataset": args.dataset or config["dataset"], "split": args.split,
              "examples": len(x), "nll": nll, "bits_per_dim": bpd, "gaussian_nll": gauss}
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{result['dataset']} {args.split} ({len(x)} examples): NLL {nll:.4f} nats" +
              (f", {bpd:.4f} bits/dim" if bpd is not None else "") +
              (f" (a full-covariance Gaussian fit: {gauss:.4f})" if gauss is not None else ""))
    return 0


def sample(run: RunFolder, args: argparse.Namespace, out: Path) -> int:
    """Draws ``args.n`` samples (per class for a class-conditional run) to ``out`` and a
    picture beside it; ``args.context_row`` is ``sample --context`` in model units, or None."""
    config = run.read_config()
    model = load_run_model(run)
    info = DatasetInfo.from_json(config["data"])
    context = config.get("context")
    temperature, seed, n = args.temperature, args.seed, args.n
    chosen = getattr(args, "context_row", None)
    test = load_run_data(config, "test") if info.kind != "image" else None
    if context is None:
        samples = _to_data_units(model.sample(n, temperature=temperature, seed=seed), config,
                                 info)
        x = samples
    elif context["kind"] == "class":
        classes = range(context["classes"]) if chosen is None else [int(chosen[0])]
        samples = _to_data_units(_class_draws(model, classes, n, temperature, seed), config,
                                 info)
    else:  # whole table rows: the draws' x columns and their contexts
        c = np.tile(chosen, (n, 1)) if chosen is not None else _cycled(test.context, n)
        x = _to_data_units(model.sample(n, temperature=temperature, seed=seed, context=c),
                           config, info)
        samples = _table_rows(config, x, c)
    try:
        atomic.write_with(out, lambda tmp: np.save(tmp, samples), suffix=".npy")
    except OSError as e:
        raise CLIError(f"cannot write {out}: {e.strerror or e}") from None
    png = out.with_suffix(".png")
    title = f"{config['model']} samples, T = {temperature:g}"
    if context is not None and context["kind"] == "class":
        per_row = min(n, 10)
        grid = samples.reshape(len(classes), n, *samples.shape[1:])[:, :per_row]
        plots.sample_grid(grid.reshape(-1, *samples.shape[1:]), png, ncols=per_row,
                          value_range=(0.0, 255.0), title=f"T = {temperature:g}, a row per class")
    elif info.kind == "image":
        plots.sample_grid(samples[:64], png, value_range=(0.0, 255.0), title=title)
    else:
        plots.scatter_plot(info.to_data_units(test.x), x, png, title=title)
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
    config = run.read_config()
    given = (f"; context [N, {context_size(config)}]: {describe(config)}, see "
             f"{run.config_path}" if config.get("context") else "")
    print(f"wrote SavedModel to {out} (signatures log_prob, sample, sample_with_options, "
          f"forward, inverse; inputs in model units, see {run.metrics_path}{given})")
    return 0
