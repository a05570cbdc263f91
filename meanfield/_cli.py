"""Shared command-line plumbing: one-line errors and exit status 2, never a traceback.

The convention every tool follows (meanfield.simulate, meanfield.fit.cli, meanfield.compare.cli,
meanfield.dump.__main__):

- the module defines ``PROG``, the name of its console script (``meanfield-simulate``,
  ``meanfield-fit``, ``meanfield-compare``, ``meanfield-dump``; ``[project.scripts]`` in
  pyproject.toml), used as the parser's ``prog``, so errors read ``PROG: error: ...``;
- ``build_parser()`` returns an :class:`ArgumentParser`; ``main(argv)`` runs the tool and returns
  an exit status, raising ``ValueError``/``FileExistsError`` on bad input (or ending in
  ``parser.error``, which prints the same one line and exits 2, as ``meanfield.fit.cli`` does);
- ``cli(argv=None) -> int`` is ``run_cli(main, PROG, argv)``: the console script's target;
- ``python -m meanfield.<tool>`` calls ``sys.exit(cli())``;
- ``--out PATH`` names the tool's main output; every other file it writes is PATH with its suffix
  replaced (:func:`output_path`); the default is a name in the current directory, never a file
  beside the input;
- help texts are plain text and end in `` (default: X)`` wherever a flag has a default
  (:class:`HelpFormatter` appends it from the parser's default when the text does not say it).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


class HelpFormatter(argparse.HelpFormatter):
    """Appends `` (default: X)`` to an option's help unless the help already says ``(default:``
    or the default carries no information (``None``, ``False``, ``SUPPRESS``); options whose default
    is ``None`` but mean something write their ``(default: ...)`` in the help text themselves."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if ("(default:" in text or not action.option_strings or default is None or default is False
                or default is argparse.SUPPRESS):
            return text
        return f"{text} (default: %(default)s)"


class ArgumentParser(argparse.ArgumentParser):
    """``argparse`` whose usage errors are one line on stderr and exit status 2, with the defaults
    of :class:`HelpFormatter` (sub-parsers are of the same class, so they share both)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message):  # noqa: D401 - argparse API
        self.exit(2, f"{self.prog}: error: {message}\n")


def output_path(out, default: str, suffix: str) -> Path | str:
    """The main output of ``--out``: ``default`` (a bare name: the current directory) when ``out``
    is None; ``out`` with ``suffix`` appended when it has no suffix (``run`` -> ``run.h5``); else
    ``out`` as given (its suffix is checked by :func:`meanfield.io.atomic.check_writable`). An empty
    path, a folder or a path ending in a separator is returned unchanged, for that check to name."""
    if out is None:
        return Path(default)
    text = str(out)
    path = Path(text)
    if not text.strip():
        return text
    if text.endswith(("/", "\\")) or path.is_dir() or path.name in ("", ".", ".."):
        return path
    return path if path.suffix else path.with_name(path.name + suffix)


def run_cli(main, prog: str, argv=None) -> int:
    """Call ``main(argv)`` and return its exit status: bad input (ValueError, FileExistsError, an
    unreadable or unwritable path) is one stderr line and status 2; a usage error or ``--help``
    (argparse's ``SystemExit``) returns the status argparse chose instead of raising it. Called
    with ``argv=None`` (the command line itself) it first turns on JAX's persistent compilation
    cache (:mod:`meanfield.io.compile_cache`); calls from Python with an explicit ``argv`` leave the
    process's JAX settings alone."""
    if argv is None:  # a real command line (console script, python -m): keep compiled programs between runs
        from meanfield.io.compile_cache import enable

        enable(prog)
    try:
        return int(main(argv) or 0)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except (ValueError, OSError, FloatingPointError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"{prog}: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; no output written", file=sys.stderr)
        return 130
