"""Annotation coverage of a package folder, read from the source (AST; nothing is imported).

    python tests/annotation_coverage.py solvers
    python tests/annotation_coverage.py meanfield

prints, for every function and method (nested functions included), how many there are and the
share with every parameter and the return annotated; once for all of them and once for the public
ones.  *Public*: the function's own name and every enclosing class's name do not start with ``_``,
the function is not nested inside another function, and its module's path has no component
starting with ``_`` (``__init__.py`` counts as public); ``__init__`` and ``__call__`` count as
public methods, other dunders as private.  ``self``/``cls`` of methods (and the first parameter of
a ``@staticmethod``-less method generally) need no annotation.
"""

from __future__ import annotations

import argparse
import ast
import sys
from dataclasses import dataclass
from pathlib import Path

_PUBLIC_DUNDERS = {"__init__", "__call__"}


@dataclass(frozen=True)
class Function:
    """One ``def`` found in the source."""

    module: str
    qualname: str
    lineno: int
    public: bool
    annotated: bool
    missing: tuple[str, ...]

    def where(self) -> str:
        return f"{self.module}:{self.lineno} {self.qualname} (missing: {', '.join(self.missing)})"


def _private_name(name: str) -> bool:
    return name.startswith("_") and name not in _PUBLIC_DUNDERS


def _module_public(path: Path, root: Path) -> bool:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return not any(p.startswith("_") and p != "__init__" for p in parts)


def _missing(node: ast.FunctionDef | ast.AsyncFunctionDef, is_method: bool) -> tuple[str, ...]:
    args = node.args
    positional = [*args.posonlyargs, *args.args]
    static = any(isinstance(d, ast.Name) and d.id == "staticmethod" for d in node.decorator_list)
    if is_method and not static and positional:
        positional = positional[1:]  # self / cls
    params = [*positional, *args.kwonlyargs]
    if args.vararg is not None:
        params.append(args.vararg)
    if args.kwarg is not None:
        params.append(args.kwarg)
    missing = [a.arg for a in params if a.annotation is None]
    if node.returns is None:
        missing.append("return")
    return tuple(missing)


def functions(package: str | Path) -> list[Function]:
    """Every function and method defined in the ``.py`` files under ``package``."""
    root = Path(package).resolve()
    found: list[Function] = []
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        module = str(path.relative_to(root.parent))
        module_public = _module_public(path, root)

        def visit(node: ast.AST, scope: list[str], public: bool, in_class: bool, in_function: bool) -> None:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.ClassDef):
                    visit(child, [*scope, child.name], public and not child.name.startswith("_"),
                          True, in_function)
                elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    missing = _missing(child, in_class)
                    is_public = public and not in_function and not _private_name(child.name)
                    found.append(Function(module, ".".join([*scope, child.name]), child.lineno,
                                          is_public, not missing, missing))
                    visit(child, [*scope, child.name], False, False, True)
                else:
                    visit(child, scope, public, in_class, in_function)

        visit(tree, [], module_public, False, False)
    return found


def _share(items: list[Function]) -> str:
    done = sum(f.annotated for f in items)
    pct = 100.0 * done / len(items) if items else 100.0
    return f"{done}/{len(items)} fully annotated ({pct:.1f} %)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("package", help="a package folder, e.g. solvers or meanfield")
    parser.add_argument("--list", action="store_true", help="also list the functions not fully annotated")
    args = parser.parse_args(argv)
    found = functions(args.package)
    public = [f for f in found if f.public]
    print(f"{args.package}: public functions: {_share(public)}")
    print(f"{args.package}: all functions:    {_share(found)}")
    if args.list:
        for f in found:
            if not f.annotated:
                print(("  public  " if f.public else "  private ") + f.where())
    return 0


if __name__ == "__main__":
    sys.exit(main())
