"""Layer 2, composition: walking chains of bijectors with fused calls, and ``FactorOut``.

``fused`` walks any TFP bijector (through ``Chain`` and ``Invert``) asking each tfp-coupling
bijector for its output and log-det at once; ``FactorOut`` applies an inner bijector (walked the
same way) to some channels; ``invertible_backprop`` is the fused walk with a gradient that
rebuilds each step's input instead of storing it. All build on :mod:`tfp_coupling.bijectors`
and nothing above it.
"""

from tfp_coupling.composition import fused, invertible_backprop
from tfp_coupling.composition.factor_out import FactorOut

__all__ = ["FactorOut", "fused", "invertible_backprop"]
