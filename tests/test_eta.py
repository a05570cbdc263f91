"""Run-time estimate (meanfield.flow.eta): the extrapolation with given timings (no real clock), the
printed line, and results bit for bit unchanged by the estimate."""

import re

import numpy as np
import pytest

import meanfield as mf
from meanfield.flow import eta


def feed(watch, chunks):
    """``chunks``: a list of (steps, step seconds, save seconds or None), in run order."""
    for k, t_steps, t_save in chunks:
        if t_save is not None:
            watch.save(t_save)
        watch.steps(k, t_steps)


def test_extrapolation_from_the_first_repeated_chunk_and_save():
    got = []
    w = eta.Stopwatch(1000, 101, got.append)
    # 1.5 s of setup; first chunk/save compile (9 s and 2.5 s beyond their run time), then 5 steps
    # of 0.2 s, saves of 0.5 s
    w.setup(1.5)
    feed(w, [(5, 10.0, 3.0)])
    assert got == [] and w.estimate is None  # no post-compile rates yet
    feed(w, [(5, 1.0, 0.5), (5, 7.0, 9.0)])  # a later, slower chunk does not change the estimate
    assert len(got) == 1
    e = got[0]
    assert e.step == pytest.approx(0.2) and e.save == pytest.approx(0.5)
    assert e.compile == pytest.approx(1.5 + (10.0 - 5 * 0.2) + (3.0 - 0.5))
    assert e.total == pytest.approx(13.0 + 1000 * 0.2 + 101 * 0.5)
    assert e.line() == ("estimated run time: 4 min 24 s (1 step 0.20 s x 1000, 1 save 0.50 s x 101; "
                        "compile and setup 13 s)")


def test_estimate_scales_linearly_with_the_run_length():
    # the same measured chunks for a run of K times the steps and saves: the run part scales by K
    timings = [(4, 5.0, 2.0), (4, 0.4, 0.3)]
    one, ten = eta.Stopwatch(400, 101), eta.Stopwatch(4000, 1010)
    feed(one, timings)
    feed(ten, timings)
    assert ten.estimate.total - ten.estimate.compile == pytest.approx(10 * (one.estimate.total - one.estimate.compile))


def test_no_estimate_without_a_second_chunk_or_save():
    w = eta.Stopwatch(10, 2)
    feed(w, [(10, 3.0, 1.0)])
    w.save(0.5)  # the final save: still only one chunk of steps
    assert w.estimate is None


@pytest.mark.parametrize("seconds, text", [(2e-4, "200 us"), (0.0014, "1.4 ms"), (0.021, "21 ms"), (0.5, "0.50 s"), (2.14, "2.1 s"),
                                           (42.4, "42 s"), (200, "3 min 20 s"), (7500, "2 h 05 min")])
def test_format_duration(seconds, text):
    assert eta.format_duration(seconds) == text


def test_printer_threshold_and_progress_write(capsys):
    lines = []

    class Bar:
        def write(self, line):
            lines.append(line)

    short, long = eta.Estimate(0.01, 0.1, 1.0, 10, 11), eta.Estimate(0.1, 1.0, 1.0, 100, 101)
    eta.printer(Bar(), threshold=10.0)(short)  # 2.2 s < 10 s: nothing
    eta.printer(Bar(), threshold=10.0)(long)
    assert lines == [long.line()]
    eta.printer(object(), threshold=0.0)(short)  # no write(): stderr
    assert capsys.readouterr().err.strip() == short.line()


def test_estimate_prints_and_leaves_results_unchanged(capsys):
    kw = dict(N=300, kernel=mf.Softmax(2.0), layers=6, key=3)
    with_est = mf.solve_flow(mf.Uniform(4), progress=mf.Progress(bar=False, estimate=True), **kw)
    line = capsys.readouterr().err
    assert re.search(r"estimated run time: [0-9.]+ (us|ms|s|min)", line)
    without = mf.solve_flow(mf.Uniform(4), progress=mf.Progress(bar=False, estimate=False), **kw)
    assert "estimated run time" not in capsys.readouterr().err
    np.testing.assert_array_equal(with_est.x, without.x)
    for name, val in with_est.diagnostics.items():
        np.testing.assert_array_equal(val, without.diagnostics[name], err_msg=name)


def test_estimate_option_is_validated():
    with pytest.raises(ValueError, match="estimate must be None, True or False"):
        mf.solve_flow(mf.Uniform(3), N=10, layers=1, progress=mf.Progress(bar=False, estimate="yes"))
