"""VGGT adapter against a small structural stand-in of VGGT's aggregator.

The real VGGT and its weights cannot be installed here, so this file builds a module with the
same attribute names and forward semantics as ``vggt.models.aggregator.Aggregator`` (camera and
register tokens, ``patch_start_idx = 5``, alternating ``frame_blocks`` / ``global_blocks``,
``Block(x, pos=pos)`` with ``norm1 / attn / ls1 / norm2 / mlp / ls2``, ``Attention`` with ``qkv``,
``q_norm``, ``k_norm``, a 2-D rotary embedding ``rope(t, pos)`` and fused SDPA), random weights,
float64. The stand-in's attention stores the exact q, k it fed to the softmax, which gives an
independent reference for the adapter's recomputation.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn, F = torch.nn, torch.nn.functional

from meanfield.dump import read_dump, validate_dump, write_dump  # noqa: E402
from meanfield.dump.vggt import attach, dump_vggt, token_layout, tokens_per_frame  # noqa: E402


class Rope2D(nn.Module):
    """Rotary embedding: first half of the head dims rotated by the row, second half by the column."""

    def __init__(self, base=100.0):
        super().__init__()
        self.base = base

    def _rotate(self, t, p):
        half = t.shape[-1] // 2
        freq = self.base ** (-torch.arange(half, dtype=t.dtype) / half)
        ang = p[:, None, :, None].to(t.dtype) * freq  # (B, 1, N, half)
        a, b = t[..., :half], t[..., half:]
        return torch.cat([a * ang.cos() - b * ang.sin(), a * ang.sin() + b * ang.cos()], dim=-1)

    def forward(self, t, pos):
        y, x = t.chunk(2, dim=-1)
        return torch.cat([self._rotate(y, pos[..., 0]), self._rotate(x, pos[..., 1])], dim=-1)


class Attention(nn.Module):
    def __init__(self, dim, num_heads, rope):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.q_norm, self.k_norm = nn.LayerNorm(self.head_dim), nn.LayerNorm(self.head_dim)
        self.proj = nn.Linear(dim, dim)
        self.rope = rope
        self.seen = []  # (q, k) exactly as given to the softmax, for the test's reference

    def forward(self, x, pos=None):
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        if self.rope is not None:
            q, k = self.rope(q, pos), self.rope(k, pos)
        self.seen.append((q.detach().clone(), k.detach().clone()))
        return self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, N, C))


class Block(nn.Module):
    def __init__(self, dim, num_heads, rope):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads, rope)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.gamma1, self.gamma2 = nn.Parameter(torch.rand(dim)), nn.Parameter(torch.rand(dim))
        self.inputs = []

    def forward(self, x, pos=None):
        self.inputs.append(x.detach().clone())
        x = x + self.gamma1 * self.attn(self.norm1(x), pos=pos)
        return x + self.gamma2 * self.mlp(self.norm2(x))


class Aggregator(nn.Module):
    def __init__(self, dim=32, heads=4, depth=3, patch_size=14, registers=4):
        super().__init__()
        self.patch_size, self.patch_start_idx = patch_size, 1 + registers
        self.patch_embed = nn.Conv2d(3, dim, patch_size, stride=patch_size)
        self.camera_token = nn.Parameter(torch.randn(1, 2, 1, dim))
        self.register_token = nn.Parameter(torch.randn(1, 2, registers, dim))
        self.rope = Rope2D()
        self.frame_blocks = nn.ModuleList(Block(dim, heads, self.rope) for _ in range(depth))
        self.global_blocks = nn.ModuleList(Block(dim, heads, self.rope) for _ in range(depth))

    @staticmethod
    def _special(tok, B, S):  # first frame uses slot 0, the others slot 1
        return torch.cat([tok[:, :1].expand(B, 1, *tok.shape[2:]), tok[:, 1:].expand(B, S - 1, *tok.shape[2:])], 1)

    def forward(self, images):
        B, S, _, H, W = images.shape
        patches = self.patch_embed(images.reshape(B * S, 3, H, W)).flatten(2).transpose(1, 2)
        special = torch.cat([self._special(self.camera_token, B, S), self._special(self.register_token, B, S)], 2)
        tokens = torch.cat([special.reshape(B * S, self.patch_start_idx, -1), patches], 1)
        h, w = H // self.patch_size, W // self.patch_size
        grid = torch.cartesian_prod(torch.arange(h), torch.arange(w)) + 1
        pos = torch.cat([torch.zeros(self.patch_start_idx, 2, dtype=grid.dtype), grid])[None].expand(B * S, -1, -1)
        _, P, C = tokens.shape
        outputs = []
        for fb, gb in zip(self.frame_blocks, self.global_blocks):
            tokens = fb(tokens.reshape(B * S, P, C), pos=pos.reshape(B * S, P, 2))
            frame_out = tokens.reshape(B, S, P, C)
            tokens = gb(tokens.reshape(B, S * P, C), pos=pos.reshape(B, S * P, 2))
            outputs.append(torch.cat([frame_out, tokens.reshape(B, S, P, C)], dim=-1))
        return outputs, self.patch_start_idx


class StandInVGGT(nn.Module):
    def __init__(self, **kw):
        super().__init__()
        self.aggregator = Aggregator(**kw)


S, H_IMG, W_IMG = 3, 28, 42  # P = 5 + 2*3 = 11, N = 33
N_QUERY, F64 = 16, np.float64  # one query count and dtype for all tests: one JIT compile


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return StandInVGGT().double().eval()


@pytest.fixture(scope="module")
def images():
    torch.manual_seed(1)
    return torch.rand(S, 3, H_IMG, W_IMG, dtype=torch.float64)


def _clear(model):
    for b in model.aggregator.global_blocks:
        b.inputs.clear()
        b.attn.seen.clear()


def test_token_layout():
    P = tokens_per_frame(H_IMG, W_IMG)
    assert P == 5 + (28 // 14) * (42 // 14) == 11
    frame, pos, kind = token_layout([0, 4, 5, 10, 11, 16, 32], P, 5)
    np.testing.assert_array_equal(frame, [0, 0, 0, 0, 1, 1, 2])
    np.testing.assert_array_equal(pos, [0, 4, 5, 10, 0, 5, 10])
    np.testing.assert_array_equal(kind, [0, 1, 2, 2, 0, 2, 2])  # camera, register, patch
    with pytest.raises(ValueError, match="multiple of the patch size"):
        tokens_per_frame(30, 42)


def test_hooked_forward_equals_plain_exactly(model, images):
    from meanfield.dump.stats import Recorder

    with torch.no_grad():
        plain, _ = model.aggregator(images[None])
        rec = Recorder(np.arange(N_QUERY), 8**-0.5, dtype=np.float64)
        cap = attach(model.aggregator, rec)
        try:
            hooked, _ = model.aggregator(images[None])
        finally:
            cap.remove()
    assert len(plain) == len(hooked) == 3
    for a, b in zip(plain, hooked):
        assert torch.equal(a, b)  # hooks only read: bit-for-bit identical
    # float64 capture reproduces the module's output rows to round-off
    assert max(cap.errors.values()) < 1e-12, cap.errors
    assert not any(h for b in model.aggregator.global_blocks for h in b.attn._forward_pre_hooks.values())


def _dense_reference(q, k, scale, idx):
    """Naive float64 statistics: dense softmax and np.linalg.svd, no shared code."""
    A = []
    out = {"sv": [], "row_entropy": [], "max_weight": [], "logit_mean": [], "logit_std": []}
    for h in range(q.shape[0]):
        s = scale * q[h, idx] @ k[h].T
        a = np.exp(s - s.max(1, keepdims=True))
        a /= a.sum(1, keepdims=True)
        A.append(a)
        out["sv"].append(np.linalg.svd(a, compute_uv=False))
        out["row_entropy"].append(-(a * np.log(a)).sum(1))
        out["max_weight"].append(a.max(1))
        out["logit_mean"].append(s.mean(1))
        out["logit_std"].append(s.std(1))
    out = {key: np.array(v) for key, v in out.items()}
    out["mean_sv"] = np.linalg.svd(np.mean(A, axis=0), compute_uv=False)
    p = out["mean_sv"] / out["mean_sv"].sum()
    out["erank"] = np.exp(-(p * np.log(p)).sum())
    out["hnorm"] = -(p * np.log(p)).sum() / np.log(len(idx))
    return out


def test_statistics_equal_dense_computation(model, images):
    _clear(model)
    dump = dump_vggt(model, images, n_query=N_QUERY, seed=3, sample_rows=8, model_id="stand-in", stats_dtype=F64)
    N, P = S * 11, 11
    assert (dump.meta["N"], dump.meta["P"], dump.meta["S"], dump.meta["num_heads"]) == (N, P, S, 4)
    assert dump.meta["softmax_scale"] == pytest.approx(8**-0.5)
    idx = dump.query_indices
    assert len(idx) == N_QUERY and np.all(np.diff(idx) > 0) and idx[-1] < N
    np.testing.assert_array_equal(dump.query_frame, idx // P)
    for l, block in enumerate(model.aggregator.global_blocks):
        # the self-check ran a plain forward first: the hooked pass is the second one recorded
        q, k = (t[0].numpy() for t in block.attn.seen[1])
        ref = _dense_reference(q, k, 8**-0.5, idx)
        # float64 streaming vs dense: agreement to round-off (1e-10 leaves 1e4 x eps headroom)
        np.testing.assert_allclose(dump.attention["head_singular_values"][l], ref["sv"], atol=1e-10)
        np.testing.assert_allclose(dump.attention["mean_singular_values"][l], ref["mean_sv"], atol=1e-10)
        assert dump.attention["effective_rank"][l] == pytest.approx(ref["erank"], rel=1e-9)
        assert dump.attention["normalized_entropy"][l] == pytest.approx(ref["hnorm"], rel=1e-9)
        for name in ("row_entropy", "max_weight", "logit_mean", "logit_std"):
            np.testing.assert_allclose(dump.attention[name][l], ref[name], rtol=1e-9, atol=1e-10, err_msg=name)
        x = block.inputs[1][0].numpy()
        u = x / np.linalg.norm(x, axis=1, keepdims=True)
        m = u.mean(0)
        assert dump.tokens["order_parameter"][l] == pytest.approx(np.linalg.norm(m), rel=1e-9)
        assert dump.tokens["mean_cosine"][l] == pytest.approx(m @ m, rel=1e-9)
        resid = np.linalg.norm(u - m) / np.linalg.norm(u)
        assert dump.tokens["collapse_residual"][l] == pytest.approx(resid, rel=1e-9)
        np.testing.assert_allclose(dump.sample[l], x[dump.sample_indices].astype(np.float16))


def test_roundtrip_and_validate(model, images, tmp_path):
    _clear(model)
    dump = dump_vggt(model, images, n_query=N_QUERY, layers=[0, 2], model_id="stand-in", stats_dtype=F64)
    path = write_dump(tmp_path / "standin.h5", dump)
    validate_dump(path)
    back = read_dump(path)
    np.testing.assert_array_equal(back.layers, [0, 2])
    assert back.meta["adapter"] == "vggt" and back.meta["qk_dtype"] == "float64"
    assert back.input_images == ["frame_0", "frame_1", "frame_2"]
    assert back.token_type_names == ["camera", "register", "patch"]
    np.testing.assert_allclose(
        back.attention["head_singular_values"], dump.attention["head_singular_values"], rtol=1e-6
    )


def test_capture_check_catches_a_modified_forward(model, images):
    """A forward that differs from what the adapter recomputes (softmax sees 2q) must be reported."""
    attn = model.aggregator.global_blocks[1].attn

    def doubled(x, pos=None):
        B, N, C = x.shape
        q, k, v = attn.qkv(x).reshape(B, N, 3, 4, 8).permute(2, 0, 3, 1, 4).unbind(0)
        q, k = attn.rope(attn.q_norm(q), pos), attn.rope(attn.k_norm(k), pos)
        y = F.scaled_dot_product_attention(2 * q, k, v)
        return attn.proj(y.transpose(1, 2).reshape(B, N, C))

    attn.forward = doubled
    try:
        with pytest.raises(ValueError, match=r"capture check failed.*\{1: "):
            dump_vggt(model, images, n_query=N_QUERY, model_id="stand-in", stats_dtype=F64)
    finally:
        del attn.forward


def test_autocast_records_the_dtype_the_softmax_saw(model, images):
    """Under bfloat16 autocast the statistics are of bf16 q/k and say so; they stay close to float32."""
    import copy

    m32 = copy.deepcopy(model).float()
    ref = dump_vggt(m32, images.float(), n_query=N_QUERY, model_id="stand-in", stats_dtype=F64)
    amp = dump_vggt(m32, images.float(), n_query=N_QUERY, model_id="stand-in", stats_dtype=F64,
                    amp_dtype=torch.bfloat16)  # fmt: skip
    assert ref.meta["qk_dtype"] == "float32" and amp.meta["qk_dtype"] == "bfloat16"
    assert "bfloat16" in amp.meta["logit_precision"]
    # bf16 keeps 8 mantissa bits (rel. 4e-3 per value); through three blocks the effective rank
    # moves by well under 10%, and it must move at all (else the cast was not applied)
    er32, er16 = ref.attention["effective_rank"], amp.attention["effective_rank"]
    np.testing.assert_allclose(er16, er32, rtol=0.1)
    assert np.max(np.abs(er16 - er32)) > 0
