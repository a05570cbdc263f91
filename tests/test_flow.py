"""solve_flow: the public contract, the semi-analytic alpha = 0 solution, inputs, batches."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import meanfield as mf
from meanfield.stats.reference import zonal_alpha0_solution


def test_tracks_semi_analytic_alpha0_solution():
    # docs/theory.md "Verification problems": vMF(kappa=1) on S^2, alpha = 0. The particle |m| is a mean of
    # N unit vectors, so its fluctuation is <= N^{-1/2}; Heun at dt = 0.05 adds ~1e-4. Allow 4 N^{-1/2}.
    N = 20_000
    init = mf.VonMisesFisher(d=3, kappa=1.0)
    sol = mf.solve_flow(init, N=N, kernel=mf.Linear(0.0), t1=3.0, dt=0.05, method="heun", key=0,
                        save=mf.SaveAt(n_query=32, every=5))
    exact = zonal_alpha0_solution(init, sol.t)["mean_cos"]
    err = np.abs(sol.diagnostics["order_parameter"] - exact)
    assert err.max() < 4 / np.sqrt(N), err.max()
    assert exact[0] == pytest.approx(1 / np.tanh(1.0) - 1.0, abs=1e-12)  # coth k - 1/k at t = 0


def test_public_contract_names():
    init = mf.VonMisesFisher(d=3, kappa=1.0)
    sol = mf.solve_flow(init, N=2000, kernel=mf.Linear(0.0), t1=0.3, dt=0.01, key=0)
    assert sol.t.shape == sol.layers.shape == (31,)
    np.testing.assert_allclose(sol.t, 0.01 * sol.layers, rtol=1e-12)
    for name in ("order_parameter", "effective_rank", "normalized_entropy", "entropy_rate"):
        assert sol.diagnostics[name].shape == (31,) and np.all(np.isfinite(sol.diagnostics[name]))
    assert sol.x.shape == (2000, 3)
    np.testing.assert_allclose(np.linalg.norm(sol.x, axis=1), 1.0, atol=1e-12)
    # an explicit array is accepted (rows normalised) and gives the same run as the samples it holds
    x0 = np.asarray(init.sample(jax.random.fold_in(jax.random.PRNGKey(0), 0), 2000)) * 3.0
    sol2 = mf.solve_flow(x0, kernel=mf.Linear(0.0), t1=0.3, dt=0.01, key=0)
    np.testing.assert_allclose(sol2.x, sol.x, atol=1e-13)


def test_paper_time_map_and_defaults():
    sol = mf.solve_flow(mf.Uniform(4), N=500, dt="paper", layers=10)
    np.testing.assert_allclose(sol.t[-1], 10 / 500)
    assert sol.params["time_map"] == "paper" and sol.params["dt"] == pytest.approx(1 / 500)
    default = mf.solve_flow(mf.Uniform(4), N=300)
    assert default.layers[-1] == 24 and default.params["dt"] == 1.0 and default.params["method"] == "layer"


def test_float32_stays_float32():
    sol = mf.solve_flow(mf.Uniform(3), N=100, layers=3, dtype="float32")
    assert sol.x.dtype == np.float32 and sol.params["precision"] == "float32"


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(N=0), r"N must be an integer >= 1, got 0"),
        (dict(N=10, kernel=mf.Linear(-1.0)), r"alpha must be a finite number >= 0, got -1.0"),
        (dict(N=10, kernel=mf.Softmax(float("nan"))), r"alpha must be a finite number, got nan"),
        (dict(N=10, merge=0.5), r"merge must be a finite number >= 1, got 0.5"),
        (dict(N=10, merge=mf.Fusion(1.0)), r"fusion must be a finite number in \[0, 1\), got 1.0"),
        (dict(N=10, kernel="gauss"), r"unknown kernel 'gauss'; expected one of: linear, softmax, usa"),
        (dict(N=10, method="rk9"), r"unknown method 'rk9'; expected one of: layer, euler, heun, adaptive"),
        (dict(N=10, t1=1.0, dt=0.3), r"t1 = 1.0 is not a whole number"),
        (dict(N=10, t1=1.0, layers=3), r"give t1 or layers, not both"),
        (dict(N=10, dt="papers"), r"unknown dt 'papers'; expected one of: paper"),
        (dict(N=10, save=dict(every=2)), r"save must be a meanfield.SaveAt\(...\), got \{'every': 2\}"),
        (dict(N=10, save=mf.SaveAt(every=0)), r"save_every must be an integer >= 1, got 0"),
        (dict(N=10, save=mf.SaveAt(diagnostics="all")), r"unknown diagnostics 'all'"),
        (dict(N=10, checkpoint=3), r"checkpoint must be a meanfield.Checkpoint\(...\) or a file name, got 3"),
        (dict(N=10, progress="yes"), r"progress must be True, False, a Progress\(...\)"),
        # the flat options of the 26-parameter driver name their new spelling in one line
        (dict(N=10, alpha=0.5), r"solve_flow\(alpha=...\) is now spelled kernel=mf.Linear\(alpha\)"),
        (dict(N=10, save_every=2), r"solve_flow\(save_every=...\) is now spelled save=mf.SaveAt\(every=...\)"),
        (dict(N=10, resume="x.h5"), r"solve_flow\(resume=...\) is now spelled checkpoint=mf.Checkpoint"),
        (dict(N=10, weights=[1.0] * 10), r"solve_flow\(weights=...\) is now spelled init=mf.Weighted\(init, weights\)"),
    ],
)
def test_bad_options_raise_one_line(kwargs, match):
    with pytest.raises(ValueError, match=match) as e:
        mf.solve_flow(mf.Uniform(3), **kwargs)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    "x0,match",
    [
        (np.array([[1.0, 0.0], [np.nan, 1.0]]), r"tokens contain NaN or Inf \(first in row 1\)"),
        (np.array([[1.0, 0.0], [0.0, 0.0]]), r"zero row"),
        (np.zeros((0, 3)), r"at least one row"),
        (np.ones(5), r"\(N, d\) array, got shape \(5,\)"),
        (np.ones((4, 1)), r"d >= 2 columns"),
    ],
)
def test_bad_token_arrays(x0, match):
    with pytest.raises(ValueError, match=match):
        mf.solve_flow(x0)


def test_distribution_input_errors():
    with pytest.raises(ValueError, match=r"kappa must be a finite number >= 0, got -1"):
        mf.VonMisesFisher(3, -1)
    with pytest.raises(ValueError, match=r"d must be an integer >= 2, got 1"):
        mf.Uniform(1)
    with pytest.raises(ValueError, match="N .* is required"):
        mf.solve_flow(mf.Uniform(3))


@pytest.mark.parametrize("kwargs,match", [
    (dict(x0=np.ones((3, 3))), r"x0 must be a \(B, N, d\) array with B >= 1, N >= 1 and d >= 2, got shape \(3, 3\)"),
    (dict(x0=np.ones((2, 3, 1))), r"d >= 2, got shape \(2, 3, 1\)"),
    (dict(x0=np.where(np.arange(18).reshape(2, 3, 3) == 13, np.nan, 1.0)), r"x0 contains NaN or Inf \(first in system 1, row 1\)"),
    (dict(x0=np.where(np.arange(3)[None, :, None] == 2, 0.0, np.ones((2, 3, 3)))),
     r"x0 contains 2 zero row\(s\) \(first: system 0, row 2\)"),
    (dict(alpha=[1.0, -2.0]), r"alpha must be a finite number >= 0 or a \(2,\) array of them, got -2.0 at index 1"),
    (dict(alpha=[1.0, 2.0, 3.0]), r"alpha must be .* a \(2,\) array of them, got shape \(3,\)"),
    (dict(merge=0.5), "merge must be a finite number >= 1, got 0.5"),
    (dict(merge=2.0, fusion=0.5), "give merge or fusion, not both"),
    (dict(layers=0), "layers must be an integer >= 1, got 0"),
    (dict(dt=0.0), "dt must be a finite number > 0, got 0.0"),
    (dict(method="adaptive"), "fixed-step schemes only"),
    (dict(engine="gpu"), "unknown engine 'gpu'; expected one of: auto, jax, native"),
    (dict(engine="native", method="euler"), "engine='native' runs the layer scheme only, got 'euler'"),
    (dict(engine="native", kernel="linear"), "engine='native' runs the softmax kernel only"),
])
def test_batch_bad_input_one_line(kwargs, match):
    """The one batch validation (meanfield.studies.batch.batch_inputs): one line naming the bad value."""
    kw = dict(x0=np.ones((2, 3, 3)), kernel="softmax", alpha=1.0, layers=2, dt=0.1)
    kw.update(kwargs)
    with pytest.raises(ValueError, match=match) as err:
        mf.simulate_batch(kw.pop("x0"), **kw)
    assert "\n" not in str(err.value)


def test_batch_and_phase_diagram_share_the_checks():
    from meanfield.studies.phase import phase_diagram

    bad = np.ones((2, 4, 3))
    bad[1, 3] = np.inf
    for run in (lambda: mf.simulate_batch(bad, kernel="softmax"), lambda: phase_diagram([1.0], x0=bad, t1=0.2, dt=0.1,
                                                                                         n_saves=2)):
        with pytest.raises(ValueError, match=r"^x0 contains NaN or Inf \(first in system 1, row 3\)$"):
            run()
    with pytest.raises(ValueError, match=r"^betas must be a non-empty 1-D array of finite numbers >= 0, got nan at index 1$"):
        phase_diagram([1.0, np.nan], n=4, d=3, n_systems=2, t1=0.2, dt=0.1, n_saves=2)


def test_batch_equals_individual_runs():
    # one vmapped program over (system, alpha) pairs == separate solve_flow runs (float64 round-off)
    xs = np.stack([np.asarray(mf.Uniform(3).sample(s, 200)) for s in range(3)])
    alphas = np.array([0.0, 1.0, 4.0])
    out = mf.simulate_batch(xs, kernel="softmax", alpha=alphas, dt=0.2, layers=15)
    for i in range(3):
        sol = mf.solve_flow(xs[i], kernel=mf.Softmax(float(alphas[i])), dt=0.2, layers=15)
        np.testing.assert_allclose(out["x"][i], sol.x, atol=1e-12)
        np.testing.assert_allclose(out["order_parameter"][i], sol.diagnostics["order_parameter"], atol=1e-12)


class _Bar:
    """A progress object: with it the runner advances in chunks of ~1% of the run."""

    def __init__(self):
        self.steps = []

    def init(self, total, desc=""):
        pass

    def step(self, n):
        self.steps.append(n)

    def close(self):
        pass


@pytest.mark.parametrize("method", ["layer", "heun"])
@pytest.mark.parametrize("kernel", [mf.Linear(0.25), mf.Softmax(1.0)], ids=["linear", "softmax"])
def test_chunking_and_donation_change_nothing(method, kernel):
    # Without a bar a fixed-step scheme goes from save to save in one donated call; with one it takes
    # chunks of ceil(300/100) = 3 steps. The same arithmetic either way: equal bit for bit.
    x0 = jnp.asarray(mf.Uniform(4).sample(jax.random.key(3), 200))
    keep = np.array(x0)
    kw = dict(kernel=kernel, method=method, layers=300, dt=0.01, save=mf.SaveAt(every=150, tokens=True))
    quiet = mf.solve_flow(x0, **kw)
    bar = _Bar()
    chunked = mf.solve_flow(x0, progress=bar, **kw)
    assert bar.steps[1:] == [3] * 100  # the first call reports the start (0 steps)
    np.testing.assert_array_equal(quiet.x, chunked.x)
    np.testing.assert_array_equal(quiet.snapshots, chunked.snapshots)
    for name, val in quiet.diagnostics.items():
        np.testing.assert_array_equal(val, chunked.diagnostics[name], err_msg=name)
    np.testing.assert_array_equal(np.asarray(x0), keep)  # the caller's array is never donated
    assert not np.array_equal(quiet.snapshots[0], quiet.snapshots[-1])  # snapshots are copies, not views
