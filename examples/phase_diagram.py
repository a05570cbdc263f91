"""Phase diagrams of clustering in (beta, t) for n = 32 tokens, d = 8, 128 and 1024.

Reproduces: the phase diagrams of Geshkovski, Letrouit, Polyanskiy & Rigollet (2023), "A
mathematical perspective on Transformers" (reference code ``phase-diagrams.py`` of their
repository 2023-transformers-rotf): for each inverse temperature beta (y-axis) and time t
(x-axis), the probability that two tokens of a system are in one cluster -- the fraction of pairs
``i != j`` with ``<x_i, x_j> > 0.999`` -- averaged over independent systems of n = 32 uniform
tokens, under the transformer layer ``x <- normalize(x + dt softmax(beta <x, x>) x)``, dt = 0.1,
up to t = 30 (300 layers). In every dimension the tokens end in one cluster at small beta, while
at large beta they stay apart for a long, metastable time; the boundary moves with d.

Sizes: ``--full`` is the authors' setting (90 betas in [0.1, 9] x 2 048 systems, 200 save times,
float64; meant for a GPU -- 2.3e14 FLOP of matrix products for d = 1024). The default is a
reduced CPU run (24 betas x 64 systems, 61 save times, float32 for d = 1024): 2 min 45 s on 2
shared CPU cores at a load average of ~12 (64 s of CPU time), most of it d = 1024.

Run:   python examples/phase_diagram.py --out docs/img --overwrite [--full]   (writes phase_diagram.png
       and prints the wall time of each panel)
Smoke: python examples/phase_diagram.py --smoke --out /tmp/x   (4 betas x 4 systems, t = 0..10)
Library: :func:`meanfield.studies.phase.phase_diagram`, docs/phase_diagrams.md.
"""

import time

import _common


def check(args):
    if args.full and args.smoke:
        _common.error("--full and --smoke exclude each other")


args, out = _common.parse(__doc__, outputs=["phase_diagram.png"], check=check, options=lambda p: p.add_argument(
    "--full", action="store_true", help="the authors' sizes (GPU)"))

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from meanfield.studies.phase import phase_diagram  # noqa: E402
from meanfield.plots.figures import draw_phase_diagram  # noqa: E402

# ---------------------------------------------------------------- Parameters
N_TOKENS, DIMS, T1, DT = 32, (8, 128, 1024), 30.0, 0.1
if args.full:
    BETAS, SYSTEMS, SAVES = np.linspace(0.1, 9.0, 90), 2048, 200
    PRECISION = {8: "float64", 128: "float64", 1024: "float64"}
elif args.smoke:
    BETAS, SYSTEMS, SAVES, T1 = np.linspace(0.1, 9.0, 4), 4, 21, 10.0
    PRECISION = {8: "float64", 128: "float64", 1024: "float32"}
else:
    BETAS, SYSTEMS, SAVES = np.linspace(0.1, 9.0, 24), 64, 61
    PRECISION = {8: "float64", 128: "float64", 1024: "float32"}

# ---------------------------------------------------------------- Setup / Solve
print(f"jax {jax.__version__} on {jax.default_backend()}; {len(BETAS)} betas x {SYSTEMS} systems, n = {N_TOKENS}, "
      f"t = 0..{T1:g} (dt = {DT}), {SAVES} saves")
results = {}
for d in DIMS:
    _common.progress(f"d = {d}: {len(BETAS)} betas x {SYSTEMS} systems")
    t0 = time.perf_counter()
    results[d] = phase_diagram(BETAS, n=N_TOKENS, d=d, n_systems=SYSTEMS, t1=T1, dt=DT, n_saves=SAVES, key=d,
                               dtype=PRECISION[d])
    print(f"d = {d:4d} ({PRECISION[d]}): {time.perf_counter() - t0:6.1f} s (including compilation)")

# ---------------------------------------------------------------- Analysis
for d, pd in results.items():
    # first save time at which half of the pairs are clustered, at the smallest and largest beta
    def t_half(row):
        k = np.flatnonzero(row >= 0.5)
        return f"{pd.t[k[0]]:.1f}" if k.size else f"> {pd.t[-1]:g}"

    print(f"d = {d:4d}: pair fraction 1/2 reached at t = {t_half(pd.pair_fraction[0])} (beta = {pd.betas[0]:.1f}), "
          f"t = {t_half(pd.pair_fraction[-1])} (beta = {pd.betas[-1]:.1f}); final median clusters "
          f"{pd.clusters_median[0, -1]:g} and {pd.clusters_median[-1, -1]:g}")

# ---------------------------------------------------------------- Plot
fig, axes = plt.subplots(1, len(DIMS), figsize=(4.2 * len(DIMS), 3.6), constrained_layout=True)
for ax, (d, pd) in zip(axes, results.items()):
    mesh = draw_phase_diagram(pd, ax, quantity="pair_fraction", vmin=0.0, vmax=1.0)
    ax.set_title(f"d = {d}, n = {N_TOKENS}")
fig.colorbar(mesh, ax=axes, label=r"P($\langle x_i, x_j\rangle > 0.999$)")
out.figure("phase_diagram.png", fig, dpi=110)
