"""Particle-step benchmark: the jitted ``solvers`` step against the NumPy code a user would write.

Reproduces the "Benchmark" section of issue 2. In one process it times

1. the linear kernel (paper Eq. 3, from moments) at N = 10^6, d = 4, float32, jitted
   (``Euler`` and ``Layer``) against the same moment formula in NumPy
   (float32 and float64);
2. the dense Eq. 3 matrix in NumPy at N = 10 000 against the jitted linear step;
3. dense NumPy softmax attention at N = 8 192, d = 64 (full N x N exp matrix, row
   normalisation, A @ X, row normalisation: the style of Geshkovski et al.'s reference code)
   against the jitted blockwise ``Softmax`` step, over a grid of block sizes;
4. one softmax step at N = 65 536, d = 64 in a child process, with its peak resident memory;
5. this machine's memory bandwidth, and the linear step's fraction of that roofline.

Compile time, run time and memory are reported separately; every jitted call is compiled ahead
of time, warmed up and ends in ``block_until_ready``; times are medians over repeats (other
jobs may share the CPU). Results go to ``benchmarks/results/particles.json`` (atomic write)
with a description of the machine. See ``benchmarks/README.md``.

Run (about 4 minutes on 2 cores):  ``python benchmarks/particles.py``
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from solvers import AttentionField, Heun, Linear, Euler, Softmax, Layer, feature_major  # noqa: E402,E501

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import GB, run_stats, compile_jitted, log, machine, sphere_points, time_compiled, time_numpy, write_json  # noqa: E402,E501

ALPHA_LINEAR, ALPHA_SOFTMAX, H = 1.0, 1.0, 0.1
CHUNK = 10  # steps per jitted call when timing the per-step cost of the linear kernel
SCHEMES = {"layer": Layer(), "euler": Euler()}
TARGETS = {"linear_speedup": 3.0, "softmax_speedup": 2.5, "softmax_peak_rss_gb": 4.0}


# ---------------------------------------------------------------- NumPy steps a user would write
def np_linear_moments(x, alpha=ALPHA_LINEAR, h=H, scheme="euler"):
    """Eq. 3 from moments: m = mean, Sigma = Q - m m^T, g = m + alpha x Sigma; then a step."""
    m = x.mean(axis=0)
    sigma = x.T @ x / x.shape[0] - np.outer(m, m)
    g = m + alpha * (x @ sigma)
    if scheme == "euler":
        g = g - np.sum(x * g, axis=1, keepdims=True) * x
    y = x + h * g
    return y / np.linalg.norm(y, axis=1, keepdims=True)


def np_linear_dense(x, alpha=ALPHA_LINEAR, h=H):
    """Eq. 3 as an N x N matrix: A = (1 + alpha (X X^T - X m 1^T)) / N; layer step with A @ X."""
    n = x.shape[0]
    m = x.mean(axis=0)
    a = (1 + alpha * (x @ x.T - (x @ m)[:, None])) / n
    y = x + h * (a @ x)
    return y / np.linalg.norm(y, axis=1, keepdims=True)


def np_softmax_dense(x, beta=ALPHA_SOFTMAX, h=H):
    """Dense softmax attention step (reference-code style): full exp matrix, no max shift."""
    a = np.exp(beta * (x @ x.T))
    a /= a.sum(axis=1, keepdims=True)
    y = x + h * (a @ x)
    return y / np.linalg.norm(y, axis=1, keepdims=True)


def advance_fn(scheme):
    integ = SCHEMES[scheme]
    return lambda field, x, n: integ.advance(field, x, n, H)[0]


# Subclasses run the generic row-major (N, d) step: solvers.integrators.uses_feature_major takes the
# feature-major linear path only for Layer/Euler/Heun themselves. The side-by-side reference.
class RowMajorLayer(Layer):
    pass


class RowMajorEuler(Euler):
    pass


class RowMajorHeun(Heun):
    pass


class XlaFeatureMajor:
    """The feature-major step as the XLA program (``native=False``): what ran before the C++ kernel."""

    def __init__(self, integ):
        self.integ = integ

    def advance(self, field, x, n_steps, h):
        xt, ev = feature_major.advance(self.integ, field, x.T, n_steps, h, native=False)
        return xt.T, ev


# feature_major: the default (on CPU the one-pass C++ kernel of solvers.native for layer/euler;
# heun stays an XLA program); feature_major_xla: the same layout as XLA programs; row_major: (N, d).
LAYOUTS = {"feature_major": {"layer": Layer(), "euler": Euler(), "heun": Heun()},
           "feature_major_xla": {"layer": XlaFeatureMajor(Layer()),
                                 "euler": XlaFeatureMajor(Euler())},
           "row_major": {"layer": RowMajorLayer(), "euler": RowMajorEuler(), "heun": RowMajorHeun()}}


def case_layouts(xj, repeats):
    """Feature-major (default) against row-major linear steps, CHUNK steps per call, timed round-robin
    (alternating order) in wall and CPU time; ratios of the medians."""
    field = AttentionField(Linear(ALPHA_LINEAR), 1.0)
    built, times = {}, {}
    for lay, schemes in LAYOUTS.items():
        for name, integ in schemes.items():
            fn = jax.jit(lambda f, x, n, integ=integ: integ.advance(f, x, n, H)[0])
            jax.block_until_ready(fn(field, xj, jnp.int32(CHUNK)))
            built[lay, name], times[lay, name] = fn, ([], [])
    keys = list(built)
    for r in range(repeats):
        for k in keys if r % 2 == 0 else keys[::-1]:
            t0, c0 = time.perf_counter(), time.process_time()
            jax.block_until_ready(built[k](field, xj, jnp.int32(CHUNK)))
            times[k][0].append(time.perf_counter() - t0)
            times[k][1].append(time.process_time() - c0)
    out = {}
    for name in ("layer", "euler", "heun"):
        rec = {}
        for lay in LAYOUTS:
            if (lay, name) not in times:
                continue
            w, c = times[lay, name]
            rec[lay] = {"per_step_s": float(np.median(w)) / CHUNK, "cpu_per_step_s": float(np.median(c)) / CHUNK,
                        "wall_s": w, "cpu_s": c}
        rec["speedup_wall"] = rec["row_major"]["per_step_s"] / rec["feature_major"]["per_step_s"]
        rec["speedup_cpu"] = rec["row_major"]["cpu_per_step_s"] / rec["feature_major"]["cpu_per_step_s"]
        if "feature_major_xla" in rec:
            rec["native_vs_xla_wall"] = rec["feature_major_xla"]["per_step_s"] / rec["feature_major"]["per_step_s"]
            rec["native_vs_xla_cpu"] = (rec["feature_major_xla"]["cpu_per_step_s"]
                                        / rec["feature_major"]["cpu_per_step_s"])
            log(f"  linear {name:5s}: XLA feature-major {rec['feature_major_xla']['per_step_s'] * 1e3:6.1f} ms/step: "
                f"default (native) {rec['native_vs_xla_wall']:.2f}x wall, {rec['native_vs_xla_cpu']:.2f}x cpu faster")
        out[name] = rec
        log(f"  linear {name:5s}: feature-major {rec['feature_major']['per_step_s'] * 1e3:6.1f} ms/step "
            f"(cpu {rec['feature_major']['cpu_per_step_s'] * 1e3:.1f}), row-major "
            f"{rec['row_major']['per_step_s'] * 1e3:6.1f} ms (cpu {rec['row_major']['cpu_per_step_s'] * 1e3:.1f}): "
            f"{rec['speedup_wall']:.2f}x wall, {rec['speedup_cpu']:.2f}x cpu")
    out["loadavg"] = list(os.getloadavg())
    return out


# ---------------------------------------------------------------- cases
def case_linear(n, d, repeats):
    x32 = sphere_points(n, d)
    x64 = x32.astype(np.float64)
    out = {"N": n, "d": d, "alpha": ALPHA_LINEAR, "h": H, "numpy": {}, "jax": {}}
    for scheme, (name, xx) in itertools.product(("euler", "layer"), (("float32", x32), ("float64", x64))):
        r = time_numpy(lambda: np_linear_moments(xx, scheme=scheme), repeats)
        out["numpy"][f"{scheme}_{name}"] = r
        log(f"  numpy moments {scheme:5s} {name}: {r['run']['median_s'] * 1e3:8.1f} ms/step")
    xj = jnp.asarray(x32)
    field = AttentionField(Linear(ALPHA_LINEAR), 1.0)
    for scheme in ("euler", "layer"):
        compiled, comp, mem = compile_jitted(advance_fn(scheme), field, xj, jnp.int32(1))
        one = time_compiled(compiled, (field, xj, jnp.int32(1)), 2 * repeats)
        chunk = time_compiled(compiled, (field, xj, jnp.int32(CHUNK)), repeats)
        step = chunk["median_s"] / CHUNK
        err = float(np.max(np.abs(np.asarray(compiled(field, xj, jnp.int32(1)), np.float64)
                                  - np_linear_moments(x64, scheme=scheme))))
        out["jax"][scheme] = {"compile": comp, "memory": mem, "run_one_step_call": one,
                              f"run_{CHUNK}_step_call": chunk, "per_step_s": step,
                              "particle_steps_per_s": n / step, "max_abs_diff_vs_numpy_float64": err}
        log(f"  jax linear    {scheme:5s} float32: {step * 1e3:8.1f} ms/step (chunk of {CHUNK}), "
            f"{one['median_s'] * 1e3:.1f} ms single-step call, compile {comp['compile_s']:.2f} s, "
            f"|diff| {err:.1e}")
    for scheme in ("euler", "layer"):
        jx = out["jax"][scheme]
        for name in ("float32", "float64"):
            jx[f"speedup_vs_numpy_{name}"] = out["numpy"][f"{scheme}_{name}"]["run"]["median_s"] / jx["per_step_s"]
        out["numpy"][f"{scheme}_float32"]["particle_steps_per_s"] = n / out["numpy"][f"{scheme}_float32"]["run"]["median_s"]
    out["layouts"] = case_layouts(xj, repeats)
    return out


def case_dense_eq3(n, d, repeats):
    x32 = sphere_points(n, d, seed=1)
    out = {"N": n, "d": d, "numpy_dense": {}}
    for name, xx in (("float32", x32), ("float64", x32.astype(np.float64))):
        r = time_numpy(lambda: np_linear_dense(xx), repeats)
        out["numpy_dense"][name] = r
        log(f"  numpy dense Eq.3 {name}: {r['run']['median_s'] * 1e3:8.1f} ms/step, "
            f"peak alloc {r['memory']['peak_alloc_bytes'] / GB:.2f} GB")
    xj = jnp.asarray(x32)
    field = AttentionField(Linear(ALPHA_LINEAR), 1.0)
    compiled, comp, mem = compile_jitted(advance_fn("layer"), field, xj, jnp.int32(1))
    chunk = time_compiled(compiled, (field, xj, jnp.int32(CHUNK)), 2 * repeats)
    step = chunk["median_s"] / CHUNK
    err = float(np.max(np.abs(np.asarray(compiled(field, xj, jnp.int32(1)), np.float64)
                              - np_linear_dense(x32.astype(np.float64)))))
    out["jax_linear_layer"] = {"compile": comp, "memory": mem, f"run_{CHUNK}_step_call": chunk,
                               "per_step_s": step, "particle_steps_per_s": n / step,
                               "max_abs_diff_vs_dense_float64": err}
    for name in ("float32", "float64"):
        out[f"speedup_vs_dense_{name}"] = out["numpy_dense"][name]["run"]["median_s"] / step
    log(f"  jax linear layer float32: {step * 1e6:8.1f} us/step; speedup vs dense float32 "
        f"{out['speedup_vs_dense_float32']:.0f}x, |diff| {err:.1e}")
    return out


def case_softmax(n, d, repeats, jax_repeats, key_blocks, query_blocks):
    x32 = sphere_points(n, d, seed=2)
    x64 = x32.astype(np.float64)
    out = {"N": n, "d": d, "beta": ALPHA_SOFTMAX, "h": H, "numpy_dense": {}, "jax_blocks": []}
    for name, xx in (("float32", x32), ("float64", x64)):
        r = time_numpy(lambda: np_softmax_dense(xx), repeats)
        r["particle_steps_per_s"] = n / r["run"]["median_s"]
        out["numpy_dense"][name] = r
        log(f"  numpy dense softmax {name}: {r['run']['median_s']:6.2f} s/step, "
            f"peak alloc {r['memory']['peak_alloc_bytes'] / GB:.2f} GB")
    ref = np_softmax_dense(x64)
    xj = jnp.asarray(x32)
    default = Softmax(ALPHA_SOFTMAX)
    configs = sorted(set(itertools.product(key_blocks, query_blocks)) | {(default.key_block, default.query_block)})
    built = {}
    for kb, qb in configs:
        field = AttentionField(Softmax(ALPHA_SOFTMAX, key_block=kb, query_block=qb), 1.0)
        compiled, comp, mem = compile_jitted(advance_fn("layer"), field, xj, jnp.int32(1))
        y = jax.block_until_ready(compiled(field, xj, jnp.int32(1)))  # warm-up
        built[kb, qb] = (compiled, field, comp, mem, float(np.max(np.abs(np.asarray(y, np.float64) - ref))))
    # Round-robin over the configurations (alternating order), so load drift hits all alike.
    times = {c: [] for c in configs}
    for r in range(jax_repeats):
        for c in configs if r % 2 == 0 else configs[::-1]:
            compiled, field = built[c][:2]
            t0 = time.perf_counter()
            jax.block_until_ready(compiled(field, xj, jnp.int32(1)))
            times[c].append(time.perf_counter() - t0)
    for kb, qb in configs:
        _, _, comp, mem, err = built[kb, qb]
        run = run_stats(times[kb, qb])
        rec = {"key_block": kb, "query_block": qb, "default": (kb, qb) == (default.key_block, default.query_block),
               "compile": comp, "memory": mem, "run": run, "per_step_s": run["median_s"],
               "particle_steps_per_s": n / run["median_s"], "max_abs_diff_vs_numpy_float64": err,
               "speedup_vs_numpy_float32": out["numpy_dense"]["float32"]["run"]["median_s"] / run["median_s"],
               "speedup_vs_numpy_float64": out["numpy_dense"]["float64"]["run"]["median_s"] / run["median_s"]}
        out["jax_blocks"].append(rec)
        log(f"  jax softmax key_block={kb:5d} query_block={qb:5d}: {run['median_s']:6.3f} s/step "
            f"(min {run['min_s']:.3f}), {rec['speedup_vs_numpy_float32']:.2f}x, compile {comp['compile_s']:.2f} s, "
            f"XLA temp {mem.get('xla_temp_bytes', 0) / 2**20:.0f} MiB, |diff| {err:.1e}")
    out["default"] = next(r for r in out["jax_blocks"] if r["default"])
    out["best"] = min(out["jax_blocks"], key=lambda r: r["per_step_s"])
    return out


def child_softmax(n, d, key_block, query_block):
    """Body of the child process of :func:`case_softmax_memory`; prints one JSON line."""

    def status(field):
        with open("/proc/self/status") as f:
            return int(next(ln for ln in f if ln.startswith(field)).split()[1]) * 1024

    base = status("VmRSS:")
    x = jnp.asarray(sphere_points(n, d, seed=3))
    field = AttentionField(Softmax(ALPHA_SOFTMAX, key_block=key_block, query_block=query_block), 1.0)
    compiled, comp, mem = compile_jitted(advance_fn("layer"), field, x, jnp.int32(1))
    t0 = time.perf_counter()
    y = jax.block_until_ready(compiled(field, x, jnp.int32(1)))
    run = time.perf_counter() - t0
    print(json.dumps({"rss_after_imports_bytes": base, "compile": comp, "memory": mem, "run_s": run,
                      "vm_hwm_bytes": status("VmHWM:"), "finite": bool(jnp.all(jnp.isfinite(y)))}))


def case_softmax_memory(n, d, key_block, query_block):
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    with open("/proc/self/status") as f:
        parent_rss = int(next(ln for ln in f if ln.startswith("VmRSS:")).split()[1]) * 1024
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child-softmax", str(n), str(d), str(key_block),
           str(query_block)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"child failed: {proc.stderr.strip()[-2000:]}")
    rec = json.loads(proc.stdout.strip().splitlines()[-1])
    after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    rec.update({"N": n, "d": d, "key_block": key_block, "query_block": query_block, "child_wall_s": wall,
                "peak_rss_bytes": max(after * 1024, rec["vm_hwm_bytes"]),
                "ru_maxrss_children_bytes": after * 1024, "ru_maxrss_children_bytes_before": before * 1024,
                "parent_rss_at_spawn_bytes": parent_rss,
                "particle_steps_per_s": n / rec["run_s"],
                "what": "peak resident set size of a fresh python process that imports jax, builds x, compiles "
                        "and runs one softmax layer step (includes the interpreter and the JAX "
                        "runtime): max of the child's own VmHWM and ru_maxrss(RUSAGE_CHILDREN) read by the "
                        "parent; the latter also counts the parent's RSS at spawn (forked copy before exec)"})
    log(f"  softmax N={n} d={d}: {rec['run_s']:.1f} s/step, compile {rec['compile']['compile_s']:.2f} s, "
        f"peak RSS {rec['peak_rss_bytes'] / GB:.2f} GB (child VmHWM {rec['vm_hwm_bytes'] / GB:.2f} GB, "
        f"RUSAGE_CHILDREN {after * 1024 / GB:.2f} GB, after imports {rec['rss_after_imports_bytes'] / GB:.2f} GB), "
        f"XLA temp {rec['memory'].get('xla_temp_bytes', 0) / 2**20:.0f} MiB")
    return rec


def case_bandwidth(n_bytes, repeats):
    """Effective copy bandwidth = 2 x array bytes (read + write) / time; best of ``repeats``.

    Two in-place kernels: ``np.copyto(dst, src)`` and a jitted ``x + 1`` with the input buffer
    donated (so no fresh output has to be page-faulted in). The non-donated ``x + 1`` is also
    recorded: its cost is dominated by first-touch page faults of a new 1 GB output buffer.
    """
    n = n_bytes // 4
    src = np.ones(n, np.float32)
    dst = np.empty_like(src)
    r_np = time_numpy(lambda: np.copyto(dst, src), repeats)
    del src, dst
    donated = jax.jit(lambda a: a + 1, donate_argnums=0).lower(jax.ShapeDtypeStruct((n,), jnp.float32)).compile()
    state = [jnp.ones(n, jnp.float32)]

    def run():
        state[0] = jax.block_until_ready(donated(state[0]))

    ts = []
    run()
    for _ in range(repeats):
        t0 = time.perf_counter()
        run()
        ts.append(time.perf_counter() - t0)
    r_don = run_stats(ts)
    fresh, _, _ = compile_jitted(lambda a: a + 1, state[0])
    r_fresh = time_compiled(fresh, (state[0],), max(1, repeats // 2))
    del state
    out = {"array_bytes": 4 * n, "bytes_counted_per_pass": 8 * n,
           "numpy_copyto_GBps": 8 * n / r_np["run"]["min_s"] / GB,
           "jax_add_one_donated_GBps": 8 * n / r_don["min_s"] / GB,
           "jax_add_one_fresh_output_GBps": 8 * n / r_fresh["min_s"] / GB,
           "numpy_copyto_run": r_np["run"], "jax_add_one_donated_run": r_don, "jax_add_one_fresh_output_run": r_fresh,
           "note": "read + write counted once each (write-allocate traffic not counted), best of repeats; "
                   "peak = max of the two in-place kernels"}
    out["peak_GBps"] = max(out["numpy_copyto_GBps"], out["jax_add_one_donated_GBps"])
    log(f"  bandwidth: numpy copy {out['numpy_copyto_GBps']:.1f} GB/s, jax x+1 donated "
        f"{out['jax_add_one_donated_GBps']:.1f} GB/s (fresh output {out['jax_add_one_fresh_output_GBps']:.1f} GB/s)")
    return out


def roofline(linear, bw):
    n, d = linear["N"], linear["d"]
    nbytes = 3 * n * d * 4  # read x (moments) + read x and write x (update), float32
    out = {"min_bytes_per_step": nbytes,
           "counted": "3 N d x 4 bytes: read x once for the moments, read x again and write x for the update"}
    for scheme in ("euler", "layer"):
        ach = nbytes / linear["jax"][scheme]["per_step_s"] / GB
        out[scheme] = {"achieved_GBps": ach, "fraction_of_peak": ach / bw["peak_GBps"],
                       "roofline_step_s": nbytes / (bw["peak_GBps"] * GB)}
        # the same with the CPU time of the round-robin layout comparison (robust to load; the step may
        # use both cores, so this can only understate the fraction on an idle machine)
        cpu = linear["layouts"][scheme]["feature_major"]["cpu_per_step_s"]
        out[scheme]["fraction_of_peak_cpu_time"] = nbytes / cpu / GB / bw["peak_GBps"]
    log(f"  roofline: {nbytes / 1e6:.0f} MB/step minimum; euler {out['euler']['achieved_GBps']:.2f} GB/s = "
        f"{100 * out['euler']['fraction_of_peak']:.1f}% of {bw['peak_GBps']:.1f} GB/s")
    return out


# ---------------------------------------------------------------- summary and output
def summary(res, quick):
    lin, sm, mem, rf = res["linear"], res["softmax"], res["softmax_memory"], res["roofline"]
    rows = [
        ("linear N=%d d=%d: jit euler vs NumPy moments f32" % (lin["N"], lin["d"]),
         lin["jax"]["euler"]["speedup_vs_numpy_float32"], ">= %gx" % TARGETS["linear_speedup"],
         lin["jax"]["euler"]["speedup_vs_numpy_float32"] >= TARGETS["linear_speedup"]),
        ("  same, vs NumPy moments f64", lin["jax"]["euler"]["speedup_vs_numpy_float64"], "info", None),
        ("  jit layer vs NumPy moments f32 (layer)", lin["jax"]["layer"]["speedup_vs_numpy_float32"], "info", None),
        ("dense Eq.3 N=%d: jit linear vs NumPy dense f32" % res["dense_eq3"]["N"],
         res["dense_eq3"]["speedup_vs_dense_float32"], "info", None),
        ("softmax N=%d d=%d: jit default blocks vs dense f32" % (sm["N"], sm["d"]),
         sm["default"]["speedup_vs_numpy_float32"], ">= %gx" % TARGETS["softmax_speedup"],
         sm["default"]["speedup_vs_numpy_float32"] >= TARGETS["softmax_speedup"]),
        ("  best blocks (%d, %d) vs dense f32" % (sm["best"]["key_block"], sm["best"]["query_block"]),
         sm["best"]["speedup_vs_numpy_float32"], "info", None),
        ("  default blocks vs dense f64", sm["default"]["speedup_vs_numpy_float64"], "info", None),
        ("softmax N=%d d=%d: peak RSS of one step [GB]" % (mem["N"], mem["d"]), mem["peak_rss_bytes"] / GB,
         "< %g GB" % TARGETS["softmax_peak_rss_gb"], mem["peak_rss_bytes"] / GB < TARGETS["softmax_peak_rss_gb"]),
        ("linear euler: fraction of copy-bandwidth roofline", rf["euler"]["fraction_of_peak"], "info", None),
    ]
    table = []
    w = max(len(r[0]) for r in rows)
    lines = [f"{'measure':{w}s}  {'value':>9s}  {'target':>9s}  result", "-" * (w + 32)]
    for name, val, tgt, ok in rows:
        res_s = "" if ok is None else ("PASS" if ok else "MISS")
        if quick and ok is not None:
            res_s += " (quick sizes)"
        lines.append(f"{name:{w}s}  {val:9.2f}  {tgt:>9s}  {res_s}")
        table.append({"measure": name, "value": val, "target": tgt, "pass": ok})
    lines.append("")
    lines.append("particles*steps/s: jit linear euler %.3g, NumPy moments f32 %.3g; jit softmax default %.3g, "
                 "NumPy dense f32 %.3g" % (lin["jax"]["euler"]["particle_steps_per_s"],
                                          lin["numpy"]["euler_float32"]["particle_steps_per_s"],
                                          sm["default"]["particle_steps_per_s"],
                                          sm["numpy_dense"]["float32"]["particle_steps_per_s"]))
    lines.append("times are medians of repeats (CPU shared with other jobs; load average %.1f -> %.1f)"
                 % (res["machine"]["loadavg_at_start"][0], res["loadavg_at_end"][0]))
    return "\n".join(lines), table


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=5, help="timed repeats per measurement (default 5; 3 for the "
                   "slow dense NumPy cases)")
    p.add_argument("--quick", action="store_true", help="small sizes (smoke test, ~20 s); targets not comparable")
    p.add_argument("--out", type=Path, default=None,
                   help="JSON output (default benchmarks/results/particles.json, particles-quick.json with --quick)")
    p.add_argument("--only", choices=["linear"], help="run only the bandwidth and linear sections and merge "
                   "them (with the roofline) into the existing JSON file")
    p.add_argument("--child-softmax", nargs=4, type=int, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child_softmax:
        return child_softmax(*a.child_softmax)
    if a.only:
        return only_linear(a)
    q = a.quick
    sizes = {"linear": (2**15 if q else 10**6, 4), "dense": 1000 if q else 10_000,
             "softmax": (1024 if q else 8192, 64), "softmax_memory": (4096 if q else 65_536, 64),
             "bandwidth_bytes": 2**26 if q else 2**30}
    slow = max(1, min(a.repeats, 3))
    res = {"benchmark": "particles", "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "quick": q, "machine": machine(), "sizes": sizes, "targets": TARGETS}
    t0 = time.perf_counter()
    log(f"machine: {res['machine']['cpu_model']}, {res['machine']['usable_cores']} cores, "
        f"{res['machine']['memory_gb']} GB, jax {jax.__version__} ({jax.default_backend()}), numpy {np.__version__}")
    # First, while this process is still small: a child's ru_maxrss also counts the parent's
    # resident memory at fork time (the forked copy before exec), so it must not follow big arrays.
    log("[4] softmax peak memory (child process, default blocks)")
    dflt = Softmax(ALPHA_SOFTMAX)
    res["softmax_memory"] = case_softmax_memory(*sizes["softmax_memory"], dflt.key_block, dflt.query_block)
    log("[5] memory bandwidth")
    res["bandwidth"] = case_bandwidth(sizes["bandwidth_bytes"], a.repeats)
    log("[1] linear kernel from moments")
    res["linear"] = case_linear(*sizes["linear"], a.repeats)
    res["roofline"] = roofline(res["linear"], res["bandwidth"])
    log("[2] dense Eq. 3 matrix")
    res["dense_eq3"] = case_dense_eq3(sizes["dense"], 4, slow)
    log("[3] softmax, dense NumPy vs blockwise jit")
    kbs, qbs = ((256, 512), (256, 1024)) if q else ((512, 1024, 2048), (1024, 4096, 8192))
    res["softmax"] = case_softmax(*sizes["softmax"], slow, a.repeats, kbs, qbs)
    res["loadavg_at_end"] = os.getloadavg()
    res["total_wall_s"] = time.perf_counter() - t0
    text, res["summary"] = summary(res, q)
    out = a.out or ROOT / "benchmarks" / "results" / ("particles-quick.json" if q else "particles.json")
    write_json(out, res)
    log("\n" + text)
    log(f"total {res['total_wall_s']:.0f} s; wrote {out}")


def only_linear(a):
    q = a.quick
    out = a.out or ROOT / "benchmarks" / "results" / ("particles-quick.json" if q else "particles.json")
    res = json.loads(out.read_text()) if out.exists() else {"benchmark": "particles"}
    mach = machine()
    log("[5] memory bandwidth")
    res["bandwidth"] = case_bandwidth(2**26 if q else 2**30, a.repeats)
    log("[1] linear kernel from moments")
    res["linear"] = case_linear(2**15 if q else 10**6, 4, a.repeats)
    res["roofline"] = roofline(res["linear"], res["bandwidth"])
    res["linear_rerun"] = {"created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "command": "--only linear",
                           "machine": mach, "loadavg_at_end": os.getloadavg()}
    write_json(out, res)
    log(f"wrote {out} (sections bandwidth, linear, roofline)")


if __name__ == "__main__":
    main()
