"""Type aliases and protocols shared by the engines' annotations (static only: nothing is checked
at run time; the jaxtyping shapes document the axes, ``N`` keys/tokens, ``n`` queries, ``d`` the
ambient dimension)."""

from __future__ import annotations

from typing import Protocol

from jaxtyping import Array, Float

Scalar = float | Array
"""A number or a 0-d array (inverse temperatures, step sizes, mobilities)."""

Steps = int | Array
"""A step count, possibly traced."""

Weights = Float[Array, " N"] | None
"""Token (key) masses ``w_j >= 0``; ``None``: unit masses."""


class MomentKernel(Protocol):
    """A kernel of the ``"moments"`` family (``solvers.kernels``): drive and divergence from the
    keys' mean and covariance."""

    alpha: Scalar

    def from_moments(self, q: Float[Array, "n d"], m: Float[Array, " d"], cov: Float[Array, "d d"],
                     d: int | None = None, trace: Scalar | None = None
                     ) -> tuple[Float[Array, "n d"], Float[Array, " n"]]: ...


class ProfileKernel(Protocol):
    """A kernel of the ``"profile"`` family: ``K(x, y) = exp(log_profile(<x, y>))``, normalised
    over keys or not."""

    alpha: Scalar
    normalized: bool

    def log_profile(self, t: Float[Array, "*shape"]) -> Float[Array, "*shape"]: ...


__all__ = ["MomentKernel", "ProfileKernel", "Scalar", "Steps", "Weights"]
