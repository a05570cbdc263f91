"""Random weight ensembles (docs/theory.md "Weight ensembles").

The options of Geshkovski, Letrouit, Polyanskiy & Rigollet's experiment code
(borjanG/2023-transformers-rotf, ``phase-diagrams.py``), in this package's convention: logits
``alpha <x_i, B x_j>`` and drive ``sum_j A_ij V x_j`` (their row-vector code multiplies by ``V`` on
the right, i.e. applies ``V^T``; for their ``+-B`` values that is ``+-B^T`` here). With ``G``,
``G'`` independent standard Gaussian d x d matrices:

=================  ===========================================  ==========================
``kq=``            ``B``                                        value scale ``c``
=================  ===========================================  ==========================
``"identity"``     ``I``                                        1
``"gaussian"``     ``G G' / sqrt(d)``                           ``sqrt(d)``
``"wigner"``       ``(G + G^T) / s``, ``s = 2`` on the          ``sqrt(d)``
                   diagonal and ``sqrt 2`` off it (the code's
                   "wrong Wigner")
``"goe"``          ``(G + G^T) / sqrt 2`` (GOE)                 ``sqrt(d + 1)``
=================  ===========================================  ==========================

``v=``: ``"identity"``; ``"gaussian"`` ``G G^T / sqrt(d)`` (a Gaussian Gram matrix); ``"+kq"`` and
``"-kq"`` ``+- B^T / c`` (their gradient ascent / descent cases). The experiment redraws the
weights every ``tau`` units of time to mimic new layers; :func:`meanfield.studies.ensembles.redrawn_flow`
does that with any particle scheme.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jaxtyping import Array, DTypeLike, Float

KQ_OPTIONS = ("identity", "gaussian", "wigner", "goe")
V_OPTIONS = ("identity", "gaussian", "+kq", "-kq")


def random_weights(key: Array, d: int, kq: str = "goe", v: str = "identity", heads: int = 1,
                   dtype: DTypeLike | None = None) -> tuple[Float[Array, "heads d d"], Float[Array, "heads d d"]]:
    """Draw ``(B, V)``, each ``(heads, d, d)``, from the ensembles of the module docstring."""
    if kq not in KQ_OPTIONS:
        raise ValueError(f"unknown kq ensemble {kq!r}; expected one of: {', '.join(KQ_OPTIONS)}")
    if v not in V_OPTIONS:
        raise ValueError(f"unknown v ensemble {v!r}; expected one of: {', '.join(V_OPTIONS)}")
    if not (isinstance(d, int) and d >= 1 and isinstance(heads, int) and heads >= 1):
        raise ValueError(f"d={d!r} and heads={heads!r} must be integers >= 1")
    dtype = jnp.zeros(0).dtype if dtype is None else jnp.dtype(dtype)
    k1, k2, k3 = jax.random.split(key, 3)
    shape = (heads, d, d)
    g = jax.random.normal(k1, shape, dtype)
    eye = jnp.broadcast_to(jnp.eye(d, dtype=dtype), shape)
    if kq == "identity":
        B, c = eye, 1.0
    elif kq == "gaussian":
        B, c = g @ jax.random.normal(k2, shape, dtype) / math.sqrt(d), math.sqrt(d)
    elif kq == "wigner":
        s = jnp.where(jnp.eye(d, dtype=bool), 2.0, math.sqrt(2.0)).astype(dtype)
        B, c = (g + jnp.swapaxes(g, 1, 2)) / s, math.sqrt(d)
    else:
        B, c = (g + jnp.swapaxes(g, 1, 2)) / math.sqrt(2.0), math.sqrt(d + 1)
    if v == "identity":
        V = eye
    elif v == "gaussian":
        h = jax.random.normal(k3, shape, dtype)
        V = h @ jnp.swapaxes(h, 1, 2) / math.sqrt(d)
    else:
        V = (1.0 if v == "+kq" else -1.0) * jnp.swapaxes(B, 1, 2) / c
    return B, V


__all__ = ["KQ_OPTIONS", "V_OPTIONS", "random_weights"]
