"""Normalisation placements as layer schemes (docs/theory.md "Normalisation placements").

Karagodin, Ge, Polyanskiy & Rigollet, *Normalization in attention dynamics* (NeurIPS 2025,
arXiv 2510.22026; simulator nikitus20/simuformer) write a token of the residual stream as
``z_i = r_i theta_i`` with ``theta_i`` on the sphere and show that each placement of the layer
norm is a *speed factor* on the sphere. With ``A_i = (1/M) sum_j A_ij V x_j`` the attention output
(the field's ``drive``) evaluated at the normalised tokens ``theta``, one layer of step ``h`` is

==========  ===========================================  ====================================
scheme      layer update                                 continuous limit (h -> 0)
==========  ===========================================  ====================================
``PostLN``  ``theta <- N(theta + h A)``                  ``theta' = P A``
``PreLN``   ``z <- z + h A(N(z))``                       ``r' = <theta, A>, theta' = P A / r``
``PeriLN``  ``z <- z + h A/|A|``                         ``r' = <theta, A>/|A|, theta' = P A/(r |A|)``
``NGPT``    ``theta <- N(theta + h a A/|A|)``            ``theta' = a P A / |A|``
==========  ===========================================  ====================================

(``N`` normalises each row, ``P = I - theta theta^T``; ``a`` is nGPT's step scale, 0.2 in
simuformer.) ``PostLN`` is :class:`solvers.integrators.Layer`. ``PreLN`` and ``PeriLN`` carry
the radius ``r_i``: their state is the residual stream ``z`` itself (``r_i = |z_i|``, ``r = 1`` at
the start), and :meth:`tokens` gives the unit tokens ``theta`` on which the diagnostics are taken.
All four are first-order in ``h`` towards their continuous limits.
"""

from __future__ import annotations

from typing import ClassVar

import jax.numpy as jnp
from jaxtyping import Array, Float

from ._typing import Scalar, Steps

from .integrators import AbstractIntegrator, ParticleField, _loop
from .sphere import normalize, retract, rowdot


def _unit(a: Float[Array, "... d"]) -> Float[Array, "... d"]:
    return a * (1.0 / jnp.sqrt(jnp.maximum(rowdot(a, a), jnp.finfo(a.dtype).tiny)))[..., None]


class _Scheme(AbstractIntegrator):
    order: ClassVar[int] = 1

    def tokens(self, state: Float[Array, "N d"]) -> Float[Array, "N d"]:
        """The unit tokens ``theta`` of a state (the identity for sphere-valued states)."""
        return state


class PostLN(_Scheme):
    """Post-LN: ``theta <- N(theta + h A(theta))`` (the literal layer of ``Layer``); order 1."""

    name: ClassVar[str] = "post_ln"

    def advance(self, field: ParticleField, x: Float[Array, "N d"], n_steps: Steps, h: Scalar) -> tuple[Float[Array, "N d"], Steps]:
        h = jnp.asarray(h, x.dtype)
        return _loop(lambda y: retract(y, h * field.drive(y)), x, n_steps), n_steps


class PreLN(_Scheme):
    """Pre-LN: the residual stream ``z <- z + h A(N(z))``; tokens ``N(z)``, speed ``1/|z|``."""

    name: ClassVar[str] = "pre_ln"

    def advance(self, field: ParticleField, x: Float[Array, "N d"], n_steps: Steps, h: Scalar) -> tuple[Float[Array, "N d"], Steps]:
        h = jnp.asarray(h, x.dtype)
        return _loop(lambda z: z + h * field.drive(normalize(z)), x, n_steps), n_steps

    def tokens(self, state: Float[Array, "N d"]) -> Float[Array, "N d"]:
        return normalize(state)


class PeriLN(_Scheme):
    """Peri-LN: ``z <- z + h A/|A|`` with ``A = A(N(z))`` (norms before and after attention)."""

    name: ClassVar[str] = "peri_ln"

    def advance(self, field: ParticleField, x: Float[Array, "N d"], n_steps: Steps, h: Scalar) -> tuple[Float[Array, "N d"], Steps]:
        h = jnp.asarray(h, x.dtype)
        return _loop(lambda z: z + h * _unit(field.drive(normalize(z))), x, n_steps), n_steps

    def tokens(self, state: Float[Array, "N d"]) -> Float[Array, "N d"]:
        return normalize(state)


class NGPT(_Scheme):
    """nGPT-style: ``theta <- N(theta + h a A/|A|)`` (unit-speed steps scaled by ``a``)."""

    a: float = 0.2
    name: ClassVar[str] = "ngpt"

    def __check_init__(self) -> None:
        if not (isinstance(self.a, (int, float)) and self.a > 0):
            raise ValueError(f"NGPT: a must be a number > 0, got {self.a!r}")

    def advance(self, field: ParticleField, x: Float[Array, "N d"], n_steps: Steps, h: Scalar) -> tuple[Float[Array, "N d"], Steps]:
        s = jnp.asarray(h, x.dtype) * jnp.asarray(self.a, x.dtype)
        return _loop(lambda y: retract(y, s * _unit(field.drive(y))), x, n_steps), n_steps


__all__ = ["NGPT", "PeriLN", "PostLN", "PreLN"]
