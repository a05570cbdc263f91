"""meanfield.stats.theory: the paper's laws against their own defining properties, and the exact
linear-kernel entropy rate against an independent autodiff divergence."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from meanfield.stats import theory

jax.config.update("jax_enable_x64", True)  # tests only; the library never sets it


def test_rank_law_values_and_merge_is_a_layer_rescaling():
    N, M, alpha, C, r = 200.0, 2.5, 3.0, 40.0, 1.0
    assert theory.rank_law(0, alpha=alpha, C=C, r=r, N=N, merge=M) == pytest.approx(r + C, rel=1e-15)
    # one e-folding of the excess after l = N M / alpha layers (Eq. 9)
    l_e = N * M / alpha
    assert theory.rank_law(l_e, alpha=alpha, C=C, r=r, N=N, merge=M) == pytest.approx(r + C / np.e, rel=1e-14)
    l = np.arange(50.0)
    # Eq. 9 vs Eq. 1: merging by M is the same curve at l / M
    np.testing.assert_allclose(theory.rank_law(l, alpha=alpha, C=C, r=r, N=N, merge=M),
                               theory.rank_law(l / M, alpha=alpha, C=C, r=r, N=N), rtol=1e-14)
    # broadcasting over merge factors: the curve at l = N M / alpha is r + C/e for every M
    Ms = np.array([1.0, 2.0, 10.0])
    np.testing.assert_allclose(theory.rank_law(N * Ms / alpha, alpha=alpha, C=C, r=r, N=N, merge=Ms),
                               r + C / np.e, rtol=1e-14)


def test_entropy_laws_agree_and_fusion_conversions():
    m = np.array([0.0, 0.3, 0.5, 0.9])
    M = theory.merge_from_fusion(m)
    np.testing.assert_allclose(M, [1.0, 1 / 0.7, 2.0, 10.0], rtol=1e-14)
    np.testing.assert_allclose(theory.fusion_from_merge(M), m, atol=1e-15)
    H0, k, L, N = 0.9, 3.0, 24.0, 400.0
    # Eq. 13 in (L, N, M) equals the straight line in m with kappa = k L / N
    np.testing.assert_allclose(theory.entropy_law_linear(L, H0=H0, k=k, N=N, merge=M),
                               theory.entropy_vs_fusion(m, H0=H0, kappa=k * L / N), rtol=1e-14)
    assert theory.entropy_law_inverse(4.0, H0=1.0, k=2.0, merge=2.0) == pytest.approx(0.75)
    for bad in (1.0, -0.1, np.nan):
        with pytest.raises(ValueError, match="fusion strength"):
            theory.merge_from_fusion(bad)
    with pytest.raises(ValueError, match="depth L > 0"):
        theory.entropy_law_inverse(0.0, H0=1.0, k=1.0)


def test_cost_and_collapse_time_scaling():
    N, M = 1000.0, 4.0
    assert theory.attention_cost(N, M, c=2.0) == pytest.approx(2.0 * (N / M) ** 2)
    m = np.array([0.0, 0.5, 0.9])
    ratio = theory.attention_cost(N, theory.merge_from_fusion(m)) / theory.attention_cost(N)
    np.testing.assert_allclose(theory.relative_attention_cost(m), ratio, rtol=1e-14)
    assert theory.collapse_time_scaling(3.0, 2.5) == pytest.approx(7.5)


def test_effective_rank_from_normalized_entropy_matches_a_spectrum():
    sv = np.random.default_rng(0).gamma(0.5, size=37)
    p = sv / sv.sum()
    H = -np.sum(p * np.log(p))
    assert theory.effective_rank_from_normalized_entropy(H / np.log(37), 37) == pytest.approx(np.exp(H), rel=1e-13)


def _divergence_rate(x, alpha, merge):
    """Independent E[div_S v] via autodiff: div_S of a tangent field equals the ambient divergence of
    its 0-homogeneous extension V(y/|y|) on the sphere (no radial component)."""
    return float(_divergence_rate_jit(jnp.asarray(x), alpha, merge))


@jax.jit
def _divergence_rate_jit(x, alpha, merge):
    m = x.mean(0)
    S = x.T @ x / x.shape[0] - jnp.outer(m, m)

    def V(y):
        z = y / jnp.linalg.norm(y)
        b = m + alpha * S @ z
        return (b - jnp.dot(z, b) * z) / merge

    return jnp.mean(jax.vmap(lambda y: jnp.trace(jax.jacfwd(V)(y)))(x))


@pytest.mark.parametrize("alpha,merge,d", [(0.0, 1.0, 3), (1.7, 1.0, 5), (0.8, 3.0, 4)])
def test_linear_entropy_rate_equals_mean_divergence(alpha, merge, d):
    x = np.random.default_rng(d).normal(size=(300, d)) + np.eye(d)[0]
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    got = theory.linear_entropy_rate(x, alpha, merge)
    # both are exact formulas for the same finite sum: agreement to round-off
    assert got == pytest.approx(_divergence_rate(x, alpha, merge), rel=1e-10, abs=1e-12)
    if alpha == 0.0:  # docs/theory.md: dH/dt = -(d-1)|m|^2/M
        assert got == pytest.approx(-(d - 1) * np.sum(x.mean(0) ** 2) / merge, rel=1e-12)


def test_linear_entropy_rate_is_zero_for_the_uniform_moments():
    d = 6  # m = 0, Q = I/d: Sigma = I/d, tr S - d tr(S Q) = 1 - d * d/d^2 = 0
    assert theory.linear_entropy_rate_from_moments(np.zeros(d), np.eye(d) / d, 2.0) == pytest.approx(0.0, abs=1e-15)


def test_integrate_entropy_rate_trapezoid_order():
    t = np.linspace(0.0, 10.0, 1001)
    H = theory.integrate_entropy_rate(t, np.cos(t))
    assert H[0] == 0.0
    # trapezoid error <= T h^2 / 12 max|f''| = 10 * 1e-4 / 12 < 1e-4
    assert np.max(np.abs(H - np.sin(t))) < 1e-4
    with pytest.raises(ValueError, match="strictly increasing"):
        theory.integrate_entropy_rate(t[::-1], t)


def test_collapse_time_first_crossing_interpolated():
    t = np.linspace(0.0, 8.0, 801)
    res = theory.collapse_time(t, 1.0 - np.exp(-t), 0.99)
    # exact crossing ln 100; chord error <= h^2 max|f''| / (8 min|f'|) = 1e-4 * 1/8 * (e^-4/e^-4.7) < 3e-5
    assert res.reached and abs(res.time - np.log(100.0)) < 3e-5
    assert float(res) == res.time
    late = theory.collapse_time(t[:100], 1.0 - np.exp(-t[:100]), 0.99)
    assert not late.reached and late.time is None and "not reached" in late.message
    with pytest.raises(ValueError, match="not reached"):
        float(late)
    early = theory.collapse_time(t, np.ones_like(t), 0.99)
    assert early.reached and early.time == 0.0


def test_rank_collapse_time_e_folding():
    t = np.linspace(0.0, 20.0, 2001)
    r = 1.0 + 99.0 * np.exp(-t / 2.0)
    exact = -2.0 * np.log((100.0 / np.e - 1.0) / 99.0)
    res = theory.rank_collapse_time(t, r)
    assert res.reached and abs(res.time - exact) < 1e-4  # h = 0.01, chord error O(h^2)
    assert not theory.rank_collapse_time(t, np.full_like(t, 5.0)).reached


def test_paper_tables_shipped_and_their_internal_relations():
    from meanfield.stats.paper import PAPER_CITATION, paper_table

    t1, t2 = paper_table(1), paper_table(2)
    assert "2512.21691" in PAPER_CITATION
    np.testing.assert_array_equal(t1["m"], [0.1, 0.3, 0.5, 0.7, 0.9])
    np.testing.assert_array_equal(t2["relative_runtime"], [1.0, 0.61, 0.38, 0.22, 0.12])
    # r_eff = 500^H on every row; tolerance = printed rounding: H to 5e-5 (relative log(500) 5e-5
    # in r) plus r to 0.005 (relative 0.005 / 89.9)
    tol = np.log(500) * 5e-5 + 0.005 / 89.9
    for col in ("exp", "theory"):
        r = theory.effective_rank_from_normalized_entropy(t1[f"entropy_{col}"], 500)
        assert np.max(np.abs(r / t1[f"rank_{col}"] - 1)) < tol
    # the Theory entropy column is a straight line in m (residuals within the 5e-5 rounding)
    A = np.stack([np.ones(5), t1["m"]], axis=1)
    coef, *_ = np.linalg.lstsq(A, t1["entropy_theory"], rcond=None)
    assert np.max(np.abs(A @ coef - t1["entropy_theory"])) <= 5e-5
    with pytest.raises(ValueError, match="Tables 1 and 2"):
        paper_table(3)


def test_library_import_leaves_x64_alone():
    import subprocess
    import sys

    code = ("import jax, meanfield.stats.theory, meanfield.fit, meanfield.fit.cli, meanfield.stats.paper; "
            "assert not jax.config.jax_enable_x64; import sys; "
            "assert 'matplotlib' not in sys.modules")
    env = {"PYTHONPATH": ":".join(sys.path), "PATH": "/usr/bin:/bin", "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
