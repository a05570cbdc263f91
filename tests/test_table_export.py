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


def test_table_csv_is_fitted_as_is_with_its_N(tmp_path, monkeypatch, capsys):
    """A --table CSV carries N and merge: meanfield-fit takes it without --N, with the run's N."""
    from meanfield.fit import cli as fit_cli

    monkeypatch.chdir(tmp_path)
    base = ["--N", "500", "--layers", "12", "--no-progress", "--no-plot", "--merge", "2", "--kernel", "softmax",
            "--alpha", "2"]
    assert simulate.cli(base + ["--table", "run.csv"]) == 0
    rows = list(csv.DictReader(open(tmp_path / "run.csv")))
    assert {r["N"] for r in rows} == {"500"} and {float(r["merge"]) for r in rows} == {2.0}
    capsys.readouterr()
    assert fit_cli.cli(["run.csv", "--no-plot"]) == 0
    assert "N = 500, merge = 2" in capsys.readouterr().out
    (tmp_path / "plain.csv").write_text("layer,effective_rank\n0,5\n1,4\n2,3.5\n3,3.2\n")
    assert fit_cli.cli(["plain.csv", "--no-plot"]) == 2
    assert "pass --N" in capsys.readouterr().err
    (tmp_path / "mixed.csv").write_text("layer,effective_rank,N\n0,5,10\n1,4,11\n2,3.5,10\n")
    assert fit_cli.cli(["mixed.csv", "--no-plot"]) == 2
    assert "same in every row" in capsys.readouterr().err


def test_fit_default_figure_goes_to_the_working_folder(tmp_path, monkeypatch):
    from meanfield.fit import cli as fit_cli

    data = tmp_path / "data"
    data.mkdir()
    (data / "curve.csv").write_text("layer,effective_rank,N\n" + "".join(
        f"{i},{1 + 9 * np.exp(-0.5 * i):.6f},100\n" for i in range(8)))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    assert fit_cli.cli([str(data / "curve.csv")]) == 0
    assert [p.name for p in work.iterdir()] == ["curve_fit.png"] and sorted(p.name for p in data.iterdir()) == ["curve.csv"]
