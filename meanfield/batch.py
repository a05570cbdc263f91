"""Batches of systems and of inverse temperatures as ONE jitted, vmapped program.

The particle core is pure (kernels and fields are pytrees with ``alpha`` as a leaf), so a sweep
such as the phase diagrams of Geshkovski et al. (90 values of alpha x 2 048 systems) is a
``jax.vmap`` of the single-system rollout. :func:`simulate_batch` is that vmap, recording |m| after
every layer; for a grid of (alpha, system) pairs flatten the grid into the batch axis:

    A, S = jnp.meshgrid(alphas, jnp.arange(n_systems), indexing="ij")
    out = simulate_batch(x0[S.ravel()], alpha=A.ravel(), ...)
    m = out["order_parameter"].reshape(len(alphas), n_systems, -1)
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

import equinox as eqx

from solvers import Adaptive, AttentionField, make_integrator, normalize

from . import _validate
from .diagnostics import order_parameter
from .flow import resolve_kernel


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


def simulate_batch(x0, *, kernel="linear", alpha=None, merge=None, fusion=None, dt=1.0, layers=24,
                   method="layer") -> dict:
    """Run ``B`` independent systems ``x0`` (B, N, d) with per-system ``alpha`` (scalar or (B,)).

    ``kernel`` is a kernel object or name (its block sizes are kept; ``alpha``, if given, replaces
    its inverse temperature per system) [linear, alpha 0.25]; ``method`` a fixed-step scheme object
    or name (``Layer``, ``Euler``, ``Heun``) [layer].
    Returns ``{"x": (B, N, d) final tokens, "order_parameter": (B, layers + 1)}`` as JAX arrays,
    computed by one compiled program (no Python loop over systems, alphas or layers).
    """
    integ = make_integrator(method)
    if isinstance(integ, Adaptive):
        raise ValueError("simulate_batch runs fixed-step schemes only (layer, euler, heun), got adaptive")
    scalar = alpha is None or np.ndim(alpha) == 0
    kernel = resolve_kernel(kernel, alpha if scalar else None)
    alpha = kernel.alpha if scalar else alpha
    x0 = jnp.asarray(x0)
    if x0.ndim != 3 or x0.shape[1] < 1 or x0.shape[2] < 2:
        raise ValueError(f"x0 must be a (B, N, d) array with N >= 1 and d >= 2, got shape {x0.shape}")
    if not bool(jnp.all(jnp.isfinite(x0))):
        raise ValueError("x0 contains NaN or Inf")
    if bool(jnp.any(jnp.all(x0 == 0, axis=-1))):
        raise ValueError("x0 contains a zero row; a zero vector has no direction on the sphere")
    a = np.asarray(alpha, dtype=np.float64)
    if a.ndim == 0:
        a = np.full(x0.shape[0], float(a))
    if a.shape != (x0.shape[0],) or not np.all(np.isfinite(a)) or np.any(a < 0):
        raise ValueError(f"alpha must be a finite number >= 0 or a ({x0.shape[0]},) array of them")
    M = _validate.merge_factor(merge, fusion)
    layers = _validate.integer("layers", layers, 1)
    dt = _validate.real("dt", dt, minimum=0.0, open_min=True)
    xf, m = _rollout_batch(
        normalize(x0), jnp.asarray(a, x0.dtype), jnp.asarray(1.0 / M, x0.dtype), jnp.asarray(dt, x0.dtype),
        kernel, integ, layers=layers,
    )
    return {"x": xf, "order_parameter": m}
