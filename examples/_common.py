"""The command line every example shares: ``--out DIR``, ``--overwrite``, ``--smoke``; progress lines.

An example starts with::

    import _common

    NEEDS = ("torch",)                        # optional modules it needs (omit when none)
    args, out = _common.parse(__doc__, outputs=["figure.png"], needs=NEEDS)
    # ... the heavy imports and the work ...
    out.figure("figure.png", fig, dpi=110)     # atomic write, then "wrote PATH"

:func:`parse` reads the command line (a bad argument is one ``PROG: error:`` line and exit status
2, never a traceback); when a module of ``NEEDS`` is missing it prints ``skipped: needs torch``
and exits with status 0 (``examples/run_smoke.py`` and ``tests/test_examples.py`` read that line
and ``NEEDS``); it then checks every output *before* any work: ``--out`` is created if missing,
and an output that exists is refused (one line, exit status 2) unless ``--overwrite`` is given.
Outputs are written atomically (:mod:`meanfield.io.atomic`), so an interrupted run leaves either the
old file or the new one. Progress goes to stderr (:func:`progress`), results to stdout.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import time
from pathlib import Path

_START = time.perf_counter()
FILE_SUFFIXES = (".png", ".pdf", ".svg", ".h5", ".hdf5", ".json", ".csv", ".md", ".txt")


def prog() -> str:
    """The script's name, as errors name it (``zonal_collapse.py``)."""
    return Path(sys.argv[0]).name or "example"


def error(message: str):
    """One line on stderr and exit status 2: a bad argument, found before any work."""
    print(f"{prog()}: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def progress(message: str) -> None:
    """A progress line on stderr, with the seconds since the example started."""
    print(f"[{time.perf_counter() - _START:6.1f} s] {message}", file=sys.stderr, flush=True)


def missing(needs) -> list[str]:
    """The modules of ``needs`` that cannot be imported here."""
    return [name for name in needs if importlib.util.find_spec(name) is None]


class Outputs:
    """The files an example declared, each in ``--out`` (a ``str`` name) or as given (a ``Path``,
    e.g. from an option such as ``--results``). ``out(name)`` is the path of a declared output;
    :meth:`figure`, :meth:`text` and :meth:`json` write one atomically. A file this run wrote
    already may be rewritten (a results file saved after every step); any other existing file
    only with ``--overwrite`` -- :func:`parse` refused those before the work began."""

    def __init__(self, folder: Path, names, overwrite: bool, resume=()):
        self.folder, self.overwrite = folder, overwrite
        self.paths = {name: (name if isinstance(name, Path) else folder / name) for name in names}
        self._replaceable: set[Path] = {self(name) for name in resume}

    def __call__(self, name) -> Path:
        if name not in self.paths:
            raise KeyError(f"{name!r} is not among the declared outputs {list(self.paths)}")
        return self.paths[name]

    def _write(self, name, write, quiet=False) -> Path:
        from meanfield.io.atomic import atomic_path

        path = self(name)
        with atomic_path(path, overwrite=self.overwrite or path in self._replaceable) as tmp:
            write(tmp)
        self._replaceable.add(path)
        if not quiet:
            print(f"wrote {path}", flush=True)
        return path

    def figure(self, name, fig, **savefig) -> Path:
        """Save a matplotlib figure (format from the name's suffix) and close it."""
        import matplotlib.pyplot as plt

        fmt = Path(name).suffix.lstrip(".") or "png"
        path = self._write(name, lambda tmp: fig.savefig(tmp, format=fmt, **savefig))
        plt.close(fig)
        return path

    def text(self, name, text: str, quiet=False) -> Path:
        return self._write(name, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"), quiet)

    def json(self, name, obj, quiet=False, sort_keys=False) -> Path:
        return self.text(name, json.dumps(obj, indent=1, sort_keys=sort_keys) + "\n", quiet)


def parser(doc: str):
    """The shared parser (``--out``, ``--overwrite``, ``--smoke``), for an example to add options to."""
    from meanfield._cli import ArgumentParser

    p = ArgumentParser(prog=prog(), description=doc.strip().split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("."), metavar="DIR",
                   help="folder for the outputs, created if missing (default: the current folder)")
    p.add_argument("--overwrite", action="store_true", help="replace outputs that exist")
    p.add_argument("--smoke", action="store_true",
                   help="a reduced run (seconds) through every step of the full one, for CI")
    return p


def parse(doc: str, outputs=(), *, needs=(), options=None, check=None, resume=(), argv=None):
    """``(args, out)``: the parsed command line and the :class:`Outputs`.

    ``outputs`` lists the files the run writes (a ``str`` is a name in ``--out``, a ``Path`` is used
    as given), or is a function of ``args`` returning that list; ``options(parser)`` adds the
    example's own options; ``needs`` names optional modules (missing: ``skipped: needs X``, exit 0);
    ``check(args)`` validates them (calling :func:`error`) before any folder is created;
    ``resume`` (a list or a function of ``args``) names outputs this run continues: an existing one
    is read by the example and replaced without ``--overwrite``. Every output is checked before this
    returns: none exists unless ``--overwrite`` (or ``resume``), each folder can be written
    (``meanfield.io.atomic.check_writable``).
    """
    p = parser(doc)
    if options is not None:
        options(p)
    args = p.parse_args(argv)
    lacking = missing(needs)
    if lacking:
        print(f"skipped: needs {', '.join(lacking)}", flush=True)
        raise SystemExit(0)
    if check is not None:
        check(args)
    names = list(outputs(args) if callable(outputs) else outputs)
    folder = args.out
    if folder.exists() and not folder.is_dir():
        error(f"--out {folder} is not a folder")
    if not folder.exists() and folder.suffix.lower() in FILE_SUFFIXES:  # an old --out FILE.png command line
        error(f"--out {folder} looks like a file name; --out is the folder the outputs go to")
    out = Outputs(folder, names, args.overwrite, resume(args) if callable(resume) else resume)
    existing = [str(path) for path in out.paths.values() if path.exists() and path not in out._replaceable]
    if existing and not args.overwrite:
        error(f"{', '.join(existing)} exist{'s' if len(existing) == 1 else ''}; pass --overwrite to replace")
    from meanfield.io.atomic import check_writable

    for target in [folder] + [path.parent for path in out.paths.values()]:
        try:
            target.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            error(f"cannot create the folder {target} ({e.strerror or e})")
    try:
        for path in out.paths.values():
            check_writable(path, overwrite=True)
    except (OSError, ValueError) as e:
        error(str(e).splitlines()[0])
    return args, out
