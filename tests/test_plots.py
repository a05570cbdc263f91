"""meanfield.plots.figures: the figures return a Figure, carry what they claim (title, colorbar, the data),
and are written atomically, never replacing a file without ``overwrite``.

The solution and the phase diagram are built by hand (no solver run), so what the figures show is
known independently of the code that computes it.
"""

import numpy as np
import pytest

matplotlib = pytest.importorskip("matplotlib")

from meanfield.studies.phase import PhaseDiagram  # noqa: E402
from meanfield.plots.figures import plot_phase_diagram, plot_solution  # noqa: E402
from meanfield.flow.solution import FlowSolution  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _solution(grid=False):
    layers = np.arange(6)
    names = ("order_parameter", "entropy", "kl_to_uniform", "entropy_rate") if grid else \
        ("order_parameter", "effective_rank", "normalized_entropy", "entropy_rate")
    diag = {name: np.linspace(1.0, 2.0, 6) + i for i, name in enumerate(names)}
    params = {"kernel": "softmax", "N": 64, "d": 3, "alpha": 1.0, "merge": 1.0, "method": "layer", "dt": 0.5,
              "init": {"name": "uniform", "d": 3}, "seed": 0, "precision": "float64"}
    return FlowSolution(t=0.5 * layers, layers=layers, x=None, diagnostics=diag, params=params)


def _phase():
    betas, t = np.linspace(0.5, 4.0, 5), np.linspace(0.0, 3.0, 7)
    frac = np.outer(1.0 / betas, t) / 6.0  # any values in [0, 1]
    z = np.zeros_like(frac)
    params = {"n": 32, "d": 8, "n_systems": 16, "precision": "float64", "pair_threshold": 0.999}
    return PhaseDiagram(betas=betas, t=t, steps=np.arange(7), pair_fraction=frac, clusters_median=z,
                        clusters_mean=z, order_parameter=z, params=params, stats={})


def _pyplot_figures():
    import matplotlib.pyplot as plt

    return plt.get_fignums()


def test_solution_figure_panels_and_titles():
    before = _pyplot_figures()
    fig = plot_solution(_solution())
    assert isinstance(fig, matplotlib.figure.Figure)
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_ylabel() for ax in axes] == ["order parameter |m|", "attention effective rank",
                                                 "normalised spectral entropy", "entropy rate dH/dt"]
    line = axes[1].get_lines()[0]
    np.testing.assert_array_equal(line.get_ydata(), np.linspace(1.0, 2.0, 6) + 1)  # the data, unchanged
    assert "softmax kernel, N=64, d=3" in fig._suptitle.get_text()
    assert plot_solution(_solution(), title="my run")._suptitle.get_text() == "my run"
    assert _pyplot_figures() == before  # built without pyplot: no figure left open in the user's session


def test_grid_solution_shows_differential_entropy():
    fig = plot_solution(_solution(grid=True))
    labels = [ax.get_ylabel() for ax in fig.axes if ax.get_visible()]
    assert labels == ["order parameter |m|", "differential entropy H", "KL to uniform", "entropy rate dH/dt"]


def test_phase_figure_has_image_colorbar_and_labels():
    pd = _phase()
    fig = plot_phase_diagram(pd, title="d = 8")
    main, bar = fig.axes  # the image's axes and the colorbar's
    assert main.get_title() == "d = 8"
    assert main.get_xlabel() == "t" and main.get_ylabel() == r"$\beta$"
    mesh = main.collections[0]
    np.testing.assert_array_equal(np.asarray(mesh.get_array()).reshape(pd.pair_fraction.shape), pd.pair_fraction)
    assert mesh.get_clim() == (0.0, 1.0)  # a probability: fixed scale, comparable between figures
    assert "0.999" in bar.get_ylabel()
    assert len(plot_phase_diagram(pd, colorbar=False).axes) == 1
    assert "n = 32, d = 8, 16 systems" in plot_phase_diagram(pd).axes[0].get_title()


@pytest.mark.parametrize("plot, make", [(plot_solution, _solution), (plot_phase_diagram, _phase)])
def test_file_written_and_not_replaced_without_overwrite(tmp_path, plot, make):
    path = tmp_path / "fig.png"
    plot(make(), path)
    first = path.read_bytes()
    assert first.startswith(PNG_MAGIC)
    with pytest.raises(FileExistsError, match="overwrite"):
        plot(make(), path, title="other")
    assert path.read_bytes() == first
    plot(make(), path, title="other", overwrite=True)
    assert path.read_bytes() != first and path.read_bytes().startswith(PNG_MAGIC)
    assert [p.name for p in tmp_path.iterdir()] == ["fig.png"]  # no temporary file left behind


def test_format_from_suffix_and_bad_suffix_refused(tmp_path):
    plot_solution(_solution(), tmp_path / "fig.pdf")
    assert (tmp_path / "fig.pdf").read_bytes().startswith(b"%PDF")
    with pytest.raises(ValueError, match=r"\.png or \.pdf or \.svg.*'\.txt'"):
        plot_phase_diagram(_phase(), tmp_path / "fig.txt")
    assert not (tmp_path / "fig.txt").exists()


def test_title_names_the_token_merging():
    sol = _solution()
    sol.params["merging"] = {"name": "tome-prop", "ratio": 0.5}
    assert "softmax kernel with tome-prop merging (m = 0.5), N=64" in plot_solution(sol)._suptitle.get_text()
