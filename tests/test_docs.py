"""Docstring examples stay runnable (doctest of every tfp_coupling module), and so does the
README's "bijectors with plain TFP" example."""

from __future__ import annotations

import contextlib
import doctest
import importlib
import io
import pkgutil
import re
from pathlib import Path

import numpy as np
import pytest

import tfp_coupling

README = Path(__file__).resolve().parents[1] / "README.md"


def _modules() -> list[str]:
    names = [tfp_coupling.__name__]
    for info in pkgutil.walk_packages(tfp_coupling.__path__, prefix=f"{tfp_coupling.__name__}."):
        if info.name.split(".")[-1] != "__main__":  # running it would start the CLI
            names.append(info.name)
    return sorted(names)


@pytest.mark.parametrize("name", _modules())
def test_doctests(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE,
                             verbose=False, report=True)
    assert result.failed == 0, f"{result.failed} of {result.attempted} doctest(s) failed in {name}"


def readme_python_block(heading: str, index: int = 0) -> str:
    """The ``index``-th ```python block after the markdown heading ``heading``."""
    text = README.read_text(encoding="utf-8")
    match = re.search(rf"^#+ {re.escape(heading)}\s*$", text, flags=re.MULTILINE)
    assert match, f"README.md has no heading {heading!r}"
    blocks = re.findall(r"```python\n(.*?)```", text[match.end():], flags=re.DOTALL)
    assert len(blocks) > index, f"README.md has no python block {index} after {heading!r}"
    return blocks[index]


def test_readme_plain_tfp_example_runs():
    code = readme_python_block("The bijectors with plain TFP")
    namespace: dict = {}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, str(README), "exec"), namespace)
    x, flow, dist = namespace["x"], namespace["flow"], namespace["dist"]
    assert tuple(x.shape) == (8, 4)
    log_p = dist.log_prob(x).numpy()
    assert log_p.shape == (8,) and np.isfinite(log_p).all()
    np.testing.assert_allclose(flow.inverse(flow.forward(x)).numpy(), x.numpy(), atol=1e-5)
    assert out.getvalue().strip(), "the example prints log_prob and the ildj"


def test_readme_plain_tf_training_step_moves_every_weight():
    namespace: dict = {}
    with contextlib.redirect_stdout(io.StringIO()):
        exec(compile(readme_python_block("The bijectors with plain TFP"), str(README), "exec"),
             namespace)
    variables = namespace["dist"].trainable_variables
    assert len(variables) == 1 + 6  # the rescaling's scale; the MLP's 3 kernels and biases
    before = [v.numpy().copy() for v in variables]
    exec(compile(readme_python_block("The bijectors with plain TFP", 1), str(README), "exec"),
         namespace)
    assert all(g is not None for g in namespace["grads"])
    # The MLP's output layer starts at zero (so hidden layers get zero gradient at step one);
    # the output layer and the scale move.
    moved = [not np.array_equal(b, v.numpy()) for b, v in zip(before, variables, strict=True)]
    assert sum(moved) >= 3, moved


def test_readme_conditional_example_runs():
    namespace: dict = {}
    exec(compile("import tfp_coupling as tc\n" + readme_python_block("Conditional flows, splines"),
                 str(README), "exec"), namespace)
    model, x, c = namespace["model"], namespace["x"], namespace["c"]
    assert model.context_shape == (1,)
    assert model.sample(7, context=[1.0], seed=0).shape == (7, 2)
    # After five epochs the right moon already explains a point better than the wrong one.
    right = np.mean(model.log_prob(x[:500], c[:500]))
    assert right > np.mean(model.log_prob(x[:500], 1.0 - c[:500])) + 0.5


@pytest.mark.parametrize("path", sorted((README.parent / "examples").glob("*.py")),
                         ids=lambda p: p.name)
def test_example_docstrings_name_only_options_that_exist(path):
    import ast

    source = path.read_text(encoding="utf-8")
    doc = ast.get_docstring(ast.parse(source)) or ""
    named = set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", doc))
    defined = set(re.findall(r"add_argument\(\s*\"(--[a-z][a-z0-9-]*)\"", source))
    assert named <= defined, f"{path.name} names options it does not define: {named - defined}"


def test_readme_quick_start_runs():
    """The quick start, with 2 epochs instead of 50: fit with early stopping on val_nll, then
    log_prob and sample."""
    code = readme_python_block("Quick start").replace("epochs=50", "epochs=2")
    assert "epochs=2" in code
    namespace: dict = {}
    with contextlib.redirect_stdout(io.StringIO()):
        exec(compile(code, str(README), "exec"), namespace)
    assert tuple(namespace["log_p"].shape) == (5,)
    assert tuple(namespace["samples"].shape) == (1000, 2)
    assert np.isfinite(namespace["samples"]).all()
