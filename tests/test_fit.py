"""meanfield.fit: recovery, interval coverage, degenerate data, model comparison, precision.

Most tests name ``optimizer="lm"`` (the default: LM from the model's starts, NumPy); one test
checks that the optional L-BFGS + LM path reaches the same minimum.
"""

import jax
import numpy as np
import pytest

from meanfield import fit

jax.config.update("jax_enable_x64", True)  # tests only; the library never sets it

LAYERS = np.arange(24.0)
N = 100.0
RANK_TRUTH = {"alpha": 20.0, "C": 30.0, "r": 2.0}


def rank_curve(layers=LAYERS, merge=1.0, **p):
    p = {**RANK_TRUTH, **p}
    return p["r"] + p["C"] * np.exp(-p["alpha"] * layers / (N * merge))


def test_rank_law_recovered_within_intervals():
    rng = np.random.default_rng(3)
    y = rank_curve(merge=2.0) + rng.normal(0.0, 0.5, LAYERS.size)
    res = fit.fit_rank_curve(LAYERS, y, N=N, merge=2.0, optimizer="lm")
    assert res.ok and res.converged and res.identifiable and res.messages == ()
    for name, true in RANK_TRUTH.items():
        lo, hi = res.intervals[name]
        assert lo < res.estimates[name] < hi
        assert lo <= true <= hi, (name, true, res.intervals[name])
    assert res.dof == LAYERS.size - 3 and 0.99 < res.r2 <= 1.0
    assert 1 <= res.starts_at_best <= 6
    np.testing.assert_allclose(res.residuals, y - res.fitted, atol=1e-12)
    # only alpha/(N M) is identifiable: the same data with N M doubled give alpha doubled
    res2 = fit.fit_rank_curve(LAYERS, y, N=2 * N, merge=2.0, compare=False, optimizer="lm")
    assert res2.estimates["alpha"] == pytest.approx(2 * res.estimates["alpha"], rel=1e-6)


def test_rank_law_interval_coverage():
    # 200 noise draws; each 95 % interval covers the truth with probability ~0.95 if the
    # linearised errors are right.  Binomial sd at n = 200 is sqrt(.95 * .05 / 200) = 0.015, so
    # [0.90, 0.99] is -3.2 sd .. +2.6 sd: a correct method fails this by chance with p < 0.01
    # per parameter, while intervals half or twice as wide (coverage 0.68 / 0.9994) fail it.
    rng = np.random.default_rng(1)
    truth_curve = rank_curve()
    hits = {k: 0 for k in RANK_TRUTH}
    n_draws = 200
    for _ in range(n_draws):
        res = fit.fit_rank_curve(LAYERS, truth_curve + rng.normal(0.0, 0.5, LAYERS.size), N=N,
                                 compare=False, optimizer="lm")
        assert res.ok, res.messages
        for k, true in RANK_TRUTH.items():
            hits[k] += res.intervals[k][0] <= true <= res.intervals[k][1]
    for k, h in hits.items():
        assert 0.90 <= h / n_draws <= 0.99, (k, h / n_draws)


def test_entropy_law_with_known_sigma_coverage_and_exact_errors():
    # Eq. 13 is linear in (H0, k): with sigma known the covariance is sigma^2 (X^T X)^{-1},
    # computed here independently; coverage uses the normal quantile (same tolerance as above).
    L = np.arange(1.0, 13.0)
    H0, k, Nt, M, sig = 0.95, 40.0, 500.0, 2.0, 0.01
    X = np.stack([np.ones_like(L), -L / (Nt * M)], axis=1)
    se_exact = sig * np.sqrt(np.diag(np.linalg.inv(X.T @ X)))
    rng = np.random.default_rng(7)
    hits = np.zeros(2)
    for _ in range(200):
        y = H0 - k * L / (Nt * M) + rng.normal(0.0, sig, L.size)
        res = fit.fit_entropy_curve(L, y, N=Nt, merge=M, sigma=sig, compare=False, optimizer="lm")
        np.testing.assert_allclose([res.stderr["H0"], res.stderr["k"]], se_exact, rtol=1e-6)
        hits += [res.intervals["H0"][0] <= H0 <= res.intervals["H0"][1],
                 res.intervals["k"][0] <= k <= res.intervals["k"][1]]
    assert np.all((0.90 <= hits / 200) & (hits / 200 <= 0.99)), hits / 200
    # the delta-method band at L = 0 is exactly H0 +- q se(H0), since f(0) = H0
    lo, hi = res.band([0.0])
    q = 1.959963984540054
    assert hi[0] - lo[0] == pytest.approx(2 * q * se_exact[0], rel=1e-6)


def test_flat_curve_reports_non_identifiable_without_nan_estimates():
    res = fit.fit_rank_curve(np.arange(10.0), np.full(10, 3.0), N=10.0, compare=False, optimizer="lm")
    assert not res.ok and not res.identifiable
    assert any("not identifiable" in m for m in res.messages)
    assert any("zero spread" in m for m in res.messages)
    assert all(np.isfinite(v) for v in res.estimates.values())
    assert res.estimates["r"] == pytest.approx(3.0, rel=1e-6)


def test_exactly_determined_and_too_few_points():
    x = np.array([0.0, 10.0, 20.0])
    y = rank_curve(x)
    res = fit.fit_rank_curve(x, y, N=N, compare=False, optimizer="lm")
    assert res.dof == 0 and not res.ok
    assert any("exactly determined" in m for m in res.messages)
    assert res.estimates["alpha"] == pytest.approx(RANK_TRUTH["alpha"], rel=1e-6)  # interpolates
    # with sigma known the errors of an exactly determined fit are defined
    res_s = fit.fit_rank_curve(x, y, N=N, sigma=0.1, compare=False, optimizer="lm")
    assert res_s.ok and all(np.isfinite(v) and v > 0 for v in res_s.stderr.values())
    with pytest.raises(ValueError, match="2 data points cannot determine the 3 parameters"):
        fit.fit_rank_curve(x[:2], y[:2], N=N, optimizer="lm")
    with pytest.raises(ValueError, match="unknown model"):
        fit.fit_curve("no_such_law", x, y)
    two = fit.fit_entropy_curve([1.0, 2.0], [0.9, 0.8], N=10.0, compare=False, optimizer="lm")
    assert two.dof == 0 and not two.ok and any("exactly determined" in m for m in two.messages)


@pytest.mark.parametrize("bad", [{"y": [1.0, np.nan, 2.0, 3.0]}, {"sigma": 0.0}, {"x": [0.0, 1.0]}])
def test_bad_input_raises_one_line_value_error(bad):
    kw = {"x": [0.0, 1.0, 2.0, 3.0], "y": [4.0, 3.0, 2.5, 2.2], "sigma": None, **bad}
    with pytest.raises(ValueError) as err:
        fit.fit_rank_curve(kw["x"], kw["y"], N=N, sigma=kw["sigma"], optimizer="lm")
    assert "\n" not in str(err.value)


def test_model_comparison_prefers_the_generating_law():
    rng = np.random.default_rng(5)
    exp_data = rank_curve() + rng.normal(0.0, 0.3, LAYERS.size)
    res = fit.fit_rank_curve(LAYERS, exp_data, N=N, optimizer="lm")
    rows = {r["model"]: r for r in res.comparison.rows}
    assert res.comparison.best == "rank_law"
    assert set(rows) == {"rank_law", "exponential", "power_law", "linear"}
    # Delta AIC > 10: "essentially no support" for the alternatives (Burnham & Anderson)
    assert min(r["delta_aic"] for m, r in rows.items() if m != "rank_law") > 10
    power_data = 50.0 * (1.0 + LAYERS) ** -0.7 + rng.normal(0.0, 0.3, LAYERS.size)
    res_p = fit.fit_rank_curve(LAYERS, power_data, N=N, optimizer="lm")
    assert res_p.comparison.best == "power_law"
    assert "model comparison" in str(res_p)


def test_lbfgs_then_lm_reaches_the_same_minimum():
    y = rank_curve() + np.random.default_rng(11).normal(0.0, 0.5, LAYERS.size)
    a = fit.fit_rank_curve(LAYERS, y, N=N, compare=False, optimizer="lm")
    b = fit.fit_rank_curve(LAYERS, y, N=N, compare=False)  # default: optax L-BFGS, then LM
    assert b.converged and b.rss == pytest.approx(a.rss, rel=1e-9)
    for k in RANK_TRUTH:
        assert b.estimates[k] == pytest.approx(a.estimates[k], rel=1e-6)


def test_fit_is_float64_whatever_the_global_setting():
    y = rank_curve() + np.random.default_rng(2).normal(0.0, 0.5, LAYERS.size)
    ref = fit.fit_rank_curve(LAYERS, y, N=N, compare=False, optimizer="lm")
    with jax.enable_x64(False):
        res = fit.fit_rank_curve(LAYERS, y, N=N, compare=False, optimizer="lm")
        assert not jax.config.jax_enable_x64  # the fit did not flip the user's setting
    # float32 anywhere would leave ~1e-7 relative differences; float64 agrees to round-off
    assert res.rss == pytest.approx(ref.rss, rel=1e-12)
    assert res.fitted.dtype == np.float64


M_GRID = np.linspace(0.0, 0.9, 10)
OTHER_LAWS = [  # (model, x, consts (scale, r, M), truth, noise sd, draws)
    ("entropy_eq8", np.arange(1.0, 16.0), (1.0, 0.0, 2.0), {"H0": 0.9, "k": 0.5}, 0.01, 200),
    ("entropy_eq13_fusion", M_GRID, (1.0, 0.0, 1.0), {"H0": 0.9, "kappa": 0.18}, 0.01, 1),
    ("rank_law_fusion", M_GRID, (1.0, 0.0, 1.0), {"a": 2.0, "C": 200.0, "r": 20.0}, 2.0, 200),
    ("cost_offset", M_GRID, (1.0, 0.0, 1.0), {"a": 0.14, "b": 0.88}, 0.01, 1),
    ("cost_power", M_GRID, (1.0, 0.0, 1.0), {"c": 1.0, "p": 1.3}, 0.01, 200),
]


@pytest.mark.parametrize("name,x,consts,truth,sd,draws", OTHER_LAWS, ids=[c[0] for c in OTHER_LAWS])
def test_other_laws_recovered_and_covered(name, x, consts, truth, sd, draws):
    # 200 draws: same binomial tolerance as test_rank_law_interval_coverage ([0.90, 0.99]).
    # 1 draw (laws linear in their parameters, whose t intervals are exact; kept fast): the
    # truth must lie in the intervals for this fixed seed.
    model = fit.MODELS[name]
    clean = fit.fit_curve(model, x, model_curve(model, x, consts, truth), consts=consts,
                          optimizer="lm")
    for k, v in truth.items():  # noiseless data: the optimizer lands on the truth
        assert clean.estimates[k] == pytest.approx(v, rel=1e-6, abs=1e-9)
    rng = np.random.default_rng(13)
    hits = dict.fromkeys(truth, 0)
    for _ in range(draws):
        y = model_curve(model, x, consts, truth) + rng.normal(0.0, sd, x.size)
        res = fit.fit_curve(model, x, y, consts=consts, optimizer="lm")
        assert res.ok, res.messages
        for k, v in truth.items():
            hits[k] += res.intervals[k][0] <= v <= res.intervals[k][1]
    if draws == 1:
        assert all(h == 1 for h in hits.values()), (hits, res.intervals)
    else:
        assert all(0.90 <= h / draws <= 0.99 for h in hits.values()), hits


def model_curve(model, x, consts, truth):
    """The law evaluated in NumPy from its formula (independent of the fitted jax function)."""
    c, t = consts, truth
    x = np.asarray(x, dtype=np.float64)
    return {
        "entropy_eq8": lambda: t.get("H0", 0) - t.get("k", 0) / (c[2] * x),
        "entropy_eq13_fusion": lambda: t.get("H0", 0) - t.get("kappa", 0) * (1 - x),
        "rank_law_fusion": lambda: t.get("r", 0) + t.get("C", 0) * np.exp(-t.get("a", 0) * (1 - x)),
        "cost_offset": lambda: t.get("a", 0) + t.get("b", 0) * (1 - x) ** 2,
        "cost_power": lambda: t.get("c", 0) * (1 - x) ** t.get("p", 0),
    }[model.name]()
