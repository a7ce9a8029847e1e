"""Layer 3, the model: ``FlowModel``, a flow as a Keras model, and what it needs to be one.

``flow_model`` (the distribution, training and sampling), ``inputs`` (checks of user data),
``sampling`` (base noise), ``export`` (the SavedModel), ``registry`` (builders by name, for
loading ``.keras`` files) and ``keras_workarounds``. Builds on :mod:`tfp_coupling.composition`.
"""

from tfp_coupling.model.flow_model import FlowModel
from tfp_coupling.model.registry import get_builder, register_builder

__all__ = ["FlowModel", "get_builder", "register_builder"]
