"""timm-style ViT adapter: ``model.blocks[l].attn`` with a ``qkv`` linear and ``q_norm``/``k_norm``.

timm's ``VisionTransformer`` (and DINOv2-style backbones) run ``blocks[l](x)`` with
``x = x + ls1(attn(norm1(x)))``; ``attn`` computes ``qkv(x)``, splits it into ``num_heads``
heads of ``head_dim``, applies ``q_norm``/``k_norm`` and a softmax with ``attn.scale``. The
token layout is ``num_prefix_tokens`` prefix tokens (class token first, then registers) followed
by the patches. The same hooks as for VGGT (:class:`meanfield.dump._torch.QKVCapture`) record
q/k and the block input, check the capture, and the hooked outputs are compared with the plain
ones. Works on any module with that structure; timm itself is not required.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from . import _torch
from .stats import Recorder, build_dump

TOKEN_TYPES = ["cls", "register", "patch"]


def token_layout(indices, num_prefix_tokens: int, has_class_token: bool = True):
    """Type codes: 0 class token, 1 other prefix (register) tokens, 2 patches."""
    p = np.asarray(indices)
    first = 0 if has_class_token else -1
    return np.where(p == first, 0, np.where(p < num_prefix_tokens, 1, 2)).astype(np.int8)


def attach(model, recorder: Recorder, *, layers=None, check: bool = True) -> _torch.QKVCapture:
    """Hook ``model.blocks[l]`` and ``model.blocks[l].attn`` for ``l`` in ``layers`` (default all)."""
    return _torch.attach_blocks(model.blocks, recorder, layers=layers, check=check, owner="the model")


def dump_timm(model, image, *, n_query: int = 512, seed: int = 0, layers=None, sample_rows: int = 1024,
              sample_layers=None, key_block: int = 1024, self_check: bool = True, model_id: str = "",
              checkpoint=None, image_name: str = "image", stats_dtype=None,
              capture_tolerance: float = 1e-4):  # fmt: skip
    """Run ``model`` on one image (1, 3, H, W) (its ``forward_features`` if present) and return a Dump."""
    from meanfield.diagnostics import query_subset

    model.eval()
    if image.ndim == 3:
        image = image[None]
    if image.ndim != 4 or image.shape[0] != 1:
        raise ValueError(f"image must have shape (3, H, W) or (1, 3, H, W), got {tuple(image.shape)}")
    run = getattr(model, "forward_features", model)
    attn0 = model.blocks[0].attn
    heads, head_dim, scale = int(attn0.num_heads), int(attn0.head_dim), float(attn0.scale)
    t0 = time.perf_counter()
    with torch.no_grad():
        plain = run(image) if self_check else None
        sizes = []  # N is known only inside the model (prefix tokens, patch grid): one probe pass
        h = model.blocks[0].register_forward_pre_hook(lambda m, a: sizes.append(a[0].shape[1]))
        try:
            run(image)
        finally:
            h.remove()
        N = int(sizes[0])
        idx = np.asarray(query_subset(N, n_query, seed))
        smp = np.asarray(query_subset(N, min(sample_rows, N), seed + 1))
        rec = Recorder(idx, scale, sample_indices=smp, sample_layers=sample_layers, key_block=key_block,
                       dtype=stats_dtype)  # fmt: skip
        cap = attach(model, rec, layers=layers)
        try:
            hooked = run(image)
        finally:
            cap.remove()
    diff = _torch.outputs_equal(plain, hooked) if self_check else None
    if self_check and diff != 0.0:
        raise ValueError(f"self-check failed: hooked model outputs differ from plain ones by {diff:g}")
    bad = {l: e for l, e in cap.errors.items() if e > capture_tolerance}
    if bad:
        raise ValueError(f"capture check failed: recomputed attention differs from the model's by {bad}")
    npre = int(getattr(model, "num_prefix_tokens", 1))
    has_cls = getattr(model, "cls_token", None) is not None
    meta = {
        "model_id": model_id or type(model).__name__,
        "checkpoint_hash": _torch.checkpoint_hash(checkpoint if checkpoint is not None else model),
        "adapter": "timm",
        "library_versions": _torch.library_versions(),
        "qk_dtype": rec.qk_dtype,
        "softmax_scale": scale,
        "S": 1, "P": N, "N": N, "patch_start_idx": npre,
        "num_heads": heads, "head_dim": head_dim,
        "d_model": int(attn0.qkv.in_features),
        "query_seed": seed,
        "merge": None,
        "input_kind": "images",
        "extra": {"seconds": time.perf_counter() - t0, "self_check_max_abs_diff": diff,
                  "capture_max_rel_error": cap.errors, "image_size": list(image.shape[-2:])},
    }  # fmt: skip
    kind = token_layout(idx, npre, has_cls)
    return build_dump(rec, meta, idx, np.zeros_like(idx), idx, kind, TOKEN_TYPES, sample_indices=smp,
                      input_images=[image_name])  # fmt: skip
