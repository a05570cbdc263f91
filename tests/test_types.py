"""Every function and method of ``solvers/`` is annotated (``tests/annotation_coverage.py``; mypy
enforces the same with ``disallow_untyped_defs`` in CI)."""

from pathlib import Path

from tests.annotation_coverage import functions

ROOT = Path(__file__).resolve().parents[1]


def test_solvers_fully_annotated():
    found = functions(ROOT / "solvers")
    public = [f for f in found if f.public]
    assert len(public) > 100
    missing = [f.where() for f in found if not f.annotated]
    assert not missing, "functions not fully annotated:\n" + "\n".join(missing)
