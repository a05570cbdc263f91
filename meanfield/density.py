"""Density solvers behind ``solve_flow(init, method="characteristics" | "zonal" | "circle")``.

docs/theory.md "Density solvers"; the engines live in ``solvers.zonal``, ``solvers.circle`` and
``solvers.characteristics``, the schemes and their limits are described in ``docs/density.md``.

Conventions shared by the three runners (they receive the validated ``FlowSpec`` of
``meanfield.flow``):

* Time: ``n_steps`` layers of length ``dt`` (layer time, ``t = layer * dt``); diagnostics and the
  density are returned at ``save_steps``.  The grid solvers take their own CFL-limited SSPRK3
  substeps inside each layer; characteristics takes ``substeps`` Heun steps per layer
  (default: the smallest number with step ``<= 0.1``).
* Grid size: for ``zonal`` and ``circle`` the number of cells is ``kernel_options["cells"]`` if
  given, else ``N`` (``N`` is otherwise the number of particles; with ``time_map="paper"``,
  ``dt = 1/N``, pass the modelled token count as ``N`` and the grid size as ``cells``).  Other grid options in
  ``kernel_options``: ``cfl`` (default 0.4, at most 0.5), ``n_phi`` (zonal azimuthal nodes),
  ``subgrid_threshold`` (default 0.5, see ``solvers.finite_volume.peak_fraction``).
* Output: ``FlowSolution`` with ``x = None``, ``density`` (n_saves, cells) the cell averages
  (zonal: of the marginal ``f(theta)`` on ``[0, pi]``, ``int f = 1``; circle: of the density
  w.r.t. arc length on ``[-pi, pi)``), ``grid`` the cell centres/edges, and diagnostics
  ``order_parameter``, ``mean_cosine``, ``entropy``, ``entropy_rate``, ``kl_to_uniform``,
  ``mass`` (grid) or ``entropy_stderr`` (characteristics), ``peak_fraction`` (grid).
  When the density concentrates below the cell size (``peak_fraction > subgrid_threshold``) the
  solution carries a warning with the first time it happened; from then on the grid entropy is
  bounded below by the log-measure of the cell holding the mass and under-reports the collapse.
"""

from __future__ import annotations

import math
import time

import jax
import jax.numpy as jnp
import numpy as np

from solvers import make_kernel
from solvers.characteristics import characteristics_rollout, field_from_kernel
from solvers.circle import circle_cell_averages, make_circle_solver
from solvers.finite_volume import rollout
from solvers.quadrature import log_sphere_area
from solvers.zonal import make_zonal_solver, zonal_cell_averages

from .diagnostics import query_subset, simulation_diagnostics_jit
from .flow import FlowSolution, initial_tokens, register_method

GRID_OPTIONS = ("cells", "cfl", "n_phi", "subgrid_threshold", "substeps")


def _options(spec) -> tuple[dict, dict]:
    """Split ``kernel_options`` into this module's options and the kernel's own."""
    opts = dict(spec.kernel_options or {})
    mine = {k: opts.pop(k) for k in GRID_OPTIONS if k in opts}
    return mine, opts


def _solution(spec, diags, density, grid, stats, params, warnings, x=None, snapshots=None, query_indices=None):
    """Assemble the ``FlowSolution`` at the save steps (``params`` extends ``spec.params()``)."""
    steps = np.asarray(spec.save_steps, dtype=int)
    return FlowSolution(
        t=steps * float(spec.dt), layers=steps.copy(), x=x,
        diagnostics={k: np.asarray(v)[steps] for k, v in diags.items()},
        params={**spec.params(), **params},
        query_indices=query_indices, snapshots=None if snapshots is None else np.asarray(snapshots)[steps], stats=stats,
        grid=grid,
        density=None if density is None else np.asarray(density)[steps], warnings=warnings)


def _subgrid_warning(diags, spec, threshold, log_cell_measure, density) -> list[str]:
    pf = np.asarray(diags["peak_fraction"])
    hit = np.nonzero(pf > threshold)[0]
    if hit.size == 0:
        return []
    k = int(hit[0])
    floor = float(np.asarray(log_cell_measure)[int(np.argmax(np.asarray(density)[k]))])
    return [f"density concentrated below the grid scale at t={k * float(spec.dt):g} (layer {k}, peak cell holds "
            f"{pf[k]:.2f} of its neighbourhood's mass); later entropies are limited by the grid "
            f"(H >= log(cell measure) = {floor:.4g}) and under-report the collapse"]


def _run_grid(spec, method, solver, u0, mine, grid, log_cell_measure, params):
    cfl = float(mine.get("cfl", 0.4))
    t0 = time.perf_counter()
    us, diags = rollout(solver, u0, float(spec.dt), int(spec.n_steps), cfl=cfl)
    jax.block_until_ready(us)
    elapsed = time.perf_counter() - t0
    us = np.asarray(us)
    diags = {k: np.asarray(v) for k, v in diags.items()}
    warnings = _subgrid_warning(diags, spec, float(mine.get("subgrid_threshold", 0.5)), log_cell_measure, us)
    n_sub = solver.substeps(float(spec.dt), cfl)
    stats = {"wall_time": elapsed, "substeps_per_layer": n_sub, "cells": int(solver.n_cells),
             "cell_steps": int(solver.n_cells) * n_sub * int(spec.n_steps)}
    return _solution(spec, diags, us, grid, stats, {"cells": int(solver.n_cells), "cfl": cfl, **params},
                     warnings)


def _cells(spec, mine) -> int:
    n = mine.get("cells", spec.N)
    if n is None or int(n) != n or n < 4:
        raise ValueError(f"number of cells {n!r} must be an integer >= 4 (pass N=... or kernel_options={{'cells': ...}})")
    return int(n)


def _check_no_tokens(spec, method):
    if getattr(spec, "x0", None) is not None:
        raise ValueError(f"method={method!r} starts from a distribution, got explicit tokens x0; use method='characteristics'")


def run_zonal(spec):
    """Zonal finite-volume runner (axisymmetric ``init`` with ``.axis`` and ``.zonal_log_marginal``)."""
    _check_no_tokens(spec, "zonal")
    mine, _ = _options(spec)
    if spec.d < 3:
        raise ValueError(f"method='zonal' needs d >= 3, got d={spec.d}; use method='circle' for d=2")
    if getattr(spec.init, "axis", None) is None or not hasattr(spec.init, "zonal_log_marginal"):
        raise ValueError(f"method='zonal' needs an axisymmetric init (Uniform or VonMisesFisher), got {type(spec.init).__name__}")
    n = _cells(spec, mine)
    if n % 2:
        raise ValueError(f"method='zonal' needs an even number of cells, got {n}")
    solver = make_zonal_solver(int(spec.d), n, spec.kernel, alpha=float(spec.alpha), merge=float(spec.merge),
                               n_phi=mine.get("n_phi"), dtype=spec.dtype)
    F0 = zonal_cell_averages(lambda th: np.asarray(spec.init.zonal_log_marginal(th), np.float64), n)
    grid = {"theta": np.asarray(solver.centers), "theta_edges": np.linspace(0.0, np.pi, n + 1),
            "axis": np.asarray(spec.init.axis, np.float64), "log_cell_measure": np.asarray(solver.log_cell_measure)}
    return _run_grid(spec, "zonal", solver, jnp.asarray(F0, solver.centers.dtype), mine, grid,
                     grid["log_cell_measure"], {"n_phi": mine.get("n_phi")})


def run_circle(spec):
    """Circle (d = 2) finite-volume runner; the density comes from ``init.log_density`` on S^1."""
    _check_no_tokens(spec, "circle")
    mine, _ = _options(spec)
    if spec.d != 2:
        raise ValueError(f"method='circle' needs d=2, got d={spec.d}; use method='zonal' or 'characteristics'")
    n = _cells(spec, mine)
    solver = make_circle_solver(n, spec.kernel, alpha=float(spec.alpha), merge=float(spec.merge), dtype=spec.dtype)

    def log_rho(th):
        x = np.stack([np.cos(th), np.sin(th)], axis=-1)
        return np.asarray(spec.init.log_density(jnp.asarray(x.reshape(-1, 2))), np.float64).reshape(th.shape)

    rho0 = circle_cell_averages(log_rho, n)
    h = 2 * math.pi / n
    grid = {"theta": np.asarray(solver.centers), "theta_edges": -math.pi + h * np.arange(n + 1),
            "log_cell_measure": np.full(n, math.log(h))}
    return _run_grid(spec, "circle", solver, jnp.asarray(rho0, solver.centers.dtype), mine, grid,
                     grid["log_cell_measure"], {})


def run_characteristics(spec):
    """Particles carrying ``log rho`` (any d, any kernel); needs ``init.sample`` and ``init.log_density``."""
    mine, kernel_opts = _options(spec)
    if spec.init is None or not hasattr(spec.init, "log_density"):
        raise ValueError("method='characteristics' needs an init distribution with a known log_density, not a token array")
    x = initial_tokens(spec)
    lr = jnp.asarray(spec.init.log_density(x), x.dtype)
    substeps = int(mine.get("substeps", max(1, math.ceil(abs(float(spec.dt)) / 0.1 - 1e-9))))
    kernel = make_kernel(spec.kernel, float(spec.alpha), **kernel_opts)
    field = field_from_kernel(kernel, float(spec.merge))
    q_idx = query_subset(spec.N, spec.n_query, spec.seed)
    q_dev, merge = jnp.asarray(q_idx), jnp.asarray(spec.merge, x.dtype)
    t0 = time.perf_counter()
    # per-layer log-rho diagnostics from the engine; the particle solver's standard statistics
    # (attention spectrum, token statistics) at the save steps only, as in run_particles
    layer_diags, saved, snaps = [], [jax.device_get(simulation_diagnostics_jit(kernel, x, q_dev, merge))], [x]
    steps = np.asarray(spec.save_steps, dtype=int)
    for a, b in zip(steps[:-1], steps[1:]):
        x, lr, dg = characteristics_rollout(field, x, lr, float(spec.dt), int(b - a), substeps)
        layer_diags.append({k: np.asarray(v)[(1 if layer_diags else 0):] for k, v in dg.items()})
        saved.append(jax.device_get(simulation_diagnostics_jit(kernel, x, q_dev, merge)))
        if spec.save_tokens:
            snaps.append(x)
    elapsed = time.perf_counter() - t0
    diags = {k: np.concatenate([d[k] for d in layer_diags]) for k in layer_diags[0]}
    diags["kl_to_uniform"] = log_sphere_area(int(spec.d) - 1) - diags["entropy"]
    # standard statistics are known at save steps only: spread them on the layer axis for _solution
    for name in saved[0]:
        if name in diags:
            continue
        full = np.zeros((int(spec.n_steps) + 1,) + np.shape(saved[0][name]), np.asarray(saved[0][name]).dtype)
        full[steps] = np.stack([np.asarray(r[name]) for r in saved])
        diags[name] = full
    stats = {"wall_time": elapsed, "substeps_per_layer": substeps}
    snapshots = None
    if spec.save_tokens:
        snapshots = np.zeros((int(spec.n_steps) + 1,) + x.shape, np.asarray(x).dtype)
        snapshots[steps] = np.stack([np.asarray(s) for s in snaps])
    return _solution(spec, diags, None, None, stats, {"substeps": substeps}, [], x=np.asarray(x), snapshots=snapshots,
                     query_indices=q_idx)


RUNNERS = {"characteristics": run_characteristics, "zonal": run_zonal, "circle": run_circle}


def register() -> None:
    """Register the three density methods with ``meanfield.flow.register_method``."""
    for name, runner in RUNNERS.items():
        register_method(name, runner)


register()
