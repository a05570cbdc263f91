"""float32 vs float64 attention effective rank along a softmax collapse (docs/limitations.md).

softmax, N = 2048, d = 16, alpha = 1, 24 layers; prints the effective rank from layer 10 on.
The two precisions draw different initial samples (same seed), so only the late layers compare.
"""
import jax

jax.config.update("jax_enable_x64", True)
import meanfield as mf  # noqa: E402

for dt in ("float32", "float64"):
    sol = mf.solve_flow(mf.Uniform(16), N=2048, kernel="softmax", alpha=1.0, layers=24, dtype=dt)
    r = sol.diagnostics["effective_rank"]
    print(dt, "layers 10..24:", " ".join(f"{v:.4f}" for v in r[10:]))
