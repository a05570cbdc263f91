"""Time integrators on the sphere for ``dx_i/dt = (1/M) P_{x_i} F(x_i)`` (docs/theory.md "Layers and time").

Each scheme is an immutable equinox Module (a subclass of :class:`AbstractIntegrator`) with a
``name``, an ``order`` and ``advance(field, x, n_steps, h) -> (x, n_evals)``, a pure function of
its inputs that runs
``n_steps`` steps of size ``h`` in one ``lax.fori_loop`` (``n_steps`` may be a traced value, so a
change of chunk length never recompiles). Schemes touch the sphere only through
``solvers.sphere.project`` and ``retract``.

=====================  =====  =================================================================
scheme                 order  update
=====================  =====  =================================================================
``Layer``              1      ``x <- normalize(x + h F(x)/M)`` -- a residual attention layer
                              followed by normalisation; the scheme of the reference code of
                              Geshkovski et al. (2023), "one layer = one step of size h".
``Euler``              1      ``x <- R_x(h P_x F(x)/M)``
``Heun``               2      Heun's method in R^d on the tangent field, then retraction
                              (Hairer, Lubich & Wanner, *Geometric Numerical Integration*, IV.4).
``Adaptive``           5(4)   diffrax ``Tsit5`` with a PID step-size controller on the projected
                              ODE in R^{N x d}; no renormalisation, the norm drift is reported.
=====================  =====  =================================================================

:data:`INTEGRATORS` maps each scheme's ``name`` to its class; it is filled when a subclass of
:class:`AbstractIntegrator` with a ``name`` is defined.
"""

from __future__ import annotations

import abc
import dataclasses
import math
from typing import Any, Callable, ClassVar, Protocol, cast

import equinox as eqx
import jax.numpy as jnp
from jax import lax
from jaxtyping import Array, Float

from . import feature_major
from ._registry import register
from ._typing import Scalar, Steps
from .kernels import AbstractKernel, Linear
from .sphere import project, retract


INTEGRATORS: dict[str, type] = {}


class ParticleField(Protocol):
    """What a scheme's ``advance`` needs of a field: the attention output and the tangent velocity
    (:class:`AttentionField`, :class:`solvers.distributed.ShardedAttentionField`)."""

    def drive(self, x: Float[Array, "N d"]) -> Float[Array, "N d"]: ...

    def velocity(self, x: Float[Array, "N d"]) -> Float[Array, "N d"]: ...


class DivergenceField(ParticleField, Protocol):
    """A field that also gives ``div_S v`` (for ``step_with_divergence``): :class:`AttentionField`."""

    def drive_and_divergence(self, x: Float[Array, "N d"]) -> tuple[Float[Array, "N d"], Float[Array, " N"]]: ...

    def velocity_and_divergence(self, x: Float[Array, "N d"]) -> tuple[Float[Array, "N d"], Float[Array, " N"]]: ...


class AttentionField(eqx.Module):
    """Mean-field velocity of a kernel over tokens with masses, times the mobility ``1/M``.

    ``mobility`` is the one convention for merging-as-mobility in the engines: the velocity is
    multiplied by it (docs/theory.md "Merging as mobility"; the product layer converts the user's
    ``merge = M`` or ``fusion = m`` to ``mobility = 1/M`` once). ``weights`` (N,) are the token
    masses (``None``: unit masses), which every kernel evaluation uses for the keys.
    """

    kernel: AbstractKernel
    mobility: Scalar = 1.0
    weights: Float[Array, " N"] | None = None

    def drive(self, x: Float[Array, "N d"]) -> Float[Array, "N d"]:
        """``(1/M) sum_j A_ij x_j`` -- the unprojected attention output."""
        return jnp.asarray(self.mobility, x.dtype) * self.kernel.drive(x, x, self.weights)

    def velocity(self, x: Float[Array, "N d"]) -> Float[Array, "N d"]:
        """``(1/M) P_x sum_j A_ij x_j`` -- the tangent velocity of the ODE."""
        return project(x, self.drive(x))

    def drive_and_divergence(self, x: Float[Array, "N d"]) -> tuple[Float[Array, "N d"], Float[Array, " N"]]:
        """``(1/M) sum_j A_ij x_j`` and the surface divergence ``div_S v`` at every particle."""
        f, div = self.kernel.drive_and_divergence(x, x, self.weights)
        mob = jnp.asarray(self.mobility, x.dtype)
        return mob * f, mob * div

    def velocity_and_divergence(self, x: Float[Array, "N d"]) -> tuple[Float[Array, "N d"], Float[Array, " N"]]:
        """Velocity and its surface divergence ``div_S v`` at every particle."""
        f, div = self.drive_and_divergence(x)
        return project(x, f), div


class AbstractIntegrator(eqx.Module):
    """Interface of a particle scheme: ``advance(field, x, n_steps, h) -> (x, n_evals)``."""

    name: ClassVar[str]
    order: ClassVar[int]
    fused_divergence: ClassVar[bool] = False  # step_with_divergence reads div off the step's own evaluation
    # advance(x, a + b) equals advance(advance(x, a), b) bit for bit (a fixed, deterministic step), so a
    # runner may cut the steps between two saves into chunks of any length
    chunk_invariant: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        register(INTEGRATORS, cls)

    @abc.abstractmethod
    def advance(self, field: ParticleField, x: Float[Array, "N d"], n_steps: Steps, h: Scalar) -> tuple[Float[Array, "N d"], Steps]:
        """Run ``n_steps`` (may be traced) steps of size ``h``; return ``(x, field evaluations)``."""

    def step_with_divergence(self, field: DivergenceField, x: Float[Array, "N d"], h: Scalar) -> tuple[Float[Array, "N d"], Float[Array, " N"], Steps]:
        """One step, and ``div_S v`` at the starting ``x``: ``(x_new, div, field evaluations)``.

        The runner records the entropy rate of a saved state from the first step after it. This
        default takes one more field evaluation (not counted in the step's evaluations); schemes
        with ``fused_divergence`` read the divergence off the evaluation the step makes anyway.
        """
        _, div = field.velocity_and_divergence(x)
        x_new, n = self.advance(field, x, 1, h)
        return x_new, div, n

    def describe(self) -> dict[str, Any]:
        """JSON-able description: ``{"name": ..., <option>: <value>, ...}``."""
        return {"name": self.name, **{f.name: getattr(self, f.name) for f in dataclasses.fields(self)}}


def _loop(step: Callable[[Array], Array], x: Float[Array, "..."], n_steps: Steps) -> Float[Array, "..."]:
    return lax.fori_loop(0, n_steps, lambda _, y: step(y), x)


def uses_feature_major(integrator: AbstractIntegrator, field: ParticleField) -> bool:
    """The linear kernel on a plain :class:`AttentionField` with ``Layer``/``Euler``/``Heun`` itself
    (not a subclass, which may change the step) runs in ``solvers.feature_major``."""
    return (type(integrator) in (Layer, Euler, Heun) and type(field) is AttentionField
            and type(field.kernel) is Linear)


def _feature_major(integrator: AbstractIntegrator, field: ParticleField, x: Float[Array, "N d"], n_steps: Steps,
                   h: Scalar) -> tuple[Float[Array, "N d"], Steps]:
    """The linear kernel's steps on the transposed state (``solvers.feature_major``)."""
    # an AttentionField: the callers checked uses_feature_major
    xt, n = feature_major.advance(integrator, cast(AttentionField, field), x.T, n_steps, h)
    return xt.T, n


class Layer(AbstractIntegrator):
    """Literal transformer layer ``x <- normalize(x + h (1/M) sum_j A_ij x_j)``; order 1."""

    order: ClassVar[int] = 1
    name: ClassVar[str] = "layer"
    fused_divergence: ClassVar[bool] = True
    chunk_invariant: ClassVar[bool] = True

    def advance(self, field: ParticleField, x: Float[Array, "N d"], n_steps: Steps, h: Scalar) -> tuple[Float[Array, "N d"], Steps]:
        if uses_feature_major(self, field):
            return _feature_major(self, field, x, n_steps, h)
        h = jnp.asarray(h, x.dtype)
        return _loop(lambda y: retract(y, h * field.drive(y)), x, n_steps), n_steps

    def step_with_divergence(self, field: DivergenceField, x: Float[Array, "N d"], h: Scalar) -> tuple[Float[Array, "N d"], Float[Array, " N"], Steps]:
        f, div = field.drive_and_divergence(x)
        return retract(x, jnp.asarray(h, x.dtype) * f), div, 1


class Euler(AbstractIntegrator):
    """Projected Euler with retraction ``x <- R_x(h v(x))``; order 1."""

    order: ClassVar[int] = 1
    name: ClassVar[str] = "euler"
    fused_divergence: ClassVar[bool] = True
    chunk_invariant: ClassVar[bool] = True

    def advance(self, field: ParticleField, x: Float[Array, "N d"], n_steps: Steps, h: Scalar) -> tuple[Float[Array, "N d"], Steps]:
        if uses_feature_major(self, field):
            return _feature_major(self, field, x, n_steps, h)
        h = jnp.asarray(h, x.dtype)
        return _loop(lambda y: retract(y, h * field.velocity(y)), x, n_steps), n_steps

    def step_with_divergence(self, field: DivergenceField, x: Float[Array, "N d"], h: Scalar) -> tuple[Float[Array, "N d"], Float[Array, " N"], Steps]:
        v, div = field.velocity_and_divergence(x)
        return retract(x, jnp.asarray(h, x.dtype) * v), div, 1


class Heun(AbstractIntegrator):
    """Second-order retraction scheme: ``v1 = v(x)``, ``x~ = R_x(h v1)``, ``v2 = v(x~)``,
    ``x <- R_x(h (v1 + v2)/2)``. Local error O(h^3) (Heun in R^d, the retraction moves the
    result by O(h^3)), global error O(h^2); two field evaluations per step."""

    order: ClassVar[int] = 2
    name: ClassVar[str] = "heun"
    fused_divergence: ClassVar[bool] = True
    chunk_invariant: ClassVar[bool] = True

    def advance(self, field: ParticleField, x: Float[Array, "N d"], n_steps: Steps, h: Scalar) -> tuple[Float[Array, "N d"], Steps]:
        if uses_feature_major(self, field):
            return _feature_major(self, field, x, n_steps, h)
        h = jnp.asarray(h, x.dtype)

        def step(y: Array) -> Array:
            v1 = field.velocity(y)
            v2 = field.velocity(retract(y, h * v1))
            return retract(y, 0.5 * h * (v1 + v2))

        return _loop(step, x, n_steps), 2 * n_steps

    def step_with_divergence(self, field: DivergenceField, x: Float[Array, "N d"], h: Scalar) -> tuple[Float[Array, "N d"], Float[Array, " N"], Steps]:
        h = jnp.asarray(h, x.dtype)
        v1, div = field.velocity_and_divergence(x)
        v2 = field.velocity(retract(x, h * v1))
        return retract(x, 0.5 * h * (v1 + v2)), div, 2


class Adaptive(AbstractIntegrator):
    """Adaptive diffrax solve (``Tsit5``, PID controller) of ``dx/dt = v(x)`` over ``n_steps*h``.

    The ODE is solved in R^{N x d} as it stands: the exact flow stays on the sphere, the
    numerical one drifts by about the tolerance, and that drift is reported by the caller
    (``norm_drift``) rather than hidden by renormalising.
    """

    rtol: float = eqx.field(static=True, default=1e-6)
    atol: float = eqx.field(static=True, default=1e-8)
    max_steps: int = eqx.field(static=True, default=100_000)
    order: ClassVar[int] = 5
    name: ClassVar[str] = "adaptive"

    def __check_init__(self) -> None:
        for opt in ("rtol", "atol"):
            v = getattr(self, opt)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ValueError(f"Adaptive: {opt} must be a finite number > 0, got {v!r}")
        if not (isinstance(self.max_steps, int) and self.max_steps >= 1):
            raise ValueError(f"Adaptive: max_steps must be an integer >= 1, got {self.max_steps!r}")

    def advance(self, field: ParticleField, x: Float[Array, "N d"], n_steps: Steps, h: Scalar) -> tuple[Float[Array, "N d"], Steps]:
        t1 = jnp.asarray(n_steps, x.dtype) * jnp.asarray(h, x.dtype)
        import diffrax  # here: ~0.7 s of import that only adaptive runs need

        term = diffrax.ODETerm(lambda t, y, f: f.velocity(y))

        def solve(y: Array) -> tuple[Array, Array]:
            sol = diffrax.diffeqsolve(
                term,
                diffrax.Tsit5(),
                t0=jnp.zeros((), x.dtype),
                t1=t1,
                dt0=jnp.asarray(h, x.dtype),
                y0=y,
                args=field,
                stepsize_controller=diffrax.PIDController(rtol=self.rtol, atol=self.atol),
                saveat=diffrax.SaveAt(t1=True),
                max_steps=self.max_steps,
            )
            return sol.ys[-1], jnp.asarray(sol.stats["num_steps"], jnp.int32)

        y, steps = lax.cond(n_steps > 0, solve, lambda y: (y, jnp.zeros((), jnp.int32)), x)
        return y, 6 * steps




def make_integrator(method: str | AbstractIntegrator, **options: Any) -> AbstractIntegrator:
    """A scheme from a name in :data:`INTEGRATORS` (with ``options``), or an instance as is."""
    if isinstance(method, AbstractIntegrator):
        if options:
            raise ValueError(f"method {method.name!r} is an object: set its options on it")
        return method
    try:
        cls = INTEGRATORS[method]
    except (KeyError, TypeError):
        raise ValueError(f"unknown method {method!r}; expected one of: {', '.join(INTEGRATORS)}") from None
    return cls(**options)


__all__ = [
    "AbstractIntegrator",
    "Adaptive",
    "AttentionField",
    "Euler",
    "Heun",
    "INTEGRATORS",
    "Layer",
    "make_integrator",
    "uses_feature_major",
    "DivergenceField",
    "ParticleField",
]
