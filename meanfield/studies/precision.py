"""Errors of the matmul precision modes against float64 (docs/precision.md).

:func:`drive_errors` measures the softmax drive ``F(x_i) = sum_j A_ij x_j`` of each mode against a
dense float64 NumPy reference (an independent formula, no JAX); :func:`flow_errors` runs a short
flow in each mode and compares ``|m|`` and the effective rank with a float64 run. Both need 64-bit
JAX for the float64 run (the caller enables it: ``jax.config.update("jax_enable_x64", True)``).
On a CPU the ``"tf32"`` mode is the exact emulation of the GPU's (``solvers.precision``), and
``"bf16"`` is the same arithmetic as on a GPU, so these errors are the GPU's up to accumulation
order (round-off of float32 sums, far below the input rounding).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from solvers import Softmax
from solvers.precision import MATMUL_PRECISIONS


def reference_drive(x: np.ndarray, alpha: float) -> np.ndarray:
    """Dense float64 softmax drive ``softmax(alpha x x^T) x`` (NumPy)."""
    x = np.asarray(x, np.float64)
    s = alpha * (x @ x.T)
    p = np.exp(s - s.max(axis=1, keepdims=True))
    return (p @ x) / p.sum(axis=1, keepdims=True)


def sphere_points(N: int, d: int, seed: int = 0, shift: float = 0.0) -> np.ndarray:
    """``N`` points on S^{d-1} (float64): normalised Gaussians plus ``shift`` along ``e_1``
    (0: uniform; larger: a cap around ``e_1``, whose flow clusters within a few layers)."""
    x = np.random.default_rng(seed).standard_normal((N, d)) / np.sqrt(d)
    x[:, 0] += shift
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def drive_errors(*, N: int = 4096, d: int = 64, alphas=(1.0, 10.0), modes=MATMUL_PRECISIONS, attention="streaming",
                 seed: int = 0) -> list[dict]:
    """Relative error of the float32 drive in each mode against float64, per ``alpha``.

    ``rel_fro = |F - F64|_F / |F64|_F`` and ``rel_max = max_i |F_i - F64_i| / |F64_i|``; the
    row ``"float32 inputs"`` is the error of merely rounding the tokens to float32 (the floor).
    """
    x = sphere_points(N, d, seed)
    x32 = jnp.asarray(x, jnp.float32)
    out = []
    for alpha in alphas:
        ref = reference_drive(x, alpha)
        norms = np.linalg.norm(ref, axis=1)
        for mode in modes:
            ker = Softmax(alpha, matmul_precision=mode, attention=attention)
            f = np.asarray(jax.jit(lambda y, k=ker: k.drive(y, y))(x32), np.float64)
            err = np.linalg.norm(f - ref, axis=1)
            out.append({"alpha": float(alpha), "mode": mode, "attention": attention,
                        "rel_fro": float(np.linalg.norm(f - ref) / np.linalg.norm(ref)),
                        "rel_max": float(np.max(err / norms))})
    return out


def flow_errors(*, N: int = 1024, d: int = 64, alpha: float = 5.0, layers: int = 4, dt: float = 1.0,
                shift: float = 0.3, modes=MATMUL_PRECISIONS, seed: int = 0) -> list[dict]:
    """``|m|`` and effective rank after ``layers`` softmax layers, each mode (float32) vs float64,
    from :func:`sphere_points` with ``shift`` (a cap that clusters within the run)."""
    from solvers import Softmax

    from meanfield.flow.driver import make_spec, run
    from meanfield.flow.options import SaveAt

    x = sphere_points(N, d, seed, shift)

    def last(sol):
        return float(sol.diagnostics["order_parameter"][-1]), float(sol.diagnostics["effective_rank"][-1])

    opts = dict(layers=layers, dt=dt, save=SaveAt(every=layers, diagnostics="exact"))

    def solve(x, dtype, mode="highest"):
        return run(make_spec(x, kernel=Softmax(alpha, matmul_precision=mode), dtype=dtype, **opts), check_memory=False)

    m64, r64 = last(solve(x, "float64"))
    out = []
    for mode in modes:
        m, r = last(solve(x.astype(np.float32), "float32", mode))
        out.append({"mode": mode, "alpha": alpha, "layers": layers, "m": m, "m_float64": m64,
                    "m_abs_err": abs(m - m64), "eff_rank": r, "eff_rank_float64": r64,
                    "eff_rank_rel_err": abs(r - r64) / r64})
    return out


__all__ = ["drive_errors", "flow_errors", "reference_drive", "sphere_points"]
