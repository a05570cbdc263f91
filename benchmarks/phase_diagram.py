"""Phase-diagram benchmark (issue 11): ``meanfield.studies.phase`` against the PyTorch loop over beta.

The workload is the experiment of Geshkovski et al. (2023), reference code ``phase-diagrams.py``:
``len(betas)`` inverse temperatures x ``B`` systems of ``n`` tokens in ``R^d``, ``steps`` transformer
layers ``Z <- normalize(Z + dt softmax(beta Z Z^T) Z)`` of ``dt = 0.1``, float64. In one process:

1. ``torch_m``: the PyTorch loop over beta as measured in the issue -- batched ``bmm`` +
   ``softmax`` + ``normalize`` per step, ``|m|`` recorded after every step;
2. ``torch_stats``: the same loop recording the reference's statistics at the save steps only:
   pairs with ``<x_i, x_j> > 0.999``, number of clusters (the reference's rank of the 0/1 matrix
   ``<x_i, x_j> > 0.9999``, batched over systems instead of its Python loop) and ``|m|``;
3. ``jax_dense``: :func:`meanfield.studies.phase.phase_rollout` (dense path, the same statistics at the
   same save steps, clusters as connected components), float64 and float32, AOT compiled;
4. ``simulate_batch``: what a meanfield user ran before (the vmapped streaming rollout, ``|m|``
   after every layer), float64.

PyTorch is timed with its default thread count and with one thread; the faster is the reference
(on a shared 2-core machine oversubscription can make the default much slower). Compile time is
recorded apart from run time; JAX runs are warmed up and end in ``block_until_ready``. The float64
JAX statistics are checked against the PyTorch ones (``|m|`` to round-off; pair counts; clusters).
Results go to ``benchmarks/results/phase_diagram.json`` with the machine description.

``--drivers`` (issue 19, point 5) runs instead the public entry points on the same workload, side
by side in rounds (the PyTorch |m| loop at each thread count, then ``simulate_batch(...)`` -- auto,
the native kernel, final tokens included --, ``simulate_batch(..., engine="jax")`` and
``phase_diagram``), with per-round ratios to the faster PyTorch run, into
``benchmarks/results/phase_diagram-drivers.json``; ``--table FILE`` prints the README table of
such a JSON.

Run (about 3-5 minutes on 2 cores):  ``python benchmarks/phase_diagram.py``
The issue's GPU workload (90 betas x 2048 x n = 32 x d = 128 x 300 steps, 200 saves):
``python benchmarks/phase_diagram.py --full`` (PyTorch on CUDA when available).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT))

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)  # the benchmark's float64 reference; the library never does this

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from meanfield.studies.phase import phase_rollout, save_steps  # noqa: E402
from solvers import native  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import compile_jitted, log, machine, write_json  # noqa: E402

PAIR_T, CLUSTER_T, H = 0.999, 0.9999, 0.1
TARGET = 10.0


# ---------------------------------------------------------------- the PyTorch loop over beta
def torch_loop(torch, x0, betas, steps, save_at=None, record_m_every_step=True):
    """The authors' scheme, batched over systems, one beta at a time (float64).

    With ``save_at`` (sorted step indices) it records per-system ``(pairs, clusters, |m|)`` at those
    steps (clusters = rank of the thresholded Gram matrix, as in the reference); otherwise ``|m|``
    after every step. Returns NumPy arrays.
    """
    dev = x0.device
    n = x0.shape[1]
    off = ~torch.eye(n, dtype=torch.bool, device=dev)
    out = []
    for beta in betas:
        z = x0.clone()
        rec = []

        def stats(z):
            g = torch.bmm(z, z.transpose(1, 2))
            pairs = ((g > PAIR_T) & off).sum(dim=(1, 2))
            clusters = torch.linalg.matrix_rank((g > CLUSTER_T).to(z.dtype))
            return torch.stack([pairs.to(z.dtype), clusters.to(z.dtype), z.mean(1).norm(dim=-1)])

        if save_at is not None and save_at[0] == 0:
            rec.append(stats(z))
        k = 1 if save_at is not None and save_at[0] == 0 else 0
        for s in range(1, steps + 1):
            sm = torch.softmax(float(beta) * torch.bmm(z, z.transpose(1, 2)), dim=2)
            z = torch.nn.functional.normalize(z + H * torch.bmm(sm, z), dim=2)
            if save_at is None:
                if record_m_every_step:
                    rec.append(z.mean(1).norm(dim=-1))
            elif k < len(save_at) and s == save_at[k]:
                rec.append(stats(z))
                k += 1
        out.append(torch.stack(rec).cpu().numpy())
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return np.stack(out)


def timed(fn, repeats, warmup=0):
    """Wall AND process CPU time of ``fn()`` (medians). On a shared machine the wall time depends on
    the other jobs; the CPU time of this process much less (one thread here = one core's work)."""
    for _ in range(warmup):
        fn()
    ws, cs = [], []
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        fn()
        ws.append(time.perf_counter() - w0)
        cs.append(time.process_time() - c0)
    return {"median_s": float(np.median(ws)), "min_s": float(min(ws)), "all_s": ws, "repeats": repeats,
            "cpu_median_s": float(np.median(cs)), "all_cpu_s": cs}


def time_jax(compiled, args, repeats):
    return timed(lambda: jax.block_until_ready(compiled(*args)), repeats, warmup=1)


def time_torch(torch, fn, repeats, threads=None):
    """Median wall time with torch's default thread count and with one thread (CPU), or with the
    given thread counts; the fastest is the reference."""
    runs = {}
    default = torch.get_num_threads()
    settings = threads or [default] + ([1] if default != 1 else [])
    for th in settings:
        torch.set_num_threads(th)
        runs[str(th)] = timed(fn, repeats)
    torch.set_num_threads(default)
    best = min(runs, key=lambda k: runs[k]["median_s"])
    return {"run": runs[best], "threads": best, "runs_by_threads": runs}


# ---------------------------------------------------------------- JAX on several CPU devices
def child_sharded(cfg_path):
    """Child process (started with ``--xla_force_host_platform_device_count``): time
    ``phase_rollout_sharded`` with the systems split over the forced CPU devices."""
    from meanfield.studies.phase import phase_rollout_sharded
    from meanfield.studies.sharding import device_mesh, shard_batch

    cfg = json.loads(Path(cfg_path).read_text())
    x0 = np.load(cfg["x0"])
    mesh = device_mesh("batch")
    at = np.asarray(cfg["save_at"])
    seg = jnp.asarray(np.diff(at, prepend=0), jnp.int32)
    args = (shard_batch(x0, mesh), jnp.asarray(cfg["betas"]), jnp.asarray(H), seg, jnp.asarray(PAIR_T),
            jnp.asarray(CLUSTER_T))

    def fn(*a_):
        return phase_rollout_sharded(*a_, mesh=mesh, axis="batch", method="dense", block=cfg["block"])

    compiled, comp, mem = compile_jitted(fn, *args)
    run = time_jax(compiled, args, cfg["repeats"])
    pairs, clusters, m = (np.asarray(v) for v in compiled(*args))
    ref = np.load(cfg["m_ref"])
    print("RESULT " + json.dumps({"devices": len(jax.devices()), "block": cfg["block"], "compile": comp, "run": run,
                                  "max_abs_diff_m_vs_one_device": float(np.max(np.abs(m - ref)))}), flush=True)


def run_sharded_child(x0, betas, at, block, repeats, m_ref, n_devices):
    with tempfile.TemporaryDirectory() as tmp:
        np.save(f"{tmp}/x0.npy", x0)
        np.save(f"{tmp}/m.npy", m_ref)
        cfg = {"x0": f"{tmp}/x0.npy", "m_ref": f"{tmp}/m.npy", "betas": [float(b) for b in betas],
               "save_at": [int(s) for s in at], "block": block, "repeats": repeats}
        Path(f"{tmp}/cfg.json").write_text(json.dumps(cfg))
        env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={n_devices}", JAX_PLATFORMS="cpu")
        r = subprocess.run([sys.executable, __file__, "--child-sharded", f"{tmp}/cfg.json"], env=env,
                           capture_output=True, text=True)
    if r.returncode != 0:
        return {"error": r.stderr[-2000:]}
    return json.loads(next(ln for ln in r.stdout.splitlines() if ln.startswith("RESULT "))[len("RESULT "):])


# ---------------------------------------------------------------- the public drivers side by side
DRIVER_TARGETS = {"simulate_batch_auto": 5.0, "phase_diagram": 10.0}  # issue 19, point 5


def run_drivers(a, torch):
    """``--drivers``: the workload through the public entry points, in one process, against the
    PyTorch |m| loop: ``simulate_batch`` (auto: the native kernel, |m| after every layer),
    ``simulate_batch(engine="jax")`` (the vmapped rollout), ``phase_diagram`` (auto: native, the
    statistics at ``n_saves``). Each call includes its host-side work (validation, planning)."""
    from meanfield.studies.batch import simulate_batch
    from meanfield.studies.phase import phase_diagram

    B, n, d, nb, steps, ns = (256, 32, 8, 4, 20, 11) if a.quick else (2048, 32, 8, 10, 100, a.n_saves or 51)
    betas = np.linspace(0.1, 9.0, nb)
    res = {"benchmark": "phase_diagram_drivers", "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "machine": machine(), "torch": torch.__version__, "torch_default_threads": torch.get_num_threads(),
           "native": native.status(), "native_threads": native.default_threads(),
           "sizes": {"B": B, "n": n, "d": d, "n_betas": nb, "steps": steps, "n_saves": ns, "dt": H,
                     "betas": [float(b) for b in betas]},
           "targets_speedup_vs_torch_m": DRIVER_TARGETS, "command": " ".join(["python benchmarks/phase_diagram.py", *sys.argv[1:]])}
    mc = res["machine"]
    log(f"machine: {mc['cpu_model']}, {mc['usable_cores']} cores, simd {mc['simd']}, load {mc['loadavg_at_start'][0]:.1f}; "
        f"native: {res['native']}")
    log(f"workload: {nb} betas x {B} systems x n = {n} x d = {d}, {steps} steps, float64")
    x0 = np.random.default_rng(0).standard_normal((B, n, d))
    x0 /= np.linalg.norm(x0, axis=-1, keepdims=True)
    xt = torch.from_numpy(x0)
    A, S = np.meshgrid(betas, np.arange(B), indexing="ij")
    xs, al = x0[S.ravel()], A.ravel()  # the grid flattened into the batch, as docs/python.md shows
    out = {}

    def sb(engine, return_x):
        r = simulate_batch(xs, kernel="softmax", alpha=al, dt=H, layers=steps, engine=engine, return_x=return_x)
        out[engine] = np.asarray(jax.block_until_ready(r["order_parameter"]))

    runs = {
        "simulate_batch_auto": lambda: sb("auto", True),
        "simulate_batch_jax": lambda: sb("jax", True),
        "phase_diagram": lambda: phase_diagram(betas, x0=x0, t1=steps * H, dt=H, n_saves=ns),
    }
    torch_loop(torch, xt[:8], betas[:1], 2)  # warm-up
    for name, fn in runs.items():
        fn()  # compile (and, for the native kernel, build) outside the timings
    from meanfield.studies.batch import _engine, batch_inputs

    inp = batch_inputs(xs, kernel="softmax", alpha=al, dt=H, layers=steps)
    res["engines"] = {"simulate_batch_auto": _engine("auto", inp, jnp.float64)[0],
                      "phase_diagram": phase_diagram(betas[:1], x0=x0[:2], t1=H, dt=H, n_saves=2).params["method"]}
    # rounds: torch (at each thread count) and every driver in turn, so a change of the machine's load
    # hits all of them; the reference of a round is its faster torch run
    default = torch.get_num_threads()
    ths = a.torch_threads or ([default] + ([1] if default != 1 else []))
    torch_runs = {f"torch_m_{t}": (lambda t: lambda: (torch.set_num_threads(t), torch_loop(torch, xt, betas, steps)))(t)
                  for t in ths}
    rec = {k: {"wall": [], "cpu": []} for k in (*torch_runs, *runs)}
    for _ in range(a.repeats):
        for name, fn in (*torch_runs.items(), *runs.items()):
            r = timed(fn, 1)
            rec[name]["wall"].append(r["median_s"])
            rec[name]["cpu"].append(r["cpu_median_s"])
        torch.set_num_threads(default)
        log("    round: " + ", ".join(f"{k} {v['wall'][-1]:.2f} s" for k, v in rec.items()))
    tw = np.min([rec[k]["wall"] for k in torch_runs], axis=0)
    best = min(torch_runs, key=lambda k: np.median(rec[k]["wall"]))
    rec = {"torch_m": {"wall": tw.tolist(), "cpu": rec[best]["cpu"]}, **rec}
    res["torch_threads"] = {k: f"{k[len('torch_m_'):]}" for k in torch_runs}
    res["torch_m_is_the_faster_of"] = list(torch_runs)
    res["runs"] = {k: {"median_s": float(np.median(v["wall"])), "cpu_median_s": float(np.median(v["cpu"])),
                       "all_s": v["wall"], "all_cpu_s": v["cpu"]} for k, v in rec.items()}
    # per-round ratios: each driver against the faster torch loop of the same round
    t0 = np.asarray(rec["torch_m"]["wall"])
    c0 = np.asarray(rec[best]["cpu"])
    res["speedup_vs_torch_m"] = {k: {"median": float(np.median(t0 / np.asarray(rec[k]["wall"]))),
                                     "all": (t0 / np.asarray(rec[k]["wall"])).tolist(),
                                     "cpu_median": float(np.median(c0 / np.asarray(rec[k]["cpu"])))} for k in runs}
    res["max_abs_diff_m_auto_vs_jax"] = float(np.max(np.abs(out["auto"] - out["jax"])))
    res["targets_met"] = {k: bool(res["speedup_vs_torch_m"][k]["median"] >= v) for k, v in DRIVER_TARGETS.items()}
    res["loadavg_at_end"] = os.getloadavg()
    path = a.out or ROOT / "benchmarks" / "results" / ("phase_diagram-drivers-quick.json" if a.quick
                                                       else "phase_diagram-drivers.json")
    write_json(path, res)
    print(drivers_table(res))
    log(f"wrote {path}")


def drivers_table(res) -> str:
    """The Markdown table of benchmarks/README.md from a ``--drivers`` JSON (``--table FILE``)."""
    names = {"torch_m": "PyTorch loop over β, \\|m\\| every step (`torch_m`: per round the faster of {th} thread(s))",
             "simulate_batch_auto": "`simulate_batch(...)` (auto: {eng}; \\|m\\| every layer, final tokens)",
             "simulate_batch_jax": "`simulate_batch(..., engine=\"jax\")` (vmapped rollout; \\|m\\| every layer, final tokens)",
             "phase_diagram": "`phase_diagram(betas, x0=...)` (auto: {pd}; statistics at {ns} saves)"}
    rows = ["| program (float64) | wall [s], median | CPU [s], median | vs `torch_m`, wall (median of rounds) | "
            "vs `torch_m`, CPU | target |", "|---|---|---|---|---|---|"]
    for k, r in res["runs"].items():
        if k not in names:  # the torch runs at each thread count: in the JSON
            continue
        label = names[k].format(th=" and ".join(res["torch_threads"].values()), eng=res["engines"]["simulate_batch_auto"],
                                pd=res["engines"]["phase_diagram"], ns=res["sizes"]["n_saves"])
        sp = res["speedup_vs_torch_m"].get(k)
        tgt = res["targets_speedup_vs_torch_m"].get(k)
        rows.append(f"| {label} | {r['median_s']:.2f} | {r['cpu_median_s']:.2f} | "
                    + (f"{sp['median']:.1f}x ({', '.join(f'{v:.1f}' for v in sp['all'])}) | {sp['cpu_median']:.1f}x | "
                       if sp else "1 | 1 | ")
                    + (f">= {tgt:g}x: {'met' if res['targets_met'][k] else 'MISSED'} |" if tgt else "-- |"))
    return "\n".join(rows)


# ---------------------------------------------------------------- main
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--full", action="store_true", help="the issue's GPU workload: 90 betas, d = 128, 300 steps")
    p.add_argument("--quick", action="store_true", help="small sizes (smoke test); ratios not comparable")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats of the JAX runs (default 3)")
    p.add_argument("--torch-repeats", type=int, default=1, help="timed repeats of each PyTorch run (default 1)")
    p.add_argument("--n-saves", type=int, default=None, help="save steps (default 51 for 100 steps, 200 for --full)")
    p.add_argument("--blocks", type=int, nargs="*", default=None, help="block sizes of the dense path to time")
    p.add_argument("--no-simulate-batch", action="store_true", help="skip the simulate_batch baseline")
    p.add_argument("--torch-threads", type=int, nargs="*", default=None,
                   help="PyTorch thread counts to time (default: its default count and 1; the faster is the reference)")
    p.add_argument("--cpu-devices", type=int, default=2,
                   help="also time the dense path sharded over this many forced CPU devices (child process; 0: skip)")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--drivers", action="store_true",
                   help="only the public drivers side by side (simulate_batch auto and jax, phase_diagram) against "
                        "the PyTorch loop, --repeats rounds; writes results/phase_diagram-drivers.json")
    p.add_argument("--table", type=Path, default=None, help="print the README table of a --drivers JSON and exit")
    p.add_argument("--child-sharded", type=str, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child_sharded:
        return child_sharded(a.child_sharded)
    if a.table:
        return print(drivers_table(json.loads(a.table.read_text())))
    import torch

    if a.drivers:
        return run_drivers(a, torch)

    if a.full:
        B, n, d, nb, steps, ns = 2048, 32, 128, 90, 300, a.n_saves or 200
    elif a.quick:
        B, n, d, nb, steps, ns = 256, 32, 8, 4, 20, a.n_saves or 11
    else:
        B, n, d, nb, steps, ns = 2048, 32, 8, 10, 100, a.n_saves or 51
    betas = np.linspace(0.1, 9.0, nb)
    at = save_steps(steps, ns)
    gpu = jax.default_backend() == "gpu" and torch.cuda.is_available()
    dev = torch.device("cuda" if gpu else "cpu")
    res = {"benchmark": "phase_diagram", "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "machine": machine(), "torch": torch.__version__, "torch_device": str(dev),
           "torch_default_threads": torch.get_num_threads(),
           "sizes": {"B": B, "n": n, "d": d, "n_betas": nb, "steps": steps, "n_saves": ns, "dt": H,
                     "betas": [float(b) for b in betas]},
           "target_speedup": TARGET}
    mc = res["machine"]
    log(f"machine: {mc['cpu_model']}, {mc['usable_cores']} cores, jax {jax.__version__} ({jax.default_backend()}), "
        f"torch {torch.__version__} ({dev}), load {mc['loadavg_at_start'][0]:.1f}")
    log(f"workload: {nb} betas x {B} systems x n = {n} x d = {d}, {steps} steps, {ns} saves, float64")
    flop = 4.0 * n * n * d * B * nb * steps  # the two n x n x d matrix products per step
    res["matmul_flop"] = flop

    x0 = np.random.default_rng(0).standard_normal((B, n, d))
    x0 /= np.linalg.norm(x0, axis=-1, keepdims=True)
    xt = torch.from_numpy(x0).to(dev)

    # ---- PyTorch
    torch_loop(torch, xt[:8], betas[:1], 2)  # warm-up
    log("[1] PyTorch loop over beta, |m| every step")
    res["torch_m"] = time_torch(torch, lambda: torch_loop(torch, xt, betas, steps), a.torch_repeats, a.torch_threads)
    log(f"    {res['torch_m']['run']['median_s']:.2f} s, cpu {res['torch_m']['run']['cpu_median_s']:.2f} s "
        f"({res['torch_m']['threads']} thread(s); all "
        + ", ".join(f"{k}: {v['median_s']:.2f} s" for k, v in res["torch_m"]["runs_by_threads"].items()) + ")")
    log("[2] PyTorch loop over beta, statistics at the save steps")
    ref = {}

    def run_stats_loop():
        ref["out"] = torch_loop(torch, xt, betas, steps, save_at=at)

    res["torch_stats"] = time_torch(torch, run_stats_loop, a.torch_repeats, a.torch_threads)
    log(f"    {res['torch_stats']['run']['median_s']:.2f} s, cpu {res['torch_stats']['run']['cpu_median_s']:.2f} s "
        f"({res['torch_stats']['threads']} thread(s); all "
        + ", ".join(f"{k}: {v['median_s']:.2f} s" for k, v in res["torch_stats"]["runs_by_threads"].items()) + ")")
    tref = ref["out"]  # (nb, T, 3, B)

    def versus_torch(run):
        """A timed JAX run with its matmul rate and its wall- and CPU-time ratios to both PyTorch loops."""
        out = {"run": run, "matmul_gflop_per_s": flop / run["median_s"] / 1e9}
        for ref in ("torch_m", "torch_stats"):
            out[f"speedup_vs_{ref}"] = res[ref]["run"]["median_s"] / run["median_s"]
            out[f"cpu_speedup_vs_{ref}"] = res[ref]["run"]["cpu_median_s"] / run["cpu_median_s"]
        return out

    # ---- JAX dense path
    seg = jnp.asarray(np.diff(at, prepend=0), jnp.int32)
    res["jax_dense"] = {}
    blocks = a.blocks or ([4096, 16384] if gpu else [256])
    m_by_block = {}
    for dtname in ("float64", "float32"):
        dtype = jnp.dtype(dtname)
        xj = jnp.asarray(x0, dtype)
        args = (xj, jnp.asarray(betas, dtype), jnp.asarray(H, dtype), seg, jnp.asarray(PAIR_T, dtype),
                jnp.asarray(CLUSTER_T, dtype))
        recs = []
        for blk in blocks:
            fn = (lambda blk: lambda *a_: phase_rollout(*a_, method="dense", block=blk))(blk)
            compiled, comp, mem = compile_jitted(fn, *args)
            run = time_jax(compiled, args, a.repeats)
            rec = {"block": blk, "compile": comp, "memory": mem, **versus_torch(run)}
            if dtname == "float64":
                pairs, clusters, m = (np.asarray(v) for v in compiled(*args))  # (nb, B, T)
                m_by_block[blk] = m
                dense_clusters = clusters
                rec["max_abs_diff_m_vs_torch"] = float(np.max(np.abs(m - tref[:, :, 2, :].transpose(0, 2, 1))))
                rec["pairs_equal_fraction"] = float(np.mean(pairs == tref[:, :, 0, :].transpose(0, 2, 1)))
                rec["clusters_equal_rank_fraction"] = float(np.mean(clusters == tref[:, :, 1, :].transpose(0, 2, 1)))
            recs.append(rec)
            log(f"[3] jax dense {dtname} block={blk}: run {run['median_s']:.3f} s (min {run['min_s']:.3f}, cpu "
                f"{run['cpu_median_s']:.2f} s, cpu-time ratio vs torch |m| loop {rec['cpu_speedup_vs_torch_m']:.1f}x), "
                f"compile "
                f"{comp['compile_s']:.2f} s, {rec['matmul_gflop_per_s']:.1f} GFLOP/s, "
                f"{rec['speedup_vs_torch_m']:.1f}x vs torch |m| loop, {rec['speedup_vs_torch_stats']:.1f}x vs torch "
                f"stats loop" + (f", |m| diff {rec['max_abs_diff_m_vs_torch']:.1e}, pairs equal "
                                 f"{rec['pairs_equal_fraction']:.4f}, clusters = rank "
                                 f"{rec['clusters_equal_rank_fraction']:.4f}" if dtname == "float64" else ""))
        best = min(recs, key=lambda r: r["run"]["median_s"])
        res["jax_dense"][dtname] = {"blocks": recs, "best": best}
        if dtname == "float64":
            m64 = m_by_block[best["block"]]
            # like for like with the PyTorch statistics loop: clusters by the rank of the 0/1 matrix
            fn = (lambda blk: lambda *a_: phase_rollout(*a_, method="dense", block=blk, cluster_count="rank"))(
                best["block"])
            compiled, comp, mem = compile_jitted(fn, *args)
            run = time_jax(compiled, args, a.repeats)
            clusters = np.asarray(compiled(*args)[1])
            rk = {"block": best["block"], "compile": comp, "memory": mem, "run": run,
                  "clusters_equal_torch_rank_fraction": float(np.mean(clusters == tref[:, :, 1, :].transpose(0, 2, 1))),
                  "speedup_vs_torch_stats": res["torch_stats"]["run"]["median_s"] / run["median_s"],
                  "cpu_speedup_vs_torch_stats": res["torch_stats"]["run"]["cpu_median_s"] / run["cpu_median_s"]}
            res["jax_dense"]["float64_rank"] = rk
            log(f"[3] jax dense float64 cluster_count='rank' block={best['block']}: run {run['median_s']:.3f} s "
                f"(cpu {run['cpu_median_s']:.2f} s), {rk['speedup_vs_torch_stats']:.1f}x vs torch stats loop (cpu "
                f"{rk['cpu_speedup_vs_torch_stats']:.1f}x), clusters equal to torch's rank "
                f"{rk['clusters_equal_torch_rank_fraction']:.4f}")

    # ---- the native C++ kernel (method="native", what "auto" runs on a CPU where it compiled)
    if not gpu and native.available():
        res["jax_native"] = {}
        for dtname in ("float64", "float32"):
            dtype = jnp.dtype(dtname)
            args = (jnp.asarray(x0, dtype), jnp.asarray(betas, dtype), jnp.asarray(H, dtype), seg, jnp.asarray(PAIR_T, dtype),
                    jnp.asarray(CLUSTER_T, dtype))
            for th in sorted({1, native.default_threads()}):
                fn = (lambda th: lambda *a_: phase_rollout(*a_, method="native", threads=th))(th)
                compiled, comp, mem = compile_jitted(fn, *args)
                run = time_jax(compiled, args, a.repeats)
                rec = {"threads": th, "compile": comp, **versus_torch(run)}
                if dtname == "float64":
                    pairs, clusters, m = (np.asarray(v) for v in compiled(*args))
                    rec["max_abs_diff_m_vs_torch"] = float(np.max(np.abs(m - tref[:, :, 2, :].transpose(0, 2, 1))))
                    rec["max_abs_diff_m_vs_dense"] = float(np.max(np.abs(m - m64)))
                    rec["pairs_equal_fraction"] = float(np.mean(pairs == tref[:, :, 0, :].transpose(0, 2, 1)))
                    rec["clusters_equal_dense_components_fraction"] = float(np.mean(clusters == dense_clusters))
                res["jax_native"][f"{dtname}_threads{th}"] = rec
                log(f"[3n] native {dtname} threads={th}: run {run['median_s']:.3f} s (cpu {run['cpu_median_s']:.2f} s), "
                    f"{rec['speedup_vs_torch_m']:.1f}x vs torch |m| loop (cpu {rec['cpu_speedup_vs_torch_m']:.1f}x), "
                    f"{rec['speedup_vs_torch_stats']:.1f}x vs torch stats loop (cpu "
                    f"{rec['cpu_speedup_vs_torch_stats']:.1f}x)"
                    + (f", |m| diff vs torch {rec['max_abs_diff_m_vs_torch']:.1e}, vs dense "
                       f"{rec['max_abs_diff_m_vs_dense']:.1e}, pairs equal {rec['pairs_equal_fraction']:.4f}, "
                       f"clusters = dense {rec['clusters_equal_dense_components_fraction']:.4f}"
                       if dtname == "float64" else ""))

    # ---- the same on several CPU devices (systems sharded; one XLA device per core)
    if a.cpu_devices > 1 and not gpu:
        b64 = res["jax_dense"]["float64"]["best"]
        sh = run_sharded_child(x0, betas, at, b64["block"], a.repeats, m64, a.cpu_devices)
        if "run" in sh:
            sh["speedup_vs_torch_m"] = res["torch_m"]["run"]["median_s"] / sh["run"]["median_s"]
            sh["speedup_vs_torch_stats"] = res["torch_stats"]["run"]["median_s"] / sh["run"]["median_s"]
            sh["matmul_gflop_per_s"] = flop / sh["run"]["median_s"] / 1e9
            log(f"[3b] jax dense float64 on {sh['devices']} CPU devices (block {sh['block']}): run "
                f"{sh['run']['median_s']:.3f} s, {sh['speedup_vs_torch_m']:.1f}x vs torch |m| loop, "
                f"{sh['speedup_vs_torch_stats']:.1f}x vs torch stats loop, |m| diff vs one device "
                f"{sh['max_abs_diff_m_vs_one_device']:.1e}")
        else:
            log(f"[3b] sharded child failed: {sh['error'][-300:]}")
        res["jax_dense_sharded_cpu_devices"] = sh

    # ---- simulate_batch (the previous way)
    if not a.no_simulate_batch:
        from meanfield.studies.batch import _rollout_batch

        A, S = np.meshgrid(betas, np.arange(B), indexing="ij")
        xs = jnp.asarray(x0)[jnp.asarray(S.ravel())]
        sargs = (xs, jnp.asarray(A.ravel()), jnp.asarray(1.0), jnp.asarray(H))
        from solvers import Softmax, Layer

        kern, integ = Softmax(1.0), Layer()
        fn = lambda *a_: _rollout_batch(*a_, kern, integ, layers=steps)  # noqa: E731
        compiled, comp, mem = compile_jitted(fn, *sargs)
        run = time_jax(compiled, sargs, 1)
        res["simulate_batch"] = {"compile": comp, "memory": mem, "run": run}
        log(f"[4] simulate_batch float64: run {run['median_s']:.2f} s, compile {comp['compile_s']:.2f} s")

    b64 = res["jax_dense"]["float64"]["best"]
    nat = res.get("jax_native", {})
    n64 = min((v for k, v in nat.items() if k.startswith("float64")), key=lambda r: r["run"]["median_s"], default=None)
    res["summary"] = {
        "native_float64_s": n64 and n64["run"]["median_s"], "native_threads": n64 and n64["threads"],
        "native_speedup_vs_torch_m": n64 and n64["speedup_vs_torch_m"],
        "native_cpu_speedup_vs_torch_m": n64 and n64["cpu_speedup_vs_torch_m"],
        "native_speedup_vs_torch_stats": n64 and n64["speedup_vs_torch_stats"],
        "native_float64_1thread_cpu_speedup_vs_torch_m": nat.get("float64_threads1", {}).get("cpu_speedup_vs_torch_m"),
        "jax_dense_float64_s": b64["run"]["median_s"], "block": b64["block"],
        "torch_m_s": res["torch_m"]["run"]["median_s"], "torch_stats_s": res["torch_stats"]["run"]["median_s"],
        "speedup_vs_torch_m": b64["speedup_vs_torch_m"], "speedup_vs_torch_stats": b64["speedup_vs_torch_stats"],
        "cpu_speedup_vs_torch_m": b64["cpu_speedup_vs_torch_m"],
        "cpu_speedup_vs_torch_stats": b64["cpu_speedup_vs_torch_stats"],
        "jax_dense_float32_s": res["jax_dense"]["float32"]["best"]["run"]["median_s"],
        "jax_dense_float64_rank_s": res["jax_dense"]["float64_rank"]["run"]["median_s"],
        "speedup_rank_vs_torch_stats": res["jax_dense"]["float64_rank"]["speedup_vs_torch_stats"],
        "matmul_gflop_per_s_float64": b64["matmul_gflop_per_s"],
        "simulate_batch_s": res.get("simulate_batch", {}).get("run", {}).get("median_s"),
        "jax_dense_float64_sharded_cpu_devices_s": res.get("jax_dense_sharded_cpu_devices", {}).get("run", {}).get(
            "median_s"),
        "target_met": bool((n64 or b64)["speedup_vs_torch_m"] >= TARGET),
        "target_measured_on": "native" if n64 else "dense",
    }
    res["loadavg_at_end"] = os.getloadavg()
    out = a.out or ROOT / "benchmarks" / "results" / (
        "phase_diagram-quick.json" if a.quick else "phase_diagram-full.json" if a.full else "phase_diagram.json")
    write_json(out, res)
    s = res["summary"]
    log(f"\nsummary: jax dense float64 {s['jax_dense_float64_s']:.2f} s (block {s['block']}), float32 "
        f"{s['jax_dense_float32_s']:.2f} s; torch |m| loop {s['torch_m_s']:.2f} s -> {s['speedup_vs_torch_m']:.1f}x; "
        f"torch stats loop {s['torch_stats_s']:.2f} s -> {s['speedup_vs_torch_stats']:.1f}x; cpu-time ratios "
        f"{s['cpu_speedup_vs_torch_m']:.1f}x and {s['cpu_speedup_vs_torch_stats']:.1f}x"
        + ("" if n64 else f" (target {TARGET:g}x: {'PASS' if s['target_met'] else 'MISS'})")
        + f"; {s['matmul_gflop_per_s_float64']:.1f} GFLOP/s; "
        + (f"simulate_batch {s['simulate_batch_s']:.2f} s; " if s["simulate_batch_s"] else "")
        + (f"{a.cpu_devices} CPU devices {s['jax_dense_float64_sharded_cpu_devices_s']:.2f} s; "
           if s["jax_dense_float64_sharded_cpu_devices_s"] else "")
        + f"load {mc['loadavg_at_start'][0]:.1f} -> {res['loadavg_at_end'][0]:.1f}")
    if n64:
        log(f"native float64: {s['native_float64_s']:.2f} s ({s['native_threads']} thread(s)) -> "
            f"{s['native_speedup_vs_torch_m']:.1f}x vs torch |m| loop (cpu-time {s['native_cpu_speedup_vs_torch_m']:.1f}x; "
            f"one thread: {s['native_float64_1thread_cpu_speedup_vs_torch_m']:.1f}x), "
            f"{s['native_speedup_vs_torch_stats']:.1f}x vs torch stats loop (target {TARGET:g}x: "
            f"{'PASS' if s['target_met'] else 'MISS'})")
    log(f"wrote {out}")


if __name__ == "__main__":
    main()
