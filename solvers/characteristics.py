"""Method of characteristics for the density on S^{d-1}, any d, any kernel
(docs/theory.md "Density solvers", 1, and "Entropy: the exact identity").

Samples ``x_k(0) ~ rho_0`` with known ``log rho_0(x_k)`` move with the mean-field velocity
(estimated from the samples themselves) and carry ``d/dt log rho(x_k(t)) = -div_S v(x_k(t))``.
Then ``H(t) = -E_rho[log rho] ≈ -(1/N) sum_k log rho(x_k(t))``, a Monte-Carlo mean with no density
estimation (no kNN or kernel bias). ``std(log rho)/sqrt(N)`` is its sampling standard error only:
the particles move in their own mean field, so they are independent samples of ``rho_t`` only at
``t = 0``; the N-particle system's O(N^{-1/2}) deviation from the mean-field density and the time
stepping error are not in it, and near collapse the actual error can be several times larger.

The state is the pair ``(x, logrho)``; a *field* is any function ``x -> (v, div)`` returning the
tangent velocity ``v`` (N, d) (mobility ``1/M`` included) and ``div_S v`` (N,): in the package,
``solvers.integrators.AttentionField(kernel, mobility, weights).velocity_and_divergence``.
:func:`dense_field` is a self-contained O(N^2 d) version of docs/theory.md's closed forms (dense
matrices, no streaming) for small N and as an independent reference in tests.

Time stepping: Heun's method with the metric-projection retraction (second order):
``x* = R_x(h v(x))``, ``x' = R_x(h (v(x) + v(x*))/2)``, ``logrho' = logrho - h (div(x) + div(x*))/2``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, cast

import equinox as eqx
import jax
import jax.numpy as jnp
from jax import lax
from jaxtyping import Array, Float

from ._typing import ProfileKernel, Scalar

if TYPE_CHECKING:
    from .kernels import AbstractKernel

Field = Callable[[jax.Array], tuple[jax.Array, jax.Array]]


def _normalize(x: Float[Array, "N d"]) -> Float[Array, "N d"]:
    return x / jnp.linalg.norm(x, axis=-1, keepdims=True)


def _project(x: Float[Array, "N d"], f: Float[Array, "N d"]) -> Float[Array, "N d"]:
    return f - jnp.sum(x * f, axis=-1, keepdims=True) * x


def dense_field(kernel: AbstractKernel, mobility: Scalar = 1.0) -> Field:
    """Mean-field velocity and divergence of the empirical measure of ``x`` (self-attention),
    from dense matrices; ``kernel`` a kernel object of ``solvers.kernels`` (its family is read):

    moments (linear): ``F = m + alpha Sigma x``, ``div = -(d-1)<x,m> + alpha(tr Sigma - d x^T Sigma x)``;
    normalised profile (softmax): ``F = g = E_w[y]``,
    ``div = alpha(E_w[1-<x,y>^2] - |g|^2 + <x,g>^2) - (d-1)<x,g>``;
    unnormalised profile (usa): ``F = (1/N) sum_j e^{alpha<x,y_j>} y_j``,
    ``div = (1/N) sum_j e^{alpha<x,y_j>} (alpha(1 - <x,y_j>^2) - (d-1)<x,y_j>)``;
    all times ``mobility`` (docs/theory.md "Entropy: the exact identity").
    """
    family = getattr(kernel, "family", None)
    if family not in ("moments", "profile"):
        raise ValueError(f"dense_field: {kernel!r} is not a kernel object of the moments or profile family")
    alpha = kernel.alpha

    def field(x: Float[Array, "N d"]) -> tuple[Float[Array, "N d"], Float[Array, " N"]]:
        n, d = x.shape
        if family == "moments":
            m = jnp.mean(x, axis=0)
            S = x.T @ x / n - jnp.outer(m, m)
            F = m + alpha * x @ S
            div = -(d - 1) * x @ m + alpha * (jnp.trace(S) - d * jnp.sum((x @ S) * x, axis=1))
        else:
            G = x @ x.T
            if cast(ProfileKernel, kernel).normalized:
                W = jax.nn.softmax(alpha * G, axis=1)
            else:
                W = jnp.exp(alpha * G) / n
            F = W @ x
            xg = jnp.sum(x * F, axis=1)
            if cast(ProfileKernel, kernel).normalized:
                div = alpha * (1.0 - jnp.sum(W * G**2, axis=1) - jnp.sum(F * F, axis=1) + xg**2) - (d - 1) * xg
            else:
                div = jnp.sum(W * (alpha * (1.0 - G**2) - (d - 1) * G), axis=1)
        return _project(x, F) * mobility, div * mobility

    return field


def heun_step(field: Field, x: Float[Array, "N d"], logrho: Float[Array, " N"], h: Scalar) -> tuple[Float[Array, "N d"], Float[Array, " N"]]:
    """One Heun step of the characteristics system (second order)."""
    v0, d0 = field(x)
    xs = _normalize(x + h * v0)
    v1, d1 = field(xs)
    return _normalize(x + 0.5 * h * (v0 + v1)), logrho - 0.5 * h * (d0 + d1)


def particle_diagnostics(x: Float[Array, "N d"], logrho: Float[Array, " N"], div: Float[Array, " N"]) -> dict[str, Float[Array, ""]]:
    """``order_parameter`` ``|m|``, ``entropy`` ``-mean(log rho)``, its standard error, ``entropy_rate``."""
    m = jnp.mean(x, axis=0)
    n = x.shape[0]
    return {
        "order_parameter": jnp.linalg.norm(m),
        "mean_cosine": m @ m,
        "entropy": -jnp.mean(logrho),
        "entropy_stderr": jnp.std(logrho) / jnp.sqrt(n),
        "entropy_rate": jnp.mean(div),
    }


@eqx.filter_jit
def characteristics_rollout(field: Field, x0: Float[Array, "N d"], logrho0: Float[Array, " N"], dt: Scalar, n_steps: int, substeps: int = 1,
                            return_states: bool = False) -> tuple[Any, ...]:
    """``n_steps`` layers of length ``dt``, each ``substeps`` Heun steps; returns
    ``(x_final, logrho_final, diags)`` with diagnostics of shape ``(n_steps + 1,)`` (index 0 initial),
    and with ``return_states`` also the tokens after every layer, ``(n_steps + 1, N, d)``."""

    def diag(x: Float[Array, "N d"], lr: Float[Array, " N"]) -> dict[str, Float[Array, ""]]:
        return particle_diagnostics(x, lr, field(x)[1])

    def layer(carry: tuple[Array, Array], _: None) -> tuple[tuple[Array, Array], tuple[dict[str, Array], Any]]:
        x, lr = lax.fori_loop(0, substeps, lambda k, c: heun_step(field, c[0], c[1], dt / substeps), carry)
        return (x, lr), (diag(x, lr), x if return_states else None)

    (x, lr), (diags, xs) = lax.scan(layer, (x0, logrho0), None, length=n_steps)
    d0 = diag(x0, logrho0)
    diags = {k: jnp.concatenate([d0[k][None], v]) for k, v in diags.items()}
    if return_states:
        return x, lr, diags, jnp.concatenate([x0[None], xs])
    return x, lr, diags
