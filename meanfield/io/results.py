"""HDF5 results files (schema ``meanfield-results`` version 2; docs/formats.md).

Version 2 (this version) adds the optional ``/tokens/weights`` (token masses) and records the
kernel and method options as ``kernel_options`` and ``method_options`` (no ``rtol``/``atol``);
version 1 files have the same layout and are read as they are.

Layout (Dedalus-style dimension scales)::

    /                       attrs: format, format_version, meanfield_version, jax_version, created
    /parameters             attrs: the run's parameters (JSON for nested values, "null" for None;
                            meanfield.io.hdf5.encode_attr/decode_attr)
    /scales/t, /scales/layer           (n_saves,) dimension scales
    /diagnostics/<name>     (n_saves,) or (n_saves, n); dim 0 attached to t and layer
    /query_indices          (n,) int64
    /tokens/final           (N, d)            optional /tokens/snapshots (n_saves, N, d), /tokens/weights (N,)
    /density/values         (n_saves, cells)  optional, with /density/grid_<name> (density solvers)
    /stats                  attrs: wall time, field evaluations, ...
    /warnings               attrs: warning_<i> strings
"""

from __future__ import annotations

import datetime

import h5py
import numpy as np

from meanfield.io.hdf5 import READ_ERRORS, check_contained, decode_attr, encode_attr, read_array, read_attrs
from meanfield._version import __version__
from meanfield.io.atomic import atomic_path
from meanfield.flow.solution import FlowSolution

FORMAT = "meanfield-results"
FORMAT_VERSION = 2


def _jax_version() -> str:
    import jax  # loaded by whoever has a solution to save; reading results needs no JAX

    return jax.__version__


def save_results(path, sol: FlowSolution, *, overwrite: bool = False, compression: str | None = "gzip"):
    """Write ``sol`` to ``path`` atomically; refuse to replace an existing file unless ``overwrite``."""
    with atomic_path(path, overwrite) as tmp, h5py.File(tmp, "w") as f:
        f.attrs.update({"format": FORMAT, "format_version": FORMAT_VERSION, "meanfield_version": __version__,
                        "jax_version": _jax_version(),
                        "created": datetime.datetime.now(datetime.timezone.utc).isoformat()})
        p = f.create_group("parameters")
        for k, v in sol.params.items():
            p.attrs[k] = encode_attr(v)
        sc = f.create_group("scales")
        t = sc.create_dataset("t", data=np.asarray(sol.t, dtype=np.float64))
        lay = sc.create_dataset("layer", data=np.asarray(sol.layers, dtype=np.int64))
        t.make_scale("t")
        lay.make_scale("layer")
        g = f.create_group("diagnostics")
        for name, val in sol.diagnostics.items():
            ds = g.create_dataset(name, data=np.asarray(val), compression=compression if np.ndim(val) > 1 else None)
            ds.dims[0].attach_scale(t)
            ds.dims[0].attach_scale(lay)
        if sol.query_indices is not None:
            f.create_dataset("query_indices", data=np.asarray(sol.query_indices, dtype=np.int64))
        if sol.x is not None or sol.snapshots is not None:
            tok = f.create_group("tokens")
            if sol.x is not None:
                tok.create_dataset("final", data=np.asarray(sol.x), compression=compression)
            if sol.weights is not None:
                tok.create_dataset("weights", data=np.asarray(sol.weights, dtype=np.float64))
            if sol.snapshots is not None:
                ds = tok.create_dataset("snapshots", data=np.asarray(sol.snapshots), compression=compression)
                ds.dims[0].attach_scale(t)
        if sol.density is not None:
            dens = f.create_group("density")
            ds = dens.create_dataset("values", data=np.asarray(sol.density), compression=compression)
            ds.dims[0].attach_scale(t)
            for k, v in (sol.grid or {}).items():
                dens.create_dataset(f"grid_{k}", data=np.asarray(v))
        st = f.create_group("stats")
        for k, v in sol.stats.items():
            st.attrs[k] = encode_attr(v)
        w = f.create_group("warnings")
        for i, msg in enumerate(sol.warnings):
            w.attrs[f"warning_{i}"] = str(msg)
    return path


def load_results(path) -> FlowSolution:
    """Read a results file written by :func:`save_results`.

    Raises ``ValueError`` (one line) for anything that is not a complete, consistent results file:
    missing, truncated, foreign, damaged (wrong dtypes or shapes, missing parts, declared sizes
    beyond memory); this is the loader's one documented exception (fuzzed in tests/test_fuzz_loaders.py).
    """
    try:
        f = h5py.File(path, "r")
    except FileNotFoundError:
        raise ValueError(f"no such results file: {path}") from None
    except READ_ERRORS as e:
        raise ValueError(f"{path} is not a readable HDF5 file ({e})".splitlines()[0]) from None
    try:
        with f:
            return _read(f, path)
    except ValueError as e:
        raise ValueError(str(e).splitlines()[0] if str(e) else f"{path}: damaged results file") from None
    except READ_ERRORS as e:
        raise ValueError(f"{path}: damaged results file ({type(e).__name__}: {e})".splitlines()[0]) from None


def _read(f, path) -> FlowSolution:
    check_contained(f, path)  # no links out of the file, external storage or virtual datasets
    fmt = decode_attr(f.attrs.get("format"))
    if fmt != FORMAT:
        raise ValueError(f"{path} is not a meanfield results file (format attribute {fmt!r})")
    version = int(np.asarray(f.attrs.get("format_version", -1)).item())
    if version > FORMAT_VERSION:
        raise ValueError(f"{path} has results format version {version}; this meanfield reads <= {FORMAT_VERSION}")
    for need in ("parameters", "scales/t", "scales/layer", "diagnostics"):
        if need not in f:
            raise ValueError(f"{path} is missing /{need}")

    def arr(where, numeric=True):
        return read_array(f[where], f"{path}: /{where}", numeric=numeric)

    t, layers = arr("scales/t"), arr("scales/layer")
    if t.ndim != 1 or layers.shape != t.shape or t.size == 0:
        raise ValueError(f"{path}: /scales/t and /scales/layer must be equal non-empty 1-D arrays, "
                         f"got {t.shape} and {layers.shape}")
    diags = {k: arr(f"diagnostics/{k}") for k in f["diagnostics"]}
    for k, v in diags.items():
        if v.ndim < 1 or v.shape[0] != t.size:
            raise ValueError(f"{path}: /diagnostics/{k} has shape {v.shape}, expected ({t.size}, ...)")
    params = read_attrs(f["parameters"])
    tok = f.get("tokens")
    dens = f.get("density")
    x = arr("tokens/final") if tok is not None and "final" in tok else None
    if x is not None and x.ndim != 2:
        raise ValueError(f"{path}: /tokens/final has shape {x.shape}, expected (N, d)")
    return FlowSolution(
        t=t,
        layers=layers,
        x=x,
        diagnostics=diags,
        params=params,
        query_indices=arr("query_indices") if "query_indices" in f else None,
        snapshots=arr("tokens/snapshots") if tok is not None and "snapshots" in tok else None,
        stats=read_attrs(f["stats"]) if "stats" in f else {},
        grid={k[5:]: arr(f"density/{k}") for k in dens if k.startswith("grid_")} if dens is not None else None,
        density=arr("density/values") if dens is not None else None,
        warnings=[str(decode_attr(v)) for _, v in sorted(f["warnings"].attrs.items())] if "warnings" in f else [],
        weights=arr("tokens/weights") if tok is not None and "weights" in tok else None,
    )
