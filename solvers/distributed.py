"""The attention field of ONE system whose tokens are sharded over devices (use inside ``shard_map``).

Inside ``jax.shard_map`` each device holds ``N / P`` rows of the state ``x`` (``P`` devices along
the mesh axis ``axis``); queries are local, but every query needs all keys. Per kernel
(docs/theory.md "The three kernels"):

* ``linear``: the field is ``m + alpha Sigma x`` from the key moments, so only the moments travel:
  an all-reduce (``lax.psum``) of ``d + d^2 + 1`` numbers per evaluation, shifted by one global
  token (the shifted-data algorithm of :func:`solvers.kernels.key_moments`) so nothing cancels
  near collapse. Memory per device: the local rows.
* ``softmax`` / ``usa``, ``strategy="gather"``: ``lax.all_gather`` of the keys, then the streaming
  kernel on (local queries, all keys). Memory per device: all ``N x d`` keys plus the kernel's
  ``query_block x key_block`` scratch. Simplest and fastest while ``N d`` fits on one device.
* ``softmax`` / ``usa``, ``strategy="ring"``: the key shards travel around a ring (``P - 1``
  ``lax.ppermute`` steps); each device folds every visiting shard into its queries' online-softmax
  moments (running maximum, sum of weights, weighted sum of keys; the merge rule of
  :mod:`solvers.streaming`). Memory per device: two shards (``2 N d / P``) plus the scratch; the
  same bytes travel as for the all-gather, in ``P - 1`` messages. The result equals the gathered
  one up to round-off (the sums are taken in another order).

:class:`ShardedAttentionField` has the ``drive``/``velocity`` interface of
:class:`solvers.AttentionField`, so the integrators of :mod:`solvers.integrators` run unchanged
on the local rows.
"""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax.numpy as jnp
from jax import lax
from jaxtyping import Array, Float

from ._typing import Scalar
from .kernels import KERNELS, AbstractKernel
from .sphere import project
from .streaming import Moments, map_query_blocks, weighted_moments

STRATEGIES = ("gather", "ring")


def shardable(kernel: object) -> bool:
    """Whether a kernel (class or object) has a token-sharded drive: from all-reduced key moments
    (``drive_from_key_moments``, the linear kernel) or from streamed moments folded around a ring
    or over gathered keys (``drive_from_moments``, softmax and usa)."""
    return hasattr(kernel, "drive_from_key_moments") or hasattr(kernel, "drive_from_moments")


def shardable_kernels() -> tuple[str, ...]:
    """The registered kernels' names for which :func:`shardable` holds."""
    return tuple(name for name, cls in KERNELS.items() if shardable(cls))


def _moments_drive(kernel: Any, x: Float[Array, "n d"], axis: str) -> Float[Array, "n d"]:
    c = lax.all_gather(x[0], axis)[0]  # one global token: the shift
    y = x - c
    count = lax.psum(jnp.asarray(x.shape[0], x.dtype), axis)
    my = lax.psum(jnp.sum(y, axis=0), axis) / count
    second = lax.psum(y.T @ y, axis) / count
    cov = second - jnp.outer(my, my)
    cov = 0.5 * (cov + cov.T)
    return kernel.drive_from_key_moments(x, my + c, cov)


def _merge(a: Moments, b: Moments) -> Moments:
    mx = jnp.maximum(a.mx, b.mx)
    sa, sb = jnp.exp(a.mx - mx), jnp.exp(b.mx - mx)
    return Moments(mx, a.l * sa + b.l * sb, a.acc * sa[:, None] + b.acc * sb[:, None], a.acc2)


def _ring_moments(kernel: Any, x: Float[Array, "n d"], axis: str, n_shards: int) -> Moments:
    alpha = jnp.asarray(kernel.alpha, x.dtype)
    prec = getattr(kernel, "matmul_precision", "highest")

    def moments(k: Float[Array, "n d"]) -> Moments:
        return map_query_blocks(lambda q: weighted_moments(q, k, alpha, kernel.key_block, with_acc2=False,
                                                           precision=prec), x, kernel.query_block)

    perm = [(i, (i + 1) % n_shards) for i in range(n_shards)]
    k = x
    mo = moments(k)
    for _ in range(n_shards - 1):
        k = lax.ppermute(k, axis, perm)
        mo = _merge(mo, moments(k))
    return mo


def sharded_drive(kernel: Any, x: Float[Array, "n d"], axis: str, strategy: str = "gather") -> Float[Array, "n d"]:
    """``sum_j A_ij x_j`` for the local rows ``x`` of a token-sharded system (inside ``shard_map``)."""
    if not shardable(kernel):
        raise ValueError(f"no sharded drive for kernel {type(kernel).__name__}; kernels with one: "
                         f"{', '.join(shardable_kernels())}")
    if hasattr(kernel, "drive_from_key_moments"):
        return _moments_drive(kernel, x, axis)
    if strategy == "gather":
        return kernel.drive(x, lax.all_gather(x, axis, tiled=True))
    if strategy != "ring":
        raise ValueError(f"unknown strategy {strategy!r}; expected one of: {', '.join(STRATEGIES)}")
    n_shards = lax.axis_size(axis)
    mo = _ring_moments(kernel, x, axis, n_shards)
    return kernel.drive_from_moments(mo, jnp.asarray(x.shape[0] * n_shards, x.dtype))


class ShardedAttentionField(eqx.Module):
    """:class:`solvers.AttentionField` for a token-sharded system: ``drive`` and ``velocity`` of
    the local rows, with the communication of the module doc. Only valid inside ``shard_map``."""

    kernel: AbstractKernel
    mobility: Scalar = 1.0
    axis: str = eqx.field(static=True, default="tokens")
    strategy: str = eqx.field(static=True, default="gather")

    def drive(self, x: Float[Array, "n d"]) -> Float[Array, "n d"]:
        return jnp.asarray(self.mobility, x.dtype) * sharded_drive(self.kernel, x, self.axis, self.strategy)

    def velocity(self, x: Float[Array, "n d"]) -> Float[Array, "n d"]:
        return project(x, self.drive(x))


__all__ = ["STRATEGIES", "ShardedAttentionField", "shardable", "shardable_kernels", "sharded_drive"]
