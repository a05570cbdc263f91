"""Token merging as an operation on tokens: ToMe and FastVGGT-style merging on fixed-shape arrays.

Two published algorithms, re-derived from their sources (Bolya et al., "Token Merging: Your ViT
but Faster", ICLR 2023, ``facebookresearch/ToMe`` ``tome/merge.py``; FastVGGT, arXiv:2509.02560,
``mystorm16/FastVGGT`` ``merging/merge.py``), written for the token flow of docs/theory.md:

* **bipartite soft matching** (both): the mergeable tokens are split into sources and
  destinations; each source finds its most similar destination (cosine of the metric, here the
  tokens themselves, which are the keys of the flow); the ``r`` sources with the highest
  similarity are merged into their destinations. ToMe alternates the mergeable tokens into the two
  sets (by position among the alive, unprotected tokens); FastVGGT draws the destinations at random
  (one per 2 x 2 patch region in the image) and the sources are all the other unprotected tokens.
* **ToMe** (:class:`ToMeLayer`): a merged source is removed for the rest of the run; its
  destination becomes the size-weighted mean and the sizes add (mass is conserved exactly);
  *proportional attention* adds ``log size`` to the logits, which is the kernels' token masses
  (``weights=``): the attention is over the weighted measure. Without it the surviving tokens
  attend with unit masses.
* **FastVGGT** (:class:`MergeAttendUnmerge`): inside every layer, merge (destination = plain mean of
  itself and its sources; sizes not tracked, no proportional attention), attend over the merged
  tokens, then **unmerge**: every merged source receives its destination's output, so the
  sequence length is restored and each token takes its own residual step.

Fixed shapes. Every array keeps all ``N`` rows. A removed token has mass 0, and zero-mass tokens
take no part in any kernel evaluation (``solvers.kernels``); ``r`` is a traced integer, so a run
compiles once per ``N`` (and number of steps) whatever the merge schedule. A merge is described by
:class:`Matching`: ``assign[i]`` is the row that represents token ``i`` after the merge (``i``
itself when it is not merged), so unmerging is the gather ``y[assign]``.

Back onto the sphere. The mean of unit vectors lies inside the ball. The merged token is the
**normalised mean** ``normalize(sum_j s_j x_j / sum_j s_j)`` over the destination and its sources
(sizes ``s`` for ToMe, ones for FastVGGT): the projection of the Euclidean mean onto the sphere,
which agrees with the spherical (Karcher) mean to third order in the angle ``theta`` spanned by
the sources (exactly, for two tokens of equal size). Its cost is that the mass-weighted mean of
the measure grows slightly in length: the merged row sits ``1/cos(theta/2) - 1 ~ theta^2/8``
further out than the pair's chord midpoint. A row that receives no source is left bit-for-bit
unchanged.

Every per-layer step runs the matching only when ``r > 0`` (``lax.cond``): it costs
O(n_src n_dst d) (ToMe, whose sets change size: O(N^2 d)), streamed over blocks of source
rows (memory O(block N)).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
from jax import lax
from jaxtyping import Array, Bool, Float, Int

from ._typing import Scalar, Steps, Weights
from .sphere import normalize, project, retract

if TYPE_CHECKING:
    from .kernels import AbstractKernel

_BLOCK_ELEMENTS = 1 << 22  # rows x N similarity entries per block (32 MiB in float64)


class Matching(NamedTuple):
    """One merge: ``assign`` (N,) int32, the row representing each token afterwards (itself if
    kept); ``merged`` (N,) bool, the sources merged away."""

    assign: Int[Array, " N"]
    merged: Bool[Array, " N"]


def alternate_split(mergeable: Bool[Array, " N"]) -> tuple[Bool[Array, " N"], Bool[Array, " N"]]:
    """ToMe's sets: the mergeable tokens in row order, even positions -> sources (A), odd -> destinations (B)."""
    pos = jnp.cumsum(mergeable.astype(jnp.int32)) - 1
    even = (pos % 2) == 0
    return mergeable & even, mergeable & ~even


def best_match(q_metric: Float[Array, "n c"], k_metric: Float[Array, "K c"], k_mask: Bool[Array, " K"] | None = None
               ) -> tuple[Float[Array, " n"], Int[Array, " n"]]:
    """For every query row, the largest cosine similarity to a key row (``k_mask`` (K,): only those
    keys) and that key's index: ``(score (n,), target (n,) int32)``. Query rows are streamed in
    blocks, so no n x K array exists."""
    n, nk = q_metric.shape[0], k_metric.shape[0]
    u, v = normalize(q_metric), normalize(k_metric)
    block = max(1, min(n, _BLOCK_ELEMENTS // nk))
    nb = -(-n // block)
    qp = jnp.pad(u, ((0, nb * block - n), (0, 0))).reshape(nb, block, -1)
    neg = jnp.asarray(-jnp.inf, u.dtype)

    def one(qb: Array) -> tuple[Array, Array]:
        s = qb @ v.T
        s = s if k_mask is None else jnp.where(k_mask[None, :], s, neg)
        return jnp.max(s, axis=1), jnp.argmax(s, axis=1).astype(jnp.int32)

    score, target = lax.map(one, qp)
    return score.reshape(-1)[:n], target.reshape(-1)[:n]


def _top_r(score: Float[Array, " n"], r: Steps) -> Bool[Array, " n"]:
    """``rank(score) < r`` in descending order (ties: lower row first)."""
    n = score.shape[0]
    order = jnp.argsort(-score, stable=True)
    return jnp.zeros((n,), jnp.int32).at[order].set(jnp.arange(n, dtype=jnp.int32)) < r


def bipartite_soft_matching(metric: Float[Array, "N c"], src: Bool[Array, " N"], dst: Bool[Array, " N"], r: Steps) -> Matching:
    """Merge the ``r`` sources (mask ``src``) most similar to their best destination (mask ``dst``).

    ``src`` and ``dst`` must be disjoint; ``r`` (traced int) larger than the number of sources
    merges every source. Callers check ``r`` against the mergeable set before tracing. Cost
    O(N^2 c): use :func:`bipartite_soft_matching_sets` when the sets have static sizes.
    """
    n = metric.shape[0]
    score, target = best_match(metric, metric, dst)
    merged = src & _top_r(jnp.where(src, score, jnp.asarray(-jnp.inf, score.dtype)), r)
    return Matching(jnp.where(merged, target, jnp.arange(n, dtype=jnp.int32)), merged)


def bipartite_soft_matching_sets(metric: Float[Array, "N c"], src_idx: Int[Array, " S"], dst_idx: Int[Array, " D"],
                                 r: Steps) -> Matching:
    """:func:`bipartite_soft_matching` with the sets given as (disjoint) row indices; O(S D c)."""
    n = metric.shape[0]
    score, local = best_match(metric[src_idx], metric[dst_idx])
    hit = _top_r(score, r)
    ident = jnp.arange(n, dtype=jnp.int32)
    assign = ident.at[src_idx].set(jnp.where(hit, dst_idx[local].astype(jnp.int32), src_idx.astype(jnp.int32)))
    return Matching(assign, jnp.zeros((n,), bool).at[src_idx].set(hit))


def merge(x: Float[Array, "N d"], sizes: Float[Array, " N"], match: Matching
          ) -> tuple[Float[Array, "N d"], Float[Array, " N"]]:
    """Size-weighted merge onto the sphere: ``(x', sizes')``.

    ``sizes'`` are the summed sizes (0 for the merged sources: they are removed); a destination
    that receives sources moves to ``normalize(sum s_j x_j / sum s_j)`` over itself and its
    sources; every other row is returned unchanged. With unit ``sizes`` this is FastVGGT's plain
    mean and ``sizes'`` counts the tokens behind each row.
    """
    n = x.shape[0]
    new_sizes = jax.ops.segment_sum(sizes, match.assign, num_segments=n)
    acc = jax.ops.segment_sum(sizes[:, None] * x, match.assign, num_segments=n)
    received = jax.ops.segment_sum(match.merged.astype(jnp.int32), match.assign, num_segments=n) > 0
    safe = jnp.where(received[:, None], acc, x)  # rows without sources never divide by zero
    return jnp.where(received[:, None], normalize(safe), x), new_sizes


def unmerge(y: Float[Array, "N ..."], match: Matching) -> Float[Array, "N ..."]:
    """Every token receives the value of the row that represents it (its destination if merged)."""
    return y[match.assign]


def _step(kernel: AbstractKernel, x: Float[Array, "N d"], q: Float[Array, "M d"], k_weights: Weights, mobility: Scalar, h: Scalar,
          euler: bool, out_rows: Int[Array, " N"] | None = None) -> Float[Array, "N d"]:
    f = jnp.asarray(mobility, x.dtype) * kernel.drive(q, q, k_weights)
    if out_rows is not None:
        f = f[out_rows]
    g = project(x, f) if euler else f
    return retract(x, jnp.asarray(h, x.dtype) * g)


class MergeState(NamedTuple):
    """State of a ToMe run: tokens ``x`` (N, d), ``sizes`` (N,) (0 = removed) and ``owner`` (N,)
    int32, the row that now represents each original token (unmerge of the whole run: ``x[owner]``)."""

    x: Float[Array, "N d"]
    sizes: Float[Array, " N"]
    owner: Int[Array, " N"]


class ToMeLayer(eqx.Module):
    """One ToMe layer of the flow: merge ``r`` tokens, then attend over the survivors.

    ToMe merges between a block's attention and its MLP, with that block's keys as metric. The
    flow has no MLP and its keys are its tokens, so here each layer merges first (metric = the
    current tokens) and then takes the residual attention step -- the same sequence of operations
    shifted by half a layer. Removed tokens are frozen (mass 0). ``proportional``: attention over
    the sizes (ToMe's ``+ log size``); otherwise the survivors have unit masses. ``euler``: the
    step uses the projected velocity (``Euler``) instead of the raw output (``Layer``).
    """

    protected: Bool[Array, " N"]
    proportional: bool = eqx.field(static=True, default=True)
    euler: bool = eqx.field(static=True, default=False)

    def merge_step(self, x: Float[Array, "N d"], sizes: Float[Array, " N"], owner: Int[Array, " N"], r: Steps
                   ) -> tuple[Float[Array, "N d"], Float[Array, " N"], Int[Array, " N"]]:
        alive = sizes > 0
        src, dst = alternate_split(alive & ~self.protected)

        def do(args: tuple[Array, Array, Array]) -> tuple[Array, Array, Array]:
            x, sizes, owner = args
            match = bipartite_soft_matching(x, src, dst, r)
            x, sizes = merge(x, sizes, match)
            return x, sizes, match.assign[owner].astype(owner.dtype)

        return lax.cond(r > 0, do, lambda a: a, (x, sizes, owner))

    def __call__(self, kernel: AbstractKernel, mobility: Scalar, state: MergeState, r: Steps, h: Scalar) -> MergeState:
        x, sizes, owner = self.merge_step(*state, r)
        alive = sizes > 0
        w = sizes if self.proportional else alive.astype(x.dtype)
        x = jnp.where(alive[:, None], _step(kernel, x, x, w, mobility, h, self.euler), x)
        return MergeState(x, sizes, owner)

    def advance(self, kernel: AbstractKernel, mobility: Scalar, state: MergeState, schedule: Int[Array, " L"],
                start: Steps, n_steps: Steps, h: Scalar) -> MergeState:
        """Layers ``start .. start+n_steps-1``; layer ``l`` merges ``schedule[l]`` tokens first."""
        return lax.fori_loop(0, n_steps, lambda i, s: self(kernel, mobility, s, schedule[start + i], h), state)


class MergeAttendUnmerge(eqx.Module):
    """One FastVGGT layer: merge ``r`` sources into destinations (plain normalised mean), attend
    over the merged tokens with unit masses, unmerge (each source gets its destination's output),
    then every token takes its own residual step. ``dst_idx`` are the destination rows (FastVGGT
    draws them once, with a fixed seed, and uses the same ones in every block), ``src_idx`` the
    candidate sources; rows in neither (the protected tokens) are never merged and attend as
    themselves."""

    src_idx: Int[Array, " S"]
    dst_idx: Int[Array, " D"]
    euler: bool = eqx.field(static=True, default=False)

    def merged_tokens(self, x: Float[Array, "N d"], r: Steps) -> tuple[Float[Array, "N d"], Float[Array, " N"], Matching]:
        """``(merged tokens, unit-or-zero masses, matching)`` for one layer."""
        n = x.shape[0]
        ident = Matching(jnp.arange(n, dtype=jnp.int32), jnp.zeros((n,), bool))
        match = lax.cond(r > 0, lambda y: bipartite_soft_matching_sets(y, self.src_idx, self.dst_idx, r),
                         lambda y: ident, x)
        xm, counts = merge(x, jnp.ones((n,), x.dtype), match)
        return xm, (counts > 0).astype(x.dtype), match

    def __call__(self, kernel: AbstractKernel, mobility: Scalar, x: Float[Array, "N d"], r: Steps, h: Scalar) -> Float[Array, "N d"]:
        xm, present, match = self.merged_tokens(x, r)
        return _step(kernel, x, xm, present, mobility, h, self.euler, out_rows=match.assign)

    def advance(self, kernel: AbstractKernel, mobility: Scalar, x: Float[Array, "N d"], r: Steps, n_steps: Steps, h: Scalar
                ) -> Float[Array, "N d"]:
        return lax.fori_loop(0, n_steps, lambda i, y: self(kernel, mobility, y, r, h), x)


__all__ = [
    "Matching", "MergeAttendUnmerge", "MergeState", "ToMeLayer", "alternate_split", "best_match",
    "bipartite_soft_matching", "bipartite_soft_matching_sets", "merge", "unmerge",
]
