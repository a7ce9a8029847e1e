"""The ``tfp-coupling`` command line: train, evaluate, sample and export flows.

Usage (``python -m tfp_coupling`` works the same)::

    tfp-coupling train                          # RealNVP on the embedded two moons -> runs/<name>/
    tfp-coupling train --model nice --dataset pinwheel --epochs 30 --name pinwheel-nice
    tfp-coupling train --dataset mnist --data-dir ../shared/data/mnist --model nice
    tfp-coupling train --resume runs/pinwheel-nice --epochs 60   # continue (or finish) a run
    tfp-coupling evaluate runs/pinwheel-nice --split test
    tfp-coupling sample runs/pinwheel-nice -n 2000
    tfp-coupling export runs/pinwheel-nice --out /tmp/pinwheel_flow
    tfp-coupling train --dataset table.csv --context-columns label    # p(x | label)
    tfp-coupling train --dataset mnist --data-dir ../shared/data/mnist --conditional  # p(x | digit)
    tfp-coupling sample runs/<table run> --context 3   # draws given label = 3 (the data's units)

A run folder holds ``config.json`` (written first: everything needed to rebuild the model and
the data), ``checkpoints/`` (:class:`~tfp_coupling.checkpoint.AtomicCheckpoint` state: weights,
optimizer, epoch; and the per-epoch history), ``model.keras``, ``saved_model/``, PNG plots, and
``metrics.json``, written last and atomically: a folder without ``metrics.json`` is an
unfinished run (resume it with ``--resume``); see :mod:`tfp_coupling.cli.run_folder`.

Nothing the user owns is replaced without ``--overwrite``: ``export --out`` and ``sample --out``
refuse existing outputs (``export`` replaces only an earlier SavedModel, and never other files).

Units: every NLL is reported in the data's own units (see :mod:`tfp_coupling.cli.tasks`).

Errors (unknown dataset, missing file, NaN in a table, unwritable output folder, a diverging
run, a full disk) print one line ``tfp-coupling: error: ...`` on stderr and exit with status 1;
usage errors exit with status 2. TensorFlow is imported only once the options are checked, and
without its start-up log lines.

Conditional runs (``--context-columns``, ``--conditional``) model ``p(x | c)``: see
:mod:`tfp_coupling.cli.context` for the context's units, in the model and the SavedModel.

Modules: ``options`` (defaults and checks), ``parser``, ``context`` (a conditional run's
context), ``run_folder`` (the files of a run),
``commands`` (each command up to the point where it needs TensorFlow) and ``tasks`` (the rest:
imported only then). A ``FlowModel`` gets everything a command does through the library.
"""

from __future__ import annotations

import os
import sys

from tfp_coupling.cli.options import CLIError
from tfp_coupling.cli.parser import build_parser
from tfp_coupling.errors import one_line_message, quiet_tensorflow_startup

__all__ = ["CLIError", "build_parser", "main"]


def main(argv: list[str] | None = None) -> int:
    """Runs the command line; returns the exit status (0 ok, 1 error, 2 usage).

    Every failure is reported as one line ``tfp-coupling: error: ...`` on stderr, never a
    traceback (set ``TFP_COUPLING_TRACEBACK=1`` to see one).
    """
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

