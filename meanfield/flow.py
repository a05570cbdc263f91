"""``solve_flow``: the one driver for every method, and the particle runners.

``solve_flow`` validates its options (two tiers, as in diffrax: static problems raise
``ValueError`` before anything is traced), builds a :class:`FlowSpec`, and hands it to the runner
registered for ``method``. Particle runners advance the state in jitted chunks of steps (one
``lax.fori_loop`` per chunk, the chunk length a traced value, so nothing recompiles when it
changes), pull diagnostics to the host after each chunk for the progress bar and the saved
record, and never loop in Python over particles or steps.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from solvers import INTEGRATORS, KERNELS, AttentionField, make_integrator, make_kernel

from . import _validate
from .diagnostics import DEFAULT_N_QUERY, query_subset, simulation_diagnostics
from .distributions import as_key
from .progress import make_progress

TIME_MAPS = ("unit", "paper")
DEFAULT_LAYERS = 24


@dataclasses.dataclass(frozen=True)
class FlowSpec:
    """Validated options of one run, handed to a method runner."""

    init: Any
    x0: Any
    N: int
    d: int
    kernel: str
    alpha: float
    merge: float
    method: str
    n_steps: int
    dt: float
    time_map: str
    save_steps: np.ndarray
    key: Any
    seed: int
    dtype: Any
    n_query: int
    progress: Any
    save_tokens: bool
    kernel_options: dict
    rtol: float
    atol: float
    fusion: float | None = None

    def params(self) -> dict:
        """JSON-able description of the run (stored with the results)."""
        from . import __version__

        init = self.init.describe() if self.init is not None and hasattr(self.init, "describe") else {"name": "array"}
        return {
            "N": self.N, "d": self.d, "kernel": self.kernel, "alpha": self.alpha, "merge": self.merge,
            "fusion": self.fusion, "method": self.method, "dt": self.dt, "time_map": self.time_map,
            "n_steps": self.n_steps, "seed": self.seed, "precision": jnp.dtype(self.dtype).name,
            "n_query": self.n_query, "init": init, "kernel_options": dict(self.kernel_options),
            "rtol": self.rtol, "atol": self.atol, "meanfield_version": __version__,
        }


@dataclasses.dataclass(frozen=True)
class FlowSolution:
    """Result of :func:`solve_flow`.

    ``t`` and ``layers`` are the saved times and step (layer) indices, both including 0 and the
    final step; ``diagnostics[name][i]`` is the value at ``t[i]``; ``x`` the final tokens (unit
    rows; ``None`` for grid solvers); ``snapshots`` the tokens at every save if requested.
    """

    t: np.ndarray
    layers: np.ndarray
    x: np.ndarray | None
    diagnostics: dict
    params: dict
    query_indices: np.ndarray | None = None
    snapshots: np.ndarray | None = None
    stats: dict = dataclasses.field(default_factory=dict)
    grid: dict | None = None
    density: np.ndarray | None = None
    warnings: list = dataclasses.field(default_factory=list)


_METHODS: dict[str, Callable[[FlowSpec], FlowSolution]] = {}


def register_method(name: str, runner: Callable[[FlowSpec], FlowSolution]) -> None:
    """Make ``solve_flow(..., method=name)`` call ``runner(spec)``."""
    _METHODS[name] = runner


def methods() -> tuple:
    """Names accepted by ``solve_flow(method=...)``."""
    return tuple(_METHODS)


def _resolve_dtype(dtype, x0):
    x64 = jax.config.read("jax_enable_x64")
    if dtype is None:
        if x0 is not None and np.asarray(x0).dtype == np.float64 and x64:
            return jnp.float64
        return jnp.float64 if x64 else jnp.float32
    name = jnp.dtype(dtype).name if not isinstance(dtype, str) else dtype
    _validate.choice("precision", name, ("float32", "float64"))
    if name == "float64" and not x64:
        raise ValueError('precision float64 needs 64-bit JAX: call jax.config.update("jax_enable_x64", True) first')
    return jnp.dtype(name)


def _steps(t1, layers, dt, time_map, N):
    if time_map == "paper":
        if dt is not None:
            raise ValueError("give dt or time_map='paper' (which sets dt = 1/N), not both")
        h = 1.0 / N
    else:
        h = 1.0 if dt is None else _validate.real("dt", dt, minimum=0.0, open_min=True)
    if t1 is not None and layers is not None:
        raise ValueError("give t1 or layers, not both")
    if t1 is not None:
        t1 = _validate.real("t1", t1, minimum=0.0, open_min=True)
        n = round(t1 / h)
        if n < 1 or abs(n * h - t1) > 1e-9 * max(1.0, t1):
            raise ValueError(f"t1 = {t1!r} is not a whole number (>= 1) of steps of dt = {h!r}")
        return n, h
    n = DEFAULT_LAYERS if layers is None else _validate.integer("layers", layers, 1)
    return n, h


def _save_steps(n_steps, save_every):
    if save_every is None:
        save_every = 1 if n_steps <= 100 else math.ceil(n_steps / 100)
    save_every = _validate.integer("save_every", save_every, 1)
    steps = np.arange(0, n_steps + 1, save_every)
    return steps if steps[-1] == n_steps else np.append(steps, n_steps)


def make_spec(init, *, N=None, kernel="linear", alpha=0.25, merge=None, fusion=None, t1=None, layers=None,
              dt=None, time_map="unit", method="layer", save_every=None, key=0, n_query=DEFAULT_N_QUERY,
              dtype=None, progress=False, save_tokens=False, kernel_options=None, rtol=1e-6, atol=1e-8) -> FlowSpec:
    """Validate :func:`solve_flow`'s options (static checks only) and build the run's spec."""
    _validate.choice("kernel", kernel, KERNELS)
    _validate.choice("method", method, methods())
    _validate.choice("time_map", time_map, TIME_MAPS)
    alpha = _validate.real("alpha", alpha, minimum=0.0)
    M = _validate.merge_factor(merge, fusion)
    n_query = _validate.integer("n_query", n_query, 1)
    x0 = None
    if hasattr(init, "sample") and hasattr(init, "d"):
        d = init.d
        if N is None:
            raise ValueError("N (number of tokens) is required when init is a distribution")
        N = _validate.integer("N", N, 1)
    else:
        x0 = _validate.tokens(init)
        if N is not None and _validate.integer("N", N, 1) != x0.shape[0]:
            raise ValueError(f"N = {N} does not match the {x0.shape[0]} rows of the token array")
        N, d = x0.shape
        init = None
    dtype = _resolve_dtype(dtype, x0)
    n_steps, h = _steps(t1, layers, dt, time_map, N)
    rtol = _validate.real("rtol", rtol, minimum=0.0, open_min=True)
    atol = _validate.real("atol", atol, minimum=0.0, open_min=True)
    if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
        seed = int(key)
    else:
        seed = int(jax.random.randint(jax.random.fold_in(key, 7), (), 0, 2**31 - 1))
    return FlowSpec(
        init=init, x0=x0, N=N, d=d, kernel=kernel, alpha=alpha, merge=M, fusion=fusion, method=method,
        n_steps=n_steps, dt=h, time_map=time_map, save_steps=_save_steps(n_steps, save_every), key=as_key(key),
        seed=seed, dtype=dtype, n_query=n_query, progress=progress, save_tokens=bool(save_tokens),
        kernel_options=dict(kernel_options or {}), rtol=rtol, atol=atol,
    )


def solve_flow(init, **options) -> FlowSolution:
    """Solve the mean-field token flow ``dx_i/dt = (1/M) P_{x_i} sum_j A_ij x_j`` on S^{d-1}.

    Parameters (keyword-only; defaults in brackets)
    -----------------------------------------------
    init : a distribution (``Uniform``, ``VonMisesFisher``, ``VonMisesFisherMixture``) or an
        ``(N, d)`` array of tokens (rows are normalised onto the sphere).
    N : number of tokens (required with a distribution).
    kernel : ``"linear"`` (paper Eq. 3), ``"softmax"`` or ``"usa"`` [linear].
    alpha : inverse temperature, finite and >= 0 [0.25; keeps every Eq. 3 weight positive].
    merge, fusion : mobility factor ``M >= 1``, or the paper's fusion strength ``m in [0, 1)`` with
        ``M = 1/(1-m)``; not both [M = 1].
    layers, t1 : number of steps, or final time (a whole number of steps); not both [24 layers].
    dt : time per layer/step [1.0]. ``time_map="paper"`` instead sets ``dt = 1/N`` (t = l/N, §3.2).
    method : ``"layer"`` (literal transformer layer), ``"euler"``, ``"heun"``, ``"adaptive"``,
        or a registered density solver [layer].
    save_every : steps between saved diagnostics [every step up to 100 steps, else ~100 saves;
        per save the attention statistics cost O(n_query N d) for linear and
        O(n_query^2 N + n_query N d) for softmax/usa].
    key : int seed or PRNG key, for the initial samples and the query subset [0].
    n_query : query tokens for the attention statistics [512; all tokens when N <= 512].
    dtype : float32 or float64 [float32, or float64 when 64-bit JAX is enabled].
    progress : ``True`` for a tqdm bar, or an object with init/step/close [False].
    save_tokens : keep the tokens at every save in ``sol.snapshots`` [False].
    kernel_options : block sizes, e.g. ``{"key_block": 1024, "query_block": 4096}``.
    rtol, atol : tolerances of the ``adaptive`` method [1e-6, 1e-8].

    Returns a :class:`FlowSolution`. Raises ``ValueError`` (one line) on bad input.
    """
    spec = make_spec(init, **options)
    return _METHODS[spec.method](spec)


def initial_tokens(spec: FlowSpec):
    """The run's starting tokens on the sphere (sampled, or the normalised input array)."""
    if spec.x0 is not None:
        x = jnp.asarray(np.asarray(spec.x0, dtype=np.float64), dtype=spec.dtype)
        return x / jnp.linalg.norm(x, axis=1, keepdims=True)
    return spec.init.sample(jax.random.fold_in(spec.key, 0), spec.N, dtype=spec.dtype)


@jax.jit
def _advance(integrator, field, x, n_steps, h):
    return integrator.advance(field, x, n_steps, h)


_diagnostics = jax.jit(simulation_diagnostics)


def chunks(save_steps: np.ndarray, n_steps: int, max_chunk: int | None = None):
    """Yield ``(steps_in_chunk, save_index_or_None)`` covering ``0..n_steps``."""
    max_chunk = max_chunk or max(1, math.ceil(n_steps / 100))
    for i in range(1, len(save_steps)):
        todo = int(save_steps[i] - save_steps[i - 1])
        while todo > 0:
            k = min(todo, max_chunk)
            todo -= k
            yield k, (i if todo == 0 else None)


def run_particles(spec: FlowSpec) -> FlowSolution:
    """Runner of the particle methods (``layer``, ``euler``, ``heun``, ``adaptive``)."""
    t_start = time.perf_counter()
    kernel = make_kernel(spec.kernel, spec.alpha, **spec.kernel_options)
    field = AttentionField(kernel, 1.0 / spec.merge)
    opts = {"rtol": spec.rtol, "atol": spec.atol} if spec.method == "adaptive" else {}
    integrator = make_integrator(spec.method, **opts)
    q_idx = query_subset(spec.N, spec.n_query, spec.seed)
    q_dev = jnp.asarray(q_idx)
    merge = jnp.asarray(spec.merge, spec.dtype)
    h = jnp.asarray(spec.dt, spec.dtype)
    x = initial_tokens(spec)

    records = [jax.device_get(_diagnostics(kernel, x, q_dev, merge))]
    snaps = [np.asarray(x)] if spec.save_tokens else None
    evals = 0
    bar = make_progress(spec.progress)
    bar.init(spec.n_steps, desc=f"{spec.kernel}/{spec.method} N={spec.N} d={spec.d}")
    try:
        for k, save in chunks(spec.save_steps, spec.n_steps):
            x, nev = _advance(integrator, field, x, jnp.asarray(k, jnp.int32), h)
            evals += int(nev)
            bar.step(k)
            if save is not None:
                records.append(jax.device_get(_diagnostics(kernel, x, q_dev, merge)))
                if snaps is not None:
                    snaps.append(np.asarray(x))
    finally:
        bar.close()

    diags = {name: np.stack([np.asarray(r[name]) for r in records]) for name in records[0]}
    _check_finite(diags, spec)
    return FlowSolution(
        t=spec.save_steps * spec.dt,
        layers=spec.save_steps.copy(),
        x=np.asarray(x),
        diagnostics=diags,
        params=spec.params(),
        query_indices=q_idx,
        snapshots=None if snaps is None else np.stack(snaps),
        stats={"field_evaluations": evals, "wall_time": time.perf_counter() - t_start},
    )


def _check_finite(diags: dict, spec: FlowSpec) -> None:
    """Value problems are checked once per run on the host, not per step in the hot loop."""
    names = [k for k in diags if k != "row_entropy"]  # row entropy is NaN by definition for some linear rows
    bad = ~np.all(np.stack([np.isfinite(diags[k]).reshape(len(diags[k]), -1).all(1) for k in names]), axis=0)
    if bad.any():
        i = int(np.argmax(bad))
        raise FloatingPointError(
            f"the {spec.kernel} flow became non-finite by step {int(spec.save_steps[i])} "
            f"(alpha = {spec.alpha}, precision {jnp.dtype(spec.dtype).name}); try float64 or a smaller alpha"
        )


for _name in INTEGRATORS:
    register_method(_name, run_particles)
