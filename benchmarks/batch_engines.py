"""simulate_batch's two engines side by side on small batches (phase-x; the "auto" rules of
meanfield/studies/batch.py, NATIVE_D): one system of ``n`` tokens in ``R^d`` under ``B`` alphas (a
one-system grid, which "auto" sends to the native kernel), ``layers`` layers, float32 (the library
default), final tokens returned. Best of 3 after a warm-up, wall time.

Run: ``python benchmarks/batch_engines.py`` (about 20 s).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from meanfield.studies.batch import _engine, batch_inputs, simulate_batch  # noqa: E402

CASES = ((17, 32, 8, 6), (17, 32, 64, 6), (512, 32, 64, 6), (512, 32, 8, 6), (2048, 32, 8, 6))


def main():
    print(f"load average at start: {os.getloadavg()}")
    rng = np.random.default_rng(1)
    for B, n, d, layers in CASES:
        x0 = rng.standard_normal((1, n, d)).astype(np.float32)
        x0 /= np.linalg.norm(x0, axis=-1, keepdims=True)
        xs, al = np.broadcast_to(x0, (B, n, d)), np.linspace(0.5, 9.0, B)
        best = {}
        for eng in ("jax", "native"):
            def run():
                return jax.block_until_ready(simulate_batch(xs, kernel="softmax", alpha=al, dt=0.1, layers=layers,
                                                            engine=eng)["x"])
            run()
            ts = []
            for _ in range(3):
                t = time.perf_counter()
                run()
                ts.append(time.perf_counter() - t)
            best[eng] = min(ts)
        auto = _engine("auto", batch_inputs(xs, kernel="softmax", alpha=al, dt=0.1, layers=layers), jnp.float32)[0]
        print(f"B = {B:5d}, n = {n}, d = {d:3d}, {layers} layers: jax {best['jax'] * 1e3:8.1f} ms, "
              f"native {best['native'] * 1e3:8.1f} ms, native/jax {best['native'] / best['jax']:5.2f}; auto: {auto}")
    print(f"load average at end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
