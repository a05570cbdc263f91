"""Curve models for :mod:`meanfield.fit`: formula, parameters, positivity, starting values.

Every model is ``y = f(theta, x, c)`` with ``x`` the abscissa given by the caller and ``c`` a
float vector of known constants: ``c[0]`` a scale applied to ``x`` (``1/(N M)`` for laws in the
layer index), ``c[1]`` a fixed plateau ``r`` (rank law with ``r`` fixed), ``c[2]`` the merge
factor ``M``.  Positive parameters are fitted as ``log theta`` so they stay positive.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax.numpy as jnp
import numpy as np

N_STARTS = 6  # fixed, so the jitted solver keeps one static shape per model


@dataclasses.dataclass(frozen=True, eq=False)
class CurveModel:
    """A named curve ``f(theta, x, c)``; ``positive[i]`` fits ``theta[i]`` on a log scale."""

    name: str
    formula: str
    params: tuple[str, ...]
    positive: tuple[bool, ...]
    fn: Callable  # (theta (p,), x (n,), c (3,), xp=jax.numpy) -> (n,): jax-traceable, and NumPy (complex too) with xp=numpy
    starts: Callable  # (x, y, c) numpy -> (N_STARTS, p) natural-scale starting values
    domain: Callable | None = None  # (x, c) -> None or a reason the model does not apply

    def __repr__(self) -> str:
        return f"CurveModel({self.name!r}: {self.formula})"


def _spread(y):
    return max(float(np.ptp(y)), 1e-3 * max(float(np.abs(y).max()), 1e-12))


def _rates(x, c):
    span = max(float(np.ptp(x)) * abs(float(c[0])), 1e-12)
    return np.array([0.3, 1.0, 3.0, 0.1, 10.0, 30.0]) / span


def _rank_starts(x, y, c, r_free=True):
    lo, sp = float(np.min(y)), _spread(y)
    r0 = max(lo - 0.05 * sp, 1e-3 * max(abs(lo), 1e-6)) if r_free else float(c[1])
    C0 = max(float(np.max(y)) - r0, 1e-3 * sp)
    rows = [[a, C0, r0] for a in _rates(x, c)]
    return np.array(rows)[:, : 3 if r_free else 2]


def _line_starts(x, y, c, sign=-1.0):
    xs = np.asarray(x) * c[0]
    A = np.stack([np.ones_like(xs), sign * xs], axis=1)
    coef = np.linalg.lstsq(A, y, rcond=None)[0]
    return np.tile(coef, (N_STARTS, 1)) + np.outer(np.linspace(-0.1, 0.1, N_STARTS), [0.0, 1.0])


def _positive_x(x, c):
    return None if np.all(np.asarray(x) > 0) else "needs all abscissae > 0"


def _power_starts(x, y, c):
    y1 = max(float(np.abs(y[0])), 1e-6)
    return np.array([[y1, b] for b in (0.1, 0.5, 1.0, 2.0, -0.5, 0.0)])


RANK_LAW = CurveModel(
    "rank_law", "r + C exp(-alpha l/(N M))", ("alpha", "C", "r"), (True, True, True),
    lambda th, x, c, xp=jnp: th[2] + th[1] * xp.exp(-th[0] * x * c[0]),
    _rank_starts)
RANK_LAW_FIXED_R = CurveModel(
    "rank_law_fixed_r", "r + C exp(-alpha l/(N M)), r fixed", ("alpha", "C"), (True, True),
    lambda th, x, c, xp=jnp: c[1] + th[1] * xp.exp(-th[0] * x * c[0]),
    lambda x, y, c: _rank_starts(x, y, c, r_free=False))
EXPONENTIAL = CurveModel(
    "exponential", "C exp(-alpha l/(N M))  (r = 0)", ("alpha", "C"), (True, True),
    lambda th, x, c, xp=jnp: th[1] * xp.exp(-th[0] * x * c[0]),
    lambda x, y, c: np.array([[a, max(float(np.max(y)), 1e-6)] for a in _rates(x, c)]))
POWER_LAW = CurveModel(
    "power_law", "a (1 + l)^(-b)", ("a", "b"), (True, False),
    lambda th, x, c, xp=jnp: th[0] * (1.0 + x) ** (-th[1]),
    _power_starts,
    lambda x, c: None if np.all(np.asarray(x) > -1) else "needs l > -1")
LINEAR = CurveModel(
    "linear", "a - b l/(N M)", ("a", "b"), (False, False),
    lambda th, x, c, xp=jnp: th[0] - th[1] * x * c[0],
    _line_starts)
CONSTANT = CurveModel(
    "constant", "a", ("a",), (False,),
    lambda th, x, c, xp=jnp: th[0] + 0.0 * x,
    lambda x, y, c: np.full((N_STARTS, 1), float(np.mean(y))))
ENTROPY_LINEAR = CurveModel(
    "entropy_eq13", "H0 - k L/(N M)  (Eq. 13)", ("H0", "k"), (False, False),
    lambda th, x, c, xp=jnp: th[0] - th[1] * x * c[0],
    _line_starts)
ENTROPY_INVERSE = CurveModel(
    "entropy_eq8", "H0 - k/(M L)  (Eq. 6/8)", ("H0", "k"), (False, False),
    lambda th, x, c, xp=jnp: th[0] - th[1] / (c[2] * x),
    lambda x, y, c: np.tile([float(np.max(y)), 0.0], (N_STARTS, 1)) + np.outer(
        np.linspace(0, 1, N_STARTS), [0.0, _spread(y)]),
    _positive_x)
ENTROPY_FUSION = CurveModel(
    "entropy_eq13_fusion", "H0 - kappa (1 - m)  (Eq. 13 at fixed depth)", ("H0", "kappa"),
    (False, False),
    lambda th, x, c, xp=jnp: th[0] - th[1] * (1.0 - x),
    lambda x, y, c: _line_starts(1.0 - np.asarray(x), y, np.ones(3)))
LINEAR_IN_M = CurveModel(
    "linear_m", "a + b m", ("a", "b"), (False, False),
    lambda th, x, c, xp=jnp: th[0] + th[1] * x,
    lambda x, y, c: _line_starts(x, y, np.ones(3), sign=1.0))
RANK_FUSION = CurveModel(
    "rank_law_fusion", "r + C exp(-a (1 - m))  (Eq. 15 at fixed depth, a = alpha L/N)",
    ("a", "C", "r"), (True, True, True),
    lambda th, x, c, xp=jnp: th[2] + th[1] * xp.exp(-th[0] * (1.0 - x)),
    lambda x, y, c: _rank_starts(1.0 - np.asarray(x), y, np.ones(3)))
EXP_FUSION = CurveModel(
    "exponential_fusion", "C exp(-a (1 - m))  (r = 0; = n^(H0 - kappa(1-m)))", ("a", "C"),
    (True, True),
    lambda th, x, c, xp=jnp: th[1] * xp.exp(-th[0] * (1.0 - x)),
    lambda x, y, c: np.array([[a, max(float(np.max(y)), 1e-6)] for a in _rates(1.0 - np.asarray(x), np.ones(3))]))
COST_LAW = CurveModel(
    "cost_law", "c (1 - m)^2  (Eq. 11)", ("c",), (True,),
    lambda th, x, c, xp=jnp: th[0] * (1.0 - x) ** 2,
    lambda x, y, c: np.outer(np.geomspace(0.3, 3, N_STARTS), [max(float(np.max(y)), 1e-6)]))
COST_OFFSET = CurveModel(
    "cost_offset", "a + b (1 - m)^2  (a: work merging does not shrink)", ("a", "b"), (False, True),
    lambda th, x, c, xp=jnp: th[0] + th[1] * (1.0 - x) ** 2,
    lambda x, y, c: np.array([[f * float(np.min(y)), max(float(np.ptp(y)), 1e-6)]
                              for f in np.linspace(0.0, 1.0, N_STARTS)]))
COST_POWER = CurveModel(
    "cost_power", "c (1 - m)^p", ("c", "p"), (True, False),
    lambda th, x, c, xp=jnp: th[0] * (1.0 - x) ** th[1],
    lambda x, y, c: np.array([[max(float(np.max(y)), 1e-6), p] for p in (0.5, 1, 1.5, 2, 3, 0.25)]))

MODELS = {mod.name: mod for mod in (
    RANK_LAW, RANK_LAW_FIXED_R, EXPONENTIAL, POWER_LAW, LINEAR, CONSTANT, ENTROPY_LINEAR,
    ENTROPY_INVERSE, ENTROPY_FUSION, LINEAR_IN_M, RANK_FUSION, EXP_FUSION, COST_LAW, COST_OFFSET,
    COST_POWER)}
