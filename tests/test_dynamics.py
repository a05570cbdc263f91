"""The general dynamics through solve_flow and the CLI (docs/theory.md "General attention dynamics",
"Normalisation placements", "Noise").

References: the noisy-Kuramoto growth rate K/2 - D (Strogatz & Mirollo 1991) for the particle SDE;
a dense masked attention matrix for the causal statistics; the definition (token 0 attends only to
itself) for the causal first token.
"""

import math

import h5py
import jax.numpy as jnp
import numpy as np
import pytest

from meanfield import solve_flow
from meanfield.flow.driver import method_table
from meanfield.simulate import cli
from solvers import Bilinear, Linear, PreLN, SphereSDE
import meanfield as mf


def _stratified_circle(n, eps):
    """Quantiles of rho = (1 + 2 eps cos theta)/(2 pi): first Fourier mode eps, little sampling noise."""
    u = (np.arange(n) + 0.5) / n * 2 * np.pi - np.pi
    th = u.copy()
    for _ in range(50):  # Newton on theta + 2 eps sin theta = u
        th -= (th + 2 * eps * np.sin(th) - u) / (1 + 2 * eps * np.cos(th))
    return np.stack([np.cos(th), np.sin(th)], axis=1)


@pytest.mark.parametrize("D", [0.25, 0.75])
def test_particle_sde_noisy_kuramoto(D):
    """Linear kernel, alpha = 0, mobility K = 1 on the circle with sigma = sqrt(2 D): the first mode
    grows or decays at K/2 - D = +-0.25. The mode is read as the signed mean <x, e_1> (|m| would be
    biased up by the noise floor N^{-1/2}). Error budget of the fitted rate over t in [0, 2]:
    Monte-Carlo, std(<x, e_1>) = (2N)^{-1/2} = 0.003 against a mode of 0.15..0.09, about 0.01 per
    standard deviation; the scheme's weak error O(sigma^4 h), about 0.01 at D = 0.75, h = 0.025; the
    cubic term at amplitude 0.15, 0.01 (the circle solver's mean-field rate at this amplitude is
    0.2405 for D = 0.25). Tolerance 0.05 (measured errors 0.005-0.018 over seeds 1-3)."""
    x0 = _stratified_circle(50_000, 0.15)
    sol = solve_flow(x0, kernel=Linear(0.0), method=SphereSDE(math.sqrt(2 * D)), dt=0.025, layers=80,
                     save=mf.SaveAt(every=20, tokens=True), dtype=jnp.float64, key=3)
    mode = sol.snapshots[:, :, 0].mean(axis=1)
    rate = np.polyfit(sol.t, np.log(mode), 1)[0]
    assert abs(rate - (0.5 - D)) <= 0.05, (rate, mode)
    assert np.sign(rate) == np.sign(0.5 - D)


def test_causal_first_token_and_statistics():
    x0 = np.random.default_rng(0).normal(size=(40, 3))
    x0 /= np.linalg.norm(x0, axis=1, keepdims=True)
    ker = Bilinear(3.0, causal=True, key_block=16)
    sol = solve_flow(x0, kernel=ker, method="euler", dt=0.1, layers=5, dtype=jnp.float64)
    assert np.max(np.abs(sol.x[0] - x0[0])) <= 1e-15  # token 0 attends only to itself: P_x x = 0
    assert np.max(np.abs(sol.x[1] - x0[1])) > 1e-3  # token 1 moves
    # the saved mean row entropy at t = 0 equals the dense causal computation (all 40 tokens are queries)
    s = 3.0 * x0 @ x0.T
    s = np.where(np.tril(np.ones((40, 40), bool)), s, -np.inf)
    a = np.exp(s - s.max(axis=1, keepdims=True))
    a /= a.sum(axis=1, keepdims=True)
    ent = -np.sum(np.where(a > 0, a * np.log(np.where(a > 0, a, 1)), 0), axis=1)
    assert abs(sol.diagnostics["row_entropy"][0] - ent.mean()) <= 1e-12
    sv = np.sqrt(np.maximum(np.linalg.eigvalsh(a @ a.T)[::-1], 0))
    assert np.max(np.abs(sol.diagnostics["attention_singular_values"][0] - sv)) <= 1e-10


def test_methods_registered_and_pre_ln_tokens_are_unit():
    for name in ("post_ln", "pre_ln", "peri_ln", "ngpt", "sde"):
        assert name in method_table()
    x0 = np.random.default_rng(1).normal(size=(30, 4))
    sol = solve_flow(x0, kernel=mf.Softmax(1.0), method=PreLN(), dt=0.5, layers=6, dtype=jnp.float64)
    assert np.max(np.abs(np.linalg.norm(sol.x, axis=1) - 1)) <= 1e-14
    assert sol.diagnostics["norm_drift"].max() <= 1e-14  # diagnostics see the unit tokens
    assert sol.diagnostics["order_parameter"][-1] > sol.diagnostics["order_parameter"][0]


def test_cli_bilinear_kernel_with_noise(tmp_path, capsys):
    out = tmp_path / "noisy.h5"
    argv = ["--kernel", "bilinear", "--alpha", "2", "--sigma", "0.3", "--N", "64", "--d", "3", "--layers", "3",
            "--dt", "0.1", "--out", str(out), "--no-progress", "--no-plot", "--precision", "float64"]
    assert cli(argv) == 0, capsys.readouterr().err
    with h5py.File(out) as f:
        assert f["parameters"].attrs["kernel"] == "bilinear" and f["parameters"].attrs["method"] == "sde"
        assert np.all(np.isfinite(f["diagnostics/order_parameter"][()]))


def test_cli_causal(tmp_path, capsys):
    out = tmp_path / "causal.h5"
    argv = ["--kernel", "softmax", "--causal", "--alpha", "2", "--N", "40", "--d", "3", "--layers", "2",
            "--out", str(out), "--no-progress", "--no-plot", "--precision", "float64", "--save-tokens"]
    assert cli(argv) == 0, capsys.readouterr().err
    with h5py.File(out) as f:
        assert f["parameters"].attrs["kernel"] == "bilinear"
        snaps = f["tokens/snapshots"][()]
    assert np.max(np.abs(snaps[-1][0] - snaps[0][0])) <= 1e-15  # the first token does not move
    assert np.max(np.abs(snaps[-1][1] - snaps[0][1])) > 1e-3


def test_cli_sigma_errors(tmp_path, capsys):
    for argv, msg in ((["--causal", "--kernel", "linear"], "--causal needs --kernel softmax or bilinear"),(["--sigma", "-1"], "sigma must be a finite number >= 0"),
                      (["--sigma", "0.2", "--method", "heun"], "--sigma runs the sde scheme")):
        assert cli([*argv, "--out", str(tmp_path / "r.h5"), "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and msg in err, err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("method", ["circle", "zonal"])
def test_density_methods_take_sigma(method):
    """solve_flow with Circle(sigma=)/Zonal(sigma=): the first mode of a vMF start (kappa = 0.01)
    moves at (d-1)(K/d - D), D = sigma^2/2, K = 1 (linear kernel, alpha = 0; docs/theory.md "Noise").
    The vMF start has a second harmonic of relative size kappa/4: tolerance 3e-3."""
    from meanfield import Circle, VonMisesFisher, Zonal

    d = 2 if method == "circle" else 4
    D = 0.2
    m = (Circle if method == "circle" else Zonal)(cells=128, sigma=math.sqrt(2 * D))
    sol = solve_flow(VonMisesFisher(d, 0.01), N=1000, kernel=mf.Linear(0.0), method=m, dt=0.5, layers=8,
                     dtype=jnp.float64)
    r = sol.diagnostics["order_parameter"]
    rate = np.polyfit(sol.t, np.log(r), 1)[0]
    assert abs(rate - (d - 1) * (1 / d - D)) <= 3e-3, rate
    assert sol.params["method_options"]["sigma"] == pytest.approx(math.sqrt(2 * D))
