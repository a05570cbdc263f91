"""The optimizer behind :mod:`meanfield.fit`: Levenberg–Marquardt from several starts, in float64,
optionally after optax L-BFGS.

Two engines share the Levenberg–Marquardt loop (:func:`_lm`, NumPy):

- ``optimizer="lm"`` (the default): residuals and Jacobians in NumPy, the Jacobian by the complex
  step ``J[:, k] = Im r(u + i h e_k) / h`` with ``h = 1e-30``: exact to round-off for the analytic
  curves of ``_models`` (no difference is taken, so nothing cancels). Nothing is compiled, so the
  first fit in a process costs what every later one does: milliseconds for the paper's curve
  sizes, where compiling the XLA programs of four models took seconds.
- ``optimizer="lbfgs+lm"``: 40 steps of optax L-BFGS from each start first (one vmapped, jitted
  program per model; worth its compilation when the starts are far from the basin), then the same
  Levenberg–Marquardt loop with JAX residuals and ``jacfwd``. It runs inside
  ``jax.enable_x64(True)`` (a context manager: the user's global ``jax_enable_x64`` setting is
  left alone and the fit is float64 either way), on data padded to a bucket length (multiple of
  8) with zero weights, so one compiled solver serves every data set of similar size.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from ._models import N_STARTS

U_BOUND = 40.0  # |log theta| <= 40 keeps exp() finite; reaching it is reported as a bound hit
N_LBFGS = 40
MAX_LM = 200


def bucket(n: int) -> int:
    """Padded length for ``n`` data points."""
    return max(8, -(-n // 8) * 8)


def theta_of_u(u, positive):
    pos = jnp.asarray(positive)
    return jnp.where(pos, jnp.exp(jnp.clip(u, -U_BOUND, U_BOUND)), u)


def u_of_theta(theta, positive):
    theta = np.asarray(theta, dtype=np.float64)
    pos = np.asarray(positive)
    return np.where(pos, np.log(np.maximum(np.where(pos, theta, 1.0), 1e-300)), theta)


def _residual_fn(model, x, y, w, c):
    def res(u):
        return (model.fn(theta_of_u(u, model.positive), x, c) - y) * w
    return res


def _cost(res, u):
    r = res(u)
    v = 0.5 * jnp.sum(r * r)
    return jnp.where(jnp.isfinite(v), v, jnp.inf)


@functools.partial(jax.jit, static_argnames=("model",))
def _lbfgs_jit(model, u0s, x, y, w, c):
    """optax L-BFGS (backtracking line search), N_LBFGS steps from each start; falls back to the
    start if the run produced non-finite values or a higher cost."""
    res = _residual_fn(model, x, y, w, c)
    loss = functools.partial(_cost, res)
    import optax  # here, not at import: ~0.3 s that only a fit needs

    opt = optax.lbfgs(linesearch=optax.scale_by_backtracking_linesearch(
        max_backtracking_steps=20, store_grad=True))
    vg = optax.value_and_grad_from_state(loss)

    def one(u0):
        def step(carry, _):
            u, st = carry
            v, g = vg(u, state=st)
            upd, st = opt.update(g, st, u, value=v, grad=g, value_fn=loss)
            return (optax.apply_updates(u, upd), st), None

        (u, _), _ = jax.lax.scan(step, (u0, opt.init(u0)), None, length=N_LBFGS)
        ok = jnp.all(jnp.isfinite(u)) & (loss(u) <= loss(u0))
        return jnp.where(ok, u, u0)

    return jax.vmap(one)(u0s)


@functools.partial(jax.jit, static_argnames=("model",))
def _rj_jit(model, us, x, y, w, c):
    """Weighted residuals (S, n) and their Jacobians (S, n, p) for a batch of parameter vectors."""
    res = _residual_fn(model, x, y, w, c)
    return jax.vmap(lambda u: (res(u), jax.jacfwd(res)(u)))(us)


def _lm(rj, u, positive):
    """Levenberg–Marquardt with Marquardt's diagonal scaling (Moré 1978, simplified), batched
    over starts; linear algebra in NumPy float64.

    Converged when the cosine between the residual and every Jacobian column is < 1e-10
    (MINPACK's gtol test), or an accepted step lowers the cost by < 1e-13 relatively, or a step's
    actual and predicted reductions are both < 1e-13 relatively (MINPACK's ftol test: at the
    minimum to round-off, where every step is rejected), or the residual is zero to round-off.  ``lam`` > 1e15 (no descent step found) stops a start; it
    counts as converged only if the cosine is below 1e-6 (stationary to round-off).
    """
    with np.errstate(all="ignore"):  # trial steps may overflow: their cost is inf, and rejected
        return _lm_steps(rj, u, positive)


def _lm_steps(rj, u, positive):
    bound = np.where(np.asarray(positive), U_BOUND, np.inf)
    S, p = u.shape
    eye = np.eye(p)

    def gram(u):
        # [r | J] stacked, so one product gives |r|^2, J^T r and J^T J: G = [r J]^T [r J]
        r, J = rj(u)
        E = np.concatenate([r[:, :, None], J], axis=2)
        G = E.transpose(0, 2, 1) @ E
        c = 0.5 * G[:, 0, 0]
        c[~np.isfinite(c)] = np.inf
        return G, c

    def cosine(G, cost):  # max_k |J_k . r| / (|J_k| |r|)
        jn = np.sqrt(np.diagonal(G, axis1=1, axis2=2)[:, 1:])
        return np.max(np.abs(G[:, 1:, 0]) / np.maximum(jn * np.sqrt(2.0 * cost)[:, None], 1e-300), axis=1)

    def tests(G, cost, dcost):
        return (cosine(G, cost) < 1e-10) | (2.0 * cost < 1e-26) | (dcost < 1e-13 * cost)

    G, cost = gram(u)
    lam = np.full(S, 1e-3)
    it = np.zeros(S, dtype=int)
    done = tests(G, cost, np.full(S, np.inf))
    active = ~done
    for _ in range(MAX_LM):
        if not active.any():
            break
        A, g = G[:, 1:, 1:], G[:, 1:, 0]
        dA = np.diagonal(A, axis1=1, axis2=2)
        D = np.maximum(dA, 1e-12 * dA.max(axis=1, keepdims=True) + 1e-300)
        try:
            step = np.linalg.solve(A + (lam[:, None] * D)[:, :, None] * eye, -g[..., None])[..., 0]
        except np.linalg.LinAlgError:
            step = np.stack([np.linalg.lstsq(A[s] + lam[s] * np.diag(D[s]), -g[s], rcond=None)[0] for s in range(S)])
        step[~(np.isfinite(step) & active[:, None])] = 0.0
        un = np.minimum(np.maximum(u + step, -bound), bound)
        Gn, cn = gram(un)
        acc = active & (cn < cost)
        # MINPACK's ftol test: actual and predicted reductions both below 1e-13 relatively
        pred = 0.5 * np.einsum("sp,sp->s", step, lam[:, None] * D * step - g)
        flat = (np.abs(cost - cn) <= 1e-13 * cost) & (pred <= 1e-13 * cost) & (cost - cn <= 2.0 * pred)
        dcost = np.where(acc, cost - cn, np.inf)
        u = np.where(acc[:, None], un, u)
        G = np.where(acc[:, None, None], Gn, G)
        cost = np.where(acc, cn, cost)
        lam = np.where(acc, np.maximum(lam * 0.3, 1e-12), np.where(active, lam * 10.0, lam))
        it += active
        done |= active & (tests(G, cost, dcost) | flat)
        active = ~done & (lam < 1e15)
    # a start with no descent step left is stationary to round-off if its gradient cosine is small
    done |= (lam >= 1e15) & (cosine(G, cost) < 1e-6)
    return u, cost, done, it


def pad(n_pad, *arrays, fill_weight=False):
    """Pad each 1-D array to ``n_pad`` by repeating its first entry (weights padded with 0)."""
    out = []
    for a in arrays:
        a = np.asarray(a, dtype=np.float64)
        extra = np.full(n_pad - a.size, 0.0 if fill_weight else a[0])
        out.append(np.concatenate([a, extra]))
    return out


STEP = 1e-30  # complex step: Im f(u + ih)/h = f'(u) + O(h^2 f'''(u)), no cancellation


def _rj_numpy_fn(model, x, y, w, c):
    """``us`` (S, p) -> weighted residuals (S, n) and their complex-step Jacobians (S, n, p),
    NumPy float64, for fixed data (constants prepared once: this runs at every LM step).

    One call of ``model.fn`` for all starts and all directions: ``theta`` is passed as ``p``
    arrays of shape (S, p, 1) (start, direction, broadcast over x), so the law, written once
    against the ``xp`` namespace, broadcasts to (S, p, n).  The real part of ``f(u + ih e_k)`` is
    ``f(u)`` to O(h^2) = 1e-60 relative, so it gives the residuals too.  Call it under
    ``np.errstate(all="ignore")`` (a trial step may overflow; the cost is then inf)."""
    x, y, w, c = (np.asarray(a, dtype=np.float64) for a in (x, y, w, c))
    pos = np.flatnonzero(model.positive)
    p, n = len(model.params), x.size
    ih = (1j * STEP) * np.eye(p)[None]
    w_step = w[:, None] / STEP

    def rj(us):
        us = np.asarray(us, dtype=np.float64)
        S = us.shape[0]
        theta = us.copy()
        dtheta = np.ones_like(us)  # d theta / d u; a clipped entry carries no derivative
        if pos.size:
            up = us[:, pos]
            e = np.exp(np.minimum(np.maximum(up, -U_BOUND), U_BOUND))
            theta[:, pos] = e
            dtheta[:, pos] = np.where(np.abs(up) <= U_BOUND, e, 0.0)
        # theta(u + ih e_k) = theta + ih theta'(u) e_k exactly in float64 (exp(ih) = 1 + ih to h^2)
        th = (theta[:, None, :] + ih * dtheta[:, None, :]).transpose(2, 0, 1)[..., None]  # (p, S, p, 1)
        f = model.fn(th, x, c, np)
        if f.shape != (S, p, n):
            f = np.broadcast_to(f, (S, p, n))
        return (f[:, 0].real - y) * w, f.imag.transpose(0, 2, 1) * w_step

    return rj


def _rj_numpy(model, us, x, y, w, c):
    """Weighted residuals (S, n) and their complex-step Jacobians (S, n, p) (see ``_rj_numpy_fn``)."""
    with np.errstate(all="ignore"):
        return _rj_numpy_fn(model, x, y, w, c)(us)


def solve(model, starts, x, y, w, c, use_lbfgs=False):
    """Run all starts; return per-start (u, cost, converged, iterations) as NumPy arrays."""
    u0s = np.stack([u_of_theta(s, model.positive) for s in starts])
    if not use_lbfgs:
        return _lm(_rj_numpy_fn(model, x, y, w, c), u0s, model.positive)
    nb = bucket(x.size)
    with jax.enable_x64(True):
        xp, yp = (jnp.asarray(a) for a in pad(nb, x, y))
        (wp,) = (jnp.asarray(a) for a in pad(nb, w, fill_weight=True))
        cj = jnp.asarray(c, dtype=jnp.float64)
        # optax's L-BFGS mixes int32/int64 internally, which "strict" promotion rejects
        with jax.numpy_dtype_promotion("standard"):
            u0s = np.asarray(_lbfgs_jit(model, jnp.asarray(u0s), xp, yp, wp, cj))

        def rj(us):
            r, J = _rj_jit(model, jnp.asarray(us), xp, yp, wp, cj)
            return np.asarray(r), np.asarray(J)

        return _lm(rj, u0s, model.positive)


def values_and_jacobian(model, u, x, c):
    """``f(theta(u), x)`` (n,) and ``df/du`` (n, p), float64, NumPy (complex step)."""
    x = np.asarray(x, dtype=np.float64)
    u = np.asarray(u, dtype=np.float64)[None]
    f, J = _rj_numpy(model, u, x, np.zeros_like(x), np.ones_like(x), np.asarray(c, dtype=np.float64))
    return f[0], J[0]
