"""General attention: query-key bilinear forms, value and output matrices, heads, causal masks
(docs/theory.md "General attention dynamics").

For queries ``q`` (n, d), keys ``k`` (N, d) and key masses ``w`` the kernel :class:`Bilinear` with
``H`` heads, bilinear forms ``B_h = Q_h^T K_h`` (not necessarily symmetric), value matrices ``V_h``
and output maps ``O_h`` has

    s^h_ij = alpha <q_i, B_h k_j>,    A^h_ij = w_j e^{s^h_ij} / sum_l w_l e^{s^h_il},
    F(q_i) = sum_h O_h V_h sum_j A^h_ij k_j                                   (drive, unprojected)

so the particle velocity is ``P_x F`` (docs/theory.md). Defaults: ``B_h = I``, ``V_h = I`` and
``O_h = I/H`` (the mean over heads, the convention of nikitus20/simuformer), so ``Bilinear(alpha)``
is :class:`solvers.kernels.Softmax` and ``H`` identical heads are one head. With ``causal=True``
query ``i`` attends only to keys ``j <= i`` (positions: the row index when ``q`` and ``k`` are the
same tokens, else the ``positions`` argument).

Divergence (closed form, docs/theory.md "Entropy: the exact identity" generalised). With
``g_h = E_{A^h}[k]``, ``C_h = E_{A^h}[k k^T] - g_h g_h^T`` and ``M_h = O_h V_h`` the Jacobian of
``F`` is ``J = alpha sum_h M_h C_h B_h^T`` and, for unit ``x``,
``div_S P_x F = tr J - x^T J x - (d-1) <x, F>``, where
``tr(M C B^T) = E[<B k, M k>] - <B g, M g>`` and
``x^T M C B^T x = E[<M^T x, k><B^T x, k>] - <M^T x, g><B^T x, g>``: per query only scalar
accumulators, so the pass stays O(n N d) with memory O(query_block * key_block) per head
(``tests/solvers/test_general.py`` checks it against ``jax.jacfwd``).

Attention statistics refer to the head-averaged matrix ``(1/H) sum_h A^h`` and the head-averaged
logits, per unit of mass as in ``solvers.kernels``; they take two passes over the keys (the first
finds each head's log-normaliser), memory O(n^2 + n * key_block).
"""

from __future__ import annotations

from typing import Any, Callable, ClassVar, cast

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jaxtyping import Array, DTypeLike, Float, Int

from solvers._typing import Weights
from solvers.kernels import AbstractKernel, spectrum_from_factor
from solvers.streaming import _key_blocks, _safe_max, factor_update


def _map_blocks(fn: Callable[[Array, Array], Any], q: Float[Array, "n d"], pos: Int[Array, " n"], block: int) -> Any:
    """``fn(q_block, pos_block)`` over row blocks (``lax.map``), concatenated; memory bound."""
    n, d = q.shape
    if n <= block:
        return fn(q, pos)
    nb = -(-n // block)
    pad = nb * block - n
    qp = jnp.pad(q, ((0, pad), (0, 0)), mode="edge").reshape(nb, block, d)
    pp = jnp.pad(pos, (0, pad), mode="edge").reshape(nb, block)
    out = lax.map(lambda a: fn(*a), (qp, pp))
    return jax.tree_util.tree_map(lambda a: a.reshape((nb * block,) + a.shape[2:])[:n], out)


class Bilinear(AbstractKernel):
    """Multi-head softmax attention with bilinear forms ``B`` (H, d, d), values ``V`` (H, d, d) and
    output maps ``O`` (H, d, d); a (d, d) array means one head, ``None`` the identity (``O``:
    ``I/H``). See the module docstring for the model, the divergence and the statistics.

    ``alpha`` multiplies every logit (so ``B = I`` with ``alpha`` is the isotropic kernel, and
    ``B = alpha I`` with ``alpha = 1`` is the same). ``causal=True``: token ``i`` attends to
    ``j <= i``. Blocks as in :class:`solvers.kernels.Softmax`.
    """

    alpha: float | jax.Array = 1.0
    B: jax.Array | None = None
    V: jax.Array | None = None
    O: jax.Array | None = None
    causal: bool = eqx.field(static=True, default=False)
    key_block: int = eqx.field(static=True, default=1024)
    query_block: int = eqx.field(static=True, default=1024)
    name: ClassVar[str] = "bilinear"
    family: ClassVar[str] = "matrix"  # not tabulated by the grid solvers
    normalized: ClassVar[bool] = True

    def __check_init__(self) -> None:
        shapes = [np.shape(m) for m in (self.B, self.V, self.O) if m is not None]
        heads = {s[0] for s in shapes if len(s) == 3}
        if any(len(s) not in (2, 3) or s[-1] != s[-2] for s in shapes) or len(heads) > 1:
            raise ValueError(f"Bilinear: B, V, O must be (d, d) or (H, d, d) arrays with one H, got shapes {shapes}")

    @property
    def heads(self) -> int:
        for m in (self.B, self.V, self.O):
            if m is not None and np.ndim(m) == 3:
                return int(np.shape(m)[0])
        return 1

    def _mats(self, dtype: DTypeLike) -> list[tuple[Array | None, Array | None, float]]:
        """Per head ``(B_h or None, M_h = O_h V_h or None, scale)``: ``None`` is the identity."""
        H = self.heads

        def get(m: Array | None, h: int) -> Array | None:
            if m is None:
                return None
            m = jnp.asarray(m, dtype)
            return m[h] if m.ndim == 3 else m

        out = []
        for h in range(H):
            b, v, o = get(self.B, h), get(self.V, h), get(self.O, h)
            m = v if o is None else (o if v is None else o @ v)
            out.append((b, m, 1.0 / H if o is None else 1.0))
        return out

    def _positions(self, q: Float[Array, "n d"], k: Float[Array, "N d"], positions: Int[Array, " n"] | None) -> Int[Array, " n"]:
        if positions is not None:
            return jnp.asarray(positions, jnp.int32)
        if self.causal and q.shape[0] != k.shape[0]:
            raise ValueError(f"causal Bilinear: {q.shape[0]} queries over {k.shape[0]} keys need positions=")
        return jnp.arange(q.shape[0], dtype=jnp.int32)

    def _head_pass(self, q: Float[Array, "n d"], pos: Int[Array, " n"], k: Float[Array, "N d"], weights: Weights, b: Array | None, m: Array | None,
                   with_div: bool) -> tuple[Float[Array, "n d"], Float[Array, " n"], Float[Array, " n"]]:
        """One head over key blocks: ``(g (n, d), tr J/alpha, x^T J x/alpha)`` (zeros if not with_div)."""
        dtype = q.dtype
        a = jnp.asarray(self.alpha, dtype)
        w = None if weights is None else jnp.asarray(weights, dtype)
        kb, valid, wb = _key_blocks(k, self.key_block, w)
        nb, blk, d = kb.shape
        idx = jnp.arange(nb * blk, dtype=jnp.int32).reshape(nb, blk)
        bk = kb if b is None else kb @ b.T  # rows B k_j
        mk = kb if m is None else kb @ m.T  # rows M k_j
        cj = jnp.sum(bk * mk, axis=-1)  # <B k_j, M k_j>

        def run(qq: Array, pp: Array) -> tuple[Array, Array, Array]:
            qb = qq if b is None else qq @ b  # rows B^T q
            qm = qq if m is None else qq @ m  # rows M^T q
            n = qq.shape[0]
            z = jnp.zeros((n,), dtype)
            init = (jnp.full((n,), -jnp.inf, dtype), z, jnp.zeros((n, d), dtype), z, z)

            def body(c: Any, xs: Any) -> tuple[Any, None]:
                mx0, l0, acc0, accc0, acc20 = c
                kblk, ok, wblk, jj, cblk, bkb = xs
                okq = ok[None, :] & (jj[None, :] <= pp[:, None]) if self.causal else ok[None, :]
                s = jnp.where(okq, a * (qb @ kblk.T), -jnp.inf)
                mx = jnp.maximum(mx0, jnp.max(s, axis=1))
                shift = _safe_max(mx)
                scale = jnp.exp(mx0 - shift)
                e = jnp.exp(s - shift[:, None])
                if weights is not None:
                    e = e * wblk[None, :]
                acc = acc0 * scale[:, None] + e @ kblk
                if with_div:
                    accc = accc0 * scale + e @ cblk
                    acc2 = acc20 * scale + jnp.sum(e * (qm @ kblk.T) * (qq @ bkb.T), axis=1)
                else:
                    accc, acc2 = accc0, acc20
                return (mx, l0 * scale + jnp.sum(e, axis=1), acc, accc, acc2), None

            wxs = wb if wb is not None else valid
            (_, l, acc, accc, acc2), _ = lax.scan(body, init, (kb, valid, wxs, idx, cj.reshape(nb, blk), bk))
            inv = 1.0 / jnp.where(l > 0, l, 1.0)
            g = acc * inv[:, None]
            if not with_div:
                return g, z, z
            bg = g if b is None else g @ b.T
            mg = g if m is None else g @ m.T
            tr = accc * inv - jnp.sum(bg * mg, axis=-1)
            xjx = acc2 * inv - jnp.sum(qm * g, axis=-1) * jnp.sum(qb * g, axis=-1)
            return g, tr, xjx

        return _map_blocks(run, q, pos, self.query_block)

    def _field(self, q: Float[Array, "n d"], k: Float[Array, "N d"], weights: Weights, positions: Int[Array, " n"] | None, with_div: bool) -> tuple[Float[Array, "n d"], Float[Array, " n"]]:
        dtype = q.dtype
        pos = self._positions(q, k, positions)
        a = jnp.asarray(self.alpha, dtype)
        f = jnp.zeros_like(q)
        div = jnp.zeros(q.shape[:1], dtype)
        for b, m, sc in self._mats(dtype):
            g, tr, xjx = self._head_pass(q, pos, k, weights, b, m, with_div)
            f = f + sc * (g if m is None else g @ m.T)
            div = div + sc * a * (tr - xjx)
        return f, div - (q.shape[-1] - 1) * jnp.sum(q * f, axis=-1)

    def drive(self, q: Float[Array, "n d"], k: Float[Array, "N d"], weights: Weights = None, positions: Int[Array, " n"] | None = None) -> Float[Array, "n d"]:
        """``F(q_i) = sum_h O_h V_h sum_j A^h_ij k_j`` (n, d)."""
        if self.heads == 1 and self._mats(q.dtype)[0][1] is None:
            return self._head_pass(q, self._positions(q, k, positions), k, weights,
                                   self._mats(q.dtype)[0][0], None, False)[0]
        return self._field(q, k, weights, positions, False)[0]

    def drive_and_divergence(self, q: Float[Array, "n d"], k: Float[Array, "N d"], weights: Weights = None, positions: Int[Array, " n"] | None = None) -> tuple[Float[Array, "n d"], Float[Array, " n"]]:
        """``(F, div_S P_x F)`` at unit queries (closed form of the module docstring)."""
        return self._field(q, k, weights, positions, True)

    def speed_bound(self) -> float:
        """``sum_h |O_h V_h|_2`` (``1`` for identity values)."""
        total = 0.0
        for h in range(self.heads):
            v, o = (None if a is None else np.asarray(a)[h] if np.ndim(a) == 3 else np.asarray(a)
                    for a in (self.V, self.O))
            m = v if o is None else (o if v is None else o @ v)
            total += (1.0 if m is None else float(np.linalg.norm(m, 2))) / (self.heads if o is None else 1.0)
        return total

    def logits(self, q: Float[Array, "n d"], k: Float[Array, "N d"]) -> Float[Array, "n N"]:
        """Dense head-averaged logits ``(1/H) sum_h alpha <q_i, B_h k_j>`` (n, N): for tests and
        small problems only."""
        mats = self._mats(q.dtype)
        a = jnp.asarray(self.alpha, q.dtype)
        return cast(Array, sum(a * ((q if b is None else q @ b) @ k.T) for b, _, _ in mats) / len(mats))

    def attention_statistics(self, q: Float[Array, "n d"], k: Float[Array, "N d"], weights: Weights = None, positions: Int[Array, " n"] | None = None) -> tuple[Float[Array, " n"], dict[str, Float[Array, " n"]]]:
        """Spectrum and row statistics of the head-averaged attention rows (module docstring)."""
        dtype = q.dtype
        pos = self._positions(q, k, positions)
        a = jnp.asarray(self.alpha, dtype)
        w = None if weights is None else jnp.asarray(weights, dtype)
        kb, valid, wb = _key_blocks(k, self.key_block, w)
        nb, blk, _ = kb.shape
        idx = jnp.arange(nb * blk, dtype=jnp.int32).reshape(nb, blk)
        wxs = wb if wb is not None else valid.astype(dtype)
        qbs = jnp.stack([q if b is None else q @ b for b, _, _ in self._mats(dtype)])  # (H, n, d)
        H, n = qbs.shape[0], q.shape[0]

        def logits(kblk: Array, ok: Array, jj: Array) -> tuple[Array, Array]:
            if self.causal:
                okq = ok[None, :] & (jj[None, :] <= pos[:, None])
            else:
                okq = jnp.broadcast_to(ok[None, :], (n, ok.shape[0]))
            return a * jnp.einsum("hnd,kd->hnk", qbs, kblk), okq

        def first(c: Any, xs: Any) -> tuple[Any, None]:
            mx0, l0, sm0, cnt0 = c
            kblk, ok, wblk, jj = xs
            s, okq = logits(kblk, ok, jj)
            s_m = jnp.where(okq[None], s, -jnp.inf)
            mx = jnp.maximum(mx0, jnp.max(s_m, axis=2))
            shift = _safe_max(mx)
            mass = jnp.where(okq, wblk[None, :], 0.0)
            l = l0 * jnp.exp(mx0 - shift) + jnp.sum(jnp.exp(s_m - shift[..., None]) * mass[None], axis=2)
            sm = sm0 + jnp.sum(jnp.where(okq, jnp.mean(s, axis=0), 0.0) * mass, axis=1)
            return (mx, l, sm, cnt0 + jnp.sum(mass, axis=1)), None

        zh = jnp.zeros((H, n), dtype)
        z = jnp.zeros((n,), dtype)
        (mx, l, sm, cnt), _ = lax.scan(first, (zh - jnp.inf, zh, z, z), (kb, valid, wxs, idx))
        lse = _safe_max(mx) + jnp.log(jnp.where(l > 0, l, 1.0))
        cnt = jnp.where(cnt > 0, cnt, 1.0)
        mean = sm / cnt

        def second(c: Any, xs: Any) -> tuple[Any, None]:
            gram, ent, mxw, m2 = c
            kblk, ok, wblk, jj = xs
            s, okq = logits(kblk, ok, jj)
            u = jnp.where(okq, jnp.mean(jnp.exp(jnp.where(okq[None], s, -jnp.inf) - lse[..., None]), axis=0), 0.0)
            mass = jnp.where(okq, wblk[None, :], 0.0)
            gram = factor_update(gram, (u * jnp.sqrt(mass)).T)
            ent = ent - jnp.sum(jnp.where(u > 0, mass * u * jnp.log(jnp.where(u > 0, u, 1.0)), 0.0), axis=1)
            mxw = jnp.maximum(mxw, jnp.max(jnp.where(okq, u, -jnp.inf), axis=1))
            m2 = m2 + jnp.sum(mass * (jnp.mean(s, axis=0) - mean[:, None]) ** 2, axis=1)
            return (gram, ent, mxw, m2), None

        (gram, ent, mxw, m2), _ = lax.scan(second, (jnp.zeros((n, n), dtype), z, z - jnp.inf, z), (kb, valid, wxs, idx))
        rows = {"row_entropy": ent, "max_weight": mxw, "logit_mean": mean,
                "logit_std": jnp.sqrt(jnp.maximum(m2 / cnt, 0.0))}
        return spectrum_from_factor(gram), rows

    def describe(self) -> dict[str, Any]:
        """JSON-able description (matrices summarised by their shape)."""
        shape = lambda m: "identity" if m is None else list(np.shape(m))  # noqa: E731
        return {"name": self.name, "alpha": float(self.alpha), "heads": self.heads, "causal": self.causal,
                "B": shape(self.B), "V": shape(self.V), "O": shape(self.O),
                "key_block": self.key_block, "query_block": self.query_block}

__all__ = ["Bilinear"]
