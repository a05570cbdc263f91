"""Normalisation placements and the equiangular reduction (docs/theory.md "Normalisation placements").

n tokens with pairwise cosine rho (an equiangular configuration) stay equiangular under
self-attention with kernel e^{beta <x, y>} (every token sees the same picture), and

    rho' = 2 e^{beta rho} (1 - rho) ((n-1) rho + 1) / (e^beta + (n-1) e^{beta rho})

for the post-LN flow (derived in docs/theory.md; Rigollet arXiv 2512.01868). Near rho = 1 the right
side is 2(1 - rho)(1 + O(1 - rho)), so post-LN gives 1 - rho ~ e^{-2t}; pre-LN divides the speed by
r = |z|, which grows like t, so 1 - rho ~ t^{-2}. References: scipy's solve_ivp of the ODE, and the
asymptotic exponents.
"""

import equinox as eqx
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.integrate import solve_ivp

from solvers import INTEGRATORS, NGPT, Adaptive, AttentionField, PeriLN, PostLN, PreLN, Softmax

BETA, N_TOK, RHO0 = 1.5, 4, 0.1


def _equiangular(n, rho0):
    g = (1 - rho0) * np.eye(n) + rho0 * np.ones((n, n))
    return jnp.asarray(np.linalg.cholesky(g))  # rows x_i with <x_i, x_j> = rho0


def _rho(x):
    u = np.asarray(x) / np.linalg.norm(np.asarray(x), axis=1, keepdims=True)
    g = u @ u.T
    return g[~np.eye(len(g), dtype=bool)]


def _ode(t, r, beta=BETA, n=N_TOK):
    e = np.exp(beta * r)
    return 2 * e * (1 - r) * ((n - 1) * r + 1) / (np.exp(beta) + (n - 1) * e)


_adv = eqx.filter_jit(lambda scheme, field, x, n, h: scheme.advance(field, x, n, h)[0])


def test_registered():
    for cls in (PostLN, PreLN, PeriLN, NGPT):
        assert INTEGRATORS[cls.name] is cls


def test_equiangular_ode_reproduced_by_particles():
    """Particles started equiangular follow the ODE to <= 1e-6 (adaptive solve at rtol 1e-11;
    the ODE by solve_ivp at rtol 1e-12): the remaining error is the two tolerances."""
    field = AttentionField(Softmax(BETA))
    x = _equiangular(N_TOK, RHO0)
    times = [0.5, 1.0, 2.0, 4.0]
    ref = solve_ivp(_ode, (0, times[-1]), [RHO0], t_eval=times, rtol=1e-12, atol=1e-14, method="DOP853").y[0]
    t_prev = 0.0
    for t, r in zip(times, ref):
        x = _adv(Adaptive(rtol=1e-11, atol=1e-13), field, x, jnp.asarray(1), jnp.asarray(t - t_prev))
        t_prev = t
        rho = _rho(x)
        assert np.ptp(rho) <= 1e-9  # still equiangular
        assert abs(rho.mean() - r) <= 1e-6, (t, rho.mean(), r)


def _log_slope(xs, ys):
    return np.polyfit(np.log(xs), np.log(ys), 1)[0]


@pytest.mark.parametrize("scheme, expo", [(PostLN(), -2.0), (NGPT(a=0.5), -1.0)])
def test_exponential_rate(scheme, expo):
    """Post-LN: 1 - rho ~ e^{-2t}; nGPT (unit speed times a): e^{-2 a t}. Layers of h = 1e-3;
    the slope of log(1 - rho) over t in [6, 9] is within 1e-2 of the exponent (O(h) from the
    scheme, O(1 - rho) ~ 1e-5 from the nonlinearity)."""
    h, field = 1e-3, AttentionField(Softmax(BETA))
    x = _adv(scheme, field, _equiangular(N_TOK, RHO0), jnp.asarray(6000), jnp.asarray(h))
    ts, gaps = [], []
    for k in range(4):
        if k:
            x = _adv(scheme, field, x, jnp.asarray(1000), jnp.asarray(h))
        ts.append(6.0 + k)
        gaps.append(1 - _rho(x).mean())
    slope = np.polyfit(ts, np.log(gaps), 1)[0]
    assert abs(slope - expo) <= 1e-2, (slope, gaps)


@pytest.mark.parametrize("scheme", [PreLN(), PeriLN()])
def test_algebraic_rate(scheme):
    """Pre-LN (and Peri-LN): r = |z| grows like t, so 1 - rho ~ t^{-2}. Log-log slope over
    t in [100, 200] with h = 0.05: -2 t/(t + c) with c = O(1), so within 0.05 of -2."""
    h, field = 0.05, AttentionField(Softmax(BETA))
    x = _equiangular(N_TOK, RHO0)
    ts, gaps = [], []
    t = 0.0
    for t_next in (100.0, 141.0, 200.0):
        x = _adv(scheme, field, x, jnp.asarray(round((t_next - t) / h)), jnp.asarray(h))
        t = t_next
        ts.append(t)
        gaps.append(1 - _rho(x).mean())
    assert abs(_log_slope(ts, gaps) + 2.0) <= 0.05, (_log_slope(ts, gaps), gaps)
    assert np.all(np.linalg.norm(np.asarray(x), axis=1) > 50)  # the residual stream grew like t


def test_ngpt_rejects_bad_scale():
    with pytest.raises(ValueError, match="NGPT"):
        NGPT(a=-1.0)
