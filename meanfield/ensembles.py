"""Flows with random weights redrawn every ``tau`` (docs/theory.md "Weight ensembles").

The experiment of Geshkovski et al.'s ``phase-diagrams.py`` (borjanG/2023-transformers-rotf):
the tokens flow with a :class:`solvers.Bilinear` kernel whose ``B`` and ``V`` are drawn from
:func:`solvers.ensembles.random_weights`, and the weights are redrawn every ``tau`` units of time
("new layers"). Each period is one :func:`meanfield.solve_flow` run from the previous tokens.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from solvers import Bilinear
from solvers.ensembles import random_weights

from . import _validate
from .flow import solve_flow
from .options import SaveAt
from .solution import FlowSolution


def redrawn_flow(x0, *, alpha: float = 1.0, kq: str = "goe", v: str = "identity", heads: int = 1,
                 tau: float = 1.0, t1: float = 10.0, dt: float = 0.1, method="layer", key=0, dtype=None,
                 causal: bool = False, save_every: int | None = None) -> FlowSolution:
    """Flow the ``(N, d)`` tokens ``x0`` for ``t1`` with weights redrawn every ``tau``.

    ``tau`` and ``t1`` must be whole numbers of steps ``dt`` and ``t1`` a whole number of periods.
    Period ``p`` draws its weights with ``jax.random.fold_in(key, p)``. Returns one
    :class:`FlowSolution` whose diagnostics run over all periods (each period's start, equal to the
    previous period's end, is kept once); ``params["ensemble"]`` records the options.
    """
    x = _validate.tokens(x0)
    alpha = _validate.real("alpha", alpha, minimum=0.0)
    tau = _validate.real("tau", tau, minimum=0.0, open_min=True)
    t1 = _validate.real("t1", t1, minimum=0.0, open_min=True)
    periods = round(t1 / tau)
    if periods < 1 or abs(periods * tau - t1) > 1e-9 * t1:
        raise ValueError(f"t1 = {t1!r} is not a whole number (>= 1) of periods tau = {tau!r}")
    base = jax.random.PRNGKey(key) if isinstance(key, int) else key
    sols = []
    for p in range(periods):
        B, V = random_weights(jax.random.fold_in(base, p), x.shape[1], kq, v, heads, dtype=dtype)
        kernel = Bilinear(alpha, B=B, V=V, causal=causal)
        sol = solve_flow(x, kernel=kernel, method=method, dt=dt, t1=tau, save=SaveAt(every=save_every),
                         key=jax.random.fold_in(base, 10_000 + p), dtype=dtype)
        sols.append(sol)
        x = sol.x
    steps = round(tau / dt)
    t = np.concatenate([sols[0].t] + [s.t[1:] + i * tau for i, s in enumerate(sols[1:], 1)])
    layers = np.concatenate([sols[0].layers] + [s.layers[1:] + i * steps for i, s in enumerate(sols[1:], 1)])
    diags = {k: np.concatenate([sols[0].diagnostics[k]] + [s.diagnostics[k][1:] for s in sols[1:]])
             for k in sols[0].diagnostics}
    params = dict(sols[0].params, n_steps=int(layers[-1]),
                  ensemble={"kq": kq, "v": v, "heads": heads, "tau": tau, "periods": periods})
    stats = {"field_evaluations": sum(s.stats["field_evaluations"] for s in sols),
             "wall_time": sum(s.stats["wall_time"] for s in sols)}
    return dataclasses.replace(sols[-1], t=t, layers=layers, diagnostics=diags, params=params, stats=stats,
                               snapshots=None)


__all__ = ["redrawn_flow"]
