"""``solve_flow(init, method="zonal" | "circle" | "characteristics")`` end to end."""

import math

import jax
import numpy as np
import pytest

from meanfield import Circle, Uniform, VonMisesFisher, Zonal, solve_flow
from meanfield.stats.reference import zonal_alpha0_solution

from .solvers.zonal_reference import alpha0_s
import meanfield as mf

jax.config.update("jax_enable_x64", True)


def _alpha0_mean_cos(kappa, t, circle):
    """Zonal: the lead's meanfield.stats.reference (DOP853); circle: the tests' own RK4 reference."""
    if circle:
        lf = lambda th: kappa * np.cos(th) - math.log(2 * math.pi * np.i0(kappa))  # noqa: E731
        return alpha0_s(lf, -np.pi, np.pi, t)[1]
    return zonal_alpha0_solution(VonMisesFisher(3, kappa), t)["mean_cos"]


@pytest.mark.parametrize("method,d", [("zonal", 3), ("circle", 2)])
def test_grid_methods_match_alpha0_solution(method, d):
    # 256 cells: measured |m| errors 1.2e-5 (zonal) and 5.7e-5 (circle) at t = 1; 2e-4 is ~3x margin.
    cls = {"zonal": Zonal, "circle": Circle}[method]
    sol = solve_flow(VonMisesFisher(d, 2.0), N=256, kernel=mf.Linear(0.0), layers=10, dt=0.1,
                     method=cls(cells=256))
    ref = _alpha0_mean_cos(2.0, sol.t[1:], method == "circle")
    assert np.max(np.abs(sol.diagnostics["order_parameter"][1:] - ref)) < 2e-4
    assert sol.density.shape == (len(sol.t), 256) and sol.x is None
    assert np.max(np.abs(sol.diagnostics["mass"] - 1)) < 1e-12
    assert np.all(sol.density >= 0)
    assert sol.grid["theta"].shape == (256,)
    for name in ("entropy", "entropy_rate", "kl_to_uniform", "mean_cosine"):
        assert np.all(np.isfinite(sol.diagnostics[name]))
    assert not sol.warnings


def test_characteristics_entropy_matches_zonal():
    # Monte-Carlo: 4 standard errors + 2e-3 (grid and O(1/N) empirical-velocity effects).
    kw = dict(kernel=mf.Softmax(1.0), layers=8, dt=0.1)
    z = solve_flow(VonMisesFisher(3, 2.0), N=256, method=Zonal(cells=256), save=mf.SaveAt(every=4), **kw)
    c = solve_flow(VonMisesFisher(3, 2.0), N=1500, method="characteristics", key=3,
                   save=mf.SaveAt(every=4, n_query=64), **kw)
    gap = np.abs(c.diagnostics["entropy"] - z.diagnostics["entropy"])
    assert np.all(gap < 4 * c.diagnostics["entropy_stderr"] + 2e-3), gap
    assert c.x.shape == (1500, 3)
    # the particle solver's standard statistics come along at the save steps
    for name in ("effective_rank", "normalized_entropy", "attention_singular_values", "collapse_residual"):
        assert name in c.diagnostics and np.all(np.isfinite(c.diagnostics[name]))
    assert c.diagnostics["order_parameter"].shape == c.t.shape


def test_subgrid_concentration_is_reported():
    sol = solve_flow(VonMisesFisher(3, 5.0), N=64, kernel=mf.Softmax(4.0), layers=30, dt=0.5, method=Zonal(cells=64))
    assert sol.warnings and "below the grid scale" in sol.warnings[0]
    assert sol.diagnostics["order_parameter"][-1] > 0.99


def test_uniform_is_steady_zonal():
    # alpha = 0 keeps the symmetric grid's mean at 0 to round-off; H = log|S^3| up to the O(h^2)
    # quadrature of the cell projection (measured ~1e-5 at 128 cells).
    sol = solve_flow(Uniform(4), N=128, kernel=mf.Linear(0.0), layers=4, dt=0.5, method=Zonal(cells=128))
    assert np.max(sol.diagnostics["order_parameter"]) < 1e-13
    assert np.max(np.abs(sol.diagnostics["kl_to_uniform"])) < 1e-3


@pytest.mark.parametrize("method,d", [("zonal", 2), ("circle", 3)])
def test_bad_dimension_is_a_value_error(method, d):
    with pytest.raises(ValueError, match=f"method='{method}'"):
        solve_flow(VonMisesFisher(d, 1.0), N=64, layers=1, method=method)


def test_results_round_trip(tmp_path):
    # a grid solution (density, grid arrays, warnings, None-valued params) survives save/load
    from meanfield import load_results, save_results

    sol = solve_flow(VonMisesFisher(3, 5.0), N=64, kernel=mf.Softmax(4.0), layers=30, dt=0.5, method=Zonal(cells=64))
    back = load_results(save_results(tmp_path / "z.h5", sol))
    assert np.array_equal(back.density, sol.density) and np.array_equal(back.grid["theta"], sol.grid["theta"])
    assert back.warnings == sol.warnings and back.params["method"] == "zonal"
    assert np.array_equal(back.diagnostics["entropy"], sol.diagnostics["entropy"])
