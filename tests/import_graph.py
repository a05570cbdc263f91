"""The import graph of ``meanfield/``, read from the source (docs/architecture.md runs this file).

Every ``import`` and ``from ... import`` of a meanfield module counts, at module level or inside
a function (a lazy import still ties two modules together); ``solvers`` is one node below them
all. ``python tests/import_graph.py`` prints the modules floor by floor: a module's floor is one
above the highest floor it imports (``solvers`` and modules importing nothing of meanfield are
floor 1), so a module only ever imports from floors below its own. Circles have no floor; the
script lists them and exits 1 (tests/test_layering.py asserts there are none).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _lazy_names() -> dict:
    """``meanfield/__init__.py``'s name -> module table (its names load on first use), read from the source."""
    tree = ast.parse((ROOT / "meanfield" / "__init__.py").read_text())
    env: dict = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and getattr(node.targets[0], "id", "") in (
                "_SOLVERS", "_FROM"):
            env[node.targets[0].id] = eval(compile(ast.Expression(node.value), "meanfield/__init__.py", "eval"),
                                           {}, dict(env))
    return env.get("_FROM", {})


def meanfield_imports() -> dict[str, set[str]]:
    """Module -> the meanfield modules (and ``solvers``) it imports anywhere in its file."""
    modules = {}
    for path in (ROOT / "meanfield").rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    lazy = _lazy_names()

    def resolve(name, attr=None):
        if name == "solvers" or name.startswith("solvers."):
            return "solvers"
        if attr is not None and f"{name}.{attr}" in modules:
            return f"{name}.{attr}"
        if name == "meanfield" and attr in lazy:
            source = lazy[attr]
            return "meanfield" + source if source.startswith(".") else "solvers"
        return name if name in modules else None

    graph = {}
    for mod, path in modules.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                edges |= {resolve(a.name) for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                edges |= {resolve(base, a.name) for a in node.names}
        # a package's own __init__ is not an edge of its submodules (Python runs it first anyway)
        graph[mod] = {e for e in edges if e and e != mod and not mod.startswith(e + ".")}
    graph["solvers"] = set()
    return graph


def cycles(graph) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def floors(graph) -> dict[str, int]:
    """Module -> floor (1 + the highest floor it imports); the graph must have no circles."""
    memo: dict[str, int] = {}

    def floor(v):
        if v not in memo:
            memo[v] = 1 + max((floor(w) for w in graph[v]), default=0)
        return memo[v]

    return {v: floor(v) for v in graph}


def main() -> int:
    graph = meanfield_imports()
    found = cycles(graph)
    if found:
        for comp in found:
            print("import circle:", " <-> ".join(comp))
        return 1
    by_floor: dict[int, list[str]] = {}
    for mod, f in floors(graph).items():
        by_floor.setdefault(f, []).append(mod.removeprefix("meanfield."))
    for f in sorted(by_floor, reverse=True):
        print(f"floor {f:2d}: {', '.join(sorted(by_floor[f]))}")
    print(f"{len(graph) - 1} modules in meanfield/, {sum(len(e) for e in graph.values())} imports, no circles")
    return 0


if __name__ == "__main__":
    sys.exit(main())
