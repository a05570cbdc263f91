"""Plain NumPy reference of one zonal / circle finite-volume step (loops, float64).

Independent of the JAX engines: the azimuthal integral for d = 3 is done by the trapezoidal rule in
``phi`` (spectrally accurate for this smooth even periodic integrand) instead of Gauss–Chebyshev
tables, the reconstruction and fluxes are written cell by cell, the circle velocity is a direct sum
instead of an FFT.
"""

from __future__ import annotations

import numpy as np


def _mc(dl, dr):
    if dl * dr <= 0:
        return 0.0
    dc = 0.5 * (dl + dr)
    return np.sign(dc) * min(2 * abs(dl), 2 * abs(dr), abs(dc))


def zonal_velocity_d3(F, kernel, alpha, n_phi=401):
    """Face velocities of the zonal problem on S^2 (merge = 1)."""
    n = F.size
    h = np.pi / n
    faces = np.linspace(0, np.pi, n + 1)
    cen = faces[:-1] + h / 2
    w = F * h
    v = np.zeros(n + 1)
    if kernel == "linear":
        mu = np.sum(w * np.cos(cen))
        c2 = np.sum(w * np.cos(cen) ** 2)
        a, b = c2 - mu**2, (1 - c2) / 2
        for j in range(1, n):
            t = faces[j]
            v[j] = -mu * np.sin(t) + alpha * (b - a) * np.sin(t) * np.cos(t)
        return v
    phi = np.linspace(0, np.pi, n_phi)
    q = np.full(n_phi, 1.0 / (n_phi - 1))
    q[0] = q[-1] = 0.5 / (n_phi - 1)
    for j in range(1, n):
        t = faces[j]
        num = den = 0.0
        for i in range(n):
            s = cen[i]
            dot = np.cos(t) * np.cos(s) + np.sin(t) * np.sin(s) * np.cos(phi)
            eth = -np.sin(t) * np.cos(s) + np.cos(t) * np.sin(s) * np.cos(phi)
            K = np.exp(alpha * dot)
            num += w[i] * np.sum(q * K * eth)
            den += w[i] * np.sum(q * K)
        v[j] = num / den if kernel == "softmax" else num
    return v


def circle_velocity(rho, kernel, alpha):
    n = rho.size
    h = 2 * np.pi / n
    cen = -np.pi + h * (np.arange(n) + 0.5)
    w = rho * h
    v = np.zeros(n)
    for j in range(n):
        t = cen[j] + h / 2
        ex = np.array([-np.sin(t), np.cos(t)])
        if kernel == "linear":
            X = np.stack([np.cos(cen), np.sin(cen)], 1)
            m = w @ X
            S = (X * w[:, None]).T @ X - np.outer(m, m)
            v[j] = (m + alpha * S @ np.array([np.cos(t), np.sin(t)])) @ ex
            continue
        K = np.exp(alpha * np.cos(cen - t))
        num = np.sum(w * K * np.sin(cen - t))
        v[j] = num / np.sum(w * K) if kernel == "softmax" else num
    return v


def fv_rhs(u, v, periodic):
    """``-d_x(u v)``: MC-MUSCL + upwind flux, loops; ``v`` at right faces (periodic) or all faces."""
    n = u.size
    h = (2 if periodic else 1) * np.pi / n
    s = np.zeros(n)
    for i in range(n):
        if periodic:
            ul, ur = u[(i - 1) % n], u[(i + 1) % n]
        else:
            ul, ur = u[max(i - 1, 0)], u[min(i + 1, n - 1)]
        s[i] = _mc(u[i] - ul, ur - u[i])
    flux = np.zeros(n + 1)  # flux[k] at face between cell k-1 and k
    for k in range(n + 1):
        if periodic:
            i, j, vf = (k - 1) % n, k % n, v[(k - 1) % n]
        else:
            if k == 0 or k == n:
                continue
            i, j, vf = k - 1, k, v[k]
        uminus, uplus = u[i] + 0.5 * s[i], u[j] - 0.5 * s[j]
        flux[k] = max(vf, 0) * uminus + min(vf, 0) * uplus
    return -(flux[1:] - flux[:-1]) / h


def ssprk3_step(u, dt, velocity, periodic):
    L = lambda z: fv_rhs(z, velocity(z), periodic)  # noqa: E731
    u1 = u + dt * L(u)
    u2 = 0.75 * u + 0.25 * (u1 + dt * L(u1))
    return u / 3 + 2 / 3 * (u2 + dt * L(u2))
