"""Test-session configuration (never at library import): 64-bit JAX for precision assertions, and
strict dtype promotion, so an accidental float32/float64 (or complex) mix in library code fails
loudly instead of silently changing precision."""

import os

os.environ.setdefault("MPLBACKEND", "Agg")

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_dtype_promotion", "strict")


# --- slow tests: marked from a list, not in each file (issue 12) -------------------------------
# The default `pytest` run deselects them (pyproject addopts: -m "not slow"); CI runs everything
# with `pytest -m "slow or not slow"`. tests/slow_tests.txt lists node ids (a parametrized test's
# id without brackets marks all its cases); a test may also carry @pytest.mark.slow itself.

import pathlib  # noqa: E402

import pytest  # noqa: E402

_SLOW = {line.strip() for line in (pathlib.Path(__file__).parent / "slow_tests.txt").read_text().splitlines()
         if line.strip() and not line.startswith("#")}
_COUNTS = {}


# The longest single test (~2 min: 20 interpreter starts) goes first, so that with pytest-xdist one
# worker runs it while the other takes the rest, instead of it starting last and leaving a core idle.
_FIRST = ("tests/test_kill_safety.py::test_sigkill_at_random_moments_corrupts_nothing",)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    items.sort(key=lambda item: item.nodeid not in _FIRST)  # stable: the rest keep their order
    for item in items:
        node = item.nodeid
        if node in _SLOW or node.split("[")[0] in _SLOW:
            item.add_marker(pytest.mark.slow)
    _COUNTS["slow"] = sum(1 for i in items if i.get_closest_marker("slow"))
    _COUNTS["fast"] = len(items) - _COUNTS["slow"]


def pytest_terminal_summary(terminalreporter):
    if _COUNTS:
        terminalreporter.write_line(f"collected {_COUNTS['fast']} fast and {_COUNTS['slow']} slow tests "
                                    f"(default: fast only; all: pytest -m 'slow or not slow')")
