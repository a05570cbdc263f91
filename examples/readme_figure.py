"""Reproduce the README figure: collapse of N = 10 000 tokens on S^3 over 24 layers.

What it reproduces: ``docs/img/collapse.png``, the four diagnostics of the default
``python -m meanfield.simulate --N 10000 --d 4`` run (linear kernel of the paper's Eq. 3,
alpha = 0.25, uniform start, literal transformer layers with h = 1), plus the same run with the
paper's fusion strength m = 0.5 (M = 2) to show the mobility time change of docs/theory.md.
Runtime: about 15 s on a 2-core CPU.

Run:   python examples/readme_figure.py --out docs/img --overwrite   (writes collapse.png)
Smoke: python examples/readme_figure.py --smoke --out /tmp/x         (N = 500, 8 layers)
"""

import _common

args, out = _common.parse(__doc__, outputs=["collapse.png"])

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import meanfield as mf  # noqa: E402

# --- Parameters -------------------------------------------------------------------------------
N, D, ALPHA, LAYERS = (500, 4, 0.25, 8) if args.smoke else (10_000, 4, 0.25, 24)
FUSION = 0.5

# --- Setup ------------------------------------------------------------------------------------
init = mf.Uniform(D)

# --- Solve ------------------------------------------------------------------------------------
runs = {}
for label, fusion in (("M = 1", 0.0), (f"fusion m = {FUSION} (M = {1 / (1 - FUSION):g})", FUSION)):
    _common.progress(f"solving {label}: N = {N}, d = {D}, {LAYERS} layers")
    runs[label] = mf.solve_flow(init, N=N, kernel=mf.Linear(ALPHA), layers=LAYERS, key=0,
                                merge=mf.Fusion(fusion) if fusion else None)

# --- Analysis ---------------------------------------------------------------------------------
for label, sol in runs.items():
    m = sol.diagnostics["order_parameter"]
    crossing = mf.theory.collapse_time(sol.layers, m, threshold=0.5)
    print(f"{label:28s} |m|: {m[0]:.4f} -> {m[-1]:.6f}; |m| = 0.5 at layer {crossing.time:.2f}")

# --- Plot -------------------------------------------------------------------------------------
_common.progress("plotting")
fig, axes = plt.subplots(2, 2, figsize=(9, 6.5), sharex=True, constrained_layout=True)
panels = [("order_parameter", "order parameter |m|"), ("effective_rank", "attention effective rank"),
          ("normalized_entropy", "normalised spectral entropy"), ("entropy_rate", "entropy rate dH/dt")]
for ax, (name, label) in zip(axes.flat, panels):
    for run_label, sol in runs.items():
        ax.plot(sol.layers, sol.diagnostics[name], marker="o", ms=3, label=run_label)
    ax.set_ylabel(label)
    ax.grid(alpha=0.3)
axes[0, 0].set_yscale("log")
axes[0, 0].legend()
for ax in axes[-1]:
    ax.set_xlabel("layer")
fig.suptitle(f"linear kernel (Eq. 3), N = {N}, tokens on S^{D - 1}, alpha = {ALPHA}, h = 1 per layer")
out.figure("collapse.png", fig, dpi=110)
