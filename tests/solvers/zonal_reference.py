"""Independent references for the density-solver tests (NumPy only, float64).

``alpha = 0`` semi-analytic solution of docs/theory.md "Verification problems": every point moves
by ``theta' = -mu(t) sin(theta)`` (zonal, any d; and the circle, d = 2, with ``theta`` the signed
angle to the mean direction), so ``tan(theta/2) = tan(theta_0/2) e^{-s(t)}`` with
``s' = mu(s) = E_{theta_0}[cos(2 arctan(tan(theta_0/2) e^{-s}))]``.  ``s`` is integrated by RK4 with
a fine step and the expectation by Gauss–Legendre quadrature, both to ~1e-13.
Exact cell masses at time t come from the initial CDF: a cell ``[a, b]`` holds
``CDF_0(theta_0(b)) - CDF_0(theta_0(a))`` with ``theta_0(theta) = 2 arctan(tan(theta/2) e^{s})``.
"""

from __future__ import annotations

import numpy as np


def vmf3_log_marginal(kappa: float):
    """``log f_0`` of the zonal marginal of vMF(kappa) on S^2: ``kappa e^{kappa cos} sin / (2 sinh kappa)``."""
    c = np.log(kappa) - np.log1p(-np.exp(-2 * kappa))
    return lambda th: c + kappa * (np.cos(th) - 1.0) + np.log(np.sin(th))


def vmf3_cdf(kappa: float):
    return lambda th: -np.expm1(kappa * (np.cos(th) - 1.0)) / -np.expm1(-2 * kappa)


def von_mises_log_density(kappa: float):
    """Von Mises density on the circle, ``theta in (-pi, pi]``: ``e^{kappa cos} / (2 pi I0(kappa))``."""
    x, w = np.polynomial.legendre.leggauss(200)
    i0 = np.sum(np.pi * w * np.exp(kappa * np.cos(np.pi * x))) / np.pi / 2  # I0(kappa) e^0 / ... via quadrature
    lognorm = np.log(2 * np.pi * i0)
    return lambda th: kappa * np.cos(th) - lognorm


def _quad_cdf(log_f, lo, n=64):
    x, w = np.polynomial.legendre.leggauss(n)

    def cdf(th):
        th = np.asarray(th, dtype=np.float64)
        half = 0.5 * (th - lo)
        nodes = half[..., None] * x + (0.5 * (th + lo))[..., None]
        return np.sum(half[..., None] * w * np.exp(log_f(nodes)), axis=-1)

    return cdf


def alpha0_s(log_f0, lo: float, hi: float, t: np.ndarray, merge: float = 1.0, n_quad: int = 400, dt: float = 1e-3):
    """``s(t)`` and ``mu(t)`` of the alpha = 0 solution (initial marginal ``exp(log_f0)`` on ``[lo, hi]``)."""
    x, w = np.polynomial.legendre.leggauss(n_quad)
    th0 = 0.5 * (hi - lo) * x + 0.5 * (hi + lo)
    p = 0.5 * (hi - lo) * w * np.exp(log_f0(th0))
    u0 = np.tan(th0 / 2)

    def mu(s):
        u = u0 * np.exp(-s)
        return np.sum(p * (1 - u**2) / (1 + u**2)) / merge

    t = np.asarray(t, dtype=np.float64)
    out_s, s, tc = [], 0.0, 0.0
    for target in t:
        n = max(1, int(np.ceil((target - tc) / dt)))
        k = (target - tc) / n
        for _ in range(n):
            k1 = mu(s); k2 = mu(s + 0.5 * k * k1); k3 = mu(s + 0.5 * k * k2); k4 = mu(s + k * k3)
            s += k * (k1 + 2 * k2 + 2 * k3 + k4) / 6
        tc = target
        out_s.append(s)
    out_s = np.array(out_s)
    return out_s, np.array([mu(si) * merge for si in out_s])


def alpha0_cell_masses(cdf0, edges: np.ndarray, s: float) -> np.ndarray:
    """Exact cell masses at the time where ``s(t) = s`` (edges within ``(-pi, pi]``)."""
    th0 = 2 * np.arctan2(np.sin(edges / 2) * np.exp(s), np.cos(edges / 2))
    return np.diff(cdf0(th0))
