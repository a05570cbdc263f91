"""``solve_flow(Weighted(init, weights), ...)``: token masses through the particle driver and its diagnostics.

Tolerance 1e-12 (float64): the runs are the same arithmetic up to summation order, over 10 steps
of O(1) quantities (docs/theory.md "Token masses").
"""

import numpy as np
import pytest

import meanfield as mf
from meanfield.flow.driver import resolve_kernel

TOL = 1e-12
ALPHA = {"linear": 0.3, "softmax": 2.0, "usa": 1.0}


def _tokens(n, d, seed):
    x = np.random.default_rng(seed).normal(size=(n, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("kernel", sorted(ALPHA))
def test_unit_weights_equal_unweighted_run(kernel):
    x0 = _tokens(50, 4, 0)
    kw = dict(kernel=resolve_kernel(kernel, ALPHA[kernel]), layers=10, dt=0.2, method="heun",
              save=mf.SaveAt(n_query=20))
    a = mf.solve_flow(x0, **kw)
    b = mf.solve_flow(mf.Weighted(x0, np.ones(50)), **kw)
    np.testing.assert_allclose(b.x, a.x, atol=TOL, rtol=0)
    for name, val in a.diagnostics.items():
        if name == "row_entropy" and kernel == "linear":
            continue  # NaN by definition for rows with a non-positive weight; compared below where finite
        np.testing.assert_allclose(b.diagnostics[name], val, atol=TOL * max(1.0, np.nanmax(np.abs(val))), rtol=0,
                                   err_msg=name)
    assert b.params["weighted"] and not a.params["weighted"]
    np.testing.assert_array_equal(b.weights, np.ones(50))


@pytest.mark.parametrize("kernel", sorted(ALPHA))
@pytest.mark.parametrize("method", ["layer", "heun"])
def test_mass_two_token_moves_others_as_two_tokens(kernel, method):
    x = _tokens(41, 3, 1)
    others, star = x[:-1], x[-1:]
    kw = dict(kernel=resolve_kernel(kernel, ALPHA[kernel]), layers=10, dt=0.25, method=method,
              save=mf.SaveAt(n_query=40))
    merged = mf.solve_flow(mf.Weighted(np.concatenate([others, star]), np.r_[np.ones(40), 2.0]), **kw)
    split = mf.solve_flow(np.concatenate([others, star, star]), **kw)
    np.testing.assert_allclose(merged.x[:40], split.x[:40], atol=TOL, rtol=0)
    np.testing.assert_allclose(merged.x[40], split.x[40], atol=TOL, rtol=0)
    np.testing.assert_array_equal(split.x[40], split.x[41])  # identical tokens stay identical
    # statistics of the measure (the attention rows depend on which tokens are queries, a seeded
    # subset of a different N here; their identity for the same queries is tests/solvers/test_masses.py)
    for name in ("order_parameter", "mean_cosine", "covariance_effective_rank", "collapse_residual",
                 "entropy_rate"):
        np.testing.assert_allclose(merged.diagnostics[name], split.diagnostics[name], atol=TOL * 10, rtol=0,
                                   err_msg=name)


@pytest.mark.parametrize(
    "weights,match",
    [
        (np.ones(4), r"weights must have shape \(5,\)"),
        (np.r_[1.0, -1.0, 1, 1, 1], r"weights must be finite and >= 0, got -1.0 at index 1"),
        (np.r_[1.0, np.nan, 1, 1, 1], r"weights must be finite and >= 0, got nan at index 1"),
        (np.zeros(5), r"weights must have a positive sum"),
        ("heavy", r"weights must be an array of 5 non-negative numbers"),
    ],
)
def test_bad_weights(weights, match):
    with pytest.raises(ValueError, match=match):
        mf.solve_flow(mf.Weighted(_tokens(5, 3, 2), weights), layers=1)


def test_weights_round_trip_and_grid_refusal(tmp_path):
    w = np.arange(1.0, 21.0)
    sol = mf.solve_flow(mf.Weighted(_tokens(20, 3, 3), w), layers=2)
    back = mf.load_results(mf.save_results(tmp_path / "w.h5", sol))
    np.testing.assert_array_equal(back.weights, w)
    with pytest.raises(ValueError, match="token weights apply to particle methods only"):
        mf.solve_flow(mf.Weighted(mf.VonMisesFisher(3, 1.0), w), N=20, method="zonal", layers=1)
