"""VGGT adapter: attention statistics of the global-attention blocks of ``model.aggregator``.

VGGT (facebookresearch/vggt; Wang et al. 2025) alternates frame attention and global attention.
Its aggregator turns S images of H x W pixels into ``P = patch_start_idx + (H/14)(W/14)`` tokens
per frame -- index 0 the camera token, 1..4 the register tokens, patch tokens from
``patch_start_idx = 5`` -- and every ``aggregator.global_blocks[l]`` attends over all
``N = S * P`` tokens, global index ``n = s * P + p``. Its ``Attention.forward(x, pos=...)`` takes
``qkv``, splits heads (16 heads of 64 dims for VGGT-1B, softmax scale ``64**-0.5 = 0.125``),
applies ``q_norm``/``k_norm`` and the 2-D RoPE ``rope(t, pos)``, then
``F.scaled_dot_product_attention``.

The adapter never replaces model code. A forward pre-hook (``with_kwargs=True``, since ``pos``
is a keyword) on each ``global_blocks[l].attn`` recomputes q and k the same way and hands them
to the :class:`~meanfield.dump.stats.Recorder`; a pre-hook on ``global_blocks[l]`` records the
residual stream entering the block. A forward hook checks that the recomputed q, k, v reproduce
the module's output rows, and :func:`dump_vggt` checks that the hooked aggregator's outputs equal
the plain ones. Tested against a structural stand-in (``tests/test_dump_vggt_standin.py``), not
against the real weights, which cannot be installed here (docs/dumps.md).
"""

from __future__ import annotations

import contextlib
import json
import time

import numpy as np

from . import adapter
from .stats import Recorder, build_dump

TOKEN_TYPES = ["camera", "register", "patch"]
PATCH_SIZE = 14


def tokens_per_frame(height: int, width: int, *, patch_size: int = PATCH_SIZE, patch_start_idx: int = 5) -> int:
    """``P = patch_start_idx + (H / patch) * (W / patch)``; H and W must be multiples of the patch."""
    if height % patch_size or width % patch_size:
        raise ValueError(f"image size {height}x{width} is not a multiple of the patch size {patch_size}")
    return patch_start_idx + (height // patch_size) * (width // patch_size)


def token_layout(indices, P: int, patch_start_idx: int):
    """Frame ``s = n // P``, position ``p = n % P`` and type code (0 camera, 1 register, 2 patch)."""
    indices = np.asarray(indices)
    frame, pos = indices // P, indices % P
    kind = np.where(pos == 0, 0, np.where(pos < patch_start_idx, 1, 2)).astype(np.int8)
    return frame, pos, kind


def attach(aggregator, recorder: Recorder, *, layers=None, check: bool = True):
    """Hook ``aggregator.global_blocks[l]`` (and its ``.attn``) for each ``l`` in ``layers`` (all):
    a :class:`meanfield.dump._torch.QKVCapture`."""
    from . import _torch

    return _torch.attach_blocks(aggregator.global_blocks, recorder, layers=layers, check=check,
                                owner="the aggregator's global stack")


def dump_vggt(model, images, *, n_query: int = 512, seed: int = 0, layers=None, sample_rows: int = 1024,
              sample_layers=None, amp_dtype=None, key_block: int = 1024, self_check: bool = True,
              model_id: str = "facebook/VGGT-1B", checkpoint=None, image_names=None, merge=None,
              check_capture: bool = True, capture_tolerance: float | None = None, stats_dtype=None):  # fmt: skip
    """Run ``model.aggregator`` (or ``model`` if it is the aggregator) on ``images`` and return a Dump.

    ``images`` (S, 3, H, W) or (1, S, 3, H, W) in [0, 1], as VGGT's ``load_and_preprocess_images``
    returns them. ``amp_dtype`` (e.g. ``torch.bfloat16``) runs under ``torch.autocast`` like VGGT's
    demo; the q/k dtype the softmax saw is recorded in ``qk_dtype``. ``merge`` is a dict of
    FastVGGT merge settings, recorded as given (the statistics are over whatever tokens enter the
    global attention). ``capture_tolerance`` bounds the relative capture-check error (default
    1e-4 in float32, 5e-2 under autocast). Statistics from the shared diagnostics
    (:mod:`meanfield.dump.stats`).
    """
    import torch

    from meanfield.stats.diagnostics import query_subset

    from . import _torch

    agg = getattr(model, "aggregator", model)
    if images.ndim == 4:
        images = images[None]
    if images.ndim != 5 or images.shape[0] != 1 or images.shape[2] != 3:
        raise ValueError(f"images must have shape (S, 3, H, W) or (1, S, 3, H, W), got {tuple(images.shape)}")
    S, H, W = images.shape[1], images.shape[3], images.shape[4]
    psi = int(getattr(agg, "patch_start_idx", 5))
    patch = int(getattr(agg, "patch_size", PATCH_SIZE))
    P = tokens_per_frame(H, W, patch_size=patch, patch_start_idx=psi)
    N = S * P
    attn0 = agg.global_blocks[0].attn
    heads, head_dim, scale = int(attn0.num_heads), int(attn0.head_dim), float(attn0.scale)
    idx = np.asarray(query_subset(N, n_query, seed))
    smp = np.asarray(query_subset(N, min(sample_rows, N), seed + 1))
    device = images.device
    amp = (
        torch.autocast(device_type=device.type, dtype=amp_dtype) if amp_dtype is not None else contextlib.nullcontext()
    )

    def forward():
        with torch.no_grad(), amp:
            return agg(images)

    t0 = time.perf_counter()
    plain = forward() if self_check else None
    rec = Recorder(idx, scale, sample_indices=smp, sample_layers=sample_layers, key_block=key_block, dtype=stats_dtype)
    cap = attach(agg, rec, layers=layers, check=check_capture)
    try:
        hooked = forward()
    finally:
        cap.remove()
    diff = adapter.self_check(self_check, lambda: _torch.outputs_equal(plain, hooked), "aggregator")
    if rec.n_tokens != N and merge is None:
        raise ValueError(f"global attention saw {rec.n_tokens} tokens, expected S*P = {S}*{P} = {N}")
    tol = capture_tolerance if capture_tolerance is not None else (1e-4 if amp_dtype is None else 5e-2)
    adapter.capture_check(cap.errors, tol, show_tolerance=True)
    frame, pos, kind = token_layout(idx, P, psi)
    meta = adapter.metadata(
        "vggt", rec, model_id=model_id, checkpoint=checkpoint if checkpoint is not None else agg, scale=scale,
        S=S, P=P, N=N, patch_start_idx=psi, num_heads=heads, head_dim=head_dim,
        d_model=int(attn0.qkv.in_features), seed=seed, merge=merge, input_kind="images",
        extra={"image_size": [H, W], "patch_size": patch, "self_check_max_abs_diff": diff,
               "capture_max_rel_error": cap.errors, "seconds": time.perf_counter() - t0,
               "amp_dtype": str(amp_dtype), "device": str(device)},
    )  # fmt: skip
    names = list(image_names) if image_names is not None else [f"frame_{s}" for s in range(S)]
    return build_dump(rec, meta, idx, frame, pos, kind, TOKEN_TYPES, sample_indices=smp, input_images=names)


class VGGTAdapter(adapter.Adapter):
    """``meanfield-dump vggt --images ...``: VGGT (installed by the user) on a sequence of images."""

    name = "vggt"
    help = "VGGT on images"

    @classmethod
    def add_arguments(cls, s):
        s.add_argument("--images", nargs="+", required=True, help="image files, in frame order")
        s.add_argument("--weights", default="facebook/VGGT-1B", help="hub id or local checkpoint (.pt, loaded with weights_only=True)")
        s.add_argument("--device", default="cuda", help="torch device (default: %(default)s)")
        s.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"),
                       help="autocast dtype of the forward pass (default: %(default)s)")
        s.add_argument("--merge", default=None, help="FastVGGT merge settings as JSON, recorded as given (default: none)")
        s.add_argument(
            "--no-capture-check",
            action="store_true",
            help="skip the check that recomputed q/k reproduce each block's output (FastVGGT)",
        )

    def run(self, args, common, text=None):
        adapter.require("vggt", "torch")
        import torch

        try:
            from vggt.models.vggt import VGGT
            from vggt.utils.load_fn import load_and_preprocess_images
        except ImportError:
            raise ValueError("vggt is not installed: pip install git+https://github.com/facebookresearch/vggt") from None

        if args.weights.endswith((".pt", ".pth")):
            model = VGGT()
            model.load_state_dict(torch.load(args.weights, map_location="cpu", weights_only=True))
        else:
            model = VGGT.from_pretrained(args.weights)
        model = model.to(args.device).eval()
        images = load_and_preprocess_images(args.images).to(args.device)
        amp = None if args.dtype == "float32" else getattr(torch, args.dtype)
        merge = json.loads(args.merge) if args.merge else None
        return dump_vggt(model, images, amp_dtype=amp, model_id=args.weights, image_names=args.images, merge=merge,
                         check_capture=not args.no_capture_check,
                         checkpoint=args.weights if args.weights.endswith((".pt", ".pth")) else None,
                         **common)  # fmt: skip
