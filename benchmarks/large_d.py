"""Large model dimensions (issue 21 point 1): time and peak memory of softmax runs against d.

``mf.solve_flow(mf.Uniform(d), N=N, kernel="softmax", layers=LAYERS)`` (float32, ``layer``), for
d = 256, 1024, 4096, 16 384 and N = 100, 2000, with the default saving (a save every layer) and
saving only at the end (``save=SaveAt(every=LAYERS)``). Each case runs in its own subprocess, so
its peak memory is its own: the child's ``VmHWM`` (peak RSS, the Python + JAX runtime included).
The time is ``sol.stats["wall_time"]`` of a second run, after one compiling run of the same shapes.

Beside it, the token-covariance spectrum by its two routes (``meanfield.stats.diagnostics``): the
``d x d`` covariance + ``eigvalsh`` (the route before, still used for N >= d) and the ``N x N``
Gram form (N < d), each the full jitted ``token_statistics``, timed round-robin, min and median.

    python benchmarks/large_d.py                 # ~5-10 minutes on 2 loaded cores
    python benchmarks/large_d.py --quick         # d <= 1024, spectrum at d = 1024 only
    python benchmarks/large_d.py --table results/large_d.json   # the README tables
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

LAYERS = 6


def child(n, d, end_only):
    import meanfield as mf

    save = mf.SaveAt(every=LAYERS) if end_only else None
    t0 = time.perf_counter()
    mf.solve_flow(mf.Uniform(d), N=n, kernel="softmax", layers=LAYERS, key=1, save=save)  # compile
    first = time.perf_counter() - t0
    sol = mf.solve_flow(mf.Uniform(d), N=n, kernel="softmax", layers=LAYERS, key=0, save=save)
    with open("/proc/self/status") as f:
        hwm = int(next(ln for ln in f if ln.startswith("VmHWM:")).split()[1]) * 1024
    print(json.dumps({"first_run_s": first, "wall_s": float(sol.stats["wall_time"]), "peak_rss_bytes": hwm,
                      "n_saves": int(len(sol.t))}))


def run_case(n, d, end_only, timeout):
    cmd = [sys.executable, __file__, "--child", str(n), str(d), str(int(end_only))]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"N": n, "d": d, "end_only": end_only, "timed_out_s": timeout}
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-2000:])
    rec = json.loads(proc.stdout.strip().splitlines()[-1])
    rec.update({"N": n, "d": d, "end_only": end_only, "process_wall_s": time.perf_counter() - t0})
    return rec


def spectrum_times(n, d, repeats):
    """Min and median seconds of the jitted token statistics by the d x d and the N x N route."""
    import jax
    import jax.numpy as jnp

    from _harness import run_stats
    from meanfield import diagnostics as dg
    from solvers.kernels import key_moments
    from solvers.sphere import normalize

    x = jnp.asarray(jax.random.normal(jax.random.key(0), (n, d), jnp.float32))
    routes = {"dxd": jax.jit(lambda x: dg.token_statistics_from_moments(*key_moments(normalize(x)))),
              "gram": jax.jit(dg.token_statistics)}
    out = {k: f(x) for k, f in routes.items()}  # compile
    jax.block_until_ready(out)
    rel = abs(float(out["gram"]["covariance_effective_rank"]) / float(out["dxd"]["covariance_effective_rank"]) - 1)
    ts = {k: [] for k in routes}
    for _ in range(repeats):  # round-robin: load drift hits both routes alike
        for k, f in routes.items():
            t0 = time.perf_counter()
            jax.block_until_ready(f(x))
            ts[k].append(time.perf_counter() - t0)
    rec = {"N": n, "d": d, "eff_rank_rel_diff_float32": rel}
    for k in routes:
        rec[k] = run_stats(ts[k])
    rec["ratio_median"] = rec["dxd"]["median_s"] / rec["gram"]["median_s"]
    return rec


def table(res) -> str:
    """The Markdown tables of benchmarks/README.md from a results file (``--table``)."""
    rows = {(r["N"], r["d"], r["end_only"]): r for r in res["runs"]}
    lines = ["| N | d | default saving: time, peak RSS | save at the end: time, peak RSS | default / end |",
             "|---|---|---|---|---|"]

    def cell(r):
        if r is None or "timed_out_s" in r:
            return f"over {r['timed_out_s']:.0f} s (not finished)" if r else "not run"
        return f"{r['wall_s']:.2f} s, {r['peak_rss_bytes'] / 2**20:.0f} MiB"

    for n, d in sorted({(k[0], k[1]) for k in rows}):
        a, b = rows.get((n, d, False)), rows.get((n, d, True))
        ratio = f"{a['wall_s'] / b['wall_s']:.2f}x" if a and b and "wall_s" in a and "wall_s" in b else "-"
        lines.append(f"| {n:,} | {d:,} | {cell(a)} | {cell(b)} | {ratio} |")
    lines.append(f"\n{res['layers']} layers, float32, `layer`; time = `sol.stats[\"wall_time\"]` after a compiling run; "
                 f"load average at the start {res['machine']['loadavg_at_start'][0]:.1f} (1 min).\n")
    lines += ["| N | d | d x d covariance + `eigvalsh`: min / median | N x N Gram: min / median | ratio (medians) |"
              " float32 eff. rank rel. diff |", "|---|---|---|---|---|---|"]
    for r in res["spectrum"]:
        lines.append(f"| {r['N']:,} | {r['d']:,} | {r['dxd']['min_s']:.3g} s / {r['dxd']['median_s']:.3g} s | "
                     f"{r['gram']['min_s'] * 1e3:.3g} ms / {r['gram']['median_s'] * 1e3:.3g} ms | "
                     f"{r['ratio_median']:.0f}x | {r['eff_rank_rel_diff_float32']:.1e} |")
    reps = "/".join(str(r["dxd"]["repeats"]) for r in res["spectrum"])
    lines.append(f"\nThe jitted `token_statistics` of (N, d) float32 Gaussian tokens, {reps} round-robin repeats.")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--child", nargs=3, type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--timeout", type=float, default=240.0, help="seconds per subprocess before it is given up")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--max-d-2000", type=int, default=16384, help="largest d run at N = 2000 (time budget)")
    ap.add_argument("--no-8192", action="store_true", help="skip the d = 8192 spectrum (its d x d route ~1 min)")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "large_d.json")
    ap.add_argument("--table", type=Path, default=None, help="print the README tables of a results file and exit")
    a = ap.parse_args(argv)
    if a.child:
        return child(a.child[0], a.child[1], bool(a.child[2]))
    if a.table:
        return print(table(json.loads(a.table.read_text())))
    from _harness import log, machine, write_json

    mach = machine()
    ds = [256, 1024] if a.quick else [256, 1024, 4096, 16384]
    spec_cases = [(100, 1024, a.repeats)] if a.quick else [(100, 4096, a.repeats), (2000, 4096, a.repeats),
                                                            (100, 8192, 2)]  # d^3 = 8x the d = 4096 time
    if a.no_8192:
        spec_cases = [c for c in spec_cases if c[1] != 8192]
    spectrum = []
    for n, d, repeats in spec_cases:
        spectrum.append(spectrum_times(n, d, repeats))
        r = spectrum[-1]
        log(f"spectrum N={n} d={d}: d x d {r['dxd']['median_s']:.3g} s, Gram {r['gram']['median_s'] * 1e3:.3g} ms "
            f"({r['ratio_median']:.0f}x)")
    runs = []
    for n in (100, 2000):
        for d in [d for d in ds if n < 2000 or d <= a.max_d_2000]:
            for end_only in (False, True):
                runs.append(run_case(n, d, end_only, a.timeout))
                log(json.dumps(runs[-1]))
    res = {"machine": mach, "layers": LAYERS, "runs": runs, "spectrum": spectrum}
    write_json(a.out, res)
    log(table(res))
    log(f"wrote {a.out}")


if __name__ == "__main__":
    main()
