"""Phase diagrams (meanfield.studies.phase, solvers.dense) against plain NumPy references, float64.

Tolerances: a layer step is a few dozen floating-point operations per entry, so one dense step
agrees with NumPy to ~1e-15; trajectories of up to 12 steps of ``n <= 8`` tokens stay within
1e-13 (round-off grows at most linearly with the step count at these small beta). Counts (pairs,
clusters) are compared exactly on states whose cosines are not within 1e-9 of a threshold.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from meanfield.studies.phase import phase_diagram, phase_rollout, save_steps, summarize
from solvers import AttentionField, Softmax, Layer, native
from solvers.dense import count_components, gram_statistics, gram_statistics_blocked, layer_step, matrix_rank01

H = 0.1


def sphere(shape, seed=0):
    x = np.random.default_rng(seed).standard_normal(shape)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def np_step(x, beta, h=H):
    """x (n, d): the authors' scheme, softmax with the usual max shift."""
    s = beta * x @ x.T
    a = np.exp(s - s.max(axis=1, keepdims=True))
    a /= a.sum(axis=1, keepdims=True)
    y = x + h * a @ x
    return y / np.linalg.norm(y, axis=1, keepdims=True)


def np_components(adj):
    """Connected components by depth-first search."""
    n = adj.shape[0]
    seen, count = np.zeros(n, bool), 0
    for s in range(n):
        if seen[s]:
            continue
        count += 1
        stack = [s]
        seen[s] = True
        while stack:
            i = stack.pop()
            for j in np.flatnonzero(adj[i] & ~seen):
                seen[j] = True
                stack.append(j)
    return count


def np_stats(x, pt=0.999, ct=0.9999, count="components"):
    g = x @ x.T
    off = ~np.eye(len(x), dtype=bool)
    clusters = np_components(g > ct) if count == "components" else np.linalg.matrix_rank((g > ct).astype(float))
    return int(np.sum((g > pt) & off)), clusters, float(np.linalg.norm(x.mean(axis=0)))


def test_layer_step_matches_numpy_and_streaming_kernel():
    x = sphere((4, 7, 3))
    betas = np.array([0.0, 1.0, 5.0, 30.0])
    y = np.asarray(jax.jit(layer_step)(jnp.asarray(x), jnp.asarray(betas), H))
    ref = np.stack([np_step(xi, b) for xi, b in zip(x, betas)])
    np.testing.assert_allclose(y, ref, rtol=0, atol=1e-14)
    for xi, b, yi in list(zip(x, betas, y))[2:]:
        field = AttentionField(Softmax(b, key_block=3, query_block=2), 1.0)
        ys, _ = Layer().advance(field, jnp.asarray(xi), 1, H)
        np.testing.assert_allclose(yi, np.asarray(ys), rtol=0, atol=1e-14)


def test_layer_step_float32_stays_float32():
    x = jnp.asarray(sphere((2, 5, 4)), jnp.float32)
    y = jax.jit(layer_step)(x, jnp.asarray([1.0, 2.0], jnp.float32), H)
    assert y.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(y), np.stack([np_step(xi, b) for xi, b in zip(sphere((2, 5, 4)), (1, 2))]),
                               atol=2e-6)


def test_count_components_matches_depth_first_search():
    rng = np.random.default_rng(1)
    n = 12
    graphs = []
    for p in (0.0, 0.05, 0.15, 0.3, 1.0):
        a = rng.random((n, n)) < p
        graphs.append(a | a.T)
    chain = np.zeros((n, n), bool)  # diameter n - 1: the slowest case for label propagation
    perm = rng.permutation(n)
    chain[perm[:-1], perm[1:]] = True
    graphs.append(chain | chain.T)
    adj = np.stack(graphs)
    got = np.asarray(count_components(jnp.asarray(adj)))
    assert got.dtype == np.int32
    assert got.tolist() == [np_components(a) for a in adj]
    assert got[0] == n and got[-2] == 1 and got[-1] == 1


def test_matrix_rank01_matches_numpy():
    """The reference code's cluster count: rank of the thresholded matrix (here by elimination)."""
    rng = np.random.default_rng(2)
    n = 12
    mats = []
    for p in (0.0, 0.1, 0.3, 0.6, 1.0):
        for _ in range(6):
            a = rng.random((n, n)) < p
            mats += [a | a.T | np.eye(n, dtype=bool), a]
    for k in (2, 3, 7, 12):  # chains: rank exceeds the one component they form
        a = np.eye(n, dtype=bool)
        a[np.arange(k - 1), np.arange(1, k)] = a[np.arange(1, k), np.arange(k - 1)] = True
        mats.append(a)
    mats = np.stack(mats)
    want = [np.linalg.matrix_rank(m.astype(float)) for m in mats]
    assert np.asarray(jax.jit(matrix_rank01)(jnp.asarray(mats))).tolist() == want
    assert want[-2] == 12 and np_components(mats[-2]) == n - 6  # a chain of 7: rank 12, 6 components
    assert np.asarray(jax.jit(lambda a: matrix_rank01(a, jnp.float32))(jnp.asarray(mats))).tolist() == want


def clustered(n_clusters, per, d, spread, seed):
    """Tokens in tight clusters around random centres (cosines within a cluster > 1 - spread^2)."""
    rng = np.random.default_rng(seed)
    c = sphere((n_clusters, d), seed)
    x = np.repeat(c, per, axis=0) + spread * rng.standard_normal((n_clusters * per, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_gram_statistics_dense_and_blocked_match_numpy():
    xs = [sphere((9, 4), 3), clustered(3, 3, 4, 1e-3, 4), np.concatenate([clustered(2, 4, 4, 5e-3, 5), sphere((1, 4))])]
    dense = jax.jit(gram_statistics)
    blocked = jax.jit(gram_statistics_blocked, static_argnums=3)
    for x in xs:
        want = np_stats(x)
        for got in (dense(jnp.asarray(x), 0.999, 0.9999), blocked(jnp.asarray(x), 0.999, 0.9999, 4)):
            assert (int(got[0]), int(got[1])) == want[:2]
            assert abs(float(got[2]) - want[2]) < 1e-14
    # well-separated clusters: the reference's rank of the thresholded matrix is the same count
    x = clustered(3, 3, 4, 1e-3, 4)
    assert np.linalg.matrix_rank((x @ x.T > 0.9999).astype(float)) == int(dense(jnp.asarray(x), 0.999, 0.9999)[1]) == 3


def np_rollout(x0, betas, steps_at, pt, ct, h, count="components"):
    out = np.zeros((3, len(betas), len(x0), len(steps_at)))
    for b, beta in enumerate(betas):
        for s, x in enumerate(x0):
            k = 0
            for step in range(steps_at[-1] + 1):
                if step > 0:
                    x = np_step(x, beta, h)
                if step == steps_at[k]:
                    out[:, b, s, k] = np_stats(x, pt, ct, count)
                    k += 1
    return out


@pytest.mark.parametrize("method,block,count", [("dense", 4, "components"), ("dense", 5, "rank"),
                                                ("streaming", 3, "components")])
def test_phase_rollout_matches_numpy(method, block, count):
    x0 = sphere((3, 6, 3), 7)
    betas = np.array([0.5, 4.0])
    at = np.array([0, 3, 12])
    pt, ct, h = 0.99, 0.999, 1.0  # clusters form within 12 steps at beta = 0.5
    want = np_rollout(x0, betas, at, pt, ct, h, count)
    seg = jnp.asarray(np.diff(at, prepend=0), jnp.int32)
    pairs, clusters, m = phase_rollout(jnp.asarray(x0), jnp.asarray(betas), h, seg, pt, ct, method=method, block=block,
                                       query_block=4, cluster_count=count)
    assert pairs.shape == clusters.shape == m.shape == (2, 3, 3)
    np.testing.assert_array_equal(np.asarray(pairs), want[0])
    np.testing.assert_array_equal(np.asarray(clusters), want[1])
    np.testing.assert_allclose(np.asarray(m), want[2], rtol=0, atol=1e-13)
    assert want[0].max() > 0 and want[1].min() < 6  # the comparison covers clustered states


def test_phase_rollout_matches_torch_loop():
    torch = pytest.importorskip("torch")
    x0 = sphere((4, 8, 5), 11)
    betas = [1.0, 6.0]
    z0 = torch.from_numpy(x0)
    ms = []
    for beta in betas:
        z, rec = z0.clone(), []
        for _ in range(10):
            sm = torch.softmax(beta * torch.bmm(z, z.transpose(1, 2)), dim=2)
            z = torch.nn.functional.normalize(z + H * torch.bmm(sm, z), dim=2)
            rec.append(z.mean(1).norm(dim=-1).numpy())
        ms.append(np.stack(rec, axis=-1))
    _, _, m = phase_rollout(jnp.asarray(x0), jnp.asarray(betas), H, jnp.ones(10, jnp.int32), 0.999, 0.9999,
                            method="dense", block=3)
    np.testing.assert_allclose(np.asarray(m), np.stack(ms), rtol=0, atol=1e-12)


def test_phase_diagram_api_float64():
    pd = phase_diagram([0.0, 2.0, 8.0], n=6, d=3, n_systems=5, t1=2.0, dt=0.25, n_saves=5, key=3, per_system=True)
    assert pd.t.tolist() == [0.0, 0.5, 1.0, 1.5, 2.0] and pd.steps.tolist() == [0, 2, 4, 6, 8]
    assert pd.pair_fraction.shape == (3, 5) and pd.pair_fraction.dtype == np.float64
    ps = pd.per_system
    assert ps["pairs"].shape == (3, 5, 5)
    # the same initial systems for every beta (common random numbers)
    np.testing.assert_array_equal(ps["order_parameter"][0, :, 0], ps["order_parameter"][2, :, 0])
    np.testing.assert_allclose(pd.pair_fraction, ps["pairs"].mean(axis=1) / 30, rtol=1e-15)
    np.testing.assert_array_equal(pd.clusters_median, np.median(ps["clusters"], axis=1))
    np.testing.assert_allclose(pd.order_parameter, ps["order_parameter"].mean(axis=1), rtol=1e-15)
    assert np.all(np.diff(pd.order_parameter[0]) > 0)  # beta = 0: |m| grows monotonically
    assert pd.params["method"] == ("native" if native.use_native(None) else "dense")  # auto: the C++ kernel on CPU
    assert pd.params["precision"] == "float64"


def test_phase_diagram_float32_and_summarize():
    pd = phase_diagram([1.0], n=4, d=3, n_systems=3, t1=0.5, dt=0.1, n_saves=2, dtype="float32", block=2)
    assert pd.pair_fraction.dtype == np.float32 and pd.order_parameter.dtype == np.float32
    red = summarize(jnp.asarray([[[0, 12]]], jnp.int32), jnp.asarray([[[4, 1]]], jnp.int32),
                    jnp.asarray([[[0.5, 1.0]]], jnp.float32), n=4)
    np.testing.assert_allclose(np.asarray(red["pair_fraction"]), [[0.0, 1.0]])


def test_save_steps():
    assert save_steps(300, 200)[:4].tolist() == [0, 2, 3, 5] and save_steps(300, 200)[-1] == 300
    assert save_steps(4, 5).tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="n_saves"):
        save_steps(4, 6)


@pytest.mark.parametrize("kwargs,match", [
    (dict(betas=[-1.0]), "betas"),
    (dict(betas=[]), "betas"),
    (dict(betas=[1.0], t1=1.05), "whole number of steps"),
    (dict(betas=[1.0], n_saves=1), "n_saves"),
    (dict(betas=[1.0], n_saves=20), "n_saves"),
    (dict(betas=[1.0], n=1), "n must be"),
    (dict(betas=[1.0], method="fast"), "method"),
    (dict(betas=[1.0], dtype="float16"), "precision"),
    (dict(betas=[1.0], cluster_threshold=1.0), "cluster_threshold"),
    (dict(betas=[1.0], cluster_count="svd"), "cluster_count"),
    (dict(betas=[1.0], cluster_count="rank", method="streaming"), "needs method='dense'"),
    (dict(betas=[1.0], x0=np.zeros((2, 3, 3))), "zero row"),
    (dict(betas=[1.0], x0=np.ones((3, 3))), "x0 must be"),
])
def test_phase_diagram_bad_input(kwargs, match):
    b = kwargs.pop("betas")
    base = dict(n=4, d=3, n_systems=2, t1=1.0, dt=0.1, n_saves=3)
    base.update(kwargs)
    with pytest.raises(ValueError, match=match):
        phase_diagram(b, **base)


def test_float64_needs_x64():
    jax.config.update("jax_enable_x64", False)
    try:
        with pytest.raises(ValueError, match="64-bit JAX"):
            phase_diagram([1.0], n=4, d=3, n_systems=2, t1=1.0, dt=0.5, n_saves=2, dtype="float64")
    finally:
        jax.config.update("jax_enable_x64", True)
