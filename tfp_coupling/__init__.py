"""tfp-coupling: NICE and RealNVP normalizing flows for TensorFlow Probability and Keras 3.

Example:
    >>> import tfp_coupling as tc
    >>> model = tc.realnvp_flow(event_shape=[2], num_couplings=4, hidden_units=[32, 32])
    >>> model.compile(optimizer="adam")
    >>> history = model.fit(tc.data.two_moons(512, seed=0), batch_size=128, epochs=1, verbose=0)
"""

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
    "TriLAffine",
    "data",
    "fused",
    "get_builder",
    "image_flows",
    "initialize_actnorm",
    "initialize_from_data",
    "masks",
    "nets",
    "nice_flow",
    "nice_image_flow",
    "realnvp_flat_image_flow",
    "realnvp_flow",
    "realnvp_image_flow",
    "register_builder",
]
