"""Dense softmax attention for batches of small systems (n up to a few thousand tokens).

For ``B`` independent systems of ``n`` unit tokens, ``x`` of shape ``(B, n, d)``, the softmax
drive of docs/theory.md ("The three kernels") is evaluated with the full ``n x n`` Gram matrix of
each system, as two batched matrix products:

    G = x x^T,    W = exp(beta (G - 1)),    F_i = sum_j W_ij x_j / sum_j W_ij.

Shifting the logits by ``beta`` (``G - 1`` instead of ``G``) replaces the usual max-subtraction
pass: for unit vectors ``G_ii = 1`` is the row maximum (Cauchy-Schwarz), so every exponent is
``<= 0`` up to round-off, no row overflows, and the row sum is ``>= exp(beta (G_ii - 1)) ~ 1``.
The shift cancels in the quotient, so the result is the softmax exactly (not an approximation).

The streaming kernels of :mod:`solvers.kernels` never form ``n x n`` arrays and are built for
large ``n``; for ``n = 32`` their block bookkeeping costs more than the arithmetic. Here the whole
step is a handful of batched operations on ``(B, n, n)`` arrays, meant to be called on a block of
systems small enough to stay in cache (``B n^2`` floats), inside a ``lax.scan`` over steps.

Also here: statistics of the Gram matrix used for phase diagrams (Geshkovski et al. 2023): the
number of pairs closer than a cosine threshold, and the number of clusters, defined as the
connected components of the graph ``<x_i, x_j> > threshold`` (computed with static shapes by
min-label propagation, :func:`count_components`).
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax
from jaxtyping import Array, Bool, DTypeLike, Float, Int

from ._typing import Scalar

from .sphere import normalize, rowdot
from .streaming import map_query_blocks


def gram(x: Float[Array, "B n d"]) -> Float[Array, "B n n"]:
    """``G_ij = <x_i, x_j>`` for every system of the batch."""
    return jnp.einsum("bid,bjd->bij", x, x)


def softmax_drive(x: Float[Array, "B n d"], beta: Float[Array, " B"]) -> Float[Array, "B n d"]:
    """``sum_j A_ij x_j`` with ``A = softmax(beta <x_i, x_j>)`` over ``j``, per system (unit rows).

    ``beta`` is one inverse temperature per system. Uses ``exp(beta (G - 1))`` (see module doc).
    """
    beta = jnp.asarray(beta, x.dtype)
    w = jnp.exp(beta[:, None, None] * (gram(x) - 1.0))
    return jnp.einsum("bij,bjd->bid", w, x) / jnp.sum(w, axis=-1)[..., None]


def layer_update(
    x: Float[Array, "B n d"], g: Float[Array, "B n n"], beta: Float[Array, " B"], h: Scalar
) -> Float[Array, "B n d"]:
    """One transformer layer ``x <- normalize(x + h sum_j A_ij x_j)`` given the Gram matrices
    ``g = gram(x)`` (so a caller that needs ``g`` anyway, for statistics, computes it once).

    The row sums ``sum_j W_ij`` divide ``h`` before the update (one ``(B, n)`` division instead of
    a ``(B, n, d)`` one) and the norm is computed once.
    """
    beta = jnp.asarray(beta, x.dtype)
    w = jnp.exp(beta[:, None, None] * (g - 1.0))
    scale = jnp.asarray(h, x.dtype) / jnp.sum(w, axis=-1)
    return normalize(x + scale[..., None] * jnp.einsum("bij,bjd->bid", w, x))


def layer_step(x: Float[Array, "B n d"], beta: Float[Array, " B"], h: Scalar) -> Float[Array, "B n d"]:
    """One transformer layer ``x <- normalize(x + h sum_j A_ij x_j)`` (the ``Layer``
    scheme of :mod:`solvers.integrators`, mobility 1) for every system; ``x`` must have unit rows."""
    return layer_update(x, gram(x), beta, h)


def component_labels(adj: Bool[Array, "... n n"]) -> Int[Array, "... n"]:
    """The smallest node index of each node's connected component (see :func:`count_components`)."""
    n = adj.shape[-1]
    lab0 = jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), adj.shape[:-1])

    def body(state: tuple[Array, Array]) -> tuple[Array, Array]:
        lab, _ = state
        new = jnp.minimum(lab, jnp.min(jnp.where(adj, lab[..., None, :], n), axis=-1))
        return new, jnp.any(new != lab)

    return lax.while_loop(lambda s: s[1], body, (lab0, jnp.asarray(True)))[0]


def count_components(adj: Bool[Array, "... n n"]) -> Int[Array, "..."]:
    """Number of connected components of undirected graphs with adjacency ``adj`` (symmetric;
    leading axes are a batch).

    Min-label propagation, ``lab_i <- min(lab_i, min_{j ~ i} lab_j)`` from ``lab_i = i``, in a
    ``lax.while_loop`` with static shapes until no label changes: every label is the index of a
    node of the same component and never increases, so at the fixed point each component carries
    the index of its smallest node, and the number of components is the number of nodes labelled
    by their own index. A pass costs ``O(n^2)`` per graph (no gathers); the number of passes is
    the largest diameter in the batch plus one -- two for unions of cliques, the usual case near
    clusters.
    """
    idx = jnp.arange(adj.shape[-1], dtype=jnp.int32)
    return jnp.sum(component_labels(adj) == idx, axis=-1, dtype=jnp.int32)


def matrix_rank01(a: Bool[Array, "... n n"], dtype: DTypeLike = jnp.float64) -> Int[Array, "..."]:
    """Rank (over the reals) of square 0/1 matrices ``a`` -- the cluster count of the reference
    code of Geshkovski et al., which takes the rank of the thresholded Gram matrix.

    Gaussian elimination with partial pivoting over the ``n`` columns in a ``lax.fori_loop``
    (static shapes, no LAPACK call): at column ``k`` the unused row with the largest ``|a_rk|``
    is the pivot; the column counts toward the rank when that entry exceeds ``sqrt(eps)`` and is
    then eliminated from the other unused rows. The matrices start with integer entries and the
    pivots of a 0/1 matrix are ratios of integer minors, far above ``sqrt(eps)`` at these sizes,
    while round-off leaves ``O(n eps)``; checked against ``numpy.linalg.matrix_rank`` (SVD) in
    the tests. Cost ``O(n^3)`` per matrix: ~``n / (2 d)`` times a dense layer step.
    """
    n = a.shape[-1]
    m0 = a.astype(dtype)
    tol = jnp.sqrt(jnp.finfo(dtype).eps)
    rows = jnp.arange(n)

    def body(k: Array, c: tuple[Array, Array, Array]) -> tuple[Array, Array, Array]:
        m, used, rank = c
        col = lax.dynamic_index_in_dim(m, k, axis=-1, keepdims=False)
        cand = jnp.where(used, 0.0, jnp.abs(col))
        r = jnp.argmax(cand, axis=-1)
        ok = jnp.max(cand, axis=-1) > tol
        prow = jnp.take_along_axis(m, r[..., None, None], axis=-2)[..., 0, :]
        piv = jnp.take_along_axis(col, r[..., None], axis=-1)
        onehot = rows == r[..., None]
        factor = jnp.where(onehot | used | ~ok[..., None], 0.0, col / jnp.where(ok[..., None], piv, 1.0))
        m = m - factor[..., :, None] * prow[..., None, :]
        return m, used | (onehot & ok[..., None]), rank + ok.astype(jnp.int32)

    init = (m0, jnp.zeros(a.shape[:-1], bool), jnp.zeros(a.shape[:-2], jnp.int32))
    return lax.fori_loop(0, n, body, init)[2]


def gram_statistics(x: Float[Array, "... n d"], pair_threshold: Scalar, cluster_threshold: Scalar,
                    g: Float[Array, "... n n"] | None = None, clusters: str = "components"
                    ) -> tuple[Int[Array, "..."], Int[Array, "..."], Float[Array, "..."]]:
    """Statistics of systems of unit tokens from their Gram matrices ``g`` (computed when not
    given; leading axes are a batch):

    * ``pairs``: the number of ordered pairs ``i != j`` with ``<x_i, x_j> > pair_threshold`` (int32);
    * ``clusters``: connected components of the graph ``<x_i, x_j> > cluster_threshold`` (int32);
      with ``clusters="rank"`` the rank of its 0/1 matrix instead (the reference code's count);
    * ``order_parameter``: ``|m|``, ``m`` the mean token.
    """
    g = jnp.einsum("...id,...jd->...ij", x, x) if g is None else g
    n = x.shape[-2]
    pt = jnp.asarray(pair_threshold, x.dtype)
    diag = jnp.sum(jnp.diagonal(g, axis1=-2, axis2=-1) > pt, axis=-1, dtype=jnp.int32)
    pairs = jnp.sum(g > pt, axis=(-2, -1), dtype=jnp.int32) - diag
    adj = g > jnp.asarray(cluster_threshold, x.dtype)
    lab = component_labels(adj)
    count = jnp.sum(lab == jnp.arange(n, dtype=jnp.int32), axis=-1, dtype=jnp.int32)
    if clusters == "rank":
        # a union of cliques (adj_ij <=> same component) has rank = number of components; the
        # O(n^3) elimination runs only when some graph of the batch is not one
        cliques = jnp.all(adj == (lab[..., :, None] == lab[..., None, :]), axis=(-2, -1))
        count = lax.cond(jnp.all(cliques), lambda: count,
                         lambda: jnp.where(cliques, count, matrix_rank01(adj, x.dtype)))
    m = jnp.mean(x, axis=-2)
    return pairs, count, jnp.sqrt(jnp.sum(m * m, axis=-1))


def gram_statistics_blocked(x: Float[Array, "n d"], pair_threshold: Scalar, cluster_threshold: Scalar, block: int
                            ) -> tuple[Int[Array, ""], Int[Array, ""], Float[Array, ""]]:
    """:func:`gram_statistics` for large ``n`` without an ``n x n`` array: rows of the Gram matrix
    are formed ``block`` at a time (``lax.map``), memory ``O(block n)``. The component count
    recomputes the row blocks at every propagation pass (``O(n^2 d)`` each)."""
    n = x.shape[0]
    pt = jnp.asarray(pair_threshold, x.dtype)
    ct = jnp.asarray(cluster_threshold, x.dtype)
    over = map_query_blocks(lambda q: jnp.sum(q @ x.T > pt, axis=1, dtype=jnp.int32), x, block)
    pairs = jnp.sum(over, dtype=jnp.int32) - jnp.sum(rowdot(x, x) > pt, dtype=jnp.int32)
    idx = jnp.arange(n, dtype=jnp.int32)

    def body(state: tuple[Array, Array]) -> tuple[Array, Array]:
        lab, _ = state
        new = map_query_blocks(lambda q: jnp.min(jnp.where(q @ x.T > ct, lab[None, :], n), axis=1), x, block)
        new = jnp.minimum(new, lab)
        return new, jnp.any(new != lab)

    lab, _ = lax.while_loop(lambda s: s[1], body, (idx, jnp.asarray(True)))
    m = jnp.mean(x, axis=0)
    return pairs.astype(jnp.int32), jnp.sum(lab == idx).astype(jnp.int32), jnp.sqrt(jnp.sum(m * m))


__all__ = [
    "gram",
    "softmax_drive",
    "layer_step",
    "layer_update",
    "component_labels",
    "count_components",
    "matrix_rank01",
    "gram_statistics",
    "gram_statistics_blocked",
]
