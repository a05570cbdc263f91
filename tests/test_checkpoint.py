"""Checkpoint and resume (meanfield.flow.checkpoint): a resumed run equals an uninterrupted one bit for bit.

The comparison is exact (``np.array_equal``): the resumed run replays the same jitted chunks from the
saved state, so there is no round-off to tolerate; any difference is a bug.
"""

from __future__ import annotations

import numpy as np
import pytest

import meanfield as mf
from meanfield.flow import checkpoint
from meanfield.flow import distributions

KW = dict(N=120, layers=8, save=mf.SaveAt(every=2), kernel=mf.Softmax(2.0))
KW_TOKENS = dict(KW, save=mf.SaveAt(every=2, tokens=True))


def _equal(a, b):
    assert np.array_equal(a.t, b.t)
    for k in a.diagnostics:
        assert np.array_equal(a.diagnostics[k], b.diagnostics[k], equal_nan=True), k
    for name in ("x", "density", "snapshots"):
        ra, rb = getattr(a, name), getattr(b, name)
        assert (ra is None) == (rb is None) and (ra is None or np.array_equal(ra, rb)), name


@pytest.mark.parametrize("method", ["layer", "euler", "heun", mf.Adaptive(rtol=1e-4, atol=1e-6)])
def test_particle_methods_resume_bit_for_bit(method, tmp_path):
    init = distributions.Uniform(4)
    ref = mf.solve_flow(init, method=method, **KW_TOKENS)
    ck = tmp_path / "run.ckpt.h5"
    full = mf.solve_flow(init, method=method, checkpoint=mf.Checkpoint(ck, every=3), **KW_TOKENS)
    _equal(ref, full)  # checkpointing does not change the run
    assert checkpoint.load(ck)["save_index"] == 3  # saves 0..4; checkpoints after saves 3 (not the last)
    resumed = mf.solve_flow(init, method=method, checkpoint=mf.Checkpoint(resume=ck), **KW_TOKENS)
    _equal(ref, resumed)
    assert resumed.stats["field_evaluations"] == ref.stats["field_evaluations"]


@pytest.mark.parametrize("method, init", [
    (mf.Zonal(cells=32), distributions.VonMisesFisher(4, kappa=1.0)),
    (mf.Circle(cells=32), distributions.VonMisesFisher(2, kappa=1.0)),
    (mf.Characteristics(), distributions.VonMisesFisher(3, kappa=1.0)),
])
def test_density_methods_resume_bit_for_bit(method, init, tmp_path):
    ref = mf.solve_flow(init, method=method, **KW)
    ck = tmp_path / "run.ckpt.h5"
    _equal(ref, mf.solve_flow(init, method=method, checkpoint=mf.Checkpoint(ck, every=1), **KW))
    _equal(ref, mf.solve_flow(init, method=method, checkpoint=mf.Checkpoint(resume=ck), **KW))


def test_resume_refuses_another_run_and_damaged_files(tmp_path):
    init = distributions.Uniform(3)
    ck = tmp_path / "c.h5"
    mf.solve_flow(init, N=50, layers=4, checkpoint=mf.Checkpoint(ck, every=1))
    with pytest.raises(ValueError, match="different run"):
        mf.solve_flow(init, N=50, layers=4, kernel=mf.Linear(0.3), checkpoint=mf.Checkpoint(resume=ck))
    with pytest.raises(ValueError, match="different run"):
        mf.solve_flow(init, N=50, layers=4, key=1, checkpoint=mf.Checkpoint(resume=ck))
    bad = tmp_path / "bad.h5"
    bad.write_bytes(ck.read_bytes()[:300])
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        mf.solve_flow(init, N=50, layers=4, checkpoint=mf.Checkpoint(resume=bad))
    with pytest.raises(ValueError, match="every must be an integer >= 1"):
        mf.Checkpoint(ck, every=0)
