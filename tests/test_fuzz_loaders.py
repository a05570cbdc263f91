"""Fuzzing the three loaders (issue 12): damaged inputs give one ``ValueError``, never a crash or a hang.

The loaders are ``meanfield.load_results`` (results HDF5), ``meanfield.dump.format.read_dump`` (dump
HDF5) and ``meanfield.fit.cli.load_curve`` (fit CSV). Each property starts from a valid file and
mutates it (truncation, byte flips, random bytes, deleted objects and attributes, wrong dtypes and
shapes, NaN, declared sizes of 2^40 elements); the loader must either return (a harmless mutation)
or raise ``ValueError`` -- any other exception fails the test. ``MAX_EXAMPLES`` (500) per loader;
a declared 2^40-element dataset would need 8 TiB, so a pass also shows reads are size-checked.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import meanfield as mf
from meanfield.dump.format import read_dump, write_dump
from meanfield.fit.cli import load_curve

MAX_EXAMPLES = 500
SETTINGS = settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
                    suppress_health_check=list(HealthCheck))
WORK = Path(tempfile.mkdtemp(prefix="mf_fuzz_"))
atexit.register(shutil.rmtree, WORK, True)


def _valid_results() -> bytes:
    path = WORK / "valid_results.h5"
    if not path.exists():
        sol = mf.solve_flow(mf.Uniform(3), N=16, layers=3, dtype="float64", save=mf.SaveAt(tokens=True))
        mf.save_results(path, sol)
    return path.read_bytes()


def _valid_dump() -> bytes:
    path = WORK / "valid_dump.h5"
    if not path.exists():
        from tests.test_dump_format import make_dump

        write_dump(path, make_dump())
    return path.read_bytes()


VALID_CSV = b"# comment\nlayer,effective_rank,sigma\n0,4.0,0.1\n1,3.1,0.1\n2,2.5,0.1\n3,2.1,0.1\n4,1.9,0.1\n"

byte_mutation = st.one_of(
    st.tuples(st.just("truncate"), st.floats(0.0, 1.0)),
    st.tuples(st.just("flip"), st.lists(st.tuples(st.floats(0.0, 1.0), st.integers(0, 255)), min_size=1,
                                        max_size=8)),
    st.tuples(st.just("random"), st.binary(max_size=2048)),
    st.tuples(st.just("signature"), st.binary(max_size=512)),
)


def _mutate_bytes(data: bytes, m) -> bytes:
    kind, arg = m
    if kind == "truncate":
        return data[: int(arg * len(data))]
    if kind == "flip":
        b = bytearray(data)
        for pos, val in arg:
            b[min(int(pos * len(b)), len(b) - 1)] = val
        return bytes(b)
    if kind == "random":
        return arg
    return b"\x89HDF\r\n\x1a\n" + arg


structural = st.tuples(
    st.sampled_from(["delete", "delattr", "string", "shape", "nan", "huge", "attr_garbage"]),
    st.integers(0, 10_000),
)


def _objects(f):
    names = []
    f.visit(names.append)
    return names


def _mutate_hdf5(path: Path, m) -> None:
    kind, pick = m
    with h5py.File(path, "r+") as f:
        names = _objects(f)
        name = names[pick % len(names)]
        obj = f[name]
        if kind == "delete":
            del f[name]
        elif kind in ("delattr", "attr_garbage"):
            holder = [f, obj][pick % 2]
            keys = list(holder.attrs)
            if keys:
                key = keys[pick % len(keys)]
                if kind == "delattr":
                    del holder.attrs[key]
                else:
                    holder.attrs[key] = ["{not json", np.arange(3), -(2**62), "null"][pick % 4]
        elif isinstance(obj, h5py.Dataset):
            del f[name]
            if kind == "string":
                f.create_dataset(name, data=np.array([b"abc", b"de"]))
            elif kind == "shape":
                f.create_dataset(name, data=np.zeros((3, 2, 2)))
            elif kind == "nan":
                f.create_dataset(name, data=np.full((4,), np.nan))
            else:
                f.create_dataset(name, shape=(2**40,), dtype="f8", chunks=(1024,))


def _check(loader, path):
    try:
        loader(path)
    except ValueError as e:
        assert str(e) and "\n" not in str(e)  # one line


def _fuzz_hdf5(loader, valid: bytes, mutation, name):
    path = WORK / name
    if mutation[0] in ("truncate", "flip", "random", "signature"):
        path.write_bytes(_mutate_bytes(valid, mutation))
    else:
        path.write_bytes(valid)
        _mutate_hdf5(path, mutation)
    _check(loader, path)


@SETTINGS
@given(st.one_of(byte_mutation, structural))
def test_results_loader_fuzzed(mutation):
    _fuzz_hdf5(mf.load_results, _valid_results(), mutation, "fuzz_results.h5")


@SETTINGS
@given(st.one_of(byte_mutation, structural))
def test_dump_loader_fuzzed(mutation):
    _fuzz_hdf5(read_dump, _valid_dump(), mutation, "fuzz_dump.h5")


csv_mutation = st.one_of(
    byte_mutation,
    st.tuples(st.just("text"), st.text(max_size=300)),
    st.tuples(st.just("cell"), st.tuples(st.integers(0, 100), st.sampled_from(
        ["nan", "inf", "", "1e999", "x", "\x00", "-0", '"', "1,2", " ", "0x10"]))),
)


@SETTINGS
@given(csv_mutation)
def test_fit_csv_loader_fuzzed(mutation):
    path = WORK / "fuzz.csv"
    if mutation[0] == "text":
        path.write_bytes(mutation[1].encode("utf-8", errors="replace"))
    elif mutation[0] == "cell":
        pos, val = mutation[1]
        cells = VALID_CSV.decode().split(",")
        cells[pos % len(cells)] = val
        path.write_bytes(",".join(cells).encode("utf-8", errors="replace"))
    else:
        path.write_bytes(_mutate_bytes(VALID_CSV, mutation))
    _check(load_curve, str(path))


@pytest.mark.parametrize("loader, valid", [(mf.load_results, _valid_results), (read_dump, _valid_dump)])
def test_declared_huge_dataset_is_refused_without_reading(loader, valid):
    path = WORK / "huge.h5"
    path.write_bytes(valid())
    with h5py.File(path, "r+") as f:
        name = "diagnostics/order_parameter" if loader is mf.load_results else "summary/effective_rank"
        del f[name]
        f.create_dataset(name, shape=(2**40,), dtype="f8", chunks=(1024,))
    with pytest.raises(ValueError, match="more than this loader reads"):
        loader(path)
