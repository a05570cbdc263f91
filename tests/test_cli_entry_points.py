"""``[project.scripts]``: every console script names an existing ``cli`` that follows the convention
of ``meanfield._cli`` (``PROG`` = the script name, ``build_parser``, ``main``), and ``--help`` exits
0.  ``meanfield-dump --help`` runs in a fresh interpreter and must not import torch."""

import importlib
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]


def _target(spec):
    module, func = spec.split(":")
    return importlib.import_module(module), func


def test_the_four_scripts_are_declared():
    assert set(SCRIPTS) == {"meanfield-simulate", "meanfield-fit", "meanfield-compare", "meanfield-dump"}


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_entry_point_target_exists(script):
    module, func = _target(SCRIPTS[script])
    assert func == "cli" and callable(getattr(module, func))
    assert callable(getattr(module, "main")) and callable(getattr(module, "build_parser"))
    assert module.PROG == script
    assert module.build_parser().prog == script


@pytest.mark.parametrize("script", sorted(set(SCRIPTS) - {"meanfield-dump"}))
def test_help_exits_0(script, capsys):
    module, func = _target(SCRIPTS[script])
    assert getattr(module, func)(["--help"]) == 0  # cli() returns the status; the console script exits with it
    assert "usage:" in capsys.readouterr().out


def test_dump_help_needs_no_torch():
    # main() of the dump tool switches JAX to 64 bits for its process: run it in a fresh one
    code = ("import sys\n"
            "from meanfield.dump.__main__ import cli\n"
            "code = cli(['--help'])\n"
            "assert not {'torch', 'transformers'} & set(sys.modules), 'torch imported'\n"
            "sys.exit(code)")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT)] + sys.path)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: meanfield-dump") and "Traceback" not in proc.stderr


def test_errors_name_the_script(capsys):
    from meanfield.compare import cli as compare

    assert compare.cli(["/nonexistent/dump.h5", "--no-replay", "--out", "/nonexistent/x"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("meanfield-compare: error: ") and err.count("\n") == 1, err


def test_version_is_the_packaged_one():
    from meanfield import __version__
    from meanfield._version import __version__ as v

    assert __version__ == v == tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
