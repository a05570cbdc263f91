"""The simulate tool's plot worker (meanfield/plots/_worker.py): the figure it draws from the saved
results file is the figure the tool would draw itself, and every way it can fail ends in the
tool drawing the figure (an error there is raised as without the worker)."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from matplotlib.image import imread

from meanfield import Uniform, solve_flow
from meanfield.plots._worker import PlotWorker
from meanfield.io.results import save_results
from meanfield.plots.figures import plot_solution
import meanfield as mf


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("worker")
    sol = solve_flow(Uniform(d=3), N=128, layers=4, save=mf.SaveAt(n_query=32), key=1)
    save_results(folder / "r.h5", sol)
    return sol, folder


def test_worker_draws_the_figure_the_tool_would(saved):
    sol, folder = saved
    with PlotWorker() as worker:
        assert worker._draw_in_worker(folder / "r.h5", folder / "worker.png", False)
    plot_solution(sol, folder / "here.png")
    a, b = imread(folder / "worker.png"), imread(folder / "here.png")
    assert a.shape == b.shape and a.shape[0] > 100
    np.testing.assert_array_equal(a, b)


def test_worker_that_cannot_start_falls_back(saved, monkeypatch):
    sol, folder = saved
    monkeypatch.setattr(sys, "executable", str(folder / "no-such-python"))
    with PlotWorker() as worker:
        assert worker._proc is None
        worker.plot(sol, folder / "r.h5", folder / "fallback.png", False)
    assert imread(folder / "fallback.png").shape[0] > 100


def test_worker_that_fails_falls_back_and_errors_are_raised_here(saved):
    sol, folder = saved
    with PlotWorker() as worker:  # the worker cannot read a missing results file: the tool draws instead
        worker.plot(sol, folder / "missing.h5", folder / "drawn_here.png", False)
    assert imread(folder / "drawn_here.png").shape[0] > 100
    with PlotWorker() as worker, pytest.raises(FileExistsError):  # the tool's own rule, raised in this process
        worker.plot(sol, folder / "r.h5", folder / "drawn_here.png", False)


def test_closing_stops_a_waiting_worker():
    worker = PlotWorker()
    proc = worker._proc
    worker.close()
    assert proc is not None and proc.poll() is not None
    worker.close()  # twice is harmless
