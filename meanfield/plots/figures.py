"""Figures of a flow's diagnostics and of a phase diagram (matplotlib; saved atomically).

Both functions build a :class:`matplotlib.figure.Figure` without pyplot: no backend is selected
and no global figure list grows, so they work the same in a script, a notebook (the returned
figure is shown inline) and a headless CI job. With ``path`` the figure is also written, in the
format of the path's suffix (``.png``, ``.pdf`` or ``.svg``), through
:func:`meanfield.io.atomic.atomic_path`: a temporary file renamed into place, never a truncated
file, and an existing file is replaced only with ``overwrite=True``.
"""

from __future__ import annotations

import re

import numpy as np

from meanfield import _validate
from meanfield.io.atomic import atomic_path, check_writable

PANELS = (
    ("order_parameter", "order parameter |m|", "log"),
    ("effective_rank", "attention effective rank", "linear"),
    ("normalized_entropy", "normalised spectral entropy", "linear"),
    ("entropy_rate", "entropy rate dH/dt", "linear"),
)
# density solvers have no attention spectrum: show the differential entropy instead
FALLBACK = {"effective_rank": ("entropy", "differential entropy H", "linear"),
            "normalized_entropy": ("kl_to_uniform", "KL to uniform", "linear")}
FORMATS = (".png", ".pdf", ".svg")
DPI = 110


def _subgrid_layer(sol):
    """The layer from which a grid solver's density is below the grid scale (its warning), or None."""
    for w in sol.warnings or ():
        m = re.search(r"below the grid scale at t=[^ ]+ \(layer (\d+)", str(w))
        if m:
            return int(m.group(1))
    return None


def _figure(**kw):
    from matplotlib.figure import Figure

    return Figure(**kw)


def _check_path(path, overwrite):
    """Fail before drawing: a bad suffix, an existing file without ``overwrite``, an unwritable folder."""
    return None if path is None else check_writable(path, overwrite, suffixes=FORMATS)


def _save(fig, path, overwrite):
    if path is not None:
        with atomic_path(path, overwrite) as tmp:
            fig.savefig(tmp, format=path.suffix.lower()[1:], dpi=DPI)


def merging_label(mg) -> str:
    """`` with tome-prop merging (m = 0.5)`` for a run with token merging (its ``describe()`` dict,
    ``params["merging"]``), else ``""``."""
    if not isinstance(mg, dict):
        return ""
    amount = f"m = {mg['ratio']:g}" if mg.get("ratio") is not None else f"r = {mg.get('r')}"
    return f" with {mg.get('name')} merging ({amount})"


def _solution_title(sol) -> str:
    p = sol.params
    size = f"cells={p['cells']}" if "cells" in p else f"N={p.get('N')}"
    init = p.get("init") if isinstance(p.get("init"), dict) else {}
    start = init.get("name", "?") + (f" kappa={init['kappa']:g}" if "kappa" in init else "")
    merge, dt = p.get("merge"), p.get("dt")
    return (f"{p.get('kernel')} kernel{merging_label(p.get('merging'))}, {size}, d={p.get('d')}, alpha={p.get('alpha')}, "
            f"M={'?' if merge is None else f'{merge:.3g}'}, method={p.get('method')}, "
            f"dt={'?' if dt is None else f'{dt:.3g}'}\ninit {start}, seed {p.get('seed')}, {p.get('precision')}")


def plot_solution(sol, path=None, *, title: str | None = None, overwrite: bool = False):
    """Four panels of a :class:`~meanfield.flow.solution.FlowSolution` against the layer: ``|m|``, the
    attention effective rank, the normalised spectral entropy and ``dH/dt`` (grid solvers: ``|m|``,
    the differential entropy ``H``, KL to uniform, ``dH/dt``; characteristics: ``H`` with its
    standard error). Layers where a grid solver's density is below the grid scale are shaded.

    ``title`` replaces the default title (kernel, size, ``d``, ``alpha``, ``M``, method, ``dt``,
    initial law, seed, precision). With ``path`` (``.png``, ``.pdf`` or ``.svg``) the figure is
    also written atomically; an existing file raises ``FileExistsError`` unless ``overwrite``.
    Returns the :class:`matplotlib.figure.Figure`.
    """
    path = _check_path(path, overwrite)
    fig = _figure(figsize=(9, 6.5))
    # fixed margins, not a layout engine: constrained layout costs ~0.5 s, most of a short CLI run's plot
    fig.subplots_adjust(left=0.09, right=0.98, bottom=0.08, top=0.89, wspace=0.26, hspace=0.12)
    axes = fig.subplots(2, 2, sharex=True)
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
    fig.suptitle(title or _solution_title(sol), fontsize=10)
    _save(fig, path, overwrite)
    return fig


def plot_phase_diagram(pd, path=None, *, title: str | None = None, colorbar: bool = True, overwrite: bool = False):
    """The pair-cluster probability of a :class:`~meanfield.studies.phase.PhaseDiagram` as an image: time
    ``t`` on the x-axis, the inverse temperature ``beta`` on the y-axis (the layout of Geshkovski et
    al.'s figures), colour = ``pd.pair_fraction``, the fraction of token pairs with
    ``<x_i, x_j> > pair_threshold`` on the fixed scale [0, 1], with a labelled colorbar unless
    ``colorbar=False``.

    ``title`` replaces the default (``n``, ``d``, systems, precision). ``path`` and ``overwrite``
    as in :func:`plot_solution`. Returns the :class:`matplotlib.figure.Figure`; for a panel in a
    figure of your own use :func:`draw_phase_diagram` (an axes and a quantity).
    """
    path = _check_path(path, overwrite)
    fig = _figure(figsize=(5.2, 3.8), constrained_layout=True)
    ax = fig.subplots()
    mesh = draw_phase_diagram(pd, ax, quantity="pair_fraction", vmin=0.0, vmax=1.0)
    p = pd.params
    if colorbar:
        fig.colorbar(mesh, ax=ax, label=rf"P($\langle x_i, x_j\rangle > {p.get('pair_threshold', 0.999):g}$)")
    ax.set_title(title or f"n = {p.get('n')}, d = {p.get('d')}, {p.get('n_systems')} systems, {p.get('precision')}",
                 fontsize=10)
    _save(fig, path, overwrite)
    return fig


def draw_phase_diagram(pd, ax, *, quantity: str = "pair_fraction", log: bool = False, **kw):
    """One statistic of a :class:`~meanfield.studies.phase.PhaseDiagram` drawn into the matplotlib axes ``ax``
    (for a panel of a figure of your own): ``pcolormesh`` with time on the x-axis and beta on the
    y-axis (the layout of the reference figures); returns the mesh. ``quantity``: ``pair_fraction``,
    ``clusters_median``, ``clusters_mean`` or ``order_parameter``; ``log=True`` uses a logarithmic
    colour scale; other keywords go to ``pcolormesh``."""
    from matplotlib.colors import LogNorm

    _validate.choice("quantity", quantity, ("pair_fraction", "clusters_median", "clusters_mean", "order_parameter"))
    z = getattr(pd, quantity)
    norm = None
    if log:
        pos = z[z > 0]
        norm = LogNorm(vmin=float(pos.min()) if pos.size else 1e-6, vmax=float(max(z.max(), 1e-6)))
        z = np.where(z > 0, z, np.nan)
    mesh = ax.pcolormesh(pd.t, pd.betas, z, shading="nearest", cmap=kw.pop("cmap", "RdBu_r"), norm=norm,
                         rasterized=True, **kw)
    ax.set_xlabel("t")
    ax.set_ylabel(r"$\beta$")
    return mesh


__all__ = ["draw_phase_diagram", "merging_label", "plot_phase_diagram", "plot_solution"]
