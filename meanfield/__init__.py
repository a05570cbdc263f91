"""meanfield: the mean-field spherical token flow of attention collapse, in JAX.

Public names (stable): distributions ``Uniform``, ``VonMisesFisher``, ``VonMisesFisherMixture``;
the driver ``solve_flow`` and its result ``FlowSolution``; ``simulate_batch`` for vmapped batches;
results I/O ``save_results``/``load_results``; the diagnostics module ``meanfield.diagnostics``.
"""

__version__ = "0.1.0"

from . import diagnostics
from .batch import simulate_batch
from .distributions import Uniform, VonMisesFisher, VonMisesFisherMixture
from .flow import FlowSolution, methods, register_method, solve_flow
from .io import load_results, save_results

__all__ = [
    "__version__",
    "FlowSolution",
    "Uniform",
    "VonMisesFisher",
    "VonMisesFisherMixture",
    "diagnostics",
    "load_results",
    "methods",
    "register_method",
    "save_results",
    "simulate_batch",
    "solve_flow",
]
