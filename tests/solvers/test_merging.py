"""``solvers.merging``: matching, merge and unmerge against the NumPy reference, mass conservation,
protected rows, and the per-layer engines at r = 0.

Tolerances (float64): matching is compared exactly (integer indices; random data has no ties);
merged positions to 1e-14, a few roundings of O(1) sums of at most N terms.
"""

import jax.numpy as jnp
import numpy as np
import pytest

from solvers import Layer, Linear, Softmax
from solvers.integrators import AttentionField
from solvers.merging import (
    MergeAttendUnmerge, MergeState, ToMeLayer, alternate_split, bipartite_soft_matching,
    bipartite_soft_matching_sets, merge, unmerge,
)

from .merging_reference import matching as ref_matching
from .merging_reference import merge as ref_merge
from .merging_reference import tome_sets


def _x(n, d, seed):
    x = np.random.default_rng(seed).normal(size=(n, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("r", [0, 1, 7, 20])
def test_tome_matching_equals_reference(r):
    x = _x(41, 5, 0)
    mergeable = np.ones(41, bool)
    mergeable[[3, 10]] = False  # protected rows
    src, dst = alternate_split(jnp.asarray(mergeable))
    m = bipartite_soft_matching(jnp.asarray(x), src, dst, r)
    s_rows, d_rows = tome_sets(mergeable)
    np.testing.assert_array_equal(np.flatnonzero(src), s_rows)
    np.testing.assert_array_equal(np.flatnonzero(dst), d_rows)
    np.testing.assert_array_equal(np.asarray(m.assign), ref_matching(x, s_rows, d_rows, r))
    assert int(m.merged.sum()) == r and not np.asarray(m.merged)[[3, 10]].any()


def test_index_set_matching_equals_mask_matching():
    x = jnp.asarray(_x(50, 4, 1))
    rng = np.random.default_rng(2)
    rows = rng.permutation(50)
    s_rows, d_rows = np.sort(rows[:30]), np.sort(rows[30:42])  # rows[42:] are in neither set
    a = bipartite_soft_matching_sets(x, jnp.asarray(s_rows), jnp.asarray(d_rows), 13)
    src, dst = np.zeros(50, bool), np.zeros(50, bool)
    src[s_rows], dst[d_rows] = True, True
    b = bipartite_soft_matching(x, jnp.asarray(src), jnp.asarray(dst), 13)
    np.testing.assert_array_equal(a.assign, b.assign)
    np.testing.assert_array_equal(a.merged, b.merged)
    np.testing.assert_array_equal(np.asarray(a.assign)[rows[42:]], rows[42:])  # never touched


@pytest.mark.parametrize("unit", [False, True])
def test_merge_is_renormalised_weighted_mean_and_conserves_mass(unit):
    x = _x(40, 6, 3)
    sizes = np.ones(40) if unit else np.random.default_rng(4).integers(1, 9, 40).astype(float)
    src, dst = alternate_split(jnp.ones(40, bool))
    m = bipartite_soft_matching(jnp.asarray(x), src, dst, 15)
    xm, new = merge(jnp.asarray(x), jnp.asarray(sizes), m)
    ref_x, ref_s = ref_merge(x, sizes, np.asarray(m.assign))
    np.testing.assert_allclose(xm, ref_x, atol=1e-14, rtol=0)
    np.testing.assert_array_equal(new, ref_s)
    assert float(jnp.sum(new)) == sizes.sum()  # exact: integer sizes in float64
    np.testing.assert_allclose(jnp.linalg.norm(xm, axis=1), 1.0, atol=1e-15)
    untouched = np.setdiff1d(np.arange(40), np.asarray(m.assign)[np.asarray(m.merged)])
    untouched = untouched[~np.asarray(m.merged)[untouched]]
    np.testing.assert_array_equal(np.asarray(xm)[untouched], x[untouched])  # bit for bit
    assert np.all(np.asarray(new)[np.asarray(m.merged)] == 0)


def test_unmerge_restores_every_token():
    x = jnp.asarray(_x(30, 3, 5))
    src, dst = alternate_split(jnp.ones(30, bool))
    m = bipartite_soft_matching(x, src, dst, 10)
    y = jnp.arange(30.0)[:, None] * jnp.ones((1, 2))
    back = np.asarray(unmerge(y, m))
    assert back.shape == (30, 2)
    assign, merged = np.asarray(m.assign), np.asarray(m.merged)
    np.testing.assert_array_equal(back[~merged], np.asarray(y)[~merged])
    np.testing.assert_array_equal(back[merged, 0], assign[merged])  # a source gets its destination's row
    assert np.all(~merged[assign])  # every destination is a surviving row


def test_merge_attend_unmerge_layer_against_dense_formula():
    n, r = 36, 12
    x = _x(n, 4, 6)
    rows = np.random.default_rng(7).permutation(n)
    prot, d_rows = np.sort(rows[:4]), np.sort(rows[4:12])
    s_rows = np.setdiff1d(np.arange(n), np.r_[prot, d_rows])
    eng = MergeAttendUnmerge(jnp.asarray(s_rows), jnp.asarray(d_rows))
    kern, h = Softmax(1.5), 0.3
    out = np.asarray(eng(kern, 1.0, jnp.asarray(x), jnp.asarray(r), h))
    # reference: merge with plain means, dense softmax over the surviving rows, unmerge, step
    assign = ref_matching(x, list(s_rows), list(d_rows), r)
    xm, counts = ref_merge(x, np.ones(n), assign)
    keep = counts > 0
    logits = 1.5 * xm @ xm[keep].T
    a = np.exp(logits - logits.max(1, keepdims=True))
    f = (a / a.sum(1, keepdims=True)) @ xm[keep]
    y = x + h * f[assign]
    np.testing.assert_allclose(out, y / np.linalg.norm(y, axis=1, keepdims=True), atol=1e-13, rtol=0)
    assert np.all(assign[prot] == prot) and not np.isin(prot, assign[assign != np.arange(n)]).any()


@pytest.mark.parametrize("kernel", [Softmax(2.0), Linear(0.3)])
def test_engines_at_r0_equal_the_layer_scheme(kernel):
    x = jnp.asarray(_x(32, 4, 8))
    ref, _ = Layer().advance(AttentionField(kernel, 1.0), x, 6, 0.25)
    st = ToMeLayer(jnp.zeros(32, bool)).advance(kernel, 1.0, MergeState(x, jnp.ones(32), jnp.arange(32)),
                                                jnp.zeros(6, jnp.int32), 0, 6, 0.25)
    fast = MergeAttendUnmerge(jnp.arange(0, 32, 2), jnp.arange(1, 32, 2)).advance(kernel, 1.0, x, 0, 6, 0.25)
    np.testing.assert_allclose(st.x, ref, atol=1e-12, rtol=0)
    np.testing.assert_allclose(fast, ref, atol=1e-12, rtol=0)
