"""Crash-safe file writes: a file or folder is either the complete old one or the complete new one.

Every writer here puts its bytes into a temporary sibling (same folder, so the final
``os.replace`` is an atomic rename on one file system), flushes them to disk with ``fsync``,
renames the temporary into place, and fsyncs the folder so that the rename itself survives a
power cut. An interruption (Ctrl-C, SIGKILL, a full disk) at any point leaves at most a stray
temporary file, never a torn target.

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> from tfp_coupling.atomic import write_text
    >>> path = Path(tempfile.mkdtemp()) / "note.txt"
    >>> write_text(path, "hello")
    >>> path.read_text()
    'hello'
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

__all__ = [
    "TEMP_MARKER",
    "default_file_mode",
    "default_folder_mode",
    "fsync_folder",
    "fsync_tree",
    "remove_stale_temporaries",
    "temporary_sibling",
    "temporary_sibling_folder",
    "write_text",
    "write_with",
]

#: Part of the name of every temporary this module creates (``.<name>.tmp-<random>...``).
TEMP_MARKER = ".tmp-"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def default_file_mode() -> int:
    """The permissions a plain ``open(path, "w")`` would give (``mkstemp``'s files are 0600)."""
    return 0o666 & ~_umask()


def default_folder_mode() -> int:
    """The permissions a plain ``os.mkdir`` would give (``mkdtemp``'s folders are 0700)."""
    return 0o777 & ~_umask()


def fsync_folder(folder: str | os.PathLike) -> None:
    """Flushes a folder's entries (a rename in it) to disk; a no-op where folders cannot sync."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems (and Windows) do not sync folders
    finally:
        os.close(fd)


def _fsync_file(path: str | os.PathLike) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def fsync_tree(root: str | os.PathLike) -> None:
    """Flushes every file and folder under ``root`` to disk (before renaming it into place)."""
    for folder, _, files in os.walk(root):
        for name in files:
            _fsync_file(os.path.join(folder, name))
        fsync_folder(folder)


@contextlib.contextmanager
def temporary_sibling(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yields a fresh temporary file name beside ``path``; removes it if still there at the end.

    The file exists (empty, with the permissions of a plain ``open``) so that the name is
    reserved; writers may overwrite it. Names look like ``.<name>.tmp-<random><suffix>``, so
    :func:`remove_stale_temporaries` can find leftovers of a killed process.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}{TEMP_MARKER}", suffix=suffix,
                               dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        os.chmod(tmp, default_file_mode())
        yield tmp
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def temporary_sibling_folder(path: str | os.PathLike) -> Iterator[Path]:
    """Yields a new empty folder beside ``path`` to assemble ``path`` in; removes what is left.

    Rename it to ``path`` once complete: readers then see the whole folder or none of it. Its
    permissions are a plain ``mkdir``'s (``mkdtemp`` would make it private to its owner).
    """
    path = Path(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}{TEMP_MARKER}", dir=path.parent))
    try:
        os.chmod(tmp, default_folder_mode())
        yield tmp
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_with(path: str | os.PathLike, write: Callable[[Path], None], suffix: str = "") -> None:
    """Calls ``write(tmp)`` on a temporary sibling of ``path``, then fsyncs and renames it.

    ``suffix`` is the temporary's file ending, for writers that insist on one (Keras'
    ``save_weights`` wants ``.weights.h5``, ``model.save`` wants ``.keras``).
    """
    path = Path(path)
    with temporary_sibling(path, suffix) as tmp:
        write(tmp)
        _fsync_file(tmp)
        os.replace(tmp, path)
    fsync_folder(path.parent)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Writes ``text`` to ``path`` atomically (see the module docstring)."""
    write_with(path, lambda tmp: Path(tmp).write_text(text))


def remove_stale_temporaries(folder: str | os.PathLike,
                             also: tuple[str, ...] = ()) -> list[Path]:
    """Deletes the temporaries a killed process left in ``folder``; returns what it deleted.

    Only names this package gives its temporaries are touched: hidden entries (files or
    folders) with :data:`TEMP_MARKER` in their name, or matching one of the ``also`` glob
    patterns (for writers that name temporaries their own way).
    """
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for p in folder.iterdir():
        if not p.name.startswith(".") or not (
                TEMP_MARKER in p.name or any(fnmatch.fnmatch(p.name, g) for g in also)):
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        removed.append(p)
    return removed
