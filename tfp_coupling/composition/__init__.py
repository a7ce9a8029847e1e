"""Layer 2, composition: walking chains of bijectors with fused calls, and ``FactorOut``.

``fused`` walks any TFP bijector (through ``Chain`` and ``Invert``) asking each tfp-coupling
bijector for its output and log-det at once; ``FactorOut`` applies an inner bijector (walked the
same way) to some channels. Both build on :mod:`tfp_coupling.bijectors` and nothing above it.
"""

from tfp_coupling.composition import fused
from tfp_coupling.composition.factor_out import FactorOut

__all__ = ["FactorOut", "fused"]
