"""Past one device: ensembles sharded along the batch axis, one large system along the token axis.

Built on ``jax.sharding`` (a 1-D :class:`jax.sharding.Mesh`, ``NamedSharding``) and
``jax.shard_map``; see docs/sharding.md for the multi-host recipe.

* **Batch axis** (independent systems): :func:`shard_batch` places a ``(B, ...)`` array with
  ``NamedSharding(mesh, P(axis))``. :func:`advance_ensemble` advances ``B`` systems with the
  particle integrators (``jax.jit`` of a ``vmap``; GSPMD keeps every system on its device, no
  communication). :func:`meanfield.studies.phase.phase_rollout_sharded` (beside the rollout it wraps, and built on
  :func:`shard_batch`) runs the phase-diagram rollout on each device's systems (``shard_map``; the
  betas are replicated); ``phase_diagram(..., mesh=mesh)`` uses it.
* **Token axis** (one system of ``N`` tokens): :func:`shard_tokens` splits the ``(N, d)`` state in
  ``P`` row blocks; :func:`advance_sharded` runs an integrator on the local rows inside
  ``shard_map`` with :class:`solvers.distributed.ShardedAttentionField`: an all-reduce of the
  moments for ``linear``; for ``softmax``/``usa`` an all-gather of the keys (``strategy="gather"``,
  ``N d`` floats per device) or a ring of ``lax.ppermute`` (``strategy="ring"``, ``2 N d / P``).

Results equal the single-device ones up to round-off (the sums are taken in another order).
``shard_map`` is called with ``check_vma=False``: the solvers' loops start their carries from
constants, which its varying-axis type check would reject; the communication is explicit
(``psum``, ``all_gather``, ``ppermute``) and tested against one device.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from solvers import AttentionField, make_integrator, make_kernel, normalize
from solvers.distributed import STRATEGIES, ShardedAttentionField, shardable_kernels

from meanfield import _validate


def device_mesh(axis: str = "batch", n_devices: int | None = None, devices=None) -> Mesh:
    """A 1-D mesh named ``axis`` over the first ``n_devices`` of ``devices`` [all of ``jax.devices()``,
    which spans every host after ``jax.distributed.initialize()``]."""
    devs = list(jax.devices() if devices is None else devices)
    k = len(devs) if n_devices is None else _validate.integer("n_devices", n_devices, 1)
    if k > len(devs):
        raise ValueError(f"n_devices must be <= {len(devs)} (the devices available), got {n_devices}")
    return Mesh(np.array(devs[:k]), (axis,))


def mesh_axis(mesh: Mesh, axis: str | None = None) -> str:
    """``axis``, checked to be an axis of ``mesh``; ``None``: the mesh's only axis."""
    if axis is None:
        if len(mesh.axis_names) != 1:
            raise ValueError(f"give axis: the mesh has axes {mesh.axis_names}")
        return mesh.axis_names[0]
    if axis not in mesh.axis_names:
        raise ValueError(f"axis {axis!r} is not an axis of the mesh {mesh.axis_names}")
    return axis


def _split(name, length, mesh, axis):
    k = mesh.shape[axis]
    if length % k:
        raise ValueError(f"{name} = {length} must be a multiple of the {k} devices along mesh axis {axis!r}")


def shard_batch(x, mesh: Mesh, axis: str | None = None) -> jax.Array:
    """``x`` of shape ``(B, ...)`` placed with ``NamedSharding(mesh, P(axis))`` (``B`` divisible by the
    number of devices along ``axis``)."""
    axis = mesh_axis(mesh, axis)
    x = x if isinstance(x, jax.Array) else np.asarray(x)  # host data goes straight to its shards
    _split("the batch size B", x.shape[0], mesh, axis)
    return jax.device_put(x, NamedSharding(mesh, P(axis)))


def shard_tokens(x, mesh: Mesh, axis: str | None = None) -> jax.Array:
    """One system's ``(N, d)`` tokens split in row blocks over the devices along ``axis`` (normalised)."""
    axis = mesh_axis(mesh, axis)
    x = _validate.tokens(x)
    if not np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float64 if jax.config.read("jax_enable_x64") else np.float32)
    _split("the number of tokens N", x.shape[0], mesh, axis)
    x = x / np.linalg.norm(x, axis=1, keepdims=True)  # on the host: each device receives only its rows
    return jax.device_put(x, NamedSharding(mesh, P(axis, None)))


@partial(jax.jit, static_argnames=("mesh", "axis", "kernel", "method", "strategy", "n_steps", "kernel_options"))
def _advance_tokens(x, alpha, mobility, h, *, mesh, axis, kernel, method, strategy, n_steps, kernel_options):
    integ = make_integrator(method)

    def local(x, alpha, mobility, h):
        field = ShardedAttentionField(make_kernel(kernel, alpha, **dict(kernel_options)), mobility, axis, strategy)
        return integ.advance(field, x, n_steps, h)[0]

    return jax.shard_map(local, mesh=mesh, in_specs=(P(axis, None), P(), P(), P()), out_specs=P(axis, None),
                         check_vma=False)(
        x, alpha, mobility, h)


def advance_sharded(x, *, mesh: Mesh, kernel: str = "softmax", alpha: float = 1.0, h: float = 0.1,
                    n_steps: int = 1, method: str = "layer", merge: float = 1.0, strategy: str = "gather",
                    axis: str | None = None, kernel_options: dict | None = None) -> jax.Array:
    """Advance ONE system of ``N`` tokens, sharded along the token axis, by ``n_steps`` steps of ``h``.

    ``x``: ``(N, d)`` tokens (use :func:`shard_tokens`; an unsharded array is placed by it), ``N``
    divisible by the devices along ``axis``. ``kernel`` one of
    ``solvers.distributed.shardable_kernels()`` (linear, softmax, usa), ``method`` in layer/euler/heun (the fixed-step schemes of :mod:`solvers.integrators`), ``strategy`` in
    gather/ring for softmax and usa (ignored by linear, which all-reduces the moments). Returns the
    ``(N, d)`` tokens, sharded like ``x``.
    """
    axis = mesh_axis(mesh, axis)
    _validate.choice("kernel", kernel, shardable_kernels())
    _validate.choice("method", method, ("layer", "euler", "heun"))
    _validate.choice("strategy", strategy, STRATEGIES)
    n_steps = _validate.integer("n_steps", n_steps, 0)
    alpha = _validate.real("alpha", alpha, minimum=0.0)
    h = _validate.real("h", h, minimum=0.0, open_min=True)
    merge = _validate.real("merge", merge, minimum=1.0)
    sharding = NamedSharding(mesh, P(axis, None))
    if not (isinstance(x, jax.Array) and x.sharding == sharding):
        x = shard_tokens(x, mesh, axis)
    _split("the number of tokens N", x.shape[0], mesh, axis)
    dtype = x.dtype
    return _advance_tokens(x, jnp.asarray(alpha, dtype), jnp.asarray(1.0 / merge, dtype), jnp.asarray(h, dtype), mesh=mesh,
                           axis=axis, kernel=kernel, method=method, strategy=strategy, n_steps=n_steps,
                           kernel_options=tuple(sorted((kernel_options or {}).items())))


@partial(jax.jit, static_argnames=("kernel", "method", "n_steps", "kernel_options"))
def _advance_batch(x, alpha, mobility, h, *, kernel, method, n_steps, kernel_options):
    integ = make_integrator(method)

    def one(y, a):
        field = AttentionField(make_kernel(kernel, a, **dict(kernel_options)), mobility)
        return integ.advance(field, y, n_steps, h)[0]

    return jax.vmap(one)(x, alpha)


def advance_ensemble(x, *, mesh: Mesh, kernel: str = "softmax", alpha=1.0, h: float = 0.1, n_steps: int = 1,
                     method: str = "layer", merge: float = 1.0, axis: str | None = None,
                     kernel_options: dict | None = None) -> jax.Array:
    """Advance ``B`` independent systems ``x`` (B, N, d), sharded along the batch axis, by ``n_steps``
    steps; ``alpha`` a number or one per system ``(B,)``. Each device advances its own systems
    (``jax.jit`` propagates the ``NamedSharding(mesh, P(axis))`` of the inputs; no communication).
    Returns ``(B, N, d)`` sharded like the input."""
    axis = mesh_axis(mesh, axis)
    _validate.choice("kernel", kernel, shardable_kernels())
    _validate.choice("method", method, ("layer", "euler", "heun"))
    n_steps = _validate.integer("n_steps", n_steps, 0)
    h = _validate.real("h", h, minimum=0.0, open_min=True)
    merge = _validate.real("merge", merge, minimum=1.0)
    a = _validate.alphas("alpha", alpha, _validate.batch_tokens(x, name="x").shape[0])
    x = jnp.asarray(x)
    xs = shard_batch(normalize(x), mesh, axis)
    al = shard_batch(jnp.asarray(a, x.dtype), mesh, axis)
    return _advance_batch(xs, al, jnp.asarray(1.0 / merge, x.dtype), jnp.asarray(h, x.dtype), kernel=kernel,
                          method=method, n_steps=n_steps, kernel_options=tuple(sorted((kernel_options or {}).items())))


__all__ = ["advance_ensemble", "advance_sharded", "device_mesh", "mesh_axis", "shard_batch", "shard_tokens"]
