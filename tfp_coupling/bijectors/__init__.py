"""tfp-coupling's bijectors: every one a ``tfp.bijectors.Bijector`` subclass."""

from tfp_coupling.bijectors.base import Chain, FlowBijector, UncachedBijectorCache
from tfp_coupling.bijectors.coupling import AdditiveCoupling, AffineCoupling, Coupling
from tfp_coupling.bijectors.rescaling import LogScale, Rescaling

__all__ = [
    "AdditiveCoupling",
    "AffineCoupling",
    "Chain",
    "Coupling",
    "FlowBijector",
    "LogScale",
    "Rescaling",
    "UncachedBijectorCache",
]
