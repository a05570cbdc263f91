"""The cache rules of solvers/_cache.py: private folders, libraries and files checked (owner,
mode, recorded SHA-256) before they are loaded, rebuilt otherwise; one variable for the root.

The loading tests run in a subprocess with their own ``MEANFIELD_CACHE_DIR``. A planted library
is a tiny shared object whose constructor writes a marker file: the marker's absence after the
package's native path ran proves it was never loaded (skipped without a C compiler)."""

import os
import shutil
import stat
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from solvers import _cache

ROOT = Path(__file__).resolve().parents[2]
CC = shutil.which("cc") or shutil.which("gcc") or shutil.which("g++")

NAME = ("from solvers import native\n"
        "print(native._library_name(native._compiler(), native._flags()))\n")
RUN = ("from solvers import native\n"
       "print(native.available(), '|', native.status())\n")


def _python(code, cache, **env):
    full = {**os.environ, "PYTHONPATH": str(ROOT), "MEANFIELD_CACHE_DIR": str(cache), **env}
    full.pop("MEANFIELD_NATIVE", None)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full, timeout=600)


def _planted(tmp_path, marker, symbols=False):
    """A shared library whose constructor writes ``marker`` (the kernels' symbols too if asked)."""
    src = tmp_path / "plant.c"
    body = f'#include <stdio.h>\n__attribute__((constructor)) static void run(void) {{ FILE *f = fopen("{marker}", "w"); if (f) fclose(f); }}\n'
    if symbols:
        body += "".join(f"void Meanfield{n}{s}(void) {{}}\n" for n in ("PhaseRollout", "LinearMoments", "LinearStep")
                        for s in ("F32", "F64"))
    src.write_text(body)
    out = tmp_path / "plant.so"
    subprocess.run([CC, "-shared", "-fPIC", "-o", str(out), str(src)], check=True, capture_output=True)
    return out


def _library_name(cache, **env):
    r = _python(NAME, cache, **env)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def _plant_with_digest(lib, folder, name):
    """The library under the cache name with a digest file that matches it, as an attacker would."""
    target = folder / name
    shutil.copy(lib, target)
    os.chmod(target, 0o644)
    (folder / (name + ".sha256")).write_text(_cache.file_digest(target) + "\n")
    return target


needs_cc = pytest.mark.skipif(CC is None, reason="no C compiler (cc, gcc, g++) to build the planted library")


@needs_cc
def test_a_library_planted_in_a_group_writable_folder_is_not_loaded(tmp_path):
    marker = tmp_path / "constructor-ran"
    lib = _planted(tmp_path, marker)
    ctypes_check = _python(f"import ctypes; ctypes.CDLL({str(lib)!r})", tmp_path / "unused")
    assert ctypes_check.returncode == 0 and marker.exists()  # the marker does work when the library loads
    marker.unlink()
    cache = tmp_path / "cache"
    folder = cache / "native"
    folder.mkdir(parents=True, mode=0o700)
    os.chmod(cache, 0o700)
    os.chmod(folder, 0o775)  # group-writable: another user of the group could have put it there
    name = _library_name(cache, CXX="false")  # a failing compiler: no 20 s build, the JAX path instead
    _plant_with_digest(lib, folder, name)
    r = _python(RUN, cache, CXX="false")
    assert r.returncode == 0, r.stderr
    assert not marker.exists()
    assert r.stdout.startswith("False | compilation failed"), r.stdout
    notes = [ln for ln in r.stderr.splitlines() if "native" in ln]
    assert len(notes) == 1 and "cache folder refused" in notes[0] and "(mode 0775)" in notes[0], r.stderr


@needs_cc
def test_a_library_without_recorded_digest_or_writable_by_others_is_not_loaded(tmp_path):
    marker = tmp_path / "constructor-ran"
    lib = _planted(tmp_path, marker, symbols=True)
    cache = tmp_path / "cache"
    folder = _cache.make_private(cache / "native")
    name = _library_name(cache, CXX="false")
    target = _plant_with_digest(lib, folder, name)
    for how, expect in (("no digest", "has no recorded digest"), ("mode 0666", "can be written by other users")):
        if how == "no digest":
            os.unlink(folder / (name + ".sha256"))
        else:
            _plant_with_digest(lib, folder, name)
            os.chmod(target, 0o666)
        r = _python(RUN, cache, CXX="false")
        assert r.returncode == 0, r.stderr
        assert not marker.exists(), how
        notes = [ln for ln in r.stderr.splitlines() if "native" in ln]
        assert len(notes) == 1 and expect in notes[0] and "rebuilding" in notes[0], (how, r.stderr)


@needs_cc
def test_a_recorded_library_that_fails_to_load_is_rebuilt_not_disabled(tmp_path):
    """Digest and modes in order but a symbol missing (a stale build): a rebuild is tried
    (here with a failing compiler, so the reason is the compiler's) rather than the path given up."""
    lib = _planted(tmp_path, tmp_path / "marker", symbols=False)
    cache = tmp_path / "cache"
    folder = _cache.make_private(cache / "native")
    name = _library_name(cache, CXX="false")
    target = folder / name
    tmp = folder / ".tmp.so"
    shutil.copy(lib, tmp)
    _cache.publish(tmp, target)
    r = _python(RUN, cache, CXX="false")
    notes = [ln for ln in r.stderr.splitlines() if "native" in ln]
    assert len(notes) == 1 and "loading" in notes[0] and "failed" in notes[0] and "rebuilding" in notes[0], r.stderr
    assert r.stdout.startswith("False | compilation failed"), r.stdout


def test_a_tampered_library_is_rebuilt_and_matches_its_digest(tmp_path):
    from solvers import native

    if not native.available():
        pytest.skip(native.status())
    built = Path(native._state["path"])
    cache = tmp_path / "cache"
    folder = _cache.make_private(cache / "native")
    if _library_name(cache) != built.name:
        pytest.skip("this process's library key differs from a subprocess's")
    target = folder / built.name
    tmp = folder / ".copy"
    shutil.copy(built, tmp)
    _cache.publish(tmp, target)
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one byte changed
    target.write_bytes(bytes(data))
    r = _python(RUN, cache)
    assert r.returncode == 0 and r.stdout.startswith(f"True | built: {target}"), r.stdout + r.stderr[-2000:]
    notes = [ln for ln in r.stderr.splitlines() if "native" in ln]
    assert len(notes) == 1 and "does not match its recorded SHA-256 digest; rebuilding" in notes[0], r.stderr
    assert target.read_bytes() != bytes(data)
    assert (folder / (target.name + ".sha256")).read_text().strip() == _cache.file_digest(target)
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    again = _python(RUN, cache)  # now accepted as it is
    assert again.stdout.startswith(f"True | built: {target}") and "compiling" not in again.stderr


def test_folders_created_under_umask_0_are_0700(tmp_path, monkeypatch):
    monkeypatch.setenv("MEANFIELD_CACHE_DIR", str(tmp_path / "a" / "b" / "root"))
    old = os.umask(0)
    try:
        folder = _cache.private_dir("native")
        tmp = folder / ".f"
        tmp.write_bytes(b"x")
        _cache.publish(tmp, folder / "f")
    finally:
        os.umask(old)
    for p in (tmp_path / "a", tmp_path / "a" / "b", tmp_path / "a" / "b" / "root", folder):
        assert stat.S_IMODE(p.stat().st_mode) == 0o700, p
    for p in (folder / "f", folder / "f.sha256"):
        assert stat.S_IMODE(p.stat().st_mode) == 0o600, p
    assert _cache.verify(folder / "f") is None


def test_a_folder_or_file_of_another_user_is_refused(tmp_path, monkeypatch):
    """Without root no file can belong to another user: os.lstat is made to say so."""
    folder = _cache.make_private(tmp_path / "c")
    tmp = folder / ".f"
    tmp.write_bytes(b"x")
    _cache.publish(tmp, folder / "f")
    assert _cache.verify(folder / "f") is None
    real = os.lstat

    class Other:
        def __init__(self, st):
            self.st_mode, self.st_uid = st.st_mode, st.st_uid + 1

    monkeypatch.setattr(_cache.os, "lstat", lambda p: Other(real(p)))
    with pytest.raises(_cache.UnsafeCache, match=r"belongs to another user \(uid \d+\)"):
        _cache.check_folder(folder)
    assert "belongs to another user" in _cache.verify(folder / "f")


def test_a_symlinked_cache_folder_is_refused(tmp_path):
    real = _cache.make_private(tmp_path / "real")
    (tmp_path / "link").symlink_to(real)
    with pytest.raises(_cache.UnsafeCache, match="is not a plain folder"):
        _cache.check_folder(tmp_path / "link")


def test_one_variable_for_the_root_and_the_deprecated_alias(tmp_path, monkeypatch):
    monkeypatch.delenv("MEANFIELD_CACHE_DIR", raising=False)
    monkeypatch.setenv("MEANFIELD_CACHE", str(tmp_path / "old"))
    with pytest.warns(FutureWarning, match="MEANFIELD_CACHE is deprecated .* set MEANFIELD_CACHE_DIR instead"):
        assert _cache.cache_root() == tmp_path / "old"
    monkeypatch.setenv("MEANFIELD_CACHE_DIR", str(tmp_path / "new"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the new variable set: no warning, and it wins
        assert _cache.cache_root() == tmp_path / "new"
    monkeypatch.delenv("MEANFIELD_CACHE_DIR")
    monkeypatch.delenv("MEANFIELD_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert _cache.cache_root() == tmp_path / "xdg" / "meanfield"
