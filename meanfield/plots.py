"""Figures of a solution's diagnostics (matplotlib, Agg backend; saved atomically)."""

from __future__ import annotations

import numpy as np

from .atomic import atomic_path

PANELS = (
    ("order_parameter", "order parameter |m|", "log"),
    ("effective_rank", "attention effective rank", "linear"),
    ("normalized_entropy", "normalised spectral entropy", "linear"),
    ("entropy_rate", "entropy rate dH/dt", "linear"),
)
# density solvers have no attention spectrum: show the differential entropy instead
FALLBACK = {"effective_rank": ("entropy", "differential entropy H", "linear"),
            "normalized_entropy": ("kl_to_uniform", "KL to uniform", "linear")}


def _subgrid_layer(sol):
    """The layer from which a grid solver's density is below the grid scale (its warning), or None."""
    import re

    for w in sol.warnings or ():
        m = re.search(r"below the grid scale at t=[^ ]+ \(layer (\d+)", str(w))
        if m:
            return int(m.group(1))
    return None


def plot_solution(sol, path, *, overwrite: bool = False, title: str | None = None):
    """Four panels against layer: |m|, attention effective rank, normalised entropy, dH/dt
    (for grid solvers: |m|, differential entropy H, KL to uniform, dH/dt)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(9, 6.5), sharex=True, constrained_layout=True)
    x = np.asarray(sol.layers)
    subgrid = _subgrid_layer(sol)
    for ax, panel in zip(axes.flat, PANELS):
        name, label, scale = panel if panel[0] in sol.diagnostics else FALLBACK.get(panel[0], panel)
        if name == "normalized_entropy" and "entropy_stderr" in sol.diagnostics:  # characteristics: H(t) is its point
            name, label, scale = "entropy", "differential entropy H (± stderr)", "linear"
        if name not in sol.diagnostics:
            ax.set_visible(False)
            continue
        y = np.asarray(sol.diagnostics[name], dtype=float)
        ax.plot(x, y, marker="o" if len(x) <= 40 else None, ms=3)
        if name == "entropy" and "entropy_stderr" in sol.diagnostics:
            se = np.asarray(sol.diagnostics["entropy_stderr"], dtype=float)
            ax.fill_between(x, y - se, y + se, alpha=0.3)
        ax.set_ylabel(label)
        if scale == "log" and np.all(y[np.isfinite(y)] > 0):
            ax.set_yscale("log")
        else:
            ax.ticklabel_format(axis="y", useOffset=False)  # no "1e-8 + 0.999" offsets on flat curves
        if subgrid is not None:
            ax.axvspan(subgrid, x[-1], color="0.85", zorder=0, label="below grid scale")
        ax.grid(alpha=0.3)
    for ax in axes[-1]:
        ax.set_xlabel("layer (step)")
    if subgrid is not None:
        axes.flat[0].legend(fontsize=8, loc="lower right")
    p = sol.params
    size = f"cells={p['cells']}" if "cells" in p else f"N={p.get('N')}"
    init = p.get("init") if isinstance(p.get("init"), dict) else {}
    start = init.get("name", "?") + (f" kappa={init['kappa']:g}" if "kappa" in init else "")
    fig.suptitle(title or f"{p.get('kernel')} kernel, {size}, d={p.get('d')}, alpha={p.get('alpha')}, "
                 f"M={p.get('merge'):.3g}, method={p.get('method')}, dt={p.get('dt'):.3g}\n"
                 f"init {start}, seed {p.get('seed')}, {p.get('precision')}", fontsize=10)
    with atomic_path(path, overwrite) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path
