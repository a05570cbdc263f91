"""Numerical engines for meanfield: sphere geometry, attention kernels, streaming passes, integrators,
finite-volume and characteristic density solvers.

This package depends only on jax, numpy, equinox and diffrax and never imports ``meanfield``
(``tests/test_layering.py`` checks it in a fresh interpreter).

Interfaces: :class:`AbstractKernel` (registry :data:`KERNELS`), :class:`AbstractIntegrator`
(registry :data:`INTEGRATORS`) and :class:`~solvers.finite_volume.AbstractGridSolver`.
``solvers.feature_major`` runs the linear kernel's fixed-step schemes on the transposed state.
"""

from .finite_volume import AbstractGridSolver
from . import feature_major
from solvers.bilinear import Bilinear
from .integrators import (
    INTEGRATORS,
    AbstractIntegrator,
    Adaptive,
    AttentionField,
    Euler,
    Heun,
    Layer,
    make_integrator,
)
from .kernels import (
    KERNELS,
    USA,
    AbstractKernel,
    Linear,
    Softmax,
    key_moments,
    make_kernel,
)
from .noise import SphereSDE
from .normalization import NGPT, PeriLN, PostLN, PreLN
from .sphere import norm_drift, normalize, project, retract

__all__ = [
    "INTEGRATORS",
    "KERNELS",
    "USA",
    "AbstractGridSolver",
    "AbstractIntegrator",
    "AbstractKernel",
    "Adaptive",
    "AttentionField",
    "Bilinear",
    "Euler",
    "Heun",
    "Layer",
    "Linear",
    "NGPT",
    "PeriLN",
    "PostLN",
    "PreLN",
    "SphereSDE",
    "Softmax",
    "key_moments",
    "make_integrator",
    "make_kernel",
    "norm_drift",
    "normalize",
    "project",
    "retract",
]
