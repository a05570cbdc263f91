"""The hand-fused CPU kernels (solvers.native, solvers/_native/*.cc) against the JAX
programs they stand in for and against float64 NumPy references.

Tolerances. The kernels do the same arithmetic in another order, with their own ``exp`` (relative
error <= 3e-16 in float64, 2e-7 in float32) and ``1/sqrt`` (Newton-refined estimate, ~1 ulp):
float64 trajectories of <= 20 steps agree to 1e-12 (round-off ~1e-15 per step, the clustering
dynamics contract); float32 to 2e-5 (the moments sum N = 140 001 terms: ~sqrt(N) 6e-8 relative on
Sigma, then a few steps). Counts (pairs, clusters) are compared exactly where no cosine lies within
1e-9 (float64) of a threshold, which the tests check.
"""

import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from meanfield.studies.phase import phase_diagram, phase_rollout
from solvers import AttentionField, Euler, Layer, Linear, feature_major, native
from tests.test_phase import np_stats, np_step, sphere

jax.config.update("jax_enable_x64", True)

ROOT = Path(__file__).resolve().parents[2]

if not native.available() and "no C++ compiler" in native.status():  # a machine without g++: XLA paths only
    pytest.skip(native.status(), allow_module_level=True)


def test_kernels_build_here():
    """With a compiler present the kernels must build (a silent fallback would hide a broken build)."""
    assert native.available(), native.status()
    assert native.status().startswith("built: ")


def np_rollout(x0, betas, at, pt, ct, h):
    out = np.zeros((3, len(betas), len(x0), len(at)))
    margin = np.inf
    for b, beta in enumerate(betas):
        for s, x in enumerate(x0):
            k = 0
            for step in range(at[-1] + 1):
                if step > 0:
                    x = np_step(x, beta, h)
                if step == at[k]:
                    g = (x @ x.T)[~np.eye(len(x), dtype=bool)]
                    margin = min(margin, np.min(np.abs(g - pt)), np.min(np.abs(g - ct)))
                    out[:, b, s, k] = np_stats(x, pt, ct)
                    k += 1
    return out, margin


@pytest.mark.parametrize("n,d", [(6, 3), (32, 8), (70, 3)])  # generic d; d = 8 compiled in; n > 64: union-find
def test_phase_rollout_matches_numpy(n, d):
    x0 = sphere((3, n, d), 7)
    betas = np.array([0.5, 4.0, 9.0])  # 9 (beta, system) pairs: one full group of 8 lanes + a padded one
    at = np.array([0, 3, 12])
    pt, ct, h = 0.99, 0.999, 1.0  # clusters form within 12 steps at beta = 0.5
    want, margin = np_rollout(x0, betas, at, pt, ct, h)
    assert margin > 1e-9
    seg = jnp.asarray(np.diff(at, prepend=0), jnp.int32)
    for threads in (1, 2):
        pairs, clusters, m = phase_rollout(jnp.asarray(x0), jnp.asarray(betas), h, seg, pt, ct, method="native",
                                           threads=threads)
        np.testing.assert_array_equal(np.asarray(pairs), want[0])
        np.testing.assert_array_equal(np.asarray(clusters), want[1])
        np.testing.assert_allclose(np.asarray(m), want[2], rtol=0, atol=1e-12)
    assert want[0].max() > 0 and want[1].min() < n  # the comparison covers clustered states


@pytest.mark.parametrize("n,d", [(6, 3), (32, 8), (70, 3)])
@pytest.mark.parametrize("seg", [[0, 3, 9], [2, 0, 5, 0]])  # a last save that no step follows
def test_phase_rollout_final_tokens_match_numpy(n, d, seg):
    """The fourth output of solvers.native.phase_rollout, the tokens after the last step, laid out as
    (beta, system, n, d), against the float64 NumPy layer; 9 pairs cover a padded group of lanes.
    Bound 1e-12 as above (about 15 steps of round-off ~1e-16 each)."""
    x0 = sphere((3, n, d), 5)
    betas = np.array([0.5, 4.0, 9.0])
    h = 0.3
    want = np.empty((len(betas),) + x0.shape)
    for b, beta in enumerate(betas):
        for s, x in enumerate(x0):
            for _ in range(sum(seg)):
                x = np_step(x, beta, h)
            want[b, s] = x
    for threads in (1, 2):
        out = native.phase_rollout(jnp.asarray(x0), jnp.asarray(betas), h, jnp.asarray(seg, jnp.int32), 0.99, 0.999,
                                   threads=threads)
        assert len(out) == 4 and out[3].shape == want.shape and out[3].dtype == jnp.float64
        np.testing.assert_allclose(np.asarray(out[3]), want, rtol=0, atol=1e-12)
    assert np.abs(want - x0[None]).max() > 0.1  # the tokens moved


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_native_phase_diagram_equals_dense(dtype):
    """The whole phase_diagram with the native kernel against the XLA dense path, same systems."""
    kw = dict(n=32, d=8, n_systems=20, t1=4.0, dt=0.1, n_saves=5, key=2, dtype=dtype, per_system=True)
    nat = phase_diagram([0.5, 3.0, 9.0], method="native", threads=2, **kw)
    den = phase_diagram([0.5, 3.0, 9.0], method="dense", **kw)
    assert nat.params["method"] == "native" and nat.params["threads"] == 2
    tol = 1e-12 if dtype == "float64" else 2e-5
    np.testing.assert_allclose(nat.per_system["order_parameter"], den.per_system["order_parameter"], rtol=0, atol=tol)
    same = np.mean(nat.per_system["pairs"] == den.per_system["pairs"])
    assert same == 1.0 if dtype == "float64" else same > 0.99  # float32: a few cosines sit within 1e-6 of 0.999
    assert np.mean(nat.per_system["clusters"] == den.per_system["clusters"]) > (0.999 if dtype == "float64" else 0.99)


def test_auto_picks_native_on_cpu_and_rank_stays_dense():
    pd = phase_diagram([1.0], n=5, d=3, n_systems=2, t1=0.2, dt=0.1, n_saves=2)
    assert pd.params["method"] == "native"
    pd = phase_diagram([1.0], n=5, d=3, n_systems=2, t1=0.2, dt=0.1, n_saves=2, cluster_count="rank")
    assert pd.params["method"] == "dense"
    with pytest.raises(ValueError, match="cluster_count='rank' needs method='dense'"):
        phase_diagram([1.0], n=5, d=3, n_systems=2, t1=0.2, dt=0.1, n_saves=2, cluster_count="rank", method="native")


# ------------------------------------------------------------------------------------------ linear
def _field(alpha, dtype):
    return AttentionField(Linear(alpha), jnp.asarray(0.8, dtype), None)


@pytest.mark.parametrize("d", [3, 4, 9])  # 9: the run-time-d code path
@pytest.mark.parametrize("integ", [Layer(), Euler()], ids=lambda i: i.name)
@pytest.mark.parametrize("dtype,tol", [(jnp.float64, 1e-12), (jnp.float32, 2e-5)])
def test_linear_advance_matches_xla(integ, d, dtype, tol):
    n = 140_001  # not a multiple of the vector width: the scalar tail runs too; > 2^17: two threads
    x = sphere((n, d), 3) + 0.5 * np.eye(d)[0]
    x = jnp.asarray(x / np.linalg.norm(x, axis=1, keepdims=True), dtype).T
    field = _field(1.3, dtype)
    run = jax.jit(lambda y, flag: feature_major.advance(integ, field, y, 6, 0.2, native=flag)[0], static_argnums=1)
    a, b = run(x, True), run(x, False)
    assert a.dtype == dtype
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=tol)
    drift = np.max(np.abs(np.linalg.norm(np.asarray(a, np.float64), axis=0) - 1.0))
    assert drift < 8 * np.finfo(np.dtype(dtype)).eps  # normalised by construction, ~1 ulp


@pytest.mark.parametrize("dtype", [jnp.float64, jnp.float32])
def test_linear_moments_and_step_with_moments(dtype):
    n, d = 5_003, 4
    x = sphere((n, d), 5) + np.array([1.5, 0, 0, 0])
    x[7] *= 1.0 + 1e-3  # one token off the sphere: the norm drift has something to find
    xt = jnp.asarray(x.T, dtype)
    s1, s2, c, rng = native.linear_moments(xt)
    np.testing.assert_array_equal(np.asarray(c), np.asarray(xt[:, 0]))
    y = x - x[0]
    tol = 1e-12 if dtype == jnp.float64 else 1e-6
    np.testing.assert_allclose(np.asarray(s1, np.float64) / n, y.mean(0), rtol=0, atol=tol)
    np.testing.assert_allclose(np.asarray(s2, np.float64) / n, y.T @ y / n, rtol=0, atol=tol)
    sq = np.sum(np.asarray(xt, np.float64) ** 2, axis=0)
    np.testing.assert_allclose(np.asarray(rng, np.float64), [sq.min(), sq.max()], rtol=4 * np.finfo(dtype).eps)
    field = _field(0.9, dtype)
    got = jax.jit(lambda z: feature_major.step_with_moments(Euler(), field, z, 0.1, native=True))(xt)
    want = jax.jit(lambda z: feature_major.step_with_moments(Euler(), field, z, 0.1, native=False))(xt)
    for g, w in zip(jax.tree_util.tree_leaves(got[:2]), jax.tree_util.tree_leaves(want[:2])):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=0, atol=10 * tol)


def test_linear_vmap_is_the_per_system_loop():
    """Ensembles: the kernel takes the batch axis itself (vmap_method='broadcast_all')."""
    x = jnp.asarray(np.stack([sphere((300, 3), s).T for s in range(3)]))  # (B, d, N)
    fields = [_field(a, jnp.float64) for a in (0.5, 1.0, 2.0)]
    one = [feature_major.advance(Layer(), f, x[i], 4, 0.3, native=True)[0] for i, f in enumerate(fields)]
    alphas = jnp.asarray([0.5, 1.0, 2.0])
    batched = jax.vmap(lambda y, a: feature_major.advance(Layer(), _field(a, jnp.float64), y, 4, 0.3,
                                                          native=True)[0])(x, alphas)
    np.testing.assert_array_equal(np.asarray(batched), np.stack([np.asarray(o) for o in one]))


def test_native_true_refuses_what_it_cannot_do():
    w = jnp.ones(10)
    field = AttentionField(Linear(1.0), jnp.asarray(1.0), w)
    with pytest.raises(ValueError, match="unit masses"):
        feature_major.advance(Euler(), field, jnp.asarray(sphere((10, 3)).T), 1, 0.1, native=True)


def _python(code, **env):
    full = {**os.environ, "PYTHONPATH": str(ROOT), **env}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full, timeout=300)


def test_disabled_or_failed_build_falls_back(tmp_path):
    code = ("from solvers import native; from meanfield.studies.phase import phase_diagram\n"
            "print(native.available(), '|', native.status())\n"
            "pd = phase_diagram([1.0], n=4, d=3, n_systems=2, t1=0.2, dt=0.1, n_saves=2)\n"
            "print(pd.params['method'])\n"
            "try:\n    phase_diagram([1.0], n=4, d=3, n_systems=2, t1=0.2, dt=0.1, n_saves=2, method='native')\n"
            "except ValueError as e:\n    print('ValueError:', e)\n")
    r = _python(code, MEANFIELD_NATIVE="0")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "False | disabled by MEANFIELD_NATIVE=0" and lines[1] == "dense"
    assert lines[2].startswith("ValueError: native=True, but the native CPU kernels are not available")
    # a compiler that fails: reported, nothing left in the cache, the XLA path runs
    r = _python(code, CXX="false", MEANFIELD_CACHE_DIR=str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("False | compilation failed") and r.stdout.splitlines()[1] == "dense"
    assert list((tmp_path / "native").glob("*")) == []


def test_without_avx512_the_portable_code_gives_the_same_results(tmp_path):
    """The kernels' non-AVX-512 branches (GCC vector extensions, the degree-13 exp, 1/sqrt by a
    square root) built with -mno-avx512f: the same trajectories as the XLA programs (float64, 1e-12)."""
    code = (
        "import jax, jax.numpy as jnp, numpy as np\n"
        "jax.config.update('jax_enable_x64', True)\n"
        "from solvers import native, feature_major, AttentionField, Linear, Euler\n"
        "from meanfield.studies.phase import phase_diagram\n"
        "assert native.available(), native.status()\n"
        "kw = dict(n=32, d=8, n_systems=9, t1=2.0, dt=0.1, n_saves=3, key=1, per_system=True)\n"
        "a = phase_diagram([0.5, 4.0], method='native', **kw).per_system\n"
        "b = phase_diagram([0.5, 4.0], method='dense', **kw).per_system\n"
        "print('phase', float(np.max(np.abs(a['order_parameter'] - b['order_parameter']))),"
        " bool(np.all(a['pairs'] == b['pairs'])), bool(np.all(a['clusters'] == b['clusters'])))\n"
        "x = np.random.default_rng(0).standard_normal((1003, 4)); x /= np.linalg.norm(x, axis=1, keepdims=True)\n"
        "f = AttentionField(Linear(1.2), jnp.asarray(1.0), None)\n"
        "y = [feature_major.advance(Euler(), f, jnp.asarray(x.T), 5, 0.2, native=v)[0] for v in (True, False)]\n"
        "print('linear', float(jnp.max(jnp.abs(y[0] - y[1]))))\n")
    r = _python(code, MEANFIELD_NATIVE_CXXFLAGS="-mno-avx512f", MEANFIELD_CACHE_DIR=str(tmp_path))
    assert r.returncode == 0, r.stderr[-3000:]
    phase, linear = r.stdout.splitlines()[-2:]
    _, m_diff, pairs_equal, clusters_equal = phase.split()
    assert float(m_diff) < 1e-12 and pairs_equal == "True" and clusters_equal == "True"
    assert float(linear.split()[1]) < 1e-12
    assert len(list((tmp_path / "native").glob("*.so"))) == 1  # built apart from the default cache


def test_first_build_says_so_in_one_line(tmp_path):
    """A build into an empty cache announces itself (it takes 10-20 s); a cached library does not."""
    code = "from solvers import native\nprint(native.available())\n"
    first = _python(code, MEANFIELD_CACHE_DIR=str(tmp_path))
    assert first.returncode == 0 and first.stdout.strip() == "True", first.stderr
    notice = [line for line in first.stderr.splitlines() if "native" in line]
    assert notice == [f"compiling the native CPU kernels once (about 20 s) into {tmp_path / 'native'}"]
    again = _python(code, MEANFIELD_CACHE_DIR=str(tmp_path))
    assert again.stdout.strip() == "True" and "compiling" not in again.stderr


# ------------------------------------------------------------------------------------------ simulate_batch
@pytest.mark.parametrize("case", ["grid", "per_system", "merge", "one_system_many_alphas"])
@pytest.mark.parametrize("dtype,tol", [("float64", 1e-12), ("float32", 2e-5)])
def test_simulate_batch_native_equals_jax(case, dtype, tol):
    """simulate_batch through the native kernel (layer scheme, the only one it runs for softmax) and
    through the vmapped JAX rollout: |m| after every layer and the final tokens agree to round-off.
    Measured (max abs over the 101 values of every system): float64 2.8e-16 to 5.6e-16 after 100 steps
    of dt = 0.1 for the four cases (the clustering dynamics contract, so round-off does not grow); bound
    1e-12, as for the phase rollouts above (2000x margin). float32: 1.5e-7 to 7.2e-7 measured, bound
    2e-5 (28x). The final tokens (max abs over every coordinate): float64 1.4e-15 to 4.0e-15 (bound
    1e-12, 250x), float32 1.1e-6 to 2.1e-6 (bound 2e-5, 9x)."""
    from meanfield.studies.batch import simulate_batch

    x = sphere((10, 32, 8), 11).astype(dtype)
    kw = dict(kernel="softmax", dt=0.1, layers=100)
    if case == "grid":  # the phase-diagram grid, flattened: one kernel call over 5 systems x 3 betas
        A, S = np.meshgrid(np.array([0.5, 3.0, 9.0]), np.arange(5), indexing="ij")
        x0, kw["alpha"] = x[S.ravel()], A.ravel()
    elif case == "per_system":  # 10 systems, 4 distinct alphas in no order: one call per alpha, padded
        x0, kw["alpha"] = x, np.array([0.5, 2.0, 2.0, 9.0, 0.5, 4.0, 4.0, 2.0, 9.0, 0.5])
    elif case == "merge":  # mobility 1/M: the kernel runs the step dt / M
        x0, kw["alpha"], kw["merge"] = x, 4.0, 2.5
    else:  # replay-like: one system under many alphas (a 1-system grid)
        x0, kw["alpha"] = np.broadcast_to(x[:1], (6, 32, 8)), np.linspace(0.0, 10.0, 6)
    nat = simulate_batch(x0, engine="native", **kw)
    ref = simulate_batch(x0, engine="jax", **kw)
    assert set(nat) == {"x", "order_parameter"} and nat["order_parameter"].dtype == jnp.dtype(dtype)
    assert nat["x"].dtype == jnp.dtype(dtype) and nat["x"].shape == x0.shape
    m = np.asarray(ref["order_parameter"])
    assert m.shape == (len(x0), 101) and m[:, -1].max() - m[:, -1].min() > 0.1  # the cases differ
    np.testing.assert_allclose(np.asarray(nat["order_parameter"]), m, rtol=0, atol=tol)
    np.testing.assert_allclose(np.asarray(nat["x"]), np.asarray(ref["x"]), rtol=0, atol=tol)
    assert np.abs(np.asarray(ref["x"]) - np.asarray(x0)).max() > 0.1  # the final tokens moved
    assert set(simulate_batch(x0, engine="native", return_x=False, **kw)) == {"order_parameter"}
    # auto runs the native kernel unless padding to whole vectors (8 float64 / 16 float32 pairs) would
    # more than double the work: per_system pads groups of 2-3 systems to 8 lanes; 6 pairs pad to 16
    auto = simulate_batch(x0, **kw)
    picked = nat if case in ("grid", "merge") or (case == "one_system_many_alphas" and dtype == "float64") else ref
    for key in ("x", "order_parameter"):
        np.testing.assert_array_equal(np.asarray(auto[key]), np.asarray(picked[key]))


def test_simulate_batch_auto_picks_native_only_where_it_applies(monkeypatch):
    from meanfield.studies import batch

    calls = []
    real = native.phase_rollout
    monkeypatch.setattr(native, "phase_rollout", lambda *a, **k: calls.append(1) or real(*a, **k))
    batch._native_rollout.clear_cache()  # trace again: the patched wrapper sees every call
    x = sphere((32, 16, 4), 2)
    kw = dict(kernel="softmax", alpha=[1.0, 2.0] * 16, dt=0.1, layers=3)
    assert set(batch.simulate_batch(x, return_x=False, **kw)) == {"order_parameter"} and calls  # native
    calls.clear()
    batch._native_rollout.clear_cache()  # the same trace as above: trace again
    assert set(batch.simulate_batch(x, **kw)) == {"x", "order_parameter"} and calls  # native, with the tokens
    for other in (dict(method="heun", return_x=False), dict(engine="jax", return_x=False)):
        calls.clear()
        out = batch.simulate_batch(x, **{**kw, **other})
        assert not calls and out["order_parameter"].shape == (32, 4)
    calls.clear()
    batch.simulate_batch(sphere((32, 200, 4), 2), return_x=False, **kw)  # N > NATIVE_MAX_N: the vmapped program
    assert not calls
    batch.simulate_batch(sphere((32, 16, 3), 2), **kw)  # d not compiled into the kernel (NATIVE_D)
    assert not calls
    assert set(batch.simulate_batch(sphere((32, 16, 3), 2), engine="native", **kw)) == {"x", "order_parameter"}
    assert calls  # engine="native" still runs any d
    calls.clear()
    # every system its own alpha: 32 padded calls of 8 lanes for 32 systems would be 8x the work
    batch.simulate_batch(x, return_x=False, **{**kw, "alpha": np.linspace(0.5, 2.0, 32)})
    assert not calls
    # without the kernels (no compiler, MEANFIELD_NATIVE=0): auto runs JAX, native says why
    monkeypatch.setitem(native._state, "lib", None)
    monkeypatch.setitem(native._state, "reason", "no C++ compiler found ($CXX, g++, c++, clang++)")
    assert batch.simulate_batch(x, return_x=False, **kw)["order_parameter"].shape == (32, 4) and not calls
    with pytest.raises(ValueError, match="native=True, but the native CPU kernels are not available: no C"):
        batch.simulate_batch(x, engine="native", return_x=False, **kw)
