"""The package version, in a module of its own so that modules inside the package can read it
without importing ``meanfield/__init__.py`` (which imports the whole library).  Keep it equal to
``version`` in ``pyproject.toml`` (tests/test_cli_entry_points.py checks this)."""

__version__ = "0.1.0"
