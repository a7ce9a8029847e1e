"""tfp-coupling's bijectors: every one a ``tfp.bijectors.Bijector`` subclass."""

from tfp_coupling.bijectors.actnorm import (
    ActNorm,
    ActNormParams,
    DataInitializedParams,
    actnorm_layers,
    data_initialized_layers,
    initialize_actnorm,
    initialize_from_data,
)
from tfp_coupling.bijectors.base import Chain, FlowBijector, GraphMemoCache
from tfp_coupling.bijectors.coupling import (
    AdditiveCoupling,
    AffineCoupling,
    Coupling,
    TransformCoupling,
    rational_quadratic_spline,
)
from tfp_coupling.bijectors.linear import LULinear, LULinearParams, TriLAffine, TriLAffineParams
from tfp_coupling.bijectors.logit import LogitPreprocessing
from tfp_coupling.bijectors.rescaling import LogScale, Rescaling
from tfp_coupling.bijectors.squeeze import Squeeze

__all__ = [
    "ActNorm",
    "ActNormParams",
    "AdditiveCoupling",
    "AffineCoupling",
    "Chain",
    "Coupling",
    "DataInitializedParams",
    "FlowBijector",
    "GraphMemoCache",
    "LULinear",
    "LULinearParams",
    "LogScale",
    "LogitPreprocessing",
    "Rescaling",
    "Squeeze",
    "TransformCoupling",
    "TriLAffine",
    "TriLAffineParams",
    "actnorm_layers",
    "data_initialized_layers",
    "initialize_actnorm",
    "initialize_from_data",
    "rational_quadratic_spline",
]
