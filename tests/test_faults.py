"""Fault injection: interrupted training (Ctrl-C, SIGKILL, a torn checkpoint) always resumes.

Every trial interrupts a short ``tfp-coupling train`` (in a child process for real signals),
then finishes it with ``--resume`` and checks the finished run against an uninterrupted one:
the same epochs, a history with one entry per epoch, and the same optimizer step count (so the
learning-rate schedule did not restart). A few trials run by default; ``-m slow`` runs 20 more
at random points.
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import keras
import numpy as np
import pytest

from tfp_coupling import cli
from tfp_coupling.checkpoint import AtomicCheckpoint, CheckpointError

REPO = Path(__file__).resolve().parents[1]
RUNNER = Path(__file__).with_name("fault_runner.py")
EPOCHS = 3
BATCH = 256
TRAIN_ROWS = 8000  # the toy datasets' training split
STEPS = EPOCHS * math.ceil(TRAIN_ROWS / BATCH)  # optimizer steps of an uninterrupted run
ARGS = ["--dataset", "rings", "--couplings", "2", "--hidden", "8", "--batch-size", str(BATCH),
        "--epochs", str(EPOCHS), "--quiet"]


def _train(out: Path, name: str) -> int:
    return cli.main(["train", "--out", str(out), "--name", name, *ARGS])


def _optimizer_steps(run: Path) -> int:
    model = keras.models.load_model(run / "model.keras")
    return int(model.optimizer.iterations.numpy())


def _check_finished(run: Path) -> None:
    """The run looks exactly like an uninterrupted one (up to the random shuffling)."""
    metrics = json.loads((run / "metrics.json").read_text())
    history = metrics["history"]
    assert history["epoch"] == list(range(1, EPOCHS + 1))
    assert all(len(history[k]) == EPOCHS for k in ("train_nll", "val_nll", "time_s"))
    assert all(map(math.isfinite, history["train_nll"] + history["val_nll"]))
    saved = json.loads((run / "checkpoints" / "history.json").read_text())
    assert [h["epoch"] for h in saved] == history["epoch"]
    assert _optimizer_steps(run) == STEPS
    assert AtomicCheckpoint.completed_epochs(run / "checkpoints") == EPOCHS
    assert not [p.name for p in run.rglob(".*")]  # no temporaries left behind


def _finish(out: Path, name: str) -> None:
    """Completes an interrupted run the way a user would: resume it, or start it if absent."""
    run = out / name
    if (run / "metrics.json").is_file():
        status = 0
    elif run.exists():
        status = cli.main(["train", "--resume", str(run), "--quiet"])
    else:  # interrupted before the run folder was made: nothing was lost, start again
        status = _train(out, name)
    assert status == 0
    _check_finished(run)


# --------------------------------------------------------------------------------------------
# In-process faults


def _drop_optimizer_state(path: str) -> None:
    """Leaves a readable .weights.h5 without the optimizer's variables: a partially written file."""
    with h5py.File(path, "r+") as f:
        if "optimizer" in f:
            del f["optimizer"]


def test_a_checkpoint_torn_while_written_cannot_reset_the_optimizer(tmp_path, monkeypatch):
    real_save = keras.Model.save_weights
    calls = {"n": 0}

    def save_torn_then_interrupt(self, filepath, *args, **kwargs):
        real_save(self, filepath, *args, **kwargs)
        if ".best." in Path(filepath).name:  # the best-epoch weights, not the checkpoint
            return
        calls["n"] += 1
        if calls["n"] == 2:  # the second epoch's checkpoint stops half way
            _drop_optimizer_state(str(filepath))
            raise KeyboardInterrupt

    monkeypatch.setattr(keras.Model, "save_weights", save_torn_then_interrupt)
    assert _train(tmp_path, "r") == 130
    monkeypatch.undo()
    assert AtomicCheckpoint.completed_epochs(tmp_path / "r" / "checkpoints") == 1
    _finish(tmp_path, "r")


def test_a_checkpoint_that_does_not_match_is_an_error_not_a_restart(tmp_path):
    model = keras.Sequential([keras.Input([2]), keras.layers.Dense(1)])
    model.compile(optimizer="adam", loss="mse")
    x = np.zeros((8, 2), np.float32)
    model.fit(x, x[:, :1], epochs=2, verbose=0, callbacks=[AtomicCheckpoint(tmp_path)])
    state = AtomicCheckpoint.read_state(tmp_path)
    assert state["epoch"] == 2 and state["optimizer_iterations"] == 2
    _drop_optimizer_state(str(tmp_path / state["weights"]))
    fresh = keras.Sequential([keras.Input([2]), keras.layers.Dense(1)])
    fresh.compile(optimizer="adam", loss="mse")
    with pytest.raises(CheckpointError, match="restored the optimizer at step 0, but it was "
                                              "saved at step 2"):
        fresh.fit(x, x[:, :1], epochs=3, verbose=0, callbacks=[AtomicCheckpoint(tmp_path)])


def test_leftovers_of_a_killed_finish_are_cleaned_by_the_resume(tmp_path, monkeypatch):
    from tfp_coupling.checkpoint import AtomicCheckpoint as Checkpoint

    real_end = Checkpoint.on_epoch_end

    def stop_after_the_last_epoch(self, epoch, logs=None):
        real_end(self, epoch, logs)
        if epoch + 1 == EPOCHS:
            raise KeyboardInterrupt

    monkeypatch.setattr(Checkpoint, "on_epoch_end", stop_after_the_last_epoch)
    assert _train(tmp_path, "r") == 130
    monkeypatch.undo()
    run = tmp_path / "r"
    # What SIGKILL leaves while the model, the SavedModel and the plots are being written:
    (run / ".saved_model.tmp-abc123").mkdir()
    (run / ".saved_model.tmp-abc123" / "saved_model.pb").write_bytes(b"half")
    (run / ".model.k2j3.keras").write_bytes(b"half")
    (run / ".density.png.tmp-x1.png").write_bytes(b"half")
    (run / "checkpoints" / ".epoch-0004.weights.h5.tmp-q.weights.h5").write_bytes(b"half")
    (run / ".my-notes").write_text("a user's hidden file is not a leftover")
    assert cli.main(["train", "--resume", str(run), "--quiet"]) == 0
    assert sorted(p.name for p in run.rglob(".*")) == [".my-notes"]
    (run / ".my-notes").unlink()
    _check_finished(run)


def test_a_run_folder_of_an_earlier_version_resumes_from_its_keras_backup(tmp_path):
    from tfp_coupling.checkpoint import adopt_keras_backup

    def new_model():
        model = keras.Sequential([keras.Input([2]), keras.layers.Dense(1)])
        model.compile(optimizer="adam", loss="mse")
        return model

    x = np.zeros((8, 2), np.float32)
    backup = tmp_path / "backup"
    new_model().fit(x, x[:, :1], epochs=2, batch_size=4, verbose=0, callbacks=[
        keras.callbacks.BackupAndRestore(str(backup), delete_checkpoint=False)])
    assert adopt_keras_backup(tmp_path, backup)
    assert not adopt_keras_backup(tmp_path, backup)  # once only
    model = new_model()
    history = model.fit(x, x[:, :1], epochs=3, batch_size=4, verbose=0,
                        callbacks=[AtomicCheckpoint(tmp_path)])
    assert len(history.history["loss"]) == 1  # only the third epoch was left
    assert int(model.optimizer.iterations.numpy()) == 6


# --------------------------------------------------------------------------------------------
# Real signals in a child process


def _child_env() -> dict:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "FAULT_REPORT": "1"}
    # The child must import this checkout's tfp_coupling, whatever is installed.
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    return env


def _start(out: Path, name: str, env: dict) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(RUNNER), "train", "--out", str(out), "--name", name, *ARGS],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_training(proc: subprocess.Popen) -> bool:
    """Reads the child's output up to the start of ``fit``; False if it exited first."""
    for line in proc.stdout:
        if line.startswith("fault-runner: training"):
            return True
    return False


@pytest.fixture(scope="module")
def training_seconds(tmp_path_factory) -> float:
    """How long the child's ``fit`` takes uninterrupted (to spread the signals over it)."""
    out = tmp_path_factory.mktemp("reference")
    proc = _start(out, "ref", _child_env())
    assert _wait_for_training(proc)
    start = time.perf_counter()
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-2000:]
    _check_finished(out / "ref")  # the uninterrupted run meets the same checks
    return time.perf_counter() - start


def _interruption_trial(seed: int, out: Path, training_seconds: float) -> str:
    """One random interruption and its resume; returns a description for failure messages."""
    rng = random.Random(seed)
    sig = rng.choice([signal.SIGINT, signal.SIGKILL])
    env = _child_env()
    if rng.random() < 0.5:  # die in the middle of writing a checkpoint
        k = rng.randint(1, EPOCHS)
        env["FAULT_CHECKPOINT"] = f"{k}:{sig.name}"
        what = f"{sig.name} while writing checkpoint {k}"
        proc = _start(out, "t", env)
    else:  # a signal at a random instant of training
        delay = rng.uniform(0.0, training_seconds)
        what = f"{sig.name} {delay:.2f} s into training"
        proc = _start(out, "t", env)
        if _wait_for_training(proc):
            time.sleep(delay)
            proc.send_signal(sig)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode in (0, 130, -signal.SIGKILL, -signal.SIGINT), (what, err[-2000:])
    assert "Traceback" not in err, (what, err[-2000:])
    _finish(out, "t")
    return what


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_interruption_resumes_with_its_optimizer_state(seed, tmp_path,
                                                               training_seconds):
    _interruption_trial(seed, tmp_path, training_seconds)


@pytest.mark.slow
def test_twenty_random_interruptions_lose_nothing(tmp_path, training_seconds):
    done = []
    for seed in range(100, 120):
        done.append(_interruption_trial(seed, tmp_path / str(seed), training_seconds))
    assert len(done) == 20
