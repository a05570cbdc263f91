"""Plain NumPy reference of token merging (loops, float64), written from the published algorithms
independently of ``solvers.merging``: ToMe's ``bipartite_soft_matching`` (sets A = even, B = odd
positions of the mergeable tokens; each A token's best B match by cosine; the ``r`` best edges
merged) and the size-weighted / plain merge, renormalised onto the sphere."""

from __future__ import annotations

import numpy as np


def matching(x, src_rows, dst_rows, r):
    """``assign`` (N,) for merging the ``r`` best-matched sources of ``src_rows`` into ``dst_rows``."""
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    best, target = [], []
    for i in src_rows:
        sims = [float(u[i] @ u[j]) for j in dst_rows]
        k = int(np.argmax(sims))
        best.append(sims[k])
        target.append(dst_rows[k])
    order = sorted(range(len(src_rows)), key=lambda a: (-best[a], a))  # descending, ties: first row
    assign = np.arange(len(x))
    for a in order[:r]:
        assign[src_rows[a]] = target[a]
    return assign


def tome_sets(mergeable):
    rows = [i for i in range(len(mergeable)) if mergeable[i]]
    return rows[0::2], rows[1::2]


def merge(x, sizes, assign):
    """Size-weighted normalised mean per destination; sizes add; rows without sources unchanged."""
    out, new = x.copy(), np.zeros(len(x))
    for j in range(len(x)):
        group = [i for i in range(len(x)) if assign[i] == j]
        new[j] = sum(sizes[i] for i in group)
        if len(group) > 1:
            mean = sum(sizes[i] * x[i] for i in group) / new[j]
            out[j] = mean / np.linalg.norm(mean)
    return out, new
