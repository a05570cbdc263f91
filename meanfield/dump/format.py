"""The dump format: per-layer attention and token statistics of a real model, in HDF5.

A dump is what ``python -m meanfield.dump`` writes and what ``python -m meanfield.compare`` and
the rank-law fit read. Every statistic in it is defined once, in ``meanfield.stats.diagnostics``
(docs/theory.md "Diagnostics"), and computed by the same functions as the simulation diagnostics.

Layout (``format="meanfield-dump"``, ``format_version=1``; ``L`` recorded attention blocks,
``H`` heads, ``n`` query rows, ``N`` tokens (keys), ``C`` model width, ``m`` sampled rows)::

    /                      attrs: format, format_version, meanfield_version, created, model_id,
                           checkpoint_hash, adapter, library_versions (JSON), logit_precision,
                           qk_dtype, softmax_scale, S, P, N, patch_start_idx, num_heads, head_dim,
                           d_model, query_seed, merge (JSON), input_kind, extra (JSON)
    /input/text or /input/images        the input (a string, or the list of image names)
    /query/indices (n,)   global token index n = s*P + p, sorted, the same for every layer
    /query/frame (n,)     s;   /query/position (n,)  p;   /query/token_type (n,) int8 codes,
                           attr ``names`` (JSON list: code -> name, e.g. camera/register/patch)
    /summary/layer (L,)   block index; the dimension scale of every per-layer dataset
    /summary/effective_rank, /summary/normalized_entropy (L,)   head-mean attention
                           attrs: N, n_query
    /attention/head_singular_values (L, H, n)   /attention/mean_singular_values (L, n)
    /attention/head_effective_rank, head_normalized_entropy (L, H)
    /attention/row_entropy, max_weight, logit_mean, logit_std (L, H, n)
    /tokens/order_parameter, mean_cosine, covariance_effective_rank, collapse_residual (L,)
    /tokens/sample (Ls, m, C) float16   /tokens/sample_layers (Ls,)   /tokens/sample_indices (m,)

Datasets are chunked and gzip-compressed; files are written atomically (temporary file in the
same folder, then ``os.replace``). :func:`validate_dump` names the first thing that is missing or
malformed in one line.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os

import h5py
import numpy as np

from meanfield.io.hdf5 import READ_ERRORS, check_contained, decode_attr, encode_attr, read_array
from meanfield.io.atomic import atomic_path

FORMAT = "meanfield-dump"
FORMAT_VERSION = 1

HEAD_ROWS = ("row_entropy", "max_weight", "logit_mean", "logit_std")
TOKEN_STATS = ("order_parameter", "mean_cosine", "covariance_effective_rank", "collapse_residual")
REQUIRED_ATTRS = (
    "model_id", "checkpoint_hash", "adapter", "library_versions", "logit_precision", "qk_dtype",
    "softmax_scale", "S", "P", "N", "patch_start_idx", "num_heads", "head_dim", "d_model",
    "query_seed", "merge", "input_kind",
)  # fmt: skip
JSON_ATTRS = ("library_versions", "merge", "extra")  # stored as JSON strings


@dataclasses.dataclass
class Dump:
    """In-memory dump. Per-layer arrays have the layer as leading axis (see module docstring)."""

    meta: dict
    layers: np.ndarray  # (L,) int
    query_indices: np.ndarray  # (n,) int
    query_frame: np.ndarray  # (n,)
    query_position: np.ndarray  # (n,)
    query_token_type: np.ndarray  # (n,) int8
    token_type_names: list
    attention: dict  # name -> array, see module docstring
    tokens: dict  # TOKEN_STATS -> (L,)
    sample: np.ndarray | None = None  # (Ls, m, C) float16
    sample_layers: np.ndarray | None = None  # (Ls,)
    sample_indices: np.ndarray | None = None  # (m,)
    input_text: str | None = None
    input_images: list | None = None

    @property
    def summary(self) -> dict:
        """The ``/summary`` arrays: block index and head-mean effective rank / normalized entropy."""
        return {
            "layer": self.layers,
            "effective_rank": self.attention["effective_rank"],
            "normalized_entropy": self.attention["normalized_entropy"],
        }


def recorded_merge_factor(merge) -> float:
    """The mobility factor ``M >= 1`` of a dump's recorded merge settings: their ``"M"`` entry, else 1
    (checked by ``meanfield._validate.merge_factor``, the one place where input becomes ``M``)."""
    from meanfield._validate import merge_factor

    if isinstance(merge, dict) and merge.get("M") is not None:
        return merge_factor(merge["M"])
    return 1.0


def _put(group, name, data, *, dtype=None, scale=None):
    """A chunked, gzip-compressed dataset (scalars and empty arrays stored plainly)."""
    data = np.asarray(data, dtype=dtype)
    opts = {"compression": "gzip", "compression_opts": 4, "shuffle": True} if data.size > 16 else {}
    ds = group.create_dataset(name, data=data, **opts)
    if scale is not None and data.ndim >= 1:
        ds.dims[0].attach_scale(scale)
    return ds


def _attr_value(key, value):
    """Python value to an HDF5 attribute: JSON (sorted keys) for structured ones, "" for None."""
    return encode_attr(value, as_json=key in JSON_ATTRS, none="", sort_keys=True, default=str)


def write_dump(path, dump: Dump, *, overwrite: bool = False) -> str:
    """Write ``dump`` to ``path`` atomically (validated first); return the path."""
    check_dump(dump)
    with atomic_path(path, overwrite=overwrite) as tmp:
        _write(tmp, dump)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual permissions
    return os.fspath(path)


def _write(tmp, dump: Dump) -> None:
    with h5py.File(tmp, "w") as f:
        f.attrs["format"] = FORMAT
        f.attrs["format_version"] = FORMAT_VERSION
        f.attrs["created"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        from meanfield._version import __version__

        f.attrs["meanfield_version"] = __version__
        for key, value in dump.meta.items():
            f.attrs[key] = _attr_value(key, value)
        inp = f.create_group("input")
        if dump.input_text is not None:
            inp.create_dataset("text", data=dump.input_text, dtype=h5py.string_dtype())
        if dump.input_images is not None:
            inp.create_dataset("images", data=list(dump.input_images), dtype=h5py.string_dtype())
        q = f.create_group("query")
        _put(q, "indices", dump.query_indices, dtype=np.int64)
        _put(q, "frame", dump.query_frame, dtype=np.int64)
        _put(q, "position", dump.query_position, dtype=np.int64)
        _put(q, "token_type", dump.query_token_type, dtype=np.int8).attrs["names"] = json.dumps(
            list(dump.token_type_names)
        )
        s = f.create_group("summary")
        layer = _put(s, "layer", dump.layers, dtype=np.int64)
        layer.make_scale("layer")
        s.attrs["N"] = int(dump.meta["N"])
        s.attrs["n_query"] = len(dump.query_indices)
        s.attrs["merge"] = recorded_merge_factor(dump.meta.get("merge"))
        for name in ("effective_rank", "normalized_entropy"):
            _put(s, name, dump.attention[name], dtype=np.float64, scale=layer)
        a = f.create_group("attention")
        for name, value in dump.attention.items():
            if name not in ("effective_rank", "normalized_entropy"):
                _put(a, name, value, dtype=np.float32, scale=layer)
        t = f.create_group("tokens")
        for name in TOKEN_STATS:
            _put(t, name, dump.tokens[name], dtype=np.float64, scale=layer)
        if dump.sample is not None:
            _put(t, "sample", dump.sample, dtype=np.float16)
            _put(t, "sample_layers", dump.sample_layers, dtype=np.int64)
            _put(t, "sample_indices", dump.sample_indices, dtype=np.int64)


ATTENTION_SHAPES = {
    "head_singular_values": ("L", "H", "n"),
    "mean_singular_values": ("L", "n"),
    "head_effective_rank": ("L", "H"),
    "head_normalized_entropy": ("L", "H"),
    **{name: ("L", "H", "n") for name in HEAD_ROWS},
}


def check_dump(dump: Dump) -> None:
    """Shapes and finiteness of an in-memory dump; ``ValueError`` naming the first problem."""
    L, n = len(dump.layers), len(dump.query_indices)
    H = int(dump.meta.get("num_heads", 0))
    dims = {"L": L, "H": H, "n": n}
    for key in REQUIRED_ATTRS:
        if key not in dump.meta:
            raise ValueError(f"dump metadata lacks {key!r}")
    if L == 0 or n == 0:
        raise ValueError(f"dump must hold at least one layer and one query, got L={L}, n={n}")
    for name, shape in ATTENTION_SHAPES.items():
        _shape_ok(f"attention/{name}", dump.attention.get(name), tuple(dims[s] for s in shape))
    for name in ("effective_rank", "normalized_entropy"):
        _shape_ok(f"summary/{name}", dump.attention.get(name), (L,))
    for name in TOKEN_STATS:
        _shape_ok(f"tokens/{name}", dump.tokens.get(name), (L,))
    for name in ("query_frame", "query_position", "query_token_type"):
        _shape_ok(f"query/{name[6:]}", getattr(dump, name), (n,))


def _shape_ok(where, value, shape):
    if value is None:
        raise ValueError(f"{where} is missing")
    arr = np.asarray(value)
    if arr.shape != shape:
        raise ValueError(f"{where} has shape {arr.shape}, expected {shape}")
    if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
        raise ValueError(f"{where} contains NaN or inf")


def _open(path):
    """Open read-only; turn h5py's errors on truncated or foreign files into one-line ValueErrors."""
    if not os.path.isfile(path):
        raise ValueError(f"{path}: no such file")
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise ValueError(f"{path}: not a readable HDF5 file (truncated or corrupt?): {exc}".splitlines()[0]) from None


def _dataset(f, name):
    if name not in f:
        raise ValueError(f"{f.filename}: missing {'group' if '/' not in name else 'dataset'} /{name}")
    try:
        return np.asarray(read_array(f[name], f"/{name}", numeric=False))
    except (OSError, RuntimeError, TypeError, ValueError, KeyError, AttributeError) as exc:  # damaged, wrong type
        raise ValueError(f"{f.filename}: cannot read /{name}: {exc}".splitlines()[0]) from None


def _validate_open(f) -> tuple[dict, dict]:
    """Check every part of an open dump file; return (attrs, arrays)."""
    fn = f.filename
    check_contained(f, fn)  # no links out of the file, external storage or virtual datasets
    fmt = _attr("format", f.attrs.get("format"))
    if fmt != FORMAT:
        raise ValueError(f"{fn}: not a meanfield dump (root attr format={fmt!r}, expected {FORMAT!r})")
    version = _attr("format_version", f.attrs.get("format_version"))
    if version != FORMAT_VERSION:
        raise ValueError(f"{fn}: unsupported format_version {version!r}, expected {FORMAT_VERSION}")
    for key in REQUIRED_ATTRS:
        if key not in f.attrs:
            raise ValueError(f"{fn}: missing root attribute {key!r}")
    for group in ("input", "query", "summary", "attention", "tokens"):
        if group not in f or not isinstance(f[group], h5py.Group):
            raise ValueError(f"{fn}: missing group /{group}")
    arr = {}
    for name in ("layer", "effective_rank", "normalized_entropy"):
        arr["summary/" + name] = _dataset(f, "summary/" + name)
    for name in ATTENTION_SHAPES:
        arr["attention/" + name] = _dataset(f, "attention/" + name)
    for name in TOKEN_STATS:
        arr["tokens/" + name] = _dataset(f, "tokens/" + name)
    for name in ("indices", "frame", "position", "token_type"):
        arr["query/" + name] = _dataset(f, "query/" + name)
    L = arr["summary/layer"].shape[0] if arr["summary/layer"].ndim == 1 else -1
    n = arr["query/indices"].shape[0] if arr["query/indices"].ndim == 1 else -1
    dims = {"L": L, "H": int(f.attrs["num_heads"]), "n": n}
    if L < 1 or n < 1:
        raise ValueError(f"{fn}: /summary/layer and /query/indices must be non-empty 1-d arrays")
    expected = {
        "summary/effective_rank": (L,), "summary/normalized_entropy": (L,),
        **{f"attention/{k}": tuple(dims[s] for s in v) for k, v in ATTENTION_SHAPES.items()},
        **{f"tokens/{k}": (L,) for k in TOKEN_STATS},
        **{f"query/{k}": (n,) for k in ("frame", "position", "token_type")},
    }  # fmt: skip
    for name, shape in expected.items():
        if arr[name].shape != shape:
            raise ValueError(f"{fn}: /{name} has shape {arr[name].shape}, expected {shape}")
    for name, value in arr.items():
        if value.dtype.kind == "f" and not np.all(np.isfinite(value)):
            raise ValueError(f"{fn}: /{name} contains NaN or inf")
    N, idx = int(f.attrs["N"]), arr["query/indices"]
    if int(f["summary"].attrs.get("N", -1)) != N or int(f["summary"].attrs.get("n_query", -1)) != n:
        raise ValueError(f"{fn}: /summary attrs N, n_query disagree with root N={N} and {n} queries")
    if np.any(idx < 0) or np.any(idx >= N) or np.any(np.diff(idx) <= 0):
        raise ValueError(f"{fn}: /query/indices must be strictly increasing and lie in [0, N={N})")
    if "sample" in f["tokens"]:
        for name in ("sample", "sample_layers", "sample_indices"):
            arr["tokens/" + name] = _dataset(f, "tokens/" + name)
        smp, sl, si = arr["tokens/sample"], arr["tokens/sample_layers"], arr["tokens/sample_indices"]
        want = (sl.shape[0] if sl.ndim == 1 else -1, si.shape[0] if si.ndim == 1 else -1, int(f.attrs["d_model"]))
        if smp.shape != want:
            raise ValueError(f"{fn}: /tokens/sample has shape {smp.shape}, expected {want}")
        if not np.all(np.isfinite(smp)):
            raise ValueError(f"{fn}: /tokens/sample contains NaN or inf")
        if not np.all(np.isin(sl, arr["summary/layer"])):
            raise ValueError(f"{fn}: /tokens/sample_layers names layers absent from /summary/layer")
    return dict(f.attrs), arr


def validate_dump(path) -> None:
    """Raise ``ValueError`` (one line, naming the file and the part) unless ``path`` is a valid dump."""
    with _open(path) as f:
        _validate_open(f)


def _attr(key, value):
    """Root attribute back to Python: JSON-encoded ones (``JSON_ATTRS``) decoded, numpy scalars unwrapped."""
    return decode_attr(value, parse_json=key in JSON_ATTRS, null=None)


def read_dump(path) -> Dump:
    """Validate and load a dump file into a :class:`Dump`; ``ValueError`` (one line) for anything else.

    ``ValueError`` is the one documented exception for missing, truncated, foreign or damaged files
    (fuzzed in tests/test_fuzz_loaders.py).
    """
    try:
        return _read_dump(path)
    except ValueError as e:
        raise ValueError(str(e).splitlines()[0] if str(e) else f"{path}: damaged dump") from None
    except READ_ERRORS as e:
        raise ValueError(f"{path}: damaged dump ({type(e).__name__}: {e})".splitlines()[0]) from None


def _read_dump(path) -> Dump:
    with _open(path) as f:
        attrs, arr = _validate_open(f)
        names = decode_attr(f["query/token_type"].attrs.get("names", "[]"), parse_json=True, null=None)
        text = f["input/text"][()].decode() if "text" in f["input"] else None
        images = [s.decode() for s in f["input/images"][()]] if "images" in f["input"] else None
    skip = {"format", "format_version", "created", "meanfield_version"}
    meta = {k: _attr(k, v) for k, v in attrs.items() if k not in skip}
    meta.update({k: _attr(k, attrs[k]) for k in ("created", "meanfield_version") if k in attrs})
    attention = {k.split("/", 1)[1]: v for k, v in arr.items() if k.startswith("attention/")}
    attention["effective_rank"] = arr["summary/effective_rank"]
    attention["normalized_entropy"] = arr["summary/normalized_entropy"]
    return Dump(
        meta=meta,
        layers=arr["summary/layer"],
        query_indices=arr["query/indices"],
        query_frame=arr["query/frame"],
        query_position=arr["query/position"],
        query_token_type=arr["query/token_type"],
        token_type_names=names,
        attention=attention,
        tokens={k: arr["tokens/" + k] for k in TOKEN_STATS},
        sample=arr.get("tokens/sample"),
        sample_layers=arr.get("tokens/sample_layers"),
        sample_indices=arr.get("tokens/sample_indices"),
        input_text=text,
        input_images=images,
    )
