"""float32 vs float64 attention effective rank along a softmax collapse (docs/limitations.md).

softmax, N = 2048, d = 16, alpha = 1, 24 layers; prints the effective rank from layer 10 on.
The two precisions draw different initial samples (same seed), so only the late layers compare.
Writes no file (``--out`` and ``--overwrite`` are accepted, as by every example).

Run:   python examples/float32_collapse_rank.py
Smoke: python examples/float32_collapse_rank.py --smoke   (N = 256, 12 layers)
"""
import _common

args, out = _common.parse(__doc__)

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)
import meanfield as mf  # noqa: E402

N, LAYERS = (256, 12) if args.smoke else (2048, 24)
for dt in ("float32", "float64"):
    _common.progress(f"{dt}: N = {N}, {LAYERS} layers")
    sol = mf.solve_flow(mf.Uniform(16), N=N, kernel=mf.Softmax(1.0), layers=LAYERS, dtype=dt)
    r = sol.diagnostics["effective_rank"]
    print(dt, f"layers 10..{LAYERS}:", " ".join(f"{v:.4f}" for v in r[10:]))
