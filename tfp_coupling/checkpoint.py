"""A training checkpoint that an interruption cannot tear: :class:`AtomicCheckpoint`.

Keras' ``BackupAndRestore`` writes ``latest.weights.h5`` in place, so a Ctrl-C or SIGKILL during
the write leaves a partial file; it falls back to its ``.bkp`` copy only on an ``OSError``, and a
partial file can load with part of the optimizer state missing (the step counter silently reset,
so a learning-rate schedule restarts). Here each epoch's state goes to a new file written
atomically (temporary sibling, fsync, rename, see :mod:`tfp_coupling.atomic`), and only then does
``state.json`` (also written atomically) point at it::

    checkpoints/
        epoch-0003.weights.h5   weights and optimizer state after 3 epochs
        state.json              {"epoch": 3, "weights": "epoch-0003.weights.h5",
                                 "optimizer_iterations": 1920}

``state.json`` therefore always names a complete file; an interruption at any instant leaves
either the previous epoch's checkpoint or the new one. On restore the optimizer's step count is
checked against the one recorded at saving, so a checkpoint that loads only in part is an error,
never a silent restart.

Example:
    >>> import tempfile, tfp_coupling as tc
    >>> from tfp_coupling.checkpoint import AtomicCheckpoint
    >>> model = tc.nice_flow(event_shape=[2], num_couplings=2, hidden_units=[8])
    >>> model.compile(optimizer="adam")
    >>> folder = tempfile.mkdtemp()
    >>> x = tc.data.two_moons(256, seed=0)
    >>> history = model.fit(x, batch_size=64, epochs=2, verbose=0,
    ...                     callbacks=[AtomicCheckpoint(folder)])
    >>> AtomicCheckpoint.completed_epochs(folder)
    2
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import keras

from tfp_coupling import atomic

__all__ = ["AtomicCheckpoint", "CheckpointError", "adopt_keras_backup"]

STATE_FILE = "state.json"


class CheckpointError(RuntimeError):
    """A checkpoint exists but cannot be restored completely."""


def _weights_name(epoch: int) -> str:
    return f"epoch-{epoch:04d}.weights.h5"


class AtomicCheckpoint(keras.callbacks.Callback):
    """Saves weights, optimizer state and the epoch count after every epoch; restores them.

    Use it as ``BackupAndRestore``: pass it to ``fit`` and rerun the same ``fit`` after an
    interruption; training continues after the last completed epoch.

    Args:
        directory: folder of the checkpoint files (created if missing).
    """

    def __init__(self, directory: str | os.PathLike) -> None:
        super().__init__()
        self.directory = Path(directory)

    # -- reading -----------------------------------------------------------------------------

    @classmethod
    def read_state(cls, directory: str | os.PathLike) -> dict | None:
        """The contents of ``state.json``, or None if no epoch has been checkpointed."""
        path = Path(directory) / STATE_FILE
        if not path.is_file():
            return None
        try:
            state = json.loads(path.read_text())
            int(state["epoch"]), str(state["weights"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"cannot read checkpoint state {path}: {e}") from None
        return state

    @classmethod
    def completed_epochs(cls, directory: str | os.PathLike) -> int:
        """Epochs the checkpoint in ``directory`` holds (0 if none)."""
        state = cls.read_state(directory)
        return 0 if state is None else int(state["epoch"])

    # -- Keras hooks -------------------------------------------------------------------------

    def on_train_begin(self, logs=None) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        atomic.remove_stale_temporaries(self.directory)
        state = self.read_state(self.directory)
        if state is not None:
            self._restore(state)

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        self.save(epoch + 1)

    # -- saving and restoring ----------------------------------------------------------------

    def _optimizer(self):
        return getattr(self.model, "optimizer", None)

    def _iterations(self) -> int | None:
        optimizer = self._optimizer()
        return None if optimizer is None else int(optimizer.iterations.numpy())

    def save(self, epoch: int) -> None:
        """Writes the state after ``epoch`` completed epochs (weights first, then the pointer)."""
        name = _weights_name(epoch)
        atomic.write_with(self.directory / name,
                          lambda tmp: self.model.save_weights(str(tmp), overwrite=True),
                          suffix=".weights.h5")
        state = {"epoch": epoch, "weights": name, "optimizer_iterations": self._iterations()}
        atomic.write_text(self.directory / STATE_FILE, json.dumps(state, indent=2) + "\n")
        self._remove_old_weights(keep=name)

    def _remove_old_weights(self, keep: str) -> None:
        # Only after state.json names the new file: until then the old one is the checkpoint.
        for p in self.directory.glob("epoch-*.weights.h5"):
            if p.name != keep:
                p.unlink(missing_ok=True)

    def _restore(self, state: dict) -> None:
        path = self.directory / state["weights"]
        if not path.is_file():
            raise CheckpointError(f"checkpoint {self.directory / STATE_FILE} names {path.name}, "
                                  f"which is missing")
        optimizer = self._optimizer()
        if optimizer is not None and not optimizer.built:
            optimizer.build(self.model.trainable_variables)  # so its saved state can load
        try:
            self.model.load_weights(str(path))
        except Exception as e:  # h5py and Keras raise many kinds for a damaged file
            reason = " ".join(str(e).split())[:200]
            raise CheckpointError(f"cannot restore checkpoint {path}: {reason}") from None
        expected = state.get("optimizer_iterations")
        if expected is not None and optimizer is not None and self._iterations() != expected:
            raise CheckpointError(
                f"checkpoint {path} restored the optimizer at step {self._iterations()}, but it "
                f"was saved at step {expected}: the file does not match the model")
        self.model._initial_epoch = int(state["epoch"])


def adopt_keras_backup(directory: str | os.PathLike, backup_dir: str | os.PathLike) -> bool:
    """Turns a Keras ``BackupAndRestore`` folder into an :class:`AtomicCheckpoint` state.

    Run folders written by earlier versions hold ``backup/latest.weights.h5`` and
    ``backup/training_metadata.json``; this copies them into the atomic layout once (the
    optimizer step is then not checked). Returns whether it did.
    """
    directory, backup_dir = Path(directory), Path(backup_dir)
    weights, meta = backup_dir / "latest.weights.h5", backup_dir / "training_metadata.json"
    if (directory / STATE_FILE).exists() or not (weights.is_file() and meta.is_file()):
        return False
    try:
        epoch = int(json.loads(meta.read_text())["epoch"])
    except (OSError, ValueError, KeyError, TypeError):
        return False
    name = _weights_name(epoch)
    atomic.write_with(directory / name, lambda tmp: Path(tmp).write_bytes(weights.read_bytes()))
    state = {"epoch": epoch, "weights": name, "optimizer_iterations": None}
    atomic.write_text(directory / STATE_FILE, json.dumps(state, indent=2) + "\n")
    return True
