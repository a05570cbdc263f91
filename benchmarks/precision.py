"""Errors of the matmul precision modes against float64 (issue 11 target 2; docs/precision.md).

The float32 softmax drive at N = 4096, d = 64, alpha in {1, 10} for ``matmul_precision`` highest,
tf32 (exact emulation of the GPU's TF32 on a CPU) and bf16, streaming and fused paths, against a
dense float64 NumPy reference; and a short flow (N = 1024, d = 64, alpha = 5, 4 layers from a cap)
in each mode against float64: ``|m|`` and the effective rank. Errors, not timings: the machine's
load does not matter. Writes ``benchmarks/results/precision.json`` and prints Markdown tables.

    python benchmarks/precision.py     # about 1 minute on 2 cores
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)  # the float64 reference run; the library never does this

import _harness as hx  # noqa: E402

from meanfield.studies.precision import drive_errors, flow_errors  # noqa: E402


def main():
    drive = drive_errors(N=4096, d=64, alphas=(1.0, 10.0), attention="streaming")
    drive += drive_errors(N=4096, d=64, alphas=(1.0, 10.0), attention="fused")
    flow = flow_errors()
    hx.log("| alpha | mode | path | rel. error (Frobenius) | max row rel. error |\n|---|---|---|---|---|")
    for r in drive:
        hx.log(f"| {r['alpha']:g} | {r['mode']} | {r['attention']} | {r['rel_fro']:.1e} | {r['rel_max']:.1e} |")
    hx.log("\n| mode | abs. error of abs(m) | rel. error of eff. rank | abs(m) float64 | eff. rank float64 |\n"
           "|---|---|---|---|---|")
    for r in flow:
        hx.log(f"| {r['mode']} | {r['m_abs_err']:.1e} | {r['eff_rank_rel_err']:.1e} | {r['m_float64']:.6f} | "
               f"{r['eff_rank_float64']:.4f} |")
    hx.write_json(HERE / "results" / "precision.json", {"machine": hx.machine(), "drive": drive, "flow": flow})


if __name__ == "__main__":
    main()
