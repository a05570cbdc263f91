"""Test-session configuration: 64-bit JAX for precision assertions (never at library import)."""

import os

os.environ.setdefault("MPLBACKEND", "Agg")

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)
