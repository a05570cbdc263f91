"""float32 vs float64 attention effective rank on the same uniform tokens (docs/limitations.md).

Columns: kernel, alpha, d, float64 rank, float32 rank (the library's route: TSQR factor for
softmax/usa), its relative error, and the relative error of the old float32 Gram route
(eigenvalues of a float32 ``A A^T``), reproduced here densely for comparison.
Writes no file (``--out`` and ``--overwrite`` are accepted, as by every example).

Run:   python examples/float32_rank_bias.py
Smoke: python examples/float32_rank_bias.py --smoke   (256 tokens, 64 queries, d = 4)
"""
import _common

args, out = _common.parse(__doc__)

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import meanfield as mf  # noqa: E402
from meanfield.stats.diagnostics import attention_statistics, effective_rank  # noqa: E402
from solvers.kernels import spectrum_from_gram  # noqa: E402

N, N_QUERY, DIMS = (256, 64, (4,)) if args.smoke else (2048, 512, (4, 16, 64))


def gram_route_rank(alpha, q, x):
    """Effective rank from the eigenvalues of the float32 Gram matrix of the softmax rows."""
    s = alpha * (q @ x.T)
    a = jnp.exp(s - s.max(axis=1, keepdims=True))
    a = a / a.sum(axis=1, keepdims=True)
    return float(effective_rank(spectrum_from_gram(a @ a.T)))


rng = np.random.default_rng(0)
for kern in [mf.Softmax(1.0), mf.Softmax(4.0), mf.Linear(0.25)]:
    _common.progress(f"{kern.name}, alpha = {float(kern.alpha):g}: d = {', '.join(map(str, DIMS))}")
    for d in DIMS:
        x = rng.normal(size=(N, d))
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        q = x[:N_QUERY]
        r64 = float(attention_statistics(kern, jnp.asarray(q), jnp.asarray(x))["effective_rank"])
        q32, x32 = jnp.asarray(q, jnp.float32), jnp.asarray(x, jnp.float32)
        r32 = float(attention_statistics(kern, q32, x32)["effective_rank"])
        old = f"{(gram_route_rank(float(kern.alpha), q32, x32) - r64) / r64:+.2e}" if kern.name == "softmax" else "-"
        print(kern.name, float(kern.alpha), d, f"{r64:.4f}", f"{r32:.4f}", f"{(r32 - r64) / r64:+.2e}", old)
