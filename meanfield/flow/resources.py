"""Resources a run needs, estimated from its sizes before anything is allocated.

:func:`estimate_memory` adds up the arrays a run holds at its peak (tokens and integrator stages,
the kernel's streamed blocks, the diagnostics' query Gram matrix and token-covariance spectrum, saved
snapshots) from ``N``, ``d``, the kernel's block sizes, the method, ``n_query`` and the dtype. It is
an order-of-magnitude guard (it does not model XLA's temporaries exactly; a margin factor covers
them), used to refuse runs that cannot fit *before* they start: :func:`check_memory` compares it
with the memory the system reports as available. :func:`check_sizes` rejects sizes JAX cannot
index (32-bit array indices) with one line instead of an ``OverflowError`` traceback.
"""

from __future__ import annotations

import numpy as np

INT32_MAX = 2**31 - 1
RUNTIME_BYTES = 400 * 2**20
"""Resident size of the Python + JAX runtime itself (measured ~0.3-0.4 GiB on CPU)."""
MARGIN = 1.5
"""Safety factor on the summed arrays for XLA temporaries that the sum does not list."""
STAGE_COPIES = {"layer": 3, "euler": 3, "heun": 5, "adaptive": 14, "characteristics": 7}
"""Live ``(N, d)`` arrays of one step, per method (state, stages, error estimate, output)."""


def _itemsize(spec) -> int:
    return int(np.dtype(spec.dtype).itemsize)


def check_sizes(N: int, d: int, n_saves: int = 1, save_tokens: bool = False) -> None:
    """Refuse sizes whose arrays JAX cannot index (32-bit indices): one ``ValueError`` line."""
    if N * d > INT32_MAX:
        raise ValueError(f"N * d = {N} * {d} = {N * d:.3g} elements exceeds the 2^31 - 1 that one JAX array can "
                         "index; use fewer tokens or a smaller d")
    if save_tokens and n_saves * N * d > INT32_MAX:
        raise ValueError(f"save_tokens would store {n_saves} x {N} x {d} = {n_saves * N * d:.3g} elements, more than "
                         "2^31 - 1; save fewer steps (save_every) or drop save_tokens")


def estimate_memory(spec) -> int:
    """Peak memory (bytes) of running ``spec`` (a ``FlowSpec``), from its sizes; see the module doc."""
    s = _itemsize(spec)
    N, d = int(spec.N), int(spec.d)
    n = min(int(spec.n_query), N)
    n_saves = len(spec.save_steps)
    method = spec.method.name
    own = getattr(spec.method, "array_bytes", None)
    if callable(own):  # a method that knows its arrays (the grid solvers of meanfield.flow.density)
        return int(RUNTIME_BYTES + MARGIN * own(spec))
    kernel = spec.kernel
    kb = int(getattr(kernel, "key_block", 1024))
    qb = int(getattr(kernel, "query_block", 1024))
    state = STAGE_COPIES.get(method, 6) * N * d
    if kernel.family == "profile":
        from solvers.fused import use_fused  # JAX: an estimate is made for a run about to start

        fused = use_fused(getattr(kernel, "attention", "streaming"))  # solvers.fused: all keys per query block
        drive = 3 * min(qb, N) * (N if fused else min(kb, N)) + 2 * N * d
    else:
        drive = 2 * N * d + 4 * d * d
    # attention Gram, streamed rows, tokens, and the token-covariance spectrum: its d x d form, or for N < d
    # the N x N Gram form (meanfield.stats.diagnostics.covariance_spectrum), so min(d, N)^2
    diagnostics = 4 * n * n + 3 * n * min(kb, N) + 4 * N * d + 4 * min(d, N) ** 2
    host = N * d + (n_saves * N * d if spec.save_tokens else 0)  # final tokens (and snapshots) on the host
    peak = max(state + drive, state + diagnostics) + host
    return int(RUNTIME_BYTES + MARGIN * peak * s)


def available_memory() -> int | None:
    """Bytes the system can still give this process: MemAvailable, capped by a cgroup limit."""
    avail = None
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        with open("/sys/fs/cgroup/memory.max") as fh:
            limit = fh.read().strip()
        with open("/sys/fs/cgroup/memory.current") as fh:
            used = int(fh.read().strip())
        if limit != "max":
            room = int(limit) - used
            avail = room if avail is None else min(avail, room)
    except (OSError, ValueError):
        pass
    return avail


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.3g} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.3g} PiB"


def check_memory(spec, *, flag: str = "check_memory=False") -> int:
    """The estimate of ``spec``; ``ValueError`` (one line) if it exceeds the available memory.

    ``flag`` names the override in the message (``--no-memory-check`` on the command line).
    """
    need = estimate_memory(spec)
    avail = available_memory()
    if avail is not None and need > avail:
        raise ValueError(f"this run needs about {format_bytes(need)} of memory but {format_bytes(avail)} is available "
                         f"(N={spec.N}, d={spec.d}, {spec.kernel.name}/{spec.method.name}, "
                         f"{np.dtype(spec.dtype).name}); reduce N, d or n_query, or pass {flag} to try anyway")
    return need


def results_size(spec) -> int:
    """Rough size (bytes) of the run's results file, for the free-disk-space check."""
    n_saves = len(spec.save_steps)
    s = _itemsize(spec)
    size = 64 * 1024 + n_saves * (40 + min(spec.n_query, spec.N)) * 8
    saved = getattr(spec.method, "saved_bytes", None)
    if callable(saved):  # a method that knows what it saves (the grid solvers)
        return size + saved(spec)
    size += spec.N * spec.d * s
    if spec.save_tokens:
        size += n_saves * spec.N * spec.d * s
    return size
