"""Phase diagrams of clustering: inverse temperatures x systems x time, in one compiled program.

:func:`phase_diagram` reproduces the experiment of Geshkovski, Letrouit, Polyanskiy & Rigollet
(2023, "A mathematical perspective on Transformers", the phase diagrams of the clustering
probability against beta and time; reference code ``phase-diagrams.py`` of the authors'
repository 2023-transformers-rotf): for every beta of a grid and every one of ``n_systems``
independent systems of ``n`` tokens on ``S^{d-1}``, run the transformer layer

    x_i <- normalize(x_i + dt sum_j A_ij x_j),   A = softmax(beta <x_i, x_j>)   (docs/theory.md)

(the ``layer`` scheme of :func:`meanfield.solve_flow`, softmax kernel, ``alpha = beta``, merge 1)
and record, at the save times only, the statistics of the reference code:

* ``pair_fraction``: the fraction of ordered pairs ``i != j`` with ``<x_i, x_j> > pair_threshold``
  (0.999), averaged over the systems -- the probability that two tokens are in one cluster;
* ``clusters``: the number of clusters, the connected components of the graph
  ``<x_i, x_j> > cluster_threshold`` (0.9999); the reference code takes the rank of the 0/1
  matrix of that graph instead (``cluster_count="rank"``), which is the same number when the
  graph is a disjoint union of cliques (well-separated clusters) and larger otherwise (a chain of
  three tokens has rank 3). Median and mean over systems;
* ``order_parameter``: ``|m|`` (mean over systems).

Design (issue 11): the whole sweep is one ``jax.jit`` program. The ``len(betas) x n_systems``
(beta, system) pairs are cut into blocks of ``block`` pairs; ``lax.map`` runs the blocks one after
the other and, inside a block, ``lax.scan`` runs every step and every save, so a block's state
(``block x n x d``) and its Gram matrices stay in cache for the whole time loop. Initial systems
are shared by all betas (common random numbers: the differences between rows of the diagram are
not sampling noise), gathered per block, so ``len(betas)`` copies of them never exist.
``method="dense"`` uses :mod:`solvers.dense` (full ``n x n`` Gram matrices, for ``n`` up to a few
thousand); ``method="native"`` runs the same dense rollout as a hand-fused C++ kernel on the CPU
(:mod:`solvers.native`: eight float64 or sixteen float32 (beta, system) pairs per 512-bit vector,
each pair's state in L1 for all its steps, one exponential per pair ``i < j`` of the symmetric
weight matrix; ``threads`` OS threads share the pairs), which ``"auto"`` picks on the CPU when the
kernel compiled and the clusters are connected components; ``method="streaming"`` evaluates the drive with the blockwise ``Softmax`` and the
statistics row block by row block, for large ``n``.
"""

from __future__ import annotations

import dataclasses
import time
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import PartitionSpec as P

from solvers import native as _native
from solvers.dense import gram, gram_statistics, gram_statistics_blocked, layer_update
from solvers.kernels import Softmax
from solvers.sphere import normalize

from meanfield import _validate

METHODS = ("auto", "dense", "native", "streaming")
CLUSTER_COUNTS = ("components", "rank")
DENSE_MAX_N = 2048  # "auto" picks the dense path up to this many tokens per system


@dataclasses.dataclass(frozen=True)
class PhaseDiagram:
    """Result of :func:`phase_diagram`; arrays are NumPy, indexed ``[beta, save]``.

    ``per_system`` (only with ``per_system=True``) holds ``pairs`` and ``clusters`` (int32) and
    ``order_parameter``, each ``(len(betas), n_systems, len(t))``.
    """

    betas: np.ndarray
    t: np.ndarray
    steps: np.ndarray
    pair_fraction: np.ndarray
    clusters_median: np.ndarray
    clusters_mean: np.ndarray
    order_parameter: np.ndarray
    params: dict
    stats: dict
    per_system: dict | None = None


def save_steps(n_steps: int, n_saves: int) -> np.ndarray:
    """``n_saves`` step indices evenly spread over ``[0, n_steps]`` (rounded; both ends included)."""
    s = np.unique(np.round(np.linspace(0, n_steps, n_saves)).astype(np.int64))
    if len(s) != n_saves:
        raise ValueError(f"n_saves must be an integer in [2, n_steps + 1] = [2, {n_steps + 1}], got {n_saves}")
    return s


def _default_block(method: str, n: int, d: int, itemsize: int, total: int) -> int:
    if method == "streaming":
        return 1
    per_pair = n * (n + 2 * d) * itemsize  # Gram/weights and two (n, d) states
    budget = 2**21 if jax.default_backend() == "cpu" else 2**30  # ~ L2 of a core / ~1 GB of GPU memory
    return int(max(1, min(total, budget // per_pair)))


@partial(jax.jit, static_argnames=("method", "block", "query_block", "cluster_count", "threads"))
def phase_rollout(x0, betas, h, segments, pair_threshold, cluster_threshold, *, method="dense", block=256,
                  query_block=1024, cluster_count="components", threads=1):
    """Per-system statistics of every (beta, system) pair at the save points (pure, jitted).

    ``x0`` (B, n, d) unit tokens, shared by every beta; ``betas`` (nb,); ``h`` the step;
    ``segments`` (n_saves,) int32: the number of steps before each save (``segments[0]`` may be
    0, which saves the initial state). Returns ``(pairs, clusters, order_parameter)``, each
    ``(nb, B, n_saves)``; ``pairs`` counts ordered pairs ``i != j``; ``clusters`` counts connected
    components, or the rank of the thresholded matrix with ``cluster_count="rank"`` (dense only).
    ``block`` (beta, system) pairs are advanced together through all steps (see the module doc);
    ``method="native"`` ignores ``block`` and ``query_block`` and runs the C++ kernel of
    :mod:`solvers.native` on ``threads`` threads (components only, CPU only).
    """
    nb = betas.shape[0]
    B, n, d = x0.shape
    total = nb * B
    n_blocks = -(-total // block)
    pair = jnp.minimum(jnp.arange(n_blocks * block), total - 1).reshape(n_blocks, block)
    h = jnp.asarray(h, x0.dtype)
    betas = jnp.asarray(betas, x0.dtype)

    if method == "native":
        if cluster_count != "components":
            raise ValueError(f"cluster_count={cluster_count!r} needs method='dense' (native counts components)")
        return _native.phase_rollout(x0, betas, h, segments, pair_threshold, cluster_threshold, threads=threads)[:3]
    if method == "dense":
        def run_block(p):
            be = betas[p // B]
            x = x0[p % B]

            def step(_, c):  # the Gram matrix of the new state serves the next step or the save
                x = layer_update(c[0], c[1], be, h)
                return x, gram(x)

            def segment(c, n_steps):
                x, g = lax.fori_loop(0, n_steps, step, c)
                return (x, g), gram_statistics(x, pair_threshold, cluster_threshold, g, cluster_count)

            return lax.scan(segment, (x, gram(x)), segments)[1]
    else:
        if cluster_count != "components":
            raise ValueError(f"cluster_count={cluster_count!r} needs method='dense' (streaming counts components)")

        def one_step(x, b):
            kern = Softmax(b, key_block=query_block, query_block=query_block)
            return normalize(x + h * kern.drive(x, x))

        def stats(x):
            return jax.vmap(lambda y: gram_statistics_blocked(y, pair_threshold, cluster_threshold, query_block))(x)

        def run_block(p):
            be = betas[p // B]
            x = x0[p % B]

            def segment(x, n_steps):
                x = lax.fori_loop(0, n_steps, lambda _, y: jax.vmap(one_step)(y, be), x)
                return x, stats(x)

            return lax.scan(segment, x, segments)[1]

    out = lax.map(run_block, pair)  # each (n_blocks, n_saves, block)

    def unblock(a):
        a = jnp.moveaxis(a, 1, -1).reshape(n_blocks * block, -1)[:total]
        return a.reshape(nb, B, -1)

    return tuple(unblock(a) for a in out)


@partial(jax.jit, static_argnames=("mesh", "axis", "method", "block", "query_block", "cluster_count", "threads"))
def phase_rollout_sharded(x0, betas, h, segments, pair_threshold, cluster_threshold, *, mesh, axis: str,
                          method: str = "dense", block: int = 256, query_block: int = 1024,
                          cluster_count: str = "components", threads: int = 1):
    """:func:`phase_rollout` with the systems ``x0`` (B, n, d) sharded along ``axis``
    of ``mesh``: each device runs every beta on its ``B / P`` systems. Outputs ``(nb, B, T)``,
    sharded along ``B``."""

    def local(x, b, hh, seg, pt, ct):
        return phase_rollout(x, b, hh, seg, pt, ct, method=method, block=block, query_block=query_block,
                             cluster_count=cluster_count, threads=threads)

    rep = P()
    out = P(None, axis, None)
    return jax.shard_map(local, mesh=mesh, in_specs=(P(axis, None, None), rep, rep, rep, rep, rep),
                         out_specs=(out, out, out), check_vma=False)(
        x0, betas, h, segments, pair_threshold, cluster_threshold)


@partial(jax.jit, static_argnames=("n",))
def summarize(pairs, clusters, order_parameter, n: int):
    """Reduce per-system statistics ``(nb, B, T)`` over systems; ``pairs`` counts ordered pairs
    ``i != j`` of ``n`` tokens, so ``pair_fraction = pairs / (n (n - 1))`` averaged over systems."""
    return {
        "pair_fraction": jnp.mean(pairs, axis=1, dtype=order_parameter.dtype) / (n * (n - 1)),
        "clusters_median": jnp.median(clusters.astype(order_parameter.dtype), axis=1),
        "clusters_mean": jnp.mean(clusters, axis=1, dtype=order_parameter.dtype),
        "order_parameter": jnp.mean(order_parameter, axis=1),
    }


def _dtype(dtype):
    x64 = jax.config.read("jax_enable_x64")
    if dtype is None:
        return jnp.dtype(jnp.float64 if x64 else jnp.float32)
    name = dtype if isinstance(dtype, str) else jnp.dtype(dtype).name
    _validate.choice("precision", name, ("float32", "float64"))
    if name == "float64" and not x64:
        raise ValueError('precision float64 needs 64-bit JAX: call jax.config.update("jax_enable_x64", True) first')
    return jnp.dtype(name)


def _betas(betas) -> np.ndarray:
    return _validate.alphas("betas", betas)


def _x0(x0, n_systems, n, d, key, dtype):
    if x0 is None:
        key = jax.random.PRNGKey(key) if isinstance(key, int) else key
        return normalize(jax.random.normal(key, (n_systems, n, d), dtype))
    arr = _validate.batch_tokens(x0, name="x0", min_n=2)
    return normalize(jnp.asarray(arr, dtype))


def phase_diagram(betas, *, n: int = 32, d: int = 8, n_systems: int = 2048, t1: float = 30.0,
                  dt: float = 0.1, n_saves: int = 100, x0=None, key=0, dtype=None, method: str = "auto",
                  pair_threshold: float = 0.999, cluster_threshold: float = 0.9999, per_system: bool = False,
                  cluster_count: str = "components", block: int | None = None, query_block: int = 1024,
                  mesh=None, mesh_axis: str | None = None, threads: int | None = None) -> PhaseDiagram:
    """Clustering statistics over a grid of inverse temperatures and time (see the module doc).

    Parameters
    ----------
    betas : 1-D array of inverse temperatures ``beta >= 0`` (``alpha`` elsewhere in meanfield).
    n, d, n_systems : tokens per system (>= 2), dimension (>= 2), systems per beta (>= 1).
        Ignored when ``x0`` is given.
    t1, dt : final time and step; ``t1`` must be a whole number of steps (``t1 / dt``).
    n_saves : number of save times, spread evenly over the steps ``[0, t1/dt]`` (both ends
        included, rounded to whole steps); statistics are computed at those steps only.
    x0 : optional ``(n_systems, n, d)`` initial tokens (rows normalised), shared by every beta.
        By default ``n_systems`` systems of uniform tokens drawn with ``key`` (int seed or key).
    dtype : ``"float32"`` or ``"float64"`` [float64 when 64-bit JAX is enabled, else float32].
    method : ``"dense"``, ``"native"``, ``"streaming"`` or ``"auto"``: up to ``n = 2048`` tokens
        ``"native"`` (the C++ kernel of :mod:`solvers.native`) on the CPU when it is available and
        ``cluster_count="components"``, else ``"dense"``; ``"streaming"`` above. ``"native"``
        asked for explicitly raises ``ValueError`` with the reason when the kernel is unavailable.
    pair_threshold, cluster_threshold : cosine thresholds in ``(-1, 1)``.
    cluster_count : ``"components"`` (connected components of the threshold graph) or ``"rank"``
        (rank of its 0/1 matrix, the reference code's count; dense path only, ``O(n^3)`` per save).
    per_system : also return the per-system statistics (``len(betas) x n_systems x n_saves``).
    block : (beta, system) pairs advanced together [CPU: as many as fit ~2 MB; GPU: ~1 GB]
        (not used by ``"native"``, which advances 8 float64 / 16 float32 pairs per vector).
    threads : OS threads of ``"native"`` [``solvers.native.default_threads()``: the CPUs this process
        may use, or ``$MEANFIELD_NATIVE_THREADS``; 1 per device with a ``mesh``].
    query_block : row block of the streaming path (its key block too).
    mesh, mesh_axis : a :class:`jax.sharding.Mesh` to shard the systems over (along ``mesh_axis``,
        by default the mesh's only axis); ``n_systems`` must be divisible by its devices
        (:func:`phase_rollout_sharded`; docs/sharding.md).

    Returns
    -------
    :class:`PhaseDiagram` with ``betas``, ``t`` (save times ``steps * dt``), ``steps``, and
    ``(len(betas), n_saves)`` arrays ``pair_fraction``, ``clusters_median``, ``clusters_mean``,
    ``order_parameter``.

    Differences from the reference code: it draws new systems for every beta (here they are
    shared), records its time-0 checkpoint after the first step (here the initial state), and
    counts clusters by a matrix rank (here by connected components unless ``cluster_count="rank"``;
    see the module doc). ``stats["wall_time"]`` includes compilation on a first call.
    """
    b = _betas(betas)
    dtype = _dtype(dtype)
    _validate.choice("method", method, METHODS)
    _validate.choice("cluster_count", cluster_count, CLUSTER_COUNTS)
    if x0 is None:
        n = _validate.integer("n", n, 2)
        d = _validate.integer("d", d, 2)
        n_systems = _validate.integer("n_systems", n_systems, 1)
    dt = _validate.real("dt", dt, minimum=0.0, open_min=True)
    t1 = _validate.real("t1", t1, minimum=0.0, open_min=True)
    n_steps = int(round(t1 / dt))
    if n_steps < 1 or abs(n_steps * dt - t1) > 1e-9 * t1:
        raise ValueError(f"t1 must be a whole number of steps dt = {dt:g}, got t1 = {t1:g}")
    n_saves = _validate.integer("n_saves", n_saves, 2)
    steps = save_steps(n_steps, n_saves)
    pt = _validate.real("pair_threshold", pair_threshold, minimum=-1.0, maximum=1.0, open_min=True, open_max=True)
    ct = _validate.real("cluster_threshold", cluster_threshold, minimum=-1.0, maximum=1.0, open_min=True,
                        open_max=True)
    query_block = _validate.integer("query_block", query_block, 1)
    x = _x0(x0, n_systems, n, d, key, dtype)
    n_systems, n, d = x.shape
    if method == "auto":
        method = "dense" if n <= DENSE_MAX_N else "streaming"
        if method == "dense" and cluster_count == "components" and _native.use_native(None):
            method = "native"
    elif method == "native":
        _native.use_native(True)  # ValueError with the reason when the kernel is unavailable
    threads = (1 if mesh is not None else _native.default_threads()) if threads is None else _validate.integer(
        "threads", threads, 1)
    if cluster_count == "rank" and method != "dense":
        raise ValueError(f"cluster_count='rank' needs method='dense', got method={method!r}")
    n_dev = 1
    if mesh is not None:
        from meanfield.studies.sharding import mesh_axis as checked_axis, shard_batch

        mesh_axis = checked_axis(mesh, mesh_axis)
        n_dev = mesh.shape[mesh_axis]
        x = shard_batch(np.asarray(x), mesh, mesh_axis)
    total = len(b) * n_systems // n_dev  # (beta, system) pairs per device
    block = (_default_block(method, n, d, dtype.itemsize, total) if block is None
             else min(_validate.integer("block", block, 1), total))
    segments = jnp.asarray(np.diff(steps, prepend=0), jnp.int32)
    args = (x, jnp.asarray(b, dtype), jnp.asarray(dt, dtype), segments, jnp.asarray(pt, dtype), jnp.asarray(ct, dtype))
    t0 = time.perf_counter()
    if mesh is None:
        raw = phase_rollout(*args, method=method, block=block, query_block=query_block, cluster_count=cluster_count,
                            threads=threads)
    else:
        raw = phase_rollout_sharded(*args, mesh=mesh, axis=mesh_axis, method=method, block=block,
                                    query_block=query_block, cluster_count=cluster_count, threads=threads)
    raw = jax.block_until_ready(raw)
    wall = time.perf_counter() - t0
    pairs, clusters, m = raw
    red = jax.device_get(summarize(pairs, clusters, m, n))
    params = {"n": n, "d": d, "n_systems": n_systems, "t1": t1, "dt": dt, "n_steps": n_steps,
              "n_saves": n_saves, "method": method, "block": block, "precision": dtype.name,
              "pair_threshold": pt, "cluster_threshold": ct, "cluster_count": cluster_count,
              "shared_initial_systems": True,
              "scheme": "layer", "kernel": "softmax", "devices": n_dev,
              "threads": threads if method == "native" else None}
    ps = None
    if per_system:
        ps = {"pairs": np.asarray(pairs), "clusters": np.asarray(clusters), "order_parameter": np.asarray(m)}
    return PhaseDiagram(betas=b, t=steps * dt, steps=steps, params=params,
                        stats={"wall_time": wall, "n_pairs_beta_system": len(b) * n_systems}, per_system=ps,
                        **{k: np.asarray(v) for k, v in red.items()})


__all__ = ["PhaseDiagram", "phase_diagram", "phase_rollout", "phase_rollout_sharded", "save_steps", "summarize"]
