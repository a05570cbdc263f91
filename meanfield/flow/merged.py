"""Token merging in the flow: strategy objects, the runner of merged flows, experiment helpers.

``solve_flow(..., merging=ToMe(ratio=0.5))`` runs the flow with real token merging instead of the
mobility model (``merge=M`` / ``fusion=m``, which only scales the velocity; docs/theory.md "Merging
as mobility"). The strategies (small frozen objects; the engines are ``solvers.merging``):

* :class:`ToMe` -- bipartite soft matching (Bolya et al., ICLR 2023): each layer merges
  ``r`` tokens, which are removed for the rest of the run; sizes add; ``proportional=True`` is
  ToMe's proportional attention (the attention is over the size-weighted measure).
* :class:`FastVGGT` -- merge -> attend -> unmerge in every layer (arXiv:2509.02560): destinations
  drawn once at random, protected tokens never merged, plain means, no sizes.

The parameter of both is the merge ratio ``m`` (the fraction of the ``N`` tokens merged away), the
quantity the paper calls fusion strength: ``(1 - m) N = N / M`` tokens attend. ToMe reaches it as
early as its matching allows (at most half of the mergeable tokens per layer), FastVGGT in every
layer. docs/merging.md describes the conventions and the experiments.

Diagnostics of a merged state (ToMe): token statistics (``order_parameter`` ...) are over the
size-weighted measure -- every original token counted where its representative is; attention
statistics use the masses the flow attends with (the sizes with proportional attention, unit
masses of the survivors without) and query rows drawn among the surviving tokens; ``n_tokens`` is
the number of tokens that attend. FastVGGT restores the sequence after each layer, so its
diagnostics are those of all ``N`` tokens with unit masses.
"""

from __future__ import annotations

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np

from solvers import Euler, Layer
from solvers.merging import (
    MergeAttendUnmerge,
    MergeState,
    ToMeLayer,
    alternate_split,
    bipartite_soft_matching,
    bipartite_soft_matching_sets,
    merge,
)

from meanfield import _validate
from meanfield._threads import fetch
from meanfield.stats.diagnostics import query_subset, simulation_diagnostics, token_statistics
from meanfield.flow.particles import Stepper, check_finite, chunks, stack_records
from meanfield.flow.progress import make_progress
from meanfield.flow.solution import FlowSolution, FlowSpec


def _ratio(name, ratio):
    return _validate.real(f"{name} ratio", ratio, minimum=0.0, maximum=1.0, open_max=True)


def _indices(name, idx) -> tuple:
    idx = tuple(int(_validate.integer(f"{name} protected index", i, 0)) for i in idx)
    if len(set(idx)) != len(idx):
        raise ValueError(f"{name}: protected indices must be distinct, got {idx}")
    return idx


def protected_mask(name: str, N: int, idx, fraction: float = 0.0) -> np.ndarray:
    """The ``(N,)`` mask of tokens a merging strategy never merges: the indices ``idx`` and, with
    ``fraction`` (FastVGGT), every ``(N // n_p)``-th token of ``n_p = int(N fraction)``. ``name``
    (the strategy) opens the error when an index is out of range or nothing would be left to merge."""
    mask = np.zeros(N, bool)
    if idx and max(idx) >= N:
        raise ValueError(f"{name}: protected index {max(idx)} is out of range for N = {N} tokens")
    mask[list(idx)] = True
    n_p = int(N * fraction)  # FastVGGT: int(N * 0.1) tokens, every (N // n_p)-th one
    if n_p:
        mask[np.arange(0, N, max(1, N // n_p))[:n_p]] = True
    if mask.all():
        raise ValueError(f"{name}: the protected set covers all {N} tokens; nothing can be merged")
    return mask


@dataclasses.dataclass(frozen=True)
class ToMe:
    """ToMe bipartite soft matching in the flow.

    Give ``ratio`` (merge ratio ``m in [0, 1)``: ``round(m N)`` tokens are merged away, as early as
    the matching allows) or ``r`` (tokens merged per layer: an int, clamped in later layers to half
    the mergeable tokens as ToMe does, or a tuple of per-layer counts, missing layers 0).
    ``proportional`` -- proportional attention (sizes as masses). ``protected`` -- rows never
    merged (ToMe's class token).
    """

    ratio: float | None = None
    r: int | tuple | None = None
    proportional: bool = True
    protected: tuple = ()

    def __post_init__(self):
        if (self.ratio is None) == (self.r is None):
            raise ValueError("ToMe: give ratio (fraction of tokens merged, in [0, 1)) or r (tokens per layer), "
                             "exactly one")
        if self.ratio is not None:
            object.__setattr__(self, "ratio", _ratio("ToMe", self.ratio))
        elif isinstance(self.r, (tuple, list)):
            object.__setattr__(self, "r", tuple(_validate.integer("ToMe r", v, 0) for v in self.r))
        else:
            object.__setattr__(self, "r", _validate.integer("ToMe r", self.r, 0))
        object.__setattr__(self, "protected", _indices("ToMe", self.protected))

    @property
    def name(self) -> str:
        return "tome-prop" if self.proportional else "tome"

    def schedule(self, N: int, n_steps: int) -> np.ndarray:
        """Tokens merged at the start of each layer, (n_steps,) int32; raises if it cannot be met."""
        n_p = int(protected_mask("ToMe", N, self.protected).sum())
        alive, out = N, np.zeros(n_steps, np.int64)
        if self.ratio is not None:
            left = round(self.ratio * N)
            if left > N - n_p - 1:
                raise ValueError(f"ToMe ratio {self.ratio:g} merges {left} tokens, more than the mergeable set "
                                 f"allows ({N - n_p - 1} of N = {N} with {n_p} protected)")
        for layer in range(n_steps):
            cap = (alive - n_p) // 2
            if self.ratio is not None:
                out[layer] = min(left, cap)
                left -= out[layer]
            else:
                want = self.r if isinstance(self.r, int) else (self.r[layer] if layer < len(self.r) else 0)
                if want > cap and (layer == 0 or not isinstance(self.r, int)):
                    raise ValueError(f"ToMe r = {want} at layer {layer} is larger than the mergeable set: at most "
                                     f"{cap} tokens (half of the {alive - n_p} unprotected tokens)")
                out[layer] = min(want, cap)
            alive -= out[layer]
        if self.ratio is not None and left > 0:
            raise ValueError(f"ToMe ratio {self.ratio:g} needs more than the run's {n_steps} layers "
                             "(bipartite matching merges at most half the tokens per layer)")
        return out.astype(np.int32)

    def check(self, spec: FlowSpec) -> None:
        """Refuse a run this strategy cannot make (``ValueError``), before anything is traced."""
        self.schedule(spec.N, spec.n_steps)

    def start(self, spec: FlowSpec, x, euler: bool) -> "_ToMeRun":
        """The state of a run from tokens ``x`` (see :func:`run_merged`)."""
        return _ToMeRun(self, spec, x, euler)

    def describe(self) -> dict:
        return {"name": self.name, "ratio": self.ratio, "r": self.r, "proportional": self.proportional,
                "protected": list(self.protected)}

    # What the experiments outside the flow ask of a strategy (meanfield.studies.merge_study, dump.merging_vit).
    unmerge = False
    """Merged tokens are removed for the rest of the run (sizes carried), not restored after attention."""
    reference_frame = False
    """Every frame of a multi-frame input is merged (FastVGGT leaves the first one alone)."""

    def removed_per_layer(self, N: int, n_layers: int) -> np.ndarray:
        """Tokens merged away in each of ``n_layers`` layers from ``N`` (:meth:`schedule`)."""
        return self.schedule(N, n_layers)

    def merger(self, x):
        """A function of no arguments returning ``(x' (N, d), sizes (N,), masses (N,))``: every round
        of the ratio schedule (64 layers at most) applied to ``x`` (N, d) at once, rows merged away
        of size 0; masses the sizes if proportional, else ones on the survivors. The schedule is
        built here, so timing the function times the matching (``merge_study.merged_tokens``)."""
        N = x.shape[0]
        prot = jnp.asarray(protected_mask("ToMe", N, self.protected))
        rounds = [int(r) for r in self.schedule(N, 64) if r]

        def go():
            xm, sizes = x, jnp.ones((N,), x.dtype)
            for r in rounds:
                xm, sizes = _tome_round(xm, sizes, prot, jnp.asarray(r, jnp.int32))
            jax.block_until_ready(xm)
            return xm, sizes, (sizes if self.proportional else (sizes > 0).astype(x.dtype))

        return go


@dataclasses.dataclass(frozen=True)
class FastVGGT:
    """FastVGGT-style merge -> attend -> unmerge in every layer.

    ``ratio`` -- merge ratio ``m in [0, 1)``: ``r = round(m N)`` sources merged per layer.
    ``protected`` (row indices: FastVGGT's first frame and special tokens) and
    ``protected_fraction`` (FastVGGT's evenly strided ``int(N p)`` tokens; it uses 0.1) are never
    merged. ``dst_fraction`` -- fraction of the unprotected tokens drawn as destinations (``None``:
    a quarter, FastVGGT's one per 2 x 2 region, or fewer when ``r`` needs more sources).
    ``seed`` -- the destination draw (FastVGGT seeds it with 33 in every block).
    """

    ratio: float
    protected_fraction: float = 0.0
    protected: tuple = ()
    dst_fraction: float | None = None
    seed: int = 33

    name = "fastvggt"

    def __post_init__(self):
        object.__setattr__(self, "ratio", _ratio("FastVGGT", self.ratio))
        _validate.real("FastVGGT protected_fraction", self.protected_fraction, minimum=0.0, maximum=1.0)
        if self.dst_fraction is not None:
            _validate.real("FastVGGT dst_fraction", self.dst_fraction, minimum=0.0, maximum=1.0, open_min=True)
        object.__setattr__(self, "protected", _indices("FastVGGT", self.protected))
        _validate.integer("FastVGGT seed", self.seed, 0)

    def plan(self, N: int):
        """``(r, dst mask, protected mask)`` for ``N`` tokens; raises if ``r`` cannot be met."""
        prot = protected_mask("FastVGGT", N, self.protected, self.protected_fraction)
        free = np.flatnonzero(~prot)
        r = round(self.ratio * N)
        if r > free.size - 1:
            raise ValueError(f"FastVGGT ratio {self.ratio:g} merges r = {r} tokens, larger than the mergeable "
                             f"set ({free.size} unprotected tokens, one of which must be a destination)")
        n_dst = min(free.size // 4, free.size - r) if self.dst_fraction is None else round(self.dst_fraction * free.size)
        n_dst = max(n_dst, 1)
        if r > free.size - n_dst:
            raise ValueError(f"FastVGGT r = {r} is larger than the mergeable set: {free.size - n_dst} sources "
                             f"(dst_fraction {self.dst_fraction} leaves {n_dst} destinations)")
        dst = np.zeros(N, bool)
        dst[np.random.default_rng(self.seed).choice(free, size=n_dst, replace=False)] = True
        return r, dst, prot

    def check(self, spec: FlowSpec) -> None:
        """Refuse a run this strategy cannot make (``ValueError``), before anything is traced."""
        if spec.weights is not None:
            raise ValueError("FastVGGT merging does not track masses: give weights=None")
        self.plan(spec.N)

    def start(self, spec: FlowSpec, x, euler: bool) -> "_FastVGGTRun":
        """The state of a run from tokens ``x`` (see :func:`run_merged`)."""
        return _FastVGGTRun(self, spec, x, euler)

    def describe(self) -> dict:
        return {"name": self.name, "ratio": self.ratio, "protected_fraction": self.protected_fraction,
                "protected": list(self.protected), "dst_fraction": self.dst_fraction, "seed": self.seed}

    # What the experiments outside the flow ask of a strategy (see ToMe).
    unmerge = True
    """Merge -> attend -> unmerge: the sequence is whole again after every layer; no sizes."""
    reference_frame = True
    """With several frames the first one is not merged at all (FastVGGT's reference frame)."""
    proportional = False

    def removed_per_layer(self, N: int, n_layers: int) -> np.ndarray:
        """Zeros (nothing is removed for good); raises if the ratio cannot be met (:meth:`plan`)."""
        self.plan(N)
        return np.zeros(n_layers, np.int32)

    def merger(self, x):
        """As :meth:`ToMe.merger`: one merge of the plan applied to ``x`` (N, d), unit masses."""
        r, dst, prot = self.plan(x.shape[0])
        args = (x, jnp.asarray(np.flatnonzero(~dst & ~prot), jnp.int32), jnp.asarray(np.flatnonzero(dst), jnp.int32),
                jnp.asarray(r, jnp.int32))

        def go():
            xm, counts = jax.block_until_ready(_fast_round(*args))
            return xm, counts, (counts > 0).astype(x.dtype)

        return go


@jax.jit
def _tome_round(x, sizes, protected, r):
    src, dst = alternate_split((sizes > 0) & ~protected)
    x, sizes = merge(x, sizes, bipartite_soft_matching(x, src, dst, r))
    return x, sizes


@jax.jit
def _fast_round(x, src_idx, dst_idx, r):
    match = bipartite_soft_matching_sets(x, src_idx, dst_idx, r)
    xm, counts = merge(x, jnp.ones(x.shape[:1], x.dtype), match)
    return xm, counts


STRATEGIES = {
    "tome": lambda m, p: ToMe(ratio=m, proportional=False),
    "tome-prop": lambda m, p: ToMe(ratio=m, proportional=True),
    "fastvggt": lambda m, p: FastVGGT(ratio=m, protected_fraction=p),
}
"""CLI names -> strategy from the merge ratio ``m`` and protected fraction ``p`` (ToMe ignores ``p``)."""


def cli_strategy(name, ratio, protected_fraction=0.0):
    """The strategy of the CLI flags ``--merging NAME --merge-ratio m [--protected-fraction p]``."""
    if name is None:
        if ratio is not None:
            raise ValueError("--merge-ratio needs --merging tome|tome-prop|fastvggt")
        return None
    _validate.choice("merging", name, tuple(STRATEGIES))
    if ratio is None:
        raise ValueError(f"--merging {name} needs --merge-ratio m in [0, 1)")
    m = _validate.real("merge-ratio", ratio, minimum=0.0, maximum=1.0, open_max=True)
    return STRATEGIES[name](m, _validate.real("protected-fraction", protected_fraction, minimum=0.0, maximum=1.0))


def resolve_merging(merging):
    """``None`` or a strategy object (returned as is)."""
    if merging is None or all(callable(getattr(merging, m, None)) for m in ("check", "start", "describe")):
        return merging
    raise ValueError(f"merging must be None, ToMe(...), FastVGGT(...) or another strategy with check(), start() "
                     f"and describe(), got {merging!r}")


def check_merging(spec: FlowSpec) -> None:
    """Static checks of a merged run (raise ``ValueError`` before anything is traced)."""
    mg = spec.merging
    if not isinstance(spec.method, (Layer, Euler)):
        raise ValueError(f"merging runs layer by layer: method must be 'layer' or 'euler', got {spec.method.name!r}")
    mg.check(spec)


def _tome_advance(engine, kernel, mobility, state, schedule, start, n, h):
    return engine.advance(kernel, mobility, state, schedule, start, n, h)


def _fast_advance(engine, kernel, mobility, x, r, n, h):
    return engine.advance(kernel, mobility, x, r, n, h)


def _diagnostics(kernel, x, q_idx, attn_weights, sizes, mobility):
    out = simulation_diagnostics(kernel, x, q_idx, weights=attn_weights, mobility=mobility)
    out.update(token_statistics(x, sizes))
    out["n_tokens"] = jnp.sum(attn_weights > 0).astype(x.dtype)
    return out


_tome_advance_jit = jax.jit(_tome_advance)
_fast_advance_jit = jax.jit(_fast_advance)
_diagnostics_jit = jax.jit(_diagnostics)


def alive_queries(alive: np.ndarray, n_query: int, seed: int) -> np.ndarray:
    """Sorted query rows among the alive tokens: the unmerged run's subset where alive, topped up
    from a seeded permutation of the other alive rows (so ratio 0 uses the same rows)."""
    base = query_subset(alive.size, n_query, seed)
    keep = base[alive[base]]
    need = min(n_query, int(alive.sum())) - keep.size
    if need > 0:
        extra = np.random.default_rng(seed + 1).permutation(np.flatnonzero(alive & ~np.isin(np.arange(alive.size), base)))
        keep = np.concatenate([keep, extra[:need]])
    return np.sort(keep)


class _ToMeRun:
    """A ToMe run between chunks: tokens, sizes (masses) and owners, merged in place each layer."""

    def __init__(self, mg: ToMe, spec: FlowSpec, x, euler: bool):
        N, dtype = spec.N, spec.dtype
        self.schedule = mg.schedule(N, spec.n_steps)
        self._engine = ToMeLayer(jnp.asarray(protected_mask("ToMe", N, mg.protected)), mg.proportional, euler)
        sizes = jnp.ones((N,), dtype) if spec.weights is None else jnp.asarray(spec.weights, dtype)
        self._state = MergeState(x, sizes, jnp.arange(N, dtype=jnp.int32))
        self._schedule = jnp.asarray(self.schedule)
        self._proportional, self._dtype = mg.proportional, dtype

    @property
    def x(self):
        return self._state.x

    def advance(self, kernel, mobility, done: int, k, h) -> None:
        self._state = _tome_advance_jit(self._engine, kernel, mobility, self._state, self._schedule,
                                        jnp.asarray(done, jnp.int32), k, h)

    def record_inputs(self):
        """``(sizes, attention weights, n_tokens)`` of the diagnostics (``None``: counted from the weights)."""
        sizes = np.asarray(self._state.sizes)
        w = self._state.sizes if self._proportional else jnp.asarray(sizes > 0, self._dtype)
        return sizes, w, None

    def weights(self):
        return np.asarray(self._state.sizes)

    def extra(self) -> dict:
        return {"sizes": np.asarray(self._state.sizes), "owner": np.asarray(self._state.owner)}


class _FastVGGTRun:
    """A FastVGGT run between chunks: the tokens only (each layer merges, attends and unmerges)."""

    def __init__(self, mg: FastVGGT, spec: FlowSpec, x, euler: bool):
        r, dst, prot = mg.plan(spec.N)
        self._engine = MergeAttendUnmerge(jnp.asarray(np.flatnonzero(~dst & ~prot), jnp.int32),
                                          jnp.asarray(np.flatnonzero(dst), jnp.int32), euler=euler)
        self.schedule = np.full(spec.n_steps, r, np.int32)
        self.x, self._r, self._r_dev, self._N, self._dtype = x, r, jnp.asarray(r, jnp.int32), spec.N, spec.dtype

    def advance(self, kernel, mobility, done: int, k, h) -> None:
        self.x = _fast_advance_jit(self._engine, kernel, mobility, self.x, self._r_dev, k, h)

    def record_inputs(self):
        sizes = np.ones(self._N)
        return sizes, jnp.asarray(sizes > 0, self._dtype), self._N - self._r

    def weights(self):
        return None

    def extra(self) -> dict:
        return {}


def run_merged(spec: FlowSpec) -> FlowSolution:
    """Runner of a flow with token merging (``spec.merging``): one jitted chunk of layers at a time.

    The strategy's ``start(spec, x, euler)`` gives the run's state (``_ToMeRun``, ``_FastVGGTRun``):
    ``advance`` by a chunk of layers, the current tokens ``x``, what the diagnostics need
    (``record_inputs``), the final ``weights`` and the strategy's ``extra`` results."""
    t_start = time.perf_counter()
    mg, kernel, dtype = spec.merging, spec.kernel, spec.dtype
    mob, h = jnp.asarray(spec.mobility, dtype), jnp.asarray(spec.dt, dtype)
    N = spec.N
    st = Stepper(spec)  # the public step; for a merged spec its state holds the strategy's run
    state = st.init()
    run = state.run

    def record():
        sizes, w, n_tokens = run.record_inputs()
        q = jnp.asarray(alive_queries(sizes > 0, spec.n_query, spec.seed))
        out = fetch(_diagnostics_jit, kernel, run.x, q, w, jnp.asarray(sizes, dtype), mob)
        if n_tokens is not None:
            out["n_tokens"] = np.asarray(n_tokens, np.asarray(out["n_tokens"]).dtype)
        sv = np.asarray(out["attention_singular_values"])  # fewer rows once fewer tokens survive: pad with 0
        out["attention_singular_values"] = np.pad(sv, (0, min(spec.n_query, N) - sv.size))
        return out

    records = [record()]
    snaps = [np.asarray(run.x)] if spec.save_tokens else None
    bar = make_progress(spec.progress)
    bar.init(spec.n_steps, desc=f"{kernel.name}/{mg.name} N={N} d={spec.d}")
    done = 0
    try:
        for k, save in chunks(spec.save_steps, spec.n_steps):
            state = st.advance(state, k)
            done += k
            bar.step(k)
            if save is not None:
                records.append(record())
                if snaps is not None:
                    snaps.append(np.asarray(run.x))
    finally:
        bar.close()

    diags = stack_records(records)
    check_finite(diags, spec)
    extra = {"strategy": mg.describe(), "schedule": run.schedule, **run.extra()}
    return FlowSolution(
        t=spec.save_steps * spec.dt, layers=spec.save_steps.copy(), x=np.asarray(run.x), diagnostics=diags,
        params=spec.params(), query_indices=None, snapshots=None if snaps is None else np.stack(snaps),
        stats={"field_evaluations": spec.n_steps, "wall_time": time.perf_counter() - t_start},
        weights=run.weights(), merging=extra,
    )