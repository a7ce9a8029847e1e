"""How the command line turns any failure into one readable line, and keeps TensorFlow quiet.

Nothing here imports TensorFlow: it runs before TensorFlow is loaded (or when it never is).

Example:
    >>> from tfp_coupling.errors import one_line_message
    >>> one_line_message(OSError(28, "No space left on device", "/runs/r/model.keras"))
    'No space left on device: /runs/r/model.keras'
"""

from __future__ import annotations

import os
import re
import sys
import tempfile

__all__ = ["import_tensorflow_quietly", "one_line_message", "quiet_tensorflow_startup"]

#: Errors whose text is written for the user (by this package or by the OS): shown as is.
_USER_FACING = (ValueError, TypeError, OSError, EOFError, FloatingPointError, ImportError,
                RuntimeError)
_MAX_LENGTH = 600


def _squash(text: str) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= _MAX_LENGTH else text[:_MAX_LENGTH - 3] + "..."


def _os_error_text(e: OSError) -> str:
    if not e.strerror:
        return str(e)
    names = [n for n in (e.filename, e.filename2) if n is not None]
    return ": ".join([e.strerror, *map(str, names)])


def one_line_message(e: BaseException, expected: tuple[type[BaseException], ...] = ()) -> str:
    """``e`` as one line for ``tfp-coupling: error: ...``.

    Errors of the ``expected`` types and the usual user-facing kinds (bad values, files, disk
    full, diverged training, a missing package) give their own text; TensorFlow errors give
    their message without the op trace; anything else is named by type, as a likely bug.
    """
    if isinstance(e, OSError) and not isinstance(e, expected):
        return _squash(_os_error_text(e))
    if type(e).__module__.startswith("tensorflow"):  # tf.errors.*: message without the op dump
        message = getattr(e, "message", None) or str(e)
        return _squash(message.split("\n\n")[0])
    if isinstance(e, (*expected, *_USER_FACING)):
        return _squash(str(e)) or type(e).__name__
    return _squash(f"unexpected {type(e).__name__}: {e} (please report it; set "
                   f"TFP_COUPLING_TRACEBACK=1 to see the traceback)")


def quiet_tensorflow_startup() -> None:
    """Silences TensorFlow's start-up log lines (oneDNN, CUDA, absl) unless the user chose.

    Must run before TensorFlow is imported: its C++ logging reads the variable once. Errors
    that matter reach the user as exceptions, which the command line reports itself.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


# absl/glog lines ("I0000 00:00:17... port.cc:153] oneDNN custom operations ...", severity I, W,
# E or F first) and absl's notice that it logs before being initialised. TensorFlow 2.16+ writes
# these from C++ before TF_CPP_MIN_LOG_LEVEL is read, so no environment variable silences them.
_GLOG_LINE = re.compile(r"^([IWEF])\d{4} [\d:.]+\s+\d+ \S+:\d+\] ")
_ABSL_NOTICE = "WARNING: All log messages before absl::InitializeLog() is called"
_SEVERITY = "IWEF"


def _drop_startup_noise(lines: list[str], min_level: int) -> list[str]:
    """The lines of a log below ``TF_CPP_MIN_LOG_LEVEL`` removed (with their continuations)."""
    shown, dropping = [], False
    for line in lines:
        match = _GLOG_LINE.match(line)
        if match:
            dropping = _SEVERITY.index(match.group(1)) < min_level
        elif line.startswith(_ABSL_NOTICE):
            dropping = min_level > 0
        # Other lines continue the entry above them (a multi-line message) or are not logs.
        if not dropping:
            shown.append(line)
    return shown


def import_tensorflow_quietly() -> None:
    """Imports TensorFlow, Keras and TFP and finds the devices, without their start-up logs.

    The process's stderr (file descriptor 2, where C++ writes) goes to a temporary file
    meanwhile; afterwards the lines at or above ``TF_CPP_MIN_LOG_LEVEL`` (3, FATAL only, unless
    the user set it) and anything that is not a log line are written to stderr again.
    """
    if "tensorflow" in sys.modules:
        return
    quiet_tensorflow_startup()
    try:
        min_level = int(os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0"))
    except ValueError:
        min_level = 0
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as log:
        os.dup2(log.fileno(), 2)
        try:
            import keras  # noqa: F401
            import tensorflow as tf
            import tensorflow_probability  # noqa: F401

            tf.config.list_physical_devices()  # CUDA's "failed call to cuInit" on CPU machines
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            log.seek(0)
            lines = log.read().decode(errors="replace").splitlines()
            shown = _drop_startup_noise(lines, min_level)
            if shown:
                print("\n".join(shown), file=sys.stderr)
