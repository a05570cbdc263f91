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
    (MINPACK's gtol test), or an accepted step lowers the cost by < 1e-13 relatively, or the
    residual is zero to round-off.  ``lam`` > 1e15 (no descent step found) stops a start; it
    counts as converged only if the cosine is below 1e-6 (stationary to round-off).
    """
    bound = np.where(np.asarray(positive), U_BOUND, np.inf)
    S, p = u.shape
    r, J = rj(u)
    cost = 0.5 * np.sum(r * r, axis=1)
    cost = np.where(np.isfinite(cost), cost, np.inf)
    lam = np.full(S, 1e-3)
    it = np.zeros(S, dtype=int)

    def cosine(r, J):
        jn = np.linalg.norm(J, axis=1)
        rn = np.linalg.norm(r, axis=1)
        return np.max(np.abs(np.einsum("snp,sn->sp", J, r)) / np.maximum(jn * rn[:, None], 1e-300), axis=1)

    def tests(r, J, cost, dcost):
        rn = np.linalg.norm(r, axis=1)
        return (cosine(r, J) < 1e-10) | (rn < 1e-13) | (dcost < 1e-13 * cost)

    done = tests(r, J, cost, np.full(S, np.inf))
    active = ~done
    for _ in range(MAX_LM):
        if not active.any():
            break
        A = np.einsum("snp,snq->spq", J, J)
        g = np.einsum("snp,sn->sp", J, r)
        dA = np.diagonal(A, axis1=1, axis2=2)
        D = np.maximum(dA, 1e-12 * dA.max(axis=1, keepdims=True) + 1e-300)
        with np.errstate(all="ignore"):
            try:
                step = np.linalg.solve(A + lam[:, None, None] * (D[:, :, None] * np.eye(p)), -g[..., None])[..., 0]
            except np.linalg.LinAlgError:
                step = np.stack([np.linalg.lstsq(A[s] + lam[s] * np.diag(D[s]), -g[s], rcond=None)[0] for s in range(S)])
        step = np.where(np.isfinite(step) & active[:, None], step, 0.0)
        un = np.clip(u + step, -bound, bound)
        rn, Jn = rj(un)
        cn = 0.5 * np.sum(rn * rn, axis=1)
        cn = np.where(np.isfinite(cn), cn, np.inf)
        acc = active & (cn < cost)
        dcost = np.where(acc, cost - cn, np.inf)
        u = np.where(acc[:, None], un, u)
        r = np.where(acc[:, None], rn, r)
        J = np.where(acc[:, None, None], Jn, J)
        cost = np.where(acc, cn, cost)
        lam = np.where(acc, np.maximum(lam * 0.3, 1e-12), np.where(active, lam * 10.0, lam))
        it = it + active
        done = done | (active & tests(r, J, cost, dcost))
        active = ~done & (lam < 1e15)
    # a start with no descent step left is stationary to round-off if its gradient cosine is small
    done = done | ((lam >= 1e15) & (cosine(r, J) < 1e-6))
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


def _theta_np(u, positive):
    """``theta_of_u`` for real or complex ``u`` in NumPy: the clip acts on the real part, and a
    clipped entry carries no derivative (as ``jnp.clip``'s gradient)."""
    pos = np.asarray(positive)
    inside = np.abs(u.real) <= U_BOUND
    clipped = np.where(inside, u, np.clip(u.real, -U_BOUND, U_BOUND))
    return np.where(pos, np.exp(clipped), u)


def _rj_numpy(model, us, x, y, w, c):
    """Weighted residuals (S, n) and their complex-step Jacobians (S, n, p), NumPy float64."""
    us = np.asarray(us, dtype=np.float64)
    S, p = us.shape
    r = np.empty((S, x.size))
    J = np.empty((S, x.size, p))
    eye = np.eye(p) * (1j * STEP)
    with np.errstate(all="ignore"):
        for s in range(S):
            r[s] = (model.fn(_theta_np(us[s], model.positive), x, c, np) - y) * w
            for k in range(p):
                J[s, :, k] = np.imag(model.fn(_theta_np(us[s] + eye[k], model.positive), x, c, np)) * w / STEP
    return r, J


def solve(model, starts, x, y, w, c, use_lbfgs=False):
    """Run all starts; return per-start (u, cost, converged, iterations) as NumPy arrays."""
    u0s = np.stack([u_of_theta(s, model.positive) for s in starts])
    if not use_lbfgs:
        x, y, w, c = (np.asarray(a, dtype=np.float64) for a in (x, y, w, c))
        return _lm(lambda us: _rj_numpy(model, us, x, y, w, c), u0s, model.positive)
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
