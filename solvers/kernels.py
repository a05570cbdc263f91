"""Attention kernels of docs/theory.md ("The three kernels"), evaluated without N x N arrays.

Every kernel is an immutable equinox Module whose inverse temperature ``alpha`` is a pytree leaf
(so ``jax.vmap`` over ``alpha`` works) and whose block sizes are static. For queries ``q`` (n, d)
and keys ``k`` (N, d) -- in the particle system ``q = k = x`` -- a kernel provides

* ``drive(q, k)``: ``F(q_i) = sum_j A_ij k_j`` (unprojected; mobility ``1/M`` not applied);
* ``drive_and_divergence(q, k)``: ``F`` and ``div_S P_x F`` at the queries (closed forms,
  docs/theory.md "Entropy: the exact identity"; valid for unit vectors);
* ``attention_statistics(q, k)``: the singular values of the ``n x N`` block ``A[q, :]`` and the
  per-row statistics (entropy, max weight, logit mean and standard deviation) with logits
  ``s_ij = alpha <q_i, k_j>``.

Costs: ``linear`` O(N d^2) from moments; ``softmax`` and ``usa`` O(n N d) streamed over key
blocks, memory O(query_block * key_block).
"""

from __future__ import annotations

from typing import ClassVar

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float

from .sphere import rowdot
from .streaming import fold_key_blocks, logit_pass, map_query_blocks, weighted_moments

KERNELS = ("linear", "softmax", "usa")


def _alpha(alpha, dtype):
    return jnp.asarray(alpha, dtype=dtype)


def key_moments(k: Float[Array, "N d"]):
    """Mean ``m`` and covariance ``Sigma = E[(k-m)(k-m)^T]`` of the keys, in one pass.

    Uses the shifted-data algorithm (shift ``c = k_0``): ``Sigma = E[(k-c)(k-c)^T] - (m-c)(m-c)^T``.
    Near collapse all keys are close to ``c``, so there is no catastrophic cancellation (the naive
    ``Q - m m^T`` loses every digit of ``Sigma`` once ``|m| -> 1`` in float32).
    """
    c = k[0]
    y = k - c
    n = k.shape[0]
    my = jnp.sum(y, axis=0) / n
    if k.shape[1] <= 8:  # one fused pass; XLA:CPU's skinny y^T y matmul is slower here
        second = jnp.sum(y[:, :, None] * y[:, None, :], axis=0) / n
    else:
        second = (y.T @ y) / n
    cov = second - jnp.outer(my, my)
    return my + c, 0.5 * (cov + cov.T)


def _apply(q, mat):
    """``q @ mat``, unrolled over the short axis for small d (see ``solvers.sphere.rowdot``)."""
    if q.shape[1] > 8:
        return q @ mat
    out = q[:, 0:1] * mat[0][None, :]
    for i in range(1, q.shape[1]):
        out = out + q[:, i : i + 1] * mat[i][None, :]
    return out


def spectrum_from_gram(gram: Float[Array, "n n"]) -> Float[Array, " n"]:
    """Singular values (descending) of A from G = A A^T; tiny negative round-off eigenvalues -> 0.

    G is scaled to unit trace first: attention entries are ~1/N, so G's entries are ~1/N^2 and
    the eigensolver's intermediate products fall into the subnormal range in float32, which made
    a 512 x 512 ``eigvalsh`` ~13x slower (3.3 s measured at N = 4096) without changing the result.
    """
    tr = jnp.trace(gram)
    scale = jnp.where(tr > 0, tr, 1.0)
    ev = jnp.linalg.eigvalsh(gram / scale)[::-1] * scale
    return jnp.sqrt(jnp.maximum(ev, 0.0))


class LinearKernel(eqx.Module):
    """Linearised attention, paper Eq. 3: ``A_ij = (1/N)[1 + alpha(<x_i,x_j> - <x_i,m>)]``.

    ``sum_j A_ij x_j = m + alpha Sigma x_i`` (docs/theory.md), so a step costs O(N d^2) and the matrix is
    never formed. ``A = L R^T / N`` with ``L = [1, alpha q]`` and ``R = [1, k - m]`` has rank <= d+1,
    and ``A A^T = L diag(1, Sigma) L^T / N`` gives its singular values exactly in O((n + N) d^2).
    Rows sum to one. Entries are guaranteed positive only for ``alpha < 1/2``
    (``A_ij >= (1 - 2 alpha)/N``); beyond that it depends on the data, and the row entropy is
    reported as NaN for a row with a non-positive entry.
    """

    alpha: float | Array = 1.0
    key_block: int = eqx.field(static=True, default=4096)
    name: ClassVar[str] = "linear"

    def drive(self, q, k):
        m, cov = key_moments(k)
        return m + _alpha(self.alpha, q.dtype) * _apply(q, cov)

    def drive_and_divergence(self, q, k):
        m, cov = key_moments(k)
        a = _alpha(self.alpha, q.dtype)
        sq = _apply(q, cov)
        d = q.shape[-1]
        div = a * (jnp.trace(cov) - d * rowdot(q, sq)) - (d - 1) * rowdot(q, m[None, :])
        return m + a * sq, div

    def attention_statistics(self, q, k):
        a = _alpha(self.alpha, q.dtype)
        n_keys = k.shape[0]
        m, cov = key_moments(k)
        evals, evecs = jnp.linalg.eigh(cov)
        half = evecs * jnp.sqrt(jnp.maximum(evals, 0.0))[None, :]
        lmat = jnp.concatenate([jnp.ones((q.shape[0], 1), q.dtype), a * (q @ half)], axis=1)
        sv = jnp.linalg.svd(lmat / jnp.sqrt(jnp.asarray(n_keys, q.dtype)), compute_uv=False)
        n = q.shape[0]
        sv = jnp.zeros((n,), q.dtype).at[: min(n, sv.shape[0])].set(sv[:n])
        qm = q @ m

        def body(c, kblk, ok):
            ent, mxw, bad = c
            w = (1.0 + a * (q @ kblk.T - qm[:, None])) / n_keys
            w_ok = jnp.where(ok[None, :], w, 1.0)
            ent = ent - jnp.sum(jnp.where(ok[None, :], w_ok * jnp.log(jnp.abs(w_ok)), 0.0), axis=1)
            bad = bad | jnp.any(w_ok <= 0.0, axis=1)
            mxw = jnp.maximum(mxw, jnp.max(jnp.where(ok[None, :], w, -jnp.inf), axis=1))
            return ent, mxw, bad

        z = jnp.zeros((n,), q.dtype)
        ent, mxw, bad = fold_key_blocks(body, k, self.key_block, (z, z - jnp.inf, jnp.zeros((n,), bool)))
        rows = {
            "row_entropy": jnp.where(bad, jnp.nan, ent),
            "max_weight": mxw,
            "logit_mean": a * qm,
            "logit_std": a * jnp.sqrt(jnp.maximum(jnp.sum(q * (q @ cov), axis=-1), 0.0)),
        }
        return sv, rows


class _Streamed(eqx.Module):
    """Shared machinery of the exponential kernels (softmax and usa)."""

    alpha: float | Array = 1.0
    key_block: int = eqx.field(static=True, default=1024)
    query_block: int = eqx.field(static=True, default=1024)

    def _moments(self, q, k, with_acc2=True):
        a = _alpha(self.alpha, q.dtype)
        return map_query_blocks(
            lambda qb: weighted_moments(qb, k, a, self.key_block, with_acc2), q, self.query_block
        )

    def _pass(self, q, k):
        return logit_pass(q, k, _alpha(self.alpha, q.dtype), self.key_block, with_gram=True)

    @staticmethod
    def _rows(p):
        lse = p.mx + jnp.log(p.l)
        return {
            "row_entropy": lse - p.ws / p.l,
            "max_weight": jnp.exp(p.mx - lse),
            "logit_mean": p.mean,
            "logit_std": jnp.sqrt(jnp.maximum(p.m2 / p.count, 0.0)),
        }


class SoftmaxKernel(_Streamed):
    """Self-attention (SA; Geshkovski, Letrouit, Polyanskiy & Rigollet 2023):
    ``A_ij = exp(alpha<x_i,x_j>) / sum_k exp(alpha<x_i,x_k>)``, ``F(x) = g(x) = E_w[y]``.

    ``div_S P_x g = alpha(E_w[1 - <x,y>^2] - |g|^2 + <x,g>^2) - (d-1)<x,g>`` (docs/theory.md).
    """

    name: ClassVar[str] = "softmax"

    def drive(self, q, k):
        mo = self._moments(q, k, with_acc2=False)
        return mo.acc / mo.l[:, None]

    def drive_and_divergence(self, q, k):
        mo = self._moments(q, k)
        a = _alpha(self.alpha, q.dtype)
        g = mo.acc / mo.l[:, None]
        xg = jnp.sum(q * g, axis=-1)
        d = q.shape[-1]
        div = a * (1.0 - mo.acc2 / mo.l - jnp.sum(g * g, axis=-1) + xg**2) - (d - 1) * xg
        return g, div

    def attention_statistics(self, q, k):
        p = self._pass(q, k)
        inv = 1.0 / p.l
        return spectrum_from_gram(p.gram * inv[:, None] * inv[None, :]), self._rows(p)


class USAKernel(_Streamed):
    """Unnormalised self-attention: ``A_ij = exp(alpha<x_i,x_j>) / N``, ``F = E_y[e^{alpha<x,y>} y]``.

    ``div_S P_x F = alpha E_y[e^{alpha<x,y>}(1 - <x,y>^2)] - (d-1)<x,F>``. Values grow like
    ``e^alpha`` and a layer squares them when it normalises, so the flow overflows beyond
    alpha ~ 40 (float32) or ~ 350 (float64); :func:`meanfield.solve_flow` then raises. Row entropy
    and max weight refer to the row normalised to sum one. The singular values are computed with
    the largest row scale factored out, so they overflow only when they themselves exceed the
    floating-point range.
    """

    name: ClassVar[str] = "usa"

    def _scale(self, mo_mx, n_keys):
        return jnp.exp(mo_mx) / n_keys

    def drive(self, q, k):
        mo = self._moments(q, k, with_acc2=False)
        return mo.acc * self._scale(mo.mx, k.shape[0])[:, None]

    def drive_and_divergence(self, q, k):
        mo = self._moments(q, k)
        a = _alpha(self.alpha, q.dtype)
        sc = self._scale(mo.mx, k.shape[0])
        f = mo.acc * sc[:, None]
        d = q.shape[-1]
        div = a * sc * (mo.l - mo.acc2) - (d - 1) * jnp.sum(q * f, axis=-1)
        return f, div

    def attention_statistics(self, q, k):
        p = self._pass(q, k)
        top = jnp.max(p.mx)
        sc = self._scale(p.mx - top, k.shape[0])
        return jnp.exp(top) * spectrum_from_gram(p.gram * sc[:, None] * sc[None, :]), self._rows(p)


_REGISTRY = {"linear": LinearKernel, "softmax": SoftmaxKernel, "usa": USAKernel}


def make_kernel(name: str, alpha=1.0, **options):
    """Build a kernel by name (one of :data:`KERNELS`); ``options`` are its block sizes."""
    try:
        cls = _REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown kernel {name!r}; expected one of: {', '.join(KERNELS)}") from None
    return cls(alpha, **options)


__all__ = ["KERNELS", "LinearKernel", "SoftmaxKernel", "USAKernel", "make_kernel", "key_moments", "spectrum_from_gram"]
