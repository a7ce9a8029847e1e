"""Runs ``tfp-coupling`` in a child process with a fault planted, for ``test_faults.py``.

Usage: ``python tests/fault_runner.py train ...`` (the CLI's arguments). Environment:

* ``FAULT_CHECKPOINT=<k>:<SIGNAL>``: during the k-th checkpoint weights write (k from 1), after
  the file is written, cut it to half its size and send the process ``SIGNAL`` (``SIGINT`` or
  ``SIGKILL``): a kill in the middle of writing the checkpoint.
* ``FAULT_REPORT=1``: print ``fault-runner: training`` when ``fit`` starts, so the parent can
  time a signal into the training itself rather than into TensorFlow's start-up.
"""

from __future__ import annotations

import os
import signal
import sys


def _plant_torn_checkpoint(k: int, sig: signal.Signals) -> None:
    import keras

    real_save = keras.Model.save_weights
    calls = {"n": 0}

    def save_then_die(self, filepath, *args, **kwargs):
        real_save(self, filepath, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == k:
            with open(filepath, "r+b") as f:
                f.truncate(os.path.getsize(filepath) // 2)
            os.kill(os.getpid(), sig)

    keras.Model.save_weights = save_then_die


def _report_training_start() -> None:
    from tfp_coupling.checkpoint import AtomicCheckpoint

    real_begin = AtomicCheckpoint.on_train_begin

    def begin(self, logs=None):
        print("fault-runner: training", flush=True)
        real_begin(self, logs)

    AtomicCheckpoint.on_train_begin = begin


def main() -> int:
    from tfp_coupling import cli
    from tfp_coupling.errors import import_tensorflow_quietly

    import_tensorflow_quietly()
    fault = os.environ.get("FAULT_CHECKPOINT")
    if fault:
        k, name = fault.split(":")
        _plant_torn_checkpoint(int(k), signal.Signals[name])
    if os.environ.get("FAULT_REPORT"):
        _report_training_start()
    return cli.main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
