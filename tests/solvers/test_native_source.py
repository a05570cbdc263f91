"""The layout of the native kernels' C++ sources (solvers/_native/; issue 19, point 9), read as text:
every function body is at most 80 lines, a struct declares all its fields before its first member
function, no statistics destination is held as member state (``pending_*``), the scheme is an enum
whose values native.SCHEME_CODES mirrors, and the build's cache key and the package data cover every
file of the folder. No compiler needed.

The parser is deliberately small: comments, string literals and preprocessor lines are removed,
then braces are matched; a ``{`` at namespace or struct scope whose preceding declaration ends in
``)`` (or ``) const``) opens a function body, and everything inside a body (lambdas, loops) counts
towards that function.
"""

import re
import tomllib
from pathlib import Path

import pytest

from solvers import native

ROOT = Path(__file__).resolve().parents[2]
MAX_LINES = 80


def strip(text: str) -> str:
    """Comments, string and character literals and preprocessor lines (with their continuations)
    blanked out, line breaks kept (so line numbers stay those of the file)."""
    text = re.sub(r"//[^\n]*|/\*.*?\*/|\"(?:\\.|[^\"\\\n])*\"|'(?:\\.|[^'\\\n])*'",
                  lambda m: re.sub(r"[^\n]", " ", m.group()), text, flags=re.S)
    out, cont = [], False
    for line in text.split("\n"):
        directive = cont or line.lstrip().startswith("#")
        cont = directive and line.rstrip().endswith("\\")
        out.append("" if directive else line)
    return "\n".join(out)


def _is_field(decl: str) -> bool:
    """A declaration at struct scope (up to its ';') that is a data member."""
    if not decl or re.match(r"(using|typedef|static|template|friend|public|private|protected)\b", decl):
        return False
    decl = re.sub(r"\[[^\]]*\]", "", re.sub(r"^alignas\([^)]*\)\s*", "", decl)).split("=")[0]
    return not re.search(r"\w\s*\(", decl)  # name(...): a member function's declaration


def parse(text: str):
    """(functions, structs): functions as (name, first line, last line) of their bodies' braces;
    structs as name -> list of ("field" | "method", line) in declaration order."""
    src = strip(text)
    functions, structs = [], {}
    stack = []  # (kind, name, line) per open brace: namespace, struct, function, block, init
    start = 0   # where the current declaration began
    line = 1
    for i, ch in enumerate(src):
        if ch == "\n":
            line += 1
        if ch not in "{};":
            continue
        kind = stack[-1][0] if stack else "namespace"
        if kind in ("function", "block", "init"):  # inside a body or an initialiser: match braces only
            if ch == "{":
                stack.append(("block" if kind != "init" else "init", "", line))
            elif ch == "}":
                opened = stack.pop()
                if opened[0] == "function":
                    functions.append((opened[1], opened[2], line))
                    start = i + 1
            continue
        head = " ".join(src[start:i].split())
        if ch == ";":
            if kind == "struct" and _is_field(head):
                structs[stack[-1][1]].append(("field", line))
            start = i + 1
            continue
        if ch == "}":  # the end of a struct or namespace
            stack.pop()
            start = i + 1
            continue
        struct = re.search(r"\b(struct|class|union)\s+(\w+)[^()]*$", head)
        if re.search(r"\)\s*(const\s*)?(noexcept\s*)?$", head):
            name = re.search(r"(~?\w+)\s*\(", head)
            stack.append(("function", name.group(1) if name else head, line))
            if kind == "struct":
                structs[stack[-2][1]].append(("method", line))
        elif struct and not re.search(r"\benum\b", head):
            stack.append(("struct", struct.group(2), line))
            structs.setdefault(struct.group(2), [])
        elif re.match(r"namespace\b", head) or head.startswith("extern"):
            stack.append(("namespace", head, line))
        else:  # an enum's values or an initialiser (V{}, x{}): part of the declaration, up to its ';'
            stack.append(("init", head, line))
            continue
        start = i + 1
    assert not stack, f"unbalanced braces: {stack}"
    return functions, structs


def sources():
    return sorted(p for p in native.NATIVE_DIR.iterdir() if p.suffix in (".cc", ".h"))


@pytest.mark.parametrize("path", sources(), ids=lambda p: p.name)
def test_every_function_is_at_most_80_lines(path):
    functions, _ = parse(path.read_text())
    long = [(name, b - a + 1) for name, a, b in functions if b - a + 1 > MAX_LINES]
    assert not long, f"{path.name}: functions over {MAX_LINES} lines: {long}"


def test_the_parser_finds_the_kernels_functions_and_long_ones():
    """The check above is not vacuous: the parser sees the entry points, and it flags a long body."""
    names = {name for p in sources() for name, _, _ in parse(p.read_text())[0]}
    assert {"PhaseRolloutImpl", "LinearStepImpl", "LinearMomentsImpl", "linear_pass", "layer_w", "stats_end",
            "vexp", "run_threads"} <= names
    body = "\n".join(f"  x += {i};" for i in range(MAX_LINES))
    text = f"namespace {{\ntemplate <int D>\nvoid f(int x) const {{\n{body}\n  if (x) {{ g(); }}\n}}\n}}\n"
    assert [(n, b - a + 1) for n, a, b in parse(text)[0]] == [("f", MAX_LINES + 3)]
    late = "struct S {\n  int a;\n  void f() { a = 1; }\n  int b = g(2);\n};\n"
    assert parse(late)[1]["S"] == [("field", 2), ("method", 3), ("field", 4)]


@pytest.mark.parametrize("path", sources(), ids=lambda p: p.name)
def test_structs_declare_their_fields_together_before_their_methods(path):
    _, structs = parse(path.read_text())
    for name, items in structs.items():
        kinds = [k for k, _ in items]
        if "method" in kinds:
            late = [ln for k, ln in items[kinds.index("method"):] if k == "field"]
            assert not late, f"{path.name}: struct {name} declares fields after its first method, lines {late}"


def test_statistics_destinations_are_arguments_not_member_state():
    for path in sources():
        assert "pending_" not in strip(path.read_text()), path.name
    text = strip((native.NATIVE_DIR / "phase_softmax.cc").read_text())
    assert "stats_to" not in text
    assert re.search(r"void layer\(T h, const SaveTo<T>\* save\)", text)


def test_scheme_is_an_enum_that_native_py_mirrors():
    text = strip((native.NATIVE_DIR / "linear.cc").read_text())
    m = re.search(r"enum class Scheme\s*:\s*int32_t\s*\{([^}]*)\}", text)
    assert m, "linear.cc: enum class Scheme not found"
    values = {k.strip(): int(v) for k, v in (item.split("=") for item in m.group(1).split(",") if item.strip())}
    assert {name: values["k" + name.capitalize()] for name in native.SCHEME_CODES} == native.SCHEME_CODES
    assert not re.search(r"\bscheme\s*(==|!=|>=|<=|<|>)\s*-?\d", text), "a magic scheme number is compared"


def test_the_cache_key_and_the_package_cover_every_source(tmp_path, monkeypatch):
    assert set(native.SOURCES) | set(native.HEADERS) == set(sources())
    digest = native._source_digest()
    copies = []
    for path in native.HEADERS:
        copy = tmp_path / path.name
        copy.write_bytes(path.read_bytes() + b"\n// an edit\n")
        copies.append(copy)
    monkeypatch.setattr(native, "HEADERS", tuple(copies))
    assert native._source_digest() != digest  # an edit to the header alone rebuilds
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["solvers"]
    for path in sources():
        rel = path.relative_to(ROOT / "solvers").as_posix()
        assert any(Path(rel).match(pattern) for pattern in data), f"{rel} is not in solvers' package-data"
