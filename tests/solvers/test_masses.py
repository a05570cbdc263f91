"""Token masses in every kernel (docs/theory.md "Token masses").

Three identities, all in float64 with round-off tolerances (the quantities are O(1) sums of at
most a few hundred terms, so 1e-12 leaves ~1e3 ulps):

* unit masses give exactly the unweighted results (the unweighted code is the reference);
* a token of mass 2 at x acts on every other token exactly as two tokens of mass 1 at x;
* a token of mass 0 takes no part at all.

A dense NumPy formula of the weighted kernels is the independent reference for the values.
"""

import jax.numpy as jnp
import numpy as np
import pytest

from meanfield.stats.diagnostics import attention_statistics, entropy_rate, token_statistics
from solvers import KERNELS, make_kernel

TOL = 1e-12
ALPHA = {"linear": 0.3, "softmax": 2.5, "usa": 1.5, "bilinear": 2.5}  # bilinear: default B = V = I is softmax


def _tokens(n, d, seed):
    x = np.random.default_rng(seed).normal(size=(n, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _kernel(name):
    # block sizes that do not divide N, so padding and masses meet in one block
    opts = {"key_block": 7} if name == "linear" else {"key_block": 7, "query_block": 16}
    return make_kernel(name, ALPHA[name], **opts)


def _dense_attention(name, q, k, w):
    """The n x N attention matrix of the weighted measure, written out."""
    p = w / w.sum()
    s = q @ k.T
    if name == "linear":
        m = p @ k
        return p[None, :] * (1.0 + ALPHA[name] * (s - (q @ m)[:, None]))
    e = p[None, :] * np.exp(ALPHA[name] * s)
    return e / e.sum(1, keepdims=True) if name in ("softmax", "bilinear") else e


def _stats(name, q, k, w):
    """Attention statistics per unit of mass from the dense matrix: Gram sum_j A_ij A_i'j / w_j."""
    a = _dense_attention(name, q, k, w)
    gram = (a / w[None, :]) @ a.T
    sv = np.sqrt(np.clip(np.linalg.eigvalsh(gram)[::-1], 0, None))
    row = a / a.sum(1, keepdims=True)  # usa rows are normalised for the row statistics
    u = row / w[None, :]
    return sv, -(row * np.log(u)).sum(1), u.max(1)


@pytest.mark.parametrize("name", sorted(KERNELS))
def test_weighted_kernels_equal_dense_formula(name):
    x = _tokens(53, 5, 0)
    w = np.random.default_rng(1).uniform(0.2, 3.0, 53)
    k = _kernel(name)
    drive = np.asarray(k.drive(jnp.asarray(x[:20]), jnp.asarray(x), jnp.asarray(w)))
    np.testing.assert_allclose(drive, _dense_attention(name, x[:20], x, w) @ x, atol=TOL, rtol=0)
    sv, rows = k.attention_statistics(jnp.asarray(x[:20]), jnp.asarray(x), jnp.asarray(w))
    ref_sv, ref_ent, ref_max = _stats(name, x[:20], x, w)
    # singular values from a Gram matrix: zero ones come out as sqrt(round-off) ~ 1e-8 sv_max
    np.testing.assert_allclose(np.asarray(sv), ref_sv, atol=1e-8 * ref_sv[0], rtol=1e-9)
    np.testing.assert_allclose(rows["row_entropy"], ref_ent, atol=1e-10)
    np.testing.assert_allclose(rows["max_weight"], ref_max, rtol=1e-10)


@pytest.mark.parametrize("name", sorted(KERNELS))
def test_unit_masses_equal_unweighted(name):
    x = jnp.asarray(_tokens(61, 4, 2))
    k, ones = _kernel(name), jnp.ones(61)
    np.testing.assert_allclose(k.drive(x, x, ones), k.drive(x, x), atol=TOL, rtol=0)
    for a, b in zip(k.drive_and_divergence(x, x, ones), k.drive_and_divergence(x, x)):
        np.testing.assert_allclose(a, b, atol=TOL, rtol=0)
    got = attention_statistics(k, x[:30], x, ones)
    ref = attention_statistics(k, x[:30], x)
    for key in ref:
        np.testing.assert_allclose(got[key], ref[key], atol=TOL * max(1.0, float(np.max(np.abs(ref[key])))),
                                   rtol=0, err_msg=key)
    for key, val in token_statistics(x, ones).items():
        np.testing.assert_allclose(val, token_statistics(x)[key], atol=TOL, rtol=0, err_msg=key)
    np.testing.assert_allclose(entropy_rate(k, x, ones, 0.5), entropy_rate(k, x, None, 0.5), atol=TOL, rtol=0)


@pytest.mark.parametrize("name", sorted(KERNELS))
def test_mass_two_acts_as_two_tokens(name):
    x = _tokens(40, 4, 3)
    others, star = x[:-1], x[-1:]
    merged = jnp.asarray(np.concatenate([others, star]))
    split = jnp.asarray(np.concatenate([others, star, star]))
    w_merged = jnp.asarray(np.r_[np.ones(39), 2.0])
    w_split = jnp.ones(41)
    q = jnp.asarray(others)
    k = _kernel(name)
    np.testing.assert_allclose(k.drive(q, merged, w_merged), k.drive(q, split, w_split), atol=TOL, rtol=0)
    for a, b in zip(k.drive_and_divergence(q, merged, w_merged), k.drive_and_divergence(q, split, w_split)):
        np.testing.assert_allclose(a, b, atol=TOL, rtol=0)
    am, asp = attention_statistics(k, q, merged, w_merged), attention_statistics(k, q, split, w_split)
    for key in am:
        np.testing.assert_allclose(am[key], asp[key], atol=TOL * max(1.0, float(np.max(np.abs(am[key])))),
                                   rtol=0, err_msg=key)
    for key, val in token_statistics(merged, w_merged).items():
        np.testing.assert_allclose(val, token_statistics(split, w_split)[key], atol=TOL, rtol=0, err_msg=key)
    np.testing.assert_allclose(entropy_rate(k, merged, w_merged), entropy_rate(k, split, w_split), atol=TOL, rtol=0)


@pytest.mark.parametrize("name", sorted(KERNELS))
def test_zero_mass_takes_no_part(name):
    x = _tokens(30, 3, 4)
    far = -x[:1]  # anywhere: its mass is zero
    k = _kernel(name)
    with_ghost = jnp.asarray(np.concatenate([x, far]))
    w = jnp.asarray(np.r_[np.ones(30), 0.0])
    q = jnp.asarray(x)
    np.testing.assert_allclose(k.drive(q, with_ghost, w), k.drive(q, q), atol=TOL, rtol=0)
    got, ref = attention_statistics(k, q[:10], with_ghost, w), attention_statistics(k, q[:10], q)
    for key in ref:
        np.testing.assert_allclose(got[key], ref[key], atol=TOL * max(1.0, float(np.max(np.abs(ref[key])))),
                                   rtol=0, err_msg=key)
