"""Benchmark harness: machine description, timing with compile/run/memory separated, atomic JSON.

Used by ``benchmarks/particles.py``; the habits are those of s2fft's ``benchmarks/benchmarking.py``
and diffrax's ``benchmarks/compile_times.py``: compile ahead of time, warm up, ``block_until_ready``.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
import time
import tracemalloc
from pathlib import Path

import jax
import numpy as np

GB = 1e9


def machine() -> dict:
    """CPU, memory and software versions (no subprocesses: the child's rusage must stay clean)."""
    cpu, flags = "unknown", set()
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name") and cpu == "unknown":
                cpu = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    with open("/proc/meminfo") as f:
        mem_kb = int(next(ln for ln in f if ln.startswith("MemTotal")).split()[1])
    caches = {}
    for idx in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        try:
            lvl, typ = (idx / "level").read_text().strip(), (idx / "type").read_text().strip()
            caches[f"L{lvl}{'' if typ == 'Unified' else typ[0].lower()}"] = (idx / "size").read_text().strip()
        except OSError:
            pass
    blas = np.show_config(mode="dicts").get("Build Dependencies", {}).get("blas", {})
    return {
        "cpu_model": cpu, "simd": sorted(flags & {"avx", "avx2", "fma", "avx512f"}), "caches": caches,
        "logical_cores": os.cpu_count(), "usable_cores": len(os.sched_getaffinity(0)),
        "memory_gb": round(mem_kb * 1024 / GB, 2), "platform": platform.platform(),
        "python": platform.python_version(), "numpy": np.__version__, "numpy_blas": blas.get("name"),
        "numpy_blas_version": blas.get("version"), "jax": jax.__version__,
        "jaxlib": getattr(jax.lib, "__version__", None) or jax.__version__,
        "jax_backend": jax.default_backend(), "jax_devices": [str(d) for d in jax.devices()],
        "xla_flags": os.environ.get("XLA_FLAGS"), "loadavg_at_start": os.getloadavg(),
    }


def run_stats(ts):
    return {"median_s": float(np.median(ts)), "min_s": float(min(ts)), "repeats": len(ts),
            "all_s": [float(t) for t in ts]}


def _time(fn, repeats, warmup):
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return ts


def time_numpy(fn, repeats, warmup=1):
    """Median wall time of ``fn()`` with NumPy's BLAS at its default thread count AND limited to one
    thread; the faster is the reference (``run``), both are recorded. In a process where XLA's
    worker threads exist, OpenBLAS's busy-waiting threads can oversubscribe the cores (measured 60x
    on a 512 x 512 eigvalsh), so the default alone could make NumPy look slower than it is.
    Memory = tracemalloc peak of one extra, untimed call."""
    from threadpoolctl import threadpool_limits

    runs = {"default": run_stats(_time(fn, repeats, warmup))}
    with threadpool_limits(limits=1, user_api="blas"):
        runs["1"] = run_stats(_time(fn, repeats, warmup))
    best = min(runs, key=lambda k: runs[k]["median_s"])
    tracemalloc.start()
    fn()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return {"run": runs[best], "blas_threads": best, "runs_by_blas_threads": runs,
            "memory": {"peak_alloc_bytes": int(peak)}}


def compile_jitted(fn, *args):
    """AOT-compile ``jax.jit(fn)`` for ``args``; return the executable and its compile record."""
    t0 = time.perf_counter()
    lowered = jax.jit(fn).lower(*args)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
    mem = {}
    ma = compiled.memory_analysis()
    if ma is not None:
        for k in ("argument", "output", "temp", "generated_code"):
            mem[f"xla_{k}_bytes"] = int(getattr(ma, f"{k}_size_in_bytes", 0))
    return compiled, {"trace_lower_s": t1 - t0, "compile_s": t2 - t1}, mem


def time_compiled(compiled, args, repeats, warmup=1):
    for _ in range(warmup):
        jax.block_until_ready(compiled(*args))
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        ts.append(time.perf_counter() - t0)
    return run_stats(ts)


def sphere_points(n, d, seed=0, dtype=np.float32):
    x = np.random.default_rng(seed).standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(dtype)


def log(msg):
    print(msg, flush=True)


def write_json(path: Path, obj):
    """Atomic write: temporary file in the same folder, then ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=1)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
