"""Helpers of the merging experiments (docs/merging.md): collapse times of a run, the merged token
set of a strategy, and the measured cost of attention on it.

The flow itself keeps all ``N`` rows (removed tokens have mass 0), which is right for the
dynamics but does not make attention cheaper. The cost experiment therefore compacts the tokens
that attend after merging into an array of their own size ``N' = N - r`` and times the kernel on
it (:func:`attention_seconds`), beside the matching that merging adds.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from meanfield.stats.theory import collapse_time, rank_collapse_time


def collapse_times(sol, threshold: float = 0.99, rank: str = "ratio") -> dict:
    """``{"order": first t with |m| >= threshold, "rank": attention rank-collapse time}`` (NaN: not reached).

    ``rank="ratio"``: :func:`meanfield.stats.theory.rank_collapse_time`, the effective rank falls to
    ``1/e`` of its first value. ``rank="excess"``: the excess over the collapsed value 1 falls to
    ``1/e`` of its first value (threshold ``1 + (r_0 - 1)/e``) -- for the linear kernel, whose
    attention starts near rank 2 at small alpha, so that ``r_0/e < 1`` is never reached.
    """
    c = collapse_time(sol.t, sol.diagnostics["order_parameter"], threshold)
    er = np.asarray(sol.diagnostics["effective_rank"], np.float64)
    if rank == "ratio":
        r = rank_collapse_time(sol.t, er)
    elif rank == "excess":
        r = collapse_time(sol.t, er, 1.0 + (er[0] - 1.0) / np.e, direction="down")
    else:
        raise ValueError(f"rank must be 'ratio' or 'excess', got {rank!r}")
    return {"order": c.time if c.reached else float("nan"), "rank": r.time if r.reached else float("nan")}


_CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def merged_tokens(strategy, x, repeats: int = 3, clock: str = "wall"):
    """The tokens that attend after ``strategy``'s merges of ``x`` (N, d), compacted:
    ``(x' (N', d), masses (N',), matching seconds)``. ToMe: all rounds of its ratio schedule, masses
    the sizes if proportional else ones; FastVGGT: one merge, unit masses (the strategy's
    ``merger(x)``, so another strategy needs no edit here). The matching time is the
    shortest of ``repeats`` runs after a warm-up (compilation excluded), on ``clock`` (see
    :func:`attention_seconds`)."""
    x = jnp.asarray(x)
    if not callable(getattr(strategy, "merger", None)):
        raise ValueError(f"strategy must be ToMe(...), FastVGGT(...) or another strategy with merger(x), "
                         f"got {strategy!r}")
    go = strategy.merger(x)
    go()
    tick, times = _CLOCKS[clock], []
    for _ in range(repeats):
        t0 = tick()
        xm, sizes, masses = go()
        times.append(tick() - t0)
    keep = np.flatnonzero(np.asarray(sizes) > 0)
    return xm[keep], masses[keep], float(np.min(times))


def attention_seconds(kernel, x, weights=None, repeats: int = 7, clock: str = "wall") -> float:
    """Shortest time of ``repeats`` jitted attention evaluations ``kernel.drive(x, x, weights)``
    (compilation and a warm-up call excluded; ``block_until_ready`` on every call). The minimum,
    not the median: other processes only ever add time. ``clock="cpu"`` measures the CPU time of
    this process (all its threads; ``time.process_time``) instead of wall time: on a machine
    shared with other work it is what the computation costs, where wall time depends on the load."""
    if clock not in _CLOCKS:
        raise ValueError(f"clock must be 'wall' or 'cpu', got {clock!r}")
    fn = jax.jit(lambda k, y, w: k.drive(y, y, w))
    jax.block_until_ready(fn(kernel, x, weights))
    tick, times = _CLOCKS[clock], []
    for _ in range(repeats):
        t0 = tick()
        jax.block_until_ready(fn(kernel, x, weights))
        times.append(tick() - t0)
    return float(np.min(times))
