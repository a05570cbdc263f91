"""Normalisation placements and noise: the two closed-form predictions of docs/theory.md.

Reproduces: (left) the equiangular clustering rates -- post-LN 1 - rho ~ e^{-2t}, nGPT e^{-2at},
pre-LN and peri-LN 1 - rho ~ t^{-2} (docs/theory.md "Normalisation placements"; Karagodin et al.
2025, Rigollet arXiv 2512.01868); (right) the noisy-Kuramoto bifurcation at K = 2D (Strogatz &
Mirollo 1991): the first Fourier mode of the circle density grows at K/2 - D, in the circle solver
with diffusion and in the particle SDE (docs/theory.md "Noise").

Runtime: about a minute on 2 shared CPU cores.

Run:   python examples/dynamics.py --out docs/img --overwrite   (writes dynamics.png)
Smoke: python examples/dynamics.py --smoke --out /tmp/x         (2 000 particles, 40 snapshots)
"""

import math

import _common

args, out = _common.parse(__doc__, outputs=["dynamics.png"])

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import meanfield as mf  # noqa: E402
from solvers import NGPT, AttentionField, Linear, PeriLN, PostLN, PreLN, Softmax, SphereSDE  # noqa: E402
from solvers.circle import make_circle_solver  # noqa: E402
from solvers.finite_volume import rollout  # noqa: E402

jax.config.update("jax_enable_x64", True)

# Parameters
BETA, N_EQ, RHO0, H_EQ, T_EQ = 1.5, 4, 0.1, 0.01, 60.0
K, DS, N_PART, EPS = 1.0, (0.3, 0.5, 0.7), (2_000 if args.smoke else 20_000), 0.1
SNAPSHOTS = 40 if args.smoke else 120  # of the equiangular gap, evenly in t = 0 .. T_EQ

# Setup
gram = (1 - RHO0) * np.eye(N_EQ) + RHO0 * np.ones((N_EQ, N_EQ))
x_eq = jnp.asarray(np.linalg.cholesky(gram))
field = AttentionField(Softmax(BETA))


def gap(x):
    u = np.asarray(x) / np.linalg.norm(np.asarray(x), axis=1, keepdims=True)
    return 1 - (u @ u.T)[0, 1]


def stratified_circle(n, eps):
    u = (np.arange(n) + 0.5) / n * 2 * np.pi - np.pi
    th = u.copy()
    for _ in range(50):
        th -= (th + 2 * eps * np.sin(th) - u) / (1 + 2 * eps * np.cos(th))
    return np.stack([np.cos(th), np.sin(th)], axis=1)


# Solve
adv = jax.jit(lambda s, x, n: s.advance(field, x, n, H_EQ)[0], static_argnums=0)
curves = {}
for scheme in (PostLN(), NGPT(a=0.5), PreLN(), PeriLN()):
    _common.progress(f"equiangular tokens, {scheme.name}: t = 0 .. {T_EQ:g}")
    x, ts, gs = x_eq, [0.0], [gap(x_eq)]
    for k in range(1, SNAPSHOTS + 1):
        x = adv(scheme, x, jnp.asarray(round(T_EQ / SNAPSHOTS / H_EQ)))
        ts.append(k * T_EQ / SNAPSHOTS)
        gs.append(gap(x))
    curves[scheme.name] = (np.asarray(ts), np.asarray(gs))

kuramoto = {}
for D in DS:
    _common.progress(f"noisy Kuramoto, D = {D}: circle solver and {N_PART} particles")
    solver = make_circle_solver(256, Linear(0.0), mobility=K, dtype=jnp.float64, diffusion=D)
    th = np.asarray(solver.centers)
    h = 2 * math.pi / 256
    rho0 = (1 + 2 * EPS * np.sin(h / 2) / (h / 2) * np.cos(th)) / (2 * math.pi)
    _, diags = rollout(solver, jnp.asarray(rho0), 0.25, 16)
    sol = mf.solve_flow(stratified_circle(N_PART, EPS), kernel=Linear(0.0), method=SphereSDE(math.sqrt(2 * D)),
                        dt=0.05, layers=80, save=mf.SaveAt(every=5), dtype=jnp.float64, key=1)
    kuramoto[D] = (0.25 * np.arange(17), np.asarray(diags["order_parameter"]), sol.t,
                   sol.diagnostics["order_parameter"])

# Analysis
for name, (t, g) in curves.items():
    late = t > T_EQ / 2
    if name in ("post_ln", "ngpt"):
        print(f"{name:8s} d log(1-rho)/dt over t in [5, 10] = {np.polyfit(t[(t > 5) & (t < 10)], np.log(g[(t > 5) & (t < 10)]), 1)[0]:+.3f}")
    else:
        print(f"{name:8s} d log(1-rho)/d log t over t > {T_EQ / 2:.0f} = {np.polyfit(np.log(t[late]), np.log(g[late]), 1)[0]:+.3f}")
for D, (tc, rc, tp, rp) in kuramoto.items():
    print(f"D = {D}: growth rate circle {np.polyfit(tc, np.log(rc), 1)[0]:+.3f}, particles "
          f"{np.polyfit(tp, np.log(rp), 1)[0]:+.3f}, predicted K/2 - D = {K / 2 - D:+.3f}")

# Plot
fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
for name, (t, g) in curves.items():
    a1.loglog(t[1:], g[1:], label=name)
tt = np.linspace(1, T_EQ, 100)
a1.loglog(tt, 2.0 / tt**2, "k:", label="$\\propto t^{-2}$")
a1.set_ylim(1e-12, 1)
a1.set_xlabel("t")
a1.set_ylabel("$1-\\rho$ (equiangular, n = 4, $\\beta$ = 1.5)")
a1.legend(fontsize=8)
for (D, (tc, rc, tp, rp)), c in zip(kuramoto.items(), ("C0", "C1", "C3")):
    a2.semilogy(tc, rc, color=c, label=f"D = {D}: circle solver")
    a2.semilogy(tp, rp, "o", color=c, ms=3, label=f"D = {D}: particles (SDE)")
    a2.semilogy(tc, EPS * np.exp((K / 2 - D) * tc), ":", color=c)
a2.set_xlabel("t")
a2.set_ylabel("first mode r (K = 1; dotted: $e^{(K/2-D)t}$)")
a2.legend(fontsize=7)
fig.tight_layout()
out.figure("dynamics.png", fig, dpi=110)
