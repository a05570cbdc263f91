"""Every ``meanfield-dump`` input checked before a model is loaded (one ``ValueError`` line each).

Loading a model takes seconds to minutes; a bad text file, an empty text or an impossible count
found afterwards wastes that time and used to end in a traceback. :func:`validate` runs first in
``meanfield.dump.__main__.main`` and reads the text (so a missing or non-UTF-8 file is reported
at once); it works for any sub-command from the attributes the parser gave it.
"""

from __future__ import annotations

import json
import os

MAX_SAMPLE_ROWS = 1024


def _positive(name, value, minimum=1):
    if value is not None and (not isinstance(value, int) or value < minimum):
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _index_list(name, text):
    if text is None or text == "all":
        return
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise ValueError(f"{name} must be 'all' or comma-separated integers, got {text!r}") from None
    if any(v < 0 for v in values) or len(set(values)) != len(values):
        raise ValueError(f"{name} must list distinct block indices >= 0, got {text!r}")


def read_text(args) -> str | None:
    """The text of ``--text``/``--text-file`` (``None`` for image adapters); non-empty UTF-8."""
    if getattr(args, "text_file", None) is not None:
        path = args.text_file
        if not os.path.isfile(path):
            raise ValueError(f"--text-file {path!r}: no such file")
        try:
            with open(path, encoding="utf-8") as fh:
                text = fh.read()
        except UnicodeDecodeError as e:
            raise ValueError(f"--text-file {path!r} is not UTF-8 text ({e.reason} at byte {e.start})") from None
        except OSError as e:
            raise ValueError(f"--text-file {path!r} cannot be read ({e.strerror})") from None
        where = f"--text-file {path!r}"
    elif hasattr(args, "text"):
        text, where = args.text, "--text"
    else:
        return None
    if text is None or not text.strip():
        raise ValueError(f"{where} is empty; a dump needs at least one token of text")
    return text


def validate(args) -> str | None:
    """Check the parsed arguments of any sub-command; return the input text (hf) or ``None``."""
    from meanfield.io.atomic import check_writable

    _positive("--n-query", args.n_query)
    _positive("--key-block", args.key_block)
    _positive("--seed", args.seed, 0)
    _positive("--max-tokens", getattr(args, "max_tokens", None), 2)
    if not 1 <= args.sample_rows <= MAX_SAMPLE_ROWS:
        raise ValueError(f"--sample-rows must lie in [1, {MAX_SAMPLE_ROWS}], got {args.sample_rows}")
    _index_list("--layers", args.layers)
    _index_list("--sample-layers", args.sample_layers)
    for image in getattr(args, "images", None) or ():
        if not os.path.isfile(image):
            raise ValueError(f"--images: no such file {image!r}")
    if getattr(args, "merge", None):
        try:
            json.loads(args.merge)
        except json.JSONDecodeError as e:
            raise ValueError(f"--merge is not valid JSON ({e.msg}): {args.merge!r}") from None
    model = getattr(args, "model", None)
    if model is not None and "/" in model and not os.path.isdir(model):
        raise ValueError(f"model folder {model!r} does not exist")
    check_writable(args.out, args.overwrite, nbytes=8 * 2**20, suffixes=(".h5", ".hdf5"))
    return read_text(args)


def quiet_transformers() -> None:
    """Silence transformers' weight-loading progress bar and info logs (dump output stays readable)."""
    try:
        from transformers.utils import logging as tf_logging
    except ImportError:
        return
    tf_logging.disable_progress_bar()
    tf_logging.set_verbosity_error()
