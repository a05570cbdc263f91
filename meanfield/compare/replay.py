"""Replaying a real model's dump: its measured curves, the tokens a replay starts from, and the
pure-attention replay scored against the measurement (docs/theory.md "Comparing with a real model").

The library half of ``meanfield-compare`` (:mod:`meanfield.compare.cli`, the command line, which also
writes the table, figure and report): used by it, by the own-weights replay
(:mod:`meanfield.compare.own_weights`) and from Python. ``measured_curves`` reads the four statistics per
recorded block, ``fit_rank_law`` fits the paper's rank law to the rank curve, ``replay`` moves the
dumped tokens of the first block by the softmax flow (``alpha`` and ``dt`` given or fitted to the
measured ``|m|`` curve by ``fit_replay``'s grid search, with ``grid_edge_warning`` when the fit
lands on the grid's edge) and scores each statistic by ``explained_fraction``.
"""

from __future__ import annotations

import numpy as np

from meanfield.dump.format import recorded_merge_factor

STATS = (
    ("effective_rank", "effective rank (head mean)"),
    ("normalized_entropy", "normalized entropy H_sv/log n"),
    ("order_parameter", "|m| of block input"),
    ("covariance_effective_rank", "covariance effective rank"),
)
ALPHA_GRID = np.geomspace(0.25, 64.0, 17)
DT_GRID = np.geomspace(0.01, 2.0, 12)


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

    from meanfield.studies.batch import simulate_batch

    n_layers = max(int(steps[-1]), 1)
    batch = jnp.broadcast_to(jnp.asarray(x0), (len(alphas),) + x0.shape)
    loss = np.empty((len(alphas), len(dts)))
    for j, dt in enumerate(dts):
        # the vmapped program: the native kernel (engine="native") gives the same fit (loss within 6e-8) but
        # measured 2-24x slower on replay-sized batches (17 alphas x 64-314 tokens, d = 8-384; phase-x)
        out = simulate_batch(batch, kernel="softmax", alpha=alphas, dt=float(dt), layers=n_layers, engine="jax",
                             return_x=False)
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
    from solvers import Softmax

    from meanfield import SaveAt, solve_flow

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
    sol = solve_flow(x0, kernel=Softmax(alpha), dt=dt, layers=max(int(steps[-1]), 1),
                     save=SaveAt(every=1, n_query=len(dump.query_indices)))  # fmt: skip
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
