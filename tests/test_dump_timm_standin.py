"""timm-style ViT adapter against a small stand-in (timm itself is not installed here).

The stand-in has timm's attribute names: ``blocks[l].attn`` with ``qkv``, ``num_heads``,
``head_dim``, ``scale``, ``q_norm``, ``k_norm``, ``proj``; a class token and register tokens
(``num_prefix_tokens``); ``forward_features``. Random weights, float64.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn, F = torch.nn, torch.nn.functional

from meanfield.dump.timm import dump_timm, token_layout  # noqa: E402


class Attention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.num_heads, self.head_dim = heads, dim // heads
        self.scale = self.head_dim**-0.5
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.q_norm, self.k_norm = nn.LayerNorm(self.head_dim), nn.LayerNorm(self.head_dim)
        self.seen = []

    def forward(self, x, attn_mask=None):
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        self.seen.append((q.clone(), k.clone()))
        a = torch.softmax(q @ k.transpose(-2, -1) * self.scale, dim=-1)  # the non-fused timm path
        return self.proj((a @ v).transpose(1, 2).reshape(B, N, C))


class Block(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.norm1, self.norm2, self.attn = nn.LayerNorm(dim), nn.LayerNorm(dim), Attention(dim, heads)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x, attn_mask=None):
        x = x + self.attn(self.norm1(x), attn_mask=attn_mask)
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    def __init__(self, dim=24, heads=3, depth=2, registers=2):
        super().__init__()
        self.patch_embed = nn.Conv2d(3, dim, 8, stride=8)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim))
        self.reg_token = nn.Parameter(torch.randn(1, registers, dim))
        self.num_prefix_tokens = 1 + registers
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(depth))

    def forward_features(self, img):
        x = self.patch_embed(img).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(len(x), -1, -1), self.reg_token.expand(len(x), -1, -1), x], 1)
        for b in self.blocks:
            x = b(x)
        return x


def test_timm_standin_dump_matches_dense():
    torch.manual_seed(0)
    model = ViT().double()
    img = torch.rand(1, 3, 24, 32, dtype=torch.float64)  # 3 x 4 patches + 3 prefix tokens = 15
    dump = dump_timm(model, img, n_query=16, stats_dtype=np.float64, model_id="stand-in")
    assert dump.meta["N"] == 15 and dump.meta["patch_start_idx"] == 3
    np.testing.assert_array_equal(dump.query_token_type[:4], [0, 1, 1, 2])  # cls, reg, reg, patch
    for l, block in enumerate(model.blocks):
        q, k = (t[0].detach().numpy() for t in block.attn.seen[-1])  # the hooked pass is the last one
        for h in range(3):
            s = block.attn.scale * q[h] @ k[h].T
            a = np.exp(s - s.max(1, keepdims=True))
            a /= a.sum(1, keepdims=True)
            # float64 streamed vs dense SVD: round-off agreement
            np.testing.assert_allclose(
                dump.attention["head_singular_values"][l, h], np.linalg.svd(a, compute_uv=False), atol=1e-10
            )
            np.testing.assert_allclose(dump.attention["max_weight"][l, h], a.max(1), atol=1e-12)


def test_token_layout_without_class_token():
    np.testing.assert_array_equal(token_layout([0, 1, 2], 2, has_class_token=False), [1, 1, 2])


# --- the meanfield-dump timm sub-command, with a stand-in `timm` package (timm is not installed here) ---


@pytest.fixture
def fake_timm(monkeypatch):
    """A `timm` module whose create_model builds the stand-in and whose transform resizes to 32 x 24."""
    import sys
    import types

    calls = []

    def create_model(name, pretrained=False):
        calls.append((name, pretrained))
        torch.manual_seed(1)  # "pretrained" weights of the stand-in: a fixed draw
        return ViT()

    def resolve_model_data_config(model):
        return {"input_size": (3, 24, 32)}

    def create_transform(input_size, **_):
        def transform(im):
            arr = np.asarray(im.resize((input_size[2], input_size[1])), np.float32) / 255.0
            return torch.from_numpy(arr).permute(2, 0, 1)
        return transform

    timm = types.ModuleType("timm")
    timm.create_model = create_model
    timm.data = types.ModuleType("timm.data")
    timm.data.resolve_model_data_config, timm.data.create_transform = resolve_model_data_config, create_transform
    monkeypatch.setitem(sys.modules, "timm", timm)
    monkeypatch.setitem(sys.modules, "timm.data", timm.data)
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: object() if n == "timm" else real_find_spec(n, *a))
    return calls


@pytest.fixture
def photo(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    path = tmp_path / "photo.png"
    Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(path)
    return path


def test_dump_cli_timm_loads_local_weights_and_matches_the_python_adapter(fake_timm, photo, tmp_path):
    from PIL import Image

    from meanfield.dump import read_dump
    from meanfield.dump.__main__ import cli

    torch.manual_seed(7)
    trained = ViT()
    torch.save(trained.state_dict(), tmp_path / "w.pt")
    out = tmp_path / "vit.h5"
    args = ["timm", "standin", "--image", str(photo), "--weights", str(tmp_path / "w.pt"), "--out", str(out),
            "--n-query", "8"]
    assert cli(args) == 0
    assert fake_timm == [("standin", False)]  # local weights: timm's download is not asked for
    dump = read_dump(out)
    assert dump.meta["adapter"] == "timm" and dump.meta["N"] == 15 and dump.meta["model_id"] == "standin"
    # the same model, weights and preprocessing through the Python adapter: the same statistics
    arr = np.asarray(Image.open(photo).convert("RGB").resize((32, 24)), np.float32) / 255.0
    ref = dump_timm(trained.eval(), torch.from_numpy(arr).permute(2, 0, 1), n_query=8)
    np.testing.assert_allclose(dump.attention["effective_rank"], ref.attention["effective_rank"], rtol=1e-12)
    assert cli(args) == 2  # exists, no --overwrite


@pytest.mark.parametrize("extra, message", [
    (["--weights", "/nonexistent/w.pt"], "--weights '/nonexistent/w.pt': no such file"),
    (["--weights", "w.bin"], "--weights must be a .safetensors, .pt, .pth file"),
])
def test_dump_cli_timm_checks_inputs_before_the_model(fake_timm, photo, tmp_path, capsys, extra, message):
    from meanfield.dump.__main__ import cli

    assert cli(["timm", "standin", "--image", str(photo), "--out", str(tmp_path / "o.h5"), *extra]) == 2
    assert message in capsys.readouterr().err
    assert fake_timm == []  # no model was built
