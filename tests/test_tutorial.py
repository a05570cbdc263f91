"""docs/tutorial.ipynb runs top to bottom as a reader runs it: a fresh IPython kernel of this
interpreter, a working folder that is not the repository, every cell without an error, and the
figures shown inline. Needs the ``docs`` extra (nbclient, ipykernel, nbformat); skipped without it."""

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "docs" / "tutorial.ipynb"


def _client(nb, cwd: Path, jupyter: Path):
    """A NotebookClient whose kernel "python3" is this interpreter, started in ``cwd`` with a
    reader's environment (this tree importable, no test-session settings, matplotlib's inline backend)."""
    nbclient = pytest.importorskip("nbclient", reason="needs the docs extra (nbclient)")
    kernelspec = pytest.importorskip("ipykernel.kernelspec", reason="needs the docs extra (ipykernel)")
    # "python3" resolves through the Jupyter path: a kernelspec written here, first on JUPYTER_PATH,
    # runs sys.executable whatever other kernelspecs the machine has
    kernelspec.write_kernel_spec(jupyter / "kernels" / "python3")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "JAX_", "MPLBACKEND"))}
    env["JUPYTER_PATH"] = os.pathsep.join(p for p in (str(jupyter), os.environ.get("JUPYTER_PATH", "")) if p)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=600,
                                     resources={"metadata": {"path": str(cwd)}})
    return client, env


def _read():
    nbformat = pytest.importorskip("nbformat", reason="needs the docs extra (nbformat)")
    return nbformat.read(NOTEBOOK, as_version=4)


def _errors(nb) -> list[str]:
    return [f"cell {i} ({cell.get('id')}): {out.get('ename')}: {out.get('evalue')}"
            for i, cell in enumerate(nb.cells) if cell.cell_type == "code"
            for out in cell.get("outputs", []) if out.output_type == "error"]


def test_notebook_is_stored_without_outputs():
    nb = _read()
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code, "the tutorial has no code cells"
    assert all(not c.outputs and c.execution_count is None for c in code), "store the notebook without outputs"


def test_tutorial_runs_from_a_temporary_folder(tmp_path, monkeypatch):
    nb = _read()
    work = tmp_path / "work"
    work.mkdir()
    client, env = _client(nb, work, tmp_path / "jupyter")
    with monkeypatch.context() as m:  # the kernel spec manager reads JUPYTER_PATH from this process
        m.setenv("JUPYTER_PATH", env["JUPYTER_PATH"])
        from jupyter_client.kernelspec import KernelSpecManager

        assert Path(KernelSpecManager().get_kernel_spec("python3").argv[0]) == Path(sys.executable)
        client.execute(env=env)
    assert _errors(nb) == []
    images = sum("image/png" in out.get("data", {}) for c in nb.cells if c.cell_type == "code" for out in c.outputs)
    figures = sum(c.source.rstrip().endswith(("plot_solution(lin)", "plot_solution(soft)", "fig"))
                  for c in nb.cells if c.cell_type == "code")
    assert images == figures >= 5, f"{images} inline images for {figures} cells that end in a figure"
    assert list(work.iterdir()) == [], "the tutorial wrote into its working folder"


@pytest.mark.parametrize("where", [".", "docs"])
def test_data_folder_is_found_from_the_repository_and_docs(where, tmp_path, monkeypatch):
    nb = _read()
    nb.cells = [c for c in nb.cells if c.get("id") == "imports"]
    nb.cells.append(pytest.importorskip("nbformat").v4.new_code_cell("print(DATA)"))
    client, env = _client(nb, ROOT / where, tmp_path / "jupyter")
    with monkeypatch.context() as m:
        m.setenv("JUPYTER_PATH", env["JUPYTER_PATH"])
        client.execute(env=env)
    assert _errors(nb) == []
    printed = "".join(out.get("text", "") for out in nb.cells[-1].outputs).strip()
    assert Path(printed) == ROOT / "examples" / "data"
