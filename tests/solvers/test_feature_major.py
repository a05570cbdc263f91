"""Linear-kernel steps in feature-major layout (solvers.feature_major) against a float64 NumPy
reference of the same schemes (paper Eq. 3 from the weighted moments; docs/theory.md).

Tolerances. float64: the two computations differ only in the order of operations, ~1e-15 per
step, a few steps -> 1e-12. float32: one step rounds at ~6e-8 (2^-24) per operation; the d x d
moments sum N = 9000 terms (error ~ sqrt(N) 6e-8 ~ 6e-6 relative on Sigma, times alpha h < 1 in
the update) and five steps compound it, so 2e-5 absolute on unit vectors (the measured
differences were 1e-7 to 7e-7).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from solvers import AttentionField, Euler, Heun, Layer, Linear, feature_major

ALPHA, MOB, H, STEPS, N, D = 0.7, 0.8, 0.3, 5, 9000, 4  # N: two moment chunks of 4096 and a remainder


def np_step(x, p, scheme):
    """One step of the scheme in float64 NumPy (p: normalised masses)."""
    def drive(y):
        m = p @ y
        cov = (y - m).T @ ((y - m) * p[:, None])
        return MOB * (m + ALPHA * y @ cov)

    def vel(y):
        f = drive(y)
        return f - np.sum(y * f, axis=1, keepdims=True) * y

    def retract(y, v):
        z = y + v
        return z / np.linalg.norm(z, axis=1, keepdims=True)

    if scheme == "layer":
        return retract(x, H * drive(x))
    if scheme == "euler":
        return retract(x, H * vel(x))
    v1 = vel(x)
    return retract(x, 0.5 * H * (v1 + vel(retract(x, H * v1))))


def _state(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, D)) + np.array([2.0, 0, 0, 0])  # a clustered, non-uniform state
    return x / np.linalg.norm(x, axis=1, keepdims=True), rng.uniform(0.2, 3.0, N)


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("dtype,tol", [(jnp.float64, 1e-12), (jnp.float32, 2e-5)])
@pytest.mark.parametrize("integ", [Layer(), Euler(), Heun()], ids=lambda i: i.name)
def test_advance_matches_numpy_reference(integ, dtype, tol, weighted):
    x, w = _state()
    p = w / w.sum() if weighted else np.full(N, 1.0 / N)
    ref = x
    for _ in range(STEPS):
        ref = np_step(ref, p, integ.name)
    field = AttentionField(Linear(ALPHA), jnp.asarray(MOB, dtype), jnp.asarray(w, dtype) if weighted else None)
    out, n = jax.jit(lambda f, y: integ.advance(f, y, STEPS, H))(field, jnp.asarray(x, dtype))
    assert out.dtype == dtype and int(n) == STEPS * (2 if integ.name == "heun" else 1)
    np.testing.assert_allclose(np.asarray(out, np.float64), ref, atol=tol, rtol=0)
    assert np.max(np.abs(ref - x)) > 100 * tol  # the steps moved the tokens: the comparison can fail


@pytest.mark.parametrize("integ", [Layer(), Euler(), Heun()], ids=lambda i: i.name)
def test_step_with_moments_returns_the_starting_moments(integ):
    x, w = _state(1)
    p = w / w.sum()
    field = AttentionField(Linear(ALPHA), MOB, jnp.asarray(w))
    xn, (m, cov, drift), n = feature_major.step_with_moments(integ, field, jnp.asarray(x.T), H)
    m_ref = p @ x
    np.testing.assert_allclose(m, m_ref, atol=1e-13)
    np.testing.assert_allclose(cov, (x - m_ref).T @ ((x - m_ref) * p[:, None]), atol=1e-13)
    assert float(drift) < 1e-14
    np.testing.assert_allclose(np.asarray(xn).T, np_step(x, p, integ.name), atol=1e-13)
    assert int(n) == (2 if integ.name == "heun" else 1)
