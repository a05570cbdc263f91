"""Torch-side helpers shared by the adapters: hooks, self-checks, provenance.

Imported only by the adapters (``meanfield.dump.vggt``, ``.hf``, ``.timm``), never by
``import meanfield``: torch is the optional extra ``.[dump]``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .adapter import checkpoint_hash, library_versions  # noqa: F401  (provenance: torch-free, shared)


def flatten_tensors(obj) -> list:
    """All tensors in a nested output (tuples, lists, dicts, dataclass-like ModelOutputs)."""
    if torch.is_tensor(obj):
        return [obj]
    if isinstance(obj, dict) or hasattr(obj, "items"):
        return [t for _, v in sorted(obj.items(), key=lambda kv: str(kv[0])) for t in flatten_tensors(v)]
    if isinstance(obj, (list, tuple)):
        return [t for v in obj for t in flatten_tensors(v)]
    return []


def outputs_equal(a, b) -> float:
    """Max absolute difference between two nested outputs; ValueError if their structure differs."""
    ta, tb = flatten_tensors(a), flatten_tensors(b)
    if len(ta) != len(tb) or any(x.shape != y.shape for x, y in zip(ta, tb)):
        raise ValueError("self-check failed: the hooked model returned differently shaped outputs")
    return max((float((x.float() - y.float()).abs().max()) for x, y in zip(ta, tb) if x.numel()), default=0.0)


def qkv_split(attn, x, pos=None):
    """q, k, v (B, H, N, dh) of a qkv-linear attention (timm / DINOv2 / VGGT ``Attention``).

    Mirrors the module's own forward up to the softmax: one ``qkv`` linear, split into heads,
    ``q_norm`` / ``k_norm``, then the rotary embedding ``attn.rope(t, pos)`` when the module has
    one and positions were passed.
    """
    B, N, C = x.shape
    qkv = attn.qkv(x).reshape(B, N, 3, attn.num_heads, C // attn.num_heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    rope = getattr(attn, "rope", None)
    if rope is not None and pos is not None:
        q, k = rope(q, pos), rope(k, pos)
    return q, k, v


def autocast_like_sdpa(t):
    """``t`` in the dtype ``F.scaled_dot_product_attention`` computes in under the active autocast.

    Under ``torch.autocast`` the q/k norms run in float32 but SDPA casts its inputs down to the
    autocast dtype (bfloat16/float16): the softmax the model computes sees those values.
    """
    dev = t.device.type
    if torch.is_autocast_enabled(dev):
        return t.to(torch.get_autocast_dtype(dev))
    return t


class QKVCapture:
    """Hooks on qkv-linear attention modules: statistics of q/k and a check of the capture.

    For each hooked ``attn`` (layer ``l``), a forward pre-hook (``with_kwargs=True``, because the
    positions arrive as the keyword ``pos``) recomputes q, k, v from the module's input exactly as
    its forward does and calls ``recorder.attention(l, q, k)``. The module's own computation is not
    touched, so the model's outputs are unchanged. With ``check=True`` a forward hook verifies the
    capture: ``proj(softmax(scale q_S k^T) v)`` for the query rows ``S`` must reproduce the module's
    output rows; the largest relative deviation per layer is kept in ``errors``.
    """

    def __init__(self, recorder, *, check: bool = True):
        self.recorder, self.check = recorder, check
        self.handles, self.errors, self._v = [], {}, {}

    def add(self, layer: int, attn) -> None:
        def pre(module, args, kwargs):
            x = args[0] if args else kwargs["x"]
            if kwargs.get("attn_mask") is not None or kwargs.get("attn_bias") is not None:
                raise ValueError(f"layer {layer}: masked attention is not supported by the dump")
            q, k, v = qkv_split(module, x, kwargs.get("pos", args[1] if len(args) > 1 else None))
            q, k = autocast_like_sdpa(q), autocast_like_sdpa(k)
            self.recorder.attention(layer, q, k)
            if self.check:
                self._v[layer] = (q, k, v)

        def post(module, args, kwargs, out):
            q, k, v = self._v.pop(layer)
            idx = torch.as_tensor(self.recorder.query_indices, device=q.device)
            dtype = torch.promote_types(q.dtype, torch.float32)  # at least float32, float64 stays
            rows = F.scaled_dot_product_attention(q[:, :, idx].to(dtype), k.to(dtype), v.to(dtype), scale=module.scale)
            rows = module.proj(rows.transpose(1, 2).reshape(q.shape[0], len(idx), -1).to(out.dtype))
            ref = out[:, idx].to(dtype)
            self.errors[layer] = float((rows.to(dtype) - ref).abs().max() / ref.abs().max().clamp_min(1e-30))

        self.handles.append(attn.register_forward_pre_hook(pre, with_kwargs=True))
        if self.check:
            self.handles.append(attn.register_forward_hook(post, with_kwargs=True))

    def add_block_input(self, layer: int, block) -> None:
        """Residual stream: a pre-hook on the whole block records its input tokens."""

        def pre(module, args, kwargs):
            self.recorder.block_input(layer, args[0] if args else kwargs["x"])

        self.handles.append(block.register_forward_pre_hook(pre, with_kwargs=True))

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()


def as_numpy(t) -> np.ndarray:
    return t.detach().float().cpu().numpy()


def attach_blocks(blocks, recorder, *, layers=None, check: bool = True, owner: str = "the model") -> QKVCapture:
    """Hook ``blocks[l]`` (block input) and ``blocks[l].attn`` (q/k) for each ``l`` in ``layers``."""
    layers = range(len(blocks)) if layers is None else layers
    cap = QKVCapture(recorder, check=check)
    for l in layers:
        if not 0 <= l < len(blocks):
            raise ValueError(f"layer {l} out of range: {owner} has {len(blocks)} blocks")
        cap.add(l, blocks[l].attn)
        cap.add_block_input(l, blocks[l])
    return cap
