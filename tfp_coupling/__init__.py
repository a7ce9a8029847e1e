"""tfp-coupling: NICE and RealNVP normalizing flows for TensorFlow Probability and Keras 3.

Example:
    >>> import tfp_coupling as tc
    >>> model = tc.realnvp_flow(event_shape=[2], num_couplings=4, hidden_units=[32, 32])
    >>> model.compile(optimizer="adam")
    >>> history = model.fit(tc.data.two_moons(512, seed=0), batch_size=128, epochs=1, verbose=0)

Layout, in layers; a module imports only from the layers before it:

* ``bijectors/`` the TFP bijectors (couplings, ``Rescaling``, ``ActNorm``, ...), with ``masks``
  (which entries a coupling keeps) and ``nets`` (conditioner networks);
* ``composition/`` fused walks through chains of bijectors (``fused``), and ``FactorOut``;
* ``model/`` ``FlowModel``: training, sampling, input checks, SavedModel export, and the
  registry of builders by name that loading a ``.keras`` file uses;
* ``builders/`` NICE and RealNVP for vectors (``vector``) and images (``image``);
* ``baseline``: ``gaussian_fit`` (and ``conditional_gaussian_fit``), the full-covariance
  Gaussian a flow must beat;
* ``cli/`` the ``tfp-coupling`` command line.

Beside them, without TensorFlow: ``data/`` (toy densities, tables, images), ``plots``,
``dequantization`` (dequantisation, bits per dimension), ``atomic`` (atomic file writes) and
``errors``; ``callbacks`` and ``checkpoint`` hold Keras callbacks for training.
"""

import importlib
import importlib.util
import os
import sys
from typing import TYPE_CHECKING

# `import tfp_coupling` imports the model and builders (so that keras.models.load_model finds
# the flows' classes, which Keras knows only once their modules ran), except when the import
# starts the command line: Python runs this file before any module of the package, TensorFlow
# takes seconds to import and logs on start-up, and `tfp-coupling --help` or a bad option must
# answer at once. Names are then resolved when first used (PEP 562), and the command line
# imports what a command needs once its options are checked.
_EXPORTS = {
    "ActNorm": "tfp_coupling.bijectors",
    "AdditiveCoupling": "tfp_coupling.bijectors",
    "AffineCoupling": "tfp_coupling.bijectors",
    "Chain": "tfp_coupling.bijectors",
    "Coupling": "tfp_coupling.bijectors",
    "FlowBijector": "tfp_coupling.bijectors",
    "LogitPreprocessing": "tfp_coupling.bijectors",
    "LULinear": "tfp_coupling.bijectors",
    "LogScale": "tfp_coupling.bijectors",
    "Rescaling": "tfp_coupling.bijectors",
    "Squeeze": "tfp_coupling.bijectors",
    "TransformCoupling": "tfp_coupling.bijectors",
    "TriLAffine": "tfp_coupling.bijectors",
    "initialize_actnorm": "tfp_coupling.bijectors",
    "initialize_from_data": "tfp_coupling.bijectors",
    "FactorOut": "tfp_coupling.composition",
    "fused": "tfp_coupling.composition",
    "FlowModel": "tfp_coupling.model",
    "get_builder": "tfp_coupling.model",
    "register_builder": "tfp_coupling.model",
    "ImageFlowModel": "tfp_coupling.builders",
    "initialize_rescaling": "tfp_coupling.builders",
    "mask_sequence": "tfp_coupling.builders",
    "nice_flow": "tfp_coupling.builders",
    "nice_image_flow": "tfp_coupling.builders",
    "realnvp_flat_image_flow": "tfp_coupling.builders",
    "realnvp_flow": "tfp_coupling.builders",
    "spline_flow": "tfp_coupling.builders",
    "realnvp_image_flow": "tfp_coupling.builders",
    "flow_bits_per_dim": "tfp_coupling.dequantization",
    "conditional_gaussian_fit": "tfp_coupling.baseline",
    "gaussian_fit": "tfp_coupling.baseline",
}

if TYPE_CHECKING:  # what the lazy names are, for type checkers and IDEs
    from tfp_coupling import data, masks, nets, plots
    from tfp_coupling.baseline import conditional_gaussian_fit, gaussian_fit
    from tfp_coupling.bijectors import (
        ActNorm,
        AdditiveCoupling,
        AffineCoupling,
        Chain,
        Coupling,
        FlowBijector,
        LogitPreprocessing,
        LogScale,
        LULinear,
        Rescaling,
        Squeeze,
        TransformCoupling,
        TriLAffine,
        initialize_actnorm,
        initialize_from_data,
    )
    from tfp_coupling.builders import (
        ImageFlowModel,
        initialize_rescaling,
        mask_sequence,
        nice_flow,
        nice_image_flow,
        realnvp_flat_image_flow,
        realnvp_flow,
        realnvp_image_flow,
        spline_flow,
    )
    from tfp_coupling.composition import FactorOut, fused
    from tfp_coupling.dequantization import flow_bits_per_dim
    from tfp_coupling.model import FlowModel, get_builder, register_builder


def load_all() -> None:
    """Imports the modules behind the public names, and so every Keras custom object."""
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
    "LULinear",
    "LogScale",
    "LogitPreprocessing",
    "Rescaling",
    "Squeeze",
    "TransformCoupling",
    "TriLAffine",
    "conditional_gaussian_fit",
    "data",
    "flow_bits_per_dim",
    "fused",
    "gaussian_fit",
    "get_builder",
    "initialize_actnorm",
    "initialize_from_data",
    "initialize_rescaling",
    "load_all",
    "mask_sequence",
    "masks",
    "nets",
    "nice_flow",
    "nice_image_flow",
    "plots",
    "realnvp_flat_image_flow",
    "realnvp_flow",
    "realnvp_image_flow",
    "register_builder",
    "spline_flow",
]

if not _starting_the_command_line():
    load_all()
