"""The fitting functions of :mod:`meanfield.fit` (re-exported there; import them from ``meanfield.fit``).

Fit the paper's laws to measured rank and entropy curves, with honest uncertainties.

Least squares ``min sum w_i^2 (f(theta, x_i) - y_i)^2`` with ``w = 1/sigma`` (or 1).  Optimizer
(``meanfield.fit._core``): Levenberg–Marquardt from several starts in NumPy float64 (the default,
``optimizer="lm"``), optionally after optax L-BFGS (``"lbfgs+lm"``, jitted, float64 via
``jax.enable_x64`` whatever the user's global setting).  Positive parameters are fitted
on a log scale.  Uncertainties: covariance ``s^2 (J^T W J)^{-1}`` from the Jacobian (complex step; ``jax.jacfwd`` with ``lbfgs+lm``)
with ``s^2 = RSS/(n - p)`` when ``sigma`` is not given (t quantile with n - p dof), or ``s^2 = 1``
when it is (normal quantile).  Intervals of positive parameters are computed on the log scale and
mapped back (asymmetric, never negative).  Problems are reported in ``FitResult.messages`` and
``FitResult.ok``, never hidden.

Identifiability: in the rank law only ``alpha/(N M)`` enters, so the fitted ``alpha`` is the rate
for the given ``N`` and ``merge``; it is a rate constant, not the kernel's inverse temperature.

``python -m meanfield.fit DATA`` (or ``meanfield-fit DATA``) is the command line (``meanfield.fit.cli``).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from statistics import NormalDist

import numpy as np

from . import _core as core
from . import _models as fm
from ._models import MODELS, CurveModel

LEVEL = 0.95


def _quantile(dof: int | None) -> float:
    """Two-sided ``LEVEL`` quantile: of the normal law (``dof=None``), else of Student's t.

    Without scipy (``import scipy.special`` alone costs ~0.7 s, most of a first fit): the normal
    quantile from ``statistics.NormalDist`` (Wichura's AS 241, full double precision), the t
    quantile by Newton's method on the closed form of ``P(|T| < t)`` for integer ``dof``
    (Abramowitz & Stegun 26.7.3-4); equal to ``scipy.special.stdtrit`` to 1e-12 relative
    (tests/test_fit_engine.py)."""
    if dof is None:
        return NormalDist().inv_cdf(0.5 + LEVEL / 2)
    return _t_two_sided(int(dof), LEVEL)


def _t_central(t: float, nu: int) -> float:
    """``P(|T| < t)`` for Student's t with integer ``nu`` >= 1 (A&S 26.7.3/26.7.4)."""
    th = math.atan(t / math.sqrt(nu))
    s, c2 = math.sin(th), math.cos(th) ** 2
    if nu % 2 == 0:  # sin(th) [1 + 1/2 c^2 + 1.3/(2.4) c^4 + ... + 1.3...(nu-3)/(2.4...(nu-2)) c^(nu-2)]
        term = total = 1.0
        for k in range(2, nu, 2):
            term *= c2 * (k - 1) / k
            total += term
        return s * total
    if nu == 1:
        return 2.0 * th / math.pi
    term = total = 1.0  # (2/pi)[th + sin cos (1 + 2/3 c^2 + ... + 2.4...(nu-3)/(3.5...(nu-2)) c^(nu-3))]
    for k in range(3, nu - 1, 2):
        term *= c2 * (k - 1) / k
        total += term
    return 2.0 / math.pi * (th + s * math.sqrt(c2) * total)


@functools.lru_cache(maxsize=256)
def _t_two_sided(nu: int, level: float) -> float:
    """``t`` with ``P(|T| < t) = level``: Newton from the normal quantile, on the t density."""
    t = NormalDist().inv_cdf(0.5 + level / 2)
    t = t if nu > 4 else {1: 12.7, 2: 4.3, 3: 3.18, 4: 2.78}[nu] if level == 0.95 else t * 2
    logc = math.lgamma((nu + 1) / 2) - math.lgamma(nu / 2) - 0.5 * math.log(nu * math.pi)
    for _ in range(50):
        dens = 2.0 * math.exp(logc - (nu + 1) / 2 * math.log1p(t * t / nu))  # d/dt P(|T| < t)
        dt = (_t_central(t, nu) - level) / dens
        t = max(t - dt, 0.5 * t)
        if abs(dt) <= 1e-15 * t:
            break
    return t


COND_LIMIT = 1e8  # condition number of the column-scaled Jacobian above which we call it singular


@dataclasses.dataclass(frozen=True)
class ModelComparison:
    """Rows of (model, formula, k, rss, r2, aic, bic, delta_aic, delta_bic, ok), best AIC first."""

    rows: tuple[dict, ...]

    @property
    def best(self) -> str:
        return self.rows[0]["model"]

    def __str__(self) -> str:
        head = f"{'model':<22} {'k':>2} {'RSS':>11} {'R2':>8} {'AIC':>9} {'dAIC':>7} {'dBIC':>7}  ok  formula"
        lines = [head]
        for r in self.rows:
            lines.append(f"{r['model']:<22} {r['k']:>2} {r['rss']:>11.4g} {r['r2']:>8.4f} "
                         f"{r['aic']:>9.2f} {r['delta_aic']:>7.2f} {r['delta_bic']:>7.2f}  "
                         f"{'yes' if r['ok'] else 'NO ':<3} {r['formula']}")
        return "\n".join(lines)


@dataclasses.dataclass(frozen=True)
class FitResult:
    """One fitted model.

    ``ok`` is False unless the optimizer converged, every parameter is identifiable and the
    covariance is defined; ``messages`` says why (and may carry notes that do not affect ``ok``,
    e.g. a slope with the sign opposite to the law).  ``starts_at_best`` counts the starting
    points (of ``meanfield.fit._models.N_STARTS``) that reached the best cost.
    """

    model: CurveModel
    x: np.ndarray
    y: np.ndarray
    sigma: np.ndarray | None
    consts: np.ndarray
    u: np.ndarray  # internal parameters (log scale for positive ones)
    cov_u: np.ndarray  # covariance of u; NaN where undefined (see messages)
    estimates: dict
    stderr: dict
    intervals: dict
    fitted: np.ndarray
    residuals: np.ndarray
    rss: float  # weighted residual sum of squares (chi^2 when sigma is given)
    r2: float
    aic: float
    bic: float
    dof: int
    converged: bool
    identifiable: bool
    messages: tuple[str, ...]
    starts_at_best: int = 1
    comparison: ModelComparison | None = None

    @property
    def ok(self) -> bool:
        return self.converged and self.identifiable and self.dof >= 0 and np.all(np.isfinite(self.cov_u))

    @property
    def quantile(self) -> float:
        """Two-sided 95 % quantile: normal if sigma was given, else t with ``dof`` degrees."""
        if self.sigma is not None:
            return _quantile(None)
        return _quantile(self.dof) if self.dof > 0 else float("inf")

    def predict(self, x) -> np.ndarray:
        return core.values_and_jacobian(self.model, self.u, np.atleast_1d(x), self.consts)[0]

    def band(self, x) -> tuple[np.ndarray, np.ndarray]:
        """95 % pointwise confidence band of the fitted curve (delta method)."""
        x = np.atleast_1d(np.asarray(x, dtype=np.float64))
        f, G = core.values_and_jacobian(self.model, self.u, x, self.consts)
        half = self.quantile * np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", G, self.cov_u, G), 0.0))
        return f - half, f + half

    def summary(self) -> str:
        lines = [f"model {self.model.name}: {self.model.formula}",
                 f"  n = {self.y.size}, dof = {self.dof}, RSS = {self.rss:.6g}, R2 = {self.r2:.6f}, "
                 f"AIC = {self.aic:.3f}, BIC = {self.bic:.3f}, converged = {self.converged} "
                 f"({self.starts_at_best} of {fm.N_STARTS} starts at the best cost)",
                 f"  {'param':<8} {'estimate':>13} {'std.err':>11} {'95% interval':>29}"]
        for p in self.model.params:
            lo, hi = self.intervals[p]
            if np.isfinite(self.stderr[p]):
                lines.append(f"  {p:<8} {self.estimates[p]:>13.6g} {self.stderr[p]:>11.4g} "
                             f"   [{lo:>11.6g}, {hi:>11.6g}]")
            else:
                lines.append(f"  {p:<8} {self.estimates[p]:>13.6g} {'undefined':>11}    (see notes)")
        lines += [f"  note: {m}" for m in self.messages]
        if self.comparison is not None:
            lines += ["model comparison (lower AIC/BIC is better):", str(self.comparison)]
        return "\n".join(lines)

    __str__ = summary


def _validate(x, y, sigma):
    x = np.asarray(x, dtype=np.float64).ravel()
    y = np.asarray(y, dtype=np.float64).ravel()
    if x.size != y.size:
        raise ValueError(f"x and y must have the same length, got {x.size} and {y.size}")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise ValueError("data contain NaN or infinite values")
    if sigma is not None:
        sigma = np.broadcast_to(np.asarray(sigma, dtype=np.float64), y.shape).copy()
        if not np.all(np.isfinite(sigma) & (sigma > 0)):
            raise ValueError("sigma must be finite and > 0 for every point")
    return x, y, sigma


def fit_curve(model, x, y, *, sigma=None, consts=(1.0, 0.0, 1.0), compare=(), optimizer="lm"):
    """Fit ``model`` (a :class:`CurveModel` or a name in ``MODELS``) to ``(x, y)``.

    Raises ``ValueError`` for unusable input (NaN, mismatched lengths, fewer points than
    parameters, an abscissa outside the model's domain).  Exactly determined fits (n = p) are
    returned with ``dof = 0`` and a message; their errors are undefined unless ``sigma`` is given.
    ``compare``: alternative models to fit to the same data; the table is ``result.comparison``.
    """
    if isinstance(model, str):
        if model not in MODELS:
            raise ValueError(f"unknown model {model!r}; known: {', '.join(MODELS)}")
        model = MODELS[model]
    x, y, sigma = _validate(x, y, sigma)
    c = np.asarray(consts, dtype=np.float64)
    n, p = y.size, len(model.params)
    if n < p:
        raise ValueError(f"{n} data points cannot determine the {p} parameters of {model.name} "
                         f"({', '.join(model.params)})")
    if model.domain is not None and (why := model.domain(x, c)):
        raise ValueError(f"model {model.name} does not apply: {why}")
    w = np.ones_like(y) if sigma is None else 1.0 / sigma
    starts = np.asarray(model.starts(x, y, c), dtype=np.float64)
    if optimizer not in ("lbfgs+lm", "lm"):
        raise ValueError(f"optimizer must be 'lbfgs+lm' or 'lm', got {optimizer!r}")
    if starts.shape != (fm.N_STARTS, p) or not np.all(np.isfinite(starts)):
        raise ValueError(f"model {model.name} produced bad starting values {starts.tolist()}")
    us, costs, conv, its = core.solve(model, starts, x, y, w, c, use_lbfgs=optimizer == "lbfgs+lm")
    costs = np.where(np.isfinite(costs), costs, np.inf)
    # best cost; among starts tied to round-off, prefer one whose convergence test passed
    tied = costs <= costs.min() * (1 + 1e-9) + 1e-300
    best = int(np.flatnonzero(tied & conv)[0]) if np.any(tied & conv) else int(np.argmin(costs))
    res = _assemble(model, x, y, sigma, c, w, us[best], bool(conv[best]), int(its[best]), costs)
    if compare:
        res = compare_models([res] + [_try_fit(m, x, y, sigma, c, optimizer) for m in compare])
    return res


def _try_fit(model, x, y, sigma, c, optimizer):
    model = MODELS[model] if isinstance(model, str) else model
    try:
        return fit_curve(model, x, y, sigma=sigma, consts=c, optimizer=optimizer)
    except ValueError as err:
        return (model, str(err))


def _assemble(model, x, y, sigma, c, w, u, converged, iters, costs):
    n, p = y.size, len(model.params)
    dof = n - p
    msgs = []
    if not converged:
        msgs.append(f"optimizer did not converge ({iters} Levenberg-Marquardt iterations)")
    fitted, J = core.values_and_jacobian(model, u, x, c)
    resid = y - fitted
    rss = float(np.sum((resid * w) ** 2))
    J = J * w[:, None]
    identifiable = True
    cov = np.full((p, p), np.nan)
    at_bound = np.asarray(model.positive) & (np.abs(u) >= core.U_BOUND - 1e-6)
    if at_bound.any():
        identifiable = False
        names = [model.params[i] for i in np.flatnonzero(at_bound)]
        msgs.append(f"parameter(s) {', '.join(names)} ran to 0 or infinity: not identifiable from these data")
    colnorm = np.linalg.norm(J, axis=0)
    if not np.all(np.isfinite(J)):
        identifiable = False
        msgs.append("Jacobian is not finite at the estimate")
    else:
        scale = np.where(colnorm > 0, colnorm, 1.0)
        Js = J / scale
        _, sv, vt = np.linalg.svd(Js, full_matrices=False)
        cond = np.inf if sv[-1] <= 0 or colnorm.min() <= 1e-12 * max(colnorm.max(), 1e-300) else sv[0] / sv[-1]
        if cond > COND_LIMIT:
            identifiable = False
            weak = set(np.flatnonzero(colnorm <= 1e-12 * max(colnorm.max(), 1e-300)))
            for k in np.flatnonzero(sv <= sv[0] / COND_LIMIT):
                weak |= set(np.flatnonzero(np.abs(vt[k]) > 0.3))
            names = ", ".join(model.params[i] for i in sorted(weak))
            msgs.append(f"J^T J is singular or ill-conditioned (condition {cond:.3g}): "
                        f"parameter(s) {names} not identifiable from these data")
        else:
            inv = (vt.T / sv**2) @ vt / np.outer(scale, scale)
            s2 = 1.0 if sigma is not None else (rss / dof if dof > 0 else np.nan)
            if dof == 0 and sigma is None:
                msgs.append(f"exactly determined: {n} points for {p} parameters, no residual degrees "
                            f"of freedom, so standard errors are undefined")
            else:
                cov = s2 * inv
    se_u = np.sqrt(np.diag(cov))
    theta = _theta(model, u)
    q = _quantile(None) if sigma is not None else _quantile(dof) if dof > 0 else np.inf
    est, se, ci = {}, {}, {}
    for i, name in enumerate(model.params):
        est[name] = float(theta[i])
        if model.positive[i]:
            se[name] = float(theta[i] * se_u[i])
            ci[name] = (float(np.exp(u[i] - q * se_u[i])), float(np.exp(u[i] + q * se_u[i])))
        else:
            se[name] = float(se_u[i])
            ci[name] = (float(u[i] - q * se_u[i]), float(u[i] + q * se_u[i]))
    wy = np.average(y, weights=w**2)
    sst = float(np.sum(((y - wy) * w) ** 2))
    if sst > 0:
        r2 = 1.0 - rss / sst
    else:
        r2 = np.nan
        msgs.append("R2 undefined: the data have zero spread (a flat curve)")
    if sigma is not None:
        aic, bic = rss + 2 * p, rss + p * np.log(n)
    else:  # Gaussian likelihood with the noise variance as one more parameter
        ll = -0.5 * n * (np.log(2 * np.pi * max(rss, 1e-300) / n) + 1)
        aic, bic = -2 * ll + 2 * (p + 1), -2 * ll + (p + 1) * np.log(n)
    finite = costs[np.isfinite(costs)]
    at_best = int(np.sum(finite <= finite.min() * (1 + 1e-6) + 1e-300)) if finite.size else 0
    return FitResult(model, x, y, sigma, c, np.asarray(u), cov, est, se, ci, fitted, resid, rss,
                     float(r2), float(aic), float(bic), dof, converged, identifiable, tuple(msgs),
                     at_best)


def _theta(model, u):
    pos = np.asarray(model.positive)
    return np.where(pos, np.exp(np.clip(u, -core.U_BOUND, core.U_BOUND)), u)


def compare_models(results) -> FitResult:
    """Attach an AIC/BIC table of ``results`` (FitResults on the same data) to the first one.

    Entries may also be ``(model, reason)`` pairs for models that could not be fitted; they are
    listed last with their reason.  Returns the first result with ``comparison`` set.
    """
    fitted = [r for r in results if isinstance(r, FitResult)]
    amin = min(r.aic for r in fitted)
    bmin = min(r.bic for r in fitted)
    rows = sorted(({"model": r.model.name, "formula": r.model.formula, "k": len(r.model.params),
                    "rss": r.rss, "r2": r.r2, "aic": r.aic, "bic": r.bic,
                    "delta_aic": r.aic - amin, "delta_bic": r.bic - bmin, "ok": bool(r.ok)}
                   for r in fitted), key=lambda row: row["aic"])
    for m, why in (r for r in results if not isinstance(r, FitResult)):
        rows.append({"model": m.name, "formula": f"{m.formula}  [not fitted: {why}]",
                     "k": len(m.params), "rss": np.nan, "r2": np.nan, "aic": np.nan, "bic": np.nan,
                     "delta_aic": np.nan, "delta_bic": np.nan, "ok": False})
    return dataclasses.replace(results[0], comparison=ModelComparison(tuple(rows)))


def fit_rank_curve(layers, ranks, *, N, merge=1.0, r=None, sigma=None, compare=True,
                   optimizer="lm"):
    """Fit the rank law ``r + C exp(-alpha l/(N M))`` (Eq. 1/9/15) to a measured rank curve.

    Fits ``alpha`` and ``C`` (and ``r`` unless given).  ``alpha`` is identifiable only as
    ``alpha/(N M)``; the reported ``alpha`` is the rate for the given ``N`` and ``merge``.
    With ``compare`` the result carries a comparison with the pure exponential (r free if ``r`` was
    fixed, else ``r = 0``), the power law ``a (1+l)^(-b)`` and a straight line.
    """
    if not (N > 0 and merge >= 1):
        raise ValueError(f"need N > 0 and merge >= 1, got N={N}, merge={merge}")
    c = (1.0 / (N * merge), 0.0 if r is None else float(r), float(merge))
    model = fm.RANK_LAW if r is None else fm.RANK_LAW_FIXED_R
    alts = ((fm.EXPONENTIAL if r is None else fm.RANK_LAW), fm.POWER_LAW, fm.LINEAR) if compare else ()
    return fit_curve(model, layers, ranks, sigma=sigma, consts=c, compare=alts, optimizer=optimizer)


def fit_entropy_curve(x, entropy, *, variable="depth", N=1.0, merge=1.0, sigma=None, compare=True,
                      optimizer="lm"):
    """Fit Eq. 13 to an entropy curve.

    ``variable="depth"``: ``x`` is the depth/layer ``L``, model ``H0 - k L/(N M)``; compared with
    Eq. 6/8 ``H0 - k/(M L)`` (only if every L > 0) and a constant.
    ``variable="fusion"``: ``x`` is the fusion strength ``m``, model ``H0 - kappa (1 - m)`` with
    ``kappa = k L/N`` (Eq. 13 at fixed depth); compared with a constant.  A negative ``k`` or
    ``kappa`` means entropy grows with depth, against the law: the fit reports it as a message.
    """
    if variable == "depth":
        c = (1.0 / (N * merge), 0.0, float(merge))
        res = fit_curve(fm.ENTROPY_LINEAR, x, entropy, sigma=sigma, consts=c, optimizer=optimizer,
                        compare=(fm.ENTROPY_INVERSE, fm.CONSTANT) if compare else ())
    elif variable == "fusion":
        res = fit_curve(fm.ENTROPY_FUSION, _check_fusion(x), entropy, sigma=sigma, optimizer=optimizer,
                        compare=(fm.CONSTANT,) if compare else ())
    else:
        raise ValueError(f"variable must be 'depth' or 'fusion', got {variable!r}")
    slope = res.model.params[1]
    if res.estimates[slope] < 0:
        res = dataclasses.replace(res, messages=res.messages + (
            f"{slope} < 0: entropy increases with depth/decreases with merging, against Eq. 13",))
    return res


def _check_fusion(m):
    m = np.asarray(m, dtype=np.float64)
    if np.any(~np.isfinite(m)) or np.any((m < 0) | (m >= 1)):
        raise ValueError("fusion strengths m must lie in [0, 1)")
    return m


def fit_rank_vs_fusion(m, ranks, *, sigma=None, compare=True, optimizer="lm"):
    """Rank law at a fixed depth ``L`` as a function of fusion ``m`` (Eq. 15 with ``M = 1/(1-m)``):
    ``r + C exp(-a (1 - m))`` with ``a = alpha L/N``.  Compared with ``C exp(-a (1-m))`` (``r = 0``;
    this is ``n^(H0 - kappa (1-m))``, i.e. Eq. 13 for the normalized entropy mapped through
    ``r_eff = n^H``) and a straight line in ``m``."""
    alts = (fm.EXP_FUSION, fm.LINEAR_IN_M) if compare else ()
    return fit_curve(fm.RANK_FUSION, _check_fusion(m), ranks, sigma=sigma, compare=alts,
                     optimizer=optimizer)


def fit_cost_curve(m, runtime, *, sigma=None, compare=True, optimizer="lm"):
    """Fit relative runtime vs fusion ``m`` with ``a + b (1-m)^2``; compare ``c (1-m)^2`` (Eq. 11)
    and ``c (1-m)^p``.  The offset ``a`` is work that merging does not shrink."""
    alts = (fm.COST_LAW, fm.COST_POWER) if compare else ()
    return fit_curve(fm.COST_OFFSET, _check_fusion(m), runtime, sigma=sigma, compare=alts,
                     optimizer=optimizer)

