"""Geometry of the unit sphere S^{d-1} in R^d, behind three functions.

Integrators never touch coordinates otherwise (the habit of ``jax_md.space``): a tangent
projection ``project``, a retraction ``retract`` and ``normalize``.
All act row-wise on arrays of shape ``(..., d)``.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax
from jaxtyping import Array, Float


_UNROLL_MAX_D = 16


def rowdot(a: Float[Array, "... d"], b: Float[Array, "... d"]) -> Float[Array, "..."]:
    """Row-wise inner product ``<a_i, b_i>``.

    For small ``d`` the sum is unrolled over columns: XLA:CPU lowers a reduction over a short
    minor axis to a slow loop (measured 4-5x slower at N = 10^6, d = 4), while the unrolled
    form fuses into one vectorised elementwise pass. For larger ``d`` an einsum is used.
    """
    d = a.shape[-1]
    if d <= _UNROLL_MAX_D:
        out = a[..., 0] * b[..., 0]
        for i in range(1, d):
            out = out + a[..., i] * b[..., i]
        return out
    return jnp.einsum("...d,...d->...", a, b)


def normalize(x: Float[Array, "... d"]) -> Float[Array, "... d"]:
    """Scale each row to unit Euclidean norm (rows must be non-zero)."""
    return x * lax.rsqrt(rowdot(x, x))[..., None]


def project(x: Float[Array, "... d"], v: Float[Array, "... d"]) -> Float[Array, "... d"]:
    """Tangent projection ``P_x v = v - <x, v> x`` (x assumed unit norm)."""
    return v - rowdot(x, v)[..., None] * x


def retract(x: Float[Array, "... d"], v: Float[Array, "... d"]) -> Float[Array, "... d"]:
    """Metric-projection retraction ``R_x(v) = (x + v) / |x + v|``.

    ``R_x(v) = exp_x(v) + O(|v|^3)`` for tangent ``v``, so it preserves the order of
    first- and second-order schemes.
    """
    return normalize(x + v)


def norm_drift(x: Float[Array, "... d"]) -> Float[Array, ""]:
    """``max_i | |x_i| - 1 |``: how far a state has left the sphere."""
    return jnp.max(jnp.abs(jnp.sqrt(rowdot(x, x)) - 1.0))
