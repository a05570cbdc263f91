"""Token distributions on S^{d-1}: exact sampling and exact log-densities w.r.t. surface measure.

* :class:`Uniform` -- normalised Gaussian vectors.
* :class:`VonMisesFisher` -- density ``C_d(kappa) exp(kappa <mu, x>)``, sampled by Wood's (1994)
  rejection algorithm, written in a cancellation-free form so float32 stays exact at large kappa.
* :class:`VonMisesFisherMixture` -- a finite mixture of vMFs.

Axisymmetric distributions also give the *zonal marginal* of ``theta = angle(x, axis)``:
``f(theta) = rho(theta) |S^{d-2}| sin^{d-2} theta`` on ``[0, pi]`` (docs/theory.md "Density solvers"),
which the density solvers start from.
"""

from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import logsumexp

from meanfield import _validate
from meanfield.stats._special import log_bessel_iv, log_sphere_area, mean_resultant_length


def as_key(key):
    """A JAX PRNG key from an int seed or a key."""
    if isinstance(key, (int, np.integer)):
        return jax.random.PRNGKey(int(key))
    return key


def _dtype(dtype):
    return jnp.dtype(dtype) if dtype is not None else jnp.zeros(()).dtype


def _unit(v, d, name="mean"):
    v = np.asarray(v, dtype=np.float64)
    if v.shape != (d,) or not np.all(np.isfinite(v)) or np.linalg.norm(v) == 0:
        raise ValueError(f"{name} must be a finite non-zero vector of length d = {d}, got {v!r}")
    return v / np.linalg.norm(v)


def _e1(d):
    e = np.zeros(d)
    e[0] = 1.0
    return e


def _householder_to(y, mu):
    """Reflect rows ``y`` (sampled about e_1) so that e_1 maps to ``mu`` (rows of mu or one vector)."""
    u = jnp.zeros_like(y).at[..., 0].set(1.0) - mu
    nu2 = jnp.sum(u * u, axis=-1, keepdims=True)
    safe = nu2 > 1e-30
    refl = y - 2.0 * u * jnp.sum(u * y, axis=-1, keepdims=True) / jnp.where(safe, nu2, 1.0)
    return jnp.where(safe, refl, y)


@partial(jax.jit, static_argnames=("d", "dtype"))
def wood_sample(key, kappa, mu, d: int, dtype):
    """Wood (1994) sampler for vMF on S^{d-1} with per-row ``kappa`` (N,) and ``mu`` (N, d).

    With ``b = (d-1)/(2 kappa + sqrt(4 kappa^2 + (d-1)^2))``, ``x0 = (1-b)/(1+b)``, a proposal
    ``z ~ Beta((d-1)/2, (d-1)/2)`` gives ``w = (1-(1+b)z)/(1-(1-b)z)``, accepted when
    ``kappa (w - x0) + (d-1) log((1 - x0 w)/(1 - x0^2)) >= log u``. Using the identities
    ``1 - x0 w = 2b/((1+b)(1-(1-b)z))``, ``1 - x0^2 = 4b/(1+b)^2``, ``1 - w = 2bz/(1-(1-b)z)``
    the test and ``sqrt(1 - w^2)`` are free of cancellation for any kappa.
    """
    n = kappa.shape[0]
    dm1 = d - 1.0
    b = dm1 / (2.0 * kappa + jnp.sqrt(4.0 * kappa**2 + dm1**2))
    k_loop, k_dir = jax.random.split(key)

    def propose(k):
        k1, k2 = jax.random.split(k)
        z = jax.random.beta(k1, dm1 / 2, dm1 / 2, (n,), dtype)
        u = jax.random.uniform(k2, (n,), dtype, minval=jnp.finfo(dtype).tiny)
        den = 1.0 - (1.0 - b) * z
        one_minus_w = 2.0 * b * z / den
        one_minus_x0 = 2.0 * b / (1.0 + b)
        # (1 - x0 w) / (1 - x0^2) = (1 + b) / (2 den)
        log_ratio = jnp.log((1.0 + b) / (2.0 * den))
        ok = kappa * (one_minus_x0 - one_minus_w) + dm1 * log_ratio >= jnp.log(u)
        return one_minus_w, z, den, ok

    def cond(state):
        return ~jnp.all(state[3])

    def body(state):
        k, omw, zz, acc = state
        k, sub = jax.random.split(k)
        omw_new, z, den, ok = propose(sub)
        take = ~acc & ok
        return k, jnp.where(take, omw_new, omw), jnp.where(take, z, zz), acc | ok

    zeros = jnp.zeros((n,), dtype)
    _, omw, z, _ = jax.lax.while_loop(cond, body, (k_loop, zeros, zeros, jnp.zeros((n,), bool)))
    den = 1.0 - (1.0 - b) * z
    w = 1.0 - omw
    sin_t = 2.0 * jnp.sqrt(b * z * (1.0 - z)) / den
    v = jax.random.normal(k_dir, (n, d - 1), dtype)
    v = v / jnp.linalg.norm(v, axis=1, keepdims=True)
    y = jnp.concatenate([w[:, None], sin_t[:, None] * v], axis=1)
    return _householder_to(y, mu)


class Weighted:
    """An initial measure with token masses: ``solve_flow(Weighted(init, weights), ...)``.

    ``init`` is a distribution or an ``(N, d)`` token array; ``weights`` the masses ``w_j >= 0``,
    shape ``(N,)`` (checked by ``solve_flow`` against N). The flow is that of the weighted measure
    ``sum_j w_j delta_{x_j} / sum_j w_j`` (softmax with proportional attention).
    """

    def __init__(self, init, weights):
        if isinstance(init, Weighted):
            raise ValueError("Weighted(init, weights): init already carries weights")
        self.init, self.weights = init, weights

    def __repr__(self):
        return f"Weighted({self.init!r}, weights=<{np.shape(self.weights)}>)"


class Uniform:
    """The uniform (normalised surface) measure on S^{d-1}; the flow's unstable steady state."""

    def __init__(self, d: int):
        self.d = _validate.integer("d", d, 2)
        self.axis = _e1(self.d)
        self._log_area = log_sphere_area(self.d)

    def __repr__(self):
        return f"Uniform(d={self.d})"

    def describe(self) -> dict:
        return {"name": "uniform", "d": self.d}

    def sample(self, key, N: int, dtype=None):
        N = _validate.integer("N", N, 1)
        x = jax.random.normal(as_key(key), (N, self.d), _dtype(dtype))
        return x / jnp.linalg.norm(x, axis=1, keepdims=True)

    def log_density(self, x):
        x = jnp.asarray(x)
        return jnp.full(x.shape[:-1], -self._log_area, x.dtype)

    def zonal_log_marginal(self, theta):
        """``log f(theta)``, ``f = sin^{d-2} theta / B``, ``B = sqrt(pi) Gamma((d-1)/2) / Gamma(d/2)``."""
        d = self.d
        log_b = 0.5 * math.log(math.pi) + math.lgamma(0.5 * (d - 1)) - math.lgamma(0.5 * d)
        theta = np.asarray(theta, dtype=np.float64)
        with np.errstate(divide="ignore"):
            return (d - 2) * np.log(np.sin(theta)) - log_b if d > 2 else np.full_like(theta, -log_b)

    def mean_cos(self) -> float:
        return 0.0


class VonMisesFisher:
    """von Mises--Fisher distribution ``C_d(kappa) exp(kappa <mean, x>)`` on S^{d-1}.

    ``log C_d = (d/2 - 1) log kappa - (d/2) log(2 pi) - log I_{d/2-1}(kappa)`` (kappa = 0: uniform),
    evaluated in float64 without overflow for d up to thousands. ``mean`` defaults to e_1.
    """

    def __init__(self, d: int, kappa: float, mean=None):
        self.d = _validate.integer("d", d, 2)
        self.kappa = _validate.real("kappa", kappa, minimum=0.0)
        self.mean = _e1(self.d) if mean is None else _unit(mean, self.d)
        self.axis = self.mean
        if self.kappa == 0:
            self.log_norm = -log_sphere_area(self.d)
        else:
            nu = 0.5 * self.d - 1
            self.log_norm = (
                nu * math.log(self.kappa) - 0.5 * self.d * math.log(2 * math.pi) - log_bessel_iv(nu, self.kappa)
            )

    def __repr__(self):
        return f"VonMisesFisher(d={self.d}, kappa={self.kappa})"

    def describe(self) -> dict:
        return {"name": "vmf", "d": self.d, "kappa": self.kappa, "mean": self.mean.tolist()}

    def sample(self, key, N: int, dtype=None):
        N = _validate.integer("N", N, 1)
        dtype = _dtype(dtype)
        kap = jnp.full((N,), self.kappa, dtype)
        mu = jnp.broadcast_to(jnp.asarray(self.mean, dtype), (N, self.d))
        return wood_sample(as_key(key), kap, mu, d=self.d, dtype=dtype)

    def log_density(self, x):
        x = jnp.asarray(x)
        return jnp.asarray(self.log_norm, x.dtype) + self.kappa * (x @ jnp.asarray(self.mean, x.dtype))

    def zonal_log_marginal(self, theta):
        """``log f(theta) = log C_d + kappa cos theta + log|S^{d-2}| + (d-2) log sin theta``."""
        theta = np.asarray(theta, dtype=np.float64)
        with np.errstate(divide="ignore"):
            sin_part = (self.d - 2) * np.log(np.sin(theta)) if self.d > 2 else 0.0
        return self.log_norm + self.kappa * np.cos(theta) + log_sphere_area(self.d - 1) + sin_part

    def mean_cos(self) -> float:
        """``E[cos theta] = |m| = I_{d/2}(kappa)/I_{d/2-1}(kappa)`` (= coth kappa - 1/kappa for d = 3)."""
        return mean_resultant_length(self.d, self.kappa)


class VonMisesFisherMixture:
    """Mixture ``sum_k w_k vMF(kappa_k, mean_k)``; zonal marginal only when all means coincide."""

    def __init__(self, d: int, kappas, means, weights=None):
        self.d = _validate.integer("d", d, 2)
        kappas = np.atleast_1d(np.asarray(kappas, dtype=np.float64))
        means = np.atleast_2d(np.asarray(means, dtype=np.float64))
        if means.shape != (kappas.size, self.d):
            raise ValueError(f"means must have shape ({kappas.size}, {self.d}), got {means.shape}")
        self.components = [VonMisesFisher(self.d, k, m) for k, m in zip(kappas, means)]
        w = np.full(kappas.size, 1.0 / kappas.size) if weights is None else np.asarray(weights, dtype=np.float64)
        if w.shape != kappas.shape or not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
            raise ValueError(f"weights must be {kappas.size} non-negative finite numbers, got {weights!r}")
        self.weights = w / w.sum()
        self.kappas = kappas
        self.means = np.stack([c.mean for c in self.components])
        same = np.allclose(self.means, self.means[0], atol=1e-12)
        self.axis = self.means[0] if same else None

    def __repr__(self):
        return f"VonMisesFisherMixture(d={self.d}, components={len(self.components)})"

    def describe(self) -> dict:
        return {"name": "vmf_mixture", "d": self.d, "kappas": self.kappas.tolist(),
                "means": self.means.tolist(), "weights": self.weights.tolist()}

    def sample(self, key, N: int, dtype=None):
        N = _validate.integer("N", N, 1)
        dtype = _dtype(dtype)
        kc, ks = jax.random.split(as_key(key))
        comp = jax.random.choice(kc, len(self.components), (N,), p=jnp.asarray(self.weights))
        kap = jnp.asarray(self.kappas, dtype)[comp]
        mu = jnp.asarray(self.means, dtype)[comp]
        return wood_sample(ks, kap, mu, d=self.d, dtype=dtype)

    def log_density(self, x):
        x = jnp.asarray(x)
        parts = jnp.stack([c.log_density(x) for c in self.components], axis=-1)
        return logsumexp(parts + jnp.log(jnp.asarray(self.weights, x.dtype)), axis=-1)

    def zonal_log_marginal(self, theta):
        if self.axis is None:
            raise ValueError("this mixture is not axisymmetric (its means differ): no zonal marginal")
        parts = np.stack([c.zonal_log_marginal(theta) for c in self.components], axis=-1)
        from scipy.special import logsumexp as lse

        return lse(parts + np.log(self.weights), axis=-1)

    def mean_cos(self) -> float:
        if self.axis is None:
            raise ValueError("this mixture is not axisymmetric (its means differ): no zonal marginal")
        return float(sum(w * c.mean_cos() for w, c in zip(self.weights, self.components)))


def make_distribution(name: str, d: int, kappa: float = 1.0):
    """``uniform`` or ``vmf`` by name (the CLI's ``--init``)."""
    _validate.choice("init", name, ("uniform", "vmf"))
    return Uniform(d) if name == "uniform" else VonMisesFisher(d, kappa)
