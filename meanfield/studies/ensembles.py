"""Flows with random weights redrawn every ``tau`` (docs/theory.md "Weight ensembles").

The experiment of Geshkovski et al.'s ``phase-diagrams.py`` (borjanG/2023-transformers-rotf):
the tokens flow with a :class:`solvers.Bilinear` kernel whose ``B`` and ``V`` are drawn from
:func:`solvers.ensembles.random_weights`, and the weights are redrawn every ``tau`` units of time
("new layers"). The whole flow is one :func:`meanfield.solve_flow` run whose kernel is a
:class:`meanfield.Schedule` of the drawn kernels, one every ``tau``.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from solvers import Bilinear
from solvers.ensembles import random_weights

from meanfield import _validate
from meanfield.flow.driver import make_spec, run
from meanfield.flow.options import SaveAt, Schedule
from meanfield.flow.solution import FlowSolution


def redrawn_flow(x0, *, alpha: float = 1.0, kq: str = "goe", v: str = "identity", heads: int = 1,
                 tau: float = 1.0, t1: float = 10.0, dt: float = 0.1, method="layer", key=0, dtype=None,
                 causal: bool = False, save_every: int | None = None, checkpoint=None) -> FlowSolution:
    """Flow the ``(N, d)`` tokens ``x0`` for ``t1`` with weights redrawn every ``tau``.

    ``tau`` and ``t1`` must be whole numbers of steps ``dt`` and ``t1`` a whole number of periods.
    Period ``p`` draws its weights with ``jax.random.fold_in(key, p)``; the run is one
    ``solve_flow`` with the kernels as a :class:`~meanfield.Schedule` (a new kernel every ``tau``), so
    ``checkpoint`` (a ``meanfield.Checkpoint``) writes and resumes it bit for bit. Returns its
    :class:`FlowSolution`; ``params["ensemble"]`` records the options.
    """
    x = _validate.tokens(x0)
    alpha = _validate.real("alpha", alpha, minimum=0.0)
    tau = _validate.real("tau", tau, minimum=0.0, open_min=True)
    t1 = _validate.real("t1", t1, minimum=0.0, open_min=True)
    periods = round(t1 / tau)
    if periods < 1 or abs(periods * tau - t1) > 1e-9 * t1:
        raise ValueError(f"t1 = {t1!r} is not a whole number (>= 1) of periods tau = {tau!r}")
    base = jax.random.PRNGKey(key) if isinstance(key, int) else key
    steps = round(tau / dt)
    if steps < 1 or abs(steps * dt - tau) > 1e-9 * tau:
        raise ValueError(f"tau = {tau!r} is not a whole number (>= 1) of steps dt = {dt!r}")
    kernels = []
    for p in range(periods):
        B, V = random_weights(jax.random.fold_in(base, p), x.shape[1], kq, v, heads, dtype=dtype)
        kernels.append(Bilinear(alpha, B=B, V=V, causal=causal))
    # one run over all periods: a Schedule with a new kernel every tau (checkpoints and resume as any run)
    spec = make_spec(x, kernel=Schedule(kernels, every=steps), method=method, dt=dt, t1=t1, save=SaveAt(every=save_every),
                     key=jax.random.fold_in(base, 10_000), dtype=dtype)
    sol = run(spec, checkpoint=checkpoint)
    return dataclasses.replace(sol, params=dict(sol.params, ensemble={"kq": kq, "v": v, "heads": heads, "tau": tau,
                                                                      "periods": periods}))


__all__ = ["redrawn_flow"]
