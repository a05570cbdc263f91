"""Driver overhead: ``solve_flow`` against its own step, the linear kernel at N = 10^6 and 10^7.

What a user runs (``mf.solve_flow(mf.Uniform(4), N=N, layers=L)``, float32, the ``layer``
scheme, the native C++ step on a CPU when it is built) against the engine's step alone: the
same jitted feature-major advance (``solvers.feature_major.advance``) over ``L`` steps in one
call, compiled ahead and timed with ``block_until_ready``. Two runs of the driver: saving only at
the end (``save=SaveAt(every=L)``: what is left is the driver's own overhead -- sampling the
start, the transposes in and out, the chunk loop) and the default (a save every layer: the
diagnostics of ``benchmarks/diagnostics.py`` on top). The driver's time is ``sol.stats
["wall_time"]`` (sampling included), after one compiling run of the same shapes; medians over
``--rounds``. Results: ``benchmarks/results/driver.json``; table in ``benchmarks/README.md``.

Run (about 1 minute on 2 cores):  ``python benchmarks/driver.py``  (``--quick``: N = 10^5);
``python benchmarks/driver.py --table results/driver.json [results/driver-before.json]`` prints the
README table (the second file: the same measurement of an older checkout, for a before/after row).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import meanfield as mf  # noqa: E402
from solvers import AttentionField, Layer, feature_major  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import log, machine, write_json  # noqa: E402

ALPHA, D, LAYERS = 0.25, 4, 24


def step_time(n, rounds):
    """Seconds per step of the engine's advance over LAYERS steps in one compiled call."""
    field = AttentionField(mf.Linear(ALPHA), jnp.asarray(1.0, jnp.float32))
    xt = jnp.asarray(mf.Uniform(D).sample(jax.random.key(0), n, dtype=jnp.float32).T)
    run = jax.jit(lambda x: feature_major.advance(Layer(), field, x, LAYERS, 1.0)[0]).lower(xt).compile()
    jax.block_until_ready(run(xt))
    ts = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        jax.block_until_ready(run(xt))
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts)) / LAYERS


def driver_time(n, save, rounds):
    """Seconds per step of solve_flow (wall time of the run, sampling included)."""
    mf.solve_flow(mf.Uniform(D), N=n, layers=LAYERS, key=1, save=save)  # compile these shapes
    ts = [mf.solve_flow(mf.Uniform(D), N=n, layers=LAYERS, key=0, save=save).stats["wall_time"] for _ in range(rounds)]
    return float(np.median(ts)) / LAYERS


def table(now: dict, before: dict | None = None) -> str:
    """The Markdown table of benchmarks/README.md from the JSON of one run (and optionally an older one)."""
    lines = ["| N | step | `solve_flow`, save at the end | `solve_flow`, save every layer |", "|---|---|---|---|"]
    old = {r["N"]: r for r in (before or {}).get("rows", [])}
    for r in now["rows"]:
        def cell(key, row=r):
            return f"{row[key]:.2f} ms"
        ratio = f"{r['end_only_over_step']:.2f}x"
        if r["N"] in old:
            ratio += f" (before: {old[r['N']]['end_only_over_step']:.2f}x)"
        lines.append(f"| {r['N']:,} | {cell('step_ms')} | {cell('solve_flow_end_only_ms')}, {ratio} | "
                     f"{cell('solve_flow_default_ms')}, {r['default_over_step']:.2f}x |")
    load = now["machine"]["loadavg_at_start"]
    lines.append(f"\nPer step, medians of {now['rounds']} runs; load average at the start {load[0]:.1f} "
                 f"(1 min), native kernels {'built' if now['native'] else 'not built'}.")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="N = 10^5 only (seconds)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "driver.json")
    ap.add_argument("--table", type=Path, nargs="+", default=None, metavar="JSON",
                    help="print the README table of a results file (and of an older one beside it) and exit")
    args = ap.parse_args(argv)
    if args.table:
        import json

        runs = [json.loads(p.read_text()) for p in args.table]
        return print(table(runs[0], runs[1] if len(runs) > 1 else None))
    sizes = [100_000] if args.quick else [1_000_000, 10_000_000]
    rows = []
    for n in sizes:
        step = step_time(n, args.rounds)
        end = driver_time(n, mf.SaveAt(every=LAYERS), args.rounds)
        default = driver_time(n, None, args.rounds)
        rows.append({"N": n, "d": D, "layers": LAYERS, "step_ms": 1e3 * step, "solve_flow_end_only_ms": 1e3 * end,
                     "solve_flow_default_ms": 1e3 * default, "end_only_over_step": end / step,
                     "default_over_step": default / step})
        log(f"N={n:>10,d}: step {1e3 * step:.3f} ms; solve_flow per step: save at the end {1e3 * end:.3f} ms "
            f"({end / step:.2f}x the step), save every layer {1e3 * default:.3f} ms ({default / step:.2f}x)")
    write_json(args.out, {"machine": machine(), "rounds": args.rounds, "native": feature_major._native.available(),
                          "rows": rows})
    log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
