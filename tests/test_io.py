"""Results files: round trip, atomic writes, refusal to overwrite, clear errors on foreign files."""

import h5py
import numpy as np
import pytest

import meanfield as mf


@pytest.fixture(scope="module")
def sol():
    return mf.solve_flow(mf.VonMisesFisher(3, 2.0), N=300, layers=5, kernel=mf.Softmax(2.0), save=mf.SaveAt(tokens=True))


def test_round_trip(tmp_path, sol):
    path = tmp_path / "r.h5"
    mf.save_results(path, sol)
    back = mf.load_results(path)
    np.testing.assert_array_equal(back.t, sol.t)
    np.testing.assert_array_equal(back.layers, sol.layers)
    np.testing.assert_array_equal(back.x, sol.x)
    np.testing.assert_array_equal(back.snapshots, sol.snapshots)
    np.testing.assert_array_equal(back.query_indices, sol.query_indices)
    assert set(back.diagnostics) == set(sol.diagnostics)
    for k in sol.diagnostics:
        np.testing.assert_array_equal(back.diagnostics[k], sol.diagnostics[k])
    assert back.params == sol.params
    with h5py.File(path) as f:
        assert f.attrs["format"] == "meanfield-results" and f.attrs["format_version"] == 2
        ds = f["diagnostics/order_parameter"]
        assert [s.name for s in ds.dims[0].values()] == ["/scales/t", "/scales/layer"]


def test_no_overwrite_and_no_leftovers(tmp_path, sol):
    path = tmp_path / "r.h5"
    path.write_bytes(b"precious")
    with pytest.raises(FileExistsError, match=r"exists; pass --overwrite \(CLI\) or overwrite=True"):
        mf.save_results(path, sol)
    assert path.read_bytes() == b"precious"
    mf.save_results(path, sol, overwrite=True)
    assert mf.load_results(path).params["kernel"] == "softmax"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.h5"]  # no temporary files left


def test_interrupted_write_leaves_nothing(tmp_path, sol, monkeypatch):
    path = tmp_path / "r.h5"

    class Boom(RuntimeError):
        pass

    def explode(*a, **k):
        raise Boom()

    monkeypatch.setattr(h5py.Group, "create_group", explode)
    with pytest.raises(Boom):
        mf.save_results(path, sol)
    assert list(tmp_path.iterdir()) == []


def test_foreign_files(tmp_path):
    with pytest.raises(ValueError, match="no such results file"):
        mf.load_results(tmp_path / "missing.h5")
    txt = tmp_path / "a.h5"
    txt.write_text("not hdf5")
    with pytest.raises(ValueError, match="not a readable HDF5 file"):
        mf.load_results(txt)
    other = tmp_path / "b.h5"
    with h5py.File(other, "w") as f:
        f.attrs["format"] = "something-else"
    with pytest.raises(ValueError, match="not a meanfield results file"):
        mf.load_results(other)


def test_attribute_helper_conventions():
    """meanfield.io.hdf5: the results convention (defaults) and the dump convention (keywords)."""
    from meanfield.io.hdf5 import decode_attr, encode_attr, read_attrs

    # results: None <-> "null", nested values as JSON detected on reading
    assert encode_attr(None) == "null" and decode_attr("null") is None and decode_attr(b"null") is None
    assert encode_attr({"b": [1, 2], "a": None}) == '{"b": [1, 2], "a": null}'
    assert decode_attr('{"b": [1, 2], "a": null}') == {"b": [1, 2], "a": None}
    assert decode_attr("[not json") == "[not json" and decode_attr("") == ""
    assert decode_attr(np.float32(0.5)) == 0.5 and type(decode_attr(np.int64(3))) is int
    assert type(decode_attr(np.bool_(True))) is bool and decode_attr(b"text") == "text"
    arr = np.arange(3)
    assert encode_attr(arr) is arr and decode_attr(arr) is arr
    # dumps: None <-> "", sorted JSON, only named keys parsed
    assert encode_attr(None, none="") == ""
    assert encode_attr({"b": 1, "a": 2}, as_json=True, sort_keys=True) == '{"a": 2, "b": 1}'
    assert encode_attr(None, as_json=True) == "null"
    assert decode_attr("null", parse_json=False, null=None) == "null"
    assert decode_attr("[1]", parse_json=False, null=None) == "[1]"
    with pytest.raises(ValueError):
        decode_attr("{bad", parse_json=True)
    attrs = {"merge": b'{"M": 2}', "name": "[x]", "n": np.int64(4)}
    assert read_attrs(attrs, json_keys=("merge",), null=None) == {"merge": {"M": 2}, "name": "[x]", "n": 4}
    assert read_attrs(attrs) == {"merge": {"M": 2}, "name": "[x]", "n": 4}


def test_results_parameters_with_none_and_nested_values(tmp_path, sol):
    """Parameters that are None or nested survive a round trip exactly as before ("null", JSON)."""
    import dataclasses

    params = {**sol.params, "extra_none": None, "extra_nested": {"a": [1, 2.5], "b": "x"}}
    s2 = dataclasses.replace(sol, params=params)
    path = tmp_path / "p.h5"
    mf.save_results(path, s2)
    with h5py.File(path) as f:
        assert f["parameters"].attrs["extra_none"] == "null"
        assert f["parameters"].attrs["extra_nested"] == '{"a": [1, 2.5], "b": "x"}'
    assert mf.load_results(path).params == params
