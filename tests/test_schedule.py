"""Kernel schedules (``meanfield.Schedule``): a kernel per layer, or a new one every ``tau``, in one run.

References: the same flow taken one ``solve_flow(layers=1)`` call per layer (how the own-weights
replay ran before schedules; each call renormalises its start, 1 ulp per layer, so tokens agree to
1e-12 in float64 after a few layers, not bit for bit), and checkpoint/resume compared exactly.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import meanfield as mf
from meanfield.flow.checkpoint import load
from meanfield.studies.ensembles import redrawn_flow

STATS = ("order_parameter", "effective_rank", "row_entropy", "covariance_effective_rank")


def _x0(n=60, d=5, seed=0):
    return np.asarray(mf.Uniform(d).sample(jax.random.key(seed), n))


def _bilinear_layers(d, n, seed=1):
    rng = np.random.default_rng(seed)
    return [mf.Bilinear(1.5, B=jnp.asarray(np.eye(d) + 0.3 * rng.normal(size=(d, d)))) for _ in range(n)]


def test_schedule_equals_one_call_per_layer():
    x0, kernels = _x0(), _bilinear_layers(5, 6)
    sol = mf.solve_flow(x0, kernel=kernels, dt=0.3)  # a list: one kernel per layer, 6 layers
    x, per_layer = x0, []
    for k in kernels:
        one = mf.solve_flow(x, kernel=k, layers=1, dt=0.3)
        per_layer.append({s: one.diagnostics[s][0] for s in STATS})
        x = one.x
    assert sol.layers[-1] == 6 and sol.params["kernel_schedule"] == {"kernels": 6, "every": 1}
    np.testing.assert_allclose(sol.x, x, rtol=0, atol=1e-12)
    for i, row in enumerate(per_layer):  # the save at layer i: block i's statistics at its input
        for s in STATS:
            np.testing.assert_allclose(sol.diagnostics[s][i], row[s], rtol=1e-10, atol=1e-12, err_msg=f"{s} {i}")


def test_schedule_is_recorded_in_the_results_file(tmp_path):
    sol = mf.solve_flow(_x0(), kernel=[mf.Linear(0.2), mf.Linear(0.5)])
    back = mf.load_results(mf.save_results(tmp_path / "s.h5", sol))
    assert back.params["kernel_schedule"] == {"kernels": 2, "every": 1} and back.params["alpha"] == 0.2


def test_every_k_layers_and_the_stepper():
    x0, kernels = _x0(), _bilinear_layers(5, 3)
    sol = mf.solve_flow(x0, kernel=mf.Schedule(kernels, every=4), dt=0.2)
    assert sol.layers[-1] == 12
    ref = x0
    for k in kernels:
        ref = mf.solve_flow(ref, kernel=k, layers=4, dt=0.2).x
    np.testing.assert_allclose(sol.x, ref, rtol=0, atol=1e-12)
    st = mf.Stepper(mf.make_spec(x0, kernel=mf.Schedule(kernels, every=4), dt=0.2))
    state = st.step(st.step(st.init(), 5), 7)  # steps that cross the kernel changes
    # solve_flow's first step after a save uses Bilinear's drive_and_divergence: round-off apart
    np.testing.assert_allclose(st.tokens(state), sol.x, rtol=0, atol=1e-13)


def test_schedule_checkpoints_and_resumes_bit_for_bit(tmp_path):
    x0, kernels = _x0(), _bilinear_layers(5, 8)
    kw = dict(kernel=kernels, dt=0.25, save=mf.SaveAt(every=2))
    ref = mf.solve_flow(x0, **kw)
    ck = tmp_path / "s.ckpt.h5"
    mf.solve_flow(x0, checkpoint=mf.Checkpoint(ck, every=2), **kw)
    assert load(ck)["save_index"] == 2  # saves 0..4, checkpoints after save 2 (layer 4: mid-schedule)
    resumed = mf.solve_flow(x0, checkpoint=mf.Checkpoint(resume=ck), **kw)
    np.testing.assert_array_equal(resumed.x, ref.x)
    for name, val in ref.diagnostics.items():
        np.testing.assert_array_equal(resumed.diagnostics[name], val, err_msg=name)
    other = list(kernels)
    other[5] = _bilinear_layers(5, 1, seed=9)[0]  # another weight in one later layer: another run
    with pytest.raises(ValueError, match="different run"):
        mf.solve_flow(x0, kernel=other, dt=0.25, save=mf.SaveAt(every=2), checkpoint=mf.Checkpoint(resume=ck))


def test_redrawn_flow_is_one_run_and_resumes(tmp_path):
    x0 = _x0(40, 4, 2)
    kw = dict(kq="goe", v="gaussian", tau=0.5, t1=2.0, dt=0.1, dtype=jnp.float64)
    a = redrawn_flow(x0, **kw)
    x = x0  # the per-period reference: the same draws, one solve_flow per period
    base = jax.random.PRNGKey(0)
    from solvers.ensembles import random_weights
    for p in range(4):
        B, V = random_weights(jax.random.fold_in(base, p), 4, "goe", "gaussian", 1, dtype=jnp.float64)
        x = mf.solve_flow(x, kernel=mf.Bilinear(1.0, B=B, V=V), t1=0.5, dt=0.1).x
    np.testing.assert_allclose(a.x, x, rtol=0, atol=1e-12)
    ck = tmp_path / "e.ckpt.h5"
    redrawn_flow(x0, checkpoint=mf.Checkpoint(ck, every=7), **kw)
    b = redrawn_flow(x0, checkpoint=mf.Checkpoint(resume=ck), **kw)
    np.testing.assert_array_equal(a.x, b.x)
    np.testing.assert_array_equal(a.diagnostics["order_parameter"], b.diagnostics["order_parameter"])


@pytest.mark.parametrize("kw,match", [
    (dict(kernel=[mf.Linear(0.2), mf.Linear(0.3)], layers=3), r"covers 2 steps, but the run has 3"),
    (dict(kernel=[mf.Linear(0.2), mf.Softmax(0.3)]), r"Schedule kernels must be of one class, got Linear, Softmax"),
    (dict(kernel=mf.Schedule([], every=1)), r"Schedule kernels must be a non-empty list"),
    (dict(kernel=mf.Schedule([mf.Linear(0.2)], every=0)), r"Schedule every must be an integer >= 1, got 0"),
    (dict(kernel=[mf.Linear(0.2)], merging=mf.ToMe(ratio=0.1)), r"Schedule runs without merging"),
])
def test_bad_schedules_raise_one_line(kw, match):
    with pytest.raises(ValueError, match=match):
        mf.solve_flow(_x0(), **kw)
    with pytest.raises(ValueError, match="not the density method 'zonal'"):
        mf.solve_flow(mf.VonMisesFisher(3, 1.0), N=10, kernel=[mf.Linear(0.2)], method="zonal")
