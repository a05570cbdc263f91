"""Noise: the sphere SDE scheme's orders, and the Fokker-Planck term of the circle solver
(docs/theory.md "Noise").

References: for v = 0 the SDE is Brownian motion on S^2 (E<x_t, x_0> = e^{-(d-1) sigma^2 t/2});
the orders are read from differences of runs on the same Brownian path (a virtual Brownian tree)
at h = T/2^k, which cancels most of the Monte-Carlo error; the noisy-Kuramoto linear growth rate
K/2 - D of the first Fourier mode (Strogatz & Mirollo 1991) for the circle solver.
"""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from solvers import INTEGRATORS, Linear, SphereSDE
from solvers.circle import make_circle_solver
from solvers.finite_volume import rollout


class _Still(eqx.Module):
    """No drift: pure Brownian motion on the sphere."""

    def velocity(self, x):
        return jnp.zeros_like(x)


_adv = eqx.filter_jit(lambda s, x, n, h, k: s.advance(_Still(), x, n, h, k)[0])


def test_registered_and_needs_key():
    assert INTEGRATORS["sde"] is SphereSDE
    with pytest.raises(ValueError, match="key"):
        SphereSDE(0.5).advance(_Still(), jnp.ones((2, 3)) / math.sqrt(3), 1, 0.1)
    with pytest.raises(ValueError, match="sigma"):
        SphereSDE(-1.0)


def test_weak_and_strong_order():
    """Weak order 1: successive differences of E<x_T, e_3> (h -> h/2, same Brownian paths) halve
    when h halves; strong order 1/2: the rms distance between successive resolutions shrinks by
    sqrt 2. Orders are the least-squares slopes of log2 of the three differences against log2 h.
    N = 4000 paths, sigma = 0.5, T = 1. The Monte-Carlo error of a weak difference is ~10% of it
    (single ratios of two differences scatter over 0.78-1.23 across seeds 0-3; the slope over three
    scatters 0.94-1.01): tolerance 0.2 for weak, 0.1 for strong (measured 0.47-0.52 single ratios)."""
    n_tok, sigma, T = 4000, 0.5, 1.0
    x0 = jnp.tile(jnp.asarray([[0.0, 0.0, 1.0]]), (n_tok, 1))
    key = jax.random.PRNGKey(0)
    scheme = SphereSDE(sigma, tol=T / 512)
    ys = [_adv(scheme, x0, jnp.asarray(n), jnp.asarray(T / n), key) for n in (16, 32, 64, 128)]
    exact = math.exp(-2 * sigma**2 * T / 2)
    assert abs(float(jnp.mean(ys[-1][:, 2])) - exact) <= 0.02  # MC error ~ 0.4/sqrt(4000) plus bias
    weak = [float(jnp.mean(a[:, 2]) - jnp.mean(b[:, 2])) for a, b in zip(ys, ys[1:])]
    strong = [float(jnp.sqrt(jnp.mean(jnp.sum((a - b) ** 2, axis=1)))) for a, b in zip(ys, ys[1:])]
    log_h = -np.arange(3.0)  # log2 of h relative to the coarsest difference
    weak_order = np.polyfit(log_h, np.log2(np.abs(weak)), 1)[0]
    strong_order = np.polyfit(log_h, np.log2(strong), 1)[0]
    assert abs(weak_order - 1.0) <= 0.2, (weak, weak_order)
    assert abs(strong_order - 0.5) <= 0.1, (strong, strong_order)
    assert float(jnp.max(jnp.abs(jnp.linalg.norm(ys[-1], axis=1) - 1))) <= 1e-14


def _first_mode_rate(K, D, cells=128, eps=1e-3, T=4.0):
    solver = make_circle_solver(cells, Linear(0.0), mobility=K, dtype=jnp.float64, diffusion=D)
    th = np.asarray(solver.centers)
    h = 2 * math.pi / cells
    # exact cell averages of (1 + 2 eps cos theta)/(2 pi)
    rho0 = (1 + 2 * eps * np.sin(h / 2) / (h / 2) * np.cos(th)) / (2 * math.pi)
    u, diags = rollout(solver, jnp.asarray(rho0), 0.5, int(T / 0.5))
    r = np.asarray(diags["order_parameter"])
    t = 0.5 * np.arange(len(r))
    assert np.all(np.asarray(u) >= 0) and abs(float(diags["mass"][-1]) - 1) <= 1e-12
    return np.polyfit(t, np.log(r), 1)[0], np.asarray(diags["entropy_rate"]), np.asarray(diags["entropy"])


@pytest.mark.parametrize("D", [0.3, 0.7])
def test_circle_noisy_kuramoto_growth_rate(D):
    """Linear kernel at alpha = 0 with mobility K is Kuramoto with coupling K; with diffusion D the
    first mode grows at K/2 - D (unstable for D < K/2). 128 cells: the discrete Laplacian's
    k = 1 eigenvalue differs by h^2/12 ~ 2e-4 and the midpoint moments by O(h^2): tolerance 2e-3;
    the amplitude 1e-3 keeps the cubic term below 1e-5."""
    K = 1.0
    rate, erate, ent = _first_mode_rate(K, D)
    assert abs(rate - (K / 2 - D)) <= 2e-3, rate
    assert np.sign(rate) == np.sign(K / 2 - D)
    # dH/dt (transport + the discrete Fisher information) integrates to the entropy change; the
    # trapezoid rule over layers of 0.5 errs by (0.5 lam)^2/12 ~ 3e-3 relative for H - H_0 ~ e^{lam t},
    # lam = 2|K/2 - D| = 0.4: tolerance 1e-2 relative
    dh = ent[-1] - ent[0]
    assert abs(np.trapezoid(erate, dx=0.5) - dh) <= 1e-2 * abs(dh), (np.trapezoid(erate, dx=0.5), dh)


def test_diffusion_substeps_and_positivity():
    """The step rule includes the diffusion limit; a point-like start stays non-negative."""
    solver = make_circle_solver(64, Linear(0.2), dtype=jnp.float64, diffusion=2.0)
    h = 2 * math.pi / 64
    assert solver.substeps(1.0, 0.4) >= math.ceil((2.0 / h**2) / 0.4)
    rho0 = np.zeros(64)
    rho0[10] = 1 / h
    u, diags = rollout(solver, jnp.asarray(rho0), 0.05, 4)
    assert float(jnp.min(u)) >= 0.0 and abs(float(diags["mass"][-1]) - 1) <= 1e-12
    with pytest.raises(ValueError, match="diffusion"):
        make_circle_solver(64, "linear", diffusion=-1.0)


@pytest.mark.parametrize("d, D", [(3, 0.2), (3, 0.5), (5, 0.1)])
def test_zonal_first_harmonic_rate(d, D):
    """On S^{d-1} the linear kernel at alpha = 0 with mobility K and diffusion D moves the first
    zonal harmonic rho = (1 + eps cos theta)/|S| at rate (d-1)(K/d - D): transport gives
    (d-1)K/d (div_S P_x m = -(d-1)<x, m>, m = eps e/d) and D Delta_S has eigenvalue -(d-1)
    (docs/theory.md "Noise"; d = 2 is the Kuramoto K/2 - D). 128 cells, second order: tolerance 2e-3."""
    from solvers.zonal import make_zonal_solver, zonal_cell_averages

    K, eps = 1.0, 1e-3
    solver = make_zonal_solver(d, 128, Linear(0.0), mobility=K, dtype=jnp.float64, diffusion=D)
    F0 = zonal_cell_averages(lambda th: (d - 2) * np.log(np.sin(th)) + np.log1p(eps * np.cos(th)), 128)
    u, diags = rollout(solver, jnp.asarray(F0), 0.5, 8)
    mu = np.asarray(diags["mean_cos"])
    rate = np.polyfit(0.5 * np.arange(len(mu)), np.log(mu), 1)[0]
    assert abs(rate - (d - 1) * (K / d - D)) <= 2e-3, rate
    assert float(jnp.min(u)) >= 0 and abs(float(diags["mass"][-1]) - 1) <= 1e-12
