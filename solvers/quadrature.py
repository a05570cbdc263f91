"""Quadrature rules for the density solvers (NumPy only; no SciPy in ``solvers/``).

The zonal reduction of docs/theory.md ("Density solvers", item 2) integrates over the azimuth
``phi in [0, pi]`` between two points at polar angles ``theta, theta'`` with weight
``sin^{d-3} phi``.  With ``t = cos phi`` this is the symmetric Jacobi (Gegenbauer) weight
``(1 - t^2)^{(d-4)/2}`` on ``[-1, 1]``: the law of one coordinate of a uniform point on
``S^{d-2}``.  Gauss rules for it come from the Golub–Welsch eigenvalue method
(Golub & Welsch 1969) applied to the monic Gegenbauer three-term recurrence.
"""

from __future__ import annotations

import math

import numpy as np


def gauss_gegenbauer(n: int, d: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes ``t_k`` and weights ``w_k`` (summing to 1) for ``E[h(t)]``, ``t = cos(phi)``.

    ``phi`` has density proportional to ``sin^{d-3} phi`` on ``[0, pi]`` (``d >= 3``), i.e.
    ``t`` has density proportional to ``(1 - t^2)^{(d-4)/2}`` on ``[-1, 1]``.  The rule is
    exact for polynomials of degree ``2n - 1``.  For ``d = 3`` the weight is uniform in
    ``phi`` and the rule is Gauss–Chebyshev (first kind).
    """
    if d < 3:
        raise ValueError(f"gauss_gegenbauer: d={d} must be >= 3")
    if n < 1:
        raise ValueError(f"gauss_gegenbauer: n={n} must be >= 1")
    if d == 3:
        j = np.arange(1, n + 1)
        return np.cos((2 * j - 1) * np.pi / (2 * n)), np.full(n, 1.0 / n)
    mu = (d - 3) / 2.0  # Gegenbauer index: weight (1 - t^2)^(mu - 1/2)
    k = np.arange(1, n, dtype=np.float64)
    beta = k * (k + 2 * mu - 1) / (4 * (k + mu) * (k + mu - 1))  # monic recurrence
    jac = np.diag(np.sqrt(beta), 1) + np.diag(np.sqrt(beta), -1)
    nodes, vecs = np.linalg.eigh(jac)
    weights = vecs[0] ** 2
    return nodes, weights / weights.sum()


def gauss_legendre(n: int, a: float, b: float) -> tuple[np.ndarray, np.ndarray]:
    """Gauss–Legendre nodes and weights on ``[a, b]`` (weights sum to ``b - a``)."""
    x, w = np.polynomial.legendre.leggauss(n)
    return 0.5 * (b - a) * x + 0.5 * (b + a), 0.5 * (b - a) * w


def log_sphere_area(d: int) -> float:
    """``log |S^{d-1}|`` with ``|S^{d-1}| = 2 pi^{d/2} / Gamma(d/2)``: the unit sphere in ``R^d``
    (``d >= 1``; ``|S^0| = 2``). The one definition in the package."""
    return math.log(2.0) + 0.5 * d * math.log(math.pi) - math.lgamma(0.5 * d)
