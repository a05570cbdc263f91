"""Linear-kernel particle steps in feature-major layout ``(d, N)`` (docs/theory.md "The three kernels", Eq. 3).

The public layout of tokens is ``(N, d)``. For the linear kernel at small ``d`` XLA:CPU vectorises
poorly over rows of width ``d`` (a row of 4 float32 is half a SIMD register, and reductions over
the short minor axis become scalar loops), so :class:`~solvers.integrators.Layer`,
:class:`~solvers.integrators.Euler` and :class:`~solvers.integrators.Heun` run the linear kernel in
this module on the transposed state ``xt = x.T`` (one transpose in, one out per ``advance`` call;
:func:`meanfield.flow.particles.run_particles` keeps the state transposed for a whole run). Every
per-token operation is then an elementwise operation on ``d`` rows of length ``N``, and the key
moments are ``d`` row means and one ``(d, N) @ (N, d)`` product.

The schemes and the kernel are the same as in ``solvers.integrators`` and ``solvers.kernels``
(drive ``F = (1/M)(m + alpha Sigma x)``, shifted moments, metric-projection retraction); only the
order of the floating-point operations differs, so results agree to round-off
(``tests/solvers/test_feature_major.py``).

:func:`step_with_moments` also returns the key moments ``(m, Sigma)`` of the starting state and its
norm drift: every per-save diagnostic of a linear run except the attention rows is a function of
them (``meanfield.stats.diagnostics.linear_diagnostics``), so a save costs no extra pass over the tokens.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
from jax import lax
from jaxtyping import Array, DTypeLike, Float

from . import native as _native
from ._typing import Scalar, Steps, Weights
from .kernels import probabilities

# integrators imports this module, so its integrator and field types are named loosely here
# (importing them, even for the checker alone, would tie the two modules in a circle)
AbstractIntegrator = Any
AttentionField = Any

SCHEMES = ("layer", "euler", "heun")


def _rowdot(a: Float[Array, "d *rest"], b: Float[Array, "d *rest"]) -> Float[Array, "*rest"]:
    out = a[0] * b[0]
    for i in range(1, a.shape[0]):
        out = out + a[i] * b[i]
    return out


def normalize(xt: Float[Array, "d N"]) -> Float[Array, "d N"]:
    """Columns scaled to unit norm."""
    return xt * lax.rsqrt(_rowdot(xt, xt))[None, :]


MOMENT_CHUNK = 4096
"""Columns per chunk of the moment pass (d x 4096 float32 = 64 KiB stays in L2 for both products)."""


def _sums(y: Float[Array, "d N"], p: Float[Array, " N"] | None) -> tuple[Float[Array, " d"], Float[Array, "d d"]]:
    """``sum_j p_j y_j`` and ``sum_j p_j y_j y_j^T`` of the columns of ``y`` (``p=None``: unit weights)."""
    yp = y if p is None else y * p[None, :]
    return jnp.sum(yp, axis=1), yp @ y.T


def moments(xt: Float[Array, "d N"], weights: Weights = None) -> tuple[Float[Array, " d"], Float[Array, "d d"]]:
    """Key mean ``m`` and covariance ``Sigma`` of the columns (mass-weighted), shifted by ``c = x_0``
    as ``solvers.kernels.key_moments`` (no cancellation near collapse).

    Accumulated over chunks of :data:`MOMENT_CHUNK` columns (a ``fori_loop``; the remainder
    apart): XLA:CPU runs one ``(d, N) @ (N, d)`` product over the whole array ~2.4x slower than
    the same products over cache-sized chunks (N = 10^6, d = 4, float32), and separate
    reductions of the ``d(d+1)/2`` products re-read the array once each.
    """
    d, n = xt.shape
    c = xt[:, 0]
    p = probabilities(weights, n, xt.dtype)
    k = n // MOMENT_CHUNK

    def chunk(i: Array, acc: tuple[Float[Array, " d"], Float[Array, "d d"]]) -> tuple[Float[Array, " d"], Float[Array, "d d"]]:
        y = lax.dynamic_slice_in_dim(xt, i * MOMENT_CHUNK, MOMENT_CHUNK, axis=1) - c[:, None]
        pc = None if p is None else lax.dynamic_slice_in_dim(p, i * MOMENT_CHUNK, MOMENT_CHUNK)
        s1, s2 = _sums(y, pc)
        return acc[0] + s1, acc[1] + s2

    zero = (jnp.zeros((d,), xt.dtype), jnp.zeros((d, d), xt.dtype))
    s1, s2 = lax.fori_loop(0, k, chunk, zero) if k else zero
    t1, t2 = _sums(xt[:, k * MOMENT_CHUNK :] - c[:, None], None if p is None else p[k * MOMENT_CHUNK :])
    return _finish((s1 + t1, s2 + t2, c), n if p is None else 1)


def _finish(sums: tuple[Array, ...], total: int | Array) -> tuple[Float[Array, " d"], Float[Array, "d d"]]:
    """``(m, Sigma)`` from shifted sums ``(s1, s2, c)`` of the columns: ``s1 = sum_j p_j (x_j - c)``,
    ``s2 = sum_j p_j (x_j - c)(x_j - c)^T`` over a total mass ``total`` (as :func:`moments` and
    :func:`solvers.native.linear_moments` accumulate them)."""
    s1, s2, c = sums[:3]
    my = s1 / total
    cov = s2 / total - jnp.outer(my, my)
    return my + c, 0.5 * (cov + cov.T)


def norm_drift(xt: Float[Array, "d N"]) -> Float[Array, ""]:
    """``max_i | |x_i| - 1 |`` (``solvers.sphere.norm_drift`` of ``xt.T``), from the largest and
    smallest squared norm: the rounded square root is monotone, so this is the same number, and it
    needs no square root per token (measured 2.5x faster)."""
    s = _rowdot(xt, xt)
    return jnp.maximum(jnp.sqrt(jnp.max(s)) - 1.0, 1.0 - jnp.sqrt(jnp.min(s)))


def _coefficients(field: AttentionField, xt: Float[Array, "d N"], mc: tuple[Float[Array, " d"], Float[Array, "d d"]]
                  ) -> tuple[Float[Array, "d d"], Float[Array, " d"]]:
    """``F = (1/M)(m + alpha Sigma x) = K x + b`` as the matrix ``K`` (d, d) and vector ``b`` (d,)."""
    m, cov = mc
    mob = jnp.asarray(field.mobility, xt.dtype)
    return mob * jnp.asarray(field.kernel.alpha, xt.dtype) * cov, mob * m


def _affine(mat: Float[Array, "d d"], b: Float[Array, " d"], xt: Float[Array, "d N"], scale: Array | None = None,
            shift: Array | None = None) -> list[Float[Array, " N"]]:
    """Rows ``(mat x + b)_i`` (times the per-token ``scale``, plus ``shift * x_i``), unrolled over d,
    as a list of d rows of length N."""
    rows = []
    for i in range(xt.shape[0]):
        r = b[i] + mat[i, 0] * xt[0]
        for j in range(1, xt.shape[0]):
            r = r + mat[i, j] * xt[j]
        if scale is not None:
            r = r * scale
        if shift is not None:
            r = r + shift * xt[i]
        rows.append(r)
    return rows


def _affine_full(mat: Float[Array, "d d"], b: Float[Array, " d"], xt: Float[Array, "d N"], scale: Array | None = None,
                 shift: Array | None = None) -> Float[Array, "d N"]:
    """The same as one ``(d, N)`` array built by broadcasting (no concatenation: XLA:CPU emits a
    concatenate of d rows as a slower loop than one elementwise pass)."""
    out = b[:, None] + mat[:, 0:1] * xt[0:1]
    for j in range(1, xt.shape[0]):
        out = out + mat[:, j : j + 1] * xt[j : j + 1]
    if scale is not None:
        out = out * scale[None, :]
    if shift is not None:
        out = out + shift[None, :] * xt
    return out


def _barrier(*a: Array | float) -> tuple[Array, ...]:
    """Materialise the per-token (N,) scalars: without it XLA fuses them into every output entry and
    recomputes the d x d products d times (measured 2x slower at N = 10^6, d = 4)."""
    return lax.optimization_barrier(a)


def _layer(field: AttentionField, xt: Float[Array, "d N"], h: Array, mc: tuple[Float[Array, " d"], Float[Array, "d d"]]) -> Float[Array, "d N"]:
    """``normalize(x + h F)``: ``x + h F = A x + h b`` with ``A = I + h K``; the per-token norm
    is computed first (one (N,) array), so the output pass does d fused multiply-adds per entry."""
    k, b = _coefficients(field, xt, mc)
    a = jnp.eye(xt.shape[0], dtype=xt.dtype) + h * k
    (r,) = _barrier(lax.rsqrt(sum(v * v for v in _affine(a, h * b, xt))))
    return _affine_full(a, h * b, xt, scale=r)


def _euler(field: AttentionField, xt: Float[Array, "d N"], h: Array, mc: tuple[Float[Array, " d"], Float[Array, "d d"]]) -> Float[Array, "d N"]:
    """``normalize(x + h P_x F) = normalize((1 - h s) x + h F)``, ``s = <x, F>``."""
    k, b = _coefficients(field, xt, mc)
    f = _affine(k, b, xt)
    s = sum(xt[i] * f[i] for i in range(xt.shape[0]))
    c = 1.0 - h * s
    y = [c * xt[i] + h * f[i] for i in range(xt.shape[0])]
    r = lax.rsqrt(sum(v * v for v in y))
    cr, hr = _barrier(c * r, h * r)
    return _affine_full(k, b, xt, scale=hr, shift=cr)


def _velocity(field: AttentionField, xt: Float[Array, "d N"], mc: tuple[Float[Array, " d"], Float[Array, "d d"]] | None = None) -> Float[Array, "d N"]:
    """``P_x F = F - <x, F> x``, materialised (Heun uses it twice)."""
    k, b = _coefficients(field, xt, moments(xt, field.weights) if mc is None else mc)
    (s,) = _barrier(sum(xt[i] * f for i, f in enumerate(_affine(k, b, xt))))
    (v,) = _barrier(_affine_full(k, b, xt, shift=-s))
    return v


def _normalized(y: Float[Array, "d N"]) -> Float[Array, "d N"]:
    """``normalize(y)`` with the per-token norm materialised first (see :func:`_barrier`)."""
    (r,) = _barrier(lax.rsqrt(_rowdot(y, y)))
    return y * r[None, :]


def _step(integrator: AbstractIntegrator, field: AttentionField, xt: Float[Array, "d N"], h: Array, mc: tuple[Float[Array, " d"], Float[Array, "d d"]] | None = None
          ) -> Float[Array, "d N"]:
    name = integrator.name
    mc = moments(xt, field.weights) if mc is None else mc
    if name == "layer":
        return _layer(field, xt, h, mc)
    if name == "euler":
        return _euler(field, xt, h, mc)
    v1 = _velocity(field, xt, mc)
    v2 = _velocity(field, _normalized(xt + h * v1))
    return _normalized(xt + (0.5 * h) * (v1 + v2))


def native_fits(integrator: AbstractIntegrator, field: AttentionField, d: int, dtype: DTypeLike) -> bool:
    """Whether the one-pass C++ kernel (:mod:`solvers.native`) can take these steps: ``layer`` or
    ``euler``, unit masses, float32/float64, ``d <= 64`` (not whether it is built, nor the backend)."""
    return (integrator.name in _native.SCHEME_CODES and field.weights is None and d <= 64
            and jnp.dtype(dtype) in (jnp.float32, jnp.float64))


def _native_ok(integrator: AbstractIntegrator, field: AttentionField, xt: Float[Array, "d N"], native: bool | None) -> bool:
    """Whether this step runs as the one-pass C++ kernel: :func:`native_fits`, on the CPU with the
    kernel built (``native=None``: auto; ``False``: never; ``True``: required)."""
    if native is False:
        return False
    fits = native_fits(integrator, field, xt.shape[-2], xt.dtype)
    if native is True and not fits:
        raise ValueError("native=True needs the layer or euler scheme, unit masses, float32/float64 and d <= 64")
    return fits and _native.use_native(native)


def _native_step(integrator: AbstractIntegrator, field: AttentionField, xt: Float[Array, "d N"], h: Array, mc: tuple[Float[Array, " d"], Float[Array, "d d"]]
                 ) -> tuple[Array, Array, Array, Array]:
    k, b = _coefficients(field, xt, mc)
    return _native.linear_step(xt, k, b, h, integrator.name)


def evaluations(integrator: AbstractIntegrator) -> int:
    """Field evaluations per step."""
    return 2 if integrator.name == "heun" else 1


def advance(integrator: AbstractIntegrator, field: AttentionField, xt: Float[Array, "d N"], n_steps: Steps, h: Scalar,
            native: bool | None = None) -> tuple[Float[Array, "d N"], Steps]:
    """``n_steps`` (may be traced) steps of ``integrator`` on the feature-major state; ``(xt, evals)``.

    On the CPU, ``layer`` and ``euler`` with unit masses run as the one-pass C++ kernel of
    :mod:`solvers.native` (each step writes the new state and accumulates its key moments for the
    next step, so a step reads and writes the state once); ``native=False`` forces the XLA program.
    """
    h = jnp.asarray(h, xt.dtype)
    n = xt.shape[-1]
    if _native_ok(integrator, field, xt, native):
        def body(_: Array, carry: tuple[Array, ...]) -> tuple[Array, ...]:
            y, sums = carry[0], carry[1:]
            return _native_step(integrator, field, y, h, _finish(sums, n))

        out = lax.fori_loop(0, n_steps, body, (xt, *_native.linear_moments(xt)[:3]))
        return out[0], evaluations(integrator) * n_steps
    xt = lax.fori_loop(0, n_steps, lambda _, y: _step(integrator, field, y, h), xt)
    return xt, evaluations(integrator) * n_steps


def step_with_moments(integrator: AbstractIntegrator, field: AttentionField, xt: Float[Array, "d N"], h: Scalar,
                      native: bool | None = None) -> tuple[Float[Array, "d N"], tuple[Float[Array, " d"], Float[Array, "d d"], Float[Array, ""]], int]:
    """One step, and ``(m, Sigma, norm_drift)`` of the starting state: ``(xt_new, stats, evals)``."""
    h = jnp.asarray(h, xt.dtype)
    if _native_ok(integrator, field, xt, native):
        s1, s2, c, rng = _native.linear_moments(xt)
        mc = _finish((s1, s2, c), xt.shape[-1])
        drift = jnp.maximum(jnp.sqrt(rng[1]) - 1.0, 1.0 - jnp.sqrt(rng[0]))
        return _native_step(integrator, field, xt, h, mc)[0], (mc[0], mc[1], drift), evaluations(integrator)
    mc = moments(xt, field.weights)
    xn = _step(integrator, field, xt, h, mc)
    return xn, (mc[0], mc[1], norm_drift(xt)), evaluations(integrator)


def start_carry(integrator: AbstractIntegrator, field: AttentionField, xt: Float[Array, "d N"],
                native: bool | None = None) -> tuple[Array, ...]:
    """What a run carries from step to step beside the state: on the native path the shifted sums
    ``(s1, s2, c)`` of ``xt`` that the next step needs (each native step returns those of its
    result); ``()`` on the XLA path, whose steps take their moments from the state."""
    if _native_ok(integrator, field, xt, native):
        return tuple(_native.linear_moments(xt)[:3])
    return ()


def advance_carry(integrator: AbstractIntegrator, field: AttentionField, xt: Float[Array, "d N"], carry: tuple[Array, ...],
                  n_steps: Steps, h: Scalar, native: bool | None = None
                  ) -> tuple[Float[Array, "d N"], tuple[Array, ...], Steps]:
    """:func:`advance` with the carry of :func:`start_carry`: ``(xt, carry, evals)``.

    The moments computed by a chunk's last step go to the next chunk instead of being recomputed,
    so the steps do not depend on how a run is cut into chunks: ``advance_carry`` over ``a + b``
    steps equals ``b`` steps after ``a`` bit for bit (``tests/solvers/test_feature_major.py``)."""
    h = jnp.asarray(h, xt.dtype)
    if carry:
        n = xt.shape[-1]

        def body(_: Array, state: tuple[Array, ...]) -> tuple[Array, ...]:
            return _native_step(integrator, field, state[0], h, _finish(state[1:], n))

        out = lax.fori_loop(0, n_steps, body, (xt, *carry))
        return out[0], tuple(out[1:]), evaluations(integrator) * n_steps
    xt = lax.fori_loop(0, n_steps, lambda _, y: _step(integrator, field, y, h), xt)
    return xt, (), evaluations(integrator) * n_steps


def step_with_moments_carry(integrator: AbstractIntegrator, field: AttentionField, xt: Float[Array, "d N"],
                            carry: tuple[Array, ...], h: Scalar, native: bool | None = None
                            ) -> tuple[Float[Array, "d N"], tuple[Array, ...], tuple[Float[Array, " d"], Float[Array, "d d"], Float[Array, ""]], int]:
    """:func:`step_with_moments` with the carry: ``(xt_new, carry, (m, Sigma, norm_drift), evals)``;
    the statistics of the starting state come from the carried sums on the native path."""
    if not carry:
        xn, stats, evals = step_with_moments(integrator, field, xt, h, native)
        return xn, (), stats, evals
    mc = _finish(carry, xt.shape[-1])
    y, *sums = _native_step(integrator, field, xt, jnp.asarray(h, xt.dtype), mc)
    return y, tuple(sums), (mc[0], mc[1], norm_drift(xt)), evaluations(integrator)


def moments_carry(field: AttentionField, xt: Float[Array, "d N"], carry: tuple[Array, ...]) -> tuple[Float[Array, " d"], Float[Array, "d d"], Float[Array, ""]]:
    """``(m, Sigma, norm_drift)`` of ``xt``, from the carried sums when there are any."""
    mc = _finish(carry, xt.shape[-1]) if carry else moments(xt, field.weights)
    return mc[0], mc[1], norm_drift(xt)


__all__ = ["SCHEMES", "advance", "advance_carry", "evaluations", "moments", "moments_carry", "norm_drift", "normalize",
           "start_carry", "step_with_moments", "step_with_moments_carry"]
