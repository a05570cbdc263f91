"""``meanfield-simulate --table FILE.csv|.json``: the per-layer table as data, equal to the HDF5 file's."""

import csv
import json

import numpy as np

import meanfield as mf
from meanfield import simulate


def test_table_csv_and_json_equal_the_results(tmp_path, capsys):
    base = ["--N", "1", "--layers", "3", "--no-progress", "--no-plot", "--precision", "float64"]
    assert simulate.cli(base + ["--out", str(tmp_path / "a.h5"), "--table", str(tmp_path / "a.csv")]) == 0
    assert simulate.cli(base + ["--out", str(tmp_path / "b.h5"), "--table", str(tmp_path / "b.json")]) == 0
    sol = mf.load_results(tmp_path / "a.h5")
    rows = list(csv.DictReader(open(tmp_path / "a.csv")))
    assert [int(r["layer"]) for r in rows] == sol.layers.tolist()
    # float64 values written with repr: exact round trip (NaN for the undefined H_norm of N = 1)
    np.testing.assert_array_equal([float(r["order_parameter"]) for r in rows], sol.diagnostics["order_parameter"])
    assert all(np.isnan(float(r["normalized_entropy"])) for r in rows)
    doc = json.loads((tmp_path / "b.json").read_text())  # strict JSON: NaN written as null
    assert doc["params"]["N"] == 1 and all(r["normalized_entropy"] is None for r in doc["rows"])
    assert simulate.cli(base + ["--out", str(tmp_path / "c.h5"), "--table", str(tmp_path / "c.txt")]) == 2
    assert "should end in .csv or .json" in capsys.readouterr().err
