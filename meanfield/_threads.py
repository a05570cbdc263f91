"""BLAS thread limits around host LAPACK calls made from jitted code.

jaxlib's CPU eigensolvers call the OpenBLAS/LAPACK bundled with SciPy. Once XLA's own worker
threads exist (any JAX computation starts them), OpenBLAS's busy-waiting threads compete with
them for the cores: on this 2-core machine a 512 x 512 ``eigvalsh`` inside a jitted function took
3.4 s instead of 0.07 s. Limiting OpenBLAS to one thread for the duration of such a call removes
the contention without touching the user's global settings.
"""

from __future__ import annotations

import contextlib


@contextlib.contextmanager
def single_threaded_blas():
    """Limit every loaded BLAS to one thread inside the block (no-op without threadpoolctl)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl is a declared dependency
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield


def fetch(fn, *args):
    """Run the jitted ``fn(*args)`` with one BLAS thread and return its result on the host."""
    import jax

    with single_threaded_blas():
        return jax.device_get(fn(*args))
