"""Kernels against dense references: Eq. 3 matrix, dense softmax/usa, dense SVD, autodiff divergence."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from solvers import Linear, Softmax, USA, make_kernel, project


def unit_rows(n, d, seed=0, dtype=np.float64):
    x = np.random.default_rng(seed).normal(size=(n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(dtype)


def dense_attention(name, x, q, alpha):
    """The textbook n x N attention matrices of docs/theory.md's kernel table."""
    n_keys = x.shape[0]
    if name == "linear":
        m = x.mean(0)
        return (1.0 + alpha * (q @ x.T - (q @ m)[:, None])) / n_keys
    s = alpha * q @ x.T
    if name == "softmax":
        p = np.exp(s - s.max(1, keepdims=True))
        return p / p.sum(1, keepdims=True)
    return np.exp(s) / n_keys


def test_linear_moments_equal_explicit_eq3_matrix():
    # float64 round-off: O(d) flops per entry on O(1) numbers -> 1e-12 is generous.
    x = unit_rows(257, 5)
    a = dense_attention("linear", x, x, 0.7)
    got = Linear(0.7).drive(jnp.asarray(x), jnp.asarray(x))
    np.testing.assert_allclose(got, a @ x, atol=1e-12, rtol=0)


@pytest.mark.parametrize("name", ["softmax", "usa"])
@pytest.mark.parametrize("alpha", [0.5, 4.0, 25.0])
def test_blockwise_equals_dense_float32(name, alpha):
    # blocks that do not divide N exercise the zero-weight padding; float32 round-off over
    # ~N = 300 terms of size <= 1 stays below 1e-5 relative to the largest output entry.
    x64 = unit_rows(300, 6, seed=1)
    x = jnp.asarray(x64, jnp.float32)
    k = make_kernel(name, alpha, key_block=64, query_block=128)
    got = np.asarray(k.drive(x, x))
    assert got.dtype == np.float32
    ref = dense_attention(name, x64, x64, alpha) @ x64
    assert np.max(np.abs(got - ref)) <= 1e-5 * np.max(np.abs(ref))


@pytest.mark.parametrize("name", ["linear", "softmax", "usa"])
def test_spectrum_and_row_statistics_equal_dense(name):
    x = unit_rows(400, 4, seed=2)
    q = x[::7]
    alpha = 0.3 if name == "linear" else 3.0
    k = make_kernel(name, alpha, key_block=96)
    sv, rows = k.attention_statistics(jnp.asarray(q), jnp.asarray(x))
    a = dense_attention(name, x, q, alpha)
    ref_sv = np.linalg.svd(a, compute_uv=False)
    # Singular values from the Gram/factorisation: float64 round-off relative to sigma_max;
    # the Gram route squares the condition number, hence sqrt(eps) ~ 1e-8 for the tiny ones.
    np.testing.assert_allclose(np.asarray(sv), ref_sv, atol=1e-8 * ref_sv[0], rtol=1e-10)
    p = a / a.sum(1, keepdims=True)
    np.testing.assert_allclose(rows["row_entropy"], -(p * np.log(p)).sum(1), rtol=1e-12)
    np.testing.assert_allclose(rows["max_weight"], p.max(1), rtol=1e-12)
    s = alpha * q @ x.T
    np.testing.assert_allclose(rows["logit_mean"], s.mean(1), atol=1e-13)
    np.testing.assert_allclose(rows["logit_std"], s.std(1), rtol=1e-10, atol=1e-13)


def test_linear_spectrum_exact_low_rank():
    # rank <= d + 1: all singular values beyond d + 1 vanish; the rest equal a dense SVD to 1e-12.
    x = unit_rows(600, 3, seed=3)
    sv, _ = Linear(0.4).attention_statistics(jnp.asarray(x), jnp.asarray(x))
    ref = np.linalg.svd(dense_attention("linear", x, x, 0.4), compute_uv=False)
    np.testing.assert_allclose(np.asarray(sv)[:4], ref[:4], rtol=1e-12)
    assert np.all(np.asarray(sv)[4:] == 0) and np.all(ref[4:] < 1e-13)


def test_linear_row_entropy_nan_when_weights_negative():
    x = unit_rows(200, 3, seed=4)
    _, rows = Linear(3.0).attention_statistics(jnp.asarray(x), jnp.asarray(x))
    a = dense_attention("linear", x, x, 3.0)
    assert np.array_equal(np.isnan(np.asarray(rows["row_entropy"])), (a <= 0).any(1))


def autodiff_divergence(kernel, x, keys):
    """div_S of v(y) = P_y F(y) at y = x_i: trace of the Jacobian on an orthonormal tangent basis."""
    def v(y):
        return project(y[None], kernel.drive(y[None], keys))[0]

    def one(xi):
        jac = jax.jacfwd(v)(xi)
        basis = jnp.linalg.qr(jnp.concatenate([xi[:, None], jnp.eye(xi.shape[0])], axis=1))[0][:, 1:]
        return jnp.trace(basis.T @ jac @ basis)

    return jax.vmap(one)(x)


@pytest.mark.parametrize("name,alpha", [("linear", 0.8), ("softmax", 2.5), ("usa", 1.5)])
def test_closed_form_divergence_equals_autodiff(name, alpha):
    # Closed forms (docs/theory.md "Entropy: the exact identity") vs an independent autodiff trace, float64: 1e-8.
    x = jnp.asarray(unit_rows(120, 5, seed=5))
    k = make_kernel(name, alpha, key_block=50)
    _, div = k.drive_and_divergence(x, x)
    ref = autodiff_divergence(k, x, x)
    np.testing.assert_allclose(div, ref, atol=1e-8, rtol=1e-8)
    # and the particle average is the entropy rate of the diagnostics
    from meanfield.stats.diagnostics import entropy_rate

    np.testing.assert_allclose(entropy_rate(k, x, mobility=1 / 2.0), np.mean(ref) / 2.0, atol=1e-8)


def test_linear_entropy_rate_closed_form_in_moments():
    from meanfield.stats.diagnostics import entropy_rate

    x = unit_rows(500, 4, seed=6)
    alpha, M, d = 0.6, 1.5, 4
    m = x.mean(0)
    Q = x.T @ x / len(x)
    S = Q - np.outer(m, m)
    ref = (-(d - 1) * m @ m + alpha * (np.trace(S) - d * np.trace(S @ Q))) / M
    np.testing.assert_allclose(entropy_rate(Linear(alpha), jnp.asarray(x), mobility=1 / M), ref, atol=1e-12)


def test_alpha_is_a_vmappable_leaf():
    x = jnp.asarray(unit_rows(64, 3, seed=7))
    alphas = jnp.array([0.1, 1.0, 3.0])
    batched = jax.vmap(lambda a: Softmax(a, key_block=16).drive(x, x))(alphas)
    for i, a in enumerate([0.1, 1.0, 3.0]):
        np.testing.assert_allclose(batched[i], Softmax(a, key_block=16).drive(x, x), atol=1e-14)
    assert USA(1.0).name == "usa"


def test_unknown_kernel_message():
    with pytest.raises(ValueError, match="unknown kernel 'gauss'; expected one of: linear, softmax, usa"):
        make_kernel("gauss")
