"""Blockwise (flash-attention style) passes over key blocks.

Nothing here forms an ``n x N`` attention matrix: keys are streamed in blocks of ``key_block``
rows with a running row maximum, so memory is ``O(query_block * key_block)`` and the result is
exact up to round-off (the online-softmax recurrence of Milakov & Gimelshein 2018, used by
FlashAttention, Dao et al. 2022).

Two passes are provided:

* :func:`weighted_moments` -- for each query ``q_i`` the un-normalised softmax moments
  ``l = sum_j w_ij``, ``sum_j w_ij k_j`` and ``sum_j w_ij <q_i,k_j>^2`` with
  ``w_ij = exp(alpha <q_i,k_j> - mx_i)``: the velocity field and its divergence.
* :func:`logit_pass` -- for each query the log-sum-exp, ``sum_j p_ij s_ij``, the mean and
  variance of the logits over keys (Chan et al.'s parallel update) and, optionally, a *spectral
  factor* of the weights ``W`` (:func:`factor_update`), rescaled online when a row maximum moves.

Spectral factor (docs/theory.md "Diagnostics"). The singular values of the ``n x N`` rows ``W``
are read from an ``n x n`` matrix accumulated over key blocks. In float64 it is the Gram matrix
``G = W W^T``. In float32 it is the triangular factor ``R`` of a streamed QR (TSQR) of the stacked
blocks ``W_b^T``, ``R <- qr([R; W_b^T]).R``, so ``R^T R = W W^T`` without forming ``W W^T``:
Householder QR is backward stable, so the singular values keep an absolute error of a few
``eps * sigma_max`` instead of the ``sqrt(eps) * sigma_max`` of the Gram route (``eps = 1.2e-7``:
1e-7 instead of 3e-4 relative to ``sigma_max``). It costs about 2x the CPU time of the Gram route
(``benchmarks/spectrum.py``), which is why float64, whose Gram floor ``sqrt(eps) = 1.5e-8`` is
harmless, keeps the Gram route.

Padding keys (when ``N`` is not a multiple of the block) carry weight exactly zero.

Token masses. Both passes take optional key masses ``w`` (N,), ``w_j >= 0``: every exponential
weight is multiplied by ``w_j`` (the proportional attention of ToMe, ``A_ij ∝ w_j e^{s_ij}``, i.e.
the log-mass bias added to the logits), and the logit mean and variance are mass-weighted. Keys of
zero mass take no part at all: they are excluded from the running maximum too, so a block made only
of them changes nothing. ``w = None`` means unit masses and runs the unweighted code, so its
round-off is exactly that of the plain pass.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jaxtyping import Array, Bool, DTypeLike, Float

from ._typing import Scalar, Weights
from .precision import matmul


def _block_size(n_keys: int, key_block: int) -> int:
    return max(1, min(int(key_block), n_keys))


def _key_blocks(k: Float[Array, "N d"], key_block: int, weights: Weights = None
                ) -> tuple[Float[Array, "nb b d"], Bool[Array, "nb b"], Float[Array, "nb b"] | None]:
    """Reshape keys into ``(nb, block, d)`` with a validity mask for the zero padding.

    With ``weights`` (N,) also return them as ``(nb, block)`` (zero on padding) and fold
    ``weights > 0`` into the mask; otherwise the third value is ``None``.
    """
    n_keys, d = k.shape
    block = _block_size(n_keys, key_block)
    nb = -(-n_keys // block)
    pad = nb * block - n_keys
    kp = jnp.pad(k, ((0, pad), (0, 0)))
    valid = (jnp.arange(nb * block) < n_keys).reshape(nb, block)
    wb = None
    if weights is not None:
        wb = jnp.pad(weights, (0, pad)).reshape(nb, block)
        valid = valid & (wb > 0)
    return kp.reshape(nb, block, d), valid, wb


def _safe_max(mx: Float[Array, "*shape"]) -> Float[Array, "*shape"]:
    """A running maximum usable as a shift: ``-inf`` (no key seen yet) becomes 0."""
    return jnp.where(jnp.isneginf(mx), jnp.zeros_like(mx), mx)


def uses_qr(dtype: DTypeLike) -> bool:
    """Whether the spectral factor of ``dtype`` is the TSQR factor ``R`` (below float64) or the Gram matrix."""
    return jnp.dtype(dtype).itemsize < 8


def factor_update(f: Float[Array, "n n"], rows: Float[Array, "b n"], qr: bool | None = None,
                  precision: str = "highest") -> Float[Array, "n n"]:
    """Add the columns ``rows^T`` (b keys) to a spectral factor (module docstring).

    float64: ``G + rows^T rows``; float32: ``qr([R; rows]).R`` (``R^T R`` gains ``rows^T rows``).
    Rescaling the rows of ``W`` by a diagonal ``S`` is ``S G S`` for the Gram matrix and ``R S``
    for the factor: see :func:`rescale_factor`. ``qr`` forces the route (default: by dtype,
    :func:`uses_qr`). ``precision`` is the policy of the Gram product (``solvers.precision``); the
    QR runs in the input dtype (no reduced-precision mode).
    """
    if uses_qr(f.dtype) if qr is None else qr:
        return jnp.linalg.qr(jnp.concatenate([f, rows], axis=0), mode="r")
    return f + matmul(rows.T, rows, precision)


def rescale_factor(f: Float[Array, "n n"], scale: Float[Array, " n"], qr: bool | None = None) -> Float[Array, "n n"]:
    """The factor of ``diag(scale) W``: ``S G S`` (Gram matrix) or ``R S`` (TSQR factor)."""
    if uses_qr(f.dtype) if qr is None else qr:
        return f * scale[None, :]
    return f * scale[:, None] * scale[None, :]


def map_query_blocks(fn: Callable[[Array], Any], q: Float[Array, "n d"], query_block: int) -> Any:
    """Apply ``fn`` to row blocks of ``q`` sequentially (``lax.map``) and concatenate.

    ``fn`` maps a ``(b, d)`` block to a pytree of arrays with leading axis ``b``. Bounding
    the number of simultaneous queries bounds memory at ``O(query_block * key_block)``.
    """
    n, d = q.shape
    if n <= query_block:
        return fn(q)
    nb = -(-n // query_block)
    qp = jnp.pad(q, ((0, nb * query_block - n), (0, 0)), mode="edge")
    out = lax.map(fn, qp.reshape(nb, query_block, d))
    return jax.tree_util.tree_map(lambda a: a.reshape((nb * query_block,) + a.shape[2:])[:n], out)


class Moments(NamedTuple):
    """Online-softmax accumulators for a block of queries (weights ``exp(s - mx)``)."""

    mx: Float[Array, " n"]  # running row maximum of the logits
    l: Float[Array, " n"]  # sum_j w_ij
    acc: Float[Array, "n d"]  # sum_j w_ij k_j
    acc2: Float[Array, " n"]  # sum_j w_ij <q_i,k_j>^2


def weighted_moments(
    q: Float[Array, "n d"], k: Float[Array, "N d"], alpha: Scalar, key_block: int, with_acc2: bool = True,
    weights: Weights = None,
    precision: str = "highest",
) -> Moments:
    """Stream key blocks; return the softmax moments of each query row (see module doc).

    ``with_acc2=False`` skips ``acc2`` (returned as zeros): the velocity alone does not need it.
    When ``N`` is a multiple of the block and there are no masses, no mask is applied (the
    masked ``where`` over every logit costs ~30% of a step on CPU). ``precision``: the policy of the
    two products, logits and values (``solvers.precision``).
    """
    n, d = q.shape
    kb, valid, wb = _key_blocks(k, key_block, weights)
    masked = weights is not None or k.shape[0] % _block_size(k.shape[0], key_block) != 0
    dtype = q.dtype
    init = Moments(
        jnp.full((n,), -jnp.inf, dtype), jnp.zeros((n,), dtype), jnp.zeros((n, d), dtype), jnp.zeros((n,), dtype)
    )

    def body(c: Moments, blk: tuple[Array, Array, Array]) -> tuple[Moments, None]:
        kblk, ok, wblk = blk
        cos = matmul(q, kblk.T, precision)
        s = jnp.where(ok[None, :], alpha * cos, -jnp.inf) if masked else alpha * cos
        mx = jnp.maximum(c.mx, jnp.max(s, axis=1))
        shift = _safe_max(mx) if weights is not None else mx
        scale = jnp.exp(c.mx - shift)
        w = jnp.exp(s - shift[:, None])
        if weights is not None:
            w = w * wblk[None, :]
        acc2 = c.acc2 * scale + jnp.sum(w * cos * cos, axis=1) if with_acc2 else c.acc2
        acc = c.acc * scale[:, None] + matmul(w, kblk, precision)
        return Moments(mx, c.l * scale + jnp.sum(w, axis=1), acc, acc2), None

    out, _ = lax.scan(body, init, (kb, valid, wb if wb is not None else valid))
    return out


class LogitPass(NamedTuple):
    """Accumulators of :func:`logit_pass` for ``n`` query rows."""

    mx: Float[Array, " n"]
    l: Float[Array, " n"]
    ws: Float[Array, " n"]  # sum_j w_ij s_ij
    count: Float[Array, ""]  # type: ignore[assignment]  # shadows tuple.count (a field name kept for callers); number (total mass) of keys seen
    mean: Float[Array, " n"]  # running mean of s_ij over keys
    m2: Float[Array, " n"]  # running sum of squared deviations of s_ij
    gram: Float[Array, "n n"]  # spectral factor of W: Gram (float64) or TSQR R (float32); (0, 0) if not requested


def logit_pass(
    q: Float[Array, "n d"], k: Float[Array, "N d"], alpha: Scalar, key_block: int, with_gram: bool = True,
    weights: Weights = None,
    precision: str = "highest",
    qr: bool | None = None,
) -> LogitPass:
    """One pass over key blocks for the statistics of the rows ``softmax(alpha q k^T)``.

    The spectral factor (module docstring) of the un-normalised weights ``W``
    (``W_ij = exp(s_ij - mx_i)``) is rescaled by ``D = diag(exp(mx_old - mx_new))``
    (:func:`rescale_factor`) whenever row maxima move, so at the end ``A = diag(1/l) W`` has the
    factor ``rescale_factor(p.gram, 1/l)``: Gram ``A A^T``, or ``R D`` with ``(R D)^T (R D) = A A^T``.

    With key masses ``w`` the row sums ``l`` and ``ws`` carry ``w_j``, the logit mean and variance
    are mass-weighted, and the factor is that of ``sum_j w_j W_ij W_i'j`` (columns
    ``sqrt(w_j) W_j``): the Gram matrix per unit of mass, ``sum_j A_ij A_i'j / w_j`` after
    normalisation, which a key of mass 2 and two keys of mass 1 at the same place give alike.
    ``precision``: the policy of the logit and Gram products (``solvers.precision``; the TSQR
    route computes in the input dtype). ``qr`` forces the factor's route (default: by dtype;
    benchmarks compare the two).
    """
    n, _ = q.shape
    kb, valid, wb = _key_blocks(k, key_block, weights)
    dtype = q.dtype
    gram0 = jnp.zeros((n, n) if with_gram else (0, 0), dtype)
    init = LogitPass(
        jnp.full((n,), -jnp.inf, dtype),
        jnp.zeros((n,), dtype),
        jnp.zeros((n,), dtype),
        jnp.zeros((), dtype),
        jnp.zeros((n,), dtype),
        jnp.zeros((n,), dtype),
        gram0,
    )

    def body(c: LogitPass, blk: tuple[Array, Array, Array]) -> tuple[LogitPass, None]:
        kblk, ok, wblk = blk
        s_raw = alpha * matmul(q, kblk.T, precision)
        s = jnp.where(ok[None, :], s_raw, -jnp.inf)
        mx = jnp.maximum(c.mx, jnp.max(s, axis=1))
        shift = _safe_max(mx) if weights is not None else mx
        scale = jnp.exp(c.mx - shift)
        w = jnp.exp(s - shift[:, None])
        s0 = jnp.where(ok[None, :], s_raw, 0.0)
        # Chan, Golub & LeVeque (1979) parallel mean/variance update, per row (mass-weighted).
        if weights is None:
            mass = ok.astype(dtype)
            wm = w
        else:
            mass = jnp.where(ok, wblk, 0.0)
            wm = w * mass[None, :]
        nb = jnp.sum(mass)
        bmean = jnp.sum(s0 * mass[None, :], axis=1) / jnp.where(nb > 0, nb, 1.0)
        bm2 = jnp.sum(jnp.where(ok[None, :], mass[None, :] * (s_raw - bmean[:, None]) ** 2, 0.0), axis=1)
        tot = c.count + nb
        delta = bmean - c.mean
        frac = nb / jnp.where(tot > 0, tot, 1.0)
        mean = c.mean + delta * frac
        m2 = c.m2 + bm2 + delta**2 * (c.count * frac)
        gram = c.gram
        if with_gram:
            cols = w if weights is None else w * jnp.sqrt(mass)[None, :]
            gram = factor_update(rescale_factor(gram, scale, qr), cols.T, qr, precision)
        return LogitPass(
            mx, c.l * scale + jnp.sum(wm, axis=1), c.ws * scale + jnp.sum(wm * s0, axis=1), tot, mean, m2, gram
        ), None

    out, _ = lax.scan(body, init, (kb, valid, wb if wb is not None else valid))
    return out


def fold_key_blocks(fn: Callable[..., Any], k: Float[Array, "N d"], key_block: int, init: Any,
                    weights: Weights = None) -> Any:
    """Generic fold over key blocks: ``carry = fn(carry, k_block, valid_mask)``, or with ``weights``
    ``carry = fn(carry, k_block, valid_mask, mass_block)`` (``mass_block`` the block of masses, zero
    on padding; keys of zero mass are not valid)."""
    kb, valid, wb = _key_blocks(k, key_block, weights)
    xs = (kb, valid) if wb is None else (kb, valid, wb)
    out, _ = lax.scan(lambda c, blk: (fn(c, *blk), None), init, xs)
    return out


__all__ = [
    "Moments", "LogitPass", "weighted_moments", "logit_pass", "map_query_blocks", "fold_key_blocks",
    "factor_update", "rescale_factor", "uses_qr",
]
