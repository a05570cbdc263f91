"""meanfield.Stepper: the public init/step on which solve_flow is built.

A loop written by hand over ``Stepper.step`` takes the same steps as ``solve_flow`` (the runner is a
loop over the same jitted advance), so the comparison is exact (``np.array_equal``): any
difference is a bug, not round-off.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

import meanfield as mf

LAYERS = 7


def _x0(n=120, d=4, seed=0):
    return np.asarray(mf.Uniform(d).sample(jax.random.key(seed), n))


@pytest.mark.parametrize("method", ["layer", "euler", "heun"])
@pytest.mark.parametrize("kernel", [mf.Linear(0.3), mf.Softmax(1.5)], ids=["linear", "softmax"])
def test_hand_written_loop_equals_solve_flow(kernel, method):
    spec = mf.make_spec(_x0(), kernel=kernel, method=method, layers=LAYERS, dt=0.2)
    st = mf.Stepper(spec)
    state = st.init()
    seen = [st.tokens(state)]
    for _ in range(LAYERS):
        state = st.step(state)
        seen.append(st.tokens(state))
    sol = mf.solve_flow(_x0(), kernel=kernel, method=method, layers=LAYERS, dt=0.2, save=mf.SaveAt(tokens=True))
    assert state.layer == LAYERS
    np.testing.assert_array_equal(st.tokens(state), sol.x)
    np.testing.assert_array_equal(np.stack(seen), sol.snapshots)
    # one save's statistics at the final state, as solve_flow recorded them (its last save takes an
    # extra field evaluation: the same function of the same state)
    last = st.diagnostics(state)
    for name in ("order_parameter", "effective_rank", "entropy_rate", "covariance_effective_rank"):
        np.testing.assert_array_equal(last[name], sol.diagnostics[name][-1], err_msg=name)


def test_steps_of_any_length_and_the_old_state_stays_valid():
    st = mf.Stepper(mf.make_spec(_x0(), kernel=mf.Linear(0.3), layers=LAYERS, dt=0.2))
    s0 = st.init()
    a = st.step(st.step(s0, 3), 4)
    b = st.step(s0, 7)  # s0 was not consumed by the first loop
    np.testing.assert_array_equal(st.tokens(a), st.tokens(b))
    assert a.layer == b.layer == 7


def test_intervening_between_layers():
    """Editing the tokens between layers (here: flipping one token) changes the rest of the run,
    and putting back the same tokens changes nothing beyond the round-off of renormalising them
    (1 ulp, ~1e-16 in float64, through 4 contracting layers: bound 1e-13)."""
    kw = dict(kernel=mf.Softmax(1.0), layers=LAYERS, dt=0.2)
    st = mf.Stepper(mf.make_spec(_x0(), **kw))
    state = st.step(st.init(), 3)
    same = st.step(st.with_tokens(state, st.tokens(state)), 4)
    np.testing.assert_allclose(st.tokens(same), mf.solve_flow(_x0(), **kw).x, rtol=0, atol=1e-13)
    x = st.tokens(state)
    x[0] = -x[0]
    flipped = st.step(st.with_tokens(state, x), 4)
    assert np.abs(st.tokens(flipped) - st.tokens(same)).max() > 1e-3


@pytest.mark.parametrize("merging", [mf.ToMe(ratio=0.5), mf.FastVGGT(ratio=0.3, protected_fraction=0.1)],
                         ids=["tome", "fastvggt"])
def test_hand_written_loop_equals_solve_flow_with_merging(merging):
    kw = dict(kernel=mf.Softmax(1.0), layers=LAYERS, dt=0.3, merging=merging)
    st = mf.Stepper(mf.make_spec(_x0(64, 3), **kw))
    state = st.init()
    for _ in range(LAYERS):
        state = st.step(state)
    sol = mf.solve_flow(_x0(64, 3), **kw)
    np.testing.assert_array_equal(st.tokens(state), sol.x)
    if isinstance(merging, mf.ToMe):
        np.testing.assert_array_equal(state.run.weights(), sol.weights)


def test_bad_uses_raise_one_line():
    with pytest.raises(ValueError, match="density method 'zonal' runs whole"):
        mf.Stepper(mf.make_spec(mf.VonMisesFisher(3, 1.0), N=10, method="zonal", layers=1))
    st = mf.Stepper(mf.make_spec(_x0(), layers=2))
    with pytest.raises(ValueError, match=r"tokens must have shape \(120, 4\), got \(3, 4\)"):
        st.init(np.ones((3, 4)))
    with pytest.raises(ValueError, match="n must be an integer >= 1, got 0"):
        st.step(st.init(), 0)
    sde = mf.Stepper(mf.make_spec(_x0(), method=mf.SphereSDE(0.1), layers=2))
    with pytest.raises(ValueError, match="stochastic: pass key="):
        sde.step(sde.init())
