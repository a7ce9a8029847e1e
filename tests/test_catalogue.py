"""The bad-input catalogue: every bad input gets its own one-line message, never a traceback.

Each row of ``CLI_ROWS`` is a command line and the exact message it must print on stderr as the
single line ``tfp-coupling: error: <message>``, exiting with status 1 (or argparse's usage error,
status 2, whose last line is the message). ``API_ROWS`` do the same for the Python API's
exceptions; the SavedModel endpoints' checks are in ``test_export.py``. A few rows also run as a
real ``python -m tfp_coupling`` with TensorFlow's default logging, to check that no TensorFlow
log line and no traceback reaches the terminal.
"""

from __future__ import annotations

import errno
import gzip
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tfp_coupling import cli, data
from tfp_coupling.cli import commands

REPO = Path(__file__).resolve().parents[1]
TINY = ["--couplings", "2", "--hidden", "8", "--quiet"]


class Prefix(str):
    """An expected message whose tail comes from a library (e.g. zipfile's wording)."""


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """Bad inputs on disk, and one finished run (``run``) with damaged copies of it."""
    tmp = tmp_path_factory.mktemp("catalogue")
    rng = np.random.default_rng(0)
    (tmp / "nan.csv").write_text("a,b\n" + "1,2\n" * 2 + "3,nan\n" + "4,5\n" * 20)
    (tmp / "text.csv").write_text("1,2\n3,4\n5,x\n" + "1,2\n" * 20)
    (tmp / "few.csv").write_text("1,2\n3,4\n5,6\n")
    (tmp / "one.csv").write_text("".join(f"{v}\n" for v in rng.normal(size=30)))
    np.save(tmp / "flat.npy", np.stack([rng.normal(size=50),
                                        np.where(rng.random(50) < 0.5, 0.1 + 0.2, 0.3)], 1))
    np.savetxt(tmp / "big.csv", np.full((20, 2), 1e39), delimiter=",")
    (tmp / "d.csv").mkdir()
    (tmp / "file.txt").write_text("not a folder")
    (tmp / "taken.npy").write_bytes(b"a user's file")
    for folder, content in (("garbage", b"garbage, not gzip"),
                            ("cut", gzip.compress(rng.bytes(4000))[:2000])):
        (tmp / folder).mkdir()
        (tmp / folder / "t10k-images-idx3-ubyte.gz").write_bytes(content)

    runs = tmp / "runs"
    assert cli.main(["train", "--out", str(runs), "--name", "run", "--epochs", "1", *TINY]) == 0
    run = runs / "run"
    model = (run / "model.keras").read_bytes()
    for name, damage in (("damaged", b"not a zip file"), ("truncated", model[:len(model) // 2])):
        copy = runs / name
        copy.mkdir()
        for f in ("config.json", "metrics.json"):
            (copy / f).write_bytes((run / f).read_bytes())
        (copy / "model.keras").write_bytes(damage)
    unfinished = runs / "unfinished"
    unfinished.mkdir()
    (unfinished / "config.json").write_bytes((run / "config.json").read_bytes())
    return {"tmp": tmp, "run": run, "runs": runs}


DATASET_LIST = ", ".join(data.DATASETS)
CLI_ROWS = [
    # train: data
    (["train", "--dataset", "nope"],
     f"unknown dataset 'nope': choose from {DATASET_LIST}, or give the path of a .npy or .csv "
     f"file", 1),
    (["train", "--dataset", "{tmp}/missing.csv"], "data file not found: {tmp}/missing.csv", 1),
    (["train", "--dataset", "{tmp}/d.csv"],
     "{tmp}/d.csv is a folder; give the path of a .npy or .csv file", 1),
    (["train", "--dataset", "{tmp}/nan.csv"],
     "{tmp}/nan.csv: 1 NaN/inf value(s), first at data row 3, column 2", 1),
    (["train", "--dataset", "{tmp}/text.csv"],
     "{tmp}/text.csv: line 3, column 2: 'x' is not a number", 1),
    (["train", "--dataset", "{tmp}/few.csv"],
     "{tmp}/few.csv: 3 rows; need at least 10 to split into train, validation and test", 1),
    (["train", "--dataset", "{tmp}/one.csv"],
     "{tmp}/one.csv: examples have 1 value(s); a coupling flow needs at least 2 (it transforms "
     "one part of each example given the other)", 1),
    (["train", "--dataset", "{tmp}/flat.npy"],
     "{tmp}/flat.npy: column(s) 2 are constant in the training split (up to rounding error); "
     "drop them (a density needs every column to vary)", 1),
    (["train", "--dataset", "mnist", "--data-dir", "{tmp}/garbage"],
     "{tmp}/garbage/t10k-images-idx3-ubyte.gz: not a complete gzip file (BadGzipFile: Not a "
     "gzipped file (b'ga')); download it again", 1),
    (["train", "--dataset", "mnist", "--data-dir", "{tmp}/cut"],
     "{tmp}/cut/t10k-images-idx3-ubyte.gz: not a complete gzip file (EOFError: Compressed file "
     "ended before the end-of-stream marker was reached); download it again", 1),
    (["train", "--dataset", "mnist", "--data-dir", "{tmp}/absent"],
     "data folder not found: {tmp}/absent", 1),
    # train: options
    (["train", "--hidden", "8,,8"],
     "--hidden must be comma-separated positive integers like 64,64; got '8,,8'", 1),
    (["train", "--epochs", "0"], "--epochs must be >= 1, got 0", 1),
    (["train", "--lr", "-1"], "--lr must be a positive number, got -1.0", 1),
    (["train", "--model", "glow"],
     "unknown model 'glow'; choose from nice, realnvp, realnvp-image, nice-image", 1),
    (["train", "--epochs", "many"],
     "tfp-coupling train: error: argument --epochs: invalid int value: 'many'", 2),
    (["train", "--resume", "{tmp}/absent"], "run folder not found: {tmp}/absent", 1),
    (["train", "--resume", "{run}", "--lr", "0.5"],
     "--resume continues {run} with its saved settings; it cannot change --lr (start a new run "
     "instead)", 1),
    (["train", "--out", "{tmp}/file.txt/runs"],
     "output folder {tmp}/file.txt/runs is not writable: Not a directory", 1),
    (["train", "--out", "{runs}", "--name", "run"],
     "run folder {run} already exists (complete); choose another --name or continue it with "
     "--resume {run}", 1),
    # evaluate
    (["evaluate", "{tmp}/d.csv"], "{tmp}/d.csv is not a run folder (no config.json)", 1),
    (["evaluate", "{runs}/unfinished"],
     "run {runs}/unfinished is unfinished (no metrics.json); complete it with tfp-coupling "
     "train --resume {runs}/unfinished", 1),
    (["evaluate", "{runs}/damaged"],
     Prefix("cannot load {runs}/damaged/model.keras: the file is damaged or not a Keras model "
            "("), 1),
    (["evaluate", "{runs}/truncated"],
     Prefix("cannot load {runs}/truncated/model.keras: the file is damaged or not a Keras model "
            "("), 1),
    (["evaluate", "{run}", "--dataset", "{tmp}/big.csv"],
     "{tmp}/big.csv: value 1e+39 (train split, column 1) is beyond float32's range (3.4e38) in "
     "the model's units (float32 overflow); rescale that column", 1),
    (["evaluate", "{run}", "--split", "nope"],
     "tfp-coupling evaluate: error: argument --split: invalid choice: 'nope' (choose from "
     "'train', 'validation', 'test', 'all')", 2),
    # sample
    (["sample", "{run}", "-n", "0"], "-n must be >= 1, got 0", 1),
    (["sample", "{run}", "--temperature", "nan"],
     "--temperature must be a finite number > 0, got nan", 1),
    (["sample", "{run}", "--out", "{tmp}/s.txt"], "--out must end in .npy, got {tmp}/s.txt", 1),
    (["sample", "{run}", "--out", "{tmp}/taken.npy"],
     "{tmp}/taken.npy already exists; pass --overwrite to replace {tmp}/taken.npy", 1),
    (["sample", "{run}", "--out", "{tmp}/absent/s.npy"],
     "output folder not found: {tmp}/absent", 1),
    # export
    (["export", "{run}", "--out", "{run}"],
     "--out {run} is a folder holding other files (not a SavedModel); exporting there would "
     "delete them: choose a new or empty folder", 1),
    (["export", "{run}", "--out", "{tmp}/file.txt"],
     "--out {tmp}/file.txt is a file; give a folder for the SavedModel", 1),
]


def _fill(text: str, files: dict[str, Path]) -> str:
    return text.format(**{k: str(v) for k, v in files.items()})


def _check_stderr(err: str, expected: str, status: int) -> None:
    lines = err.strip().splitlines()
    assert "Traceback" not in err, err
    if status == 2:  # argparse: usage lines, then the message
        assert lines[0].startswith("usage: tfp-coupling") and lines[-1] == expected, err
        return
    assert len(lines) == 1, err
    line = lines[0].removeprefix("tfp-coupling: error: ")
    assert line != lines[0], err
    if isinstance(expected, Prefix):
        assert line.startswith(expected), err
    else:
        assert line == expected, err


@pytest.mark.parametrize("args, expected, status", CLI_ROWS,
                         ids=[" ".join(r[0]) for r in CLI_ROWS])
def test_cli_catalogue(args, expected, status, files, capsys):
    args = [_fill(a, files) for a in args]
    if args[0] == "train" and "--resume" not in args:
        args += ["--name", "x"] if "--name" not in args else []
        args += ["--out", str(files["tmp"] / "out")] if "--out" not in args else []
    taken = (files["tmp"] / "taken.npy").read_bytes()
    capsys.readouterr()
    try:
        code = cli.main(args)
    except SystemExit as e:
        code = e.code
    expected = type(expected)(_fill(expected, files))
    assert code == status
    _check_stderr(capsys.readouterr().err, expected, status)
    assert not (files["tmp"] / "out" / "x").exists()  # no half-made run folder
    assert (files["tmp"] / "taken.npy").read_bytes() == taken


def test_a_diverging_run_is_one_line(files, capsys):
    args = ["train", "--out", str(files["tmp"] / "out"), "--name", "x", *TINY, "--epochs", "2",
            "--lr", "1e30", "--clipnorm", "0", "--schedule", "constant"]
    capsys.readouterr()
    assert cli.main(args) == 1
    _check_stderr(capsys.readouterr().err, Prefix("realnvp: non-finite loss ("), 1)
    assert not (files["tmp"] / "out" / "x").exists()


def test_a_full_disk_is_one_line(files, capsys, monkeypatch):
    from tfp_coupling.checkpoint import AtomicCheckpoint

    target = files["tmp"] / "out" / "x" / "checkpoints" / "epoch-0001.weights.h5"

    def full_disk(self, epoch):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(target))

    monkeypatch.setattr(AtomicCheckpoint, "save", full_disk)
    capsys.readouterr()
    assert cli.main(["train", "--out", str(files["tmp"] / "out"), "--name", "x", *TINY,
                     "--epochs", "1"]) == 1
    _check_stderr(capsys.readouterr().err, f"No space left on device: {target}", 1)


def test_an_unexpected_error_is_one_line_that_says_how_to_see_more(files, capsys,
                                                                    monkeypatch):
    def bug(args):
        raise KeyError("oops")

    monkeypatch.setattr(commands, "evaluate", bug)  # build_parser binds it when main runs
    assert cli.main(["evaluate", str(files["run"])]) == 1
    _check_stderr(capsys.readouterr().err,
                  "unexpected KeyError: 'oops' (please report it; set TFP_COUPLING_TRACEBACK=1 "
                  "to see the traceback)", 1)


def _python_dash_m(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}  # TF's default
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    return subprocess.run([sys.executable, "-m", "tfp_coupling", *args], capture_output=True,
                          text=True, timeout=300, env=env)


@pytest.mark.parametrize("row", [3, 22, 24], ids=lambda i: " ".join(CLI_ROWS[i][0]))
def test_the_terminal_shows_only_the_message(row, files):
    """Rows that fail before and after TensorFlow loads, in a real process with default logs."""
    args, expected, status = CLI_ROWS[row]
    proc = _python_dash_m(*[_fill(a, files) for a in args])
    assert proc.returncode == status
    _check_stderr(proc.stderr, type(expected)(_fill(expected, files)), status)
    assert proc.stdout == ""


# --------------------------------------------------------------------------------------------
# The Python API


def _api_rows():
    import tfp_coupling as tc

    model = tc.realnvp_flow(event_shape=[2], num_couplings=2, hidden_units=[8])
    return [
        (lambda: model.sample(2.5), ValueError, "n must be a whole number >= 0, got 2.5"),
        (lambda: model.sample(-1), ValueError, "n must be a whole number >= 0, got -1"),
        (lambda: model.sample(3, temperature=-1.0), ValueError,
         "realnvp: temperature must be a finite number >= 0, got -1.0"),
        (lambda: model.sample(3, temperature=float("nan")), ValueError,
         "realnvp: temperature must be a finite number >= 0, got nan"),
        (lambda: tc.realnvp_flow(event_shape=[2.5], num_couplings=2, hidden_units=[8]),
         ValueError, "event_shape entries must be a whole number >= 1, got 2.5"),
        (lambda: model.log_prob(np.array([[1e39, 0.0]])), ValueError,
         "realnvp: data value 1e+39 at index [0, 0] is beyond the range of float32 (max "
         "3.4e+38): it would overflow to Inf; rescale the data"),
        (lambda: model.log_prob(np.array([[np.nan, 0.0]], np.float32)), ValueError,
         "realnvp: data contains 1 NaN or Inf value(s), first at index [0, 0]; remove or "
         "replace them before computing log_prob"),
    ]


def test_api_catalogue():
    for call, kind, message in _api_rows():
        with pytest.raises(kind, match=f"^{re.escape(message)}$"):
            call()


def test_api_export_never_replaces_other_files(tmp_path):
    import tfp_coupling as tc

    model = tc.nice_flow(event_shape=[2], num_couplings=2, hidden_units=[8])
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(FileExistsError, match=re.escape(
            f"cannot export to '{tmp_path / 'mine'}': the folder holds files that are not a "
            f"SavedModel, which the export would delete; choose a new or empty folder")):
        model.export(tmp_path / "mine", overwrite=True)
