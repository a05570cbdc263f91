"""SIGKILL at >= 20 moments (random, during the results write, during checkpoint writes) leaves no
corrupted file, and a resume from the last checkpoint completes bit for bit (tests/kill_harness.py).
Marked slow: about 20 interpreter starts (3-10 s each, more on a loaded machine)."""

import pytest

from tests.kill_harness import run_harness


@pytest.mark.slow
def test_sigkill_at_random_moments_corrupts_nothing(tmp_path):
    fig = run_harness(kills=20, seed=0, workdir=tmp_path)
    assert fig["kills"] == 20
    assert fig["during_results_write"] >= 1 and fig["during_checkpoint_write"] >= 1
    assert fig["corrupted"] == 0
    assert fig["resume_equal"] and fig["resumed_from_checkpoint"]
