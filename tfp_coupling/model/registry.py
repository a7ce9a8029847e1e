"""Flow builders by name: how a saved ``FlowModel`` is rebuilt from its config.

A ``.keras`` file of a flow stores the name of the builder that made it and that builder's
arguments (``flow_config``); loading calls the builder again with them. The built-in builders are
listed here by module, and that module is imported when a name is first looked up: the registry
sits below the model that looks names up in it, and below the builders, which import the model.
Nothing registers itself on import; a user's own builder is added with :func:`register_builder`.

Example:
    >>> from tfp_coupling.model import registry
    >>> registry.get_builder("realnvp_flow").__name__
    'realnvp_flow'
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Iterable, Mapping
from typing import Any

__all__ = ["builder_config", "config_with_defaults", "get_builder", "register_builder"]

# name -> module defining a function of that name.
_BUILT_IN = {
    "nice_flow": "tfp_coupling.builders.vector",
    "realnvp_flow": "tfp_coupling.builders.vector",
    "spline_flow": "tfp_coupling.builders.vector",
    "nice_image_flow": "tfp_coupling.builders.image",
    "realnvp_image_flow": "tfp_coupling.builders.image",
    "realnvp_flat_image_flow": "tfp_coupling.builders.image",
}
_REGISTERED: dict[str, Callable] = {}

# Values of builder arguments added after flows were first saved: a config without the key was
# written by a version that built the flow this way, and must rebuild the same layers to load.
_CONFIG_BEFORE = {
    "nice_flow": {"whiten": False, "zero_init": True, "sine_scale": None, "mixing": None},
    "realnvp_flow": {"whiten": False, "normalizing": False, "shift_clamp": None,
                     "zero_init": True, "activation": "relu", "sine_scale": None,
                     "small_data_sines": True},
    "realnvp_image_flow": {"scale_residuals": False, "normalizing": False, "shift_clamp": None},
    "realnvp_flat_image_flow": {"normalizing": False, "shift_clamp": None},
}


def register_builder(name: str, builder: Callable) -> None:
    """Registers a builder so that ``.keras`` files of flows it made can be loaded."""
    _REGISTERED[name] = builder


def get_builder(name: str) -> Callable:
    """The builder registered under ``name`` (``"nice_flow"``, ``"realnvp_flow"``, ...)."""
    if name in _REGISTERED:
        return _REGISTERED[name]
    if name in _BUILT_IN:
        return getattr(importlib.import_module(_BUILT_IN[name]), name)
    known = sorted({*_BUILT_IN, *_REGISTERED})
    raise ValueError(f"unknown flow builder {name!r}; known: {known}")


def config_with_defaults(builder: str, config: Mapping[str, Any]) -> dict:
    """A saved builder config completed with the values of arguments it predates."""
    return {**_CONFIG_BEFORE.get(builder, {}), **config}


def builder_config(builder: Callable, arguments: Mapping[str, Any]) -> dict:
    """``{"builder": name, **arguments}``: the config that makes ``builder`` build the flow again.

    ``arguments`` are the builder's own (``locals()`` at its start): every parameter of its
    signature but ``name`` is recorded, sequences (lists, tuples, arrays, ``TensorShape``) as
    lists of Python numbers and ``dtype`` by its name, so that the config is JSON and has one
    key per argument by construction.
    """
    config: dict[str, Any] = {"builder": builder.__name__}
    for key in inspect.signature(builder).parameters:
        if key == "name":
            continue
        value = arguments[key]
        if key == "dtype":
            value = getattr(value, "name", value)
        elif isinstance(value, Iterable) and not isinstance(value, str | bytes | Mapping):
            value = [v.item() if hasattr(v, "item") else v for v in value]
        config[key] = value
    return config
