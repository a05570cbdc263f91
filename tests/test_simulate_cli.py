"""``python -m meanfield.simulate``: the default run, and one-line exit-2 errors with no files."""

import os
import re
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from meanfield.simulate import cli

ROOT = Path(__file__).resolve().parents[1]


def test_default_run(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT), MPLBACKEND="Agg")
    r = subprocess.run([sys.executable, "-m", "meanfield.simulate", "--N", "10000", "--d", "4"], cwd=tmp_path,
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["layer", "t", "|m|", "eff.rank", "H_norm", "dH/dt"]
    assert len(lines) == 1 + 25 + 1  # header, layers 0..24, "wrote ..."
    with h5py.File(tmp_path / "meanfield_results.h5") as f:
        m = f["diagnostics/order_parameter"][()]
        assert f["parameters"].attrs["N"] == 10000 and f["parameters"].attrs["d"] == 4
    # the default run shows the whole collapse: |m| from ~N^{-1/2} to ~1
    assert m[0] < 5 / np.sqrt(10000) and m[-1] > 0.999
    assert (tmp_path / "meanfield_results.png").stat().st_size > 10_000
    assert "100%" in r.stderr  # the progress bar ran to the end
    # the run-time estimate (meanfield.flow.eta), printed once in the CLI, with a duration
    assert len(re.findall(r"estimated run time: [0-9.]+ (?:us|ms|s|min|h)\b", r.stderr)) == 1, r.stderr


BAD = [
    (["--N", "0"], "N must be an integer >= 1, got 0"),
    (["--d", "1"], "d must be an integer >= 2, got 1"),
    (["--alpha", "-1"], "alpha must be a finite number >= 0, got -1.0"),
    (["--alpha", "inf"], "alpha must be a finite number, got inf"),
    (["--merge", "0.5"], "merge must be a finite number >= 1, got 0.5"),
    (["--fusion", "1.0"], "fusion must be a finite number in [0, 1), got 1.0"),
    (["--merge", "2", "--fusion", "0.5"], "argument --fusion: not allowed with argument --merge"),
    (["--init", "vmf", "--kappa", "-2"], "kappa must be a finite number >= 0, got -2.0"),
    (["--kernel", "gauss"], "unknown kernel 'gauss'; expected one of: linear, softmax, usa"),
    (["--method", "rk9"], "unknown method 'rk9'"),
    (["--init", "cauchy"], "unknown init 'cauchy'"),
    (["--precision", "float16"], "unknown precision 'float16'"),
    (["--matmul-precision", "fp8"], "unknown matmul_precision 'fp8'; expected one of: highest, tf32, bf16"),
    (["--kernel", "softmax", "--causal", "--matmul-precision", "bf16"], "--matmul-precision tf32/bf16 needs"),
    (["--N", "ten"], "argument --N: invalid int value: 'ten'"),
    (["--t1", "1.5", "--dt", "1"], "t1 = 1.5 is not a whole number"),
]


@pytest.mark.parametrize("argv,msg", BAD)
def test_bad_input_exits_2_with_one_line(tmp_path, capsys, argv, msg):
    out = tmp_path / "res.h5"
    with pytest.raises(SystemExit) as e:
        sys.exit(cli([*argv, "--out", str(out), "--no-progress"]))
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("meanfield-simulate: error: ") and msg in err, err
    assert list(tmp_path.iterdir()) == []


def test_existing_output_is_kept(tmp_path, capsys):
    out = tmp_path / "res.h5"
    out.write_bytes(b"keep")
    assert cli(["--N", "50", "--layers", "2", "--out", str(out), "--no-progress"]) == 2
    assert "exists; pass --overwrite (CLI) or overwrite=True" in capsys.readouterr().err
    assert out.read_bytes() == b"keep" and sorted(p.name for p in tmp_path.iterdir()) == ["res.h5"]
    assert cli(["--N", "50", "--layers", "2", "--out", str(out), "--no-progress", "--overwrite"]) == 0
    assert h5py.is_hdf5(out) and (tmp_path / "res.png").exists()


def test_density_methods_from_the_cli(tmp_path, capsys):
    # the zonal solver via --cells; its table shows H instead of the attention spectrum
    out = tmp_path / "z.h5"
    argv = ["--method", "zonal", "--init", "vmf", "--kappa", "2", "--d", "8", "--cells", "64", "--layers", "4",
            "--dt", "0.25", "--out", str(out), "--no-progress", "--no-plot"]
    assert cli(argv) == 0
    head = capsys.readouterr().out.splitlines()[0].split()
    assert head == ["layer", "t", "|m|", "H", "dH/dt"]
    with h5py.File(out) as f:
        assert f["density/values"].shape == (5, 64) and f["parameters"].attrs["cells"] == 64
    assert cli(argv[:-4] + ["--cells", "3", "--out", str(tmp_path / "y.h5"), "--no-progress"]) == 2
    assert "cells must be an integer >= 4, got 3" in capsys.readouterr().err


@pytest.mark.parametrize("env, says", [({"MEANFIELD_NATIVE": "0"}, "disabled by MEANFIELD_NATIVE=0"), ({}, None)])
def test_cli_says_when_the_native_kernels_fall_back(tmp_path, env, says):
    """The default linear run takes the native step on a CPU; without it the CLI says why, once."""
    full = dict(os.environ, PYTHONPATH=str(ROOT), MPLBACKEND="Agg", **env)
    r = subprocess.run([sys.executable, "-m", "meanfield.simulate", "--N", "300", "--layers", "3", "--no-plot",
                        "--no-progress"], cwd=tmp_path, capture_output=True, text=True, env=full, timeout=300)
    assert r.returncode == 0, r.stderr
    lines = [line for line in r.stderr.splitlines() if "native CPU kernels" in line]
    if says is None:
        assert lines == []
    else:
        assert lines == [f"meanfield-simulate: the native CPU kernels are not available ({says}); running the "
                         "pure-JAX path"]


def test_header_names_the_token_merging(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli(["--N", "256", "--layers", "3", "--kernel", "softmax", "--merging", "tome-prop", "--merge-ratio",
                "0.5", "--no-progress", "--no-plot"]) == 0
    header = capsys.readouterr().err.splitlines()[0]
    assert header.startswith("meanfield-simulate: softmax/layer with tome-prop merging (m = 0.5), N=256")
