"""Shared command-line plumbing: one-line errors and exit status 2, never a traceback.

The convention every tool follows (``meanfield.simulate``, ``meanfield.fit.cli``,
``meanfield.compare``, ``meanfield.dump.__main__``):

- the module defines ``PROG``, the name of its console script (``meanfield-simulate``,
  ``meanfield-fit``, ``meanfield-compare``, ``meanfield-dump``; ``[project.scripts]`` in
  pyproject.toml), used as the parser's ``prog``, so errors read ``PROG: error: ...``;
- ``build_parser()`` returns an :class:`ArgumentParser`; ``main(argv)`` runs the tool and returns
  an exit status, raising ``ValueError``/``FileExistsError`` on bad input (or ending in
  ``parser.error``, which prints the same one line and exits 2, as ``meanfield.fit.cli`` does);
- ``cli(argv=None) -> int`` is ``run_cli(main, PROG, argv)``: the console script's target;
- ``python -m meanfield.<tool>`` calls ``sys.exit(cli())``.
"""

from __future__ import annotations

import argparse
import sys


class ArgumentParser(argparse.ArgumentParser):
    """``argparse`` whose usage errors are one line on stderr and exit status 2."""

    def error(self, message):  # noqa: D401 - argparse API
        self.exit(2, f"{self.prog}: error: {message}\n")


def run_cli(main, prog: str, argv=None) -> int:
    """Call ``main(argv)``; map bad input (ValueError, FileExistsError) to one stderr line + exit 2."""
    try:
        return int(main(argv) or 0)
    except (ValueError, FileExistsError, FloatingPointError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"{prog}: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; no output written", file=sys.stderr)
        return 130
