"""General attention (solvers.bilinear.Bilinear): bilinear forms, values, heads, masses, causal masks.

References: the isotropic :class:`Softmax` kernel (for B = alpha I, V = I, one head); a dense NumPy
formula of multi-head masked attention written out here; ``jax.jacfwd`` for the divergence. All in
float64; the quantities are O(1) sums of a few hundred terms, so 1e-12 leaves ~1e3 ulps of round-off
(the statistics go through an eigensolver: 1e-10).
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from meanfield.stats.diagnostics import attention_statistics
from solvers import KERNELS, Softmax
from solvers.bilinear import Bilinear

TOL = 1e-12
J = eqx.filter_jit  # one compilation per call instead of op-by-op dispatch


def _tokens(n, d, seed):
    x = np.random.default_rng(seed).normal(size=(n, d))
    return jnp.asarray(x / np.linalg.norm(x, axis=1, keepdims=True))


def _mats(h, d, seed):
    rng = np.random.default_rng(seed)
    return tuple(jnp.asarray(rng.normal(size=(h, d, d)) / np.sqrt(d)) for _ in range(3))


def _dense(alpha, B, V, O, q, k, w, pos=None):
    """Dense multi-head attention: drive sum_h O_h V_h A^h k and the head-averaged matrix."""
    q, k, w = (np.asarray(a) for a in (q, k, w))
    H = B.shape[0]
    f = np.zeros_like(q)
    abar = np.zeros((q.shape[0], k.shape[0]))
    for h in range(H):
        s = alpha * q @ np.asarray(B[h]) @ k.T
        if pos is not None:
            s = np.where(np.arange(k.shape[0])[None, :] <= np.asarray(pos)[:, None], s, -np.inf)
        e = w[None, :] * np.exp(s - s.max(axis=1, keepdims=True))
        a = e / e.sum(axis=1, keepdims=True)
        f += (a @ k) @ (np.asarray(O[h]) @ np.asarray(V[h])).T
        abar += a / H
    return f, abar


def test_registered():
    assert KERNELS["bilinear"] is Bilinear


@pytest.mark.parametrize("form", ["default", "alpha_identity"])
def test_isotropic_is_softmax(form):
    # the default form unweighted, the explicit matrices with masses (each path compiles once)
    """B = alpha I, V = I, one head reproduces Softmax(alpha): drive, divergence, statistics."""
    x = _tokens(300, 5, 0)
    w = jnp.asarray(np.random.default_rng(1).uniform(0.5, 2.0, 300))
    a = 2.5
    ref = Softmax(a, key_block=64)
    ker = (Bilinear(a, key_block=64, query_block=128) if form == "default" else
           Bilinear(1.0, B=a * jnp.eye(5), V=jnp.eye(5), key_block=64, query_block=128))
    for weights in ([None] if form == "default" else [w]):
        f0, d0 = J(ref.drive_and_divergence)(x, x, weights)
        f1, d1 = J(ker.drive_and_divergence)(x, x, weights)
        assert float(jnp.max(jnp.abs(f1 - f0))) <= TOL
        assert float(jnp.max(jnp.abs(d1 - d0))) <= TOL
        assert float(jnp.max(jnp.abs(J(ker.drive)(x, x, weights) - J(ref.drive)(x, x, weights)))) <= TOL
        s0, r0 = J(ref.attention_statistics)(x[:40], x, weights)
        s1, r1 = J(ker.attention_statistics)(x[:40], x, weights)
        assert float(jnp.max(jnp.abs(s1 - s0))) <= 1e-10
        for name in r0:
            assert float(jnp.max(jnp.abs(r1[name] - r0[name]))) <= 1e-10, name


def test_identical_heads_are_one_head():
    x = _tokens(200, 4, 2)
    B, V, O = _mats(1, 4, 3)
    one = Bilinear(1.3, B=B[0], V=V[0], key_block=50)
    three = Bilinear(1.3, B=jnp.stack([B[0]] * 3), V=jnp.stack([V[0]] * 3), key_block=50)
    f1, d1 = J(one.drive_and_divergence)(x, x)
    f3, d3 = J(three.drive_and_divergence)(x, x)
    assert float(jnp.max(jnp.abs(f1 - f3))) <= TOL and float(jnp.max(jnp.abs(d1 - d3))) <= TOL


@pytest.mark.parametrize("causal", [False, True])
def test_multihead_matches_dense(causal):
    """Drive and head-averaged statistics against the dense formula, with masses, padded blocks."""
    n, d, H = 150, 4, 3
    x = _tokens(n, d, 4)
    w = np.random.default_rng(5).uniform(0.2, 3.0, n)
    B, V, O = _mats(H, d, 6)
    ker = Bilinear(0.9, B=B, V=V, O=O, causal=causal, key_block=32, query_block=64)
    pos = np.arange(n) if causal else None
    f_ref, a_ref = _dense(0.9, B, V, O, x, x, w, pos)
    assert np.max(np.abs(np.asarray(J(ker.drive)(x, x, jnp.asarray(w))) - f_ref)) <= TOL
    qi = np.array([0, 3, 17, 60, 149])
    sv, rows = J(ker.attention_statistics)(x[qi], x, jnp.asarray(w), positions=qi if causal else None)
    ar = a_ref[qi]
    u = ar / w[None, :]
    sv_ref = np.sqrt(np.maximum(np.linalg.eigvalsh((ar / w[None, :]) @ ar.T)[::-1], 0))
    ent_ref = -np.sum(np.where(ar > 0, ar * np.log(np.where(u > 0, u, 1)), 0), axis=1)
    assert np.max(np.abs(np.asarray(sv) - sv_ref)) <= 1e-10
    assert np.max(np.abs(np.asarray(rows["row_entropy"]) - ent_ref)) <= 1e-10
    assert np.max(np.abs(np.asarray(rows["max_weight"]) - u.max(axis=1))) <= 1e-10


def test_divergence_matches_autodiff():
    """div_S P_x F from the closed form equals the trace of the Jacobian of the 0-homogeneous
    extension y -> P F(y/|y|) (its radial derivative is zero), by jax.jacfwd."""
    x = _tokens(60, 5, 7)
    w = jnp.asarray(np.random.default_rng(8).uniform(0.5, 2.0, 60))
    B, V, O = _mats(2, 5, 9)
    for causal in (False, True):
        ker = Bilinear(0.7, B=B, V=V, O=O, causal=causal, key_block=32, query_block=50)
        _, div = J(ker.drive_and_divergence)(x, x, w)

        def v(y, i):
            u = y / jnp.linalg.norm(y)
            f = ker.drive(u[None], x, w, positions=jnp.asarray([i]))[0]
            return f - jnp.dot(u, f) * u

        jac = jax.jit(jax.vmap(jax.jacfwd(v)))(x, jnp.arange(60))
        assert float(jnp.max(jnp.abs(jnp.trace(jac, axis1=1, axis2=2) - div))) <= 1e-11


def test_mass_two_equals_two_tokens():
    x = _tokens(60, 3, 10)
    B, V, O = _mats(2, 3, 11)
    ker = Bilinear(1.1, B=B, V=V, O=O, key_block=16)
    w = jnp.ones(60).at[5].set(2.0)
    x2 = jnp.concatenate([x, x[5:6]])
    f_w, d_w = J(ker.drive_and_divergence)(x, x, w)
    f_2, d_2 = J(ker.drive_and_divergence)(x, x2)  # 60 queries over 61 keys
    assert float(jnp.max(jnp.abs(f_w - f_2))) <= TOL and float(jnp.max(jnp.abs(d_w - d_2))) <= TOL


def test_causal_statistics_through_diagnostics():
    """meanfield.stats.diagnostics passes the query positions of a causal kernel."""
    x = _tokens(80, 3, 12)
    ker = Bilinear(2.0, causal=True, key_block=16)
    qi = np.array([0, 10, 79])
    out = J(attention_statistics)(ker, x[qi], x, query_positions=qi)
    _, a_ref = _dense(2.0, jnp.eye(3)[None], jnp.eye(3)[None], jnp.eye(3)[None], x, x, np.ones(80), np.arange(80))
    a = a_ref[qi]
    ent = -np.sum(np.where(a > 0, a * np.log(np.where(a > 0, a, 1)), 0), axis=1)
    assert np.max(np.abs(np.asarray(out["row_entropy"]) - ent)) <= 1e-10
    assert abs(float(out["row_entropy"][0])) <= 1e-12  # the first token sees only itself


def test_bad_shapes():
    with pytest.raises(ValueError, match="Bilinear"):
        Bilinear(1.0, B=jnp.zeros((2, 3, 3)), V=jnp.zeros((4, 3, 3)))
    with pytest.raises(ValueError, match="positions"):
        Bilinear(1.0, causal=True).drive(_tokens(3, 3, 0), _tokens(5, 3, 1))
