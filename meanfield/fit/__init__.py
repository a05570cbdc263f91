"""Fit the paper's laws to measured rank and entropy curves, with honest uncertainties.

The public names are re-exported here; the code lives in private modules of this package:

- ``meanfield.fit._api``: :class:`FitResult`, :class:`ModelComparison` and the ``fit_*`` functions;
- ``meanfield.fit._models``: the curve models (:class:`CurveModel`, ``MODELS``);
- ``meanfield.fit._core``: the optimizer (Levenberg–Marquardt from several starts, NumPy float64;
  optionally after optax L-BFGS, ``optimizer="lbfgs+lm"``);
- ``meanfield.fit.cli``: the command line, ``meanfield-fit DATA`` or ``python -m meanfield.fit DATA``.

Least squares with ``w = 1/sigma`` (or 1), positive parameters on a log scale, covariance from
the Jacobian, 95 % intervals (see :mod:`meanfield.fit._api` and docs/fitting.md).  In the rank law
only ``alpha/(N M)`` enters, so the fitted ``alpha`` is a rate constant for the given ``N`` and
merge factor, not the kernel's inverse temperature (docs/theory.md "The paper's laws").
"""

from ._api import (
    FitResult,
    ModelComparison,
    compare_models,
    fit_cost_curve,
    fit_curve,
    fit_entropy_curve,
    fit_rank_curve,
    fit_rank_vs_fusion,
)
from ._models import MODELS, CurveModel

__all__ = ["FitResult", "ModelComparison", "fit_curve", "fit_rank_curve", "fit_entropy_curve",
           "fit_cost_curve", "fit_rank_vs_fusion", "compare_models", "MODELS", "CurveModel"]
