"""Loaders stay inside the file (issue 20, point 2): every HDF5 reader refuses external links,
soft links that do not resolve inside the file, external storage and virtual datasets, with one
``ValueError`` naming the file and the dataset (``meanfield.io.hdf5.check_contained``)."""

import os
import shutil
import subprocess
import sys

import h5py
import numpy as np
import pytest

import meanfield as mf
from meanfield.dump import read_dump, validate_dump
from meanfield.fit.cli import load_curve
from meanfield.flow import checkpoint

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIPPED_DUMP = os.path.join(HERE, "examples", "data", "minilm_dump.h5")
SECRET = np.arange(1000, 1000 + 64, dtype=np.float64)  # the "arbitrary file" a hostile file points at
VARIANTS = ["external_storage", "external_link", "dangling_soft_link", "escaping_soft_link", "soft_link_chain",
            "cyclic_soft_link", "virtual"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("contain")
    sol = mf.solve_flow(mf.Uniform(3), N=64, layers=2, dtype="float64", save=mf.SaveAt(tokens=True))
    results = mf.save_results(d / "results.h5", sol)
    ck = d / "ck.h5"
    mf.solve_flow(mf.Uniform(3), N=50, layers=4, checkpoint=mf.Checkpoint(ck, every=1))
    (d / "secret.bin").write_bytes(SECRET.tobytes())
    with h5py.File(d / "other.h5", "w") as f:
        f["data"] = SECRET
    return {"dir": d, "results": str(results), "checkpoint": str(ck), "dump": SHIPPED_DUMP}


def _variant(files, src, name, kind, tmp_path):
    """A copy of ``src`` whose dataset ``/name`` is replaced by ``kind``."""
    d = files["dir"]
    out = tmp_path / f"{kind}.h5"
    shutil.copy(src, out)
    with h5py.File(out, "r+") as f:
        old = f[name]
        shape, dtype = old.shape, old.dtype
        del f[name]
        n = SECRET.size
        if kind == "external_storage":
            f.create_dataset(name, shape=(n,), dtype="f8", external=[(str(d / "secret.bin"), 0, h5py.h5f.UNLIMITED)])
        elif kind == "external_link":
            f[name] = h5py.ExternalLink(str(d / "other.h5"), "/data")
        elif kind == "dangling_soft_link":
            f[name] = h5py.SoftLink("/nowhere/data")
        elif kind == "escaping_soft_link":
            f[name] = h5py.SoftLink("../../etc/data")
        elif kind == "soft_link_chain":  # to a link that exists but dangles (``in`` alone would say yes)
            f[name] = h5py.SoftLink("/zzz_chain")
            f["zzz_chain"] = h5py.SoftLink("/missing")
        elif kind == "cyclic_soft_link":
            f[name] = h5py.SoftLink("/" + name)
        elif kind == "virtual":
            layout = h5py.VirtualLayout(shape=(n,), dtype="f8")
            layout[:] = h5py.VirtualSource(str(d / "other.h5"), "data", shape=(n,))
            f.create_virtual_dataset(name, layout)
        elif kind == "oversized":  # uncompressed, declared 8 MB, never written: more than the file holds
            f.create_dataset(name, shape=(2**20,) + tuple(shape[1:]), dtype=dtype)
    return out


def test_plain_h5py_would_read_the_outside_bytes(files, tmp_path):
    """The hostile variants are real: h5py itself returns the other file's bytes (what the readers must not)."""
    for kind in ("external_storage", "external_link", "virtual"):
        bad = _variant(files, files["results"], "scales/t", kind, tmp_path)
        with h5py.File(bad, "r") as f:
            np.testing.assert_array_equal(f["scales/t"][()], SECRET)


@pytest.mark.parametrize("kind", VARIANTS)
def test_load_results_refuses(files, tmp_path, kind):
    bad = _variant(files, files["results"], "scales/t", kind, tmp_path)
    with pytest.raises(ValueError) as e:
        mf.load_results(bad)
    msg = str(e.value)
    assert "\n" not in msg and str(bad) in msg and "/scales/t" in msg
    with pytest.raises(ValueError, match="/scales/t"):  # the fit reader opens results files too
        load_curve(str(bad))


@pytest.mark.parametrize("kind", VARIANTS)
def test_read_dump_refuses(files, tmp_path, kind):
    bad = _variant(files, files["dump"], "summary/effective_rank", kind, tmp_path)
    for reader in (read_dump, validate_dump):
        with pytest.raises(ValueError) as e:
            reader(str(bad))
        msg = str(e.value)
        assert "\n" not in msg and str(bad) in msg and "/summary/effective_rank" in msg


@pytest.mark.parametrize("kind", VARIANTS)
def test_checkpoint_load_refuses(files, tmp_path, kind):
    with h5py.File(files["checkpoint"], "r") as f:
        name = "arrays/" + sorted(f["arrays"])[0]
    bad = _variant(files, files["checkpoint"], name, kind, tmp_path)
    with pytest.raises(ValueError) as e:
        checkpoint.load(bad)
    msg = str(e.value)
    assert "\n" not in msg and str(bad) in msg and f"/{name}" in msg


def test_declared_size_beyond_the_file_is_refused(files, tmp_path):
    bad = _variant(files, files["results"], "tokens/final", "oversized", tmp_path)
    with pytest.raises(ValueError, match=r"/tokens/final declares shape .*more than this loader reads: the whole file holds"):
        mf.load_results(bad)


def test_internal_soft_link_is_accepted(files, tmp_path):
    """Containment does not refuse what stays inside: a soft link to an existing dataset loads."""
    ok = tmp_path / "alias.h5"
    shutil.copy(files["results"], ok)
    with h5py.File(ok, "r+") as f:
        f["diagnostics_alias"] = h5py.SoftLink("/scales/t")
        f["scales/t_rel"] = h5py.SoftLink("layer")  # relative, resolves to /scales/layer
    ref, got = mf.load_results(files["results"]), mf.load_results(ok)
    np.testing.assert_array_equal(got.t, ref.t)
    np.testing.assert_array_equal(got.x, ref.x)


def test_compare_cli_refuses_with_one_line(files, tmp_path):
    bad = _variant(files, files["dump"], "summary/effective_rank", "external_storage", tmp_path)
    env = dict(os.environ, PYTHONPATH=HERE + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-m", "meanfield.compare", str(bad), "--no-replay"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, check=False)  # fmt: skip
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("meanfield-compare: error:")
    assert "/summary/effective_rank" in lines[0] and "external storage" in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["external_storage.h5"]  # no output files
