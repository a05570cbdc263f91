"""Matmul precision policy (solvers.precision, docs/precision.md) and the fused softmax drive
(solvers.fused), against dense float64 NumPy references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from solvers import USA, Linear, Softmax
from solvers.precision import matmul, round_to_tf32

MODES = ("highest", "tf32", "bf16")


def _points(N, d, seed=0):
    x = np.random.default_rng(seed).standard_normal((N, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _softmax_ref(x, alpha, w=None):
    s = alpha * (x @ x.T)
    if w is not None:
        s = s + np.log(np.where(w > 0, w, 1.0))[None, :]
        s = np.where(w[None, :] > 0, s, -np.inf)
    p = np.exp(s - s.max(axis=1, keepdims=True))
    return (p @ x) / p.sum(axis=1, keepdims=True)


def _rel(f, ref):
    return float(np.linalg.norm(np.asarray(f, np.float64) - ref) / np.linalg.norm(ref))


@pytest.mark.parametrize("alpha", [1.0, 10.0])
def test_softmax_modes_against_float64(alpha):
    """Default ("highest"): float32 round-off. Fast modes: within the documented bounds and clearly
    larger than float32's, so the option is really applied; the result stays float32."""
    x = _points(512, 64)
    ref = _softmax_ref(x, alpha)
    err = {}
    for mode in MODES:
        f = jax.jit(Softmax(alpha, key_block=128, query_block=256, matmul_precision=mode).drive)(
            jnp.asarray(x, jnp.float32), jnp.asarray(x, jnp.float32))
        assert f.dtype == jnp.float32
        err[mode] = _rel(f, ref)
    # float32: u = 6e-8 per rounding; a logit alpha<x,y> carries ~alpha*sqrt(d)*u ~ 5e-6 at alpha 10
    # (measured 3e-7 .. 5e-7 at N = 4096, docs/precision.md)
    assert err["highest"] < 2e-6
    # inputs rounded to 11 (tf32) and 8 (bf16) significant bits: u = 2^-11 = 4.9e-4 and 2^-8 = 3.9e-3
    # per input; measured 2.6e-4..3.1e-4 (tf32) and 2.0e-3..2.5e-3 (bf16) at N = 4096; bounds 2x-3x
    assert 5e-5 < err["tf32"] < 1e-3
    assert 5e-4 < err["bf16"] < 6e-3
    assert err["tf32"] > 50 * err["highest"] and err["bf16"] > 3 * err["tf32"]


@pytest.mark.parametrize("cls", [Linear, USA])
def test_other_kernels_take_the_policy(cls):
    """Linear (d > 8: covariance products) and USA: highest at float32 round-off against the
    float64 evaluation of the same kernel, bf16 visibly coarser."""
    x = _points(300, 16, seed=1)
    ref = np.asarray(cls(0.4).drive(jnp.asarray(x), jnp.asarray(x)))  # float64 (x64 in the test session)
    x32 = jnp.asarray(x, jnp.float32)
    e_hi = _rel(cls(0.4, matmul_precision="highest").drive(x32, x32), ref)
    e_bf = _rel(cls(0.4, matmul_precision="bf16").drive(x32, x32), ref)
    # float32 round-off u = 6e-8 of O(1) terms, relative to a drive of norm ~0.1 (a mean of 300
    # random unit vectors plus 0.4 Sigma x): a few 1e-7 .. 1e-6 (measured 1.3e-6 for Linear)
    assert e_hi < 5e-6
    assert e_bf > 1e-4 and e_bf > 20 * e_hi  # bf16 inputs: u = 3.9e-3 per input, partly averaged out


def test_matmul_modes_and_tf32_rounding():
    # round to nearest TF32 (10 stored mantissa bits, ties to even): independent check with frexp
    v = np.array([1 + 2.0**-11, 1 + 3 * 2.0**-11, 1 + 2.0**-10, -(1 + 2.0**-12), 0.1, 1e-30], np.float32)
    m, e = np.frexp(v.astype(np.float64))
    expect = np.ldexp(np.round(m * 2.0**11) / 2.0**11, e)  # np.round: ties to even
    np.testing.assert_array_equal(np.asarray(round_to_tf32(jnp.asarray(v))), expect.astype(np.float32))
    a = jnp.asarray(_points(8, 32, seed=2), jnp.float32)
    exact = np.asarray(a, np.float64) @ np.asarray(a, np.float64).T
    tf = np.asarray(round_to_tf32(a), np.float64)
    np.testing.assert_allclose(np.asarray(matmul(a, a.T, "tf32")), tf @ tf.T, rtol=0, atol=1e-6)
    bf = np.asarray(a.astype(jnp.bfloat16).astype(jnp.float32), np.float64)
    np.testing.assert_allclose(np.asarray(matmul(a, a.T, "bf16")), bf @ bf.T, rtol=0, atol=1e-6)
    np.testing.assert_allclose(np.asarray(matmul(a, a.T, "highest")), exact, rtol=0, atol=1e-6)


@pytest.mark.parametrize("bad", [dict(matmul_precision="fp8"), dict(matmul_precision=None), dict(attention="flash")])
def test_bad_options_are_named(bad):
    name = next(iter(bad))
    with pytest.raises(ValueError, match=f"unknown {name}"):
        Softmax(1.0, **bad)
    if name == "matmul_precision":
        with pytest.raises(ValueError, match="unknown matmul_precision"):
            Linear(0.2, **bad)


@pytest.mark.parametrize("dtype,tol", [(jnp.float32, 2e-6), (jnp.float64, 1e-13)])
@pytest.mark.parametrize("masses", [False, True])
def test_fused_drive_equals_streaming(dtype, tol, masses):
    """The fused path (one logit product per query block; CPU: the "dense" path) gives the
    streaming drive and the float64 reference to round-off of the dtype (float32: u ~ 6e-8 times
    alpha sqrt(d); float64: u ~ 1e-16 times the same), with masses (one of them zero) too."""
    x = _points(300, 24, seed=3)  # 300 = 2 query blocks of 128 + a partial one
    w = np.random.default_rng(4).uniform(0.5, 2.0, 300) if masses else None
    if masses:
        w[7] = 0.0
    ref = _softmax_ref(x, 4.0, w)
    xx = jnp.asarray(x, dtype)
    ww = None if w is None else jnp.asarray(w, dtype)
    out = {}
    for mode in ("streaming", "fused"):
        ker = Softmax(4.0, key_block=64, query_block=128, attention=mode)
        out[mode] = jax.jit(ker.drive)(xx, xx, ww)
        assert out[mode].dtype == dtype
        assert _rel(out[mode], ref) < tol
    assert _rel(out["fused"], np.asarray(out["streaming"], np.float64)) < tol


def test_auto_is_streaming_on_cpu():
    from solvers.fused import use_fused

    assert use_fused("auto") == (jax.default_backend() == "gpu")
    assert use_fused("fused") and not use_fused("streaming")
