"""``solve_flow``: the one driver for every method (in the spirit of diffrax's ``diffeqsolve``).

The driver validates its options (two tiers, as in diffrax: static problems raise ``ValueError``
before anything is traced), builds a :class:`~meanfield.solution.FlowSpec`, and hands it to the
method: a particle scheme (a ``solvers.AbstractIntegrator``: :class:`Layer`, :class:`Euler`,
:class:`Heun`, :class:`Adaptive`) runs in :func:`meanfield.particles.run_particles`; a density
method (:class:`~meanfield.density.Characteristics`, :class:`~meanfield.density.Zonal`,
:class:`~meanfield.density.Circle`) runs itself (``method.run(spec)``). Kernels are objects too
(:class:`Linear`, :class:`Softmax`, :class:`USA`). Names are accepted as shorthand for the
default-configured objects; :func:`method_table` is the explicit table behind them (the
integrator registry and :data:`~meanfield.density.DENSITY_METHODS`; nothing registers itself as a
side effect of importing ``meanfield``).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from solvers import INTEGRATORS, KERNELS, AbstractIntegrator, AbstractKernel, make_kernel
from solvers.precision import check_matmul_precision

from . import _resources, _validate, checkpoint as _checkpoint
from .density import DENSITY_METHODS
from .diagnostics import DEFAULT_KEY_SAMPLE, DEFAULT_N_QUERY, DIAGNOSTIC_MODES
from .distributions import as_key
from .merging import check_merging, resolve_merging, run_merged
from .particles import run_particles
from .solution import FlowSolution, FlowSpec

TIME_MAPS = ("unit", "paper")
DEFAULT_LAYERS = 24
DEFAULT_ALPHA = 0.25



def method_table() -> dict[str, type]:
    """Method name -> class: the particle schemes (the registry ``solvers.INTEGRATORS``, filled by
    subclassing ``AbstractIntegrator``) and the density methods (:data:`DENSITY_METHODS`)."""
    return {**INTEGRATORS, **{cls.name: cls for cls in DENSITY_METHODS}}


def methods() -> tuple:
    """Names accepted by ``solve_flow(method=...)``."""
    return tuple(method_table())


def kernels() -> tuple:
    """Names accepted by ``solve_flow(kernel=...)``."""
    return tuple(KERNELS)


def resolve_method(method):
    """A method object from a name in :func:`method_table` or an object (returned as is)."""
    if isinstance(method, AbstractIntegrator) or callable(getattr(method, "run", None)):
        return method
    table = method_table()
    if isinstance(method, str) and method in table:
        return table[method]()
    raise ValueError(f"unknown method {method!r}; expected one of: {', '.join(table)}, or a method object")


def resolve_kernel(kernel, alpha, matmul_precision=None):
    """A kernel object from a name in ``solvers.KERNELS`` (with ``alpha`` and ``matmul_precision``,
    docs/precision.md) or a kernel object (which carries both itself)."""
    if matmul_precision is not None:
        check_matmul_precision(matmul_precision)
    if isinstance(kernel, AbstractKernel):
        if alpha is not None:
            raise ValueError(f"alpha is set on the kernel object {kernel.name!r}; do not pass alpha= beside it")
        if matmul_precision is not None:
            raise ValueError(f"kernel {kernel.name!r} is an object: set matmul_precision on it, not beside it")
        a = kernel.alpha
    else:
        _validate.choice("kernel", kernel, tuple(KERNELS))
        a = DEFAULT_ALPHA if alpha is None else alpha
    a = _validate.real("alpha", a, minimum=0.0)
    if isinstance(kernel, AbstractKernel):
        return kernel
    if matmul_precision is None or matmul_precision == "highest":
        return make_kernel(kernel, a)
    if "matmul_precision" not in {f.name for f in dataclasses.fields(KERNELS[kernel])}:
        raise ValueError(f"kernel {kernel!r} has no matmul_precision option (only highest)")
    return make_kernel(kernel, a, matmul_precision=matmul_precision)


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


def make_spec(init, *, N=None, weights=None, kernel="linear", alpha=None, merge=None, fusion=None, t1=None,
              layers=None, dt=None, time_map="unit", method="layer", save_every=None, key=0,
              n_query=DEFAULT_N_QUERY, dtype=None, progress=False, save_tokens=False, diagnostics="sampled",
              key_sample=DEFAULT_KEY_SAMPLE, merging=None, matmul_precision=None, estimate=None) -> FlowSpec:
    """Validate :func:`solve_flow`'s options (static checks only) and build the run's spec."""
    _validate.choice("diagnostics", diagnostics, DIAGNOSTIC_MODES)
    if estimate not in (None, True, False):
        raise ValueError(f"estimate must be None, True or False, got {estimate!r}")
    key_sample = _validate.integer("key_sample", key_sample, 1)
    kernel = resolve_kernel(kernel, alpha, matmul_precision)
    method = resolve_method(method)
    _validate.choice("time_map", time_map, TIME_MAPS)
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
    _resources.check_sizes(N, d)
    w = None if weights is None else _validate.weights(weights, N)
    dtype = _resolve_dtype(dtype, x0)
    n_steps, h = _steps(t1, layers, dt, time_map, N)
    if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
        seed = int(key)
    else:
        seed = int(jax.random.randint(jax.random.fold_in(key, 7), (), 0, 2**31 - 1))
    spec = FlowSpec(
        init=init, x0=x0, weights=w, N=N, d=d, kernel=kernel, method=method, merge=M, fusion=fusion,
        n_steps=n_steps, dt=h, time_map=time_map, save_steps=_save_steps(n_steps, save_every), key=as_key(key),
        seed=seed, dtype=dtype, n_query=n_query, progress=progress, save_tokens=bool(save_tokens),
        diagnostics=diagnostics, key_sample=key_sample, merging=resolve_merging(merging), estimate=estimate,
    )
    if spec.merging is not None:
        check_merging(spec)
    return spec


def run(spec: FlowSpec, *, checkpoint=None, resume=None, check_memory: bool = True) -> FlowSolution:
    """Run a validated spec with its method (``checkpoint``, ``resume``: see :func:`solve_flow`).

    ``check_memory``: refuse (``ValueError``) before allocating when the run's estimated peak
    memory (``meanfield._resources.estimate_memory``) exceeds the memory the system has available.
    """
    if check_memory:
        _resources.check_memory(spec)
    if spec.merging is not None:
        if checkpoint is not None or resume is not None:
            raise ValueError("checkpoint/resume are not available for runs with token merging (merging=...)")
        return run_merged(spec)
    with _checkpoint.session(spec, checkpoint, resume):
        if isinstance(spec.method, AbstractIntegrator):
            return run_particles(spec)
        return spec.method.run(spec)


def solve_flow(init, *, N=None, weights=None, kernel="linear", alpha=None, merge=None, fusion=None, t1=None,
               layers=None, dt=None, time_map="unit", method="layer", save_every=None, key=0,
               n_query=DEFAULT_N_QUERY, dtype=None, progress=False, save_tokens=False, diagnostics="sampled",
               key_sample=DEFAULT_KEY_SAMPLE, merging=None, matmul_precision=None, checkpoint=None, resume=None,
               check_memory=True, estimate=None) -> FlowSolution:
    """Solve the mean-field token flow ``dx_i/dt = (1/M) P_{x_i} sum_j A_ij x_j`` on S^{d-1}.

    Parameters (keyword-only after ``init``; defaults in brackets)
    --------------------------------------------------------------
    init : a distribution (``Uniform``, ``VonMisesFisher``, ``VonMisesFisherMixture``) or an
        ``(N, d)`` array of tokens (rows are normalised onto the sphere).
    N : number of tokens (required with a distribution).
    weights : token masses ``w_j >= 0``, shape ``(N,)``; the flow is that of the weighted measure
        ``sum_j w_j delta_{x_j} / sum_j w_j`` (softmax with proportional attention) [unit masses].
    kernel : a kernel object (``Linear(alpha)``, ``Softmax(alpha, key_block=...)``, ``USA(alpha)``)
        or its name ``"linear"`` (paper Eq. 3), ``"softmax"``, ``"usa"`` [linear].
    alpha : inverse temperature for a kernel given by name, finite and >= 0
        [0.25; keeps every Eq. 3 weight positive].
    merge, fusion : mobility factor ``M >= 1``, or the paper's fusion strength ``m in [0, 1)`` with
        ``M = 1/(1-m)``; not both [M = 1].
    layers, t1 : number of steps, or final time (a whole number of steps); not both [24 layers].
    dt : time per layer/step [1.0]. ``time_map="paper"`` instead sets ``dt = 1/N`` (t = l/N, §3.2).
    method : a method object -- particles ``Layer()`` (literal transformer layer), ``Euler()``,
        ``Heun()``, ``Adaptive(rtol=, atol=)``; densities ``Characteristics(substeps=)``,
        ``Zonal(cells=, cfl=, n_phi=)``, ``Circle(cells=, cfl=)`` -- or its name [layer].
    save_every : steps between saved diagnostics [every step up to 100 steps, else ~100 saves;
        per save the attention statistics cost O(n_query N d) for linear and
        O(n_query^2 N + n_query N d) for softmax/usa].
    key : int seed or PRNG key, for the initial samples and the query subset [0].
    n_query : query tokens for the attention statistics [512; all tokens when N <= 512].
    dtype : float32 or float64 [float32, or float64 when 64-bit JAX is enabled].
    matmul_precision : precision of the kernel's products for a kernel given by name:
        ``"highest"`` (float32 means float32 on every device, also on GPUs whose default is TF32),
        or the opt-in fast modes ``"tf32"`` / ``"bf16"`` (rounded inputs, float32 accumulation;
        errors measured in docs/precision.md). A kernel object carries its own [highest].
    progress : ``True`` for a tqdm bar, or an object with init/step/close [False].
    save_tokens : keep the tokens at every save in ``sol.snapshots`` [False].
    diagnostics : ``"sampled"`` -- when ``N > key_sample`` the attention statistics at each save
        are estimated from the query rows over a fixed, seeded subsample of ``key_sample`` keys;
        ``"exact"`` -- rows over all N keys [sampled; exact anyway when N <= key_sample]. The
        token statistics and the entropy rate are exact either way. ``params["diagnostics"]``
        records which.
    key_sample : keys in the subsample of sampled diagnostics [4096].
    merging : real token merging, a strategy object ``ToMe(ratio=m, proportional=...)`` or
        ``FastVGGT(ratio=m, protected_fraction=...)`` (``meanfield.merging``, docs/merging.md);
        distinct from the mobility model ``merge``/``fusion`` [None].
    checkpoint : ``meanfield.Checkpoint(path, every=K)`` (or a path, K = 1): write the run's state
        atomically after every K-th save [None]. Every particle method and density method.
    resume : path of a checkpoint of this same run: continue from it; the final state equals an
        uninterrupted run's bit for bit [None].
    check_memory : refuse a run whose estimated peak memory exceeds the available memory [True].
    estimate : print a run-time estimate (``meanfield.eta``) to stderr, measured on the run's first
        chunks after compilation: ``None`` -- when ``progress`` is on and the estimate is >= 10 s;
        ``True`` -- always; ``False`` -- never [None]. Particle methods only (not the density
        methods, not runs with ``merging``). Results are unchanged bit for bit.

    Returns a :class:`FlowSolution`. Raises ``ValueError`` (one line) on bad input.
    """
    return run(make_spec(
        init, N=N, weights=weights, kernel=kernel, alpha=alpha, merge=merge, fusion=fusion, t1=t1, layers=layers,
        dt=dt, time_map=time_map, method=method, save_every=save_every, key=key, n_query=n_query, dtype=dtype,
        progress=progress, save_tokens=save_tokens, diagnostics=diagnostics, key_sample=key_sample,
        merging=merging, matmul_precision=matmul_precision, estimate=estimate,
    ), checkpoint=checkpoint, resume=resume, check_memory=check_memory)


__all__ = ["FlowSolution", "FlowSpec", "kernels", "make_spec", "method_table", "methods", "resolve_kernel", "resolve_method",
           "run", "solve_flow"]
