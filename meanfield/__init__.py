"""meanfield: the mean-field spherical token flow of attention collapse, in JAX.

Public names (stable): distributions ``Uniform``, ``VonMisesFisher``, ``VonMisesFisherMixture``;
the driver ``solve_flow`` and its result ``FlowSolution``; kernel objects ``Linear``, ``Softmax``,
``USA``; method objects ``Layer``, ``Euler``, ``Heun``, ``Adaptive`` (particles) and
``Characteristics``, ``Zonal``, ``Circle`` (densities); ``methods()`` and ``kernels()`` list the
names accepted as shorthand; ``simulate_batch`` for vmapped batches;
results I/O ``save_results``/``load_results``; the modules ``diagnostics``, ``theory`` (the paper's
laws and this project's exact results) and ``fit`` (``fit_rank_curve``, ``fit_entropy_curve``);
the paper's tables ``paper_table(1|2)``; token-merging strategies ``ToMe`` and ``FastVGGT``
(``solve_flow(merging=...)``, docs/merging.md).
"""

from ._version import __version__

from solvers import NGPT, USA, Adaptive, Bilinear, Euler, Heun, Layer, Linear, PeriLN, PostLN, PreLN, Softmax, SphereSDE

from . import diagnostics, fit, theory
from .batch import simulate_batch
from .fit import FitResult, fit_entropy_curve, fit_rank_curve
from .distributions import Uniform, VonMisesFisher, VonMisesFisherMixture
from .density import Characteristics, Circle, Zonal
from .checkpoint import Checkpoint
from .flow import FlowSolution, kernels, methods, solve_flow
from .io import load_results, save_results
from .merging import FastVGGT, ToMe
from .paper import PAPER_CITATION, paper_table
from .phase import PhaseDiagram, phase_diagram


__all__ = [
    "Checkpoint",
    "__version__",
    "Bilinear",
    "NGPT",
    "PeriLN",
    "PhaseDiagram",
    "PostLN",
    "PreLN",
    "SphereSDE",
    "phase_diagram",
    "USA",
    "Adaptive",
    "Characteristics",
    "FastVGGT",
    "Circle",
    "Euler",
    "Heun",
    "Layer",
    "Linear",
    "Softmax",
    "ToMe",
    "Zonal",
    "kernels",
    "FitResult",
    "FlowSolution",
    "PAPER_CITATION",
    "Uniform",
    "VonMisesFisher",
    "VonMisesFisherMixture",
    "diagnostics",
    "fit",
    "fit_entropy_curve",
    "fit_rank_curve",
    "load_results",
    "methods",
    "paper_table",
    "save_results",
    "simulate_batch",
    "solve_flow",
    "theory",
]
