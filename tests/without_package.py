"""Child scripts that run where ``tfp_coupling`` and TFP cannot be imported.

The package is installed editable in the test venv, so a child process would find it; the
preamble puts a meta path finder first that makes ``import tfp_coupling`` and
``import tensorflow_probability`` fail, and lists in ``blocked`` the names that did. A SavedModel
loaded after it needs TensorFlow only.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

PREAMBLE = textwrap.dedent("""
    import importlib.abc, json, sys

    BLOCKED = ("tfp_coupling", "tensorflow_probability")

    class _Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{name} is blocked in this process")
            return None

    sys.meta_path.insert(0, _Block())
    blocked = []
    for _name in BLOCKED:
        try:
            __import__(_name)
        except ImportError:
            blocked.append(_name)
""")


def run_child(script: str, folder, *args) -> subprocess.CompletedProcess:
    """Runs ``PREAMBLE``-led ``script`` with ``args`` in an isolated interpreter in ``folder``
    (no ``PYTHONPATH``, ``-I``); asserts it exited cleanly and returns it."""
    path = Path(folder) / "child.py"
    path.write_text(script)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-I", str(path), *map(str, args)], cwd=folder,
                          env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc
