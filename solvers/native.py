"""Hand-fused CPU kernels (``solvers/_native/``), compiled on first use.

Two workloads run far below this CPU's speed as XLA programs (issue 11; the measurements are in
``benchmarks/README.md``): rollouts of many small systems for phase diagrams (``n x n`` products of
``n = 32`` are too small for a GEMM kernel, and a float64 ``exp`` per pair dominates) and the
linear kernel's step at small ``d`` (XLA:CPU makes three passes over the state per step). The C++
sources implement both as XLA FFI custom calls, one file per kernel over a shared header
(``simd.h``: the vector types, ``exp``, ``1/sqrt``, the thread helper), built into one library:

* ``phase_rollout(x0, betas, h, segments, pair_threshold, cluster_threshold)``
  (``phase_softmax.cc``): every (beta, system) pair rolled out for all its steps with its state in
  L1, the statistics of :func:`solvers.dense.gram_statistics` (connected components) at the save
  points, and the tokens after the last step;
* ``linear_step(xt, K, b, h, scheme)`` / ``linear_moments(xt)`` (``linear.cc``): one pass per step
  over the feature-major state ``(d, N)`` that writes the new state and accumulates its key moments.

They compute the same quantities as the JAX code they stand in for, in another order of
floating-point operations (agreement to round-off: ``tests/solvers/test_native.py``).

The sources are compiled with the system's C++ compiler (``$CXX``, else ``g++``, else ``c++``,
``-O3 -march=native``) against the XLA FFI headers that ship with jaxlib, into one library in
``$MEANFIELD_CACHE_DIR/native`` (default ``~/.cache/meanfield/native``), keyed by the hash of every
source and header (``SOURCES``, ``HEADERS``), the compiler, the flags
(``$MEANFIELD_NATIVE_CXXFLAGS`` are appended), jaxlib's version and this machine's CPU flags; the
library is
written to a temporary name and renamed, so concurrent first uses (pytest workers) are safe.
Compilation takes 10-20 s once per machine and says so in one line on stderr. Where
there is no compiler, or it fails, or
``MEANFIELD_NATIVE=0`` is set, :func:`available` is ``False``, the reason is in :func:`status`,
and every caller runs its pure-JAX path. The kernels exist for the CPU platform only: on GPU/TPU
the callers use the jitted JAX path (:func:`use_native` checks the default backend).
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any, cast

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, DTypeLike, Float, Int

from ._cache import UnsafeCache, private_dir, publish, scratch_dir, verify
from ._typing import Scalar

NATIVE_DIR = Path(__file__).resolve().parent / "_native"
SOURCES = (NATIVE_DIR / "phase_softmax.cc", NATIVE_DIR / "linear.cc")  # compiled together into one library
HEADERS = (NATIVE_DIR / "simd.h",)  # included by the sources; part of the cache key
FLAGS = ("-O3", "-march=native", "-fno-math-errno", "-fopenmp-simd", "-std=c++17", "-shared", "-fPIC", "-w")

_lock = threading.Lock()
_state: dict = {"tried": False, "lib": None, "reason": "not built yet", "path": None}
_TARGETS = ("PhaseRollout", "LinearMoments", "LinearStep")
_Four = tuple[Array, Array, Array, Array]  # what the custom calls return (ffi_call: a sequence)


def _cache_dir() -> Path:
    """The private folder of the built libraries (``solvers._cache``; raises ``UnsafeCache``)."""
    return private_dir("native")


def _compiler() -> str | None:
    for name in (os.environ.get("CXX"), "g++", "c++", "clang++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _flags() -> tuple:
    return (*FLAGS, *os.environ.get("MEANFIELD_NATIVE_CXXFLAGS", "").split())  # e.g. -mno-avx512f


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _build() -> tuple[object | None, str, Path | None]:
    if os.environ.get("MEANFIELD_NATIVE", "1").strip().lower() in ("0", "off", "false", "no"):
        return None, "disabled by MEANFIELD_NATIVE=0", None
    cxx = _compiler()
    if cxx is None:
        return None, "no C++ compiler found ($CXX, g++, c++, clang++)", None
    from jax import ffi

    flags = _flags()
    include = ffi.include_dir()
    try:
        name = _library_name(cxx, flags)
    except OSError as exc:
        return None, f"the C++ sources are missing: {exc}", None
    try:
        out, note = _cache_dir() / name, ""
    except (UnsafeCache, OSError) as exc:  # built for this process only, in a private folder
        out, note = scratch_dir("meanfield-native-") / name, f" (cache folder refused: {exc})"
    why = verify(out)
    if why is not None:
        if why != "missing":
            note = f" ({why}; rebuilding)"
        err = _compile(cxx, flags, include, out, note)
        if err is not None:
            return None, err, None
    lib, err = _load(out, ffi)
    if lib is None:  # stale or corrupt: rebuilt in a fresh private folder, a path this process never loaded
        out = scratch_dir("meanfield-native-") / name
        err = _compile(cxx, flags, include, out, f" ({err}; rebuilding)")
        if err is not None:
            return None, err, None
        lib, err = _load(out, ffi)
        if lib is None:
            return None, err or "loading failed", None
    return lib, f"built: {out}", out


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _compile(cxx: str, flags: tuple[str, ...], include: str, out: Path, note: str = "") -> str | None:
    """Compile the library into ``out`` (with its digest, :func:`solvers._cache.publish`); the
    reason on failure, else ``None``."""
    tmp = None
    try:
        _say(f"compiling the native CPU kernels once (about 20 s) into {out.parent}{note}")
        fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
        os.close(fd)
        proc = subprocess.run([cxx, *flags, f"-I{include}", *map(str, SOURCES), "-o", tmp],
                              capture_output=True, text=True, timeout=300)
        if proc.returncode != 0:
            err = (proc.stderr or proc.stdout).strip().splitlines()
            return f"compilation failed ({cxx}): {err[-1] if err else proc.returncode}"
        publish(tmp, out)
        tmp = None
    except (OSError, subprocess.SubprocessError) as exc:
        return f"compilation failed: {exc}"
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
    return None


def _load(out: Path, ffi: Any) -> tuple[ctypes.CDLL | None, str | None]:
    """``(lib, None)`` with the kernels registered, or ``(None, reason)``."""
    try:
        lib = ctypes.cdll.LoadLibrary(str(out))
        pointers = {f"Meanfield{name}{suffix}": getattr(lib, f"Meanfield{name}{suffix}")
                    for name in _TARGETS for suffix in ("F32", "F64")}  # every symbol first: none registered if one is missing
    except (OSError, AttributeError) as exc:
        return None, f"loading {out} failed: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
    try:
        for sym, fn in pointers.items():
            target = "meanfield_" + sym[len("Meanfield"):-3].lower() + "_" + sym[-3:].lower()
            ffi.register_ffi_target(target, ffi.pycapsule(fn), platform="cpu")
    except (AttributeError, ValueError) as exc:
        return None, f"registering the kernels of {out} failed: {exc}"
    return lib, None


def _library_name(cxx: str, flags: tuple[str, ...]) -> str:
    """The cache name of the library: the hash of the sources, compiler, flags, JAX and CPU."""
    key = hashlib.sha256(b"\0".join([_source_digest(), cxx.encode(), " ".join(flags).encode(), jax.__version__.encode(),
                                     _jaxlib_version().encode(), _cpu_flags().encode()])).hexdigest()[:16]
    return f"meanfield_cpu_{key}.so"


def _source_digest() -> bytes:
    """The hash of every source and header, with its name: an edit to any of them rebuilds."""
    h = hashlib.sha256()
    for path in (*SOURCES, *HEADERS):
        h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.digest()


def _jaxlib_version() -> str:
    try:
        import jaxlib

        return jaxlib.__version__
    except Exception:  # pragma: no cover - jaxlib always has a version
        return "?"


def _ensure() -> object | None:
    with _lock:
        if not _state["tried"]:
            _state["lib"], _state["reason"], _state["path"] = _build()
            _state["tried"] = True
    return _state["lib"]


def available() -> bool:
    """Whether the kernels are compiled and registered (compiles them on the first call)."""
    return _ensure() is not None


def status() -> str:
    """Why the kernels are or are not available (``"built: <path>"`` or the reason)."""
    _ensure()
    return _state["reason"]


def use_native(native: bool | None = None) -> bool:
    """Resolve a caller's ``native`` option: ``None`` (auto) means "on the CPU backend when the
    kernels are available"; ``True`` requires them (``ValueError`` with the reason otherwise);
    ``False`` never uses them."""
    if native is False:
        return False
    if native is None:
        return jax.default_backend() == "cpu" and available()
    if native is not True:
        raise ValueError(f"native must be True, False or None (auto), got {native!r}")
    if jax.default_backend() != "cpu":
        raise ValueError(f"native=True needs the CPU backend; the default backend is {jax.default_backend()!r}")
    if not available():
        raise ValueError(f"native=True, but the native CPU kernels are not available: {status()}")
    return True


def _target(name: str, dtype: DTypeLike) -> str:
    if _ensure() is None:
        raise RuntimeError(f"the native CPU kernels are not available: {status()}")
    dtype = jnp.dtype(dtype)
    if dtype not in (jnp.float32, jnp.float64):
        raise ValueError(f"the native kernels take float32 or float64, got {dtype}")
    return f"meanfield_{name}_{'f32' if dtype == jnp.float32 else 'f64'}"


def phase_rollout(x0: Float[Array, "B n d"], betas: Float[Array, " nb"], h: Scalar, segments: Int[Array, " S"],
                  pair_threshold: Scalar, cluster_threshold: Scalar, threads: int = 1
                  ) -> tuple[Int[Array, "nb B S"], Int[Array, "nb B S"], Float[Array, "nb B S"], Float[Array, "nb B n d"]]:
    """Per-system ``(pairs, clusters, order_parameter, x_final)``: the first three
    ``(len(betas), B, len(segments))``, the contract of :func:`meanfield.studies.phase.phase_rollout` with
    ``method="dense"`` and ``cluster_count="components"``; ``x_final`` ``(len(betas), B, n, d)`` the
    tokens after the last step (``x0``'s layout per beta). ``threads`` OS threads share the
    (beta, system) pairs."""
    B = x0.shape[0]
    nb, S = betas.shape[0], segments.shape[0]
    dtype = x0.dtype
    params = jnp.stack([jnp.asarray(h, dtype), jnp.asarray(pair_threshold, dtype), jnp.asarray(cluster_threshold, dtype)])
    out = (jax.ShapeDtypeStruct((nb, B, S), jnp.int32), jax.ShapeDtypeStruct((nb, B, S), jnp.int32),
           jax.ShapeDtypeStruct((nb, B, S), dtype), jax.ShapeDtypeStruct((nb, *x0.shape), dtype))
    call = jax.ffi.ffi_call(_target("phaserollout", dtype), out, vmap_method="sequential")
    return cast(_Four, call(x0, jnp.asarray(betas, dtype), params, jnp.asarray(segments, jnp.int32), threads=np.int32(threads)))


def default_threads() -> int:
    """OS threads a kernel uses by default: ``$MEANFIELD_NATIVE_THREADS``, else the CPUs this
    process may run on."""
    env = os.environ.get("MEANFIELD_NATIVE_THREADS", "").strip()
    if env:
        try:
            return max(1, int(env))
        except ValueError:
            raise ValueError(f"MEANFIELD_NATIVE_THREADS must be a positive integer, got {env!r}") from None
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def linear_moments(xt: Float[Array, "*lead d N"], threads: int | None = None
                   ) -> tuple[Float[Array, "*lead d"], Float[Array, "*lead d d"], Float[Array, "*lead d"], Float[Array, "*lead 2"]]:
    """Shifted sums of the columns of ``xt`` (``..., d, N``): ``(s1, s2, c, norm_range)`` with
    ``c = xt[..., :, 0]``, ``s1 = sum_j (x_j - c)``, ``s2 = sum_j (x_j - c)(x_j - c)^T`` (accumulated in
    float64) and ``norm_range = (min, max)`` of the squared column norms."""
    *lead, d, _ = xt.shape
    dtype = xt.dtype
    out = (jax.ShapeDtypeStruct((*lead, d), dtype), jax.ShapeDtypeStruct((*lead, d, d), dtype),
           jax.ShapeDtypeStruct((*lead, d), dtype), jax.ShapeDtypeStruct((*lead, 2), dtype))
    threads = default_threads() if threads is None else threads
    return cast(_Four, jax.ffi.ffi_call(_target("linearmoments", dtype), out, vmap_method="broadcast_all")(
        xt, threads=np.int32(threads)))


# The values of LinearStep's "scheme" attribute: linear.cc's enum class Scheme (kLayer, kEuler;
# tests/solvers/test_native_source.py checks that the two agree).
SCHEME_CODES = {"layer": 0, "euler": 1}


def linear_step(xt: Float[Array, "*lead d N"], kmat: Float[Array, "*lead d d"], b: Float[Array, "*lead d"], h: Scalar,
                scheme: str, threads: int | None = None
                ) -> tuple[Float[Array, "*lead d N"], Float[Array, "*lead d"], Float[Array, "*lead d d"], Float[Array, "*lead d"]]:
    """One ``layer``/``euler`` step of the field ``F = K x + b`` on ``xt`` (``..., d, N``), and the
    shifted sums ``(s1, s2, c)`` of the new state (as :func:`linear_moments`): ``(y, s1, s2, c)``."""
    *lead, d, _ = xt.shape
    dtype = xt.dtype
    out = (jax.ShapeDtypeStruct(xt.shape, dtype), jax.ShapeDtypeStruct((*lead, d), dtype),
           jax.ShapeDtypeStruct((*lead, d, d), dtype), jax.ShapeDtypeStruct((*lead, d), dtype))
    h = jnp.broadcast_to(jnp.asarray(h, dtype), tuple(lead))
    # the new state overwrites the old one (each column is read before it is written; the shift
    # column is read first), so XLA needs no fresh 4 N d-byte buffer per step
    return cast(_Four, jax.ffi.ffi_call(_target("linearstep", dtype), out, vmap_method="broadcast_all", input_output_aliases={0: 0})(
        xt, jnp.asarray(kmat, dtype), jnp.asarray(b, dtype), h, scheme=np.int32(SCHEME_CODES[scheme]),
        threads=np.int32(default_threads() if threads is None else threads)))


__all__ = ["available", "default_threads", "linear_moments", "linear_step", "phase_rollout", "status", "use_native"]
