"""Batches of systems and of inverse temperatures as ONE jitted, vmapped program.

The particle core is pure (kernels and fields are pytrees with ``alpha`` as a leaf), so a sweep
such as the phase diagrams of Geshkovski et al. (90 values of alpha x 2 048 systems) is a
``jax.vmap`` of the single-system rollout. :func:`simulate_batch` is that vmap, recording |m| after
every layer; for a grid of (alpha, system) pairs flatten the grid into the batch axis:

    A, S = jnp.meshgrid(alphas, jnp.arange(n_systems), indexing="ij")
    out = simulate_batch(x0[S.ravel()], alpha=A.ravel(), ...)
    m = out["order_parameter"].reshape(len(alphas), n_systems, -1)

Small softmax batches of the ``layer`` scheme run instead on the C++ kernel of
:func:`meanfield.studies.phase.phase_diagram` (:mod:`solvers.native`, CPU), which returns |m| after every
layer and the final tokens (``engine``; :func:`simulate_batch`). ``NATIVE_MAX_N`` (128) is a guess,
not a measurement.
"""

from __future__ import annotations

import dataclasses
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

import equinox as eqx

from solvers import Adaptive, AttentionField, Layer, Softmax, make_integrator, normalize
from solvers import native as _native

from meanfield import _validate
from meanfield.stats.diagnostics import order_parameter
from meanfield.flow.driver import resolve_kernel


@partial(jax.jit, static_argnames=("layers",))
def _rollout_batch(x0, alpha, mobility, h, kernel, integ, *, layers):
    def one(x, a):
        field = AttentionField(eqx.tree_at(lambda k: k.alpha, kernel, a), mobility)

        def step(y, _):
            y, _ = integ.advance(field, y, 1, h)
            return y, order_parameter(y)

        xf, ms = lax.scan(step, x, None, length=layers)
        return xf, jnp.concatenate([order_parameter(x)[None], ms])

    return jax.vmap(one)(x0, alpha)


ENGINES = ("auto", "jax", "native")
NATIVE_MAX_N = 128  # "auto" runs the native kernel up to this many tokens per system (its state stays in L1/L2)
# "auto" runs the native kernel only for the dimensions compiled into it (phase_softmax.cc, layer_d):
# its generic-d loop took 4.7-11x the vmapped program's time at n = 32, d = 64, B = 17 and 512,
# 6 layers, float32 (benchmarks/batch_engines.py and benchmarks/README.md; AVX2 machine, 2 cores, loaded).
NATIVE_D = (4, 8, 16)


@dataclasses.dataclass(frozen=True)
class BatchInputs:
    """The checked inputs of a batch of systems (:func:`batch_inputs`): host tokens ``x`` (B, N, d),
    one ``alpha`` per system (float64, (B,)), the kernel object, the fixed-step scheme, ``merge = M``,
    ``dt`` and ``layers``."""

    x: np.ndarray
    alpha: np.ndarray
    kernel: object
    integ: object
    merge: float
    dt: float
    layers: int


def batch_inputs(x0, *, kernel="linear", alpha=None, merge=None, fusion=None, dt=1.0, layers=24, method="layer",
                 min_n: int = 1) -> BatchInputs:
    """The one validation of a batch (``simulate_batch``; ``phase_diagram`` and ``advance_ensemble`` use
    the same :func:`meanfield._validate.batch_tokens` / :func:`~meanfield._validate.alphas`): every
    check raises ``ValueError`` with one line that names the bad value."""
    integ = make_integrator(method)
    if isinstance(integ, Adaptive):
        raise ValueError("simulate_batch runs fixed-step schemes only (layer, euler, heun), got adaptive")
    x = _validate.batch_tokens(x0, name="x0", min_n=min_n)
    scalar = alpha is None or np.ndim(alpha) == 0
    kernel = resolve_kernel(kernel, alpha if scalar else None)
    a = _validate.alphas("alpha", kernel.alpha if scalar else alpha, x.shape[0])
    M = _validate.merge_factor(merge, fusion)
    layers = _validate.integer("layers", layers, 1)
    dt = _validate.real("dt", dt, minimum=0.0, open_min=True)
    return BatchInputs(x, a, kernel, integ, M, dt, layers)


def _lanes(dtype) -> int:
    return 16 if jnp.dtype(dtype) == jnp.float32 else 8  # (beta, system) pairs per 512-bit vector of the kernel


def _native_plan(inp: BatchInputs, dtype):
    """How the native kernel covers the batch: ``(systems, betas, gather, lane_work)``.

    The kernel runs a grid ``betas x systems``. A batch that IS such a grid (every system paired with
    every distinct alpha once, as ``x0[S.ravel()], alpha=A.ravel()``, or one system under many alphas)
    runs as one grid of its distinct systems; any other batch as one grid per distinct alpha, each
    padded to the largest group by repeating its own systems. ``gather`` maps each system of the
    batch to its row of the flattened ``(groups, pairs)`` output; ``lane_work`` counts the pairs the
    kernel computes, rounded up to whole vectors."""
    B = inp.x.shape[0]
    ua, ia = np.unique(inp.alpha, return_inverse=True)
    us, isy = np.unique(inp.x.reshape(B, -1), axis=0, return_inverse=True)
    ia, isy = ia.reshape(-1), isy.reshape(-1)
    L = _lanes(dtype)
    if len(ua) * len(us) == B and len(np.unique(ia * len(us) + isy)) == B:  # a full (alpha, system) grid
        systems = us.reshape(len(us), *inp.x.shape[1:])
        return systems[None], ua[None], ia * len(us) + isy, -(-B // L) * L
    groups = [np.flatnonzero(ia == k) for k in range(len(ua))]
    G = max(len(g) for g in groups)
    idx = np.stack([np.resize(g, G) for g in groups])  # (groups, G), padding repeats the group's systems
    gather = np.empty(B, np.int64)
    for k, g in enumerate(groups):
        gather[g] = k * G + np.arange(len(g))
    return inp.x[idx], ua[:, None], gather, len(groups) * (-(-G // L) * L)


def native_refusal(inp: BatchInputs, dtype) -> str | None:
    """Why the native kernel cannot run this batch (``None`` when it can): it runs the ``layer``
    scheme of the plain ``softmax`` kernel in float32/float64."""
    if type(inp.kernel) is not Softmax:
        return f"runs the softmax kernel only, got {inp.kernel.name!r}"
    if not isinstance(inp.integ, Layer):
        return f"runs the layer scheme only, got {inp.integ.name!r}"
    if jnp.dtype(dtype) not in (jnp.float32, jnp.float64):
        return f"runs float32 or float64, got {jnp.dtype(dtype).name}"
    if inp.x.shape[1] < 2:
        return f"needs N >= 2 tokens per system, got N = {inp.x.shape[1]}"
    return None


@partial(jax.jit, static_argnames=("layers", "threads"))
def _native_rollout(systems, betas, gather, h, *, layers, threads):
    """``(x, m)``: the final tokens (B, N, d) and |m| (B, layers + 1) of the batch's systems."""
    seg = jnp.asarray([0] + [1] * layers, jnp.int32)  # save the start, then after every layer
    shape = systems.shape[-2:]

    def grid(x, b):
        _, _, m, xf = _native.phase_rollout(x, b, h, seg, 0.5, 0.5, threads=threads)
        return xf.reshape(-1, *shape), m.reshape(-1, layers + 1)

    xf, m = jax.vmap(grid)(systems, betas)  # one kernel call per grid, in turn
    return xf.reshape(-1, *shape)[gather], m.reshape(-1, layers + 1)[gather]


def _engine(engine, inp: BatchInputs, dtype):
    """``("jax", None)`` or ``("native", plan)`` for :func:`simulate_batch`'s ``engine``."""
    _validate.choice("engine", engine, ENGINES)
    if engine == "jax":
        return "jax", None
    why = native_refusal(inp, dtype)
    if engine == "native":
        if why:
            raise ValueError(f"engine='native' {why}")
        _native.use_native(True)  # ValueError with the reason when the kernel is unavailable
        return "native", _native_plan(inp, dtype)
    if why or inp.x.shape[1] > NATIVE_MAX_N or inp.x.shape[2] not in NATIVE_D or not _native.use_native(None):
        return "jax", None
    plan = _native_plan(inp, dtype)
    if plan[3] > 2 * inp.x.shape[0]:  # padding would more than double the work: the vmapped program wins
        return "jax", None
    return "native", plan


def simulate_batch(x0, *, kernel="linear", alpha=None, merge=None, fusion=None, dt=1.0, layers=24,
                   method="layer", engine="auto", return_x=True) -> dict:
    """Run ``B`` independent systems ``x0`` (B, N, d) with per-system ``alpha`` (scalar or (B,)).

    ``kernel`` is a kernel object or name (its block sizes are kept; ``alpha``, if given, replaces
    its inverse temperature per system) [linear, alpha 0.25]; ``method`` a fixed-step scheme object
    or name (``Layer``, ``Euler``, ``Heun``) [layer].
    Returns ``{"x": (B, N, d) final tokens, "order_parameter": (B, layers + 1)}`` as JAX arrays,
    computed by one compiled program (no Python loop over systems, alphas or layers);
    ``return_x=False`` leaves ``"x"`` out.

    ``engine``: ``"jax"`` the vmapped rollout; ``"native"`` the C++ kernel of ``phase_diagram``
    (:mod:`solvers.native`; softmax, ``layer``, float32/float64, CPU; ``merge`` enters as the step
    ``dt / M``); ``"auto"`` [default] the native kernel where it applies, ``N <= 128``
    tokens, ``d`` in 4, 8, 16, the kernel compiled, and the batch is a grid of (alpha, system) pairs or close to one,
    else the vmapped rollout. Both return the same keys (the native kernel returns the final tokens
    too) and agree to round-off (``tests/solvers/test_native.py``).
    """
    inp = batch_inputs(x0, kernel=kernel, alpha=alpha, merge=merge, fusion=fusion, dt=dt, layers=layers,
                       method=method)
    x = jnp.asarray(inp.x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.result_type(float))
    which, plan = _engine(engine, inp, x.dtype)
    if which == "native":
        systems, betas, gather, _ = plan
        xf, m = _native_rollout(normalize(jnp.asarray(systems, x.dtype)), jnp.asarray(betas, x.dtype),
                                jnp.asarray(gather), jnp.asarray(inp.dt / inp.merge, x.dtype), layers=inp.layers,
                                threads=_native.default_threads())
    else:
        xf, m = _rollout_batch(
            normalize(x), jnp.asarray(inp.alpha, x.dtype), jnp.asarray(1.0 / inp.merge, x.dtype),
            jnp.asarray(inp.dt, x.dtype), inp.kernel, inp.integ, layers=inp.layers,
        )
    return {"x": xf, "order_parameter": m} if return_x else {"order_parameter": m}
