"""Diagnostics of docs/theory.md ("Diagnostics"), defined once and used for simulations and dumps alike.

Attention statistics are computed on the rows of a fixed, seeded subset of ``n`` query tokens over
**all** ``N`` keys; their singular values come from the ``n x n`` Gram matrix accumulated over key
blocks (exact from the rank <= d+1 factorisation for ``linear``), so no ``N x N`` array is formed.
With ``p_i = sigma_i / sum sigma``: ``H_sv = -sum p_i log p_i``, effective rank ``exp(H_sv)``
(paper Eq. 14; Roy & Vetterli 2007), normalised entropy ``H_sv / log n``.

Token statistics normalise rows first, so raw features from a real model and unit tokens from a
simulation go through the same code.

Token masses (docs/theory.md "Token masses"): every function takes optional masses ``weights``
(N,) of the keys/tokens (``None``: unit masses, the unweighted code). Token statistics and the
entropy rate are expectations over ``rho = sum_j w_j delta_{x_j} / sum_j w_j``; the attention
statistics are per unit of mass (see ``solvers.kernels``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from solvers import AttentionField
from solvers.kernels import key_moments, probabilities, spectrum_from_gram
from solvers.precision import matmul
from solvers.sphere import normalize

DEFAULT_N_QUERY = 512
DEFAULT_KEY_SAMPLE = 4096
DIAGNOSTIC_MODES = ("sampled", "exact")


def query_subset(N: int, n: int = DEFAULT_N_QUERY, seed: int = 0) -> np.ndarray:
    """Sorted indices of ``min(n, N)`` query tokens drawn without replacement (all when N <= n)."""
    if N <= n:
        return np.arange(N)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(N, size=n, replace=False))


def spectrum_entropy(sv: Float[Array, "... n"]) -> Float[Array, "..."]:
    """``H_sv = -sum_i p_i log p_i`` with ``p_i = sigma_i / sum_j sigma_j`` (0 log 0 = 0)."""
    p = sv / jnp.sum(sv, axis=-1, keepdims=True)
    return -jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0), axis=-1)


def effective_rank(sv: Float[Array, "... n"]) -> Float[Array, "..."]:
    """Effective rank ``exp(H_sv)`` (Roy & Vetterli 2007; paper Eq. 14)."""
    return jnp.exp(spectrum_entropy(sv))


def normalized_entropy(sv: Float[Array, "... n"], n: int | None = None) -> Float[Array, "..."]:
    """``H_sv / log n``, ``n`` = number of query rows (default: length of ``sv``); 1 = flat spectrum."""
    n = sv.shape[-1] if n is None else n
    return spectrum_entropy(sv) / jnp.log(jnp.asarray(n, sv.dtype))


def attention_statistics(kernel, q: Float[Array, "n d"], k: Float[Array, "N d"], weights=None,
                         query_positions=None) -> dict:
    """Spectrum and per-row statistics of the attention rows of queries ``q`` over keys ``k``.

    Returns ``singular_values`` (n,), ``effective_rank``, ``normalized_entropy`` (scalars), and
    per-row (n,) arrays ``row_entropy`` (``-sum_j A_ij log A_ij``; ``log N`` for a uniform row),
    ``max_weight``, ``logit_mean`` and ``logit_std`` (logits ``alpha <q_i, k_j>``).
    For a real model pass its post-norm/post-RoPE ``q``, ``k`` and ``Softmax(alpha=scale)``.
    ``weights`` are the key masses (``None``: unit masses). ``query_positions`` (n,) are the
    queries' indices among the keys, needed by a causal kernel (``solvers.bilinear.Bilinear``).
    """
    if getattr(kernel, "causal", False):
        sv, rows = kernel.attention_statistics(q, k, weights, positions=query_positions)
    else:
        sv, rows = kernel.attention_statistics(q, k, weights)
    out = {"singular_values": sv, "effective_rank": effective_rank(sv),
           "normalized_entropy": normalized_entropy(sv)}
    out.update(rows)
    return out


def order_parameter(x: Float[Array, "N d"]) -> Float[Array, ""]:
    """``|m|``, ``m`` = mean of the normalised tokens."""
    return jnp.linalg.norm(jnp.mean(normalize(x), axis=0))


def _mean(values, p):
    """Mean over the first axis, mass-weighted when ``p`` (normalised masses) is given."""
    return jnp.mean(values, axis=0) if p is None else jnp.tensordot(p, values, axes=1)


def token_statistics(x: Float[Array, "N d"], weights=None) -> dict:
    """Statistics of the (normalised) tokens: ``order_parameter`` |m|; ``mean_cosine``, the mean of
    ``<x_i, x_j>`` over all ordered pairs including ``i = j`` (``= |m|^2``; the mean over ``i != j``
    is ``(N |m|^2 - 1)/(N - 1)``); ``covariance_effective_rank``, the effective rank of the
    eigenvalues of ``Sigma = E[(x-m)(x-m)^T]``; ``collapse_residual`` ``|X - 1 m^T|_F / |X|_F``.
    With ``weights`` every mean is over the normalised masses.
    """
    u = normalize(x)
    if u.shape[0] < u.shape[1]:  # static shapes: the N x N Gram route, no d x d array at all
        p = probabilities(weights, u.shape[0], u.dtype)
        c = u[0]  # the shifted mean of solvers.kernels.key_moments
        m = c + (jnp.mean(u - c, axis=0) if p is None else jnp.tensordot(p, u - c, axes=1))
        ev, tr = _gram_spectrum(u, m, p)
        return _token_record(m, ev, tr)
    return token_statistics_from_moments(*key_moments(u, weights))  # one shifted pass


def covariance_spectrum(x: Float[Array, "N d"], m: Float[Array, " d"], cov: Float[Array, "d d"] | None = None,
                        weights=None) -> Float[Array, " d"]:
    """The ``d`` eigenvalues (ascending, clipped at 0) of ``Sigma = Xc^T diag(w) Xc``, ``Xc = X - 1 m^T``.

    ``w`` are the normalised masses (``None``: ``1/N``). For ``N < d`` (a Python ``if`` on the
    static shapes) they come from the ``N x N`` Gram matrix ``diag(sqrt w) Xc Xc^T diag(sqrt w)``,
    which has the same non-zero eigenvalues (rank ``Sigma <= N - 1``), padded with ``d - N``
    zeros: ``O(N^2 d + N^3)`` instead of the ``O(d^3)`` ``eigvalsh(Sigma)`` (``cov``, needed only
    then). Every consumer of the spectrum therefore sees the same ``d`` values either way, equal to
    round-off (``tests/test_diagnostics.py``).
    """
    if x.shape[0] < x.shape[1]:
        return _gram_spectrum(x, m, probabilities(weights, x.shape[0], x.dtype))[0]
    return jnp.maximum(jnp.linalg.eigvalsh(cov), 0.0)


def _gram_spectrum(x, m, p):
    """:func:`covariance_spectrum` by the Gram route, and ``tr Sigma`` (= ``tr G``)."""
    n, d = x.shape
    sw = jnp.sqrt(p) if p is not None else jnp.full((n,), 1.0 / np.sqrt(n), x.dtype)
    a = (x - m) * sw[:, None]
    gram = matmul(a, a.T)
    ev = spectrum_from_gram(gram)[::-1] ** 2  # ascending eigenvalues of G, clipped at 0
    return jnp.concatenate([jnp.zeros((d - n,), x.dtype), ev]), jnp.trace(gram)


def token_statistics_from_moments(m: Float[Array, " d"], cov: Float[Array, "d d"], x=None, weights=None) -> dict:
    """:func:`token_statistics` from the mean ``m`` and covariance ``Sigma`` of the unit tokens.

    With the tokens ``x`` (N, d) and their ``weights`` the spectrum of ``Sigma`` comes from the
    smaller of the ``d x d`` and ``N x N`` forms (:func:`covariance_spectrum`).
    """
    ev = jnp.maximum(jnp.linalg.eigvalsh(cov), 0.0) if x is None else covariance_spectrum(x, m, cov, weights)
    return _token_record(m, ev, jnp.trace(cov))


def _token_record(m, ev, tr):
    m2 = jnp.sum(m * m)
    # |X - 1 m^T|_F^2 / |X|_F^2 = tr(Sigma) / E|u|^2, and E|u|^2 = 1 for the normalised rows
    return {
        "order_parameter": jnp.sqrt(m2),
        "mean_cosine": m2,
        "covariance_effective_rank": effective_rank(ev),
        "collapse_residual": jnp.sqrt(jnp.maximum(tr, 0.0)),
    }


def entropy_rate(kernel, x: Float[Array, "N d"], weights=None, mobility=1.0) -> Float[Array, ""]:
    """``dH/dt = E_rho[div_S v]`` from the closed-form divergences (docs/theory.md "Entropy: the exact identity").

    ``mobility`` is ``1/M``. For ``linear`` this equals
    ``(1/M)[-(d-1)|m|^2 + alpha(tr Sigma - d tr(Sigma Q))]``; for ``softmax``/``usa`` it is the
    (mass-weighted) particle average of the blockwise divergence.
    """
    _, div = kernel.drive_and_divergence(x, x, weights)
    p = probabilities(weights, x.shape[0], x.dtype)
    return _mean(div, p) * jnp.asarray(mobility, x.dtype)


def key_sample_masses(x, key_idx, weights=None):
    """Keys and masses of a key subsample that estimates the statistics over all keys.

    Each sampled key stands for ``W / W_S`` times its own mass (``W`` the total mass, ``W_S`` the
    sampled mass; ``N / K`` for unit masses), so the per-unit-mass attention statistics of the
    subsample (docs/theory.md "Token masses") are ratio estimators of those over all keys.
    """
    return x[key_idx], _sample_masses(x.shape[0], key_idx, weights, x.dtype)


def _sample_masses(n, key_idx, weights, dtype):
    if weights is None:  # unit masses: W / W_S = N / K
        return jnp.full(key_idx.shape, n / key_idx.shape[0], dtype)
    w = jnp.asarray(weights, dtype)
    ws = w[key_idx]
    return ws * (jnp.sum(w) / jnp.sum(ws))


def simulation_diagnostics(kernel, x, query_idx, weights=None, mobility=1.0, key_idx=None, div=None) -> dict:
    """All per-save diagnostics of a particle state (scalars, plus the singular values).

    ``kernel`` is a kernel object or a ``solvers.AttentionField`` (whose kernel, masses and
    mobility are then used). ``key_idx=None`` computes the attention statistics exactly (rows of
    the queries over all keys); with ``key_idx`` (a seeded key subsample, docs/theory.md
    "Diagnostics") they are estimated from the rows over the sampled keys
    (:func:`key_sample_masses`). The token statistics and the entropy rate are always exact.
    ``div`` (N,), the surface divergence of the velocity at every token (mobility included), if
    already known (the particle runner reads it off the next step's key pass), gives the entropy
    rate as its (mass-weighted) mean at no extra pass.
    """
    if isinstance(kernel, AttentionField):
        kernel, weights, mobility = kernel.kernel, kernel.weights, kernel.mobility
    if key_idx is None or getattr(kernel, "causal", False):  # a causal mask needs every key's position
        att = attention_statistics(kernel, x[query_idx], x, weights, query_positions=query_idx)
    else:
        att = attention_statistics(kernel, x[query_idx], *key_sample_masses(x, key_idx, weights))
    out = token_statistics(x, weights)
    _attention_record(out, att)
    if div is None:
        out["entropy_rate"] = entropy_rate(kernel, x, weights, mobility)
    else:
        p = probabilities(weights, x.shape[0], x.dtype)
        out["entropy_rate"] = _mean(div, p)
    out["norm_drift"] = jnp.max(jnp.abs(jnp.linalg.norm(x, axis=-1) - 1.0))
    return out


def _attention_record(out, att):
    out["effective_rank"] = att["effective_rank"]
    out["normalized_entropy"] = att["normalized_entropy"]
    out["attention_singular_values"] = att["singular_values"]
    for name in ("row_entropy", "max_weight", "logit_mean", "logit_std"):
        out[name] = jnp.mean(att[name])


def linear_diagnostics(field: AttentionField, xt: Float[Array, "d N"], query_idx, moments, key_idx=None) -> dict:
    """:func:`simulation_diagnostics` of a linear-kernel state from the step's own key pass.

    ``xt`` is the state in feature-major layout ``(d, N)`` (``solvers.feature_major``) and
    ``moments = (m, Sigma, norm_drift)`` of it, as ``solvers.feature_major.step_with_moments``
    returns them. The token statistics are those of ``m`` and ``Sigma``
    (:func:`token_statistics_from_moments`), the entropy rate is the closed form
    ``(1/M)[alpha(tr Sigma - d tr(Sigma Q)) - (d-1)|m|^2]`` (``Q = Sigma + m m^T``;
    ``solvers.Linear.mean_divergence``), so only the attention rows touch the tokens: the
    ``n_query`` query columns and the key subsample (or all keys with ``key_idx=None``).
    :func:`token_statistics` normalises the rows first; a state of ``Layer``/``Euler``/``Heun`` is
    unit-norm to round-off (its ``norm_drift``), so the values agree to round-off
    (``tests/test_fused_linear_diagnostics.py``).
    """
    kernel, weights = field.kernel, field.weights
    m, cov, drift = moments
    q = xt[:, query_idx].T
    if key_idx is None:
        att = attention_statistics(kernel, q, xt.T, weights)
    else:
        att = attention_statistics(kernel, q, xt[:, key_idx].T, _sample_masses(xt.shape[1], key_idx, weights, xt.dtype))
    out = token_statistics_from_moments(m, cov, xt.T, weights)  # N < d: the N x N Gram route
    _attention_record(out, att)
    out["entropy_rate"] = jnp.asarray(field.mobility, xt.dtype) * kernel.mean_divergence(m, cov)
    out["norm_drift"] = drift
    return out


simulation_diagnostics_jit = jax.jit(simulation_diagnostics)
"""The one jitted copy, used by every runner (through ``meanfield._threads.fetch``)."""
linear_diagnostics_jit = jax.jit(linear_diagnostics)

SCALAR_DIAGNOSTICS = (
    "order_parameter", "mean_cosine", "covariance_effective_rank", "collapse_residual",
    "effective_rank", "normalized_entropy", "row_entropy", "max_weight", "logit_mean", "logit_std",
    "entropy_rate", "norm_drift",
)
