"""``python -m meanfield.simulate``: run the token flow, print a per-layer table, save HDF5 + PNG.

Defaults (N = 10 000 tokens on S^3, linear kernel of Eq. 3 with alpha = 0.25, uniform start,
24 literal transformer layers of step 1) are chosen so the default run shows the whole collapse:
a uniform start has |m| ~ N^{-1/2} = 0.01, the mean direction is linearly unstable and grows by a
factor ~(2 - 1/d) per layer (the alpha -> 0 value; 1.71 measured at alpha = 0.25, d = 4), so |m| passes 0.5 near layer 9 and is within 1e-3 of 1 by layer ~16;
24 layers is also the depth of VGGT's global-attention stack. alpha = 0.25 keeps every weight of
Eq. 3 positive (A_ij >= (1 - 2 alpha)/N), so the row entropies are defined, and stays in the
small-alpha regime in which Eq. 3 linearises softmax attention.
"""

from __future__ import annotations

import sys
from pathlib import Path

from ._cli import ArgumentParser, output_path, run_cli

PROG = "meanfield-simulate"  # the console script; python -m meanfield.simulate is the same (meanfield._cli)
TABLE_COLUMNS = (
    ("layer", "layer", "{:>5d}"),
    ("t", "t", "{:>9.4g}"),
    ("order_parameter", "|m|", "{:>9.5f}"),
    ("effective_rank", "eff.rank", "{:>9.4f}"),
    ("normalized_entropy", "H_norm", "{:>9.5f}"),
    ("entropy", "H", "{:>10.4f}"),
    ("entropy_rate", "dH/dt", "{:>10.4g}"),
    ("n_tokens", "tokens", "{:>7.0f}"),
)


def build_parser() -> ArgumentParser:
    p = ArgumentParser(
        prog=PROG,
        description="Simulate N attention tokens on the unit sphere S^(d-1) layer by layer "
        "(mean-field token flow of attention collapse) and report collapse diagnostics.",
        epilog="Defaults show the whole collapse: |m| grows from ~N^(-1/2) = 0.01 to ~1 within the 24 "
        "layers of VGGT's global-attention depth; alpha = 0.25 keeps all Eq. 3 weights positive. "
        "Writes OUT (HDF5, docs/formats.md) and OUT with .png unless --no-plot.",
    )
    a = p.add_argument
    a("--N", type=int, default=10_000, help="number of tokens (particles) (default: %(default)s)")
    a("--d", type=int, default=4, help="ambient dimension: tokens live on S^(d-1) in R^d; NOT the paper's "
      "merge factor d, which is --merge here (default: %(default)s)")
    from meanfield.flow.driver import KERNELS, methods

    a("--kernel", default="linear", help=f"attention kernel: {', '.join(KERNELS)}; linear is Eq. 3 "
      "(default: %(default)s)")
    a("--alpha", type=float, default=0.25, help="inverse temperature alpha >= 0 (default: %(default)s)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--merge", type=float, default=None, help="merge (mobility) factor M >= 1: velocity x 1/M (default: 1)")
    g.add_argument("--fusion", type=float, default=None, help="the paper's fusion strength m in [0, 1), M = 1/(1-m) "
                   "(default: none)")
    a("--merging", default=None, help="real token merging instead of the mobility model: tome, tome-prop "
      "(ToMe with proportional attention), fastvggt (merge-attend-unmerge); see docs/merging.md (default: none)")
    a("--merge-ratio", type=float, default=None, help="fraction m in [0, 1) of the tokens merged, with --merging "
      "(default: none)")
    a("--protected-fraction", type=float, default=0.0, help="fastvggt: fraction of tokens never merged "
      "(default: %(default)s)")
    a("--init", default="uniform", help="initial distribution: uniform, vmf (default: %(default)s)")
    a("--kappa", type=float, default=1.0, help="vMF concentration kappa >= 0 for --init vmf (default: %(default)s)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--layers", type=int, default=None, help="number of layers (steps) (default: 24)")
    g.add_argument("--t1", type=float, default=None, help="final time, a whole number of steps (default: none)")
    a("--dt", type=float, default=None, help="time per layer h (default: 1.0)")
    a("--time-map", default="unit", help="unit: one layer = dt; paper: dt = 1/N, the paper's t = l/N "
      "(default: %(default)s)")
    a("--method", default="layer", help=f"{', '.join(methods())}: particle schemes (layer: x <- normalize(x + h A x)) "
      "and density solvers (characteristics: any d; zonal: d >= 3, axisymmetric init; circle: d = 2); "
      "see docs/python.md (default: %(default)s)")
    a("--weights-kq", default=None, help="a weight ensemble of Geshkovski et al.: draw the query-key matrix B "
      "from identity, gaussian, wigner or goe (docs/theory.md \"Weight ensembles\"), redrawn every --tau; "
      "runs the bilinear kernel at --alpha (default: none, B = alpha I)")
    a("--weights-v", default="identity", help="with --weights-kq: the value matrix, identity, gaussian, +kq or -kq "
      "(write --weights-v=-kq) "
      "(default: %(default)s)")
    a("--tau", type=float, default=1.0, help="with --weights-kq: time between redraws, a whole number of steps "
      "(default: %(default)s)")
    a("--causal", action="store_true", help="causal mask: token i attends to tokens j <= i (softmax-type "
      "attention, the bilinear kernel with B = V = I)")
    a("--sigma", type=float, default=None, help="noise strength sigma >= 0: Brownian motion on the sphere, "
      "dx = v dt + sigma P_x o dW, solved by the sde scheme (particles; implies --method sde), or the "
      "diffusion (sigma^2/2) Laplacian in --method circle/zonal (default: no noise)")
    a("--cells", type=int, default=512, help="grid cells of the zonal/circle density solvers; --N is then only "
      "the token count of --time-map paper (default: %(default)s)")
    a("--seed", type=int, default=0, help="random seed for samples and the query subset (default: %(default)s)")
    a("--precision", default="float32", help="float32 or float64 (default: %(default)s)")
    a("--matmul-precision", default="highest", help="precision of the attention products: highest (float32 "
      "means float32, also on GPUs whose default is TF32), or the opt-in fast modes tf32 and bf16 (rounded "
      "inputs, float32 accumulation; errors in docs/precision.md) (default: %(default)s)")
    a("--n-query", type=int, default=512, help="query tokens for the attention spectrum (default: %(default)s)")
    a("--diagnostics", default="sampled", help="sampled: when N > --key-sample, attention statistics from the "
      "query rows over a seeded key subsample and the softmax/usa entropy rate over the query tokens (a save "
      "then costs at most about a step); exact: rows over all N keys (default: %(default)s)")
    a("--key-sample", type=int, default=4096, help="keys in the subsample of --diagnostics sampled "
      "(default: %(default)s)")
    a("--save-every", type=int, default=None, help="layers between saved rows (default: every layer up to 100)")
    a("--save-tokens", action="store_true", help="store the tokens at every save in the HDF5 file")
    a("--out", default=None, help="results file, .h5 or .hdf5 (a name without a suffix gets .h5); the plot is OUT "
      "with .png, a checkpoint OUT with .ckpt.h5 (default: meanfield_results.h5 in the current directory)")
    a("--overwrite", action="store_true", help="replace existing output files (default: refuse to)")
    a("--checkpoint-every", type=int, default=None, metavar="K", help="write a checkpoint after every K-th saved "
      "row, atomically (default: no checkpoints)")
    a("--checkpoint", default=None, metavar="FILE", help="checkpoint file (default: OUT with .ckpt.h5)")
    a("--resume", default=None, metavar="FILE", help="continue the run from this checkpoint (same options as the "
      "checkpointed run); the result equals an uninterrupted run's bit for bit (default: a fresh run)")
    a("--no-memory-check", action="store_true", help="run even when the estimated peak memory exceeds the "
      "available memory (default: refuse)")
    a("--table", default=None, metavar="FILE", help="also write the per-layer table, every saved row and scalar "
      "diagnostic, as FILE.csv (with columns N and merge, so meanfield-fit FILE.csv needs no --N) or FILE.json "
      "(default: none)")
    a("--no-plot", action="store_true", help="do not write the PNG plot")
    a("--no-progress", action="store_true", help="no progress bar")
    return p


def format_table(sol, max_rows: int = 30) -> str:
    """Per-layer summary table (every saved row, or an even subset of ``max_rows`` rows).

    Columns are those of :data:`TABLE_COLUMNS` that the method reports (grid solvers have no
    attention spectrum; density solvers add the differential entropy ``H``).
    """
    import numpy as np

    cols = [c for c in TABLE_COLUMNS if c[0] in ("layer", "t") or c[0] in sol.diagnostics]
    n = len(sol.t)
    rows = np.unique(np.linspace(0, n - 1, min(n, max_rows)).round().astype(int))
    widths = [len(fmt.format(0) if "d}" in fmt else fmt.format(0.0)) for _, _, fmt in cols]
    lines = [" ".join(f"{label:>{w}}" for (_, label, _), w in zip(cols, widths))]
    for i in rows:
        vals = []
        for key, _, fmt in cols:
            if key == "layer":
                vals.append(fmt.format(int(sol.layers[i])))
            elif key == "t":
                vals.append(fmt.format(float(sol.t[i])))
            else:
                vals.append(fmt.format(float(sol.diagnostics[key][i]) + 0.0))  # + 0.0: no "-0.00000"
        lines.append(" ".join(vals))
    return "\n".join(lines)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.no_plot:
        return _main(args, None)
    from meanfield.plots._worker import PlotWorker

    with PlotWorker() as worker:  # imports matplotlib on the other core while this process runs
        return _main(args, worker)


def _main(args, worker) -> int:
    import jax

    if args.precision == "float64":
        jax.config.update("jax_enable_x64", True)  # entry point, not library import
    from meanfield.flow import distributions
    from meanfield.io.atomic import check_writable
    from meanfield.flow.driver import make_spec, method_table, resolve_kernel, run
    from meanfield.flow.options import Fusion, SaveAt
    from meanfield.flow.progress import Progress
    from meanfield.io.results import save_results
    from meanfield.flow import resources as _resources

    from ._validate import choice, integer, real

    integer("N", args.N, 1)
    integer("d", args.d, 2)
    real("kappa", args.kappa, minimum=0.0)
    from solvers.precision import check_matmul_precision

    check_matmul_precision(args.matmul_precision)
    if args.matmul_precision != "highest" and (args.causal or args.weights_kq is not None):
        raise ValueError("--matmul-precision tf32/bf16 needs --kernel linear, softmax or usa "
                         "(the bilinear kernel of --causal and --weights-kq has no such option)")
    table = method_table()
    choice("method", args.method, tuple(table))
    cls = table[args.method]
    options = getattr(cls, "cli_options", ())  # what the method takes of --cells/--sigma (meanfield.flow.density)
    if args.sigma is not None and "sigma" in options:
        method = cls(cells=integer("cells", args.cells, 4), sigma=real("sigma", args.sigma, minimum=0.0))
    elif args.sigma is not None:
        if args.method not in ("layer", "sde"):
            raise ValueError(f"--sigma runs the sde scheme (particles) or a grid solver's diffusion; "
                             f"it cannot be combined with --method {args.method}")
        method = table["sde"](sigma=real("sigma", args.sigma, minimum=0.0))
    else:
        method = cls(cells=integer("cells", args.cells, 4)) if "cells" in options else cls()
    if getattr(cls, "uniform_is_steady", False) and args.init == "uniform":
        raise ValueError(f"--method {args.method} with --init uniform shows nothing: the uniform density is a steady "
                         "state of the density equation (docs/theory.md); start from --init vmf --kappa K")
    init = distributions.make_distribution(args.init, args.d, args.kappa)
    kernel, alpha = args.kernel, args.alpha
    if args.causal:
        if kernel not in ("softmax", "bilinear"):
            raise ValueError(f"--causal needs --kernel softmax or bilinear, got {kernel}")
        from solvers import Bilinear

        kernel, alpha = Bilinear(real("alpha", alpha, minimum=0.0), causal=True), None

    from meanfield.flow.merged import cli_strategy

    merging = cli_strategy(args.merging, args.merge_ratio, args.protected_fraction)
    if args.merge is not None and args.fusion is not None:
        raise ValueError("give --merge or --fusion, not both (M = 1/(1 - fusion))")
    choice("time_map", args.time_map, ("unit", "paper"))
    if args.time_map == "paper" and args.dt is not None:
        raise ValueError("give dt or time_map='paper' (which sets dt = 1/N), not both")
    kernel = resolve_kernel(kernel, alpha, None if args.matmul_precision == "highest" else args.matmul_precision)
    save = SaveAt(every=args.save_every, tokens=args.save_tokens, n_query=args.n_query,
                  diagnostics=args.diagnostics, key_sample=args.key_sample)
    spec = make_spec(
        init, N=args.N, kernel=kernel, merge=args.merge if args.fusion is None else Fusion(args.fusion),
        t1=args.t1, layers=args.layers, dt="paper" if args.time_map == "paper" else args.dt, method=method,
        save=save, key=args.seed, dtype=args.precision, merging=merging,
        progress=Progress(bar=not args.no_progress, estimate=True),
    )
    out = check_writable(output_path(args.out, "meanfield_results.h5", ".h5"), args.overwrite,
                         nbytes=_resources.results_size(spec), suffixes=(".h5", ".hdf5"))
    png = out.with_suffix(".png")
    if not args.no_plot:
        check_writable(png, args.overwrite)
    if args.table is not None:
        check_writable(args.table, args.overwrite, suffixes=(".csv", ".json"))
    ckpt = _checkpoint_option(args, out, spec)
    need = _resources.estimate_memory(spec) if args.no_memory_check else \
        _resources.check_memory(spec, flag="--no-memory-check")
    print(f"{PROG}: {run_label(spec)}, N={spec.N}, d={spec.d}, {spec.n_steps} step{'s' if spec.n_steps != 1 else ''}, "
          f"{jax.numpy.dtype(spec.dtype).name}; estimated peak memory {_resources.format_bytes(need)}", file=sys.stderr)
    from meanfield.flow.particles import native_fallback

    reason = None if args.weights_kq is not None else native_fallback(spec)
    if reason is not None:
        print(f"{PROG}: the native CPU kernels are not available ({reason}); running the pure-JAX path",
              file=sys.stderr)

    if args.weights_kq is not None:
        sol = _ensemble_run(args, spec, ckpt)
    else:
        sol = run(spec, checkpoint=ckpt, check_memory=False)
    print(format_table(sol))
    save_results(out, sol, overwrite=args.overwrite)
    written = [str(out)]
    if args.table is not None:
        write_table(args.table, sol, overwrite=args.overwrite)
        written.append(str(args.table))
    if not args.no_plot:
        worker.plot(sol, out, png, args.overwrite)
        written.append(str(png))
    print(f"wrote {', '.join(written)}  ({sol.stats.get('wall_time', 0):.1f} s)")
    for w in sol.warnings:
        print(f"warning: {w}", file=sys.stderr)
    return 0


def run_label(spec) -> str:
    """``kernel/method`` of the header line, with the token merging if any (``softmax/layer with
    tome-prop merging (m = 0.5)``)."""
    from meanfield.plots.figures import merging_label

    return f"{spec.kernel.name}/{spec.method.name}" + merging_label(spec.merging and spec.merging.describe())


def write_table(path, sol, *, overwrite: bool = False) -> None:
    """Every saved row with its scalar diagnostics, as CSV or JSON (by extension), atomically.

    Columns ``layer``, ``t``, ``N`` and ``merge`` (the run's token count and merge factor, the same
    in every row, which :mod:`meanfield.fit.cli` reads, so ``meanfield-fit FILE.csv`` needs no
    ``--N``), then every scalar diagnostic; the JSON has N and merge in ``params``."""
    import csv
    import json

    import numpy as np

    from meanfield.io.atomic import atomic_path

    names = [k for k, v in sol.diagnostics.items() if np.ndim(v) == 1]
    n = len(sol.layers)
    cols = {"layer": np.asarray(sol.layers).tolist(), "t": np.asarray(sol.t, float).tolist(),
            "N": [int(sol.params["N"])] * n, "merge": [float(sol.params["merge"])] * n,
            **{k: np.asarray(sol.diagnostics[k], float).tolist() for k in names}}
    with atomic_path(path, overwrite) as tmp, open(tmp, "w", newline="") as fh:
        if str(path).lower().endswith(".json"):  # NaN (undefined diagnostics) as null, valid JSON
            rows = [{k: (None if isinstance(v[i], float) and v[i] != v[i] else v[i]) for k, v in cols.items()}
                    for i in range(len(cols["layer"]))]
            json.dump({"params": sol.params, "rows": rows}, fh, indent=1, default=str)
        else:
            w = csv.writer(fh)
            w.writerow(cols)
            w.writerows(zip(*cols.values()))


def _checkpoint_option(args, out, spec):
    """The ``Checkpoint`` of ``--checkpoint-every``/``--checkpoint``, checked before the run (or None)."""
    from meanfield.io.atomic import check_writable
    from meanfield.flow.checkpoint import Checkpoint

    if args.checkpoint_every is None:
        if args.checkpoint is not None:
            raise ValueError("--checkpoint needs --checkpoint-every K")
        return None if args.resume is None else Checkpoint(resume=args.resume)
    path = args.checkpoint or str(out.with_suffix(".ckpt.h5"))
    if args.resume is None or Path(path).resolve() != Path(args.resume).resolve():
        check_writable(path, overwrite=True, suffixes=(".h5", ".hdf5"))
    return Checkpoint(path, every=args.checkpoint_every, resume=args.resume)


def _ensemble_run(args, spec, ckpt):
    """``--weights-kq``: the flow with random weights redrawn every ``--tau`` (meanfield.studies.ensembles)."""
    from solvers.ensembles import KQ_OPTIONS, V_OPTIONS

    from ._validate import choice
    from meanfield.studies.ensembles import redrawn_flow
    from meanfield.flow.particles import initial_tokens

    choice("weights_kq", args.weights_kq, KQ_OPTIONS)
    choice("weights_v", args.weights_v, V_OPTIONS)
    if args.kernel != "linear" or args.merging is not None:
        raise ValueError("--weights-kq runs its own bilinear kernel without --kernel or --merging")
    x0 = initial_tokens(spec)
    return redrawn_flow(x0, alpha=float(spec.kernel.alpha), kq=args.weights_kq, v=args.weights_v, tau=args.tau,
                        t1=spec.n_steps * spec.dt, dt=spec.dt, method=spec.method, key=spec.seed,
                        dtype=spec.dtype, causal=args.causal, save_every=args.save_every, checkpoint=ckpt)


def cli(argv=None) -> int:
    return run_cli(main, PROG, argv)


if __name__ == "__main__":
    sys.exit(cli())
