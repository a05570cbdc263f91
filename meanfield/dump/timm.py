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

import os
import time

import numpy as np

from . import adapter
from .stats import Recorder, build_dump

TOKEN_TYPES = ["cls", "register", "patch"]


def token_layout(indices, num_prefix_tokens: int, has_class_token: bool = True):
    """Type codes: 0 class token, 1 other prefix (register) tokens, 2 patches."""
    p = np.asarray(indices)
    first = 0 if has_class_token else -1
    return np.where(p == first, 0, np.where(p < num_prefix_tokens, 1, 2)).astype(np.int8)


def attach(model, recorder: Recorder, *, layers=None, check: bool = True):
    """Hook ``model.blocks[l]`` and ``model.blocks[l].attn`` for ``l`` in ``layers`` (default all):
    a :class:`meanfield.dump._torch.QKVCapture`."""
    from . import _torch

    return _torch.attach_blocks(model.blocks, recorder, layers=layers, check=check, owner="the model")


def dump_timm(model, image, *, n_query: int = 512, seed: int = 0, layers=None, sample_rows: int = 1024,
              sample_layers=None, key_block: int = 1024, self_check: bool = True, model_id: str = "",
              checkpoint=None, image_name: str = "image", stats_dtype=None,
              capture_tolerance: float = 1e-4):  # fmt: skip
    """Run ``model`` on one image (1, 3, H, W) (its ``forward_features`` if present) and return a Dump."""
    import torch

    from meanfield.stats.diagnostics import query_subset

    from . import _torch

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
    diff = adapter.self_check(self_check, lambda: _torch.outputs_equal(plain, hooked))
    adapter.capture_check(cap.errors, capture_tolerance)
    npre = int(getattr(model, "num_prefix_tokens", 1))
    has_cls = getattr(model, "cls_token", None) is not None
    meta = adapter.metadata(
        "timm", rec, model_id=model_id or type(model).__name__,
        checkpoint=checkpoint if checkpoint is not None else model, scale=scale,
        S=1, P=N, N=N, patch_start_idx=npre, num_heads=heads, head_dim=head_dim,
        d_model=int(attn0.qkv.in_features), seed=seed, input_kind="images",
        extra={"seconds": time.perf_counter() - t0, "self_check_max_abs_diff": diff,
               "capture_max_rel_error": cap.errors, "image_size": list(image.shape[-2:])},
    )  # fmt: skip
    kind = token_layout(idx, npre, has_cls)
    return build_dump(rec, meta, idx, np.zeros_like(idx), idx, kind, TOKEN_TYPES, sample_indices=smp,
                      input_images=[image_name])  # fmt: skip


WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth")


class TimmAdapter(adapter.Adapter):
    """``meanfield-dump timm MODEL --image PHOTO [--weights FILE]``: timm's pretrained weights or a
    local checkpoint, the model's own timm transform; image and checkpoint checked before torch and
    timm are imported."""

    name = "timm"
    help = "a timm vision transformer on a photograph"

    @classmethod
    def add_arguments(cls, s):
        s.add_argument("model", help="timm model name, e.g. vit_small_patch16_224.augreg_in21k")
        s.add_argument("--image", required=True, metavar="PATH",
                       help="one image file, or skimage:NAME (as for dinov2); preprocessed by the model's own "
                            "timm transform")  # fmt: skip
        s.add_argument("--weights", default=None, metavar="FILE",
                       help="local checkpoint: .safetensors, or .pt/.pth (loaded with weights_only=True) "
                            "(default: timm's pretrained weights, downloaded from the Hugging Face Hub once)")

    @staticmethod
    def inputs(args):
        """The image file and the checkpoint of a timm dump, checked before anything is imported."""
        from .images import expand

        frames = expand([args.image])
        if len(frames) != 1:
            raise ValueError(f"--image {args.image!r} holds {len(frames)} images; the timm dump takes one")
        if args.weights is not None:
            if not args.weights.endswith(WEIGHT_SUFFIXES):
                raise ValueError(f"--weights must be a {', '.join(WEIGHT_SUFFIXES)} file, got {args.weights!r}")
            if not os.path.isfile(args.weights):
                raise ValueError(f"--weights {args.weights!r}: no such file")
        return frames[0]

    def run(self, args, common, text=None):
        name, path = self.inputs(args)
        adapter.require("timm", "torch", "timm")
        import timm
        import timm.data
        import torch
        from PIL import Image

        model = timm.create_model(args.model, pretrained=args.weights is None)
        if args.weights is not None:
            if args.weights.endswith(".safetensors"):
                from safetensors.torch import load_file

                state = load_file(args.weights)
            else:
                state = torch.load(args.weights, map_location="cpu", weights_only=True)
            model.load_state_dict(state)
        model.eval()
        transform = timm.data.create_transform(**timm.data.resolve_model_data_config(model))
        with Image.open(path) as im:
            image = transform(im.convert("RGB"))
        return dump_timm(model, image, model_id=args.model, checkpoint=args.weights, image_name=name, **common)
