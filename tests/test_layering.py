"""Layering: the numerical engines in ``solvers/`` never import ``meanfield`` (the package built on
them).  Checked in a fresh interpreter, so modules imported by other tests do not mask a
violation."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_solvers_do_not_import_meanfield():
    modules = sorted(p.stem for p in (ROOT / "solvers").glob("*.py") if p.stem != "__init__")
    code = ("import importlib, sys\n"
            "import solvers\n"
            f"for m in {modules!r}:\n"
            "    importlib.import_module('solvers.' + m)\n"
            "bad = sorted(m for m in sys.modules if m == 'meanfield' or m.startswith('meanfield.'))\n"
            "print(' '.join(bad))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT)] + sys.path), "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "", f"solvers imported: {proc.stdout.strip()}"


def _meanfield_imports():
    """Module -> the meanfield modules it imports anywhere in its file (module level or inside a
    function: a lazy import still ties the two modules together)."""
    import ast

    import meanfield

    pkg = ROOT / "meanfield"
    modules = {}
    for path in pkg.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path

    def resolve(name, attr=None):
        """The module an import names; ``from meanfield import solve_flow`` -> meanfield.flow."""
        if attr is not None and f"{name}.{attr}" in modules:
            return f"{name}.{attr}"
        if name == "meanfield" and attr in meanfield._FROM:
            source = meanfield._FROM[attr]
            return "meanfield" + source if source.startswith(".") else None
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
        graph[mod] = {e for e in edges if e and e != mod and not mod.startswith(e + ".")}
    return graph


def test_meanfield_has_no_import_circles():
    graph = _meanfield_imports()
    assert len(graph) > 30 and graph["meanfield.compare"] >= {"meanfield.replay", "meanfield.own_weights"}
    index, low, stack, on, cycles = {}, {}, [], set(), []

    def visit(v):  # Tarjan's strongly connected components
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
                cycles.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert not cycles, f"modules importing each other: {cycles}"
