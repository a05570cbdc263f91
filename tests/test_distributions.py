"""Distributions: exact normalisation, exact sampling (Monte-Carlo checks), zonal marginals."""

import math

import numpy as np
import pytest
from scipy import integrate

import meanfield as mf
from meanfield.stats._special import log_bessel_iv


@pytest.mark.parametrize("d,kappa", [(2, 4.0), (3, 1.0), (5, 2.0), (64, 10.0), (1024, 3.0), (1024, 800.0)])
def test_zonal_marginal_is_normalised_and_has_the_right_mean(d, kappa):
    # Independent check of log C_d(kappa): integrate the zonal marginal by adaptive quadrature.
    v = mf.VonMisesFisher(d, kappa)
    f = lambda t: math.exp(v.zonal_log_marginal(np.array([t]))[0]) if 0 < t < math.pi else 0.0  # noqa: E731
    mass = integrate.quad(f, 0, math.pi, limit=400, epsabs=0, epsrel=1e-12)[0]
    mean = integrate.quad(lambda t: f(t) * math.cos(t), 0, math.pi, limit=400, epsabs=1e-14, epsrel=1e-12)[0]
    assert mass == pytest.approx(1.0, abs=1e-9)
    assert v.mean_cos() == pytest.approx(mean, abs=1e-9)


def test_vmf_d3_closed_form():
    for k in (0.5, 1.0, 30.0):
        v = mf.VonMisesFisher(3, k)
        assert v.log_norm == pytest.approx(math.log(k / (4 * math.pi * math.sinh(k))), rel=1e-13)
        assert v.mean_cos() == pytest.approx(1 / math.tanh(k) - 1 / k, rel=1e-13)


def test_log_bessel_underflow_branch_matches_series():
    # order >> argument: ive underflows, the log-space series takes over; compare with the leading
    # term nu log(x/2) - lgamma(nu + 1) + log(1 + x^2/(4(nu+1)) + ...), accurate to ~x^4/nu^2.
    nu, x = 2000.0, 1.0
    approx = nu * math.log(x / 2) - math.lgamma(nu + 1) + math.log1p(x * x / (4 * (nu + 1)))
    assert log_bessel_iv(nu, x) == pytest.approx(approx, abs=1e-6)


@pytest.mark.parametrize("d,kappa,dtype", [(3, 1.0, "float64"), (3, 200.0, "float32"), (64, 10.0, "float32"),
                                           (1024, 500.0, "float64"), (2, 4.0, "float64")])
def test_wood_sampler_matches_mean_resultant_length(d, kappa, dtype):
    # Monte Carlo: the sample mean of <x, mu> has std <= sqrt(Var/N); allow 5 sigma.
    N = 40_000 if d < 100 else 10_000
    x = np.asarray(mf.VonMisesFisher(d, kappa).sample(7, N, dtype=dtype), dtype=np.float64)
    assert x.dtype == np.float64 and np.abs(np.linalg.norm(x, axis=1) - 1).max() < 1e-6
    c = x[:, 0]
    assert abs(c.mean() - mf.VonMisesFisher(d, kappa).mean_cos()) < 5 * c.std() / math.sqrt(N)
    # rotational symmetry about the mean: the other coordinates average to zero
    assert np.abs(x[:, 1:].mean(0)).max() < 5 * x[:, 1:].std(0).max() / math.sqrt(N) + 1e-12


def test_mean_direction_and_log_density():
    mu = np.array([0.0, 0.6, 0.8])
    v = mf.VonMisesFisher(3, 5.0, mean=mu)
    x = np.asarray(v.sample(0, 50_000))
    assert np.linalg.norm(x.mean(0) / np.linalg.norm(x.mean(0)) - mu) < 0.01
    # the density integrates to one: importance sampling from the uniform measure (MC, 5 sigma)
    u = np.asarray(mf.Uniform(3).sample(1, 200_000))
    w = np.exp(np.asarray(v.log_density(u))) * 4 * math.pi
    assert abs(w.mean() - 1) < 5 * w.std() / math.sqrt(len(w))


def test_uniform_and_mixture():
    u = mf.Uniform(5)
    assert float(u.log_density(np.eye(5))[0]) == pytest.approx(-math.log(8 * math.pi**2 / 3), rel=1e-13)
    assert u.mean_cos() == 0
    th = np.linspace(0, math.pi, 20001)
    assert integrate.simpson(np.exp(u.zonal_log_marginal(th)), x=th) == pytest.approx(1, abs=1e-8)
    mix = mf.VonMisesFisherMixture(3, [2.0, 8.0], [[1, 0, 0], [0, 0, 1]], weights=[0.25, 0.75])
    x = np.asarray(mix.sample(3, 100_000))
    expect = 0.25 * mf.VonMisesFisher(3, 2.0).mean_cos() * np.array([1, 0, 0]) + 0.75 * mf.VonMisesFisher(
        3, 8.0).mean_cos() * np.array([0, 0, 1])
    assert np.abs(x.mean(0) - expect).max() < 5 / math.sqrt(100_000)
    uu = np.asarray(mf.Uniform(3).sample(1, 200_000))
    w = np.exp(np.asarray(mix.log_density(uu))) * 4 * math.pi
    assert abs(w.mean() - 1) < 5 * w.std() / math.sqrt(len(w))
    with pytest.raises(ValueError, match="not axisymmetric"):
        mix.zonal_log_marginal(th)
    same = mf.VonMisesFisherMixture(3, [2.0, 8.0], [[1, 0, 0], [1, 0, 0]])
    assert same.mean_cos() == pytest.approx(0.5 * (mf.VonMisesFisher(3, 2.0).mean_cos()
                                                    + mf.VonMisesFisher(3, 8.0).mean_cos()))
