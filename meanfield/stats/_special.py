"""Host-side special functions in float64 (NumPy/SciPy), for constants computed once."""

from __future__ import annotations

import math

import numpy as np

from solvers.quadrature import log_sphere_area  # noqa: E402,F401  (the one definition; d convention)


def log_bessel_iv(nu: float, x: float) -> float:
    """``log I_nu(x)`` for ``nu >= 0``, ``x > 0``, accurate to ~1e-14 relative over the whole range.

    Uses SciPy's exponentially scaled ``ive`` (AMOS, with uniform asymptotics for large order)
    where its value is a normal float; where it underflows (order >> argument, e.g. d = 1024 with
    small kappa) it falls back to the power series ``sum_k (x/2)^{2k+nu} / (k! Gamma(nu+k+1))``
    summed in log space, which converges fast exactly there.
    """
    from scipy import special  # here: the CLIs that never need a Bessel function skip its import

    if x <= 0:
        raise ValueError(f"log_bessel_iv needs x > 0, got {x!r}")
    v = special.ive(nu, x)
    if np.isfinite(v) and v > 1e-290:
        return float(math.log(v) + x)
    n_terms = int(x + 10.0 * math.sqrt(x) + 60)
    k = np.arange(n_terms, dtype=np.float64)
    terms = (2 * k + nu) * math.log(0.5 * x) - special.gammaln(k + 1) - special.gammaln(nu + k + 1)
    return float(special.logsumexp(terms))


def mean_resultant_length(d: int, kappa: float) -> float:
    """``A_d(kappa) = I_{d/2}(kappa) / I_{d/2-1}(kappa)`` = E[cos theta] of a vMF on S^{d-1}."""
    if kappa == 0:
        return 0.0
    return float(math.exp(log_bessel_iv(0.5 * d, kappa) - log_bessel_iv(0.5 * d - 1, kappa)))
