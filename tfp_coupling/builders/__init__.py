"""Layer 4, builders: functions that assemble bijectors and conditioners into a ``FlowModel``.

``vector`` holds NICE and RealNVP for vector data, ``image`` the image flows (multi-scale
RealNVP, NICE and RealNVP on flattened images). Each records its arguments as the model's
``flow_config``, from which :mod:`tfp_coupling.model.registry` rebuilds saved flows.
"""

from tfp_coupling.builders.image import (
    ImageFlowModel,
    nice_image_flow,
    realnvp_flat_image_flow,
    realnvp_image_flow,
)
from tfp_coupling.builders.vector import (
    initialize_rescaling,
    mask_sequence,
    nice_flow,
    realnvp_flow,
    spline_flow,
)

__all__ = [
    "ImageFlowModel",
    "initialize_rescaling",
    "mask_sequence",
    "nice_flow",
    "nice_image_flow",
    "realnvp_flat_image_flow",
    "realnvp_flow",
    "realnvp_image_flow",
    "spline_flow",
]
