"""Token merging against the mobility model: Experiments 1 and 3 of docs/merging.md.

Reproduces: the paper's Eq. 10 (tau' = M tau, M = 1/(1-m)) tested against real token merging in
the flow -- ToMe with and without proportional attention, FastVGGT merge-attend-unmerge -- and
Eq. 11 (attention cost ~ (1-m)^2) against the measured attention time on this CPU and the paper's
Table 2 (Li, Luo, Shi, Gu, arXiv:2512.21691).

Runtime: about 50 minutes on 2 shared CPU cores. The results JSON is saved after every run;
``--resume`` continues one (runs it holds are skipped), ``--plots-only`` prints the tables and draws
the figures from one. Writes merging_results.json (or ``--results PATH``),
merging_collapse_softmax.png, merging_collapse_linear.png and merging_cost.png, and prints the
tables of docs/merging.md.

Run:   python examples/merging.py --out docs/img --results examples/data/merging_results.json --overwrite
Plots: python examples/merging.py --plots-only --out docs/img --results examples/data/merging_results.json \\
           --overwrite
Smoke: python examples/merging.py --smoke --out /tmp/x   (N = 256, d = 4, dt = 1, one seed, m = 0.5; cost at N = 1024)
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np

import _common

FIGURES = ["merging_collapse_softmax.png", "merging_collapse_linear.png", "merging_cost.png"]
PARTS = ("exp1", "exp3")


def options(p):
    p.add_argument("--results", type=Path, default=None, metavar="PATH",
                   help="the results JSON (default: merging_results.json in --out)")
    p.add_argument("--resume", action="store_true",
                   help="continue the results JSON: keep its runs, add the missing ones")
    p.add_argument("--plots-only", action="store_true", help="tables and figures from the results JSON")
    p.add_argument("--skip", default="", help="comma-separated parts to skip: exp1, exp3")


def results_name(args):
    return args.results if args.results is not None else "merging_results.json"


def results_path(args):
    return args.results if args.results is not None else args.out / "merging_results.json"


def check(args):
    if set(filter(None, args.skip.split(","))) - set(PARTS):
        _common.error(f"--skip {args.skip}: expected a comma-separated list of {', '.join(PARTS)}")
    if args.plots_only and args.resume:
        _common.error("--plots-only and --resume exclude each other")
    if args.plots_only and not results_path(args).is_file():
        _common.error(f"results file {results_path(args)} not found (--plots-only reads it)")


args, out = _common.parse(__doc__, outputs=lambda a: FIGURES + ([] if a.plots_only else [results_name(a)]),
                          resume=lambda a: [results_name(a)] if a.resume else [], options=options, check=check)
SKIP = [part for part in args.skip.split(",") if part]
RESULTS = results_path(args)
if args.resume and not RESULTS.is_file():
    _common.progress(f"--resume: {RESULTS} does not exist yet; starting afresh")

import meanfield as mf  # noqa: E402
from meanfield.studies.merge_study import attention_seconds, collapse_times, merged_tokens  # noqa: E402
from meanfield.flow.merged import FastVGGT, ToMe  # noqa: E402
from meanfield.flow.distributions import as_key  # noqa: E402

# --- Parameters -------------------------------------------------------------------------------
RATIOS = (0.1, 0.3, 0.5, 0.7, 0.9)
SEEDS = (0, 1, 2)
DT = 0.5                     # time per layer; the Layer scheme's tau'/tau -> M only as dt -> 0
ALPHA = {"softmax": 1.0, "linear": 0.25}
KERNEL = {"softmax": mf.Softmax, "linear": mf.Linear}
CONFIGS = [("softmax", 4096, 4), ("linear", 4096, 4), ("linear", 4096, 64), ("linear", 16384, 4),
           ("softmax", 4096, 64), ("linear", 16384, 64)]  # in the order they run
RANK_DEFINITION = {"softmax": "ratio", "linear": "excess"}  # linear starts near rank 2: r0/e is below 1
PROTECTED_FRACTION = 0.05    # FastVGGT protects 10 %; 5 % leaves room for destinations at m = 0.9
VARIANTS = ("mobility", "tome-prop", "tome", "fastvggt")
COST_N, COST_D = 8192, 64
COST_RATIOS = (0.0, 0.1, 0.3, 0.5, 0.7, 0.9)
COST_REPEATS = 15
CLOCK = "cpu"                # CPU time of this process: the machine is shared, wall time depends on its load
if args.smoke:               # every step of the full run, on small problems: seconds instead of 50 minutes
    RATIOS, SEEDS, DT = (0.5,), (0,), 1.0
    CONFIGS = [("softmax", 256, 4), ("linear", 256, 4)]
    COST_N, COST_D, COST_RATIOS, COST_REPEATS = 1024, 16, (0.0, 0.3, 0.6, 0.9), 2


def strategy(variant, m):
    return {"tome-prop": lambda: ToMe(ratio=m), "tome": lambda: ToMe(ratio=m, proportional=False),
            "fastvggt": lambda: FastVGGT(ratio=m, protected_fraction=PROTECTED_FRACTION)}[variant]()


def _t1(t):
    return DT * max(8, math.ceil(t / DT))


# --- Setup / Solve ----------------------------------------------------------------------------
def run_one(kernel, N, d, seed, variant, m, t1):
    kw = dict(N=N, kernel=KERNEL[kernel](ALPHA[kernel]), dt=DT, t1=t1, key=seed, save=mf.SaveAt(every=2, n_query=256))
    if variant == "mobility":
        kw["merge"] = mf.Fusion(m)
    elif variant != "none":
        kw["merging"] = strategy(variant, m)
    t0 = time.perf_counter()
    sol = mf.solve_flow(mf.Uniform(d), **kw)
    return {**collapse_times(sol, rank=RANK_DEFINITION[kernel]), "t1": t1, "seconds": time.perf_counter() - t0}


def experiment1(configs, seeds, ratios, results):
    for kernel, N, d in configs:
        for seed in seeds:
            key = f"{kernel}/{N}/{d}/{seed}"
            _common.progress(f"experiment 1: {kernel}, N = {N}, d = {d}, seed {seed}")
            rec = results.setdefault(key, {})
            if "none" not in rec:
                rec["none"] = run_one(kernel, N, d, seed, "none", 0.0, 30.0)
            tau0 = rec["none"]["order"]
            for variant in VARIANTS:
                for m in ratios:
                    name = f"{variant}/{m}"
                    if name in rec:
                        continue
                    M = 1.0 / (1.0 - m)
                    t1 = _t1(1.3 * M * tau0 + 2) if variant == "mobility" else _t1(2.5 * tau0)
                    rec[name] = run_one(kernel, N, d, seed, variant, m, t1)
                    print(key, name, {k: round(v, 3) for k, v in rec[name].items()}, flush=True)
                    save(results)


def experiment3(results, ratios=COST_RATIOS):
    x = np.asarray(mf.Uniform(COST_D).sample(as_key(0), COST_N))
    out = results.setdefault("cost", {})
    for kname, kernel in (("softmax", mf.Softmax(1.0)), ("linear", mf.Linear(0.25))):
        for variant in ("tome-prop", "fastvggt"):  # ToMe without proportional attention: same tokens, same cost
            _common.progress(f"experiment 3: attention cost, {kname}, {variant}, N = {COST_N}, d = {COST_D}")
            for m in ratios:
                name = f"{kname}/{variant}/{m}"
                if name in out:
                    continue
                xm, w, match_s = merged_tokens(strategy(variant, m), x, clock=CLOCK)
                att = attention_seconds(kernel, xm, w, repeats=COST_REPEATS, clock=CLOCK)  # weighted path at every m
                out[name] = {"n_tokens": int(xm.shape[0]), "attention": att, "matching": match_s}
                print(name, out[name], flush=True)
                save(results)


def save(results):
    out.json(results_name(args), results, quiet=True, sort_keys=True)


# --- Analysis ---------------------------------------------------------------------------------
def ratios_table(results, kernel, N, d, measure):
    """``{variant: {m: (mean, std, n_reached, n, bound)}}`` of tau'(m)/tau(0) over the seeds;
    ``bound`` is the smallest t1/tau(0), the lower bound for a run that did not collapse by t1."""
    out = {}
    for variant in VARIANTS:
        out[variant] = {}
        for m in RATIOS:
            vals, bounds = [], []
            for seed in SEEDS:
                rec = results.get(f"{kernel}/{N}/{d}/{seed}", {})
                if f"{variant}/{m}" in rec and "none" in rec:
                    vals.append(rec[f"{variant}/{m}"][measure] / rec["none"][measure])
                    bounds.append(rec[f"{variant}/{m}"]["t1"] / rec["none"][measure])
            v = np.array(vals, float)
            ok = v[np.isfinite(v)]
            out[variant][m] = (ok.mean() if ok.size else np.nan, ok.std(ddof=1) if ok.size > 1 else np.nan,
                               ok.size, v.size, min(bounds) if bounds else np.nan)
    return out


def print_closing(results, measure="order"):
    """One table: tau'(m)/tau(0) (mean over seeds) per configuration and variant, beside 1/(1-m)."""
    print(f"\n{measure} collapse: tau'(m)/tau(0), mean over seeds")
    print(f"\n| kernel, N, d | variant | " + " | ".join(f"m = {m}" for m in RATIOS) + " |")
    print("|---|---|" + "---|" * len(RATIOS))
    print("| | 1/(1-m) (Eq. 10) | " + " | ".join(f"{1 / (1 - m):.2f}" for m in RATIOS) + " |")
    for kernel, N, d in CONFIGS:
        n_seeds = sum(f"{kernel}/{N}/{d}/{s}" in results for s in SEEDS)
        if n_seeds < len(SEEDS):
            continue
        tab = ratios_table(results, kernel, N, d, measure)
        for v in VARIANTS:
            print(f"| {kernel}, {N}, {d} | {v} | " + " | ".join(
                f"{tab[v][m][0]:.2f}" if tab[v][m][2] else "--" for m in RATIOS) + " |")


def print_tables(results):
    for kernel, N, d in CONFIGS:
        for measure in ("order", "rank"):
            tab = ratios_table(results, kernel, N, d, measure)
            taus = [results[k]["none"][measure] for k in results if k.startswith(f"{kernel}/{N}/{d}/")]
            if not taus:
                continue
            print(f"\n{kernel}, N = {N}, d = {d}, {measure} collapse, tau(0) = {np.mean(taus):.2f} "
                  f"± {np.std(taus, ddof=1) if len(taus) > 1 else 0:.2f} ({len(taus)} seeds)")
            print("| m | 1/(1-m) | " + " | ".join(VARIANTS) + " |")
            print("|---|---|" + "---|" * len(VARIANTS))
            for m in RATIOS:
                cells = []
                for v in VARIANTS:
                    mean, std, k, n, bound = tab[v][m]
                    cell = "--" if n == 0 else (f"> {bound:.1f} (not reached)" if k == 0 else f"{mean:.2f} ± {std:.2f}")
                    cells.append(cell + (f" ({n - k}/{n} not reached by {bound:.1f})" if 0 < k < n else ""))
                print(f"| {m} | {1 / (1 - m):.2f} | " + " | ".join(cells) + " |")
    cost = results.get("cost", {})
    for kname in ("softmax", "linear"):
        for variant in ("tome-prop", "fastvggt"):
            rows = [(m, cost.get(f"{kname}/{variant}/{m}")) for m in COST_RATIOS]
            if any(r is None for _, r in rows):
                continue
            base = rows[0][1]["attention"]
            m = np.array([r[0] for r in rows])
            rel = np.array([r[1]["attention"] / base for r in rows])
            tot = np.array([(r[1]["attention"] + (r[1]["matching"] if r[0] > 0 else 0)) / base for r in rows])
            print(f"\ncost {kname} {variant}: m, N', attention/att(0), (attention+matching)/att(0), (1-m)^2")
            for i, (mm, r) in enumerate(rows):
                print(f"  {mm:.1f} {r['n_tokens']:6d} {rel[i]:.3f} {tot[i]:.3f} {(1 - mm) ** 2:.3f}")
            fit = mf.fit.fit_cost_curve(m, rel)
            print(fit.comparison)


# --- Plot -------------------------------------------------------------------------------------
def plot(results):
    import matplotlib.pyplot as plt

    colors = {"mobility": "k", "tome-prop": "C0", "tome": "C1", "fastvggt": "C3"}
    mm = np.linspace(0, 0.9, 50)
    for kernel in ("softmax", "linear"):
        cfgs = [c for c in CONFIGS if c[0] == kernel]
        fig, axes = plt.subplots(2, len(cfgs), figsize=(3.3 * len(cfgs), 6.2), squeeze=False, sharey="row")
        for j, (_, N, d) in enumerate(cfgs):
            for i, measure in enumerate(("order", "rank")):
                ax = axes[i, j]
                tab = ratios_table(results, kernel, N, d, measure)
                ax.plot(mm, 1 / (1 - mm), ":", color="0.5", label="1/(1-m) (Eq. 10)")
                for v in VARIANTS:
                    ms = [m for m in RATIOS if tab[v][m][2] > 0]
                    ax.errorbar([0] + ms, [1] + [tab[v][m][0] for m in ms],
                                yerr=[0] + [np.nan_to_num(tab[v][m][1]) for m in ms], marker="o", ms=3,
                                capsize=2, color=colors[v], label=v)
                ax.set_yscale("log")
                rank = "rank / e" if RANK_DEFINITION[kernel] == "ratio" else "rank excess / e"
                ax.set_title(f"N={N}, d={d}: {'|m| ≥ 0.99' if measure == 'order' else rank}", fontsize=9)
                ax.set_xlabel("merge ratio m")
                if j == 0:
                    ax.set_ylabel("τ'(m) / τ(0)")
        axes[0, 0].legend(fontsize=7)
        fig.suptitle(f"{kernel} kernel: collapse time with merging (mean ± sd over {len(SEEDS)} seeds)", fontsize=10)
        fig.tight_layout()
        out.figure(f"merging_collapse_{kernel}.png", fig, dpi=110)

    cost = results.get("cost", {})
    if not cost:
        return
    fig, ax = plt.subplots(figsize=(8, 4.2))
    t2 = mf.paper_table(2)
    ax.plot(mm, (1 - mm) ** 2, ":", color="0.5", label="(1-m)² (Eq. 11)")
    ax.plot(t2["m"], t2["relative_runtime"], "ks", label="paper Table 2 (FastVGGT, A100)")
    for kname, ls in (("softmax", "-"), ("linear", "--")):
        for variant in ("tome-prop", "fastvggt"):
            rows = [cost.get(f"{kname}/{variant}/{m}") for m in COST_RATIOS]
            if any(r is None for r in rows):
                continue
            base = rows[0]["attention"]
            ax.plot(COST_RATIOS, [r["attention"] / base for r in rows], ls, marker="o", ms=3,
                    color=colors[variant], label=f"{kname}, {variant}: attention")
            ax.plot(COST_RATIOS, [(r["attention"] + (r["matching"] if m else 0)) / base
                                  for m, r in zip(COST_RATIOS, rows)], ls, marker="x", ms=4, alpha=0.5,
                    color=colors[variant], label=f"{kname}, {variant}: + matching")
    ax.set_yscale("log")
    ax.set_xlabel("merge ratio m")
    ax.set_ylabel(f"{CLOCK} time / attention time at m = 0")
    ax.set_title(f"attention cost on this CPU, N = {COST_N}, d = {COST_D}", fontsize=10)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.tight_layout()
    out.figure("merging_cost.png", fig, dpi=110)


if __name__ == "__main__":
    results = json.loads(RESULTS.read_text()) if (args.plots_only or args.resume) and RESULTS.is_file() else {}
    if not args.plots_only:
        if "exp3" not in SKIP:
            experiment3(results, COST_RATIOS)
        if "exp1" not in SKIP:
            experiment1(CONFIGS, SEEDS, RATIOS, results)
        save(results)
        print(f"wrote {RESULTS}")
    print_tables(results)
    print_closing(results, "order")
    print_closing(results, "rank")
    _common.progress("plotting")
    plot(results)
