"""JAX's persistent compilation cache for the command-line tools (set by the tools, never at import).

A short run of a tool spends as long compiling its XLA programs as running them; the cache keeps
the compiled executables between processes in ``$MEANFIELD_CACHE_DIR/jax`` (default
``~/.cache/meanfield/jax``), so the second run of the same command loads them instead. The
folder is private (``solvers._cache``: ``0700``, owned by the user, nobody else may write there,
since JAX runs what it loads); if it is not, the cache stays off and the tool says why in one
line. ``MEANFIELD_COMPILE_CACHE=0`` turns it off. Results do not depend on it: a cached executable
is the one the compiler would produce.
"""

from __future__ import annotations

import os
import sys

ENV = "MEANFIELD_COMPILE_CACHE"


def enable(prog: str) -> str | None:
    """Point JAX's persistent cache at the project's folder; the folder, or None if it stays off."""
    if os.environ.get(ENV, "1").strip().lower() in ("0", "off", "false", "no"):
        return None
    from solvers._cache import UnsafeCache, private_dir

    try:
        folder = private_dir("jax")
    except (UnsafeCache, OSError) as exc:
        print(f"{prog}: compilation cache off: {exc} ({ENV}=0 silences this)", file=sys.stderr)
        return None
    # every program of a short run is worth keeping: most compile in well under the 1 s default
    settings = {"jax_compilation_cache_dir": str(folder), "jax_persistent_cache_min_compile_time_secs": 0.0}
    if "jax" in sys.modules:
        import jax

        for name, value in settings.items():
            jax.config.update(name, value)
    else:  # JAX reads its options from these variables when it loads: the tool need not import it yet
        for name, value in settings.items():
            os.environ[name.upper()] = str(value)
    return str(folder)
