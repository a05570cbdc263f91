"""Metastable clusters on the circle (d = 2) at large alpha: particles and the density solver.

Reproduces: the clustering picture of Geshkovski–Letrouit–Polyanskiy–Rigollet (2023) for softmax
self-attention on S^1 -- from a nearly uniform start, tokens first gather into several clusters
(their number is set by the most unstable Fourier mode of the uniform state, which grows with alpha)
which then persist for a long, metastable time before merging.  The finite-volume density solver
(docs/theory.md "Density solvers", 3) and N particles started from the same density show the same
cluster count; the grid solver flags when the clusters become narrower than a cell.

Runtime: about 15 s on 2 shared CPU cores.

Run:   python examples/circle_clusters.py --out docs/img --overwrite   (writes circle_clusters.png)
Smoke: python examples/circle_clusters.py --smoke --out /tmp/x         (256 cells, 100 particles)
"""

import time

import _common

args, out = _common.parse(__doc__, outputs=["circle_clusters.png"])

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from jax import lax  # noqa: E402

from solvers.characteristics import dense_field, heun_step  # noqa: E402
from solvers.circle import circle_cell_averages, make_circle_solver  # noqa: E402
from solvers.finite_volume import rollout  # noqa: E402
from solvers.kernels import make_kernel  # noqa: E402

jax.config.update("jax_enable_x64", True)

# ---------------------------------------------------------------- Parameters
KERNEL, ALPHA = "softmax", 30.0
CELLS, N_PARTICLES = (256, 100) if args.smoke else (1024, 400)
DT, LAYERS, SUBSTEPS = 0.25, 160, 3  # t = 0 .. 40
SEED = 0


def log_rho0(th):
    """Nearly uniform start: small smooth perturbation (log density, unnormalized)."""
    return 0.04 * np.cos(3 * th + 0.3) + 0.03 * np.sin(7 * th) + 0.02 * np.cos(11 * th - 1.0)


# ---------------------------------------------------------------- Setup
solver = make_circle_solver(CELLS, KERNEL, alpha=ALPHA)
rho0 = circle_cell_averages(log_rho0, CELLS)
theta = np.asarray(solver.centers)
cdf = np.concatenate([[0.0], np.cumsum(rho0 * 2 * np.pi / CELLS)])
u = np.random.default_rng(SEED).uniform(size=N_PARTICLES)
th0 = np.interp(u, cdf, np.linspace(-np.pi, np.pi, CELLS + 1))  # inverse CDF of the same density
x0 = jnp.asarray(np.stack([np.cos(th0), np.sin(th0)], 1))
field = dense_field(make_kernel(KERNEL, ALPHA))

# ---------------------------------------------------------------- Solve
_common.progress(f"density solver: {LAYERS} layers on {CELLS} cells")
t0 = time.perf_counter()
us, dg = rollout(solver, rho0, DT, LAYERS)
us = np.asarray(us)
print(f"density solver: {time.perf_counter() - t0:.1f} s, {solver.substeps(DT)} substeps per layer")


@jax.jit
def particles(x):
    def layer(x, _):
        x, _ = lax.fori_loop(0, SUBSTEPS, lambda k, c: heun_step(field, c[0], c[1], DT / SUBSTEPS),
                             (x, jnp.zeros(x.shape[0])))
        return x, x

    return lax.scan(layer, x, None, length=LAYERS)[1]


_common.progress(f"particles: {N_PARTICLES} particles, {LAYERS} layers")
t0 = time.perf_counter()
xs = np.asarray(particles(x0))
print(f"particles: {time.perf_counter() - t0:.1f} s")

# ---------------------------------------------------------------- Analysis
t = DT * np.arange(LAYERS + 1)
ths = np.concatenate([th0[None], np.arctan2(xs[..., 1], xs[..., 0])])


def count_clusters_density(rho):
    peak = (rho > np.roll(rho, 1)) & (rho >= np.roll(rho, -1)) & (rho > 3 / (2 * np.pi))  # 3x uniform
    return int(peak.sum())


def count_clusters_particles(th, gap=0.3):
    s = np.sort(th)
    gaps = np.diff(np.concatenate([s, s[:1] + 2 * np.pi]))
    return max(1, int(np.sum(gaps > gap)))


k_rho = [count_clusters_density(r) for r in us]
k_par = [count_clusters_particles(th) for th in ths]
sub = np.nonzero(np.asarray(dg["peak_fraction"]) > 0.5)[0]
t_sub = t[sub[0]] if sub.size else None
for tt in (5, 10, 20, 40):
    i = int(round(tt / DT))
    print(f"t={tt:4.0f}: clusters density {k_rho[i]}, particles {k_par[i]}, |m| density "
          f"{float(dg['order_parameter'][i]):.3f}, particles {np.linalg.norm(xs[i - 1].mean(0)):.3f}")
print("density narrower than a cell at t =", t_sub)

# ---------------------------------------------------------------- Plot
fig, axes = plt.subplots(1, 3, figsize=(15, 4.8), constrained_layout=True)
BINS = 256  # display only: cluster masses sit in single cells, thinner than a pixel row
coarse = us.reshape(len(t), BINS, CELLS // BINS).mean(axis=2)
im = axes[0].pcolormesh(t, theta.reshape(BINS, -1).mean(1), np.log10(np.maximum(coarse.T, 1e-6)), shading="nearest",
                        cmap="magma", vmin=-3)
axes[0].set(title=f"density solver: log10 ρ(θ, t) ({CELLS} cells, shown on {BINS} bins)", xlabel="t", ylabel="θ")
fig.colorbar(im, ax=axes[0])
axes[1].plot(t, ths, ",", color="k", alpha=0.6)
axes[1].set(title=f"{N_PARTICLES} particles θ_i(t)", xlabel="t", ylabel="θ", ylim=(-np.pi, np.pi))
axes[2].step(t, k_rho, where="post", label="density solver")
axes[2].step(t, k_par, where="post", ls="--", label="particles")
if t_sub is not None:
    axes[2].axvline(t_sub, color="r", lw=0.8, label="clusters narrower than a cell")
axes[2].set(title=f"number of clusters, softmax alpha = {ALPHA:g}", xlabel="t")
axes[2].legend()
out.figure("circle_clusters.png", fig, dpi=110)
