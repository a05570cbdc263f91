"""Layering: the numerical engines in ``solvers/`` never import ``meanfield`` (the package built on
them).  Checked in a fresh interpreter, so modules imported by other tests do not mask a
violation."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_solvers_do_not_import_meanfield():
    modules = sorted(p.stem for p in (ROOT / "solvers").glob("*.py") if p.stem != "__init__")
    code = ("import importlib, sys\n"
            "import solvers\n"
            f"for m in {modules!r}:\n"
            "    importlib.import_module('solvers.' + m)\n"
            "bad = sorted(m for m in sys.modules if m == 'meanfield' or m.startswith('meanfield.'))\n"
            "print(' '.join(bad))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT)] + sys.path), "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "", f"solvers imported: {proc.stdout.strip()}"



def test_meanfield_has_no_import_circles():
    from tests.import_graph import cycles, meanfield_imports

    graph = meanfield_imports()
    assert len(graph) > 30 and graph["meanfield.compare.cli"] >= {"meanfield.compare.replay", "meanfield.compare.own_weights"}
    assert not cycles(graph), f"modules importing each other: {cycles(graph)}"
