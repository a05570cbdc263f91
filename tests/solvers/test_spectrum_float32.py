"""float32 attention spectrum from the streamed TSQR factor (solvers.streaming.factor_update).

Reference: a float64 dense SVD of the exact attention matrix of the same (float32-rounded)
tokens. Householder QR and the SVD are backward stable, so every float32 singular value has an
absolute error of ``c * eps32 * sigma_max`` with a modest ``c`` (``eps32 = 1.19e-7``); the Gram
route it replaces had ``sqrt(eps32) * sigma_max ~ 3e-4 sigma_max`` (docs/limitations.md).
"""

import jax.numpy as jnp
import numpy as np
import pytest

from meanfield.stats.diagnostics import attention_statistics, effective_rank
from solvers import make_kernel
from solvers.bilinear import Bilinear
from solvers.kernels import spectrum_from_gram

EPS32 = float(np.finfo(np.float32).eps)


def unit_rows(n, d, seed=0):
    x = np.random.default_rng(seed).normal(size=(n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def dense_attention(name, q, x, alpha, w=None):
    """Exact n x N attention per unit of mass in float64 (docs/theory.md "Token masses")."""
    q, x = q.astype(np.float64), x.astype(np.float64)
    w = np.ones(x.shape[0]) if w is None else np.asarray(w, np.float64)
    s = alpha * q @ x.T
    if name == "softmax":
        e = w * np.exp(s - s.max(1, keepdims=True))
        a = e / e.sum(1, keepdims=True)
    else:
        a = w * np.exp(s) / w.sum()
    return a / np.sqrt(w)  # singular values of A diag(w)^(-1/2): the per-unit-mass Gram


@pytest.mark.parametrize("name", ["softmax", "usa"])
@pytest.mark.parametrize("weighted", [False, True])
def test_float32_singular_values_at_eps_level(name, weighted):
    # N = 700 with key_block 96: padding, and row maxima that move between blocks (rescaling R).
    x = unit_rows(700, 5, seed=1)
    q = x[::5]
    w = np.random.default_rng(2).uniform(0.5, 3.0, 700).astype(np.float32) if weighted else None
    alpha = 3.0
    ker = make_kernel(name, alpha, key_block=96)
    sv, _ = ker.attention_statistics(jnp.asarray(q), jnp.asarray(x), None if w is None else jnp.asarray(w))
    assert sv.dtype == jnp.float32
    ref = np.linalg.svd(dense_attention(name, q, x, alpha, w), compute_uv=False)
    err = np.max(np.abs(np.asarray(sv, np.float64) - ref)) / ref[0]
    # bound c * eps32 with c = 64: round-off of the logits/exponentials (a few eps per entry)
    # plus the backward error of QR and SVD (a small multiple of eps); the Gram route's
    # sqrt(eps32) = 3.5e-4 is 40x above this bound.
    assert err < 64 * EPS32, err
    assert ref[-1] < 1e-3 * ref[0]  # the spectrum spans decades: the old route would fail here



def _softmax_ranks(q, x):
    """Effective rank of softmax(alpha = 1) attention of float32 rows ``q`` over ``x``: (the library's
    float32 route, float64 dense SVD reference, the old float32 Gram route)."""
    ker = make_kernel("softmax", 1.0)
    r32 = float(attention_statistics(ker, jnp.asarray(q), jnp.asarray(x))["effective_rank"])
    ref_sv = np.linalg.svd(dense_attention("softmax", q, x, 1.0), compute_uv=False)
    r_ref = float(effective_rank(jnp.asarray(ref_sv)))
    a32 = jnp.asarray(dense_attention("softmax", q, x, 1.0), jnp.float32)
    r_gram = float(effective_rank(spectrum_from_gram(a32 @ a32.T)))
    return r32, r_ref, r_gram


def test_float32_effective_rank_unbiased_where_gram_route_was_biased():
    # The case of docs/limitations.md (softmax alpha = 1, d = 4; there 2048 tokens, 512 queries,
    # Gram route +6%) at half size to keep the test fast: the Gram route is +3.1% off here. With
    # singular values accurate to ~eps * sigma_max, 256 values move exp(H) by ~1e-5 relative
    # (measured 3.7e-6); 1e-4 leaves a margin.
    x = unit_rows(1024, 4, seed=0)
    q = x[:256]
    r32, r_ref, r_gram = _softmax_ranks(q, x)
    assert abs(r32 - r_ref) / r_ref < 1e-4
    assert abs(r_gram - r_ref) / r_ref > 1e-2  # the old route on the same rows: clearly biased


def test_float32_effective_rank_reaches_one_near_collapse():
    # Tokens within ~1e-3 rad of one direction: the attention rows are nearly equal and the rank
    # is 1.0002 (float64). The old float32 Gram route floors at 1.14 here (256 spurious values of
    # ~sqrt(eps) sigma_max; 1.2 with 512 queries, docs/limitations.md); the TSQR route is within
    # 5e-5 of float64 (256 values of ~eps * sigma_max), checked to 1e-3.
    rng = np.random.default_rng(3)
    e = np.zeros(16)
    e[0] = 1.0
    x = e + 1e-3 * rng.normal(size=(1024, 16))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    q = x[:256]
    r32, r_ref, r_gram = _softmax_ranks(q, x)
    assert abs(r32 - r_ref) < 1e-3
    assert r_gram > 1.1


def test_float32_bilinear_head_mean_spectrum():
    # Two heads, the TSQR factor of the head-averaged rows (second pass of Bilinear) vs dense.
    x = unit_rows(300, 4, seed=4)
    q = x[::3]
    b = np.stack([np.eye(4), np.diag([2.0, 1.0, 0.5, 0.0])]).astype(np.float32)
    ker = Bilinear(1.5, B=jnp.asarray(b), key_block=64)
    sv, _ = ker.attention_statistics(jnp.asarray(q), jnp.asarray(x))
    a = np.mean([dense_attention("softmax", q @ bh, x, 1.5) for bh in b], axis=0)
    ref = np.linalg.svd(a, compute_uv=False)
    assert np.max(np.abs(np.asarray(sv, np.float64) - ref)) / ref[0] < 64 * EPS32
