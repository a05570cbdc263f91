"""``meanfield.compare.cli`` on the shipped MiniLM dump: measured curves, fits, replay, outputs, errors."""

import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from meanfield.compare import cli as compare
from meanfield.dump import read_dump

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIPPED = os.path.join(HERE, "examples", "data", "minilm_dump.h5")


@pytest.fixture(scope="module")
def dump():
    return read_dump(SHIPPED)


def test_explained_fraction_definition():
    meas = np.array([1.0, 2.0, 4.0])
    assert compare.explained_fraction(meas + 5.0, meas) == 1.0  # same changes, offset start
    assert compare.explained_fraction(np.zeros(3), meas) == 0.0  # "nothing changes"
    # changes (1, 3) predicted as (1, 2): 1 - 1/(1 + 9)
    assert compare.explained_fraction([0.0, 1.0, 2.0], meas) == pytest.approx(0.9)
    assert np.isnan(compare.explained_fraction([0.0, 1.0], [2.0, 2.0]))


def test_replay_tokens_and_pca(dump):
    x = compare.replay_tokens(dump)
    assert x.shape == (314, 384)
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-12)
    xp = compare.replay_tokens(dump, pca=8)
    assert xp.shape == (314, 8)
    np.testing.assert_allclose(np.linalg.norm(xp, axis=1), 1.0, atol=1e-12)
    with pytest.raises(ValueError, match="--pca must lie in"):
        compare.replay_tokens(dump, pca=1)


def test_replay_fit_recovers_known_parameters(dump):
    """|m| curves simulated with a grid point (alpha, dt) are fitted back to that very point."""
    from meanfield.studies.batch import simulate_batch

    x0 = compare.replay_tokens(dump, pca=16)
    steps = np.arange(6)
    m = np.asarray(simulate_batch(x0[None], kernel="softmax", alpha=4.0, dt=0.3, layers=5)["order_parameter"])[0]
    alpha, dt, loss = compare.fit_replay(x0, steps, m, alphas=np.array([1.0, 4.0, 16.0]), dts=np.array([0.1, 0.3]))
    assert (alpha, dt) == (4.0, 0.3) and loss.shape == (3, 2)
    assert loss[1, 1] < 1e-10 < np.min(np.delete(loss.ravel(), 3))


def test_cli_writes_table_png_and_h5(dump, tmp_path, capsys):
    prefix = str(tmp_path / "cmp")
    assert compare.main([SHIPPED, "--out", prefix, "--alpha", "2", "--dt", "0.18"]) == 0
    out = capsys.readouterr().out
    assert "layer" in out and "explained change" in out and f"N={dump.meta['N']}" in out
    try:
        import meanfield.fit  # noqa: F401

        assert "rank-law fit to the measured effective rank (meanfield.fit)" in out and "alpha" in out
    except ImportError:
        assert "rank-law fit skipped: meanfield.fit is not installed" in out
    png = Path(prefix + ".png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000  # four panels, not an empty canvas
    with h5py.File(prefix + ".h5", "r") as f:
        assert f.attrs["format"] == "meanfield-compare"
        np.testing.assert_array_equal(f["layer"][()], dump.layers)
        np.testing.assert_array_equal(f["measured/effective_rank"][()], dump.attention["effective_rank"])
        np.testing.assert_array_equal(f["measured/order_parameter"][()], dump.tokens["order_parameter"])
        assert f["replay"].attrs["alpha"] == 2.0 and f["replay"].attrs["dt"] == 0.18
        for name, _ in compare.STATS:
            pred = f[f"replay/{name}/predicted"][()]
            assert pred.shape == (6,) and np.all(np.isfinite(pred))
            assert np.isfinite(f[f"replay/{name}"].attrs["explained"])
        # layer 0 of the replay is the dumped layer-0 sample itself (all 314 tokens, float16):
        # its token statistics match the float32 measurement to float16 rounding
        assert f["replay/order_parameter/predicted"][0] == pytest.approx(dump.tokens["order_parameter"][0], abs=2e-3)
        cov0 = f["replay/covariance_effective_rank/predicted"][0]
        assert cov0 == pytest.approx(dump.tokens["covariance_effective_rank"][0], rel=1e-2)
    with pytest.raises(FileExistsError):
        compare.main([SHIPPED, "--out", prefix, "--no-replay"])


def test_cli_rejects_foreign_files(tmp_path):
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f.attrs["format"] = "meanfield-results"
    env = dict(os.environ, PYTHONPATH=HERE + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-m", "meanfield.compare", str(foreign), "--no-replay"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, check=False)  # fmt: skip
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("meanfield-compare: error:") and "not a meanfield dump" in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["foreign.h5"]  # no output files
    with pytest.raises(ValueError, match="--dt must be a finite number > 0"):
        compare.main([SHIPPED, "--out", str(tmp_path / "x"), "--dt", "-1"])


def test_layers_restrict_curves_and_replay_start(dump):
    curves = compare.measured_curves(dump, compare.parse_blocks("1:4"))
    full = compare.measured_curves(dump)
    np.testing.assert_array_equal(curves["layer"], [1, 2, 3, 4])
    np.testing.assert_array_equal(curves["effective_rank"], full["effective_rank"][1:5])
    assert compare.parse_blocks("0,2,5") == [0, 2, 5]
    for bad in ("3:1", "1", "a:b", "-1:3", "2,1"):
        with pytest.raises(ValueError, match="--layers"):
            compare.parse_blocks(bad)
    with pytest.raises(ValueError, match=r"block\(s\) \[6, 7\] are not in the dump"):
        compare.measured_curves(dump, [5, 6, 7])
    # the shipped MiniLM dump has tokens of block 0 only: a replay from block 1 must say so
    with pytest.raises(ValueError, match="lacks block 1.*--sample-layers including 1"):
        compare.replay(dump, curves, alpha=2.0, dt=0.2)


def test_grid_edge_warning():
    grid_a, grid_d = np.array([1.0, 2.0, 4.0]), np.array([0.1, 0.2, 0.4])
    assert compare.grid_edge_warning(2.0, 0.2, grid_a, grid_d) is None
    w = compare.grid_edge_warning(4.0, 0.1, grid_a, grid_d)
    assert "alpha = 4 = max of 1..4" in w and "dt = 0.1 = min of 0.1..0.4" in w
    assert compare.grid_edge_warning(4.0, 0.2, np.array([4.0]), grid_d) is None  # a given alpha is no edge


def test_cli_default_outputs_in_the_working_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert compare.main([SHIPPED, "--no-replay"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["minilm_dump_compare.h5", "minilm_dump_compare.png"]
    assert not os.path.exists(os.path.join(os.path.dirname(SHIPPED), "minilm_dump_compare.h5"))
    with pytest.raises(FileExistsError):
        compare.main([SHIPPED, "--no-replay"])
    assert compare.main([SHIPPED, "--no-replay", "--out", "sub.h5", "--layers", "0:3"]) == 0
    with h5py.File(tmp_path / "sub.h5") as f:
        np.testing.assert_array_equal(f["layer"][()], [0, 1, 2, 3])
    assert (tmp_path / "sub.png").exists()
