"""meanfield: the mean-field spherical token flow of attention collapse, in JAX.

Public names (stable): distributions ``Uniform``, ``VonMisesFisher``, ``VonMisesFisherMixture``;
the driver ``solve_flow``, its option objects ``SaveAt``, ``Fusion``, ``Weighted``,
``Checkpoint``, ``Progress``, its two halves ``make_spec``/``run``, the public step ``Stepper``
(``init``/``step`` on ``FlowState``), and its result ``FlowSolution``; kernel objects ``Linear``, ``Softmax``,
``USA``; method objects ``Layer``, ``Euler``, ``Heun``, ``Adaptive`` (particles) and
``Characteristics``, ``Zonal``, ``Circle`` (densities); ``methods()`` and ``kernels()`` list the
names accepted as shorthand; ``simulate_batch`` for vmapped batches;
results I/O ``save_results``/``load_results``; the modules ``diagnostics``, ``theory`` (the paper's
laws and this project's exact results) and ``fit`` (``fit_rank_curve``, ``fit_entropy_curve``);
the paper's tables ``paper_table(1|2)``; token-merging strategies ``ToMe`` and ``FastVGGT``
(``solve_flow(merging=...)``, docs/merging.md).
"""

import importlib

from ._version import __version__

# Names are loaded on first use (PEP 562), so that ``import meanfield.io.results`` or a tool that only
# reads files and draws does not pay for JAX's import; ``from meanfield import solve_flow`` and
# ``meanfield.solve_flow`` work as before.
_SOLVERS = ("NGPT", "USA", "Adaptive", "Bilinear", "Euler", "Heun", "Layer", "Linear", "PeriLN", "PostLN",
            "PreLN", "Softmax", "SphereSDE")
_FROM = {
    **{name: "solvers" for name in _SOLVERS},
    "simulate_batch": ".studies.batch",
    "FitResult": ".fit", "fit_entropy_curve": ".fit", "fit_rank_curve": ".fit",
    "Uniform": ".flow.distributions", "VonMisesFisher": ".flow.distributions", "VonMisesFisherMixture": ".flow.distributions",
    "Characteristics": ".flow.density", "Circle": ".flow.density", "Zonal": ".flow.density",
    "Checkpoint": ".flow.checkpoint", "Weighted": ".flow.distributions", "Fusion": ".flow.options", "SaveAt": ".flow.options", "Schedule": ".flow.options",
    "Progress": ".flow.progress", "Stepper": ".flow.particles", "FlowState": ".flow.particles",
    "FlowSolution": ".flow.driver", "kernels": ".flow.driver", "methods": ".flow.driver", "solve_flow": ".flow.driver",
    "make_spec": ".flow.driver", "run": ".flow.driver",
    "load_results": ".io.results", "save_results": ".io.results",
    "FastVGGT": ".flow.merged", "ToMe": ".flow.merged",
    "PAPER_CITATION": ".stats.paper", "paper_table": ".stats.paper",
    "PhaseDiagram": ".studies.phase", "phase_diagram": ".studies.phase",
}
_SUBMODULES = {"diagnostics": ".stats.diagnostics", "fit": ".fit", "theory": ".stats.theory"}


def __getattr__(name: str):
    if name in _SUBMODULES:
        return importlib.import_module(_SUBMODULES[name], __name__)
    source = _FROM.get(name)
    if source is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(source, __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))


__all__ = [
    "Checkpoint",
    "Fusion",
    "Progress",
    "SaveAt",
    "Schedule",
    "Stepper",
    "FlowState",
    "Weighted",
    "make_spec",
    "run",
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
