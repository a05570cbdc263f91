"""Fused softmax drive for GPUs (docs/precision.md "GPU attention path").

The streaming pass (``solvers.streaming.weighted_moments``) scans key blocks of ``key_block`` rows
with a running maximum: right for CPUs, but on a GPU each of its ``(N/query_block)(N/key_block)``
small steps is a kernel launch. The fused path computes ``F(q_i) = sum_j A_ij k_j`` (queries,
keys and values all tokens; docs/theory.md "The three kernels") in fewer, larger operations:

* ``"dense"``: per block of ``query_block`` queries, the logits against *all* keys in one product,
  a softmax, and one value product -- XLA fuses these; memory O(query_block * N), never N x N.
  Every product follows the kernel's ``matmul_precision`` (``solvers.precision``), so in float32
  it agrees with the streaming pass to round-off. Token masses enter as the logit bias ``log w_j``
  (``A_ij ∝ w_j e^{s_ij}``; a zero mass is a bias of ``-inf``).
* ``"cudnn"``: ``jax.nn.dot_product_attention(implementation="cudnn")``, cuDNN's flash attention
  (memory O(N)). cuDNN takes only 16-bit inputs, so it runs only on a GPU, for
  ``matmul_precision="bf16"`` and unit masses (a per-key bias would be an N x N array there);
  its output is rounded to bfloat16 too. Otherwise (or if cuDNN refuses the shapes when traced)
  the dense path runs.

Only the drive is fused: the divergence needs ``sum_j A_ij <q_i,k_j>^2``, which is no attention
output, so ``drive_and_divergence`` and the attention statistics keep the streaming passes.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from ._typing import Scalar, Weights

from .precision import matmul
from .streaming import map_query_blocks

ATTENTION_MODES = ("auto", "streaming", "fused")


def check_attention(mode: object) -> str:
    """``mode`` if it is one of :data:`ATTENTION_MODES`; else ``ValueError`` naming it."""
    if not isinstance(mode, str) or mode not in ATTENTION_MODES:
        raise ValueError(f"unknown attention {mode!r}; expected one of: {', '.join(ATTENTION_MODES)}")
    return mode


def use_fused(mode: str) -> bool:
    """Whether ``mode`` selects the fused drive here: ``"auto"`` does on GPU backends only."""
    return mode == "fused" or (mode == "auto" and jax.default_backend() == "gpu")


def fused_path(d: int, weights: Weights, precision: str) -> str:
    """``"cudnn"`` or ``"dense"``: which fused path :func:`fused_drive` takes (module doc)."""
    cudnn = jax.default_backend() == "gpu" and precision == "bf16" and weights is None
    return "cudnn" if cudnn and d % 8 == 0 and d <= 128 else "dense"


def _dense(q: Float[Array, "n d"], k: Float[Array, "N d"], alpha: Float[Array, ""],
           logw: Float[Array, " N"] | None, precision: str) -> Float[Array, "n d"]:
    s = alpha * matmul(q, k.T, precision)
    if logw is not None:
        s = s + logw[None, :]
    p = jnp.exp(s - jnp.max(s, axis=1, keepdims=True))
    return matmul(p, k, precision) / jnp.sum(p, axis=1, keepdims=True)


def _cudnn(q: Float[Array, "n d"], k: Float[Array, "N d"], alpha: Float[Array, ""]) -> Float[Array, "n d"]:
    qq = (alpha * q).astype(jnp.bfloat16)[None, :, None, :]
    kk = k.astype(jnp.bfloat16)[None, :, None, :]
    out = jax.nn.dot_product_attention(qq, kk, kk, scale=1.0, implementation="cudnn")
    return out[0, :, 0, :].astype(q.dtype)


def fused_drive(q: Float[Array, "n d"], k: Float[Array, "N d"], alpha: Scalar, *, weights: Weights = None,
                precision: str = "highest",
                query_block: int = 1024) -> Float[Array, "n d"]:
    """The softmax drive ``sum_j A_ij k_j`` with ``A_ij ∝ w_j exp(alpha <q_i,k_j>)`` (module doc)."""
    a = jnp.asarray(alpha, q.dtype)
    if fused_path(q.shape[1], weights, precision) == "cudnn":
        try:
            return _cudnn(q, k, a)
        except (NotImplementedError, ValueError, RuntimeError):
            pass  # cuDNN refused these shapes or this GPU: the dense path below
    logw = None if weights is None else jnp.log(jnp.asarray(weights, q.dtype))
    return map_query_blocks(lambda qb: _dense(qb, k, a, logw, precision), q, query_block)


__all__ = ["ATTENTION_MODES", "check_attention", "fused_drive", "fused_path", "use_fused"]
