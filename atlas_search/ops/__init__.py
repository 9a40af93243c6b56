"""Functional, stateless maths on tensors (DESIGN.md §2-§4): reference token loops (the
ground truth), chunk-parallel PyTorch forms, feature maps and Newton-Schulz. Imports
nothing else from the package."""

from .feature_maps import feature_dim, poly_features, taylor_coeffs
from .newton_schulz import newton_schulz
from .omega_kernel import omega_kernel
from .omega_linear import OmegaState, omega_linear, omega_state_size
from .omega_mlp import MLPMemoryState, init_mlp_weights, mlp_state_size, omega_mlp

__all__ = [
    "MLPMemoryState", "OmegaState", "feature_dim", "init_mlp_weights", "mlp_state_size",
    "newton_schulz", "omega_kernel", "omega_linear", "omega_mlp", "omega_state_size",
    "poly_features", "taylor_coeffs",
]
