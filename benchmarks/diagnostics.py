"""What saving diagnostics costs a default run: ``solve_flow`` saving every layer against the same run
saving only at the start and the end (issue "Fast where it runs", target 1: at most 1.3x).

Cases (float32, this machine's CPU): linear N = 10^6, d = 4; softmax N = 16 384, d = 64. For each,
three runs of ``layers`` layers: the default (``diagnostics="sampled"``, a save every layer), the
same with ``diagnostics="exact"`` (the statistics over all N keys), and saving only at the end
(``save_every=layers``). Each is run once to compile (the same shapes), then timed
(``stats["wall_time"]``, which includes sampling the start and every diagnostic). Writes
``benchmarks/results/diagnostics.json``.

    python benchmarks/diagnostics.py            # about 3 minutes on 2 cores
    python benchmarks/diagnostics.py --quick    # smaller sizes, for a smoke test
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _harness as hx  # noqa: E402

import meanfield as mf  # noqa: E402

CASES = {
    "linear": dict(N=1_000_000, d=4, kernel="linear", alpha=0.25, layers=12),
    "softmax": dict(N=16_384, d=64, kernel="softmax", alpha=1.0, layers=4),
}
QUICK = {"linear": dict(N=100_000, layers=6), "softmax": dict(N=4096, d=16, layers=3)}


def run(case, **over):
    kw = dict(case)
    N, d, layers = kw.pop("N"), kw.pop("d"), kw.pop("layers")
    kw.update(over)
    init = mf.Uniform(d)
    mf.solve_flow(init, N=N, layers=layers, key=1, **kw)  # compile every shape of this configuration
    sol = mf.solve_flow(init, N=N, layers=layers, key=0, **kw)
    return sol.stats["wall_time"], sol.params["diagnostics"], len(sol.t)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    out = {"machine": hx.machine(), "cases": {}}
    for name, case in CASES.items():
        case = {**case, **(QUICK[name] if args.quick else {})}
        layers = case["layers"]
        t_default, mode, saves = run(case)
        t_exact, _, _ = run(case, diagnostics="exact")
        t_end, _, _ = run(case, save_every=layers)
        row = {"case": case, "default_s": t_default, "default_mode": mode, "default_saves": saves,
               "exact_every_layer_s": t_exact, "end_only_s": t_end,
               "ratio_default": t_default / t_end, "ratio_exact": t_exact / t_end}
        out["cases"][name] = row
        hx.log(f"{name:8s} N={case['N']} d={case['d']} layers={layers}: every layer ({mode}) {t_default:.2f} s, "
               f"exact {t_exact:.2f} s, end only {t_end:.2f} s -> ratio {row['ratio_default']:.2f} "
               f"(exact {row['ratio_exact']:.2f}; target <= 1.3)")
    out["loadavg_at_end"] = list(__import__("os").getloadavg())
    name = "diagnostics_quick.json" if args.quick else "diagnostics.json"
    hx.write_json(Path(__file__).resolve().parent / "results" / name, out)


if __name__ == "__main__":
    main()
