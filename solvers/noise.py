"""Additive noise: Brownian motion on the sphere (docs/theory.md "Noise").

The noisy flow is the Stratonovich SDE on S^{d-1}

    dx_i = v(x)_i dt + sigma P_{x_i} o dW_i,        W_i independent Brownian motions in R^d,

whose noise part is Brownian motion on the sphere run at speed ``sigma^2`` (generator
``(sigma^2/2) Delta_S``), so the density obeys the Fokker-Planck equation
``d_t rho + div(rho v) = (sigma^2/2) Delta_S rho``; on the circle ``dtheta = v dt + sigma dW``,
i.e. ``D = sigma^2/2`` in the noisy-Kuramoto notation.

Scheme (:class:`SphereSDE`): diffrax's ``Heun`` (the stochastic Heun / trapezoidal method, which
converges to the Stratonovich solution) on ``MultiTerm(ODETerm(v), ControlTerm(sigma P_x, W))``,
one step of size ``h`` at a time inside a ``lax.fori_loop``, each step followed by the row
normalisation ``x <- x/|x|`` (the exact solution stays on the sphere; the projection changes the
step by O(h^2) terms that do not lower its order). The noise is not commutative, so the strong
order is 1/2; the weak order is 1 (``tests/solvers/test_noise.py`` measures both). ``W`` is a
``diffrax.VirtualBrownianTree`` on ``[0, n_steps h]`` resolved to ``tol = h/4`` (or the ``tol``
given), so runs with the same key and ``h = T/2^k`` see the same Brownian path.

A stochastic integrator takes a PRNG key: ``advance(field, x, n_steps, h, key)``; the particle
runner passes a fresh key per chunk (``stochastic = True``).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
from jax import lax
from jaxtyping import Array, ArrayLike, Float

from ._typing import Scalar, Steps
from .integrators import AbstractIntegrator, ParticleField
from .sphere import normalize, project


class _Projector(eqx.Module):
    """``dW -> sigma P_x dW`` as the ControlTerm's vector field (a lineax operator)."""

    sigma: jax.Array

    def __call__(self, t: ArrayLike, y: Array, args: Any) -> Any:
        import lineax as lx

        struct = jax.ShapeDtypeStruct(y.shape, y.dtype)
        return lx.FunctionLinearOperator(lambda dw: self.sigma * project(y, dw), struct)


class SphereSDE(AbstractIntegrator):
    """Noisy flow ``dx = v dt + sigma P_x o dW`` by stochastic Heun + normalisation (module doc).

    ``sigma >= 0`` is the noise strength (``D = sigma^2/2`` on the circle); ``tol`` the Brownian
    tree's resolution (default ``h/4``). Strong order 1/2, weak order 1.
    """

    sigma: float = 0.0
    tol: float | None = eqx.field(static=True, default=None)
    name: ClassVar[str] = "sde"
    order: ClassVar[int] = 1  # weak
    stochastic: ClassVar[bool] = True

    def __check_init__(self) -> None:
        if not (isinstance(self.sigma, (int, float)) and math.isfinite(self.sigma) and self.sigma >= 0):
            raise ValueError(f"SphereSDE: sigma must be a finite number >= 0, got {self.sigma!r}")
        if self.tol is not None and not (isinstance(self.tol, (int, float)) and self.tol > 0):
            raise ValueError(f"SphereSDE: tol must be a number > 0, got {self.tol!r}")

    def advance(self, field: ParticleField, x: Float[Array, "N d"], n_steps: Steps, h: Scalar,
                key: Array | None = None) -> tuple[Float[Array, "N d"], Steps]:
        if key is None:
            raise ValueError("SphereSDE.advance needs a PRNG key (the particle runner passes one per chunk)")
        dtype = x.dtype
        h = jnp.asarray(h, dtype)
        t1 = jnp.maximum(jnp.asarray(n_steps, dtype) * h, h)
        tol = h / 4 if self.tol is None else jnp.asarray(self.tol, dtype)
        import diffrax  # here: ~0.7 s of import that only noisy runs need

        bm = diffrax.VirtualBrownianTree(jnp.zeros((), dtype), t1, tol=tol, shape=jax.ShapeDtypeStruct(x.shape, dtype), key=key)
        terms: Any = diffrax.MultiTerm(
            diffrax.ODETerm(lambda t, y, f: f.velocity(y)),
            diffrax.ControlTerm(_Projector(jnp.asarray(self.sigma, dtype)), bm),
        )
        solver = diffrax.Heun()

        def step(i: Array, y: Array) -> Array:
            t0 = jnp.asarray(i, dtype) * h
            y1, _, _, _, _ = solver.step(terms, t0, t0 + h, y, field, None, made_jump=False)
            return normalize(y1)

        return lax.fori_loop(0, n_steps, step, x), 2 * n_steps


__all__ = ["SphereSDE"]
