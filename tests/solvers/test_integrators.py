"""Integrators: tokens stay on the sphere, each scheme converges at its order, merge = time change."""

import jax.numpy as jnp
import numpy as np
import pytest

import meanfield as mf
from solvers import INTEGRATORS, AttentionField, Softmax, make_integrator

T = 2.0
ALPHA = 0.5


@pytest.fixture(scope="module")
def x0():
    return np.asarray(mf.VonMisesFisher(3, 1.0).sample(1, 400))


@pytest.fixture(scope="module")
def reference(x0):
    # Independent reference: adaptive Tsit5 at rtol = atol = 1e-12 (error ~1e-11, far below the
    # smallest fixed-step error measured here, ~3e-4).
    return mf.solve_flow(x0, kernel=mf.Linear(ALPHA), t1=T, method=mf.Adaptive(rtol=1e-12, atol=1e-12), save=mf.SaveAt(every=10**6)).x


@pytest.mark.parametrize("method", ["layer", "euler", "heun"])
def test_tokens_stay_on_sphere(method):
    x = mf.Uniform(4).sample(3, 300)
    field = AttentionField(Softmax(2.0, key_block=128), 1.0)
    y, _ = make_integrator(method).advance(field, x, 200, 0.05)
    # retraction renormalises every step: float64 round-off only
    assert float(jnp.max(jnp.abs(jnp.linalg.norm(y, axis=1) - 1))) < 1e-13


@pytest.mark.parametrize("method,order", [("layer", 1), ("euler", 1), ("heun", 2)])
def test_convergence_order(x0, reference, method, order):
    dts = [0.2, 0.1, 0.05]
    errs = [np.abs(mf.solve_flow(x0, kernel=mf.Linear(ALPHA), t1=T, dt=h, method=method, save=mf.SaveAt(every=10**6)).x - reference).max()
            for h in dts]
    slopes = np.diff(np.log(errs)) / np.diff(np.log(dts))
    print(f"{method}: max |x - x_ref| at dt = {dts}: {errs}; observed orders {slopes}")  # pytest -s shows it
    # asymptotic regime: observed slopes within 0.2 of the formal order
    assert np.all(np.abs(slopes - order) < 0.2), f"{method}: errors {errs}, slopes {slopes}"
    assert INTEGRATORS[method].order == order


def test_adaptive_meets_tolerance_and_reports_drift(x0, reference):
    sol = mf.solve_flow(x0, kernel=mf.Linear(ALPHA), t1=T, method=mf.Adaptive(rtol=1e-6, atol=1e-8), save=mf.SaveAt(every=10**6))
    err = np.abs(sol.x - reference).max()
    drift = sol.diagnostics["norm_drift"][-1]
    # local tolerances 1e-6 accumulate over O(10) steps; the drift off the sphere is of that size too
    assert err < 1e-5 and 0 < drift < 1e-5
    assert sol.stats["field_evaluations"] > 0


def test_merge_is_a_time_change_step_for_step(x0):
    # M = 2.5 with dt = 0.25 performs the same arithmetic as M = 1 with dt = 0.1 (h/M = 0.1):
    # agreement to float64 round-off accumulated over 20 steps.
    a = mf.solve_flow(x0, kernel=mf.Linear(ALPHA), layers=20, dt=0.1, method="heun")
    b = mf.solve_flow(x0, kernel=mf.Linear(ALPHA), layers=20, dt=0.25, merge=2.5, method="heun")
    np.testing.assert_allclose(a.x, b.x, atol=1e-12)
    np.testing.assert_allclose(a.diagnostics["order_parameter"], b.diagnostics["order_parameter"], atol=1e-12)
    np.testing.assert_allclose(b.t, 2.5 * a.t, rtol=1e-12)
    # entropy rates in time are divided by M (dH/dt^{(M)}(Mt) = dH/dt^{(1)}(t) / M)
    np.testing.assert_allclose(b.diagnostics["entropy_rate"] * 2.5, a.diagnostics["entropy_rate"], atol=1e-12)


def test_merge_identity_of_the_ode(x0):
    # rho^(M)(t) = rho^(1)(t/M), checked with the adaptive solver at tight tolerance (1e-10 local).
    a = mf.solve_flow(x0, kernel=mf.Linear(ALPHA), t1=1.0, method=mf.Adaptive(rtol=1e-11, atol=1e-11), save=mf.SaveAt(every=10**6))
    b = mf.solve_flow(x0, kernel=mf.Linear(ALPHA), t1=3.0, merge=mf.Fusion(2.0 / 3.0),
                      method=mf.Adaptive(rtol=1e-11, atol=1e-11), save=mf.SaveAt(every=10**6))
    assert b.params["merge"] == pytest.approx(3.0)
    np.testing.assert_allclose(a.x, b.x, atol=1e-8)
