"""Dump format: round trip, validator messages, and statistics shared with the simulations.

No torch needed: the dump is filled through :class:`meanfield.dump.stats.Recorder` with NumPy
q/k arrays, exactly as the adapters fill it with torch tensors.
"""

import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from meanfield.stats import diagnostics
from meanfield.dump import FORMAT, read_dump, validate_dump, write_dump
from meanfield.dump.stats import (
    Recorder,
    attention_block_statistics,
    build_dump,
    token_block_statistics,
)
from solvers.kernels import Softmax

L, H, N, DH, C = 3, 2, 40, 4, 8


def make_dump(seed=0):
    rng = np.random.default_rng(seed)
    idx = diagnostics.query_subset(N, 12, seed=5)
    rec = Recorder(idx, 0.5, sample_indices=np.arange(0, N, 4), sample_layers=[0, 2], dtype=np.float64)
    for layer in range(L):
        rec.attention(layer, rng.normal(size=(1, H, N, DH)), rng.normal(size=(1, H, N, DH)))
        rec.block_input(layer, rng.normal(size=(1, N, C)) + layer)
    rec.qk_dtype = "float64"
    meta = {"model_id": "synthetic", "checkpoint_hash": "sha256:0", "adapter": "test", "library_versions": {"x": "1"},
            "qk_dtype": "float64", "softmax_scale": 0.5, "S": 2, "P": N // 2, "N": N, "patch_start_idx": 5,
            "num_heads": H, "head_dim": DH, "d_model": C, "query_seed": 5, "merge": {"M": 1.0},
            "input_kind": "images"}  # fmt: skip
    frame, pos = idx // (N // 2), idx % (N // 2)
    kind = np.where(pos == 0, 0, np.where(pos < 5, 1, 2))
    return build_dump(rec, meta, idx, frame, pos, kind, ["camera", "register", "patch"],
                      sample_indices=np.arange(0, N, 4), input_images=["a.png", "b.png"])  # fmt: skip


@pytest.fixture(scope="module")
def dump_file(tmp_path_factory):
    return write_dump(tmp_path_factory.mktemp("d") / "dump.h5", make_dump())


def test_roundtrip(dump_file):
    d, back = make_dump(), read_dump(dump_file)
    np.testing.assert_array_equal(back.layers, [0, 1, 2])
    np.testing.assert_array_equal(back.query_indices, d.query_indices)
    for name, value in d.attention.items():  # float32 storage: 1e-6 relative
        np.testing.assert_allclose(back.attention[name], value, rtol=1e-6, err_msg=name)
    for name, value in d.tokens.items():
        np.testing.assert_allclose(back.tokens[name], value, rtol=1e-12, err_msg=name)
    assert back.sample.dtype == np.float16 and back.sample.shape == (2, 10, C)
    np.testing.assert_array_equal(back.sample_layers, [0, 2])
    assert back.meta["merge"] == {"M": 1.0} and back.meta["library_versions"] == {"x": "1"}
    assert back.input_images == ["a.png", "b.png"] and back.token_type_names == ["camera", "register", "patch"]
    with h5py.File(dump_file, "r") as f:  # what the fit CLI reads
        assert f.attrs["format"] == FORMAT and f["summary"].attrs["N"] == N and f["summary"].attrs["n_query"] == 12
        assert f["attention/row_entropy"].compression == "gzip" and f["attention/row_entropy"].chunks
        assert f["attention/head_singular_values"].dims[0][0].name == "/summary/layer"


def test_write_refuses_to_overwrite_and_is_atomic(dump_file, tmp_path):
    with pytest.raises(FileExistsError):
        write_dump(dump_file, make_dump())
    bad = make_dump()
    bad.attention["max_weight"][0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="attention/max_weight contains NaN"):
        write_dump(tmp_path / "x.h5", bad)
    assert list(tmp_path.iterdir()) == []  # nothing left behind, not even a temporary file


def _copy(src, dst, edit):
    import shutil

    shutil.copy(src, dst)
    with h5py.File(dst, "a") as f:
        edit(f)
    return dst


def _nan(f):
    data = f["summary/effective_rank"][()]
    data[1] = np.nan
    f["summary/effective_rank"][...] = data


def _reshape(f):
    del f["attention/logit_std"]
    f.create_dataset("attention/logit_std", data=np.zeros((L, H, 11)))


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda f: f.__delitem__("tokens"), "missing group /tokens"),
        (lambda f: f.__delitem__("attention/row_entropy"), "missing dataset /attention/row_entropy"),
        (_reshape, r"/attention/logit_std has shape \(3, 2, 11\), expected \(3, 2, 12\)"),
        (_nan, "/summary/effective_rank contains NaN"),
        (lambda f: f.attrs.__setitem__("format", "meanfield-results"), "not a meanfield dump"),
        (lambda f: f.attrs.__setitem__("format_version", 7), "unsupported format_version 7"),
        (lambda f: f.attrs.__delitem__("checkpoint_hash"), "missing root attribute 'checkpoint_hash'"),
        (lambda f: f["summary"].attrs.__setitem__("N", 3), "disagree with root N=40"),
    ],
)
def test_validator_names_the_problem(dump_file, tmp_path, edit, message):
    path = _copy(dump_file, tmp_path / "bad.h5", edit)
    with pytest.raises(ValueError, match=message) as info:
        validate_dump(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_validator_truncated_and_foreign(dump_file, tmp_path):
    data = Path(dump_file).read_bytes()
    (tmp_path / "cut.h5").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated or corrupt|cannot read"):
        validate_dump(tmp_path / "cut.h5")
    (tmp_path / "text.h5").write_text("hello")
    with pytest.raises(ValueError, match="not a readable HDF5 file"):
        validate_dump(tmp_path / "text.h5")
    with pytest.raises(ValueError, match="no such file"):
        validate_dump(tmp_path / "missing.h5")


def test_statistics_are_the_simulation_diagnostics():
    """Same function, same numbers: a dump of q = k = x equals a simulation's saved diagnostics."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(50, 6))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    idx, alpha = diagnostics.query_subset(50, 20, seed=2), 3.0
    kernel = Softmax(alpha=alpha)
    sim = diagnostics.simulation_diagnostics(kernel, x, idx)
    direct = diagnostics.attention_statistics(kernel, x[idx], x)
    dumped = attention_block_statistics(x[None], x[None], alpha, idx, dtype=np.float64)
    # identical code path up to jit/vmap fusion: agreement to a few ulps of float64
    np.testing.assert_allclose(dumped["head_singular_values"][0], direct["singular_values"], rtol=1e-12, atol=1e-14)
    assert dumped["head_effective_rank"][0] == pytest.approx(float(sim["effective_rank"]), rel=1e-12)
    assert dumped["head_normalized_entropy"][0] == pytest.approx(float(sim["normalized_entropy"]), rel=1e-12)
    for name in ("row_entropy", "max_weight", "logit_mean", "logit_std"):
        assert np.mean(dumped[name][0]) == pytest.approx(float(sim[name]), rel=1e-12), name
    # with one head, the head mean is that head
    np.testing.assert_allclose(dumped["mean_singular_values"], direct["singular_values"], rtol=1e-10, atol=1e-13)
    tok = token_block_statistics(3.0 * x, dtype=np.float64)  # raw (unnormalized) features: rows normalized inside
    for name, value in diagnostics.token_statistics(x).items():
        assert tok[name] == pytest.approx(float(value), rel=1e-12), name
    assert tok["order_parameter"] == pytest.approx(float(sim["order_parameter"]), rel=1e-12)


def test_import_meanfield_does_not_import_torch():
    code = "import sys, meanfield, meanfield.dump, meanfield.compare.cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_fit_cli_reads_the_summary(dump_file):
    """The fit tool's reader (another module) takes layer, rank, N and M from /summary."""
    from meanfield.fit.cli import load_curve

    xname, x, y, sigma, quantity, meta = load_curve(dump_file)
    d = make_dump()
    assert (xname, quantity, sigma) == ("layer", "effective_rank", None)
    np.testing.assert_array_equal(x, [0, 1, 2])
    np.testing.assert_allclose(y, d.attention["effective_rank"], rtol=1e-12)
    assert meta == {"N": 40.0, "merge": 1.0}


def test_shipped_dump_attributes_read_as_before():
    """examples/data/minilm_dump.h5 (written before the shared attribute helper): every root
    attribute reads back as the original rules give it (JSON for JSON_ATTRS, bytes to str, NumPy
    scalars to Python, "" kept as ""), and the fit reader takes N and M from it."""
    import json

    from meanfield.dump.format import JSON_ATTRS
    from meanfield.fit.cli import load_curve

    path = Path(__file__).resolve().parents[1] / "examples" / "data" / "minilm_dump.h5"
    with h5py.File(path, "r") as f:
        raw = dict(f.attrs)
        names = json.loads(f["query/token_type"].attrs["names"])
    expected = {}
    for k, v in raw.items():
        v = v.decode() if isinstance(v, bytes) else v
        v = json.loads(v) if k in JSON_ATTRS and isinstance(v, str) else v
        expected[k] = v.item() if isinstance(v, np.generic) else v
    d = read_dump(path)
    skip = {"format", "format_version"}
    assert d.meta == {k: v for k, v in expected.items() if k not in skip}
    assert all(type(d.meta[k]) is type(expected[k]) for k in d.meta)
    assert d.token_type_names == names
    assert load_curve(str(path))[5] == {"N": float(expected["N"]), "merge": 1.0}


def test_fit_reader_detects_hdf5_by_signature(dump_file, tmp_path):
    """A dump renamed to .csv is still read as HDF5; a CSV named .h5 is read as CSV."""
    import shutil

    from meanfield.fit.cli import load_curve

    renamed = shutil.copy(dump_file, tmp_path / "dump.csv")
    assert load_curve(str(renamed))[5] == {"N": 40.0, "merge": 1.0}
    text = tmp_path / "curve.h5"
    text.write_text("layer,effective_rank\n0,5\n1,4\n2,3\n")
    xname, x, y, *_ = load_curve(str(text))
    assert xname == "layer" and list(y) == [5.0, 4.0, 3.0]
