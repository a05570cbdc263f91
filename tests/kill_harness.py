"""SIGKILL harness: kill ``meanfield-simulate`` at random moments and check nothing is lost or corrupt.

Each round starts ``python -m meanfield.simulate`` writing ``results.h5`` (``--overwrite``; a
complete file is there from the start) with a checkpoint after every save, and sends SIGKILL, in
turn: after a random delay drawn uniformly over the run's measured lifetime; the moment the
results write begins (its temporary file appears); the moment the 1st to 5th (at random)
checkpoint write begins. Rounds that finish before their kill are counted and repeated. After every kill: ``results.h5`` must load and hold the reference tokens
(the previous complete file or the new one: never a truncated one), and the checkpoint, when
present, must load. Where the kill landed is read from the temporary files it left
(``.results.h5.*.tmp``: during the results write; ``.run.ckpt.h5.*.tmp``: during a checkpoint write).
Finally a resume from the last checkpoint must complete with the reference's final tokens, bit for bit.

``python tests/kill_harness.py --kills 20`` prints the figures; ``tests/test_kill_safety.py`` runs it.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RUN = ["--N", "200", "--layers", "40", "--save-every", "2", "--no-plot", "--no-progress", "--seed", "3"]


def _simulate(args, cwd, **kw):
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.Popen([sys.executable, "-m", "meanfield.simulate", *RUN, *args], cwd=cwd, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **kw)


def run_harness(kills: int = 20, seed: int = 0, workdir=None) -> dict:
    from meanfield.flow import checkpoint
    from meanfield.io.results import load_results

    rng = random.Random(seed)
    work = Path(workdir or tempfile.mkdtemp(prefix="mf_kill_"))
    t0 = time.perf_counter()
    p = _simulate(["--out", "reference.h5"], work)
    assert p.wait() == 0, p.stderr.read().decode()
    lifetime = time.perf_counter() - t0
    ref = load_results(work / "reference.h5").x
    shutil.copy(work / "reference.h5", work / "results.h5")
    figures = {"kills": 0, "corrupted": 0, "finished_before_kill": 0, "during_results_write": 0,
               "during_checkpoint_write": 0, "checkpoints_loaded": 0}
    ck = work / "run.ckpt.h5"
    rounds = 0
    while figures["kills"] < kills and rounds < 3 * kills:
        rounds += 1
        mode = ("time", "results", "checkpoint")[rounds % 3]
        p = _simulate(["--out", "results.h5", "--overwrite", "--checkpoint-every", "1", "--checkpoint", str(ck)], work)
        if mode == "time":  # a random moment of the run's lifetime
            deadline = time.perf_counter() + rng.uniform(0.0, lifetime)
            while p.poll() is None and time.perf_counter() < deadline:
                time.sleep(0.001)
        else:  # the moment a results or checkpoint write has begun (its temporary file appeared)
            pattern = ".results.h5.*.tmp" if mode == "results" else f".{ck.name}.*.tmp"
            skip = rng.randrange(5) if mode == "checkpoint" else 0  # a later checkpoint write, at random
            seen = set()
            while p.poll() is None:
                seen.update(work.glob(pattern))
                if len(seen) > skip:
                    break
                time.sleep(0.0005)
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
            figures["kills"] += 1
        else:
            figures["finished_before_kill"] += 1
        p.wait()
        figures["during_results_write"] += bool(list(work.glob(".results.h5.*.tmp")))
        figures["during_checkpoint_write"] += bool(list(work.glob(f".{ck.name}.*.tmp")))
        for tmp in work.glob(".*.tmp"):  # what a killed write leaves: never under a final name
            tmp.unlink()
        try:
            ok = np.array_equal(load_results(work / "results.h5").x, ref)
        except Exception:  # noqa: BLE001 - any failure to read is a corrupted file
            ok = False
        figures["corrupted"] += not ok
        if ck.exists():
            try:
                checkpoint.load(ck)
                figures["checkpoints_loaded"] += 1
            except ValueError:
                figures["corrupted"] += 1
    final = ["--resume", str(ck)] if ck.exists() else []
    p = _simulate(["--out", "resumed.h5", *final], work)
    assert p.wait() == 0, p.stderr.read().decode()
    figures["resume_equal"] = bool(np.array_equal(load_results(work / "resumed.h5").x, ref))
    figures["resumed_from_checkpoint"] = bool(final)
    figures["seconds"] = round(time.perf_counter() - t0, 1)
    if workdir is None:
        shutil.rmtree(work, ignore_errors=True)
    return figures


if __name__ == "__main__":
    sys.path[0] = str(ROOT)  # the package, not tests/solvers, when run as a script
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    print(run_harness(a.kills, a.seed))
