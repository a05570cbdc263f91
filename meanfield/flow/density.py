"""Density methods of ``solve_flow``: :class:`Characteristics`, :class:`Zonal` and :class:`Circle`.

docs/theory.md "Density solvers"; the engines live in ``solvers.zonal``, ``solvers.circle`` and
``solvers.characteristics``, the schemes and their limits are described in ``docs/density.md``.
Each method is a small frozen object carrying its own options (``Zonal(cells=1024, cfl=0.3)``);
``solve_flow(init, method=Zonal(...))`` calls its ``run(spec, session)`` with the validated
``meanfield.flow.solution.FlowSpec``. The strings ``"zonal"``, ``"circle"`` and ``"characteristics"``
stand for the default-configured objects.

Conventions shared by the three:

* Time: ``n_steps`` layers of length ``dt`` (layer time, ``t = layer * dt``); diagnostics and the
  density are returned at ``save_steps``.  The grid solvers take their own CFL-limited SSPRK3
  substeps inside each layer; characteristics takes ``substeps`` Heun steps per layer
  (default: the smallest number with step ``<= 0.1``).
* Grid size: ``cells`` of the method object (default 512), independent of ``N`` (which for grid
  methods only matters for ``time_map="paper"``, ``dt = 1/N``: pass the modelled token count).
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

import dataclasses
import math
import time
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from solvers.characteristics import characteristics_rollout
from solvers.circle import circle_cell_averages, make_circle_solver
from solvers.finite_volume import CFL_POSITIVE, rollout
from solvers.quadrature import log_sphere_area
from solvers.zonal import make_zonal_solver, zonal_cell_averages

from meanfield import _validate
from meanfield.flow import checkpoint
from meanfield._threads import fetch
from meanfield.stats.diagnostics import simulation_diagnostics_jit
from meanfield.flow.distributions import Uniform
from meanfield.flow.particles import attention_field, diagnostic_subsets, initial_tokens
from meanfield.flow.solution import FlowSolution, FlowSpec


def _solution(spec, diags, density, grid, stats, params, warnings, x=None, snapshots=None, query_indices=None):
    """Assemble the ``FlowSolution`` at the save steps (``params`` extends ``spec.params()``)."""
    steps = np.asarray(spec.save_steps, dtype=int)
    return FlowSolution(
        t=steps * float(spec.dt), layers=steps.copy(), x=x,
        diagnostics={k: np.asarray(v)[steps] for k, v in diags.items()},
        params={**spec.params(), **params},
        query_indices=query_indices, snapshots=None if snapshots is None else np.asarray(snapshots)[steps], stats=stats,
        grid=grid,
        density=None if density is None else np.asarray(density)[steps], warnings=warnings, weights=spec.weights)


def _subgrid_warning(diags, spec, threshold, log_cell_measure, density) -> list[str]:
    """The first time the density is narrower than a cell, with the grid's entropy floor.

    The floor is the smallest per-cell floor ``e_i`` of the grid's entropy formula: with cell masses
    ``w_i`` (sum 1), ``H = sum w_i (e_i - log w_i) >= sum w_i e_i >= min_i e_i``, whatever cells the
    mass later moves to. ``e_i = log(cell measure)`` on the circle; on the zonal grid the formula uses
    the cell average of ``log sin^(d-2)``, so ``e_i`` is below the log-measure (by Jensen), most at the pole.
    """
    pf = np.asarray(diags["peak_fraction"])
    hit = np.nonzero(pf > threshold)[0]
    if hit.size == 0:
        return []
    k = int(hit[0])
    floor = float(np.min(np.asarray(log_cell_measure)))
    return [f"density concentrated below the grid scale at t={k * float(spec.dt):g} (layer {k}, peak cell holds "
            f"{pf[k]:.2f} of its neighbourhood's mass); later entropies are limited by the grid "
            f"(H >= {floor:.6g}, one cell at the pole) and under-report the collapse"]


def _run_grid(spec, session, method, solver, u0, grid, params):
    t0 = time.perf_counter()
    us, diags = _rollout_checkpointed(spec, checkpoint.Session(spec) if session is None else session, method, solver, u0)
    jax.block_until_ready(us)
    elapsed = time.perf_counter() - t0
    us = np.asarray(us)
    diags = {k: np.asarray(v) for k, v in diags.items()}
    warnings = _subgrid_warning(diags, spec, method.subgrid_threshold, grid.get("entropy_floor", grid["log_cell_measure"]), us)
    if isinstance(spec.init, Uniform):  # a subclass of Uniform is uniform too
        warnings.insert(0, f"the uniform start is a steady state of the density equation: method={method.name!r} keeps "
                           "it (up to round-off) and shows no collapse; start from VonMisesFisher (CLI: --init vmf)")
    n_sub = solver.substeps(float(spec.dt), method.cfl)
    stats = {"wall_time": elapsed, "substeps_per_layer": n_sub, "cells": int(solver.n_cells),
             "cell_steps": int(solver.n_cells) * n_sub * int(spec.n_steps)}
    return _solution(spec, diags, us, grid, stats, {"cells": int(solver.n_cells), "cfl": method.cfl, **params},
                     warnings)


def _rollout_checkpointed(spec, ck, method, solver, u0):
    """``rollout`` in one piece, or save interval by save interval with checkpoints (and resume)."""
    if ck.checkpoint is None and ck.state is None:
        return rollout(solver, u0, float(spec.dt), int(spec.n_steps), cfl=method.cfl)
    steps = np.asarray(spec.save_steps, dtype=int)
    if ck.state is None:
        us, diags = [np.asarray(u0)[None]], None
    else:
        us, diags = [ck.state["arrays"]["u"]], {k[5:]: v for k, v in ck.state["arrays"].items() if k.startswith("diag_")}
    u = jnp.asarray(us[0][-1], u0.dtype)
    for i in range(ck.start + 1, len(steps)):
        seg_u, seg_d = rollout(solver, u, float(spec.dt), int(steps[i] - steps[i - 1]), cfl=method.cfl)
        seg_u, seg_d = np.asarray(seg_u), {k: np.asarray(v) for k, v in seg_d.items()}
        u = jnp.asarray(seg_u[-1], u0.dtype)
        us.append(seg_u[1:])
        diags = seg_d if diags is None else \
            {k: np.concatenate([diags[k], seg_d[k][1:]]) for k in diags}
        if ck.due(i):
            u_all = np.concatenate(us)
            us = [u_all]
            ck.save(i, {"u": u_all, **{f"diag_{k}": v for k, v in diags.items()}}, {})
    return np.concatenate(us), diags


def _check_grid_start(spec, name):
    if spec.x0 is not None:
        raise ValueError(f"method={name!r} starts from a distribution, got explicit tokens; use method='characteristics'")
    if spec.weights is not None:
        raise ValueError(f"method={name!r} evolves a density: token weights apply to particle methods only")


def _grid_options(obj, min_cells: int, even: bool):
    _validate.integer("cells", obj.cells, min_cells)
    if even and obj.cells % 2:
        raise ValueError(f"{obj.name}: cells must be an even integer >= {min_cells}, got {obj.cells!r}")
    _validate.real("cfl", obj.cfl, minimum=0.0, maximum=CFL_POSITIVE, open_min=True)
    _validate.real("subgrid_threshold", obj.subgrid_threshold, minimum=0.0, maximum=1.0, open_min=True)
    _validate.real("sigma", obj.sigma, minimum=0.0)


class _GridMethod:
    """What the grid solvers tell the tools about themselves (no tool lists them by name): the
    command-line options they take, that a uniform start is a steady state of theirs, and the
    memory and file size of a run (``meanfield.flow.resources`` asks any method for these)."""

    cli_options: ClassVar[tuple[str, ...]] = ("cells", "sigma")  # meanfield-simulate --cells, --sigma
    uniform_is_steady: ClassVar[bool] = True

    def array_bytes(self, spec) -> int:
        """Peak bytes of a run's arrays: the saved densities and per-step work arrays (12 per cell
        and step), the cell-to-cell interaction table and the azimuthal tables."""
        cells, n_phi = int(self.cells), int(getattr(self, "n_phi", None) or 64)
        values = (spec.n_steps + 1) * cells * 12 + 16 * cells * cells + 8 * cells * n_phi * 8
        return values * np.dtype(spec.dtype).itemsize

    def saved_bytes(self, spec) -> int:
        """Bytes a run adds to its results file: one density of ``cells`` values per save."""
        return len(spec.save_steps) * int(self.cells) * np.dtype(spec.dtype).itemsize


@dataclasses.dataclass(frozen=True)
class Zonal(_GridMethod):
    """Zonal finite-volume solver (d >= 3, axisymmetric start: ``Uniform`` or ``VonMisesFisher``).

    ``cells`` even number of cells on ``[0, pi]``; ``cfl`` Courant number in ``(0, 0.5]``
    (positivity); ``n_phi`` azimuthal Gauss–Gegenbauer nodes of the softmax/usa tables (default
    ``max(48, alpha + 32)``); ``subgrid_threshold`` the ``peak_fraction`` above which the density is
    reported as narrower than a cell. Second order in space, third in time. ``sigma`` adds the noise
    term ``(sigma^2/2) Delta_S rho`` (docs/theory.md "Noise").
    """

    cells: int = 512
    cfl: float = 0.4
    n_phi: int | None = None
    subgrid_threshold: float = 0.5
    sigma: float = 0.0
    name: ClassVar[str] = "zonal"

    def __post_init__(self):
        _grid_options(self, 4, even=True)
        if self.n_phi is not None:
            _validate.integer("n_phi", self.n_phi, 1)

    def describe(self) -> dict:
        return {"name": self.name, **dataclasses.asdict(self)}

    def run(self, spec: FlowSpec, session=None) -> FlowSolution:
        _check_grid_start(spec, "zonal")
        if spec.d < 3:
            raise ValueError(f"method='zonal' needs d >= 3, got d={spec.d}; use method='circle' for d=2")
        if getattr(spec.init, "axis", None) is None or not hasattr(spec.init, "zonal_log_marginal"):
            raise ValueError("method='zonal' needs an axisymmetric init (Uniform or VonMisesFisher), "
                             f"got {type(spec.init).__name__}")
        n = self.cells
        solver = make_zonal_solver(int(spec.d), n, spec.kernel, mobility=spec.mobility, n_phi=self.n_phi,
                                   dtype=spec.dtype, diffusion=0.5 * float(self.sigma) ** 2)
        F0 = zonal_cell_averages(lambda th: np.asarray(spec.init.zonal_log_marginal(th), np.float64), n)
        grid = {"theta": np.asarray(solver.centers), "theta_edges": np.linspace(0.0, np.pi, n + 1),
                "axis": np.asarray(spec.init.axis, np.float64), "log_cell_measure": np.asarray(solver.log_cell_measure),
                # per cell, the smallest entropy the grid's H formula can give (mass in that one cell)
                "entropy_floor": np.asarray(log_sphere_area(int(spec.d) - 1) + (int(spec.d) - 2) * np.asarray(solver.log_sin_avg, np.float64)
                                            + np.log(float(solver.h)))}
        return _run_grid(spec, session, self, solver, jnp.asarray(F0, solver.centers.dtype), grid, {"n_phi": self.n_phi})


@dataclasses.dataclass(frozen=True)
class Circle(_GridMethod):
    """Finite-volume solver on the circle (d = 2); the density comes from ``init.log_density``.

    ``cells`` cells on ``[-pi, pi)``; ``cfl``, ``subgrid_threshold`` and ``sigma`` as for :class:`Zonal`.
    """

    cells: int = 512
    cfl: float = 0.4
    subgrid_threshold: float = 0.5
    sigma: float = 0.0
    name: ClassVar[str] = "circle"

    def __post_init__(self):
        _grid_options(self, 4, even=False)

    def describe(self) -> dict:
        return {"name": self.name, **dataclasses.asdict(self)}

    def run(self, spec: FlowSpec, session=None) -> FlowSolution:
        _check_grid_start(spec, "circle")
        if spec.d != 2:
            raise ValueError(f"method='circle' needs d=2, got d={spec.d}; use method='zonal' or 'characteristics'")
        n = self.cells
        solver = make_circle_solver(n, spec.kernel, mobility=spec.mobility, dtype=spec.dtype,
                                    diffusion=0.5 * float(self.sigma) ** 2)

        def log_rho(th):
            x = np.stack([np.cos(th), np.sin(th)], axis=-1)
            return np.asarray(spec.init.log_density(jnp.asarray(x.reshape(-1, 2))), np.float64).reshape(th.shape)

        rho0 = circle_cell_averages(log_rho, n)
        h = 2 * math.pi / n
        grid = {"theta": np.asarray(solver.centers), "theta_edges": -math.pi + h * np.arange(n + 1),
                "log_cell_measure": np.full(n, math.log(h))}
        return _run_grid(spec, session, self, solver, jnp.asarray(rho0, solver.centers.dtype), grid, {})


@dataclasses.dataclass(frozen=True)
class Characteristics:
    """Particles carrying ``log rho`` (any d, any kernel); needs ``init.sample`` and ``init.log_density``.

    ``substeps`` Heun steps per layer (default: the smallest number with step ``<= 0.1``).
    """

    substeps: int | None = None
    name: ClassVar[str] = "characteristics"

    def __post_init__(self):
        if self.substeps is not None:
            _validate.integer("substeps", self.substeps, 1)

    def describe(self) -> dict:
        return {"name": self.name, **dataclasses.asdict(self)}

    def run(self, spec: FlowSpec, session=None) -> FlowSolution:
        if spec.init is None or not hasattr(spec.init, "log_density"):
            raise ValueError("method='characteristics' needs an init distribution with a known log_density, "
                             "not a token array")
        if spec.weights is not None:
            raise ValueError("method='characteristics' samples its own tokens: token weights do not apply")
        x = initial_tokens(spec)
        lr = jnp.asarray(spec.init.log_density(x), x.dtype)
        substeps = self.substeps or max(1, math.ceil(abs(float(spec.dt)) / 0.1 - 1e-9))
        field = attention_field(spec)
        q_idx, key_idx = diagnostic_subsets(spec)
        q_dev = jnp.asarray(q_idx)
        t0 = time.perf_counter()
        # per-layer log-rho diagnostics from the engine; the particle solver's standard statistics
        # (attention spectrum, token statistics) at the save steps only, as in run_particles
        def record(x):
            return fetch(simulation_diagnostics_jit, field, x, q_dev, None, 1.0, key_idx)

        ck = checkpoint.Session(spec) if session is None else session
        if ck.state is None:
            layer_diags, saved, snaps = [], [record(x)], [x]
        else:
            arr = ck.state["arrays"]
            x, lr = jnp.asarray(arr["x"], spec.dtype), jnp.asarray(arr["log_rho"], spec.dtype)
            layer_diags = [{k[5:]: v for k, v in arr.items() if k.startswith("diag_")}]
            saved, snaps = ck.state["records"]["saved"], list(arr.get("snapshots", []))
        steps = np.asarray(spec.save_steps, dtype=int)
        for i in range(ck.start + 1, len(steps)):
            x, lr, dg = characteristics_rollout(field.velocity_and_divergence, x, lr, float(spec.dt),
                                                int(steps[i] - steps[i - 1]), substeps)
            layer_diags.append({k: np.asarray(v)[(1 if layer_diags else 0):] for k, v in dg.items()})
            saved.append(record(x))
            if spec.save_tokens:
                snaps.append(x)
            if ck.due(i):
                layer_diags = [{k: np.concatenate([d[k] for d in layer_diags]) for k in layer_diags[0]}]
                arrays = {"x": np.asarray(x), "log_rho": np.asarray(lr),
                          **{f"diag_{k}": v for k, v in layer_diags[0].items()}}
                if spec.save_tokens:
                    arrays["snapshots"] = np.stack([np.asarray(s) for s in snaps])
                ck.save(i, arrays, {"saved": saved})
        elapsed = time.perf_counter() - t0
        diags = {k: np.concatenate([d[k] for d in layer_diags]) for k in layer_diags[0]}
        diags["kl_to_uniform"] = log_sphere_area(int(spec.d)) - diags["entropy"]
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
        return _solution(spec, diags, None, None, stats, {"substeps": substeps}, [], x=np.asarray(x),
                         snapshots=snapshots, query_indices=q_idx)


DENSITY_METHODS = (Characteristics, Zonal, Circle)
