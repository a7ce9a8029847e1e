"""The four commands, up to the point where they need TensorFlow.

Each checks its options, the run folder and (``train``) the data first, so that mistakes are
reported at once; then it imports TensorFlow quietly and hands over to
:mod:`tfp_coupling.cli.tasks` (imported only then: it imports TensorFlow).
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import sys
import time
from pathlib import Path

from tfp_coupling import data
from tfp_coupling.cli.context import new_context, parse_sample_context
from tfp_coupling.cli.options import (
    NICE_2D_DEFAULTS,
    REALNVP_IMAGE_COUPLINGS,
    REALNVP_SHIFT_CLAMP,
    RUN_SETTINGS,
    TABLE_DEFAULTS,
    VECTOR_MODELS,
    CLIError,
    check_patience,
    fill_defaults,
    is_image_model,
    mixing_setting,
    new_config,
    parse_hidden,
    selection_setting,
    starts_at_identity,
)
from tfp_coupling.cli.run_folder import RunFolder, check_export_out, load_run_data, prepare_out
from tfp_coupling.data import DatasetInfo
from tfp_coupling.errors import import_tensorflow_quietly

__all__ = ["evaluate", "export", "sample", "train"]


def _tasks():
    """The commands' TensorFlow half, imported quietly once the options are checked."""
    import_tensorflow_quietly()
    from tfp_coupling.cli import tasks  # the dispatch's late import: it imports TensorFlow

    return tasks


# --------------------------------------------------------------------------------------------
# train


def train(args: argparse.Namespace) -> int:
    start_wall = time.perf_counter()
    if importlib.util.find_spec("matplotlib") is None:  # checked before hours of training
        raise CLIError("train writes PNG plots and needs matplotlib: "
                       "pip install 'tfp-coupling[plot]'")
    given = fill_defaults(args)
    if args.resume is not None:
        run, config = _resumed_run(args, given)
    else:
        run, config = _new_run(args, given)
    splits = [load_run_data(config, split) for split in ("train", "validation", "test")]
    if args.resume is not None:
        run.reopen_for_training(config)
    else:
        run = RunFolder.create(run.path, config)
    metrics = _tasks().train(run, config, *splits, verbose=0 if args.quiet else 1,
                             remove_on_failure=args.resume is None)
    metrics["wall_time_s"] = time.perf_counter() - start_wall
    run.write_metrics(metrics)  # last: marks the run complete
    bpd, gauss = metrics["test_bits_per_dim"], metrics.get("gaussian_test_nll")
    print(f"run folder: {run}")
    print(f"test NLL: {metrics['test_nll']:.4f} nats" +
          (f" ({bpd:.4f} bits/dim)" if bpd is not None else "") +
          (f" (a full-covariance Gaussian fit: {gauss:.4f})" if gauss is not None else "") +
          f"; {len(metrics['history']['train_nll'])} epochs, wall time "
          f"{metrics['wall_time_s']:.1f} s")
    kept_start = metrics.get("chosen_epoch") == 0
    if kept_start:
        print(f"tfp-coupling: note: kept the untrained flow: the best epoch "
              f"({metrics['best_epoch']}) did not beat it by more than one standard error of "
              f"the validation rows (--selection best keeps that epoch)", file=sys.stderr)
    # An untrained flow at the identity is the Gaussian fit: equal NLLs up to rounding.
    if gauss is not None and metrics["test_nll"] > gauss and not (
            kept_start and starts_at_identity(config)):
        # What helped on the benchmark's small tables, less what the run already has.
        tries = [*(["--activation tanh"] if config.get("activation") != "tanh" else []),
                 *(["--start identity"] if not starts_at_identity(config) else []),
                 *(["--dropout 0.3"] if not config.get("dropout") else []),
                 "a smaller --hidden", "fewer --couplings"]
        print(f"tfp-coupling: note: the flow's test NLL is above the Gaussian fit's by "
              f"{metrics['test_nll'] - gauss:.4f} nats; with few rows try "
              f"{', '.join(tries)} (compare runs on their validation NLL)", file=sys.stderr)
    return 0


def _resumed_run(args: argparse.Namespace, given: set[str]) -> tuple[RunFolder, dict]:
    """The run ``--resume`` continues, and its config with the settings it may change."""
    run = RunFolder.open(args.resume)
    config = run.read_config()
    if args.data_dir is not None:
        args.data_dir = str(Path(args.data_dir).resolve())
    if args.dataset.lower().endswith((".npy", ".csv")):
        args.dataset = str(Path(args.dataset).expanduser().resolve())
    if config["model"] in VECTOR_MODELS:  # runs written before --activation trained ReLU
        config.setdefault("activation", "relu")
    config.setdefault("dropout", 0.0)  # runs written before --dropout had none
    args.mixing = mixing_setting(args.mixing)  # "none" is recorded as None
    changed = [k for k in RUN_SETTINGS if k in given and k != "hidden"
               and config.get(k) != getattr(args, k)]
    if "hidden" in given and parse_hidden(args.hidden) != config["hidden_units"]:
        changed.append("hidden")
    if "start" in given and (args.start == "identity") != starts_at_identity(config):
        changed.append("start")
    changed += _changed_context(args, given, config.get("context"), config["dataset"])
    if changed:
        raise CLIError(f"--resume continues {run} with its saved settings; it cannot change "
                       f"{', '.join('--' + k.replace('_', '-') for k in changed)} "
                       f"(start a new run instead)")
    if run.is_complete:
        if "epochs" not in given or args.epochs <= config["epochs"]:
            raise CLIError(f"run {run} is already complete ({config['epochs']} epochs); "
                           f"pass --epochs N > {config['epochs']} to train it further")
    if "epochs" in given:
        config["epochs"] = args.epochs
    if "jit" in given:
        config["jit"] = bool(args.jit)
    if "invertible_backprop" in given:
        config["invertible_backprop"] = bool(args.invertible_backprop)
    if "patience" in given:
        check_patience(args.patience)
        config["patience"] = args.patience
    if "selection" in given:
        config["selection"] = selection_setting(config["model"], args.selection)
    return run, config


def _changed_context(args: argparse.Namespace, given: set[str], context: dict | None,
                     dataset: str) -> list[str]:
    """The context options of ``--resume`` that differ from the run's (the run's context is
    kept when they are left out)."""
    changed = []
    if "conditional" in given and bool(args.conditional) != (
            context is not None and context["kind"] == "class"):
        changed.append("conditional")
    if "context_columns" in given:
        columns = context["columns"] if context and context["kind"] == "columns" else None
        try:
            same = data.resolve_columns(dataset, args.context_columns) == columns
        except (ValueError, OSError):
            same = False
        if not same:
            changed.append("context_columns")
    return changed


def _new_run(args: argparse.Namespace, given: set[str]) -> tuple[RunFolder, dict]:
    """The folder a new run will have (not created yet) and its config, data checked."""
    config = new_config(args)
    image_model = is_image_model(args.model)
    _, info = data.load(args.dataset, "train", seed=args.seed, data_dir=args.data_dir,
                        normalize=not image_model, with_info=True)
    if info.kind == "image" and not image_model:
        config["flatten"] = True
    if args.model == "nice":  # whitened, except flattened pixels (near-singular covariance)
        config["whiten"] = not config.get("flatten", False)
        # Random shifts, but not on flattened pixels (far less varied than a shift moves them).
        config["zero_init"] = bool(config.get("flatten"))
    if args.model == "realnvp-image":  # variance-preserving residual blocks (nets.ResNet)
        config["scale_residuals"] = True
        config.update(REALNVP_IMAGE_COUPLINGS)  # recorded, so that the run rebuilds them
    if args.model == "realnvp":  # recorded, so that the run rebuilds with the same bound
        config["shift_clamp"] = REALNVP_SHIFT_CLAMP
        # Random shifts to start, but not on flattened pixels (they would move the background
        # by many of its standard deviations) nor on tables: there the identity start is the
        # Gaussian fit, which the best-validation-epoch selection can fall back on.
        config["zero_init"] = bool(config.get("flatten")) or info.kind == "tabular"
    if args.start is not None:
        config["zero_init"] = args.start == "identity"
    if info.kind != "image" and image_model:
        raise CLIError(f"--model {args.model} needs an image dataset; {args.dataset!r} "
                       f"holds vectors of shape {list(info.event_shape)}")
    context, x_info = new_context(args, info)
    _check_vectors(info, args.dataset, image_model,
                   context["columns"] if context and context["kind"] == "columns" else ())
    if info.kind == "tabular":
        config["dataset"] = info.name  # the resolved path: resume/evaluate from anywhere
        config.update({k: v for k, v in TABLE_DEFAULTS.items() if k not in given})
    if args.model == "nice" and info.kind == "toy2d":
        nice_2d = {k: v for k, v in NICE_2D_DEFAULTS.items() if k not in given}
        if "hidden" in nice_2d:
            config["hidden_units"] = parse_hidden(nice_2d.pop("hidden"))
        config.update(nice_2d)
    config["context"] = context
    config["event_size"] = x_info.event_size
    config["image_shape"] = list(info.event_shape) if info.kind == "image" else None
    config["data"] = x_info.to_json()
    out = Path(args.out)
    prepare_out(out)
    name = args.name or _unique_name(
        out, f"{args.model}-{_dataset_label(args.dataset)}-{time.strftime('%Y%m%d-%H%M%S')}")
    if "/" in name or name in ("", ".", ".."):
        raise CLIError(f"--name must be a plain folder name, got {name!r}")
    run = RunFolder(out / name)
    if run.path.exists():
        state = "complete" if run.is_complete else "unfinished"
        raise CLIError(f"run folder {run} already exists ({state}); choose another --name "
                       f"or continue it with --resume {run}")
    return run, config


def _check_vectors(info: DatasetInfo, dataset: str, image_model: bool,
                   context_columns: list[int] | tuple = ()) -> None:
    """Refuses data a coupling flow cannot model; notes integer-valued table columns (but
    not context columns: the flow only conditions on them)."""
    if not image_model and info.event_size < 2:
        raise CLIError(f"{dataset}: examples have {info.event_size} value(s); a coupling flow "
                       f"needs at least 2 (it transforms one part of each example given the "
                       f"other)")
    modelled = [c for c in info.integer_columns if c not in context_columns]
    if modelled:
        columns = ", ".join(str(c + 1) for c in modelled)
        print(f"tfp-coupling: note: column(s) {columns} of {dataset} hold whole numbers only; "
              f"the flow treats them as continuous, so its NLL is a density there, not the "
              f"probability of the integers (dequantise: add uniform noise in [0, 1) to those "
              f"columns in the file)", file=sys.stderr)


def _unique_name(out: Path, base: str) -> str:
    name, i = base, 2
    while (out / name).exists():
        name, i = f"{base}-{i}", i + 1
    return name


def _dataset_label(dataset: str) -> str:
    return Path(dataset).stem if dataset.lower().endswith((".npy", ".csv")) else dataset


# --------------------------------------------------------------------------------------------
# evaluate / sample / export


def evaluate(args: argparse.Namespace) -> int:
    run = RunFolder.open(args.run)
    run.check_complete()
    return _tasks().evaluate(run, args)


def sample(args: argparse.Namespace) -> int:
    run = RunFolder.open(args.run)
    if args.n < 1:
        raise CLIError(f"-n must be >= 1, got {args.n}")
    if not (args.temperature > 0 and math.isfinite(args.temperature)):
        raise CLIError(f"--temperature must be a finite number > 0, got {args.temperature}")
    out = Path(args.out) if args.out else run.path / "samples.npy"
    if out.suffix != ".npy":
        raise CLIError(f"--out must end in .npy, got {out}")
    if not out.parent.is_dir():
        raise CLIError(f"output folder not found: {out.parent}")
    if args.out and not args.overwrite:  # RUN/samples.* are the run's own, refreshed freely
        existing = [p for p in (out, out.with_suffix(".png")) if p.exists()]
        if existing:
            raise CLIError(f"{existing[0]} already exists; pass --overwrite to replace "
                           f"{' and '.join(str(p) for p in existing)}")
    run.check_complete()
    # The context in model units, checked before TensorFlow loads.
    args.context_row = (None if args.context is None
                        else parse_sample_context(run.read_config(), args.context))
    return _tasks().sample(run, args, out)


def export(args: argparse.Namespace) -> int:
    run = RunFolder.open(args.run)
    # RUN/saved_model is the run's own export (train writes it): refreshing it loses nothing.
    out = Path(args.out) if args.out else run.saved_model_path
    overwrite = args.overwrite or not args.out
    check_export_out(out, overwrite)  # before loading TensorFlow and the model
    run.check_complete()
    return _tasks().export(run, out, overwrite)
