"""Token merging inside the DINOv2 ViT (meanfield.dump.merging_vit), on a 3-block truncation of the
converted ViT-S/14 at 56 x 56 px (P = 17 tokens per frame), so every test runs in seconds.

References: the model's own forward (transformers), the existing dump (``dump_dinov2``), dense
NumPy formulas for the weighted statistics, and invariants (sizes, protected rows).
"""

import numpy as np
import pytest

from tests._dinov2 import require_dinov2

torch = require_dinov2()

import jax  # noqa: E402

from meanfield.dump import onnx_convert  # noqa: E402
from meanfield.dump.images import load_images  # noqa: E402
from meanfield.dump.merging_torch import fastvggt_assign, merged_attention  # noqa: E402
from meanfield.dump.merging_vit import merged_forward, merged_statistics, query_rows  # noqa: E402
from meanfield.dump.stats import attention_block_statistics  # noqa: E402
from meanfield.flow.merged import FastVGGT, ToMe  # noqa: E402

BLOCKS = 3
P = 1 + 4 * 4  # 56 px / 14


@pytest.fixture(scope="module")
def model():
    m, _ = onnx_convert.load_backbone(attn_implementation="eager")
    m.encoder.layer = m.encoder.layer[:BLOCKS]
    return m


@pytest.fixture(scope="module")
def pixels():
    px, _ = load_images(["skimage:astronaut", "skimage:chelsea"], size=56, mode="square")
    return torch.from_numpy(px)


def _plain(model, px):
    with torch.no_grad():
        return model(pixel_values=px).last_hidden_state


@pytest.mark.parametrize("strategy", [None, FastVGGT(ratio=0.0), ToMe(ratio=0.0), ToMe(ratio=0.0, proportional=False)])
def test_ratio_zero_reproduces_the_model(model, pixels, strategy):
    # Same float32 operations in the same order as transformers' eager attention (q k^T times the
    # scale, softmax, times v; the identity merge multiplies and divides by sizes 1, log 1 = 0), so
    # the outputs agree to float32 round-off; the tolerance allows a few ulps per block (they are
    # bit-identical with torch 2.x / transformers 5.x).
    ref = _plain(model, pixels)
    run = merged_forward(model, pixels, strategy)
    assert run.hidden.shape == ref.shape
    torch.testing.assert_close(run.hidden, ref, rtol=0, atol=1e-6 * float(ref.abs().max()))
    assert (run.n_attend == P).all() and (run.sizes == 1).all()


def test_fastvggt_unmerges_and_never_merges_protected_tokens(model, pixels):
    strat = FastVGGT(ratio=0.5, protected=(3,))
    r = round(0.5 * P)
    run = merged_forward(model, pixels, strat, keep_layers=None)
    ref = _plain(model, pixels)
    assert run.hidden.shape == ref.shape  # unmerge: the whole sequence after every block
    # first frame (FastVGGT's reference frame) is not merged at all: the plain model's output
    torch.testing.assert_close(run.hidden[0], ref[0], rtol=0, atol=1e-6 * float(ref.abs().max()))
    assert run.assign[0] == [None] * BLOCKS and (run.n_attend[0] == P).all()
    for assign in run.assign[1]:
        a = assign.numpy()
        merged = np.flatnonzero(a != np.arange(P))
        assert merged.size == r and a[0] == 0 and a[3] == 3  # class token and row 3 protected
        assert not np.isin(a[merged], [0, 3]).any()  # nothing merged into a protected row
    assert (run.n_attend[1] == P - r).all()
    # the merged frame really differs, and the kept merged q/k are the plain means
    assert float((run.hidden[1] - ref[1]).abs().max()) > 1e-3
    q, k, _ = run.attention[(1, 0)]
    assert q.shape[1] == P - r


def test_compact_merged_attention_equals_masked(model):
    # the compacted N' x N' attention (used in the ViT) against the masked N x N one (tested
    # against dense NumPy in test_merging_flow): float64, same sums up to ordering -> 1e-13
    rng = np.random.default_rng(2)
    q, k, v = (torch.as_tensor(rng.normal(size=(2, 30, 5))) for _ in range(3))
    assign = fastvggt_assign(k[0], FastVGGT(ratio=0.4, protected=(0,)))
    sizes = torch.as_tensor(rng.integers(1, 4, size=30).astype(float))
    for prop in (False, True):
        a, na = merged_attention(q, k, v, assign, scale=0.7, sizes=sizes, proportional=prop)
        b, nb = merged_attention(q, k, v, assign, scale=0.7, sizes=sizes, proportional=prop, compact=True)
        torch.testing.assert_close(a, b, rtol=0, atol=1e-13)
        assert torch.equal(na, nb)


@pytest.mark.parametrize("proportional", [True, False])
def test_tome_removes_tokens_and_conserves_size(model, pixels, proportional):
    m = 0.7
    run = merged_forward(model, pixels, ToMe(ratio=m, proportional=proportional, protected=(5,)), keep_layers=None)
    survivors = P - round(m * P)
    schedule = ToMe(ratio=m, protected=(0, 5)).schedule(P, BLOCKS)
    assert run.hidden.shape == (2, survivors, 384)
    assert np.array_equal(run.sizes.sum(1).numpy(), [P, P])  # every original token counted once
    assert (run.sizes[:, 0] == 1).all()  # the class token (row 0) is never merged
    # nor original row 5: after the compactions it is the row with 5 - (merged rows before it)
    # ... checked through the assign maps, in original indices
    for s in range(2):
        origin = np.arange(P)
        for a in run.assign[s]:
            if a is None:
                continue
            a = a.numpy()
            row5 = int(np.flatnonzero(origin == 5)[0])
            assert a[row5] == row5 and not np.any((a == row5) & (np.arange(a.size) != row5))
            origin = origin[np.bincount(a, minlength=a.size) > 0]
    # block l attends over the tokens left by the merges of blocks < l
    expect = P - np.concatenate([[0], np.cumsum(schedule)[:-1]])
    assert (run.n_attend == expect).all()
    for l in range(BLOCKS):
        q, k, w = run.attention[(1, l)]
        assert q.shape[1] == expect[l]
        assert (w is None) == (not proportional)
        if w is not None:
            assert float(w.sum()) == P


def test_final_statistics_at_ratio_zero_equal_the_dump(model, pixels):
    from meanfield.dump.dinov2 import dump_dinov2

    px = pixels[:1]
    dump = dump_dinov2(model, px, n_query=12, seed=3, layers=[BLOCKS - 1], sample_rows=4)
    run = merged_forward(model, px, FastVGGT(ratio=0.0))
    st = merged_statistics(run, n_query=12, seed=3)
    assert np.array_equal(st["query_indices"], dump.query_indices)
    # same function on the same q/k (the forward is the model's, see above): equal to round-off
    for name in ("effective_rank", "normalized_entropy", "mean_singular_values", "head_effective_rank"):
        np.testing.assert_allclose(st[name], np.asarray(dump.attention[name])[0], rtol=1e-5, atol=1e-6)
    assert st["n_tokens"] == P
    assert np.array_equal(query_rows(100, 500), np.arange(100))  # fewer tokens than rows: all of them


def test_weighted_statistics_against_dense_numpy():
    # proportional attention with masses w (docs/theory.md "Token masses"): A_ij = w_j e^{s_ij}/Z_i,
    # head mean Abar, Gram per unit mass Abar diag(1/w) Abar^T; float64 dense reference, 1e-10
    rng = np.random.default_rng(0)
    H, N, dh, n = 3, 40, 4, 12
    q, k = rng.normal(size=(H, N, dh)), rng.normal(size=(H, N, dh))
    w = rng.integers(1, 5, size=N).astype(float)
    idx = np.sort(rng.choice(N, n, replace=False))
    with jax.enable_x64(True):
        st = attention_block_statistics(q, k, 0.5, idx, weights=w, dtype=np.float64)
        # a key of mass 2 acts as two keys of mass 1 at the same place
        dup = np.repeat(np.arange(N), w.astype(int))
        first = np.searchsorted(dup, idx)  # the query rows' first copies
        st2 = attention_block_statistics(q[:, dup], k[:, dup], 0.5, first, dtype=np.float64)
    s = 0.5 * np.einsum("hnd,hNd->hnN", q[:, idx], k)
    a = w * np.exp(s - s.max(-1, keepdims=True))
    a /= a.sum(-1, keepdims=True)
    abar = a.mean(0)
    sv = np.sqrt(np.clip(np.linalg.eigvalsh(abar @ np.diag(1 / w) @ abar.T), 0, None))[::-1]
    p = sv / sv.sum()
    np.testing.assert_allclose(st["mean_singular_values"], sv, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(st["effective_rank"], np.exp(-(p * np.log(p)).sum()), rtol=1e-10)
    for name in ("effective_rank", "normalized_entropy", "head_effective_rank", "mean_singular_values"):
        np.testing.assert_allclose(st[name], st2[name], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("make, msg", [
    (lambda: FastVGGT(ratio=1.0), "ratio"),
    (lambda: ToMe(ratio=-0.1), "ratio"),
    (lambda: FastVGGT(ratio=0.1, protected=tuple(range(1, P))), "covers all"),
    (lambda: ToMe(ratio=0.1, protected=tuple(range(P))), "covers all"),
    (lambda: "tome", "strategy must be"),
    (lambda: ToMe(r=2), "ratio="),
])
def test_bad_input_one_clear_error(model, pixels, make, msg):
    with pytest.raises(ValueError, match=msg):
        merged_forward(model, pixels[:1], make())


def test_bad_pixels(model):
    with pytest.raises(ValueError, match="multiples of 14"):
        merged_forward(model, torch.zeros(1, 3, 50, 56), None)
