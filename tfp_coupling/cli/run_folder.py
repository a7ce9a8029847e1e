"""A run folder: the files one ``tfp-coupling train`` writes, and the rules for writing them.

Layout (``config.json`` is written first, ``metrics.json`` last)::

    config.json       everything needed to rebuild the model and the data
    checkpoints/      AtomicCheckpoint state (weights, optimizer, epoch), history.json, best weights
    model.keras       the trained model
    saved_model/      its SavedModel export
    *.png             plots
    metrics.json      the results; a folder without it is an unfinished run (``--resume`` it)

Every file is written atomically (:mod:`tfp_coupling.atomic`), so an interrupted command leaves
each file either as it was or complete. No TensorFlow here.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from tfp_coupling import atomic, data
from tfp_coupling.cli.context import split_context, table_standardization
from tfp_coupling.cli.options import CLIError, is_image_model
from tfp_coupling.data import DatasetInfo

__all__ = ["RunData", "RunFolder", "check_export_out", "load_run_data", "prepare_out"]

SPLIT_NOISE_SEEDS = {"train": 0, "validation": 1, "test": 2, "all": 3}


class RunFolder:
    """A run folder on disk: its paths, its ``config.json`` and whether the run is complete."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __str__(self) -> str:
        return str(self.path)

    @classmethod
    def open(cls, path: str | Path) -> RunFolder:
        """An existing run folder; ``CLIError`` if ``path`` is none."""
        run = cls(path)
        if not run.path.is_dir():
            raise CLIError(f"run folder not found: {run.path}")
        if not run.config_path.is_file():
            raise CLIError(f"{run.path} is not a run folder (no config.json)")
        return run

    @classmethod
    def create(cls, path: str | Path, config: dict) -> RunFolder:
        """Creates ``path`` holding ``config.json`` and ``checkpoints/``, all at once.

        The folder is assembled under a temporary name beside ``path`` and renamed into place,
        so an interruption never leaves a run folder without its ``config.json`` (which
        ``--resume`` and every other command need).
        """
        run = cls(path)
        try:
            with atomic.temporary_sibling_folder(run.path) as tmp:
                (tmp / "checkpoints").mkdir()
                write_json(tmp / "config.json", config)
                atomic.fsync_tree(tmp)
                os.rename(tmp, run.path)  # fails if a run of that name appeared meanwhile
            atomic.fsync_folder(run.path.parent)
        except OSError as e:
            raise CLIError(f"cannot create run folder {run.path}: {e.strerror or e}") from None
        return run

    config_path = property(lambda self: self.path / "config.json")
    metrics_path = property(lambda self: self.path / "metrics.json")
    model_path = property(lambda self: self.path / "model.keras")
    saved_model_path = property(lambda self: self.path / "saved_model")
    checkpoints = property(lambda self: self.path / "checkpoints")
    history_path = property(lambda self: self.checkpoints / "history.json")
    best_weights_path = property(lambda self: self.checkpoints / "best.weights.h5")

    def read_config(self) -> dict:
        return read_json(self.config_path)

    def write_config(self, config: dict) -> None:
        write_json(self.config_path, config)

    def read_history(self) -> list[dict]:
        return read_json(self.history_path) if self.history_path.is_file() else []

    def write_history(self, history: list[dict]) -> None:
        write_json(self.history_path, history)

    def write_metrics(self, metrics: dict) -> None:
        """Writes ``metrics.json``, which marks the run complete: call it last."""
        write_json(self.metrics_path, metrics)

    @property
    def is_complete(self) -> bool:
        """Complete once ``metrics.json`` (written last) and ``model.keras`` both exist."""
        return self.metrics_path.is_file() and self.model_path.is_file()

    def check_complete(self) -> None:
        """``CLIError`` unless the run is complete, saying how to complete it."""
        if not self.is_complete:
            # model.keras may be an earlier model: an interrupted `--resume --epochs N` keeps it
            # until the new one is saved, so only metrics.json (written last) marks it current.
            missing = "model.keras" if self.metrics_path.is_file() else "metrics.json"
            raise CLIError(f"run {self.path} is unfinished (no {missing}); complete it with "
                           f"tfp-coupling train --resume {self.path}")

    def reopen_for_training(self, config: dict) -> None:
        """Marks the run unfinished, clears a killed attempt's leftovers, saves ``config``."""
        self.metrics_path.unlink(missing_ok=True)
        # Temporary exports, models and plots are renamed into place only when complete, so a
        # leftover is never the only copy of anything. (".model.*.keras": earlier versions.)
        atomic.remove_stale_temporaries(self.path, also=(".model.*.keras",))
        self.write_config(config)


def write_json(path: Path, obj: Any) -> None:
    atomic.write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as e:
        raise CLIError(f"cannot read {path}: {e}") from None


def prepare_out(out: Path) -> None:
    """Creates the folder that holds run folders; ``CLIError`` if it cannot be written."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".write-test-"):
            pass
    except OSError as e:
        raise CLIError(f"output folder {out} is not writable: {e.strerror or e}") from None


def noise_seed(config: dict, split: str) -> int:
    """Seed of the dequantisation noise for evaluating a split (as train used it)."""
    return config["seed"] + SPLIT_NOISE_SEEDS[split]


class RunData(NamedTuple):
    """One split as a run's model sees it: ``x`` and (conditional runs) ``context`` in model
    units, one context row per example, and the info relating ``x`` to the data's units."""

    x: np.ndarray
    context: np.ndarray | None
    info: DatasetInfo


def load_run_data(config: dict, split: str, dataset: str | None = None,
                  data_dir: str | None = None) -> RunData:
    """One split, shaped for the run's model.

    Vector flows see flattened examples standardised as in training; image flows take pixel
    images as they are. A conditional run's context comes with them (see
    :mod:`tfp_coupling.cli.context`).
    """
    saved = DatasetInfo.from_json(config["data"])
    name = dataset or config["dataset"]
    data_dir = data_dir if data_dir is not None else config.get("data_dir")
    image_model = is_image_model(config["model"])
    standardization = table_standardization(config) or (saved if saved.kind != "image"
                                                        else None)
    x, info = data.load(name, split, seed=config["seed"], data_dir=data_dir,
                        normalize=not image_model, with_info=True,
                        standardization=standardization)
    expected = tuple(config["image_shape"] or ()) if image_model else (config["event_size"],)
    if not image_model:
        x = x.reshape(len(x), -1)
    x, context, info = split_context(config, x, info, name, split, data_dir)
    if tuple(x.shape[1:]) != expected:
        raise CLIError(f"dataset {name!r} has examples of shape {list(info.event_shape)}; the "
                       f"run's model expects {list(expected)}")
    return RunData(np.ascontiguousarray(x), context, info)


def check_export_out(out: Path, overwrite: bool) -> None:
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
