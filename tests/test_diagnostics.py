"""Diagnostics against plain NumPy definitions (docs/theory.md "Diagnostics")."""

import jax.numpy as jnp
import numpy as np
import pytest

import meanfield as mf
from meanfield.stats import diagnostics as dg
from solvers import Softmax


def test_spectrum_entropy_definitions():
    sv = np.array([3.0, 1.0, 1.0, 0.0])
    p = np.array([0.6, 0.2, 0.2])
    h = -(p * np.log(p)).sum()
    assert float(dg.spectrum_entropy(jnp.asarray(sv))) == pytest.approx(h, rel=1e-14)
    assert float(dg.effective_rank(jnp.asarray(sv))) == pytest.approx(np.exp(h), rel=1e-14)
    assert float(dg.normalized_entropy(jnp.asarray(sv))) == pytest.approx(h / np.log(4), rel=1e-14)
    flat = jnp.ones(500)
    assert float(dg.effective_rank(flat)) == pytest.approx(500, rel=1e-12)  # exp(log n)
    assert float(dg.normalized_entropy(flat)) == pytest.approx(1.0, rel=1e-12)


def test_token_statistics_equal_numpy():
    x = np.random.default_rng(0).normal(size=(300, 6)) * 2.5  # raw, un-normalised features
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    m = u.mean(0)
    c = u - m
    ev = np.linalg.eigvalsh(c.T @ c / len(u))
    p = ev / ev.sum()
    st = dg.token_statistics(jnp.asarray(x))
    assert float(st["order_parameter"]) == pytest.approx(np.linalg.norm(m), rel=1e-13)
    assert float(st["mean_cosine"]) == pytest.approx((u @ u.T).mean(), rel=1e-12)
    assert float(st["covariance_effective_rank"]) == pytest.approx(np.exp(-(p * np.log(p)).sum()), rel=1e-12)
    assert float(st["collapse_residual"]) == pytest.approx(np.linalg.norm(c) / np.linalg.norm(u), rel=1e-13)


def test_collapsed_tokens_have_rank_one_attention():
    x = jnp.tile(jnp.array([[0.0, 1.0, 0.0]]), (50, 1))
    st = dg.attention_statistics(Softmax(3.0), x[:10], x)
    assert float(st["effective_rank"]) == pytest.approx(1.0, abs=1e-6)  # one non-zero singular value
    np.testing.assert_allclose(st["row_entropy"], np.log(50), rtol=1e-12)  # identical keys: uniform rows
    assert float(dg.token_statistics(x)["order_parameter"]) == pytest.approx(1.0, rel=1e-15)


def test_query_subset_is_seeded_and_complete_for_small_n():
    np.testing.assert_array_equal(dg.query_subset(100, 512), np.arange(100))
    a, b = dg.query_subset(10_000, 512, seed=3), dg.query_subset(10_000, 512, seed=3)
    assert np.array_equal(a, b) and len(np.unique(a)) == 512 and np.all(np.diff(a) > 0)


def test_solution_records_query_subset():
    sol = mf.solve_flow(mf.Uniform(3), N=2000, layers=2, save=mf.SaveAt(n_query=64), key=5)
    np.testing.assert_array_equal(sol.query_indices, dg.query_subset(2000, 64, 5))
    assert sol.diagnostics["attention_singular_values"].shape == (3, 64)


@pytest.mark.parametrize("N,d", [(12, 40), (40, 12), (25, 25), (2, 9)])  # N < d (Gram route), N > d, N = d
@pytest.mark.parametrize("weighted", [False, True])
def test_covariance_spectrum_gram_route_equals_d_by_d(N, d, weighted):
    # issue 21: for N < d the spectrum of Sigma comes from the N x N Gram matrix, padded with d - N
    # zeros. float64 eigensolvers are backward stable, so both routes agree to ~eps * max(N, d) *
    # lambda_max (~1e-14); 1e-10 relative to the largest eigenvalue leaves room for the round-off.
    from solvers.kernels import key_moments
    from solvers.sphere import normalize

    rng = np.random.default_rng(N * 100 + d)
    x = jnp.asarray(rng.normal(size=(N, d)) * 2.0)
    w = jnp.asarray(rng.uniform(0.2, 3.0, N)) if weighted else None
    u = normalize(x)
    m, cov = key_moments(u, w)
    ref_ev = jnp.maximum(jnp.linalg.eigvalsh(cov), 0.0)  # the d x d route
    ev = dg.covariance_spectrum(u, m, cov, w)
    assert ev.shape == (d,)
    np.testing.assert_allclose(ev, ref_ev, rtol=0, atol=1e-10 * float(ref_ev.max()))
    if N < d:
        assert np.all(np.asarray(ev[: d - N]) == 0.0)  # the padding: rank Sigma <= N - 1
    ref = dg.token_statistics_from_moments(m, cov)  # every consumer of the d x d spectrum
    for got in (dg.token_statistics(x, w), dg.token_statistics_from_moments(m, cov, u, w)):
        for name, value in ref.items():
            np.testing.assert_allclose(got[name], value, rtol=1e-10, atol=0, err_msg=name)


def test_linear_diagnostics_gram_route_equals_token_functions():
    # N < d: linear_diagnostics takes the covariance spectrum from the Gram form of the step's state
    from solvers import AttentionField, Linear, feature_major

    N, d = 30, 64
    x = mf.VonMisesFisher(d, 2.0).sample(0, N, dtype=jnp.float64)
    w = jnp.asarray(np.random.default_rng(1).uniform(0.2, 3.0, N))
    field = AttentionField(Linear(0.4), jnp.asarray(0.5, jnp.float64), w)
    q = jnp.arange(N)
    xt = x.T
    got = dg.linear_diagnostics_jit(field, xt, q, (*feature_major.moments(xt, w), feature_major.norm_drift(xt)))
    ref = dg.simulation_diagnostics_jit(field, x, q)
    for name in ("order_parameter", "covariance_effective_rank", "collapse_residual"):
        np.testing.assert_allclose(got[name], ref[name], rtol=1e-10, err_msg=name)
