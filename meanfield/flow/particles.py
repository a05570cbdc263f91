"""The runner of the particle methods: advance the tokens in jitted chunks, record diagnostics.

The state advances in jitted chunks of steps (one ``lax.fori_loop`` per chunk, the chunk length a
traced value, so nothing recompiles when it changes); diagnostics are pulled to the host after
each chunk that ends on a save, for the progress bar and the saved record; there is no Python
loop over particles or steps.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from solvers import AttentionField, feature_major, native
from solvers.integrators import AbstractIntegrator, Euler, uses_feature_major

from meanfield.flow import checkpoint
from meanfield.flow import eta
from meanfield._threads import fetch
from meanfield.stats.diagnostics import linear_diagnostics_jit, query_subset, simulation_diagnostics_jit
from meanfield.flow.progress import NoProgress, make_progress
from meanfield.flow.solution import FlowSolution, FlowSpec


def initial_tokens(spec: FlowSpec):
    """The run's starting tokens on the sphere (sampled, or the normalised input array)."""
    if spec.x0 is not None:
        x = jnp.asarray(np.asarray(spec.x0, dtype=np.float64), dtype=spec.dtype)
        return x / jnp.linalg.norm(x, axis=1, keepdims=True)
    return spec.init.sample(jax.random.fold_in(spec.key, 0), spec.N, dtype=spec.dtype)


def token_weights(spec: FlowSpec):
    """The token masses as a device array of the run's dtype (``None``: unit masses)."""
    return None if spec.weights is None else jnp.asarray(spec.weights, spec.dtype)


def native_fallback(spec: FlowSpec) -> str | None:
    """Why a run whose steps would take the native C++ kernel (:mod:`solvers.native`: the linear
    kernel's ``layer``/``euler`` step on the CPU) runs the pure-JAX path instead; ``None`` when it
    uses the kernel or would not use it anyway. Builds the kernels on the first call."""
    if spec.merging is not None or not isinstance(spec.method, AbstractIntegrator):
        return None
    field = attention_field(spec)
    if not (uses_feature_major(spec.method, field) and feature_major.native_fits(spec.method, field, spec.d, spec.dtype)
            and jax.default_backend() == "cpu"):
        return None
    return None if native.available() else native.status()


def diagnostic_subsets(spec: FlowSpec):
    """The fixed, seeded query subset (host array), and the key subsample of sampled diagnostics
    (a device array, or ``None`` when every statistic is exact)."""
    q_idx = query_subset(spec.N, spec.n_query, spec.seed)
    key_idx = jnp.asarray(query_subset(spec.N, spec.key_sample, spec.seed + 1)) if spec.sampled else None
    return q_idx, key_idx


def attention_field(spec: FlowSpec) -> AttentionField:
    """The mean-field velocity of the run: its kernel over the token masses, times ``1/M``."""
    return AttentionField(spec.kernel, jnp.asarray(spec.mobility, spec.dtype), token_weights(spec))


# The chunk advances donate the state (argument 2): XLA writes the chunk's result into the input's
# buffer instead of allocating and copying the whole (N, d) state per chunk (45 ms at N = 10^6
# float32 d = 4 against a 0.4 ms step, measured before). The runner never reads a donated state
# again: records, snapshots and checkpoints copy to the host first.
@partial(jax.jit, donate_argnums=(2,))
def _advance(integrator, field, x, n_steps, h, *key):
    return integrator.advance(field, x, n_steps, h, *key)


def _tokens(method, state):
    """Unit tokens of a scheme's state (a pre-/peri-LN scheme carries the residual stream)."""
    view = getattr(method, "tokens", None)
    return state if view is None else view(state)


@jax.jit
def _step_with_divergence(integrator, field, x, h):
    return integrator.step_with_divergence(field, x, h)


@jax.jit
def _divergence(field, x):
    return field.velocity_and_divergence(x)[1]


@partial(jax.jit, donate_argnums=(2,))
def _advance_fm(integrator, field, xt, carry, n_steps, h):
    return feature_major.advance_carry(integrator, field, xt, carry, n_steps, h)


@jax.jit
def _start_carry(integrator, field, xt):
    return feature_major.start_carry(integrator, field, xt)


@jax.jit
def _step_with_moments(integrator, field, xt, carry, h):
    return feature_major.step_with_moments_carry(integrator, field, xt, carry, h)


@jax.jit
def _moments_fm(field, xt, carry):
    return feature_major.moments_carry(field, xt, carry)


@jax.jit
def _transpose(x):
    return x.T


@dataclasses.dataclass(frozen=True)
class FlowState:
    """The state of a run between steps (:class:`Stepper`): ``layer`` steps taken, the scheme's
    state ``x`` on the device (feature-major ``(d, N)`` on the linear kernel's fast path; a
    pre-/peri-LN scheme's residual stream), what the native linear step carries to the next one
    (``carry``: the moments of ``x``), the field evaluations so far, and a merging strategy's run
    (``run``; ``None`` without merging). Read the tokens with :meth:`Stepper.tokens`."""

    layer: int
    x: Any
    carry: tuple = ()
    evals: int = 0
    run: Any = None


class Stepper:
    """The step of a run, public: ``init``/``step`` as in jax-md (``init_fn, step_fn``), on which
    :func:`meanfield.solve_flow` itself is built (``run_particles`` and ``run_merged`` advance
    through :meth:`advance`).

    ``st = Stepper(mf.make_spec(init, N=..., kernel=..., method=..., dt=..., merging=...))``;
    ``state = st.init()``; ``state = st.step(state, n)`` takes ``n`` steps of length ``dt``;
    ``st.tokens(state)`` gives the ``(N, d)`` tokens on the host, ``st.with_tokens(state, x)``
    replaces them (an intervention between layers: perturb, re-weight, edit), and
    ``st.diagnostics(state)`` the statistics one save of ``solve_flow`` records. A loop of
    ``step`` calls equals ``solve_flow`` with the same spec bit for bit, whatever the saves, for
    the linear, softmax and usa kernels and the merging strategies (``tests/test_stepper.py``);
    ``solve_flow`` takes the first step after each save with the kernel's
    ``drive_and_divergence``, which for ``Bilinear`` differs from its ``drive`` at round-off. Particle schemes and merging strategies; the density methods
    run whole (``solve_flow``). ``step`` never invalidates the state it is given.
    """

    def __init__(self, spec: FlowSpec):
        if not isinstance(spec.method, AbstractIntegrator):
            raise ValueError(f"Stepper runs particle schemes (and merging); the density method {spec.method.name!r} "
                             "runs whole: use solve_flow")
        self.spec = spec
        self.field = attention_field(spec)
        # a Schedule: one field per kernel (same pytree structure: the jitted steps compile once)
        self._fields = None if spec.schedule is None else [AttentionField(k, self.field.mobility, self.field.weights)
                                                           for k in spec.schedule]
        self.fm = spec.merging is None and uses_feature_major(spec.method, self.field)
        self.h = jnp.asarray(spec.dt, spec.dtype)
        self.stochastic = bool(getattr(spec.method, "stochastic", False))

    def init(self, x=None) -> FlowState:
        """The state at layer 0: the spec's starting tokens, or the ``(N, d)`` tokens ``x``."""
        x = initial_tokens(self.spec) if x is None else self._tokens_in(x)
        return self._state_of(x, layer=0, evals=0)

    def _tokens_in(self, x):
        x = jnp.asarray(x, self.spec.dtype)
        if x.shape != (self.spec.N, self.spec.d):
            raise ValueError(f"tokens must have shape ({self.spec.N}, {self.spec.d}), got {tuple(x.shape)}")
        return x / jnp.linalg.norm(x, axis=1, keepdims=True)

    def _state_of(self, x, layer, evals):
        s = self.spec
        if s.merging is not None:
            return FlowState(layer, x, (), evals, s.merging.start(s, x, isinstance(s.method, Euler)))
        if self.fm:
            xt = _transpose(x)
            return FlowState(layer, xt, _start_carry(s.method, self.field, xt), evals)
        return FlowState(layer, x, (), evals)

    def with_tokens(self, state: FlowState, x) -> FlowState:
        """``state`` with its tokens replaced by ``x`` (``(N, d)``, normalised onto the sphere); the
        layer count stays. Without merging (a merging run's sizes and owners live in its run)."""
        if self.spec.merging is not None:
            raise ValueError("with_tokens: a merged run carries sizes and owners with its tokens; not available")
        return self._state_of(self._tokens_in(x), state.layer, state.evals)

    def step(self, state: FlowState, n: int = 1, key=None) -> FlowState:
        """``n`` steps from ``state`` (a stochastic scheme needs a PRNG ``key``)."""
        n = int(n)
        if n < 1:
            raise ValueError(f"n must be an integer >= 1, got {n}")
        return self.advance(self._copy(state), n, key)

    def _copy(self, state):  # advance donates (or, for a merged run, rebinds) its input: step hands it a copy
        if state.run is not None:  # a strategy's run rebinds its arrays on advance: a shallow copy suffices
            return dataclasses.replace(state, run=copy.copy(state.run))
        return dataclasses.replace(state, x=jnp.copy(state.x))

    def step_recording(self, state: FlowState):
        """One step that also returns what the diagnostics of the *starting* state need from the
        step's own field evaluation (the divergence; on the linear fast path ``(m, Sigma, drift)``):
        ``(state, div, evals)``; ``state.x`` stays valid (the runner records it). ``solve_flow`` takes
        the first step after each save this way, so the entropy rate costs no extra pass."""
        s, field = self.spec, self.field_at(state.layer)
        if self.fm:
            x, carry, div, nev = _step_with_moments(s.method, field, state.x, state.carry, self.h)
            return FlowState(state.layer + 1, x, carry, state.evals + int(nev)), div, int(nev)
        x, div, nev = _step_with_divergence(s.method, field, state.x, self.h)
        return FlowState(state.layer + 1, x, (), state.evals + int(nev)), div, int(nev)

    def field_at(self, layer: int) -> AttentionField:
        """The field of the step from ``layer`` (a :class:`~meanfield.Schedule` changes it)."""
        if self._fields is None:
            return self.field
        return self._fields[min(int(layer) // self.spec.schedule_every, len(self._fields) - 1)]

    def advance(self, state: FlowState, n: int, key=None) -> FlowState:
        """:meth:`step` that reuses the state's buffer (donated: ``state`` must not be used again)."""
        s = self.spec
        if state.run is not None:
            state.run.advance(s.kernel, self.field.mobility, state.layer, jnp.asarray(n, jnp.int32), self.h)
            return dataclasses.replace(state, layer=state.layer + n, evals=state.evals + n)
        if self.stochastic and key is None:
            raise ValueError(f"the {s.method.name} scheme is stochastic: pass key= to step")
        while n > 0:  # one jitted call per stretch of one kernel (the whole n without a Schedule)
            seg = n if self._fields is None else min(n, s.schedule_every - state.layer % s.schedule_every)
            state = self._advance_one(state, seg, key if self._fields is None or key is None
                                      else jax.random.fold_in(key, state.layer))
            n -= seg
        return state

    def _advance_one(self, state, n, key):
        s, field, k = self.spec, self.field_at(state.layer), jnp.asarray(n, jnp.int32)
        if self.fm:
            x, carry, nev = _advance_fm(s.method, field, state.x, state.carry, k, self.h)
            return FlowState(state.layer + n, x, carry, state.evals + int(nev))
        x, nev = _advance(s.method, field, state.x, k, self.h, *(() if key is None else (key,)))
        return FlowState(state.layer + n, x, (), state.evals + int(nev))

    def tokens(self, state: FlowState) -> np.ndarray:
        """The ``(N, d)`` unit tokens of ``state``, on the host (a copy)."""
        if state.run is not None:
            return np.array(state.run.x)
        return np.asarray(_transpose(state.x)) if self.fm else np.array(_tokens(self.spec.method, state.x))

    def diagnostics(self, state: FlowState) -> dict:
        """What one save of ``solve_flow`` records at ``state``: attention and token statistics."""
        if state.run is not None:
            raise ValueError("diagnostics of a merged run: solve_flow records them (meanfield.flow.merged)")
        q_idx, key_idx = diagnostic_subsets(self.spec)
        q_dev, field = jnp.asarray(q_idx), self.field_at(state.layer)
        if self.fm:
            return jax.device_get(linear_diagnostics_jit(field, state.x, q_dev,
                                                         _moments_fm(field, state.x, state.carry), key_idx))
        x = _tokens(self.spec.method, state.x)
        return fetch(simulation_diagnostics_jit, field, x, q_dev, None, 1.0, key_idx, _divergence(field, x))


def chunks(save_steps: np.ndarray, n_steps: int, max_chunk: int | None = None):
    """Yield ``(steps_in_chunk, save_index_or_None)`` covering ``0..n_steps``."""
    max_chunk = max_chunk or max(1, math.ceil(n_steps / 100))
    for i in range(1, len(save_steps)):
        todo = int(save_steps[i] - save_steps[i - 1])
        while todo > 0:
            k = min(todo, max_chunk)
            todo -= k
            yield k, (i if todo == 0 else None)


def stopwatch(spec: FlowSpec, bar, start: int = 0) -> eta.Stopwatch:
    """The run-time estimator of a run resumed after save ``start`` (``spec.estimate``: see
    :func:`meanfield.solve_flow`; the CLI passes ``True``)."""
    report = None
    if spec.estimate or (spec.estimate is None and spec.progress):
        report = eta.printer(bar, threshold=0.0 if spec.estimate else 10.0)
    n_steps = spec.n_steps - int(spec.save_steps[start])
    return eta.Stopwatch(n_steps, len(spec.save_steps) - start, report)


def stack_records(records: list) -> dict:
    """A list of per-save diagnostics dicts -> a dict of stacked NumPy arrays."""
    return {name: np.stack([np.asarray(r[name]) for r in records]) for name in records[0]}


def run_particles(spec: FlowSpec, session: checkpoint.Session | None = None) -> FlowSolution:
    """Runner of the particle schemes (any ``solvers.AbstractIntegrator``).

    The diagnostics of a saved state are computed when the next step has run: that step's first
    field evaluation at the saved state also gives the divergence, so the exact entropy rate costs
    no extra pass over the keys (``AbstractIntegrator.step_with_divergence``; schemes without it
    take one extra evaluation per save). Only the last save takes one extra evaluation.
    With a checkpoint ``session`` (``meanfield.flow.checkpoint.Session``) the state after every K-th save is written,
    including whether that save's diagnostics still wait for the next step, so a resumed run takes
    exactly the same steps as an uninterrupted one.
    """
    t_start = time.perf_counter()
    st = Stepper(spec)  # the public step: this runner is a loop over st.advance and st.step_recording
    fm = st.fm
    q_idx, key_idx = diagnostic_subsets(spec)
    q_dev = jnp.asarray(q_idx)
    fused = spec.method.fused_divergence
    noise_key = jax.random.fold_in(spec.key, 2) if st.stochastic else None

    def record(x_saved, div, layer):  # the statistics of the kernel of the step from the saved layer
        field = st.field_at(layer)
        if fm:  # div is (m, Sigma, norm drift) of x_saved; only d x d and n_query x (d+1) LAPACK calls,
            # so no BLAS thread limit (meanfield._threads; entering it costs ~2 ms per save)
            return jax.device_get(linear_diagnostics_jit(field, x_saved, q_dev, div, key_idx))
        return fetch(simulation_diagnostics_jit, field, x_saved, q_dev, None, 1.0, key_idx, div)

    ck = checkpoint.Session(spec) if session is None else session
    if ck.state is None:
        state = st.init()
        records, snaps, evals, extra = [], ([st.tokens(state)] if spec.save_tokens else None), 0, 0
        pending = None  # a saved state whose diagnostics wait for the divergence from the next step
    else:  # resumed: the state after save ck.start, then the same chunks as an uninterrupted run
        arrays = ck.state["arrays"]
        state = st._state_of(jnp.asarray(arrays["x"], spec.dtype), int(spec.save_steps[ck.start]), 0)  # as saved
        if state.carry and "carry_0" in arrays:  # the moments the next step takes (older checkpoints: recomputed)
            state = dataclasses.replace(state, carry=tuple(jnp.asarray(arrays[f"carry_{j}"], spec.dtype)
                                                           for j in range(len(state.carry))))
        records = ck.state["records"]["diagnostics"]
        snaps = list(arrays["snapshots"]) if spec.save_tokens else None
        evals, extra = int(arrays["evals"]), int(arrays["extra"])
        pending = state.x if int(arrays["pending"]) else None

    def save_state(state):
        nonlocal pending, extra
        if fused:
            pending = state.x
        else:
            t0 = clock()
            xt = _tokens(spec.method, state.x)  # a pre-/peri-LN scheme's state is the residual stream
            records.append(record(xt, _divergence(st.field_at(state.layer), xt), state.layer))
            watch.save(clock() - t0)
            extra += 1

    bar = make_progress(spec.progress)
    watch = stopwatch(spec, bar, ck.start)
    # with nothing to report between saves (no bar, no estimate) a chunk-invariant scheme advances
    # from save to save in one call; otherwise in chunks of ~1% of the run (the bar and the estimate)
    quiet = isinstance(bar, NoProgress) and watch.report is None and spec.method.chunk_invariant
    clock = watch.clock
    bar.init(spec.n_steps, desc=f"{spec.kernel.name}/{spec.method.name} N={spec.N} d={spec.d}")
    bar.step(int(spec.save_steps[ck.start]))
    reached = 0
    watch.setup(clock() - t_start)  # sampling, subsets: counted with the compilation
    try:
        if ck.state is None:
            save_state(state)
        for i, (k, save) in enumerate(chunks(spec.save_steps, spec.n_steps, spec.n_steps if quiet else None)):
            if reached < ck.start:  # skipping the chunks done before the checkpoint
                reached = save if save is not None else reached
                continue
            key = None if noise_key is None else jax.random.fold_in(noise_key, i)  # fresh noise per chunk
            todo, t0, t_save = k, clock(), 0.0  # int(nev) and record() wait for the device: timing points
            if pending is not None:
                x_saved = pending  # the step below does not donate: x_saved stays valid
                state, div, nev = st.step_recording(state)
                evals += nev
                t1 = clock()
                records.append(record(x_saved, div, state.layer - 1))
                t_save = clock() - t1
                watch.save(t_save)
                pending, todo = None, todo - 1
            if todo > 0:
                before = state.evals
                state = st.advance(state, todo, key)
                evals += state.evals - before
            watch.steps(k, clock() - t0 - t_save)
            bar.step(k)
            if save is not None:
                save_state(state)
                if snaps is not None:
                    snaps.append(st.tokens(state))
                if ck.due(save):
                    arrays = {"x": st.tokens(state), "evals": evals, "extra": extra, "pending": int(pending is not None),
                              **{f"carry_{j}": np.asarray(v) for j, v in enumerate(state.carry)}}
                    if snaps is not None:
                        arrays["snapshots"] = np.stack(snaps)
                    ck.save(save, arrays, {"diagnostics": records})
        if pending is not None:
            last = st.field_at(state.layer)
            records.append(record(pending, _moments_fm(last, pending, state.carry) if fm else _divergence(last, pending),
                                  state.layer))
            extra += 1
    finally:
        bar.close()

    diags = stack_records(records)
    check_finite(diags, spec)
    return FlowSolution(
        t=spec.save_steps * spec.dt,
        layers=spec.save_steps.copy(),
        x=st.tokens(state),
        diagnostics=diags,
        params=spec.params(),
        query_indices=q_idx,
        snapshots=None if snaps is None else np.stack(snaps),
        stats={"field_evaluations": evals, "diagnostic_field_evaluations": extra,
               "wall_time": time.perf_counter() - t_start},
        weights=spec.weights,
        warnings=scheme_warnings(spec),
    )


USA_FIXED_STEP_ALPHA = 8.0
"""From this alpha on, fixed-step euler/heun on usa were seen to lose the energy's monotonicity (audit)."""


def scheme_warnings(spec: FlowSpec) -> list[str]:
    """Known weaknesses of the chosen scheme for this run, as warnings carried by the solution."""
    if spec.kernel.name == "usa" and spec.method.name in ("euler", "heun") and float(spec.kernel.alpha) >= USA_FIXED_STEP_ALPHA:
        return [f"fixed-step {spec.method.name} on usa at alpha = {float(spec.kernel.alpha):g} >= {USA_FIXED_STEP_ALPHA:g}: "
                f"the interaction energy may lose its monotone increase at dt = {spec.dt:g} (the drive grows like "
                "e^alpha); use method='adaptive' or a smaller dt (docs/limitations.md)"]
    return []


UNDEFINED_FOR_ONE_QUERY = ("normalized_entropy",)
"""NaN by design when the attention has one query row (``H_sv / log 1 = 0/0``; N = 1 or n_query = 1)."""
UNDEFINED_FOR_ONE_TOKEN = ("covariance_effective_rank",)
"""NaN by design for a single token (its covariance is 0: the eigenvalue distribution is 0/0)."""


def check_finite(diags: dict, spec: FlowSpec) -> None:
    """Value problems are checked once per run on the host, not per step in the hot loop.

    The error names the first diagnostic that became non-finite and the step. Diagnostics that are
    undefined for the run's sizes (:data:`UNDEFINED_FOR_ONE_QUERY`, :data:`UNDEFINED_FOR_ONE_TOKEN`)
    are NaN by design and not checked; row entropy is NaN by definition for some linear rows.
    """
    skip = {"row_entropy"}
    if min(spec.N, spec.n_query) == 1:
        skip.update(UNDEFINED_FOR_ONE_QUERY)
    if spec.N == 1:
        skip.update(UNDEFINED_FOR_ONE_TOKEN)
    first = None
    for name in (k for k in diags if k not in skip):
        ok = np.isfinite(diags[name]).reshape(len(diags[name]), -1).all(1)
        if not ok.all() and (first is None or int(np.argmin(ok)) < first[1]):
            first = (name, int(np.argmin(ok)))
    if first is not None:
        name, i = first
        row = np.asarray(diags[name]).reshape(len(diags[name]), -1)[i]
        raise FloatingPointError(
            f"the {spec.kernel.name} flow is non-finite at step {int(spec.save_steps[i])}: diagnostic {name!r} "
            f"is {float(row[~np.isfinite(row)][0])} "
            f"(alpha = {float(spec.kernel.alpha)}, precision {jnp.dtype(spec.dtype).name}); try float64 or a smaller alpha"
        )
