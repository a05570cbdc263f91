"""Matmul precision policy of the kernels (docs/precision.md).

XLA's default precision for a float32 product depends on the device: exact float32 on CPUs, but
TF32 (10 mantissa bits in the inputs) on NVIDIA GPUs since Ampere and bfloat16 passes on TPUs. The
kernels therefore pass an explicit precision to every product of tokens (logits ``q k^T``, value
products ``w k``, Gram matrices, covariances), chosen by one keyword, ``matmul_precision``:

* ``"highest"`` (default): ``lax.Precision.HIGHEST``, so float32 means float32 on every device
  (and float64 means float64);
* ``"tf32"`` (opt-in, fast on GPUs): inputs rounded to TF32 (8-bit exponent, 10-bit mantissa),
  products accumulated in float32. On a GPU this is the hardware's ``TF32_TF32_F32`` algorithm;
  elsewhere it is emulated exactly (inputs rounded to nearest TF32, then a float32 product: an
  11 x 11-bit product is exact in float32), which is slower, not faster, but gives the GPU's
  error on a CPU;
* ``"bf16"`` (opt-in, fastest on GPUs): inputs cast to bfloat16 (7 stored mantissa bits), products
  accumulated in float32 (``preferred_element_type``): the same arithmetic on every device.

Only the products change; softmax maxima, exponentials and sums stay in the working dtype.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax
from jaxtyping import Array, Float

MATMUL_PRECISIONS = ("highest", "tf32", "bf16")


def check_matmul_precision(precision: object) -> str:
    """``precision`` if it is one of :data:`MATMUL_PRECISIONS`; else ``ValueError`` naming it."""
    if not isinstance(precision, str) or precision not in MATMUL_PRECISIONS:
        raise ValueError(f"unknown matmul_precision {precision!r}; expected one of: {', '.join(MATMUL_PRECISIONS)}")
    return precision


def round_to_tf32(x: Float[Array, "..."]) -> Float[Array, "..."]:
    """Round float32 values to the nearest TF32 value (10 mantissa bits; ties to even).

    Overflow to infinity at the top of the range is not handled (token coordinates are <= 1).
    Float64 input is rounded through float32 and returned in its own dtype.
    """
    dtype = x.dtype
    bits = lax.bitcast_convert_type(x.astype(jnp.float32), jnp.uint32)
    lsb = (bits >> jnp.uint32(13)) & jnp.uint32(1)
    bits = (bits + jnp.uint32(0x0FFF) + lsb) & jnp.uint32(0xFFFFE000)
    return lax.bitcast_convert_type(bits, jnp.float32).astype(dtype)


def round_to_bf16(x: Float[Array, "..."]) -> Float[Array, "..."]:
    """Round to bfloat16 and back to ``x``'s dtype (the input rounding of the ``"bf16"`` mode)."""
    return x.astype(jnp.bfloat16).astype(x.dtype)


def matmul(a: Float[Array, "m k"], b: Float[Array, "k n"], precision: str = "highest") -> Float[Array, "m n"]:
    """``a @ b`` under the policy ``precision`` (module doc); the result has ``a``'s dtype."""
    dtype = a.dtype
    if precision == "highest":
        return jnp.matmul(a, b, precision=lax.Precision.HIGHEST)
    if precision == "bf16":
        acc = jnp.promote_types(dtype, jnp.float32)
        out = jnp.matmul(a.astype(jnp.bfloat16), b.astype(jnp.bfloat16), preferred_element_type=acc)
        return out.astype(dtype)
    if precision == "tf32":
        if jax.default_backend() == "gpu" and dtype == jnp.float32:
            return jnp.matmul(a, b, precision=lax.DotAlgorithmPreset.TF32_TF32_F32)
        return jnp.matmul(round_to_tf32(a), round_to_tf32(b), precision=lax.Precision.HIGHEST)
    raise ValueError(f"unknown matmul_precision {precision!r}; expected one of: {', '.join(MATMUL_PRECISIONS)}")


__all__ = ["MATMUL_PRECISIONS", "check_matmul_precision", "matmul", "round_to_bf16", "round_to_tf32"]
