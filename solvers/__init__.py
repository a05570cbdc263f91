"""Numerical engines for meanfield: sphere geometry, attention kernels, streaming passes, integrators.

This package depends only on jax, numpy, equinox and diffrax and never imports ``meanfield``.
"""

from .integrators import (
    INTEGRATORS,
    AdaptiveODE,
    AttentionField,
    ProjectedEuler,
    RetractionHeun,
    TransformerLayer,
    make_integrator,
)
from .kernels import KERNELS, LinearKernel, SoftmaxKernel, USAKernel, key_moments, make_kernel
from .sphere import norm_drift, normalize, project, retract

__all__ = [
    "INTEGRATORS",
    "KERNELS",
    "AdaptiveODE",
    "AttentionField",
    "LinearKernel",
    "ProjectedEuler",
    "RetractionHeun",
    "SoftmaxKernel",
    "TransformerLayer",
    "USAKernel",
    "key_moments",
    "make_integrator",
    "make_kernel",
    "norm_drift",
    "normalize",
    "project",
    "retract",
]
