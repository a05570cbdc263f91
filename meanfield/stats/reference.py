"""Reference solutions for verification (docs/theory.md "Verification problems"), in float64 NumPy/SciPy.

Semi-analytic zonal solution for ``alpha = 0``: every token moves by ``theta' = -mu(t) sin(theta)/M``
with ``mu = E[cos theta] = |m|``, so ``tan(theta/2) = tan(theta_0/2) e^{-s(t)}`` with
``s' = mu(s)/M``, ``mu(s) = E_{theta_0 ~ f_0}[cos(2 arctan(tan(theta_0/2) e^{-s}))]``. The
expectation is a Gauss--Legendre sum over ``theta_0`` and the scalar ODE is solved with DOP853 at
``rtol = 1e-13``: the result is accurate to ~1e-12, independent of every solver in the package.
"""

from __future__ import annotations

import numpy as np


def _theta0_rule(dist, n_nodes: int):
    x, w = np.polynomial.legendre.leggauss(n_nodes)
    theta = 0.5 * np.pi * (x + 1.0)
    with np.errstate(divide="ignore"):
        f = np.exp(dist.zonal_log_marginal(theta))
    weights = 0.5 * np.pi * w * f
    return theta, weights / weights.sum()


def _mean_cos(s, theta0, weights):
    # cos(theta) for tan(theta/2) = tan(theta0/2) e^{-s}, written without tan: with
    # c = cos(theta0/2), q = sin(theta0/2) e^{-s}: cos(theta) = (c^2 - q^2)/(c^2 + q^2).
    c = np.cos(0.5 * theta0)
    q = np.sin(0.5 * theta0) * np.exp(-s)
    return float(np.sum(weights * (c * c - q * q) / (c * c + q * q)))


def zonal_alpha0_solution(dist, t, merge: float = 1.0, n_nodes: int = 800) -> dict:
    """``s(t)`` and ``mean_cos(t) = |m|(t)`` of the ``alpha = 0`` flow from an axisymmetric ``dist``.

    ``t`` is an increasing array of times (t >= 0); ``merge`` is the mobility factor M.
    """
    t = np.asarray(t, dtype=np.float64)
    theta0, w = _theta0_rule(dist, n_nodes)
    rhs = lambda _t, s: [_mean_cos(s[0], theta0, w) / merge]  # noqa: E731
    if t.size and t.max() > 0:
        from scipy.integrate import solve_ivp

        sol = solve_ivp(rhs, (0.0, float(t.max())), [0.0], method="DOP853", rtol=1e-13, atol=1e-15,
                        dense_output=True)
        s = np.where(t > 0, sol.sol(np.maximum(t, 0.0))[0], 0.0)
    else:
        s = np.zeros_like(t)
    return {"t": t, "s": s, "mean_cos": np.array([_mean_cos(si, theta0, w) for si in s])}


def zonal_alpha0_density(dist, t, theta, merge: float = 1.0) -> np.ndarray:
    """Push-forward density ``f(theta, t)`` (shape ``(len(t), len(theta))``) of the alpha = 0 flow.

    ``theta_0 = 2 atan2(sin(theta/2) e^s, cos(theta/2))`` and
    ``d theta_0 / d theta = e^s / (cos^2(theta/2) + e^{2s} sin^2(theta/2))``.
    """
    s = zonal_alpha0_solution(dist, t, merge)["s"][:, None]
    theta = np.asarray(theta, dtype=np.float64)[None, :]
    half_s, half_c = np.sin(0.5 * theta), np.cos(0.5 * theta)
    es = np.exp(s)
    theta0 = 2.0 * np.arctan2(half_s * es, half_c)
    jac = es / (half_c**2 + es**2 * half_s**2)
    with np.errstate(divide="ignore"):
        return np.exp(dist.zonal_log_marginal(theta0)) * jac
