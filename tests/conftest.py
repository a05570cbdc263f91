"""Test-session configuration (never at library import): 64-bit JAX for precision assertions, and
strict dtype promotion, so an accidental float32/float64 (or complex) mix in library code fails
loudly instead of silently changing precision."""

import os

os.environ.setdefault("MPLBACKEND", "Agg")

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_dtype_promotion", "strict")
