"""The context ``c`` of a conditional run, ``p(x | c)``: table columns or class labels.

``--context-columns a,b`` (a table): the listed columns are ``c``, the others ``x``. Both are
standardised with the training split's statistics, so in model units::

    c_model = (c - shift_c) / scale_c        (shift_c, scale_c: config.json, context.data)

``--conditional`` (mnist, fashion_mnist, cifar10): ``c`` is the one-hot class label, a vector of
``classes`` values with a 1 at the label. The model, ``evaluate`` and the SavedModel see ``c`` in
model units; ``sample --context`` takes it in the data's units (column values, or a label).

A run's ``config["context"]`` is ``None`` (unconditional) or one of::

    {"kind": "columns", "columns": [0-based indices], "names": [header names] or None,
     "data": DatasetInfo of the context columns (JSON)}
    {"kind": "class", "classes": 10, "dataset": "mnist"}

No TensorFlow here.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from tfp_coupling import data
from tfp_coupling.cli.options import CLIError
from tfp_coupling.data import DatasetInfo
from tfp_coupling.data.tables import column_names

__all__ = ["context_size", "describe", "new_context", "parse_sample_context", "split_context",
           "table_standardization"]

# Image models whose conditioners take a context (nice-image's flat MLPs take none).
CONDITIONAL_IMAGE_MODELS = ("realnvp-image",)


def new_context(args: argparse.Namespace, info: DatasetInfo) -> tuple[dict | None, DatasetInfo]:
    """A new run's ``config["context"]`` from ``--context-columns``/``--conditional``, and the
    info of what the flow models (the table's other columns, or the images)."""
    if args.context_columns is not None and args.conditional:
        raise CLIError("--context-columns (a table's columns) and --conditional (class labels) "
                       "exclude each other; give one")
    if args.context_columns is not None:
        return _column_context(args, info)
    if args.conditional:
        return _class_context(args, info), info
    return None, info


def _column_context(args: argparse.Namespace, info: DatasetInfo) -> tuple[dict, DatasetInfo]:
    if info.kind != "tabular":
        hint = "; for class labels use --conditional" if info.kind == "image" else ""
        raise CLIError(f"--context-columns needs a table (a .csv or .npy file); {args.dataset!r} "
                       f"is a built-in {'image' if info.kind == 'image' else '2-D'} "
                       f"dataset{hint}")
    try:
        columns = data.resolve_columns(info.name, args.context_columns)
    except ValueError as e:
        raise CLIError(f"--context-columns: {e}") from None
    d = info.event_size
    rest = [c for c in range(d) if c not in columns]
    if len(rest) < 2:
        what = f"all {d} columns" if not rest else f"all but 1 of the {d} columns"
        raise CLIError(f"--context-columns lists {what} of {args.dataset}; leave at least 2 "
                       f"columns to model (a coupling flow transforms one part given the other)")
    names = column_names(Path(info.name))
    context = {"kind": "columns", "columns": columns,
               "names": [names[c] for c in columns] if names else None,
               "data": info.select(columns).to_json()}
    return context, info.select(rest)


def _class_context(args: argparse.Namespace, info: DatasetInfo) -> dict:
    if info.kind != "image":
        hint = "; for a table's columns use --context-columns" if info.kind == "tabular" else ""
        raise CLIError(f"--conditional conditions on class labels, which "
                       f"{', '.join(data.NUM_CLASSES)} have; {args.dataset!r} has none{hint}")
    if args.model not in (*CONDITIONAL_IMAGE_MODELS, "nice", "realnvp"):
        raise CLIError(f"--conditional works with --model realnvp-image, nice or realnvp; "
                       f"{args.model}'s conditioners take no context")
    data.load_labels(args.dataset, "train", data_dir=args.data_dir)  # missing labels: say now
    return {"kind": "class", "classes": data.NUM_CLASSES[args.dataset],
            "dataset": args.dataset}


def context_size(config: dict) -> int | None:
    """The length ``c`` of the run's context vector, or None for an unconditional run."""
    context = config.get("context")
    if context is None:
        return None
    return len(context["columns"]) if context["kind"] == "columns" else context["classes"]


def describe(config: dict) -> str:
    """The context in words, for messages; empty for an unconditional run."""
    context = config.get("context")
    if context is None:
        return ""
    if context["kind"] == "class":
        return f"one-hot class label ({context['classes']} classes)"
    names = context["names"] or [f"column {c + 1}" for c in context["columns"]]
    return "standardised " + ", ".join(names)


def table_standardization(config: dict) -> DatasetInfo | None:
    """The whole table's standardisation (the run's ``x`` and context columns put back in the
    file's order), for loading the file again; None unless the context is table columns."""
    context = config.get("context")
    if context is None or context["kind"] != "columns":
        return None
    x_info = DatasetInfo.from_json(config["data"])
    c_info = DatasetInfo.from_json(context["data"])
    columns = context["columns"]
    d = x_info.event_size + len(columns)
    rest = [c for c in range(d) if c not in columns]
    shift, scale = np.zeros(d), np.ones(d)
    for part, info in ((rest, x_info), (columns, c_info)):
        shift[part] = np.broadcast_to(info.shift, (len(part),))
        scale[part] = np.broadcast_to(info.scale, (len(part),))
    return DatasetInfo(x_info.name, "tabular", (d,), dict(x_info.sizes), shift, scale)


def split_context(config: dict, x: np.ndarray, info: DatasetInfo, name: str, split: str,
                  data_dir: str | None) -> tuple[np.ndarray, np.ndarray | None, DatasetInfo]:
    """``(x, c, x_info)`` of one loaded split in model units: the table's context columns taken
    out of ``x``, or the one-hot labels of the images; ``c`` is None if unconditional."""
    context = config.get("context")
    if context is None:
        return x, None, info
    if context["kind"] == "columns":
        columns = context["columns"]
        rest = [c for c in range(x.shape[1]) if c not in columns]
        return x[:, rest], x[:, columns], info.select(rest)
    if name not in data.NUM_CLASSES:
        raise CLIError(f"the run is conditioned on class labels; {name!r} has none")
    labels = data.load_labels(name, split, data_dir=data_dir)
    if len(labels) != len(x):
        raise CLIError(f"{name} {split}: {len(labels)} labels for {len(x)} images")
    return x, one_hot(labels, context["classes"]), info


def one_hot(labels: np.ndarray, classes: int) -> np.ndarray:
    """``[N]`` integer labels as ``[N, classes]`` float32 rows with a 1 at the label."""
    return np.eye(classes, dtype=np.float32)[np.asarray(labels, np.int64)]


def parse_sample_context(config: dict, text: str) -> np.ndarray:
    """``sample --context``: a table's context values (comma-separated, the data's units) as one
    model-unit row ``[c]``, or a class label as ``[label]``; ``CLIError`` if malformed."""
    context = config.get("context")
    if context is None:
        raise CLIError("--context applies to conditional runs (trained with --context-columns "
                       "or --conditional); this run is unconditional")
    parts = [p.strip() for p in text.split(",")]
    if context["kind"] == "class":
        classes = context["classes"]
        if len(parts) != 1 or not parts[0].isdigit() or int(parts[0]) >= classes:
            raise CLIError(f"--context must be one class label 0..{classes - 1}, got {text!r}")
        return np.array([int(parts[0])])
    c_info = DatasetInfo.from_json(context["data"])
    try:
        values = np.array([float(p) for p in parts])
    except ValueError:
        values = np.array([])
    if len(values) != c_info.event_size or not np.all(np.isfinite(values)):
        raise CLIError(f"--context must be {c_info.event_size} finite number(s) for "
                       f"{describe(config).removeprefix('standardised ')}, comma-separated in "
                       f"the data's units; got {text!r}")
    return c_info.to_model_units(values)
