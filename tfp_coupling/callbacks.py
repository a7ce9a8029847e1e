"""Keras callbacks for training flows: stop at the first non-finite loss, keep the best epoch,
or keep the start unless the validation rows show the best epoch is better.

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
from collections.abc import Callable
from pathlib import Path

import keras
import numpy as np

from tfp_coupling.atomic import write_text, write_with

__all__ = ["BestOrStart", "BestWeightsCheckpoint", "NonFiniteLossError",
           "StopOnNonFiniteLoss", "gain_beats_noise"]


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


class BestOrStart(keras.callbacks.Callback):
    """Restores the best validation epoch, or the start if the validation rows cannot tell
    the two apart.

    The validation rows are scored before training (epoch 0, the start) and after every
    epoch; ``b`` is the epoch of lowest mean NLL. With ``l_0(x_i)`` and ``l_b(x_i)`` the
    per-row NLLs of the start and of epoch ``b`` on the ``n`` validation rows, ``d_i = l_0 -
    l_b``, the weights of epoch ``b`` are restored when training ends if

        mean_i(d_i) > k * sd_i(d_i) / sqrt(n),

    the gain beating its paired standard error, and the start's otherwise. ``k = 0`` is the
    plain best epoch (``EarlyStopping(restore_best_weights=True)`` with the start counted).

    Why: on a few hundred rows the epoch of lowest validation NLL is partly chosen by the
    noise of the validation rows, and the flow at that epoch can be worse on new rows than
    its start. ``realnvp_flow`` on fewer than 2000 rows starts at the Gaussian fit to the
    training rows, so this keeps the Gaussian fit unless the validation rows show the trained
    flow is better beyond their noise. Where training gains clearly, it is the best epoch.

    Holds two sets of weights in memory (the start and the best so far), for one ``fit`` call.
    ``best_epoch`` is the best epoch, ``chosen_epoch`` the one restored (0: the start).
    :meth:`observe` and :meth:`choose` are the rule without Keras, for another training loop.

    Args:
        validation_data: the validation rows ``x``, or ``(x, context)`` for a conditional flow.
        k: standard errors the gain must exceed.
        patience: stop once this many epochs pass without a new best; ``None`` never stops.
        batch_size: rows scored at a time.

    Example:
        >>> import numpy as np, tfp_coupling as tc
        >>> model = tc.realnvp_flow([2], num_couplings=2, hidden_units=[8])
        >>> model.compile(optimizer="adam")
        >>> x = tc.data.two_moons(512, seed=0)
        >>> rule = tc.callbacks.BestOrStart(x[384:])
        >>> _ = model.fit(x[:384], epochs=3, verbose=0, callbacks=[rule])
        >>> rule.chosen_epoch in (0, rule.best_epoch)
        True
    """

    def __init__(self, validation_data, k: float = 1.0, patience: int | None = None,
                 batch_size: int = 4096) -> None:
        super().__init__()
        if not k >= 0:
            raise ValueError(f"k must be >= 0, got {k}")
        if patience is not None and int(patience) < 1:
            raise ValueError(f"patience must be >= 1 or None, got {patience}")
        if isinstance(validation_data, tuple):
            if len(validation_data) != 2:
                raise ValueError("validation_data must be x or a pair (x, context), got a "
                                 f"tuple of {len(validation_data)}")
            self._x, self._context = validation_data
        else:
            self._x, self._context = validation_data, None
        if len(self._x) < 2:
            raise ValueError(f"BestOrStart needs at least 2 validation rows, got {len(self._x)}")
        self.k, self.batch_size = float(k), int(batch_size)
        self.patience = None if patience is None else int(patience)
        self.reset()

    def _row_nll(self) -> np.ndarray:
        return row_nll(self.model, self._x, self._context, self.batch_size)

    def on_train_begin(self, logs=None) -> None:
        self.reset()
        self.observe(0, self._row_nll(), self.model.get_weights)

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        if not self.observe(epoch + 1, self._row_nll(), self.model.get_weights) and (
                self.patience is not None and epoch + 1 - self.best_epoch >= self.patience):
            self.model.stop_training = True

    def on_train_end(self, logs=None) -> None:
        chosen = self.choose()
        if chosen is not None:  # None: no finite validation NLL at any epoch
            self.model.set_weights(chosen)

    def reset(self) -> None:
        """Forgets every epoch (``on_train_begin`` calls it)."""
        self._start: tuple[np.ndarray, object] | None = None  # (row NLLs, weights)
        self._best: tuple[np.ndarray, object] | None = None
        self.best_epoch = self.chosen_epoch = 0

    def observe(self, epoch: int, row_nll: np.ndarray, weights: Callable[[], object]) -> bool:
        """Records ``epoch``'s per-row validation NLLs (epoch 0 first: the start); whether it
        is the best so far. ``weights()`` is called only for the start and a new best."""
        nll = np.asarray(row_nll, np.float64)
        if epoch == 0:
            self._start = (nll, weights())
        mean = float(nll.mean())
        if math.isfinite(mean) and (self._best is None or mean < self._best[0].mean()):
            self._best = self._start if epoch == 0 else (nll, weights())
            self.best_epoch = epoch
            return True
        return False

    def choose(self):
        """The weights to keep (``None`` if no epoch was finite); sets ``chosen_epoch``."""
        if self._best is None:
            return None
        self.chosen_epoch = self.best_epoch
        if self.best_epoch > 0 and self._start is not None and not gain_beats_noise(
                self._start[0], self._best[0], self.k):
            self.chosen_epoch = 0
        return (self._start if self.chosen_epoch == 0 else self._best)[1]


def row_nll(model, x, context=None, batch_size: int = 4096) -> np.ndarray:
    """``-model.log_prob(x[i], context[i])`` per row, float64, ``batch_size`` rows at a time."""
    parts = [np.asarray(model.log_prob(x[i:i + batch_size],
                                       None if context is None else context[i:i + batch_size]))
             for i in range(0, len(x), batch_size)]
    return -np.concatenate(parts).astype(np.float64)


def gain_beats_noise(start_nll: np.ndarray, best_nll: np.ndarray, k: float = 1.0) -> bool:
    """Whether the per-row NLLs ``best_nll`` are lower than ``start_nll`` (the same rows) by more
    than ``k`` paired standard errors: ``mean(d) > k * sd(d) / sqrt(n)``, ``d = start - best``.

    A start with a non-finite row NLL is always beaten (the best has finite ones).

    Example:
        >>> import numpy as np, tfp_coupling as tc
        >>> start = np.array([1.0, 2.0, 3.0, 4.0])
        >>> tc.callbacks.gain_beats_noise(start, start - [0.5, 0.4, 0.6, 0.5])
        True
        >>> tc.callbacks.gain_beats_noise(start, start - [0.5, -0.4, 0.6, -0.5])
        False
    """
    start_nll, best_nll = (np.asarray(a, np.float64) for a in (start_nll, best_nll))
    if start_nll.shape != best_nll.shape or start_nll.ndim != 1 or len(start_nll) < 2:
        raise ValueError(f"gain_beats_noise needs two [n] arrays, n >= 2, of the same rows; got "
                         f"shapes {start_nll.shape} and {best_nll.shape}")
    if not np.isfinite(start_nll).all():
        return True
    d = start_nll - best_nll
    return bool(d.mean() > k * d.std(ddof=1) / math.sqrt(len(d)))
