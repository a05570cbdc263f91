"""What saving diagnostics costs a default run: ``solve_flow`` saving every layer against the same run
saving only at the start and the end (issue "Fast where it runs", target 1: at most 1.3x).

Cases (float32, this machine's CPU): linear N = 10^6, d = 4; softmax N = 16 384, d = 64. For each,
three runs of ``layers`` layers: the default (``diagnostics="sampled"``, a save every layer), the
same with ``diagnostics="exact"`` (the statistics over all N keys), and saving only at the end
(``save_every=layers``). Each is run once to compile (the same shapes), then the three are timed
round-robin (``--rounds`` rounds, alternating order, so load from other jobs on this shared
machine hits all alike): wall time (``stats["wall_time"]``, which includes sampling the start and
every diagnostic) and the process's CPU time (``time.process_time``) around each call; ratios are
of the medians. The load average is recorded at the start and the end. Writes
``benchmarks/results/diagnostics.json``.

    python benchmarks/diagnostics.py            # about 3 minutes on 2 cores
    python benchmarks/diagnostics.py --quick    # smaller sizes, for a smoke test
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _harness as hx  # noqa: E402

import meanfield as mf  # noqa: E402

CASES = {
    "linear": dict(N=1_000_000, d=4, kernel=mf.Linear(0.25), layers=12),
    "softmax": dict(N=16_384, d=64, kernel=mf.Softmax(1.0), layers=4),
}
QUICK = {"linear": dict(N=100_000, layers=6), "softmax": dict(N=4096, d=16, layers=3)}


CONFIGS = {"default": {}, "exact": {"diagnostics": "exact"}, "end_only": "end"}  # SaveAt options


def prepare(case, over):
    kw = dict(case)
    N, d, layers = kw.pop("N"), kw.pop("d"), kw.pop("layers")
    kw["save"] = mf.SaveAt(every=layers) if over == "end" else mf.SaveAt(**over)
    init = mf.Uniform(d)
    mf.solve_flow(init, N=N, layers=layers, key=1, **kw)  # compile every shape of this configuration

    def timed():
        c0 = time.process_time()
        sol = mf.solve_flow(init, N=N, layers=layers, key=0, **kw)
        return sol.stats["wall_time"], time.process_time() - c0, sol.params["diagnostics"], len(sol.t)
    return timed


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES),
                    help="cases to run (others keep their entry in an existing results file)")
    args = ap.parse_args(argv)
    path = Path(__file__).resolve().parent / "results" / ("diagnostics_quick.json" if args.quick else "diagnostics.json")
    old = hx_load(path) if set(args.cases) != set(CASES) else {}
    out = {"machine": hx.machine(), "rounds": args.rounds, "cases": dict(old.get("cases", {}))}
    for name, case in ((n, CASES[n]) for n in args.cases):
        case = {**case, **(QUICK[name] if args.quick else {})}
        fns = {c: prepare(case, over) for c, over in CONFIGS.items()}
        res = {c: [] for c in CONFIGS}
        order = list(CONFIGS)
        for r in range(args.rounds):
            for c in order if r % 2 == 0 else order[::-1]:
                res[c].append(fns[c]())
        med = {c: (statistics.median(t[0] for t in v), statistics.median(t[1] for t in v)) for c, v in res.items()}
        mode, saves = res["default"][0][2], res["default"][0][3]
        row = {"case": case, "default_s": med["default"][0], "default_cpu_s": med["default"][1],
               "default_mode": mode, "default_saves": saves,
               "exact_every_layer_s": med["exact"][0], "exact_every_layer_cpu_s": med["exact"][1],
               "end_only_s": med["end_only"][0], "end_only_cpu_s": med["end_only"][1],
               "ratio_default": med["default"][0] / med["end_only"][0],
               "ratio_default_cpu": med["default"][1] / med["end_only"][1],
               "ratio_exact": med["exact"][0] / med["end_only"][0],
               "ratio_exact_cpu": med["exact"][1] / med["end_only"][1],
               "runs": {c: [list(t[:2]) for t in v] for c, v in res.items()}, "loadavg": list(os.getloadavg())}
        out["cases"][name] = row
        hx.log(f"{name:8s} N={case['N']} d={case['d']} layers={case['layers']}: every layer ({mode}) "
               f"{row['default_s']:.2f} s (cpu {row['default_cpu_s']:.2f}), exact {row['exact_every_layer_s']:.2f} s, "
               f"end only {row['end_only_s']:.2f} s (cpu {row['end_only_cpu_s']:.2f}) -> ratio {row['ratio_default']:.2f} "
               f"wall, {row['ratio_default_cpu']:.2f} cpu (exact {row['ratio_exact']:.2f}; target <= 1.3); "
               f"load {row['loadavg'][0]:.1f}")
        row["machine_loadavg_at_start"] = out["machine"]["loadavg_at_start"]
    out["loadavg_at_end"] = list(os.getloadavg())
    hx.write_json(path, out)


def hx_load(path):
    import json
    return json.loads(path.read_text()) if path.exists() else {}


if __name__ == "__main__":
    main()
