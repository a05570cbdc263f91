"""Start-up of the tools: what ``import meanfield`` pulls in, and JAX's persistent compilation cache.

The import test runs in a fresh interpreter (this one already imported everything). The cache
tests run the real console entry (``python -m meanfield.simulate``) in subprocesses with their
own ``MEANFIELD_CACHE_DIR``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("scipy.stats", "scipy.optimize", "scipy.integrate", "optax", "diffrax", "lineax", "matplotlib", "torch")


def _python(code: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_import_meanfield_leaves_heavy_modules_for_later():
    code = "import sys, meanfield, meanfield.simulate; print(' '.join(sorted(m for m in %r if m in sys.modules)))" % (HEAVY,)
    proc = _python(code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "", f"imported at start-up: {proc.stdout.strip()}"


def test_reading_and_drawing_results_needs_no_jax():
    # the simulate tool's plot worker (meanfield.plots._worker) relies on this to start fast
    code = ("import sys, meanfield, meanfield.io.results, meanfield.plots.figures, meanfield.plots._worker\n"
            "print(' '.join(sorted(m for m in ('jax', 'jaxlib', 'equinox', 'solvers') if m in sys.modules)))")
    proc = _python(code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "", f"imported: {proc.stdout.strip()}"


def test_every_public_name_resolves_on_first_use():
    code = ("import meanfield\n"
            "missing = [n for n in meanfield.__all__ if not hasattr(meanfield, n)]\n"
            "assert not missing, missing\n"
            "assert set(meanfield.__all__) <= set(dir(meanfield))\n"
            "from meanfield import solve_flow, Linear, diagnostics\n"
            "import solvers\n"
            "assert meanfield.Linear is solvers.Linear and meanfield.stats.diagnostics.__name__ == 'meanfield.stats.diagnostics'\n"
            "try:\n    meanfield.no_such_name\nexcept AttributeError as e:\n    print(e)\n")
    proc = _python(code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "module 'meanfield' has no attribute 'no_such_name'"


def _simulate(tmp_path: Path, out: str, cache: Path, **env_extra) -> subprocess.CompletedProcess:
    env = dict(os.environ, MEANFIELD_CACHE_DIR=str(cache), MEANFIELD_NATIVE="0", **env_extra)
    cmd = [sys.executable, "-m", "meanfield.simulate", "--N", "200", "--d", "4", "--layers", "3", "--out", out]
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


def _tokens_and_ranks(path: Path):
    with h5py.File(path, "r") as f:
        return {k: np.asarray(f[k]) for k in f if isinstance(f[k], h5py.Dataset)}


def test_cli_keeps_compiled_programs_and_results_do_not_change(tmp_path):
    cache = tmp_path / "cache"
    first = _simulate(tmp_path, "a.h5", cache)
    assert first.returncode == 0, first.stderr
    entries = list((cache / "jax").iterdir())
    assert entries, "the first run left no compiled program in the cache"
    assert (cache / "jax").stat().st_mode & 0o077 == 0
    second = _simulate(tmp_path, "b.h5", cache)
    assert second.returncode == 0, second.stderr
    a, b = _tokens_and_ranks(tmp_path / "a.h5"), _tokens_and_ranks(tmp_path / "b.h5")
    assert a.keys() == b.keys() and a
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_compile_cache_off_by_environment(tmp_path):
    cache = tmp_path / "cache"
    proc = _simulate(tmp_path, "a.h5", cache, MEANFIELD_COMPILE_CACHE="0")
    assert proc.returncode == 0, proc.stderr
    assert not (cache / "jax").exists()


def test_compile_cache_refused_in_a_folder_others_can_write(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    os.chmod(cache, 0o777)
    proc = _simulate(tmp_path, "a.h5", cache)
    assert proc.returncode == 0, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if "compilation cache off" in ln]
    assert len(lines) == 1 and "can be written by other users (mode 0777)" in lines[0], proc.stderr
    assert not (cache / "jax").exists()
    assert (tmp_path / "a.h5").exists()


def test_private_dir_is_0700_whatever_the_umask(tmp_path, monkeypatch):
    from solvers._cache import private_dir

    monkeypatch.setenv("MEANFIELD_CACHE_DIR", str(tmp_path / "root"))
    old = os.umask(0)
    try:
        folder = private_dir("x")
    finally:
        os.umask(old)
    assert folder.stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "root").stat().st_mode & 0o777 == 0o700
