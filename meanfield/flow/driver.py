"""``solve_flow``: the one driver for every method (in the spirit of diffrax's ``diffeqsolve``).

The driver validates its options (two tiers, as in diffrax: static problems raise ``ValueError``
before anything is traced), builds a :class:`~meanfield.flow.solution.FlowSpec`, and hands it to the
method: a particle scheme (a ``solvers.AbstractIntegrator``: :class:`Layer`, :class:`Euler`,
:class:`Heun`, :class:`Adaptive`) runs in :func:`meanfield.flow.particles.run_particles`; a density
method (:class:`~meanfield.flow.density.Characteristics`, :class:`~meanfield.flow.density.Zonal`,
:class:`~meanfield.flow.density.Circle`) runs itself (``method.run(spec, session)``, the checkpoint session an argument). Kernels are objects too
(:class:`Linear`, :class:`Softmax`, :class:`USA`). Names are accepted as shorthand for the
default-configured objects; :func:`method_table` is the explicit table behind them (the
integrator registry and :data:`~meanfield.flow.density.DENSITY_METHODS`; nothing registers itself as a
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

from meanfield.flow import resources as _resources
from meanfield import _validate
from meanfield.flow import checkpoint as _checkpoint
from meanfield.flow.density import DENSITY_METHODS
from meanfield.stats.diagnostics import DIAGNOSTIC_MODES
from meanfield.flow.distributions import Weighted, as_key
from meanfield.flow.merged import check_merging, resolve_merging, run_merged
from meanfield.flow.options import Fusion, SaveAt, Schedule
from meanfield.flow.particles import run_particles
from meanfield.flow.progress import split_progress
from meanfield.flow.solution import FlowSolution, FlowSpec

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


# keyword -> how it is spelled now (solve_flow had 26 flat parameters before the option objects)
_MOVED = {
    "alpha": "kernel=mf.Linear(alpha) (or mf.Softmax(alpha), mf.USA(alpha)); a kernel name runs alpha = 0.25",
    "matmul_precision": 'the kernel object: kernel=mf.Softmax(alpha, matmul_precision="tf32")',
    "weights": "init=mf.Weighted(init, weights)",
    "fusion": "merge=mf.Fusion(m)",
    "time_map": 'dt="paper" (t = layer/N)',
    "save_every": "save=mf.SaveAt(every=...)",
    "save_tokens": "save=mf.SaveAt(tokens=True)",
    "n_query": "save=mf.SaveAt(n_query=...)",
    "diagnostics": "save=mf.SaveAt(diagnostics=...)",
    "key_sample": "save=mf.SaveAt(key_sample=...)",
    "resume": "checkpoint=mf.Checkpoint(path, every=K, resume=FILE) (or mf.Checkpoint(resume=FILE))",
    "estimate": "progress=mf.Progress(bar=..., estimate=...)",
    "check_memory": "mf.run(mf.make_spec(...), check_memory=False)",
}


def _explain_moved(fn):
    """Turn an old keyword (``solve_flow(alpha=...)``) into one ``ValueError`` naming its new spelling."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        for name in kwargs:
            if name in _MOVED:
                raise ValueError(f"{fn.__name__}({name}=...) is now spelled {_MOVED[name]}")
        return fn(*args, **kwargs)

    return wrapper


def _resolve_init(init):
    """``(init, weights)`` of a ``solve_flow(init=...)`` value (``meanfield.Weighted`` carries masses)."""
    if isinstance(init, Weighted):
        return init.init, init.weights
    return init, None


def _resolve_merge(merge):
    """``(M, fusion)`` of ``merge=``: None (M = 1), a factor ``M >= 1``, or ``Fusion(m)``."""
    if isinstance(merge, Fusion):
        return _validate.merge_factor(fusion=merge.m), float(merge.m)
    return _validate.merge_factor(merge), None


def _resolve_dt(dt):
    """``(dt, time_map)``: a step length (or None: 1.0), or ``"paper"`` (dt = 1/N, t = layer/N)."""
    if isinstance(dt, str):
        _validate.choice("dt", dt, ("paper",))
        return None, "paper"
    return dt, "unit"


def _resolve_schedule(kernel):
    """``(kernel, kernels, every)``: a kernel (``kernels`` None), or a :class:`Schedule` / list of them."""
    if isinstance(kernel, (list, tuple)):
        kernel = Schedule(tuple(kernel))
    if not isinstance(kernel, Schedule):
        return resolve_kernel(kernel, None), None, 1
    every = _validate.integer("Schedule every", kernel.every, 1)
    if not isinstance(kernel.kernels, (list, tuple)) or not kernel.kernels:
        raise ValueError(f"Schedule kernels must be a non-empty list of kernels, got {kernel.kernels!r}")
    kernels = tuple(resolve_kernel(k, None) for k in kernel.kernels)
    kinds = sorted({type(k).__name__ for k in kernels})
    if len(kinds) > 1:
        raise ValueError(f"Schedule kernels must be of one class, got {', '.join(kinds)}")
    return kernels[0], kernels, every


def _resolve_save(save):
    if save is None:
        return SaveAt()
    if not isinstance(save, SaveAt):
        raise ValueError(f"save must be a meanfield.SaveAt(...), got {save!r}")
    _validate.choice("diagnostics", save.diagnostics, DIAGNOSTIC_MODES)
    return save


@_explain_moved
def make_spec(init, *, N=None, kernel="linear", method="layer", merge=None, t1=None, layers=None, dt=None,
              save=None, key=0, dtype=None, merging=None, progress=False) -> FlowSpec:
    """Validate :func:`solve_flow`'s options (static checks only) and build the run's spec."""
    save = _resolve_save(save)
    bar, estimate = split_progress(progress)
    key_sample = _validate.integer("key_sample", save.key_sample, 1)
    kernel, schedule, every = _resolve_schedule(kernel)
    method = resolve_method(method)
    if schedule is not None:
        if not isinstance(method, AbstractIntegrator):
            raise ValueError(f"a kernel Schedule runs particle schemes, not the density method {method.name!r}")
        if merging is not None:
            raise ValueError("a kernel Schedule runs without merging (merging=None)")
        if layers is None and t1 is None:
            layers = len(schedule) * every
    dt, time_map = _resolve_dt(dt)
    M, fusion = _resolve_merge(merge)
    n_query = _validate.integer("n_query", save.n_query, 1)
    init, weights = _resolve_init(init)
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
    if schedule is not None and n_steps != len(schedule) * every:
        raise ValueError(f"a Schedule of {len(schedule)} kernels every {every} step(s) covers {len(schedule) * every} "
                         f"steps, but the run has {n_steps}")
    if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
        seed = int(key)
    else:
        seed = int(jax.random.randint(jax.random.fold_in(key, 7), (), 0, 2**31 - 1))
    spec = FlowSpec(
        init=init, x0=x0, weights=w, N=N, d=d, kernel=kernel, method=method, merge=M, fusion=fusion,
        n_steps=n_steps, dt=h, time_map=time_map, save_steps=_save_steps(n_steps, save.every), key=as_key(key),
        seed=seed, dtype=dtype, n_query=n_query, progress=bar, save_tokens=bool(save.tokens),
        diagnostics=save.diagnostics, key_sample=key_sample, merging=resolve_merging(merging), estimate=estimate,
        schedule=schedule, schedule_every=every,
    )
    if spec.merging is not None:
        check_merging(spec)
    return spec


def run(spec: FlowSpec, *, checkpoint=None, check_memory: bool = True) -> FlowSolution:
    """Run a validated spec with its method (``checkpoint``: see :func:`solve_flow`).

    ``check_memory``: refuse (``ValueError``) before allocating when the run's estimated peak
    memory (``meanfield.flow.resources.estimate_memory``) exceeds the memory the system has available.
    """
    if check_memory:
        _resources.check_memory(spec)
    if spec.merging is not None:
        if checkpoint is not None:
            raise ValueError("checkpoint/resume are not available for runs with token merging (merging=...)")
        return run_merged(spec)
    session = _checkpoint.Session(spec, checkpoint)
    if isinstance(spec.method, AbstractIntegrator):
        return run_particles(spec, session)
    return spec.method.run(spec, session)


@_explain_moved
def solve_flow(init, *, N=None, kernel="linear", method="layer", merge=None, t1=None, layers=None, dt=None,
               save=None, key=0, dtype=None, merging=None, checkpoint=None, progress=False) -> FlowSolution:
    """Solve the mean-field token flow ``dx_i/dt = (1/M) P_{x_i} sum_j A_ij x_j`` on S^{d-1}.

    Parameters (keyword-only after ``init``; defaults in brackets)
    --------------------------------------------------------------
    init : a distribution (``Uniform``, ``VonMisesFisher``, ``VonMisesFisherMixture``), an
        ``(N, d)`` array of tokens (rows are normalised onto the sphere), or either with token
        masses, ``Weighted(init, weights)``: ``w_j >= 0``, shape ``(N,)``; the flow is that of the
        weighted measure ``sum_j w_j delta_{x_j} / sum_j w_j`` (softmax with proportional attention).
    N : number of tokens (required with a distribution).
    kernel : a kernel per layer, ``Schedule([k0, k1, ...], every=K)`` (or a list: ``every=1``; see
        :class:`meanfield.Schedule`), or a kernel object (``Linear(alpha)``, ``Softmax(alpha, key_block=...,
        matmul_precision=...)``, ``USA(alpha)``) or its name ``"linear"`` (paper Eq. 3),
        ``"softmax"``, ``"usa"``, which runs alpha = 0.25 (keeps every Eq. 3 weight positive)
        [linear]. ``matmul_precision`` on a kernel object: ``"highest"`` (float32 means float32 on
        every device, also on GPUs whose default is TF32), or the opt-in fast modes ``"tf32"`` /
        ``"bf16"`` (errors measured in docs/precision.md) [highest].
    method : a method object -- particles ``Layer()`` (literal transformer layer), ``Euler()``,
        ``Heun()``, ``Adaptive(rtol=, atol=)``; densities ``Characteristics(substeps=)``,
        ``Zonal(cells=, cfl=, n_phi=)``, ``Circle(cells=, cfl=)`` -- or its name [layer].
    merge : mobility factor ``M >= 1``, or ``Fusion(m)``, the paper's fusion strength
        ``m in [0, 1)`` with ``M = 1/(1-m)`` [M = 1].
    layers, t1 : number of steps, or final time (a whole number of steps); not both [24 layers].
    dt : time per layer/step [1.0], or ``"paper"``: ``dt = 1/N`` (t = l/N, the paper's §3.2 time map).
    save : a ``SaveAt(every=, tokens=, n_query=, diagnostics=, key_sample=)``: what is recorded
        and how often (see :class:`meanfield.SaveAt`) [``SaveAt()``: every step up to 100 steps,
        else ~100 saves; sampled attention statistics over 512 queries].
    key : int seed or PRNG key, for the initial samples and the query subset [0].
    dtype : float32 or float64 [float32, or float64 when 64-bit JAX is enabled].
    merging : real token merging, a strategy object ``ToMe(ratio=m, proportional=...)`` or
        ``FastVGGT(ratio=m, protected_fraction=...)`` (``meanfield.flow.merged``, docs/merging.md);
        distinct from the mobility model ``merge`` [None].
    checkpoint : ``Checkpoint(path, every=K, resume=FILE)`` (or a path, K = 1): write the run's
        state atomically after every K-th save, and/or continue from the checkpoint ``resume`` of
        this same run; the final state equals an uninterrupted run's bit for bit [None]. Every
        particle method and density method.
    progress : ``True`` for a tqdm bar, an object with init/step/close, or
        ``Progress(bar=, estimate=)`` for the bar and the run-time estimate [False].

    ``make_spec`` takes the same options but ``checkpoint`` and returns the validated spec;
    ``run(spec, checkpoint=, check_memory=)`` runs it (``check_memory=False``: run even when the
    estimated peak memory exceeds the available memory). Returns a :class:`FlowSolution`. Raises
    ``ValueError`` (one line) on bad input.
    """
    return run(make_spec(init, N=N, kernel=kernel, method=method, merge=merge, t1=t1, layers=layers, dt=dt,
                         save=save, key=key, dtype=dtype, merging=merging, progress=progress),
               checkpoint=checkpoint)


__all__ = ["FlowSolution", "FlowSpec", "Fusion", "SaveAt", "Schedule", "Weighted", "kernels", "make_spec", "method_table", "methods", "resolve_kernel", "resolve_method",
           "run", "solve_flow"]
