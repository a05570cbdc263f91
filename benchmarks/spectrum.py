"""Cost of the attention spectrum: float32 TSQR factor against the Gram route (issue 12).

The softmax attention statistics of ``n = 512`` query rows over ``N`` keys (d = 64, alpha = 1):
one streamed pass (``solvers.streaming.logit_pass``) accumulating the spectral factor, then the
singular values (``solvers.kernels.spectrum_from_factor``), with the route forced to ``qr=False``
(Gram matrix + ``eigvalsh``, the route before issue 12) or ``qr=True`` (TSQR + SVD of ``R D``).
Cases: float32 at N = 4096 (the sampled default's key subsample), 16 384 and 65 536; float64 at
N = 16 384 (to decide whether float64 should switch too).

The machine is shared, so the routes are timed round-robin (one call of each in turn, ``repeats``
rounds) in one process, as CPU time (``time.process_time``, all threads of the process) and wall
time; the median of each is kept and the load average is recorded at start and end. Host LAPACK
calls run with one BLAS thread, as in the simulations (``meanfield._threads.fetch``). Writes
``benchmarks/results/spectrum.json``.

    python benchmarks/spectrum.py            # about 2 minutes on 2 cores
    python benchmarks/spectrum.py --quick    # N = 4096 only
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _harness as hx  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from meanfield._threads import single_threaded_blas  # noqa: E402
from solvers.kernels import spectrum_from_factor  # noqa: E402
from solvers.streaming import logit_pass  # noqa: E402

N_QUERY, D, ALPHA, KEY_BLOCK = 512, 64, 1.0, 1024


def route(qr: bool):
    def fn(q, k):
        p = logit_pass(q, k, jnp.asarray(ALPHA, q.dtype), KEY_BLOCK, with_gram=True, qr=qr)
        return spectrum_from_factor(p.gram, 1.0 / p.l, qr=qr)
    return fn


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    jax.config.update("jax_enable_x64", True)  # float64 case; the float32 arrays stay float32
    cases = [(np.float32, 4096)] + ([] if args.quick else [(np.float32, 16_384), (np.float32, 65_536),
                                                          (np.float64, 16_384)])
    out = {"machine": hx.machine(), "n_query": N_QUERY, "d": D, "alpha": ALPHA, "key_block": KEY_BLOCK,
           "repeats": args.repeats, "cases": []}
    for dtype, n_keys in cases:
        k = jnp.asarray(hx.sphere_points(n_keys, D, seed=0, dtype=dtype))
        q = k[:N_QUERY]
        fns, row = {}, {"dtype": np.dtype(dtype).name, "N": n_keys}
        for name, qr in (("gram", False), ("tsqr", True)):
            fns[name], comp, _ = hx.compile_jitted(route(qr), q, k)
            row[f"{name}_compile_s"] = comp["compile_s"]
        times = {name: {"cpu": [], "wall": []} for name in fns}
        with single_threaded_blas():
            for name in fns:  # warm-up
                jax.block_until_ready(fns[name](q, k))
            for _ in range(args.repeats):  # round-robin: load changes hit both routes alike
                for name, fn in fns.items():
                    c, w = time.process_time(), time.perf_counter()
                    jax.block_until_ready(fn(q, k))
                    times[name]["cpu"].append(time.process_time() - c)
                    times[name]["wall"].append(time.perf_counter() - w)
        for name in fns:
            row[f"{name}_cpu_s"] = float(np.median(times[name]["cpu"]))
            row[f"{name}_wall_s"] = float(np.median(times[name]["wall"]))
            row[f"{name}_all"] = times[name]
        row["ratio_cpu"] = row["tsqr_cpu_s"] / row["gram_cpu_s"]
        row["ratio_wall"] = row["tsqr_wall_s"] / row["gram_wall_s"]
        out["cases"].append(row)
        hx.log(f"{row['dtype']} N={n_keys}: gram {row['gram_cpu_s']:.3f} s cpu ({row['gram_wall_s']:.3f} wall), "
               f"tsqr {row['tsqr_cpu_s']:.3f} s cpu ({row['tsqr_wall_s']:.3f} wall) -> x{row['ratio_cpu']:.1f} cpu, "
               f"x{row['ratio_wall']:.1f} wall; load {os.getloadavg()[0]:.1f}")
    out["loadavg_at_end"] = list(os.getloadavg())
    hx.write_json(Path(__file__).resolve().parent / "results" / ("spectrum_quick.json" if args.quick else "spectrum.json"), out)


if __name__ == "__main__":
    main()
