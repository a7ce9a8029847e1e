"""tfp-coupling: NICE and RealNVP normalizing flows for TensorFlow Probability and Keras 3.

Example:
    >>> import tfp_coupling as tc
    >>> model = tc.realnvp_flow(event_shape=[2], num_couplings=4, hidden_units=[32, 32])
    >>> model.compile(optimizer="adam")
    >>> history = model.fit(tc.data.two_moons(512, seed=0), batch_size=128, epochs=1, verbose=0)
"""

import importlib
import importlib.util
import os
import sys
from typing import TYPE_CHECKING

# `import tfp_coupling` imports every module (so that keras.models.load_model finds the flows),
# except when the import starts the command line: TensorFlow takes seconds to import and logs on
# start-up, and `tfp-coupling --help` or a bad option must answer at once. Names are then
# resolved when first used (PEP 562), and the CLI calls load_all() once the options are checked.
_EXPORTS = {
    "ActNorm": "tfp_coupling.bijectors",
    "AdditiveCoupling": "tfp_coupling.bijectors",
    "AffineCoupling": "tfp_coupling.bijectors",
    "Chain": "tfp_coupling.bijectors",
    "Coupling": "tfp_coupling.bijectors",
    "FactorOut": "tfp_coupling.bijectors",
    "FlowBijector": "tfp_coupling.bijectors",
    "LogitPreprocessing": "tfp_coupling.bijectors",
    "LogScale": "tfp_coupling.bijectors",
    "Rescaling": "tfp_coupling.bijectors",
    "Squeeze": "tfp_coupling.bijectors",
    "TransformCoupling": "tfp_coupling.bijectors",
    "TriLAffine": "tfp_coupling.bijectors",
    "initialize_actnorm": "tfp_coupling.bijectors",
    "initialize_from_data": "tfp_coupling.bijectors",
    "get_builder": "tfp_coupling.flows",
    "nice_flow": "tfp_coupling.flows",
    "realnvp_flow": "tfp_coupling.flows",
    "register_builder": "tfp_coupling.flows",
    "ImageFlowModel": "tfp_coupling.image_flows",
    "nice_image_flow": "tfp_coupling.image_flows",
    "realnvp_flat_image_flow": "tfp_coupling.image_flows",
    "realnvp_image_flow": "tfp_coupling.image_flows",
    "FlowModel": "tfp_coupling.model",
}

if TYPE_CHECKING:  # what the lazy names are, for type checkers and IDEs
    from tfp_coupling import data, fused, image_flows, masks, nets
    from tfp_coupling.bijectors import (
        ActNorm,
        AdditiveCoupling,
        AffineCoupling,
        Chain,
        Coupling,
        FactorOut,
        FlowBijector,
        LogitPreprocessing,
        LogScale,
        Rescaling,
        Squeeze,
        TransformCoupling,
        TriLAffine,
        initialize_actnorm,
        initialize_from_data,
    )
    from tfp_coupling.flows import get_builder, nice_flow, realnvp_flow, register_builder
    from tfp_coupling.image_flows import (
        ImageFlowModel,
        nice_image_flow,
        realnvp_flat_image_flow,
        realnvp_image_flow,
    )
    from tfp_coupling.model import FlowModel


def load_all() -> None:
    """Imports every module, registering all builders and Keras custom objects."""
    for module in sorted(set(_EXPORTS.values())):
        importlib.import_module(module)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
    elif not name.startswith("_") and importlib.util.find_spec(f"{__name__}.{name}"):
        value = importlib.import_module(f"{__name__}.{name}")  # a submodule, e.g. tc.callbacks
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


def _starting_the_command_line() -> bool:
    """Whether this import is the start of ``tfp-coupling`` or ``python -m tfp_coupling``.

    The console script runs as ``.../bin/tfp-coupling``; ``python -m`` imports the package while
    ``sys.argv[0]`` is still ``"-m"``.
    """
    argv0 = sys.argv[0] if sys.argv else ""
    return argv0 == "-m" or os.path.basename(argv0) in ("tfp-coupling", "tfp-coupling.exe")


__version__ = "0.1.0"

__all__ = [
    "ActNorm",
    "AdditiveCoupling",
    "AffineCoupling",
    "Chain",
    "Coupling",
    "FactorOut",
    "FlowBijector",
    "FlowModel",
    "ImageFlowModel",
    "LogScale",
    "LogitPreprocessing",
    "Rescaling",
    "Squeeze",
    "TransformCoupling",
    "TriLAffine",
    "data",
    "fused",
    "get_builder",
    "image_flows",
    "initialize_actnorm",
    "initialize_from_data",
    "load_all",
    "masks",
    "nets",
    "nice_flow",
    "nice_image_flow",
    "realnvp_flat_image_flow",
    "realnvp_flow",
    "realnvp_image_flow",
    "register_builder",
]

if not _starting_the_command_line():
    load_all()
