"""The paper's predictions as functions, and this project's exact results beside them.

Paper: Li, Luo, Shi, Gu, "Analyzing the Mechanism of Attention Collapse in VGGT from a Dynamics
Perspective", arXiv:2512.21691.  Equation numbers below are the paper's; docs/theory.md ("The paper's
laws", "Entropy: the exact identity") says which of them this package believes and why.

Conventions: ``N`` tokens, merge factor ``M >= 1`` (the paper's down-sampling factor "d"), fusion
strength ``m in [0, 1)`` with ``M = 1/(1-m)``, layer index ``l`` (or depth ``L``).  Every law is
vectorised with NumPy broadcasting and returns float64 NumPy arrays (or floats for scalar input).

The paper's laws are *descriptive*: ``C``, ``alpha``, ``k`` are free constants to be fitted
(see :mod:`meanfield.fit`).  The fitted ``alpha`` of the rank law is a rate constant in units of
``l/(N M)``; it is not the attention kernel's inverse temperature (docs/theory.md).
"""

from __future__ import annotations

import dataclasses

import numpy as np

__all__ = [
    "rank_law", "entropy_law_inverse", "entropy_law_linear", "entropy_vs_fusion",
    "merge_from_fusion", "fusion_from_merge", "collapse_time_scaling", "attention_cost",
    "relative_attention_cost", "effective_rank_from_normalized_entropy",
    "linear_entropy_rate", "linear_entropy_rate_from_moments", "integrate_entropy_rate",
    "CrossingTime", "collapse_time", "rank_collapse_time",
]


def _f(v):
    out = np.asarray(v, dtype=np.float64)
    return float(out) if out.ndim == 0 else out


def merge_from_fusion(m):
    """Merge factor ``M = 1/(1-m)`` from the fusion strength ``m in [0, 1)`` (paper §5.1, below Eq. 13)."""
    m = np.asarray(m, dtype=np.float64)
    if np.any(~np.isfinite(m)) or np.any((m < 0) | (m >= 1)):
        raise ValueError(f"fusion strength m must lie in [0, 1), got {m.tolist()}")
    return _f(1.0 / (1.0 - m))


def fusion_from_merge(merge):
    """Fusion strength ``m = 1 - 1/M`` from the merge factor ``M >= 1`` (inverse of :func:`merge_from_fusion`)."""
    M = np.asarray(merge, dtype=np.float64)
    if np.any(~np.isfinite(M)) or np.any(M < 1):
        raise ValueError(f"merge factor M must be >= 1, got {M.tolist()}")
    return _f(1.0 - 1.0 / M)


def rank_law(layer, *, alpha, C, r=1.0, N, merge=1.0):
    """Rank bound ``r + C exp(-alpha l / (N M))`` (paper Eq. 9 and Eq. 15; ``merge=1`` is Eq. 1).

    ``layer`` is the block index ``l``; ``r`` the dominant subspace dimension (paper: typically 1).
    Only ``alpha/(N M)`` enters, so ``alpha`` is a rate per ``l/(N M)``, not a temperature.
    """
    s = np.asarray(layer, dtype=np.float64) / (np.asarray(N, dtype=np.float64) * np.asarray(merge, dtype=np.float64))
    return _f(r + C * np.exp(-alpha * s))


def entropy_law_inverse(depth, *, H0, k, merge=1.0):
    """Entropy after depth ``L``: ``H(L) = H0 - k/(M L)`` (paper Eq. 6; with ``M`` Eq. 8).

    The paper writes ``H(0) - O(1/(M L))``; this is the concrete form we implement, with ``k``
    a free constant.  Note that this form *rises* towards ``H0`` as ``L`` grows, which is not what
    the flow does: for the linear kernel ``H`` decreases without bound (docs/theory.md "Entropy: the exact
    identity").  It is shipped so that data can be compared against it, not because it is right.
    """
    L = np.asarray(depth, dtype=np.float64)
    if np.any(L <= 0):
        raise ValueError("entropy_law_inverse needs depth L > 0 (the form k/(M L) is singular at 0)")
    return _f(H0 - k / (np.asarray(merge, dtype=np.float64) * L))


def entropy_law_linear(depth, *, H0, k, N, merge=1.0):
    """Entropy after depth ``L``: ``H = H0 - k L / (N M)`` (paper Eq. 13, ``M = 1/(1-m)``)."""
    L = np.asarray(depth, dtype=np.float64)
    return _f(H0 - k * L / (np.asarray(N, dtype=np.float64) * np.asarray(merge, dtype=np.float64)))


def entropy_vs_fusion(m, *, H0, kappa):
    """Eq. 13 at fixed depth as a function of the fusion strength: ``H = H0 - kappa (1 - m)``.

    With ``M = 1/(1-m)``, ``k L/(N M) = kappa (1-m)`` where ``kappa = k L / N``: the law is a
    straight line in ``m``.  Table 1's "Theory" entropy column is exactly such a line.
    """
    m = np.asarray(m, dtype=np.float64)
    merge_from_fusion(m)  # validates the range
    return _f(H0 - kappa * (1.0 - m))


def collapse_time_scaling(tau, merge):
    """Collapse time with merging: ``tau' = M tau`` (paper Eq. 10).

    Exact for the mobility model (velocity times ``1/M`` is the time change ``t -> t/M``,
    docs/theory.md "Merging as mobility"); whether real token merging obeys it is an empirical question.
    """
    return _f(np.asarray(tau, dtype=np.float64) * np.asarray(merge, dtype=np.float64))


def attention_cost(N, merge=1.0, *, c=1.0):
    """Dense attention cost ``c (N/M)^2`` (paper Eq. 11: ``O((DT)^2) -> O((DT/d)^2)``)."""
    return _f(c * (np.asarray(N, dtype=np.float64) / np.asarray(merge, dtype=np.float64)) ** 2)


def relative_attention_cost(m):
    """Cost relative to ``m = 0`` predicted by Eq. 11: ``(N/M)^2 / N^2 = (1 - m)^2``.

    Table 2's measured runtimes (1.00, 0.61, 0.38, 0.22, 0.12) are *not* this curve: the rest of
    the network does not shrink with merging (see examples/paper_tables.py).
    """
    m = np.asarray(m, dtype=np.float64)
    merge_from_fusion(m)
    return _f((1.0 - m) ** 2)


def effective_rank_from_normalized_entropy(h, n):
    """``r_eff = exp(H_sv) = n ** h`` when ``h = H_sv / log n`` (docs/theory.md "Diagnostics", Eq. 14).

    So effective rank and normalized entropy of the same ``n``-row spectrum carry one number;
    Table 1 satisfies this with ``n = 500`` on every row.
    """
    return _f(float(n) ** np.asarray(h, dtype=np.float64))


# ---------------------------------------------------------------- exact results (docs/theory.md)

def linear_entropy_rate_from_moments(mean, second_moment, alpha, merge=1.0):
    """``dH/dt = (1/M)[ -(d-1)|m|^2 + alpha (tr S - d tr(S Q)) ]`` for the linear kernel.

    docs/theory.md "Entropy: the exact identity": ``m`` the mean (..., d), ``Q`` the second moment (..., d, d)
    of a measure on the unit sphere (``tr Q = 1``), ``S = Q - m m^T``.  Exact; works on batches.
    The paper's Eq. 5 (a Fisher-information decay) is replaced by this identity.
    """
    m = np.asarray(mean, dtype=np.float64)
    Q = np.asarray(second_moment, dtype=np.float64)
    if m.shape[-1:] != Q.shape[-1:] or Q.shape[-2:] != (m.shape[-1], m.shape[-1]):
        raise ValueError(f"mean (..., d) and second_moment (..., d, d) shapes disagree: {m.shape}, {Q.shape}")
    d = m.shape[-1]
    S = Q - m[..., :, None] * m[..., None, :]
    trS = np.trace(S, axis1=-2, axis2=-1)
    trSQ = np.einsum("...ij,...ji->...", S, Q)
    m2 = np.sum(m * m, axis=-1)
    return _f((-(d - 1) * m2 + alpha * (trS - d * trSQ)) / float(merge))


def linear_entropy_rate(x, alpha, merge=1.0):
    """Entropy production ``dH/dt`` of the linear-kernel flow at the empirical measure of ``x``.

    ``x`` has shape (N, d) or (..., N, d); rows are normalised to the unit sphere first.  This is
    the mean-field rate ``E_rho[div_S v]`` evaluated at the empirical moments (docs/theory.md), computed
    in NumPy independently of any simulator, so it can check one.
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim < 2 or x.shape[-1] < 2:
        raise ValueError(f"x must have shape (..., N, d) with d >= 2, got {x.shape}")
    x = x / np.linalg.norm(x, axis=-1, keepdims=True)
    n = x.shape[-2]
    m = x.mean(axis=-2)
    Q = np.einsum("...ni,...nj->...ij", x, x) / n
    return linear_entropy_rate_from_moments(m, Q, alpha, merge)


def integrate_entropy_rate(t, rates):
    """``H(t) - H(t_0)`` by the trapezoid rule along a solution; first entry is 0.

    ``t`` (n,) increasing times, ``rates`` (n,) values of ``dH/dt`` at those times
    (e.g. ``FlowSolution.diagnostics["entropy_rate"]``).  Error O(max dt^2).
    """
    t = np.asarray(t, dtype=np.float64)
    q = np.asarray(rates, dtype=np.float64)
    if t.ndim != 1 or q.shape != t.shape or t.size < 1:
        raise ValueError(f"t and rates must be 1-D of equal length, got {t.shape} and {q.shape}")
    if np.any(np.diff(t) <= 0):
        raise ValueError("t must be strictly increasing")
    out = np.zeros_like(t)
    out[1:] = np.cumsum(0.5 * (q[1:] + q[:-1]) * np.diff(t))
    return out


@dataclasses.dataclass(frozen=True)
class CrossingTime:
    """When a monitored curve first crossed its threshold.

    ``reached`` says whether it did; if not, ``time`` and ``index`` are ``None`` (never a fake
    number) and ``message`` says how far the curve got.  ``float(result)`` raises in that case.
    """

    reached: bool
    time: float | None
    index: int | None
    threshold: float
    message: str

    def __float__(self) -> float:
        if not self.reached:
            raise ValueError(self.message)
        return float(self.time)


def collapse_time(t, values, threshold=0.99, *, direction="up"):
    """First time ``values`` crosses ``threshold`` (linear interpolation between saves).

    Default use: the order parameter ``|m|(t)`` rising through 0.99 (``direction="up"``); use
    ``direction="down"`` for a decreasing quantity.  If ``values[0]`` is already past the threshold
    the time is ``t[0]``.  Not reached -> ``CrossingTime(reached=False, time=None, ...)``.
    """
    t = np.asarray(t, dtype=np.float64)
    v = np.asarray(values, dtype=np.float64)
    if t.ndim != 1 or v.shape != t.shape or t.size < 1:
        raise ValueError(f"t and values must be 1-D of equal length, got {t.shape} and {v.shape}")
    if np.any(~np.isfinite(t)) or np.any(~np.isfinite(v)):
        raise ValueError("t and values must be finite")
    if np.any(np.diff(t) <= 0):
        raise ValueError("t must be strictly increasing")
    if direction not in ("up", "down"):
        raise ValueError(f"direction must be 'up' or 'down', got {direction!r}")
    s = v - threshold if direction == "up" else threshold - v
    hit = np.flatnonzero(s >= 0)
    if hit.size == 0:
        best = v.max() if direction == "up" else v.min()
        return CrossingTime(False, None, None, float(threshold),
                            f"threshold {threshold:g} not reached by t = {t[-1]:g} (extreme value {best:g})")
    i = int(hit[0])
    if i == 0:
        return CrossingTime(True, float(t[0]), 0, float(threshold), "already past threshold at t[0]")
    frac = -s[i - 1] / (s[i] - s[i - 1])
    time = float(t[i - 1] + frac * (t[i] - t[i - 1]))
    return CrossingTime(True, time, i, float(threshold), f"crossed between saves {i - 1} and {i}")


def rank_collapse_time(t, effective_rank, factor=np.e):
    """First time the effective rank falls to ``effective_rank[0] / factor`` (default factor e).

    This is the e-folding time of the rank excess when the rank decays like ``C exp(-t/tau)`` with
    ``r = 0``; for the rank law with plateau ``r > 0`` it is a definition, not ``tau`` itself.
    """
    r = np.asarray(effective_rank, dtype=np.float64)
    if r.ndim != 1 or r.size < 1 or not np.isfinite(r[0]) or r[0] <= 0:
        raise ValueError("effective_rank must be 1-D with a positive finite first value")
    if not factor > 1:
        raise ValueError(f"factor must be > 1, got {factor}")
    return collapse_time(t, r, float(r[0] / factor), direction="down")
