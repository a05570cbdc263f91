"""Density solver on the circle S^1 (d = 2), any kernel (docs/theory.md "Density solvers", 3).

State: cell averages ``rho_i`` of the density w.r.t. arc length on ``n`` periodic cells of
``[-pi, pi)`` (mass ``sum_i h rho_i = 1``).  The velocity ``v(theta) = <g(theta), e_theta>/M``,
``e_theta = (-sin, cos)``, is a circular convolution of the cell masses ``w = h rho`` with the
kernel sampled at the face offsets ``psi_m = m h + h/2``:

* profile kernels (``solvers.kernels``; the solver reads the family, never the name): normalised
  (softmax) ``v = (k_1 * w)/(k_0 * w)/M``, unnormalised (usa) ``v = e^{alpha} (k_1 * w)/M`` with
  ``k_0(psi) = exp(alpha (cos psi - 1))`` (scaled so that nothing overflows) and
  ``k_1(psi) = -k_0(psi) sin psi``; each convolution costs two real FFTs (``O(n log n)``).
* moment kernels (linear): ``v = <F, e_theta>/M`` with ``F`` the kernel's ``from_moments`` at the
  cell moments (midpoint rule); for linear ``F = m + alpha Sigma x``.

Transport is the conservative MC-MUSCL + upwind + SSPRK3 scheme of ``solvers.finite_volume``,
positive under the CFL bound ``dt max|v| / h <= 1/2`` with the a-priori bound
``|v| <= 1/M`` (softmax), ``(1 + alpha)/M`` (linear), ``e^{alpha}/M`` (usa).  The FFT-computed
velocity is clipped to that bound: the exact velocity obeys it, so the clip only removes FFT
round-off where ``k_0 * w`` underflows, and it keeps the positivity argument rigorous.

Diffusion (docs/theory.md "Noise"). With ``diffusion = D > 0`` (``D = sigma^2/2`` for the noise
of ``solvers.noise``) the right-hand side gains ``D d^2 rho/d theta^2`` as the flux difference of
the face fluxes ``-D (rho_{i+1} - rho_i)/h``: conservative, and a forward-Euler step gives
``rho_i^new >= rho_i (1 - 2 dt max|v|/h - 2 dt D/h^2)`` plus non-negative neighbour terms, so
``dt (max|v|/h + D/h^2) <= 1/2`` keeps it non-negative (and SSPRK3, a convex combination of such
steps, too); :meth:`CircleSolver.substeps` chooses ``dt`` by that rule (the diffusion limit
``dt <= cfl h^2/D`` for pure diffusion). The entropy rate gains the discrete Fisher information
``(D/h) sum_i (rho_{i+1} - rho_i)(log rho_{i+1} - log rho_i) >= 0``, the exact rate of the
semi-discrete diffusion.

Why not spectral transport: the flow aggregates mass into clusters whose width shrinks without
bound; a Fourier-Galerkin transport of such a density rings (Gibbs oscillations), producing
negative densities and ``log`` of negative numbers in the entropy.  Finite volumes with a limiter
stay non-negative and conservative; the spectral method is used only where it is exact and
harmless — the convolution giving the velocity.
"""

from __future__ import annotations

import math
from typing import Any, Callable, ClassVar, cast

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, DTypeLike, Float

from ._typing import MomentKernel, ProfileKernel, Scalar
from .finite_volume import AbstractGridSolver, peak_fraction
from .kernels import AbstractKernel, make_kernel


def circle_cell_averages(log_rho: Callable[[np.ndarray], np.ndarray], n_cells: int, n_sub: int = 8) -> np.ndarray:
    """Cell averages on ``[-pi, pi)`` of ``exp(log_rho(theta))`` (density w.r.t. arc length),
    by Gauss–Legendre with ``n_sub`` nodes per cell, renormalized to unit mass."""
    h = 2 * np.pi / n_cells
    centers = -np.pi + h * (np.arange(n_cells) + 0.5)
    x, w = np.polynomial.legendre.leggauss(n_sub)
    lr = np.asarray(log_rho(centers[:, None] + 0.5 * h * x[None, :]), dtype=np.float64)
    top = lr.max()
    R = np.exp(lr - top) @ (0.5 * w)
    return R / (R.sum() * h)


def _conv(kernel_hat: Array, w: Float[Array, " n"]) -> Float[Array, " n"]:
    """Circular convolution ``(k * w)_j = sum_i k_{j-i} w_i`` via real FFTs."""
    return jnp.fft.irfft(kernel_hat * jnp.fft.rfft(w), n=w.shape[0])


class CircleSolver(AbstractGridSolver):
    """Periodic finite-volume solver on S^1; build with :func:`make_circle_solver`."""

    kernel: AbstractKernel  # alpha is an array leaf: solvers that differ only in it share compilations
    n_cells: int = eqx.field(static=True)
    mobility: jax.Array  # velocity factor 1/M
    vbound: jax.Array  # a-priori bound on |v| (mobility included)
    h: jax.Array
    centers: jax.Array
    xc: jax.Array  # (n, 2) unit vectors at centers
    ef: jax.Array  # (n, 2) e_theta at right faces
    xf: jax.Array  # (n, 2) unit vectors at right faces
    khat: dict[str, jax.Array] | None  # rfft of the kernels at face ("k0f", "k1f") and centre offsets
    diffusion: jax.Array | None = None  # D of the Fokker-Planck term D rho'' (None: no noise)
    periodic: ClassVar[bool] = True

    def rhs(self, rho: Float[Array, " n"]) -> Float[Array, " n"]:
        """Transport (flux form, upwind MUSCL) plus ``D rho''`` (flux form, central)."""
        out = super().rhs(rho)
        if self.diffusion is None:
            return out
        return out + self.diffusion * (jnp.roll(rho, -1) - 2.0 * rho + jnp.roll(rho, 1)) / self.h**2

    def substeps(self, dt: float, cfl: float = 0.4) -> int:
        """Equal substeps of a layer with ``dt_sub (max|v|/h + D/h^2) <= cfl`` (positivity for cfl <= 1/2)."""
        rate = float(self.vbound) / float(self.h)
        if self.diffusion is not None:
            rate += float(self.diffusion) / float(self.h) ** 2
        return max(1, math.ceil(abs(dt) * rate / cfl - 1e-9))

    def _fisher(self, rho: Float[Array, " n"]) -> Scalar:
        if self.diffusion is None:
            return 0.0
        lr = jnp.log(jnp.maximum(rho, jnp.finfo(rho.dtype).tiny))
        return self.diffusion / self.h * jnp.sum((jnp.roll(rho, -1) - rho) * (jnp.roll(lr, -1) - lr))

    def _moment_field(self, w: Float[Array, " n"], x: Float[Array, "m 2"]) -> tuple[Float[Array, "m 2"], Float[Array, " m"]]:
        m = w @ self.xc
        Q = (self.xc * w[:, None]).T @ self.xc
        return cast(MomentKernel, self.kernel).from_moments(x, m, Q - jnp.outer(m, m))

    def velocity(self, rho: Float[Array, " n"]) -> Float[Array, " n"]:
        """Velocity at the right face of every cell, clipped to the a-priori bound."""
        w = rho * self.h
        if self.kernel.family == "moments":
            F, _ = self._moment_field(w, self.xf)
            v = jnp.sum(F * self.ef, axis=1)
        else:
            khat = self.khat
            assert khat is not None  # set for the profile family
            num = _conv(khat["k1f"], w)
            if cast(ProfileKernel, self.kernel).normalized:
                v = num / jnp.maximum(_conv(khat["k0f"], w), jnp.finfo(rho.dtype).tiny)
            else:
                v = jnp.exp(self.kernel.alpha) * num
        return jnp.clip(v * self.mobility, -self.vbound, self.vbound)

    def entropy_rate(self, rho: Float[Array, " n"]) -> Float[Array, ""]:
        """``E[div v]`` from the closed forms of docs/theory.md, d = 2, at cell centres."""
        w = rho * self.h
        if self.kernel.family == "moments":
            _, div = self._moment_field(w, self.xc)
            return (w @ div) * self.mobility + self._fisher(rho)
        al = self.kernel.alpha
        k = self.khat
        assert k is not None  # the profile family
        Sw, Gw, Xw, Yw = (_conv(k[name], w) for name in ("k0c", "k1c", "kcc", "kc2c"))
        if cast(ProfileKernel, self.kernel).normalized:
            Sw = jnp.maximum(Sw, jnp.finfo(rho.dtype).tiny)
            div = al * (1.0 - Yw / Sw - (Gw / Sw) ** 2) - Xw / Sw
        else:
            div = jnp.exp(al) * (al * (Sw - Yw) - Xw)
        return (w @ div) * self.mobility + self._fisher(rho)

    def diagnostics(self, rho: Float[Array, " n"]) -> dict[str, Any]:
        w = rho * self.h
        m = (w @ self.xc) / jnp.sum(w)  # per unit of mass: round-off drift must not give |m| > 1
        m = m / jnp.maximum(1.0, jnp.sqrt(m @ m))
        logr = jnp.log(jnp.where(rho > 0, rho, 1.0))
        H = -jnp.sum(w * logr)
        return {
            "mass": jnp.sum(w),
            "mean_x": m[0],
            "mean_y": m[1],
            "order_parameter": jnp.sqrt(m @ m),
            "mean_cosine": m @ m,
            "entropy": H,
            "kl_to_uniform": math.log(2 * math.pi) - H,
            "entropy_rate": self.entropy_rate(rho),
            "peak_fraction": peak_fraction(w, periodic=True),
        }


def make_circle_solver(n_cells: int, kernel: str | AbstractKernel = "linear", alpha: Scalar | None = None,
                       mobility: float = 1.0, dtype: DTypeLike | None = None, diffusion: float = 0.0) -> CircleSolver:
    """Build a :class:`CircleSolver` on ``n_cells`` cells of ``[-pi, pi)`` (kernel FFTs done here,
    once). ``kernel`` is a kernel object, or a name with ``alpha`` (``solvers.kernels.make_kernel``);
    ``mobility`` multiplies the velocity (``1/M``); ``diffusion`` is ``D >= 0`` of the term
    ``D rho''`` (``sigma^2/2`` for noise of strength ``sigma``)."""
    if not (isinstance(diffusion, (int, float, np.floating)) and math.isfinite(diffusion) and diffusion >= 0):
        raise ValueError(f"circle solver: diffusion={diffusion!r} must be a finite number >= 0")
    kernel = make_kernel(kernel, alpha)
    if getattr(kernel, "family", None) not in ("moments", "profile"):
        raise ValueError(f"circle solver: {kernel!r} is not a kernel object of the moments or profile family")
    if not (isinstance(n_cells, (int, np.integer)) and n_cells >= 4):
        raise ValueError(f"circle solver: n_cells={n_cells!r} must be an integer >= 4")
    alpha = float(kernel.alpha)
    if alpha < 0 or not 0 < mobility <= 1:
        raise ValueError(f"circle solver: alpha={alpha} must be >= 0 and mobility={mobility} in (0, 1]")
    dtype = jnp.zeros(0).dtype if dtype is None else jnp.dtype(dtype)
    kernel = cast(AbstractKernel, eqx.tree_at(lambda k: k.alpha, kernel, jnp.asarray(alpha, dtype)))
    h = 2 * np.pi / n_cells
    centers = -np.pi + h * (np.arange(n_cells) + 0.5)
    faces = centers + 0.5 * h
    unit = lambda th: np.stack([np.cos(th), np.sin(th)], axis=1)  # noqa: E731
    khat = None
    vbound = kernel.speed_bound()  # 1 + alpha (linear), 1 (softmax), e^alpha (usa)
    if kernel.family == "profile":
        psi_f = np.arange(n_cells) * h + 0.5 * h  # face j minus centre i, for j - i = m
        psi_c = np.arange(n_cells) * h
        k0 = lambda p: np.exp(alpha * (np.cos(p) - 1.0))  # noqa: E731
        cdt = jnp.complex128 if dtype == jnp.float64 else jnp.complex64
        r = lambda a: jnp.asarray(np.fft.rfft(a), cdt)  # noqa: E731
        khat = {"k0f": r(k0(psi_f)), "k1f": r(-k0(psi_f) * np.sin(psi_f)),
                "k0c": r(k0(psi_c)), "k1c": r(-k0(psi_c) * np.sin(psi_c)),
                "kcc": r(k0(psi_c) * np.cos(psi_c)), "kc2c": r(k0(psi_c) * np.cos(psi_c) ** 2)}
    return CircleSolver(kernel=kernel, n_cells=int(n_cells), mobility=jnp.asarray(mobility, dtype),
                        vbound=jnp.asarray(vbound * mobility, dtype), h=jnp.asarray(h, dtype), centers=jnp.asarray(centers, dtype),
                        xc=jnp.asarray(unit(centers), dtype), ef=jnp.asarray(unit(faces + 0.5 * np.pi), dtype),
                        xf=jnp.asarray(unit(faces), dtype), khat=khat,
                        diffusion=jnp.asarray(diffusion, dtype) if diffusion > 0 else None)
