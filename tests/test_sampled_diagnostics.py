"""The default ("sampled") diagnostics of solve_flow against the exact ones (docs/theory.md "Diagnostics").

* The entropy rate is exact in both modes: the particle runner reads the divergence off the next
  step's own key pass. Checked against a separate exact evaluation on the saved tokens (round-off).
* The attention statistics of N > key_sample tokens are estimated from the query rows over a
  seeded subsample of K keys. Monte-Carlo tolerances: with K = 4096 a key average has relative
  error about K^{-1/2} = 1.6 % times the coefficient of variation; the measured errors on this state
  (6 subsamples) were effective rank -0.5 % +- 0.3 %, normalised entropy -0.1 % +- 0.07 %, row
  entropy 1e-4, logit std 0.2 %; the bounds below are about 5x those. The max weight of a row is
  the largest over the sampled keys, so it can only be biased low.
"""

import jax.numpy as jnp
import numpy as np
import pytest

import meanfield as mf
from meanfield.stats.diagnostics import entropy_rate, query_subset, simulation_diagnostics_jit
from meanfield.flow.driver import resolve_kernel

K = 4096


@pytest.mark.parametrize("method", ["layer", "euler", "heun", "adaptive"])
def test_entropy_rate_of_the_runner_is_exact(method):
    x0 = np.asarray(mf.VonMisesFisher(4, 1.0).sample(0, 600, dtype=jnp.float64))
    sol = mf.solve_flow(x0, kernel=mf.Softmax(2.0), layers=6, dt=0.2, method=method,
                        save=mf.SaveAt(every=2, tokens=True), merge=1.5)
    ref = [float(entropy_rate(mf.Softmax(2.0), jnp.asarray(s), mobility=1 / 1.5)) for s in sol.snapshots]
    np.testing.assert_allclose(sol.diagnostics["entropy_rate"], ref, atol=1e-13, rtol=0)
    fused = method != "adaptive"
    assert sol.stats["diagnostic_field_evaluations"] == (1 if fused else len(sol.t))


@pytest.mark.parametrize("name,alpha", [("softmax", 2.0), ("linear", 0.25), ("usa", 1.0)])
def test_sampled_attention_statistics_estimate_the_exact_ones(name, alpha):
    N = 20_000
    x = mf.VonMisesFisher(8, 3.0).sample(0, N, dtype=jnp.float64)
    k = resolve_kernel(name, alpha)
    q = jnp.asarray(query_subset(N, 256, 0))
    exact = simulation_diagnostics_jit(k, x, q)
    est = simulation_diagnostics_jit(k, x, q, None, 1.0, jnp.asarray(query_subset(N, K, 1)))
    rel = {n: abs(float(est[n]) / float(exact[n]) - 1) for n in exact if np.ndim(exact[n]) == 0}
    assert rel["effective_rank"] < 0.03 and rel["normalized_entropy"] < 0.01, rel
    assert rel["row_entropy"] < 1e-3 and rel["logit_std"] < 0.02, rel
    assert abs(float(est["logit_mean"] - exact["logit_mean"])) < 4 * alpha / np.sqrt(K)
    assert 0.5 * float(exact["max_weight"]) <= float(est["max_weight"]) <= float(exact["max_weight"]) * (1 + 1e-9)
    for n in ("order_parameter", "covariance_effective_rank", "collapse_residual", "entropy_rate"):
        assert rel[n] < 1e-12, (n, rel[n])  # not estimated


def test_the_mode_is_recorded_and_small_runs_are_exact():
    small = mf.solve_flow(mf.Uniform(3), N=300, layers=2)
    assert small.params["diagnostics"] == "exact"  # N <= key_sample: nothing is estimated
    big = mf.solve_flow(mf.Uniform(3), N=5000, layers=2, save=mf.SaveAt(n_query=64))
    exact = mf.solve_flow(mf.Uniform(3), N=5000, layers=2, save=mf.SaveAt(n_query=64, diagnostics="exact"))
    assert big.params["diagnostics"] == "sampled" and exact.params["diagnostics"] == "exact"
    assert big.params["key_sample"] == K
    np.testing.assert_array_equal(big.x, exact.x)  # the flow itself is untouched
    with pytest.raises(ValueError, match="unknown diagnostics 'fast'; expected one of: sampled, exact"):
        mf.solve_flow(mf.Uniform(3), N=10, layers=1, save=mf.SaveAt(diagnostics="fast"))
