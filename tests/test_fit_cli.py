"""``python -m meanfield.fit``: CSV, results HDF5 and dump HDF5 inputs; bad inputs exit 2 with one
line and no PNG.  Mostly in-process (``meanfield.fit.cli.main``) so compiled fits are shared; one subprocess
run checks the ``-m`` entry point."""

import os
import re
import subprocess
import sys

import h5py
import jax
import numpy as np
import pytest

from meanfield.fit import cli as fit_cli

jax.config.update("jax_enable_x64", True)  # tests only

ALPHA, C, R, N = 20.0, 30.0, 2.0, 100.0
LAYERS = np.arange(24.0)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def noisy_rank(seed=0):
    return R + C * np.exp(-ALPHA * LAYERS / N) + np.random.default_rng(seed).normal(0, 0.5, LAYERS.size)


def write_csv(path, header, rows):
    with open(path, "w") as fh:
        fh.write("# synthetic test data\n" + ",".join(header) + "\n")
        fh.writelines(",".join(str(v) for v in row) + "\n" for row in rows)
    return str(path)


def parse_interval(out, name):
    m = re.search(rf"^\s+{name}\s+(\S+)\s+\S+\s+\[\s*(\S+),\s*(\S+)\]", out, re.M)
    assert m, out
    return tuple(float(v) for v in m.groups())


def test_csv_rank_curve_prints_intervals_and_writes_png(tmp_path, capsys):
    data = write_csv(tmp_path / "rank.csv", ["layer", "effective_rank"], zip(LAYERS, noisy_rank()))
    out = tmp_path / "rank.png"
    assert fit_cli.main([data, "--N", str(N), "--optimizer", "lm", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    est, lo, hi = parse_interval(text, "alpha")
    assert lo <= ALPHA <= hi and lo < est < hi
    assert "model comparison" in text and "power_law" in text
    assert out.read_bytes()[:8] == PNG_MAGIC
    assert [p.name for p in tmp_path.iterdir() if p.suffix not in (".csv",)] == ["rank.png"]  # no temp left


def test_csv_entropy_vs_fusion_with_sigma(tmp_path, capsys):
    m = np.array([0.1, 0.3, 0.5, 0.7, 0.9])
    H = 0.9 - 0.18 * (1 - m) + np.array([1, -1, 0.5, -0.5, 0.0]) * 0.002
    data = write_csv(tmp_path / "h.csv", ["m", "normalized_entropy", "sigma"],
                     zip(m, H, np.full(5, 0.002)))
    assert fit_cli.main([data, "--optimizer", "lm", "--no-plot"]) == 0
    text = capsys.readouterr().out
    est, lo, hi = parse_interval(text, "kappa")
    assert lo <= 0.18 <= hi
    assert not list(tmp_path.glob("*.png"))


def write_results(path, layers, rank, N_attr=N, fmt="meanfield-results"):
    with h5py.File(path, "w") as f:
        f.attrs["format"] = fmt
        f.attrs["format_version"] = 1
        p = f.create_group("parameters")
        p.attrs["N"] = N_attr
        p.attrs["merge"] = 1.0
        f.create_dataset("scales/layer", data=layers)
        f.create_dataset("scales/t", data=layers.astype(float))
        f.create_dataset("diagnostics/effective_rank", data=rank)
        f.create_dataset("diagnostics/normalized_entropy", data=np.log(rank) / np.log(64))
    return str(path)


def test_results_hdf5_uses_file_N(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default figure lands in the working folder
    data = write_results(tmp_path / "run.h5", LAYERS.astype(np.int64), noisy_rank(1))
    assert fit_cli.main([data, "--optimizer", "lm"]) == 0
    text = capsys.readouterr().out
    assert "N = 100" in text
    est, lo, hi = parse_interval(text, "alpha")
    assert lo <= ALPHA <= hi
    assert (tmp_path / "run_fit.png").read_bytes()[:8] == PNG_MAGIC


def test_dump_hdf5(tmp_path, capsys):
    path = tmp_path / "dump.h5"
    with h5py.File(path, "w") as f:
        f.attrs["format"] = "meanfield-dump"
        s = f.create_group("summary")
        s.attrs["N"] = N
        s.attrs["n_query"] = 64
        s.create_dataset("layer", data=LAYERS)
        s.create_dataset("effective_rank", data=noisy_rank(2))
        s.create_dataset("normalized_entropy", data=np.log(noisy_rank(2)) / np.log(64))
    assert fit_cli.main([str(path), "--optimizer", "lm", "--no-plot"]) == 0
    est, lo, hi = parse_interval(capsys.readouterr().out, "alpha")
    assert lo <= ALPHA <= hi


def _bad_inputs(tmp_path):
    yield "missing", [str(tmp_path / "nope.csv")], "no such file"
    yield "column", [write_csv(tmp_path / "c.csv", ["layer", "rank"], [(0, 1), (1, 2)])], "no column"
    yield "nan", [write_csv(tmp_path / "n.csv", ["layer", "effective_rank"],
                            [(0, 5), (1, "nan"), (2, 3), (3, 2)]), "--N", "10"], "NaN"
    yield "few", [write_csv(tmp_path / "f.csv", ["layer", "effective_rank"], [(0, 5), (1, 3)]),
                  "--N", "10"], "cannot determine"
    yield "order", [write_csv(tmp_path / "o.csv", ["layer", "effective_rank"],
                              [(0, 5), (2, 3), (1, 4), (3, 2)]), "--N", "10"], "strictly increasing"
    yield "noN", [write_csv(tmp_path / "k.csv", ["layer", "effective_rank"],
                            [(0, 5), (1, 3), (2, 2.5), (3, 2)])], "pass --N"
    yield "format", [write_results(tmp_path / "u.h5", LAYERS, noisy_rank(), fmt="other")], "unknown HDF5 format"
    yield "option", [str(tmp_path / "x.csv"), "--quantity", "bogus"], "invalid choice"


@pytest.mark.parametrize("case", ["missing", "column", "nan", "few", "order", "noN", "format", "option"])
def test_bad_inputs_exit_2_with_one_line_and_no_png(tmp_path, capsys, case):
    argv, needle = {name: (a, n) for name, a, n in _bad_inputs(tmp_path)}[case]
    with pytest.raises(SystemExit) as exc:
        fit_cli.main(argv + ["--optimizer", "lm"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("meanfield-fit: error: ") and needle in err, err
    assert not list(tmp_path.glob("*.png"))


def test_python_dash_m_entry_point(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run([sys.executable, "-m", "meanfield.fit", str(tmp_path / "none.csv")],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("meanfield-fit: error: no such file"), proc.stderr
    assert "Traceback" not in proc.stderr
