"""matmul_precision through solve_flow, the saved results, and meanfield.studies.precision's measurement."""

import numpy as np
import pytest

import meanfield
from meanfield.io.results import load_results, save_results
from meanfield.studies.precision import drive_errors
from meanfield.flow.driver import resolve_kernel
from solvers import Bilinear, Softmax
import meanfield as mf


def test_solve_flow_records_the_policy(tmp_path):
    x = np.random.default_rng(0).standard_normal((64, 16)).astype(np.float32)
    sols = {m: meanfield.solve_flow(x, kernel=mf.Softmax(2.0, matmul_precision=m), layers=2,
                                    save=mf.SaveAt(every=2), dtype="float32")
            for m in ("highest", "bf16")}
    assert sols["highest"].params["matmul_precision"] == "highest"
    assert sols["bf16"].params["matmul_precision"] == "bf16"
    assert sols["bf16"].params["attention"] == "streaming"  # CPU: auto -> streaming
    assert sols["bf16"].x.dtype == np.float32
    # the option is applied: bf16 inputs (u = 3.9e-3) move the tokens by far more than float32 round-off
    assert np.max(np.abs(sols["bf16"].x - sols["highest"].x)) > 1e-5
    save_results(tmp_path / "r.h5", sols["bf16"])
    assert load_results(tmp_path / "r.h5").params["matmul_precision"] == "bf16"


def test_solve_flow_bad_values():
    x = np.eye(4)
    with pytest.raises(ValueError, match="unknown matmul_precision 'half'"):
        meanfield.solve_flow(x, kernel=mf.Softmax(0.25, matmul_precision="half"), layers=1)
    # a kernel name with a precision (the CLI's --kernel/--matmul-precision) goes through resolve_kernel
    with pytest.raises(ValueError, match="set matmul_precision on it"):
        resolve_kernel(Softmax(1.0), None, "bf16")
    with pytest.raises(ValueError, match="no matmul_precision option"):
        resolve_kernel("bilinear", None, "bf16")
    assert resolve_kernel("softmax", 2.0, "tf32") == Softmax(2.0, matmul_precision="tf32")
    assert Bilinear(1.0).name == "bilinear"


def test_drive_errors_table():
    """The measurement behind docs/precision.md on a small case: ordered highest < tf32 < bf16."""
    rows = {r["mode"]: r for r in drive_errors(N=256, d=32, alphas=(1.0,))}
    assert rows["highest"]["rel_fro"] < 2e-6 < rows["tf32"]["rel_fro"] < rows["bf16"]["rel_fro"] < 6e-3


def test_cli_flag_is_recorded(tmp_path, capsys):
    import h5py

    from meanfield.simulate import cli

    out = tmp_path / "r.h5"
    argv = ["--N", "64", "--d", "16", "--kernel", "softmax", "--alpha", "1", "--layers", "2",
            "--matmul-precision", "bf16", "--out", str(out), "--no-plot", "--no-progress"]
    assert cli(argv) == 0
    with h5py.File(out) as f:
        assert f["parameters"].attrs["matmul_precision"] == "bf16"
        assert f["parameters"].attrs["attention"] == "streaming"


def test_checkpoint_fingerprint_keeps_older_checkpoints():
    """Default precision options leave the checkpoint fingerprint as it was before they existed
    (params without matmul_precision/attention); a fast mode changes it."""
    import hashlib
    import json

    from meanfield.flow.checkpoint import fingerprint
    from meanfield.flow.driver import make_spec

    x = np.random.default_rng(0).standard_normal((16, 4))
    spec = make_spec(x, kernel=mf.Softmax(1.0), layers=2)
    old = {k: v for k, v in spec.params().items() if k not in ("meanfield_version", "matmul_precision", "attention")}
    old["kernel_options"] = {k: v for k, v in old["kernel_options"].items() if k not in ("matmul_precision", "attention")}
    h = hashlib.sha256(json.dumps(old, sort_keys=True, default=str).encode())
    h.update(np.asarray(spec.save_steps, np.int64).tobytes())
    h.update(np.ascontiguousarray(spec.x0).tobytes())
    assert fingerprint(spec) == h.hexdigest()
    fast = make_spec(x, kernel=mf.Softmax(1.0, matmul_precision="bf16"), layers=2)
    assert fingerprint(fast) != fingerprint(spec)
