"""Zonal (axisymmetric) density solver on S^{d-1}, any ``d >= 3`` (docs/theory.md "Density solvers", 2).

If ``rho`` is axisymmetric about a unit vector ``e`` it stays so, and its marginal ``f(theta)``
in the angle ``theta in [0, pi]`` to ``e`` (``rho = f / (|S^{d-2}| sin^{d-2} theta)``) obeys the
1D conservation law ``d_t f + d_theta (f v_theta) = 0`` with no flux at both poles.

Discretization: ``n`` equal cells of width ``h = pi/n`` carrying cell averages ``F_i`` (mass
``sum_i h F_i = 1``); velocities at the ``n + 1`` faces (zero at the poles, where
``sin theta = 0``); MC-limited MUSCL + upwind flux + SSPRK3 (see ``solvers.finite_volume`` for
the positivity and conservation argument).  Second order in ``h``, third in time.

Velocity ``v_theta = <g, e_theta>/M`` with ``e_theta = -sin(theta) e + cos(theta) u``. The solver
never looks at a kernel's name, only at its family (``solvers.kernels``):

* moment kernels (``linear``): the key mean is ``mu e`` and the covariance ``diag(a, b, ..., b)``
  in a frame ``(e, u, ...)`` with ``mu = E[cos]``, ``a = Var(cos)``, ``b = E[sin^2]/(d-1)``
  (midpoint moments), so the kernel's ``from_moments`` evaluated in the plane of ``e`` and ``u``
  gives the field; for ``linear`` ``v_theta = (1/M)[-mu sin(theta) + alpha (b - a) sin(theta) cos(theta)]``.
* profile kernels ``exp(alpha <x, y>)``, normalised (softmax) or not (usa): with ``<x,y> = cc' + ss' t``, ``t = cos(phi)`` distributed as one
  coordinate of a uniform point of ``S^{d-2}`` (weight ``sin^{d-3} phi``), define per face
  ``j`` and cell ``i`` ``Z_ji = E_t[exp(alpha <x,y>)]`` and the tilted moments
  ``R1 = E_w[t]``, ``R2 = E_w[t^2]`` (``w ∝ exp(alpha s s' t)``), all by log-sum-exp over a
  Gauss–Gegenbauer rule.  They are tabulated ONCE, row-scaled so each row's largest ``Z`` is 1
  (the scale ``r_j`` is kept in logs), so no entry overflows at ``d = 1024`` or large alpha.
  A velocity evaluation is then two matrix–vector products:
  softmax ``v = (G F) / (Z F) / M``, usa ``v = e^{r} h (G F) / M``, with
  ``G_ji = Z_ji (-s_j c_i + c_j s_i R1_ji)``.

Entropy rate (diagnostic): ``dH/dt = E_rho[div_S v]`` with the closed forms of docs/theory.md
"Entropy: the exact identity" (softmax: ``(1/M)[alpha(E_w[1-<x,y>^2] - |P_x g|^2) - (d-1)<x,g>]``;
usa: ``(1/M)[alpha int K (1 - <x,y>^2) drho - (d-1) int K <x,y> drho]``; linear: moments),
evaluated at faces with the tables ``X = Z E_w<x,y>`` and ``Y = Z E_w<x,y>^2``.

Diffusion (docs/theory.md "Noise"). With ``diffusion = D > 0`` the marginal obeys
``d_t f + d_theta(f v) = D d_theta(w d_theta(f/w))``, ``w = sin^{d-2}``, the zonal form of
``D Delta_S rho``. With ``rho_i = F_i / wbar_i`` (``wbar_i`` the cell average of ``w``) the face
fluxes are ``J_{i+1/2} = -D w_{i+1/2} (rho_{i+1} - rho_i)/h``, zero at the poles; the ratios
``w_{i+1/2}/wbar_i`` are tabulated in logs (no underflow at large d). Conservative; a forward-Euler
step gives ``F_i^new >= F_i (1 - 2 dt max|v|/h - dt lam_i)`` with
``lam_i = D (w_{i+1/2} + w_{i-1/2})/(wbar_i h^2)``, so :meth:`ZonalSolver.substeps` keeps
``dt (max|v|/h + max lam/2) <= cfl <= 1/2``. The entropy rate gains the discrete Fisher
information ``(D/h) sum_faces w_{i+1/2} (rho_{i+1} - rho_i)(log rho_{i+1} - log rho_i)``.

Limits: the density concentrates to a Dirac at a pole; once its width falls below ``h`` the
grid cannot follow (``peak_fraction`` > 1/2, see ``solvers.finite_volume.peak_fraction``) and
the entropy saturates near ``log`` of the measure of the cell holding the mass.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Callable, ClassVar, cast

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.nn import logsumexp
from jaxtyping import Array, DTypeLike, Float

from ._typing import MomentKernel, ProfileKernel, Scalar
from .finite_volume import AbstractGridSolver, peak_fraction
from .kernels import AbstractKernel, make_kernel
from .quadrature import gauss_gegenbauer, log_sphere_area


def _cell_log_sin_average(edges: np.ndarray) -> np.ndarray:
    """Exact-to-round-off cell averages of ``log sin(theta)`` (integrable log singularity at poles)."""
    a, b = edges[:-1], edges[1:]
    mid = 0.5 * (a + b)
    near = mid > 0.5 * np.pi  # measure from the nearer pole: u = theta or pi - theta
    ua, ub = np.where(near, np.pi - b, a), np.where(near, np.pi - a, b)

    def xlogx(u: np.ndarray) -> np.ndarray:
        return np.where(u > 0, u * np.log(np.where(u > 0, u, 1.0)), 0.0)

    log_u = (xlogx(ub) - ub - xlogx(ua) + ua) / (ub - ua)  # average of log u
    x, w = np.polynomial.legendre.leggauss(16)
    u = 0.5 * (ub - ua)[:, None] * x + 0.5 * (ub + ua)[:, None]
    smooth = np.log(np.sin(u) / u) @ (0.5 * w)  # average of log(sin u / u), smooth
    return log_u + smooth


def zonal_cell_averages(log_f: Callable[[np.ndarray], np.ndarray], n_cells: int, n_sub: int = 8) -> np.ndarray:
    """Cell averages of the marginal ``f = exp(log_f)`` on ``n_cells`` equal cells of ``[0, pi]``.

    Gauss–Legendre with ``n_sub`` nodes per cell, in logs; the result is renormalized to unit
    mass ``sum h F = 1`` (the projection error is ``O(h^{2 n_sub})`` for smooth ``f``).
    """
    edges = np.linspace(0.0, np.pi, n_cells + 1)
    h = np.pi / n_cells
    x, w = np.polynomial.legendre.leggauss(n_sub)
    nodes = 0.5 * h * x[None, :] + 0.5 * (edges[:-1] + edges[1:])[:, None]
    lf = np.asarray(log_f(nodes.ravel()), dtype=np.float64).reshape(nodes.shape)
    logF = _np_logsumexp(lf + np.log(0.5 * w), axis=1)
    F = np.exp(logF - logF.max())
    return F / (F.sum() * h)


def _np_logsumexp(a: np.ndarray, axis: int) -> np.ndarray:
    top = np.max(a, axis=axis, keepdims=True)
    return np.squeeze(top, axis) + np.log(np.sum(np.exp(a - top), axis=axis))


@jax.jit
def _tables(alpha: Array, c_f: Array, s_f: Array, c_c: Array, s_c: Array, nodes: Array, log_w: Array
            ) -> dict[str, Array]:
    """Row-scaled kernel tables for every (face, cell) pair (one compilation per grid shape)."""
    logZ, R1, R2 = _table_rows(alpha, c_f, s_f, c_c, s_c, nodes, log_w)
    r = jnp.max(logZ, axis=1)
    Z = jnp.exp(logZ - r[:, None])
    cj, sj, ci, si = c_f[:, None], s_f[:, None], c_c[None, :], s_c[None, :]
    return {
        "r": r,
        "Z": Z,
        "G": Z * (-sj * ci + cj * si * R1),
        "X": Z * (cj * ci + sj * si * R1),
        "Y": Z * ((cj * ci) ** 2 + 2 * cj * ci * sj * si * R1 + (sj * si) ** 2 * R2),
    }


def _table_rows(alpha: Array, c_f: Array, s_f: Array, c_c: Array, s_c: Array, nodes: Array, log_w: Array
                ) -> tuple[Array, Array, Array]:
    """``log Z``, ``R1``, ``R2`` for every (face, cell) pair, one face row at a time."""

    def row(cs: tuple[Array, Array]) -> tuple[Array, Array, Array]:
        cj, sj = cs
        e = alpha * sj * s_c[:, None] * nodes[None, :] + log_w[None, :]
        lse = logsumexp(e, axis=1)
        p = jnp.exp(e - lse[:, None])
        return alpha * cj * c_c + lse, p @ nodes, p @ nodes**2

    return lax.map(row, (c_f, s_f), batch_size=32)


class ZonalSolver(AbstractGridSolver):
    """Finite-volume solver for the zonal marginal (see module docstring).

    Build with :func:`make_zonal_solver`; state is the cell-average vector ``F`` (n,).
    """

    d: int = eqx.field(static=True)
    kernel: AbstractKernel  # alpha is an array leaf: solvers that differ only in it share compilations
    n_cells: int = eqx.field(static=True)
    mobility: jax.Array  # velocity factor 1/M
    vbound: jax.Array  # a-priori bound on |v| (mobility included)
    h: jax.Array
    centers: jax.Array
    cos_c: jax.Array
    sin_c: jax.Array
    cos_f: jax.Array
    sin_f: jax.Array
    log_sin_avg: jax.Array
    log_cell_measure: jax.Array
    tables: dict[str, jax.Array] | None
    diffusion: jax.Array | None = None  # D of D Delta_S rho (None: no noise)
    dcoef: dict[str, jax.Array] | None = None  # "ap" = w_{i+1/2}/wbar_{i+1}, "am" = w_{i+1/2}/wbar_i, "dlogw", "lam"
    periodic: ClassVar[bool] = False

    def _diffusion_flux(self, F: Float[Array, " n"]) -> Float[Array, " n-1"]:
        """Interior face fluxes ``J_{i+1/2}`` (n-1,) of the diffusion term."""
        c = self.dcoef
        assert c is not None and self.diffusion is not None  # only called with diffusion
        return -self.diffusion * (c["ap"] * F[1:] - c["am"] * F[:-1]) / self.h

    def rhs(self, F: Float[Array, " n"]) -> Float[Array, " n"]:
        """Transport (flux form, upwind MUSCL) plus the zonal diffusion term (flux form)."""
        out = super().rhs(F)
        if self.diffusion is None:
            return out
        z = jnp.zeros((1,), F.dtype)
        J = jnp.concatenate([z, self._diffusion_flux(F), z])
        return out - (J[1:] - J[:-1]) / self.h

    def substeps(self, dt: float, cfl: float = 0.4) -> int:
        """Equal substeps with ``dt_sub (max|v|/h + max lam/2) <= cfl`` (positivity for cfl <= 1/2)."""
        lam = 0.0 if self.dcoef is None else 0.5 * float(self.dcoef["lam"])  # dcoef is set iff diffusion is
        rate = float(self.vbound) / float(self.h) + (0.0 if self.diffusion is None else lam)
        return max(1, math.ceil(abs(dt) * rate / cfl - 1e-9))

    def _fisher(self, F: Float[Array, " n"]) -> Scalar:
        if self.diffusion is None or self.dcoef is None:
            return 0.0
        lf = jnp.log(jnp.maximum(F, jnp.finfo(F.dtype).tiny))
        dlog = lf[1:] - lf[:-1] - self.dcoef["dlogw"]
        return -jnp.sum(self._diffusion_flux(F) * dlog)

    def _moments(self, w: Float[Array, " n"]) -> tuple[Array, Array, Array, Array]:
        """``mu``, ``a = Var(cos)``, ``b = E[sin^2]/(d-1)`` and ``E[cos^2]`` of cell masses ``w``."""
        mu = w @ self.cos_c
        c2 = w @ self.cos_c**2
        return mu, c2 - mu**2, (jnp.sum(w) - c2) / (self.d - 1), c2

    def _moment_field(self, w: Float[Array, " n"], c: Float[Array, " m"], s: Float[Array, " m"]
                      ) -> tuple[Float[Array, "m 2"], Float[Array, " m"]]:
        """Drive and divergence of a moment kernel at unit vectors ``(c, s)`` of the zonal plane."""
        mu, a, b, _ = self._moments(w)
        zero = jnp.zeros_like(mu)
        m2 = jnp.stack([mu, zero])
        cov2 = jnp.stack([jnp.stack([a, zero]), jnp.stack([zero, b])])
        x2 = jnp.stack([c, s], axis=1)
        return cast(MomentKernel, self.kernel).from_moments(x2, m2, cov2, d=self.d, trace=a + (self.d - 1) * b)

    def velocity(self, F: Float[Array, " n"]) -> Float[Array, " n+1"]:
        """Face velocities ``v_theta`` (n+1,), zero at both poles."""
        w = F * self.h
        t = self.tables  # set for the profile family
        if self.kernel.family == "moments":
            f2, _ = self._moment_field(w, self.cos_f, self.sin_f)
            v = -f2[:, 0] * self.sin_f + f2[:, 1] * self.cos_f
        elif cast(ProfileKernel, self.kernel).normalized:
            assert t is not None
            den = t["Z"] @ w
            v = (t["G"] @ w) / jnp.maximum(den, jnp.finfo(F.dtype).tiny)
        else:
            assert t is not None
            v = jnp.exp(t["r"]) * (t["G"] @ w)
        return v * self.mobility

    def entropy_rate(self, F: Float[Array, " n"]) -> Float[Array, ""]:
        """``E_rho[div_S v]`` from the closed forms (docs/theory.md "Entropy: the exact identity")."""
        w = F * self.h
        if self.kernel.family == "moments":
            _, div = self._moment_field(w, self.cos_c, self.sin_c)
            return (w @ div) * self.mobility + self._fisher(F)
        d, al = self.d, self.kernel.alpha
        t = self.tables
        assert t is not None  # the profile family
        S, Gw, Xw, Yw = t["Z"] @ w, t["G"] @ w, t["X"] @ w, t["Y"] @ w
        if cast(ProfileKernel, self.kernel).normalized:
            S = jnp.maximum(S, jnp.finfo(F.dtype).tiny)
            div = al * (1.0 - Yw / S - (Gw / S) ** 2) - (d - 1) * Xw / S
        else:
            div = jnp.exp(t["r"]) * (al * (S - Yw) - (d - 1) * Xw)
        face_w = 0.5 * (jnp.concatenate([w, w[-1:] * 0]) + jnp.concatenate([w[:1] * 0, w]))
        return (face_w @ div) * self.mobility + self._fisher(F)

    def diagnostics(self, F: Float[Array, " n"]) -> dict[str, Any]:
        """Mass, ``mean_cos``, ``order_parameter`` ``|m|``, ``entropy`` H, ``kl_to_uniform``,
        ``entropy_rate``, ``peak_fraction`` (sub-grid indicator) of a cell-average vector."""
        w = F * self.h
        # per unit of mass, clipped: round-off drift of the mass (1 + 3e-5 in float32) and tiny negative
        # cells must not report an impossible |m| > 1
        mu = jnp.clip((w @ self.cos_c) / jnp.sum(w), -1.0, 1.0)
        logF = jnp.log(jnp.where(F > 0, F, 1.0))
        H = jnp.sum(w * (-logF + log_sphere_area(self.d - 1) + (self.d - 2) * self.log_sin_avg))
        return {
            "mass": jnp.sum(w),
            "mean_cos": mu,
            "order_parameter": jnp.abs(mu),
            "mean_cosine": mu**2,
            "entropy": H,
            "kl_to_uniform": log_sphere_area(self.d) - H,
            "entropy_rate": self.entropy_rate(F),
            "peak_fraction": peak_fraction(w, periodic=False),
        }


def make_zonal_solver(d: int, n_cells: int, kernel: str | AbstractKernel = "linear", alpha: Scalar | None = None,
                      mobility: float = 1.0, n_phi: int | None = None, dtype: DTypeLike | None = None,
                      diffusion: float = 0.0) -> ZonalSolver:
    """Build a :class:`ZonalSolver` (profile tables are computed here, once).

    ``kernel`` is a kernel object, or a name with ``alpha`` (``solvers.kernels.make_kernel``).
    ``mobility`` multiplies the velocity (``1/M``). ``n_phi`` Gauss–Gegenbauer nodes for the
    azimuthal integral (default ``max(48, alpha + 32)``: the integrand ``exp(kappa t)``,
    ``kappa <= alpha``, is then integrated to round-off). ``dtype`` defaults to JAX's default
    float dtype. ``diffusion`` is ``D >= 0`` of the term ``D Delta_S rho`` (``sigma^2/2``).
    """
    if not (isinstance(diffusion, (int, float, np.floating)) and math.isfinite(diffusion) and diffusion >= 0):
        raise ValueError(f"zonal solver: diffusion={diffusion!r} must be a finite number >= 0")
    if not (isinstance(d, (int, np.integer)) and d >= 3):
        raise ValueError(f"zonal solver: d={d!r} must be an integer >= 3 (use the circle solver for d=2)")
    kernel = make_kernel(kernel, alpha)
    if getattr(kernel, "family", None) not in ("moments", "profile"):
        raise ValueError(f"zonal solver: {kernel!r} is not a kernel object of the moments or profile family")
    if not (isinstance(n_cells, (int, np.integer)) and n_cells >= 4 and n_cells % 2 == 0):
        raise ValueError(f"zonal solver: n_cells={n_cells!r} must be an even integer >= 4")
    alpha = float(kernel.alpha)
    if alpha < 0 or not 0 < mobility <= 1:
        raise ValueError(f"zonal solver: alpha={alpha} must be >= 0 and mobility={mobility} in (0, 1]")
    dtype = jnp.zeros(0).dtype if dtype is None else jnp.dtype(dtype)
    kernel = cast(AbstractKernel, eqx.tree_at(lambda k: k.alpha, kernel, jnp.asarray(alpha, dtype)))
    if kernel.family == "profile" and 2 * alpha > 0.9 * -math.log(float(jnp.finfo(dtype).tiny)):
        warnings.warn(f"zonal solver: alpha={alpha} in {dtype}: kernel-table entries below exp(-2 alpha) underflow; "
                      "velocities far from all the mass are set to 0 (use float64)", stacklevel=2)
    edges = np.linspace(0.0, np.pi, n_cells + 1)
    centers = 0.5 * (edges[:-1] + edges[1:])
    h = np.pi / n_cells
    cos_c, sin_c, cos_f, sin_f = np.cos(centers), np.sin(centers), np.cos(edges), np.sin(edges)
    sin_f[0] = sin_f[-1] = 0.0
    # log of each cell's surface measure |S^{d-2}| int_cell sin^{d-2}: the entropy floor of a Dirac in it
    xq, wq = np.polynomial.legendre.leggauss(32)
    nodes = 0.5 * h * xq[None, :] + centers[:, None]
    lcm = _np_logsumexp((d - 2) * np.log(np.sin(nodes)) + np.log(0.5 * h * wq), axis=1)
    lcm = lcm + log_sphere_area(d - 1)
    tables = None
    if kernel.family == "moments":
        vbound = kernel.speed_bound()
    else:
        n_phi = int(n_phi or max(48, math.ceil(alpha) + 32))
        t, wt = gauss_gegenbauer(n_phi, d)
        j = lambda a: jnp.asarray(a, dtype)  # noqa: E731
        tables = _tables(j(alpha), j(cos_f), j(sin_f), j(cos_c), j(sin_c), j(t), j(np.log(wt)))
        r = tables["r"]
        # |v| <= 1/M for softmax (weighted mean of |<e_theta, y>| <= 1); for usa
        # |v_j| <= e^{r_j} max_i Z_ji |G/Z| sum_i w_i <= e^{max r} for any unit-mass F >= 0.
        vbound = kernel.speed_bound() if cast(ProfileKernel, kernel).normalized else float(np.exp(np.max(np.asarray(r))))
    return ZonalSolver(d=int(d), kernel=kernel, n_cells=int(n_cells), mobility=jnp.asarray(mobility, dtype),
                       vbound=jnp.asarray(vbound * mobility, dtype), h=jnp.asarray(h, dtype), centers=jnp.asarray(centers, dtype),
                       cos_c=jnp.asarray(cos_c, dtype), sin_c=jnp.asarray(sin_c, dtype),
                       cos_f=jnp.asarray(cos_f, dtype), sin_f=jnp.asarray(sin_f, dtype),
                       log_sin_avg=jnp.asarray(_cell_log_sin_average(edges), dtype),
                       log_cell_measure=jnp.asarray(lcm, dtype), tables=tables,
                       diffusion=jnp.asarray(diffusion, dtype) if diffusion > 0 else None,
                       dcoef=_diffusion_tables(d, edges, lcm, h, diffusion, dtype) if diffusion > 0 else None)


def _diffusion_tables(d: int, edges: np.ndarray, lcm: np.ndarray, h: float, diffusion: float, dtype: DTypeLike
                      ) -> dict[str, jax.Array]:
    """Face-to-cell weight ratios of the zonal Laplacian, from logs (see the module docstring)."""
    log_wbar = lcm - log_sphere_area(d - 1) - math.log(h)  # log of the cell average of sin^{d-2}
    log_wf = (d - 2) * np.log(np.sin(edges[1:-1]))  # interior faces
    ap, am = np.exp(log_wf - log_wbar[1:]), np.exp(log_wf - log_wbar[:-1])
    lam = diffusion * np.max(np.r_[am, 0.0] + np.r_[0.0, ap]) / h**2
    j = lambda a: jnp.asarray(a, dtype)  # noqa: E731
    return {"ap": j(ap), "am": j(am), "dlogw": j(log_wbar[1:] - log_wbar[:-1]), "lam": j(lam)}
