"""Attention kernels of docs/theory.md ("The three kernels"), evaluated without N x N arrays.

Every kernel is an immutable equinox Module (a subclass of :class:`AbstractKernel`) whose inverse
temperature ``alpha`` is a pytree leaf (so ``jax.vmap`` over ``alpha`` works) and whose block
sizes are static. For queries ``q`` (n, d), keys ``k`` (N, d) -- in the particle system
``q = k = x`` -- and optional key masses ``weights`` (N,), ``w_j >= 0``, a kernel provides

* ``drive(q, k, weights)``: ``F(q_i) = sum_j A_ij k_j`` (unprojected; mobility not applied);
* ``drive_and_divergence(q, k, weights)``: ``F`` and ``div_S P_x F`` at the queries (closed
  forms, docs/theory.md "Entropy: the exact identity"; valid for unit vectors);
* ``attention_statistics(q, k, weights)``: the singular values of the ``n x N`` block ``A[q, :]``
  and the per-row statistics (entropy, max weight, logit mean and standard deviation) with
  logits ``s_ij = alpha <q_i, k_j>``.

Token masses (docs/theory.md "Token masses"). The attention of a query is taken over the weighted
empirical measure ``rho = sum_j w_j delta_{k_j} / sum_j w_j``: softmax uses proportional attention
``A_ij ∝ w_j exp(alpha <q_i, k_j>)``, ``usa`` and ``linear`` use mass-weighted sums and moments.
``weights=None`` means unit masses (``rho`` uniform, ``1/N`` per token) and runs exactly the
unweighted code. Velocities and divergences depend on ``rho`` only (rescaling every mass changes
nothing). The attention statistics are defined per unit of mass -- Gram matrix
``sum_j A_ij A_i'j / w_j``, row entropy ``-sum_j A_ij log(A_ij / w_j)``, max weight
``max_j A_ij / w_j`` -- so they equal the unweighted ones for unit masses and a key of mass 2
gives the same numbers as two keys of mass 1 at the same place.

Grid support. The density solvers (``solvers.zonal``, ``solvers.circle``) do not look at kernel
names. A *profile* kernel (``family = "profile"``) has a positive interaction
``K(x, y) = exp(log_profile(<x, y>))``, normalised over keys (softmax) or not (usa); the grid
solvers tabulate it from ``log_profile``. A *moment* kernel (``family = "moments"``) gives its
drive and divergence from the mean and covariance of the keys (``from_moments``), which the grid
solvers compute on their cells. ``speed_bound`` bounds ``|F|`` for every probability measure
(the CFL rule of the grid solvers).

Precision (docs/precision.md). Every product of tokens follows the kernel's static option
``matmul_precision`` (``solvers.precision``): ``"highest"`` by default, so float32 is float32 on
GPUs too, or the opt-in ``"tf32"``/``"bf16"``. ``Softmax(attention=...)`` may evaluate its drive
with the fused path of ``solvers.fused`` (default on GPU backends).

Costs: ``linear`` O(N d^2) from moments; ``softmax`` and ``usa`` O(n N d) streamed over key
blocks, memory O(query_block * key_block).

Registry: :data:`KERNELS` maps each concrete kernel's ``name`` to its class; it is filled by
:class:`AbstractKernel` when a subclass with a ``name`` is defined, so a name is written once.
"""

from __future__ import annotations

import abc
import dataclasses
import math
from typing import Any, ClassVar

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, DTypeLike, Float

from ._registry import register
from ._typing import Scalar, Weights
from .sphere import rowdot
from .fused import check_attention, fused_drive, use_fused
from .precision import check_matmul_precision, matmul
from .streaming import LogitPass, Moments, fold_key_blocks, logit_pass, map_query_blocks, rescale_factor, uses_qr, weighted_moments

KERNELS: dict[str, type] = {}


def _alpha(alpha: Scalar, dtype: DTypeLike) -> Float[Array, ""]:
    return jnp.asarray(alpha, dtype=dtype)


def probabilities(weights: Weights, n: int, dtype: DTypeLike) -> Float[Array, " N"] | None:
    """Masses normalised to sum 1 (``None`` -> ``None``: the unweighted code path)."""
    if weights is None:
        return None
    w = jnp.asarray(weights, dtype)
    return w / jnp.sum(w)


def total_mass(weights: Weights, n: int, dtype: DTypeLike) -> Float[Array, ""]:
    """``sum_j w_j`` (``n`` for unit masses)."""
    return jnp.asarray(n, dtype) if weights is None else jnp.sum(jnp.asarray(weights, dtype))


def key_moments(k: Float[Array, "N d"], weights: Weights = None, precision: str = "highest"
                ) -> tuple[Float[Array, " d"], Float[Array, "d d"]]:
    """Mean ``m`` and covariance ``Sigma = E[(k-m)(k-m)^T]`` of the keys, in one pass.

    ``weights`` (N,) are key masses (the expectation is over ``w / sum w``; ``None``: uniform).
    Uses the shifted-data algorithm (shift ``c = k_0``): ``Sigma = E[(k-c)(k-c)^T] - (m-c)(m-c)^T``.
    Near collapse all keys are close to ``c``, so there is no catastrophic cancellation (the naive
    ``Q - m m^T`` loses every digit of ``Sigma`` once ``|m| -> 1`` in float32). ``precision``: the
    policy of the products for ``d > 8`` (``solvers.precision``).
    """
    c = k[0]
    y = k - c
    n = k.shape[0]
    p = probabilities(weights, n, k.dtype)
    if p is None:
        my = jnp.sum(y, axis=0) / n
        if k.shape[1] <= 8:  # one fused pass; XLA:CPU's skinny y^T y matmul is slower here
            second = jnp.sum(y[:, :, None] * y[:, None, :], axis=0) / n
        else:
            second = matmul(y.T, y, precision) / n
    else:
        my = matmul(p[None, :], y, precision)[0]
        if k.shape[1] <= 8:
            second = jnp.sum(p[:, None, None] * y[:, :, None] * y[:, None, :], axis=0)
        else:
            second = matmul((y * p[:, None]).T, y, precision)
    cov = second - jnp.outer(my, my)
    return my + c, 0.5 * (cov + cov.T)


def _apply(q: Float[Array, "n d"], mat: Float[Array, "d e"], precision: str = "highest") -> Float[Array, "n e"]:
    """``q @ mat``, unrolled over the short axis for small d (see ``solvers.sphere.rowdot``)."""
    if q.shape[1] > 8:
        return matmul(q, mat, precision)
    out = q[:, 0:1] * mat[0][None, :]
    for i in range(1, q.shape[1]):
        out = out + q[:, i : i + 1] * mat[i][None, :]
    return out


def spectrum_from_gram(gram: Float[Array, "n n"]) -> Float[Array, " n"]:
    """Singular values (descending) of A from G = A A^T; tiny negative round-off eigenvalues -> 0.

    Squares the condition number: singular values below ``sqrt(eps) * sigma_max`` are round-off.
    The float64 route of :func:`spectrum_from_factor`; float32 uses the TSQR factor instead.

    G is scaled to unit trace first: attention entries are ~1/N, so G's entries are ~1/N^2 and
    the eigensolver's intermediate products fall into the subnormal range in float32, which made
    a 512 x 512 ``eigvalsh`` ~13x slower (3.3 s measured at N = 4096) without changing the result.
    """
    tr = jnp.trace(gram)
    scale = jnp.where(tr > 0, tr, 1.0)
    ev = jnp.linalg.eigvalsh(gram / scale)[::-1] * scale
    return jnp.sqrt(jnp.maximum(ev, 0.0))


def spectrum_from_factor(f: Float[Array, "n n"], scale: Float[Array, " n"] | None = None,
                         qr: bool | None = None) -> Float[Array, " n"]:
    """Singular values (descending) of ``diag(scale) W`` from a spectral factor of ``W``.

    ``f`` is what ``solvers.streaming.factor_update`` accumulated: the Gram matrix ``W W^T``
    (float64; :func:`spectrum_from_gram`) or the TSQR factor ``R`` with ``R^T R = W W^T``
    (float32): then ``A = D W`` has ``A A^T = D R^T R D``, so its singular values are those of
    ``R D`` (an SVD of an ``n x n`` matrix, condition number not squared; docs/theory.md
    "Diagnostics"). ``qr`` names the route when it is not the dtype's (``solvers.streaming.uses_qr``).
    """
    qr = uses_qr(f.dtype) if qr is None else qr
    if scale is not None:
        f = rescale_factor(f, scale, qr)
    if qr:
        return jnp.linalg.svd(f, compute_uv=False)
    return spectrum_from_gram(f)


class AbstractKernel(eqx.Module):
    """Interface of an attention kernel (see the module docstring for the conventions).

    A concrete subclass sets the class variables ``name`` (its registry key) and ``family``
    (``"profile"`` or ``"moments"``) and implements the three methods below plus
    ``speed_bound``; a profile kernel also implements ``log_profile`` and sets ``normalized``,
    a moment kernel implements ``from_moments``.
    """

    alpha: eqx.AbstractVar[float | Array]
    name: ClassVar[str]
    family: ClassVar[str]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        register(KERNELS, cls)

    @abc.abstractmethod
    def drive(self, q: Float[Array, "n d"], k: Float[Array, "N d"], weights: Weights = None) -> Float[Array, "n d"]:
        """``F(q_i) = sum_j A_ij k_j`` (n, d)."""

    @abc.abstractmethod
    def drive_and_divergence(self, q: Float[Array, "n d"], k: Float[Array, "N d"], weights: Weights = None) -> tuple[Float[Array, "n d"], Float[Array, " n"]]:
        """``(F, div_S P_x F)`` at the queries: (n, d) and (n,)."""

    @abc.abstractmethod
    def attention_statistics(self, q: Float[Array, "n d"], k: Float[Array, "N d"], weights: Weights = None) -> tuple[Float[Array, " n"], dict[str, Float[Array, " n"]]]:
        """``(singular_values (n,), rows)``, ``rows`` a dict of (n,) per-row statistics."""

    @abc.abstractmethod
    def speed_bound(self) -> float:
        """A bound on ``|F(x)|`` for unit ``x`` and every probability measure of unit keys."""

    def describe(self) -> dict[str, Any]:
        """JSON-able description: ``{"name": ..., <field>: <value>, ...}``."""
        out: dict[str, Any] = {"name": self.name}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            out[f.name] = float(v) if f.name == "alpha" else v
        return out


class Linear(AbstractKernel):
    """Linearised attention, paper Eq. 3: ``A_ij = w_j [1 + alpha(<x_i,x_j> - <x_i,m>)]``
    (``w`` the normalised masses, ``1/N`` by default).

    ``sum_j A_ij x_j = m + alpha Sigma x_i`` (docs/theory.md), so a step costs O(N d^2) and the
    matrix is never formed. ``A = L R^T`` with ``L = [1, alpha q]`` and ``R_j = w_j [1, k_j - m]``
    has rank <= d+1; the Gram matrix per unit mass is ``L diag(1, Sigma) L^T / W`` (``W`` the total
    mass, ``N`` for unit masses), which gives its singular values exactly in O((n + N) d^2).
    Rows sum to one. Entries are guaranteed positive only for ``alpha < 1/2``
    (``A_ij >= (1 - 2 alpha) w_j``); beyond that it depends on the data, and the row entropy is
    reported as NaN for a row with a non-positive entry.
    """

    alpha: float | Array = 1.0
    key_block: int = eqx.field(static=True, default=4096)
    matmul_precision: str = eqx.field(static=True, default="highest")
    name: ClassVar[str] = "linear"
    family: ClassVar[str] = "moments"

    def from_moments(self, q: Float[Array, "n d"], m: Float[Array, " d"], cov: Float[Array, "d d"], d: int | None = None,
                     trace: Scalar | None = None) -> tuple[Float[Array, "n d"], Float[Array, " n"]]:
        """Drive and divergence at unit ``q`` from the key mean ``m`` and covariance ``cov``.

        ``d`` is the ambient dimension and ``trace`` the trace of the full covariance; both
        default to those of ``cov``. The grid solvers pass them explicitly when they evaluate the
        field in a reduced frame (the zonal plane of ``e`` and ``u``).
        """
        a = _alpha(self.alpha, q.dtype)
        d = q.shape[-1] if d is None else d
        tr = jnp.trace(cov) if trace is None else trace
        sq = _apply(q, cov, self.matmul_precision)
        div = a * (tr - d * rowdot(q, sq)) - (d - 1) * rowdot(q, m[None, :])
        return m + a * sq, div

    def __check_init__(self) -> None:
        check_matmul_precision(self.matmul_precision)

    def drive(self, q: Float[Array, "n d"], k: Float[Array, "N d"], weights: Weights = None) -> Float[Array, "n d"]:
        return self.drive_from_key_moments(q, *key_moments(k, weights, self.matmul_precision))

    def drive_from_key_moments(self, q: Float[Array, "n d"], m: Float[Array, " d"], cov: Float[Array, "d d"]) -> Float[Array, "n d"]:
        """``m + alpha Sigma q`` from the key mean and covariance (however they were reduced: one
        device, or an all-reduce over shards in :mod:`solvers.distributed`)."""
        return m + _alpha(self.alpha, q.dtype) * _apply(q, cov, self.matmul_precision)

    def mean_divergence(self, m: Float[Array, " d"], cov: Float[Array, "d d"]) -> Float[Array, ""]:
        """``E_rho[div_S P_x F] = alpha(tr Sigma - d tr(Sigma Q)) - (d-1)|m|^2`` with
        ``Q = Sigma + m m^T``: the mean over the keys' own measure of :meth:`from_moments`'s
        divergence (docs/theory.md "Entropy: the exact identity")."""
        a = _alpha(self.alpha, cov.dtype)
        d = cov.shape[-1]
        q2 = cov + jnp.outer(m, m)
        return a * (jnp.trace(cov) - d * jnp.sum(cov * q2)) - (d - 1) * jnp.sum(m * m)

    def drive_and_divergence(self, q: Float[Array, "n d"], k: Float[Array, "N d"], weights: Weights = None) -> tuple[Float[Array, "n d"], Float[Array, " n"]]:
        m, cov = key_moments(k, weights, self.matmul_precision)
        return self.from_moments(q, m, cov)

    def speed_bound(self) -> float:
        return 1.0 + float(self.alpha)  # |m| <= 1 and |Sigma x| <= tr Sigma <= 1

    def attention_statistics(self, q: Float[Array, "n d"], k: Float[Array, "N d"], weights: Weights = None) -> tuple[Float[Array, " n"], dict[str, Float[Array, " n"]]]:
        a = _alpha(self.alpha, q.dtype)
        n_keys = k.shape[0]
        mass = total_mass(weights, n_keys, q.dtype)
        prec = self.matmul_precision
        m, cov = key_moments(k, weights, prec)
        evals, evecs = jnp.linalg.eigh(cov)
        half = evecs * jnp.sqrt(jnp.maximum(evals, 0.0))[None, :]
        lmat = jnp.concatenate([jnp.ones((q.shape[0], 1), q.dtype), a * matmul(q, half, prec)], axis=1)
        sv = jnp.linalg.svd(lmat / jnp.sqrt(mass), compute_uv=False)
        n = q.shape[0]
        sv = jnp.zeros((n,), q.dtype).at[: min(n, sv.shape[0])].set(sv[:n])
        qm = q @ m

        # per unit of mass A_ij / w_j = c_ij / W with c_ij = 1 + alpha(<q_i,k_j> - <q_i,m>)
        def body(c: tuple[Array, Array, Array], kblk: Array, ok: Array, wblk: Any = None  # Array iff weights
                 ) -> tuple[Array, Array, Array]:
            ent, mxw, bad = c
            u = (1.0 + a * (matmul(q, kblk.T, prec) - qm[:, None])) / mass
            u_ok = jnp.where(ok[None, :], u, 1.0)
            p = wblk[None, :] * u_ok if weights is not None else u_ok
            ent = ent - jnp.sum(jnp.where(ok[None, :], p * jnp.log(jnp.abs(u_ok)), 0.0), axis=1)
            bad = bad | jnp.any(u_ok <= 0.0, axis=1)
            mxw = jnp.maximum(mxw, jnp.max(jnp.where(ok[None, :], u, -jnp.inf), axis=1))
            return ent, mxw, bad

        z = jnp.zeros((n,), q.dtype)
        init = (z, z - jnp.inf, jnp.zeros((n,), bool))
        ent, mxw, bad = fold_key_blocks(body, k, self.key_block, init, weights)
        rows = {
            "row_entropy": jnp.where(bad, jnp.nan, ent),
            "max_weight": mxw,
            "logit_mean": a * qm,
            "logit_std": a * jnp.sqrt(jnp.maximum(jnp.sum(q * matmul(q, cov, prec), axis=-1), 0.0)),
        }
        return sv, rows


class _Streamed(AbstractKernel):
    """Shared machinery of the exponential (profile) kernels, streamed over key blocks."""

    alpha: float | Array = 1.0
    key_block: int = eqx.field(static=True, default=1024)
    query_block: int = eqx.field(static=True, default=1024)
    matmul_precision: str = eqx.field(static=True, default="highest")
    family: ClassVar[str] = "profile"
    normalized: ClassVar[bool]

    def __check_init__(self) -> None:
        check_matmul_precision(self.matmul_precision)

    def log_profile(self, t: Float[Array, "*shape"]) -> Float[Array, "*shape"]:
        """``log K`` as a function of the cosine ``t = <x, y>``: ``alpha t``."""
        return _alpha(self.alpha, t.dtype) * t

    def _moments(self, q: Float[Array, "n d"], k: Float[Array, "N d"], weights: Weights, with_acc2: bool = True) -> Moments:
        a = _alpha(self.alpha, q.dtype)
        w = None if weights is None else jnp.asarray(weights, q.dtype)
        return map_query_blocks(
            lambda qb: weighted_moments(qb, k, a, self.key_block, with_acc2, w, self.matmul_precision), q,
            self.query_block
        )

    def _pass(self, q: Float[Array, "n d"], k: Float[Array, "N d"], weights: Weights) -> LogitPass:
        w = None if weights is None else jnp.asarray(weights, q.dtype)
        return logit_pass(q, k, _alpha(self.alpha, q.dtype), self.key_block, with_gram=True, weights=w,
                          precision=self.matmul_precision)

    @staticmethod
    def _rows(p: LogitPass) -> dict[str, Float[Array, " n"]]:
        lse = p.mx + jnp.log(p.l)
        return {
            "row_entropy": lse - p.ws / p.l,
            "max_weight": jnp.exp(p.mx - lse),
            "logit_mean": p.mean,
            "logit_std": jnp.sqrt(jnp.maximum(p.m2 / p.count, 0.0)),
        }


class Softmax(_Streamed):
    """Self-attention (SA; Geshkovski, Letrouit, Polyanskiy & Rigollet 2023) with proportional
    attention over masses: ``A_ij = w_j exp(alpha<x_i,x_j>) / sum_k w_k exp(alpha<x_i,x_k>)``,
    ``F(x) = g(x) = E_w[y]``.

    ``div_S P_x g = alpha(E_w[1 - <x,y>^2] - |g|^2 + <x,g>^2) - (d-1)<x,g>`` (docs/theory.md).

    ``attention`` chooses the drive's evaluation (docs/precision.md): ``"streaming"`` (the key-block
    scan of ``solvers.streaming``), ``"fused"`` (``solvers.fused``: one logit product per query
    block, or cuDNN flash attention on a GPU in ``bf16`` mode), or ``"auto"`` (default: fused on
    GPU backends, streaming elsewhere). The divergence and the statistics always stream.
    """

    attention: str = eqx.field(static=True, default="auto")
    name: ClassVar[str] = "softmax"
    normalized: ClassVar[bool] = True

    def __check_init__(self) -> None:
        check_attention(self.attention)

    def drive(self, q: Float[Array, "n d"], k: Float[Array, "N d"], weights: Weights = None) -> Float[Array, "n d"]:
        if use_fused(self.attention):
            w = None if weights is None else jnp.asarray(weights, q.dtype)
            return fused_drive(q, k, _alpha(self.alpha, q.dtype), weights=w, precision=self.matmul_precision,
                               query_block=self.query_block)
        mo = self._moments(q, k, weights, with_acc2=False)
        return self.drive_from_moments(mo, total_mass(weights, k.shape[0], q.dtype))

    @staticmethod
    def drive_from_moments(mo: Moments, mass: Float[Array, ""]) -> Float[Array, "n d"]:
        """The drive from the streamed moments of a query block (however the key blocks were
        folded in: one scan, or a ring over shards in :mod:`solvers.distributed`): ``acc / l``."""
        return mo.acc / mo.l[:, None]

    def drive_and_divergence(self, q: Float[Array, "n d"], k: Float[Array, "N d"], weights: Weights = None) -> tuple[Float[Array, "n d"], Float[Array, " n"]]:
        mo = self._moments(q, k, weights)
        a = _alpha(self.alpha, q.dtype)
        g = mo.acc / mo.l[:, None]
        xg = jnp.sum(q * g, axis=-1)
        d = q.shape[-1]
        div = a * (1.0 - mo.acc2 / mo.l - jnp.sum(g * g, axis=-1) + xg**2) - (d - 1) * xg
        return g, div

    def speed_bound(self) -> float:
        return 1.0  # a weighted mean of unit vectors

    def attention_statistics(self, q: Float[Array, "n d"], k: Float[Array, "N d"], weights: Weights = None) -> tuple[Float[Array, " n"], dict[str, Float[Array, " n"]]]:
        p = self._pass(q, k, weights)
        return spectrum_from_factor(p.gram, 1.0 / p.l), self._rows(p)


class USA(_Streamed):
    """Unnormalised self-attention: ``A_ij = w_j exp(alpha<x_i,x_j>)`` (``w`` normalised masses,
    ``1/N`` by default), ``F = E_y[e^{alpha<x,y>} y]``.

    ``div_S P_x F = alpha E_y[e^{alpha<x,y>}(1 - <x,y>^2)] - (d-1)<x,F>``. Values grow like
    ``e^alpha`` and a layer squares them when it normalises, so the flow overflows beyond
    alpha ~ 40 (float32) or ~ 350 (float64); :func:`meanfield.solve_flow` then raises. Row entropy
    and max weight refer to the row normalised to sum one. The singular values are computed with
    the largest row scale factored out, so they overflow only when they themselves exceed the
    floating-point range.
    """

    name: ClassVar[str] = "usa"
    normalized: ClassVar[bool] = False

    @staticmethod
    def _scale(mo_mx: Float[Array, " n"], mass: Float[Array, ""]) -> Float[Array, " n"]:
        return jnp.exp(mo_mx) / mass

    def drive(self, q: Float[Array, "n d"], k: Float[Array, "N d"], weights: Weights = None) -> Float[Array, "n d"]:
        mo = self._moments(q, k, weights, with_acc2=False)
        return self.drive_from_moments(mo, total_mass(weights, k.shape[0], q.dtype))

    @classmethod
    def drive_from_moments(cls, mo: Moments, mass: Float[Array, ""]) -> Float[Array, "n d"]:
        """The drive from the streamed moments (as :meth:`Softmax.drive_from_moments`):
        ``acc e^{max} / W`` with ``W`` the total key mass (``N`` for unit masses)."""
        return mo.acc * cls._scale(mo.mx, mass)[:, None]

    def drive_and_divergence(self, q: Float[Array, "n d"], k: Float[Array, "N d"], weights: Weights = None) -> tuple[Float[Array, "n d"], Float[Array, " n"]]:
        mo = self._moments(q, k, weights)
        a = _alpha(self.alpha, q.dtype)
        sc = self._scale(mo.mx, total_mass(weights, k.shape[0], q.dtype))
        f = mo.acc * sc[:, None]
        d = q.shape[-1]
        div = a * sc * (mo.l - mo.acc2) - (d - 1) * jnp.sum(q * f, axis=-1)
        return f, div

    def speed_bound(self) -> float:
        return math.exp(float(self.alpha))

    def attention_statistics(self, q: Float[Array, "n d"], k: Float[Array, "N d"], weights: Weights = None) -> tuple[Float[Array, " n"], dict[str, Float[Array, " n"]]]:
        p = self._pass(q, k, weights)
        top = jnp.max(p.mx)
        sc = self._scale(p.mx - top, total_mass(weights, k.shape[0], q.dtype))
        return jnp.exp(top) * spectrum_from_factor(p.gram, sc), self._rows(p)


# Longer names of the first version, kept as aliases.


def make_kernel(kernel: str | AbstractKernel, alpha: Scalar | None = None, **options: Any) -> AbstractKernel:
    """A kernel object from a name in :data:`KERNELS` (with ``alpha`` and block-size ``options``)
    or an :class:`AbstractKernel` instance (returned as is; ``alpha`` and options must then be
    absent)."""
    if isinstance(kernel, AbstractKernel):
        if alpha is not None or options:
            raise ValueError(f"kernel {kernel.name!r} is an object: set alpha and block sizes on it, not beside it")
        return kernel
    try:
        cls = KERNELS[kernel]
    except (KeyError, TypeError):
        raise ValueError(f"unknown kernel {kernel!r}; expected one of: {', '.join(KERNELS)}, "
                         "or a kernel object") from None
    return cls(1.0 if alpha is None else alpha, **options)


__all__ = [
    "AbstractKernel", "KERNELS", "Linear", "Softmax", "USA",
    "make_kernel", "key_moments", "probabilities", "spectrum_from_factor", "spectrum_from_gram", "total_mass",
]
