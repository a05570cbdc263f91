"""``meanfield-fit DATA`` (or ``python -m meanfield.fit DATA``): fit the paper's laws to a measured curve.

DATA is one of
- a CSV file (``#`` comment lines allowed) with a header row: an abscissa column ``layer`` (block
  index) or ``m`` (fusion strength), one or both of ``effective_rank`` and ``normalized_entropy``,
  and optionally ``sigma`` (one standard error of the fitted quantity per row); columns ``N``
  and ``merge`` (or ``fusion``), the same in every row as ``meanfield-simulate --table`` writes
  them, give N and M; ``--N``/``--merge`` override them;
- a results HDF5 file from ``python -m meanfield.simulate`` (root attr ``format ==
  "meanfield-results"``): ``/scales/layer``, ``/diagnostics/<quantity>``, ``N`` and ``merge`` (or ``fusion``,
  ``M = 1/(1-fusion)``) in the attributes of ``/parameters``; ``--N``/``--merge`` override them;
- a real-model dump (root attr ``format == "meanfield-dump"``): ``/summary/layer``,
  ``/summary/<quantity>``, ``N`` (and optionally ``merge``) in the attributes of ``/summary``.

Which law: ``layer`` + effective_rank -> rank law (Eq. 1/9/15); ``layer`` + normalized_entropy ->
Eq. 13 in depth; ``m`` + normalized_entropy -> Eq. 13 in m; ``m`` + effective_rank -> rank law at
fixed depth in m.  Prints estimates, 95 % intervals and the model comparison, and writes a PNG
(data, fit, 95 % confidence band) atomically.  Bad input: one line ``meanfield-fit: error: ...``
on stderr, exit status 2, no PNG.

Command-line convention (``meanfield._cli``): ``build_parser()``, ``main(argv)`` and
``cli(argv=None) -> int``, the target of the ``meanfield-fit`` script.
"""

from __future__ import annotations

import csv
import os
import sys
from pathlib import Path

import numpy as np

from meanfield._cli import ArgumentParser, output_path, run_cli
from meanfield.io.hdf5 import READ_ERRORS, check_contained, decode_attr, is_hdf5, read_array, read_attrs
from meanfield.io.atomic import atomic_path, check_writable

PROG = "meanfield-fit"
QUANTITIES = ("effective_rank", "normalized_entropy")
QUANTITY_LABELS = {"effective_rank": "effective rank", "normalized_entropy": "normalized entropy H_sv / log n"}


RUN_COLUMNS = ("N", "merge", "fusion")
"""Columns that describe the run rather than a layer (``meanfield-simulate --table`` writes N and merge)."""


def _read_csv(path):
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            rows = [r for r in csv.reader(fh) if r and not r[0].lstrip().startswith("#")]
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}); expected a CSV file") from None
    except csv.Error as e:
        raise ValueError(f"{path}: not a readable CSV file ({e})") from None
    if len(rows) < 2:
        raise ValueError(f"{path}: expected a header row and data rows")
    header = [h.strip() for h in rows[0]]
    cols = {}
    for i, name in enumerate(header):
        try:
            cols[name] = np.array([float(r[i]) for r in rows[1:]])
        except (ValueError, IndexError):
            raise ValueError(f"{path}: column {name!r} has a missing or non-numeric entry") from None
    meta = {}
    for name in RUN_COLUMNS:
        if name in cols:
            values = cols.pop(name)
            if np.any(values != values[0]):
                raise ValueError(f"{path}: column {name!r} describes the run and must be the same in every row")
            meta[name] = float(values[0])
    return cols, _merge_from_fusion(meta)


def _merge_from_fusion(meta):
    if "merge" not in meta and "fusion" in meta and 0 <= meta["fusion"] < 1:
        meta["merge"] = 1.0 / (1.0 - meta["fusion"])
    return meta


def _read_hdf5(path):
    import h5py

    with h5py.File(path, "r") as f:
        check_contained(f, path)  # no links out of the file, external storage or virtual datasets
        fmt = decode_attr(f.attrs.get("format"))
        if fmt == "meanfield-results":
            need = ["scales/layer"]
            cols = {"layer": "scales/layer"}
            cols.update({q: f"diagnostics/{q}" for q in QUANTITIES})
            attrs = read_attrs(f["parameters"]) if "parameters" in f else {}
        elif fmt == "meanfield-dump":
            need = ["summary/layer"]
            cols = {k: f"summary/{k}" for k in ("layer",) + QUANTITIES}
            attrs = {**read_attrs(f), **read_attrs(f["summary"])} if "summary" in f else {}
        else:
            raise ValueError(f"{path}: unknown HDF5 format {fmt!r} (expected 'meanfield-results' "
                             f"or 'meanfield-dump')")
        for key in need:
            if key not in f:
                raise ValueError(f"{path}: missing dataset /{key}")
        out = {}
        for name, key in cols.items():
            if key in f:
                a = np.asarray(read_array(f[key], f"{path}: /{key}"), dtype=np.float64)
                if a.ndim != 1:
                    raise ValueError(f"{path}: /{key} must be 1-D per layer, got shape {a.shape}")
                out[name] = a
    meta = {}
    for k in ("N", "merge", "fusion"):
        try:
            meta[k] = float(np.asarray(attrs[k]))
        except (KeyError, TypeError, ValueError):
            pass
    return out, _merge_from_fusion(meta)


def load_curve(path, quantity=None):
    """Read DATA; return (abscissa name, x, y, sigma or None, quantity, metadata dict)."""
    if not os.path.isfile(path):
        raise ValueError(f"no such file: {path}")
    try:
        cols, meta = _read_hdf5(path) if is_hdf5(path) else _read_csv(path)  # by signature, not by name
    except ValueError:
        raise
    except READ_ERRORS as e:  # a damaged HDF5 file: one documented exception type for every loader
        raise ValueError(f"{path}: damaged file ({type(e).__name__}: {e})".splitlines()[0]) from None
    xname = "layer" if "layer" in cols else "m" if "m" in cols else None
    if xname is None:
        raise ValueError(f"{path}: no abscissa column 'layer' or 'm' (found {sorted(cols)})")
    if quantity is None:
        quantity = next((q for q in QUANTITIES if q in cols), None)
        if quantity is None:
            raise ValueError(f"{path}: no column 'effective_rank' or 'normalized_entropy'")
    elif quantity not in cols:
        raise ValueError(f"{path}: no column {quantity!r} (found {sorted(cols)})")
    x, y = cols[xname], cols[quantity]
    sigma = cols.get("sigma")
    for name, a in ((xname, x), (quantity, y), ("sigma", sigma)):
        if a is not None and not np.all(np.isfinite(a)):
            raise ValueError(f"{path}: column {name!r} contains NaN or infinite values")
    if x.size != y.size:
        raise ValueError(f"{path}: {xname} has {x.size} entries but {quantity} has {y.size}")
    if np.any(np.diff(x) <= 0):
        raise ValueError(f"{path}: {xname} must be strictly increasing")
    if sigma is not None and np.any(sigma <= 0):
        raise ValueError(f"{path}: sigma must be > 0 in every row")
    return xname, x, y, sigma, quantity, meta


def run_fit(xname, x, y, sigma, quantity, *, N=None, merge=1.0, r=None, optimizer="lm"):
    from meanfield import fit

    if xname == "m":
        if quantity == "normalized_entropy":
            return fit.fit_entropy_curve(x, y, variable="fusion", sigma=sigma, optimizer=optimizer)
        return fit.fit_rank_vs_fusion(x, y, sigma=sigma, optimizer=optimizer)
    if N is None:
        raise ValueError("the token count N is not in the file: pass --N")
    if quantity == "effective_rank":
        return fit.fit_rank_curve(x, y, N=N, merge=merge, r=r, sigma=sigma, optimizer=optimizer)
    return fit.fit_entropy_curve(x, y, variable="depth", N=N, merge=merge, sigma=sigma,
                                 optimizer=optimizer)


def plot_fit(result, xname, quantity, out, overwrite=True):
    """Data, fitted curve and 95 % band; written to a temp file in the same folder, then renamed."""
    from matplotlib.figure import Figure  # no pyplot: no backend chosen for the caller, no global figures

    grid = np.linspace(result.x.min(), result.x.max(), 200)
    fig = Figure(figsize=(6, 5.5))
    ax, axr = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": (3, 1)})
    if result.sigma is not None:
        ax.errorbar(result.x, result.y, yerr=result.sigma, fmt="o", color="k", label="data")
    else:
        ax.plot(result.x, result.y, "o", color="k", label="data")
    fitted = np.asarray(result.predict(grid), float)
    notes = []
    if quantity == "effective_rank" and np.any(fitted < 1):  # an effective rank is >= 1 by definition
        notes.append("fitted curve < 1 (impossible for an effective rank) not drawn")
        fitted = np.where(fitted >= 1, fitted, np.nan)
    ax.plot(grid, fitted, "C0-", label=f"fit: {result.model.formula}")
    if np.all(np.isfinite(result.cov_u)):
        lo, hi = result.band(grid)
        ax.fill_between(grid, lo, hi, color="C0", alpha=0.25, label="95% confidence band")
    label = QUANTITY_LABELS.get(quantity, quantity.replace("_", " "))
    ax.set_ylabel(label)
    ax.set_title(", ".join(f"{p} = {v:.4g}" for p, v in result.estimates.items()), fontsize=9)
    if "alpha" in result.estimates:
        notes.append("alpha: the law's fitted rate, not the kernel's inverse temperature")
    if notes:
        ax.text(0.01, 0.01, "\n".join(notes), transform=ax.transAxes, fontsize=7, va="bottom", color="0.3")
    ax.legend(fontsize=8)
    resid = np.asarray(result.y, float) - np.asarray(result.predict(result.x), float)
    if result.sigma is not None:
        resid = resid / np.asarray(result.sigma, float)
    axr.axhline(0.0, color="0.5", lw=0.8)
    axr.plot(result.x, resid, "o", color="k", ms=4)
    axr.set_ylabel("residual / sigma" if result.sigma is not None else "residual")
    axr.set_xlabel(xname)
    # fixed margins: tight_layout draws the whole figure once more to measure its text (~0.4 s)
    fig.subplots_adjust(left=0.13, right=0.97, top=0.94, bottom=0.09, hspace=0.08)
    with atomic_path(out, overwrite=overwrite) as tmp:
        fig.savefig(tmp, format="png", dpi=120)


def build_parser():
    p = ArgumentParser(prog=PROG, description="Fit the paper's rank/entropy laws to a measured curve.")
    p.add_argument("data", help="CSV or HDF5 (results from meanfield.simulate, or a meanfield-dump)")
    p.add_argument("--quantity", choices=QUANTITIES, default=None,
                   help="curve to fit (default: effective_rank if present, else normalized_entropy)")
    p.add_argument("--N", type=float, default=None, help="token count, needed for a curve in layer (default: "
                   "the file's N: HDF5 attributes, or a CSV column N)")
    p.add_argument("--merge", type=float, default=None, help="merge factor M >= 1 (default: the file's, else 1)")
    p.add_argument("--r", type=float, default=None, help="fix the rank plateau r (default: fitted)")
    p.add_argument("--optimizer", choices=("lm", "lbfgs+lm"), default="lm",
                   help="lm: Levenberg-Marquardt from six starts, NumPy, nothing compiled; lbfgs+lm: optax L-BFGS first (jitted), for starts far from the minimum (default: lm)")
    p.add_argument("--out", default=None, help="PNG to write, .png (a name without a suffix gets .png) (default: "
                   "DATA's stem + _fit.png in the current directory)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT (default: refuse)")
    p.add_argument("--no-plot", action="store_true", help="do not write a PNG")
    return p


def main(argv=None) -> int:
    """Run the command; bad input ends in ``parser.error`` (one line on stderr, exit status 2)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        xname, x, y, sigma, quantity, meta = load_curve(args.data, args.quantity)
        N = args.N if args.N is not None else meta.get("N")
        merge = args.merge if args.merge is not None else meta.get("merge", 1.0)
        if N is not None and not N > 0:
            raise ValueError(f"N must be > 0, got {N}")
        if not merge >= 1:
            raise ValueError(f"merge must be >= 1, got {merge}")
        out = str(output_path(args.out, Path(args.data).stem + "_fit.png", ".png"))
        if not args.no_plot:
            check_writable(out, args.overwrite, suffixes=(".png",))
        result = run_fit(xname, x, y, sigma, quantity, N=N, merge=merge, r=args.r,
                         optimizer=args.optimizer)
        print(f"{args.data}: {quantity} vs {xname}, n = {x.size}"
              + (f", N = {N:g}, merge = {merge:g}" if xname == "layer" else ""))
        print(result.summary())
        if not result.ok:
            print(f"{PROG}: warning: the fit has problems, see the notes above", file=sys.stderr)
        if not args.no_plot:
            plot_fit(result, xname, quantity, out, overwrite=args.overwrite)
            print(f"wrote {out}")
    except (ValueError, OSError) as err:
        parser.error(str(err))
    return 0


def cli(argv=None) -> int:
    """Entry point of the ``meanfield-fit`` script: ``main`` with the shared error handling."""
    return run_cli(main, PROG, argv)


if __name__ == "__main__":
    sys.exit(cli())
