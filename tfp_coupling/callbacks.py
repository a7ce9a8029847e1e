"""Keras callbacks for training flows: stop at the first non-finite loss, keep the best epoch.

``FlowModel.fit`` adds :class:`StopOnNonFiniteLoss` to its callbacks unless one (or Keras's
``TerminateOnNaN``) is already there. To resume an interrupted run, Keras's own
``keras.callbacks.BackupAndRestore(backup_dir)`` works with ``FlowModel`` as is: it restores the
weights, the optimizer state and the epoch counter, and a rerun of the same ``fit`` call
continues where the last completed epoch left off. It writes its file in place, though: for
checkpoints that a kill during the write cannot tear, use
:class:`tfp_coupling.checkpoint.AtomicCheckpoint` the same way.

Example:
    >>> import tempfile, keras, numpy as np, tfp_coupling as tc
    >>> model = tc.nice_flow(event_shape=[2], num_couplings=2, hidden_units=[8])
    >>> model.compile(optimizer="adam")
    >>> x = tc.data.two_moons(256, seed=0)
    >>> backup = keras.callbacks.BackupAndRestore(tempfile.mkdtemp())
    >>> history = model.fit(x, batch_size=64, epochs=2, callbacks=[backup], verbose=0)
    >>> sorted(history.history)
    ['loss', 'nll']
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import keras

from tfp_coupling.atomic import write_text, write_with

__all__ = ["BestWeightsCheckpoint", "NonFiniteLossError", "StopOnNonFiniteLoss"]


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or Inf; the message says at which epoch and batch."""


class StopOnNonFiniteLoss(keras.callbacks.Callback):
    """Stops ``fit`` at the first batch whose loss is NaN or Inf and says which batch it was.

    The check reads ``logs["loss"]`` after every training batch (the running mean of the epoch,
    which turns non-finite at the first bad batch). With ``raise_error=True`` (the default) it
    raises :class:`NonFiniteLossError`; ``fit`` then ends before ``on_epoch_end``, so
    ``ModelCheckpoint`` and ``BackupAndRestore`` never write the broken weights over the last good
    checkpoint. With ``raise_error=False`` it sets ``model.stop_training``, prints the message and
    keeps it in ``self.message`` (the epoch still ends normally, like ``TerminateOnNaN``).

    The callback also records where training is (``epoch``, ``batch``, ``phase``), which
    ``FlowModel`` uses to name the batch in its "data contains NaN or Inf" errors.

    Args:
        raise_error: raise :class:`NonFiniteLossError` instead of only stopping.

    Example:
        >>> import keras, numpy as np, tfp_coupling as tc
        >>> model = tc.nice_flow(event_shape=[2], num_couplings=2, hidden_units=[8])
        >>> model.compile(optimizer=keras.optimizers.SGD(1e30))  # diverges at once
        >>> cb = tc.callbacks.StopOnNonFiniteLoss(raise_error=False)
        >>> x = np.random.default_rng(0).normal(size=(256, 2)).astype("float32")
        >>> history = model.fit(x, batch_size=32, epochs=3, callbacks=[cb], verbose=0)
        nice: non-finite loss (...) at training batch index ... of epoch 1; training stopped. ...
        >>> len(history.history["loss"]), cb.message.startswith("nice: non-finite loss")
        (1, True)
    """

    def __init__(self, raise_error: bool = True) -> None:
        super().__init__()
        self.raise_error = bool(raise_error)
        self.message: str | None = None
        self.epoch = 0
        self.batch: int | None = None
        self.phase = "evaluation"
        self._fitting = False

    def on_train_begin(self, logs=None) -> None:
        self.message = None
        self._fitting = True

    def on_train_end(self, logs=None) -> None:
        self._fitting = False

    def on_epoch_begin(self, epoch: int, logs=None) -> None:
        self.epoch, self.batch, self.phase = epoch, None, "training"

    def on_train_batch_begin(self, batch: int, logs=None) -> None:
        self.batch, self.phase = batch, "training"

    def on_test_begin(self, logs=None) -> None:
        self.batch = None
        self.phase = "validation" if self._fitting else "evaluation"

    def on_test_batch_begin(self, batch: int, logs=None) -> None:
        self.batch = batch

    def on_test_end(self, logs=None) -> None:
        if self.phase == "validation":
            self.phase = "training"

    def where(self) -> str:
        """Where training is, e.g. ``"training batch index 3 of epoch 2"`` (epochs from 1)."""
        batch = "?" if self.batch is None else self.batch
        if self.phase == "evaluation":
            return f"evaluation batch index {batch}"
        return f"{self.phase} batch index {batch} of epoch {self.epoch + 1}"

    def on_train_batch_end(self, batch: int, logs=None) -> None:
        loss = (logs or {}).get("loss")
        if loss is None:
            return
        loss = float(loss)
        if math.isfinite(loss):
            return
        name = getattr(self.model, "name", "model")
        self.message = (
            f"{name}: non-finite loss ({loss}) at training batch index {batch} of epoch "
            f"{self.epoch + 1}; training stopped. The weights in memory may now be NaN (the last "
            f"checkpoint is untouched). Check the data for NaN/Inf and extreme values, or lower "
            f"the learning rate."
        )
        self.model.stop_training = True
        if self.raise_error:
            raise NonFiniteLossError(self.message)
        print(self.message)


class BestWeightsCheckpoint(keras.callbacks.Callback):
    """Saves the weights of the best validation epoch to a file, and stops early.

    After every epoch whose ``monitor`` (``val_nll`` by default) is lower than every earlier one,
    the weights go to ``path`` (a ``.weights.h5`` file) and ``{"epoch", "value"}`` to
    ``path + ".json"``, each written to a temporary file and renamed into place, so an
    interruption never leaves a torn file. With ``patience`` set, training stops once that many
    epochs have passed without an improvement. The state is read back from the ``.json`` file
    when the callback is made, so a resumed run continues counting where it stopped.

    Unlike ``keras.callbacks.EarlyStopping(restore_best_weights=True)`` (the in-memory way, for
    a single ``fit`` call), the best weights survive an interruption; load them with
    ``model.load_weights(path)`` after ``fit``.

    Args:
        path: weights file, ending in ``.weights.h5``.
        monitor: the log to minimise.
        patience: epochs without improvement before stopping; ``None`` never stops.

    Example:
        >>> import tempfile, numpy as np, tfp_coupling as tc
        >>> model = tc.realnvp_flow([2], num_couplings=2, hidden_units=[8])
        >>> model.compile(optimizer="adam")
        >>> x = tc.data.two_moons(512, seed=0)
        >>> best = tc.callbacks.BestWeightsCheckpoint(tempfile.mkdtemp() + "/best.weights.h5")
        >>> _ = model.fit(x[:384], validation_data=(x[384:],), epochs=3, verbose=0,
        ...               callbacks=[best])
        >>> model.load_weights(best.path); best.best_epoch in (1, 2, 3)
        True
    """

    def __init__(self, path: str | os.PathLike, monitor: str = "val_nll",
                 patience: int | None = None) -> None:
        super().__init__()
        self.path = Path(path)
        if not self.path.name.endswith(".weights.h5"):
            raise ValueError(f"path must end in .weights.h5, got {self.path}")
        if patience is not None and int(patience) < 1:
            raise ValueError(f"patience must be >= 1 or None, got {patience}")
        self.monitor = monitor
        self.patience = None if patience is None else int(patience)
        self.state_path = self.path.with_name(self.path.name + ".json")
        self.best_value, self.best_epoch = math.inf, 0
        if self.state_path.is_file() and self.path.is_file():
            state = json.loads(self.state_path.read_text())
            self.best_value, self.best_epoch = float(state["value"]), int(state["epoch"])

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        value = (logs or {}).get(self.monitor)
        if value is None:
            raise KeyError(f"BestWeightsCheckpoint monitors {self.monitor!r}, which fit did not "
                           f"log (logs: {sorted(logs or {})}); pass validation_data to fit")
        value = float(value)
        if value < self.best_value:  # NaN never improves
            self.best_value, self.best_epoch = value, epoch + 1
            self._save()
        elif self.patience is not None and epoch + 1 - self.best_epoch >= self.patience:
            self.model.stop_training = True

    def _save(self) -> None:
        write_with(self.path, lambda tmp: self.model.save_weights(tmp, overwrite=True),
                   suffix=".weights.h5")
        write_text(self.state_path, json.dumps({"epoch": self.best_epoch,
                                                "value": self.best_value}))
