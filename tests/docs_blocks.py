"""Run the code of README.md and docs/*.md as a reader would, check what the pages show, regenerate it.

Every fenced block carries an info string; the harness (Sybil parsers, one page at a time, top to
bottom, in a fresh temporary folder that holds links ``examples`` and ``tests`` to the repository's
folders) treats them so:

``python``
    executed in the page's own Python process (one namespace per page, as in a notebook; not the
    test process, whose 64-bit JAX and strict promotion a reader does not have).
``output``
    the expected output (stdout and stderr) of the python block before it.
``console``
    ``$ command`` lines (a trailing ``\\`` continues a command) run with bash; the lines after
    each are its expected stdout and stderr. Every command must exit with status 0 (a page shows a
    failure with ``; echo "exit status $?"``). ``pip install`` commands are not run: the test
    environment is the one ``.ci/run`` installs.
``bash``
    a script that must exit with status 0; its output is not compared.
anything else (``text``, ``toml``, ...)
    shown, not run. A fence without an info string is refused: say what a block is.

``<!-- invisible-code-block: python ... -->`` runs Python that the page does not show (e.g. to
read a results file). ``<!-- value: EXPR -->TEXT<!-- /value -->`` in prose is a number or phrase
computed by the page: ``EXPR`` is evaluated in the page's namespace at that point and must
produce TEXT. ``<!-- skip: next "reason" -->`` skips the next block, and
``<!-- skip: next if(missing("torch"), reason="needs torch") -->`` or
``if(no_gpu(), reason="needs a GPU")`` skip it where the environment lacks something.

Expected and actual text are compared line by line after cleaning: progress bars and ANSI codes
removed, durations (``2.6 s``, ``784 us``) and timestamps masked, runs of spaces folded. Numbers
must agree to one unit in the last digit the page prints (a value on a rounding boundary may
print either way after a change of summation order); integers exactly. A line ``...`` in an
expected block matches any number of lines.

Regenerate what a page shows from real runs (outputs, values), rewriting the page in place:

    python tests/docs_blocks.py --update docs/cli.md [more pages]
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import re
import select
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

from sybil import Document, Region
from sybil.parsers.markdown import CodeBlockParser, SkipParser

ROOT = Path(__file__).resolve().parents[1]
LINKED = ("examples", "tests")
WORKER = Path(__file__).with_name("_docs_worker.py")
TIMEOUT = 900  # seconds for one block: the longest documented run on this project's 2-core machine

NUMBER = re.compile(r"(?<![\w.])[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?(?![\w.])")
DURATION = re.compile(r"(?<![\w.])\d+(?:\.\d+)?\s?(?:ns|us|µs|ms|s|sec|min|h)(?![\w])(?:/step|/it)?")
TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(?:\.\d+)?(?:[+-]\d\d:\d\d|Z)?")
BAR = re.compile(r"\d+%\|.*\||\|\s*\d+/\d+\s*\[|it/s\]|step/s\]")
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
FENCE = re.compile(r"^[ \t]*(`{3,}|~{3,})(.*)$", re.MULTILINE)
VALUE = re.compile(r"<!-- value: (?P<expr>.*?) -->(?P<text>.*?)<!-- /value -->", re.DOTALL)


def pages() -> list[str]:
    """README.md and every page of docs/, as paths relative to the repository."""
    return ["README.md"] + sorted(f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md"))


# ----------------------------------------------------------------------------- comparing text
def clean(text: str) -> list[str]:
    """Lines as a reader sees them at the end: no progress bars, no ANSI codes, no trailing blanks."""
    lines = []
    for line in ANSI.sub("", text).split("\n"):
        kept = [seg for seg in line.split("\r") if seg.strip() and not BAR.search(seg)]
        if "\r" in line and not kept:
            continue
        lines.append((kept[-1] if kept else line).rstrip())
    while lines and not lines[-1]:
        lines.pop()
    return lines


def _masked(line: str) -> str:
    return TIMESTAMP.sub("<date>", DURATION.sub("<time>", line))


def _shape(line: str) -> str:
    return " ".join(NUMBER.sub("#", _masked(line)).split())


def _unit(number: str) -> float:
    """One unit in the last printed digit of ``number`` (0 for an integer: exact)."""
    mantissa, _, exponent = number.lower().partition("e")
    if "." not in mantissa:
        return 10.0 ** int(exponent) if exponent else 0.0
    return 10.0 ** (-len(mantissa.split(".")[1]) + (int(exponent) if exponent else 0))


def line_problem(expected: str, actual: str) -> str | None:
    """Why ``actual`` is not ``expected`` (None if it is, within the printed precision)."""
    if _shape(expected) != _shape(actual):
        return f"expected {expected.strip()!r}\n       got {actual.strip()!r}"
    for e, a in zip(NUMBER.findall(_masked(expected)), NUMBER.findall(_masked(actual))):
        if abs(float(e) - float(a)) > 1.0001 * _unit(e):
            return f"{e} became {a}:\n  expected {expected.strip()!r}\n       got {actual.strip()!r}"
    return None


def _segments(expected: list[str]) -> list[list[str]]:
    segs, cur = [], []
    for line in expected:
        if line.strip() == "...":
            segs.append(cur)
            cur = []
        else:
            cur.append(line)
    return segs + [cur]


def align(expected: list[str], actual: list[str], *, shape_only: bool = False):
    """Match ``expected`` (with ``...`` gaps) against ``actual``: ``(problems, matched)``, where
    ``matched`` gives, per expected line that is not ``...``, the index of its actual line. The first
    segment is anchored at the start of the output and the last at its end."""
    def same(e, a):
        return _shape(e) == _shape(a) if shape_only else line_problem(e, a) is None

    def at(seg, s):
        return 0 <= s and s + len(seg) <= len(actual) and all(same(e, actual[s + i]) for i, e in enumerate(seg))

    segs = _segments(expected)
    if len(segs) == 1:
        if len(segs[0]) == len(actual) and at(segs[0], 0):
            return [], list(range(len(actual)))
        return [_difference(segs[0], actual, 0)], None
    first, middle, last = segs[0], segs[1:-1], segs[-1]
    if not at(first, 0):
        return [_difference(first, actual, 0)], None
    matched, pos = list(range(len(first))), len(first)
    for seg in (s for s in middle if s):
        hit = next((s for s in range(pos, len(actual) - len(seg) + 1) if at(seg, s)), None)
        if hit is None:
            return [f"these lines are not in the output: {seg[0].strip()!r} ...\noutput:\n" + "\n".join(actual[:80])], None
        matched += range(hit, hit + len(seg))
        pos = hit + len(seg)
    end = len(actual) - len(last)
    if end < pos or not at(last, end):
        return [_difference(last, actual, max(end, pos))], None
    return [], matched + list(range(end, len(actual)))


def _difference(seg: list[str], actual: list[str], pos: int) -> str:
    for i, e in enumerate(seg):
        if pos + i >= len(actual):
            return f"the output ended before expected line {e.strip()!r}; output:\n" + "\n".join(actual[-30:])
        problem = line_problem(e, actual[pos + i])
        if problem:
            return f"line {pos + i + 1} of the output: {problem}"
    return f"unexpected output after the expected lines: {actual[pos + len(seg)].strip()!r}"


def updated(expected: list[str], actual: list[str]) -> list[str]:
    """``expected`` rewritten from ``actual``: everything, or, with ``...`` gaps, the matched lines."""
    if not any(line.strip() == "..." for line in expected):
        return actual
    problems, matched = align(expected, actual, shape_only=True)
    if problems:
        raise AssertionError("cannot update an elided block whose lines no longer occur:\n" + problems[0])
    out, it = [], iter(matched)
    for line in expected:
        out.append(line if line.strip() == "..." else actual[next(it)])
    return out


# ----------------------------------------------------------------------------- the page's processes
def environment() -> dict:
    """What a page's commands see: this interpreter's scripts first, this tree's packages first."""
    env = dict(os.environ)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env.update(MPLBACKEND="Agg", COLUMNS="100", TERM="dumb", NO_COLOR="1")
    for name in [k for k in env if k.startswith(("PYTEST_", "JAX_ENABLE_X64"))]:
        del env[name]
    return env


class Worker:
    """The page's Python process (``tests/_docs_worker.py``)."""

    def __init__(self, cwd: Path):
        self.log = open(cwd / ".docs-worker.log", "w+")
        read, write = os.pipe()
        env = {**environment(), "DOCS_REPLY_FD": str(write)}
        self.proc = subprocess.Popen([sys.executable, "-u", "-c", WORKER.read_text()], cwd=cwd, env=env,
                                     stdin=subprocess.PIPE, stdout=self.log, stderr=self.log, text=True,
                                     pass_fds=(write,))
        os.close(write)
        self.reply = os.fdopen(read, "r")

    def run(self, mode: str, code: str, filename: str) -> dict:
        self.proc.stdin.write(json.dumps({"mode": mode, "code": code, "filename": filename}) + "\n")
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.reply], [], [], TIMEOUT)
        line = self.reply.readline() if ready else ""
        if not line:
            self.log.seek(0)
            raise AssertionError(f"{filename}: the page's Python process died or took more than {TIMEOUT} s:\n"
                                 + self.log.read()[-3000:])
        return json.loads(line)

    def close(self) -> None:
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.reply.close()
        self.log.close()


@dataclasses.dataclass
class Page:
    """One page's run: where it runs, what it printed last, what an update would rewrite."""

    path: Path
    cwd: Path
    update: bool
    worker: Worker | None = None
    last_stdout: str | None = None
    replacements: list = dataclasses.field(default_factory=list)  # (start, end, new text)
    skipped: list = dataclasses.field(default_factory=list)       # (line, reason)

    def python(self, mode: str, code: str, where: str) -> dict:
        if self.worker is None:
            self.worker = Worker(self.cwd)
        reply = self.worker.run(mode, code, where)
        if reply["error"]:
            raise AssertionError(f"{where} raised:\n{reply['error']}")
        return reply

    def expect(self, region_text: tuple[int, int], expected: str, actual_lines: list[str], where: str) -> None:
        """Compare, or record the rewrite of ``expected`` (the block body at ``region_text``)."""
        exp = expected.rstrip("\n").split("\n") if expected.strip() else []
        if self.update:
            new = "\n".join(updated(exp, actual_lines))
            if new != "\n".join(exp):
                self.replacements.append((*region_text, new + ("\n" if new else "")))
            return
        problems, _ = align(exp, actual_lines)
        if problems:
            raise AssertionError(f"{where}: the output differs from the page (python tests/docs_blocks.py --update "
                                 f"{self.path.relative_to(ROOT)} rewrites it)\n{problems[0]}")


def _page(example) -> Page:
    return example.namespace["_page"]


def _where(example) -> str:
    return f"{_page(example).path.relative_to(ROOT)}:{example.line}"


def _body_span(example) -> tuple[int, int]:
    """Character range of a fenced block's body in the page (what an update rewrites)."""
    src = example.parsed
    start = example.region.start + src.offset
    return start, start + len(str(src))


def evaluate_python(example) -> None:
    page = _page(example)
    page.last_stdout = page.python("exec", str(example.parsed), _where(example))["stdout"]


def evaluate_output(example) -> None:
    page = _page(example)
    if page.last_stdout is None:
        raise AssertionError(f"{_where(example)}: an output block must follow a python block")
    page.expect(_body_span(example), str(example.parsed), clean(page.last_stdout), _where(example))
    page.last_stdout = None


def _without_installs(command: str) -> str:
    parts = [p.strip() for p in command.split("&&")]
    while parts and re.match(r"(python -m )?pip install\b", parts[0]):
        parts.pop(0)
    return " && ".join(parts)


def run_shell(command: str, page: Page, where: str) -> str:
    r = subprocess.run(["bash", "-c", command], cwd=page.cwd, env=environment(), stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, timeout=TIMEOUT)  # interleaved, as in a terminal
    out = r.stdout.decode("utf-8", "replace")  # not text=True: it turns a progress bar's \r into new lines
    if r.returncode != 0:
        raise AssertionError(f"{where}: `{command}` exited with status {r.returncode}:\n" + "\n".join(clean(out)[-40:]))
    return out


def console_commands(text: str) -> list[tuple[str, list[str], int]]:
    """``$ command`` lines and the expected output after each: ``[(command, lines, body line)]``."""
    commands, lines = [], text.rstrip("\n").split("\n")
    i = 0
    while i < len(lines):
        if not lines[i].startswith("$ "):
            raise ValueError(f"console block line {i + 1} is neither a '$ ' command nor its output: {lines[i]!r}")
        first, cmd = i, lines[i][2:]
        while cmd.endswith("\\"):
            i += 1
            cmd = cmd + "\n" + lines[i]  # bash joins a backslash-newline itself
        i += 1
        out_start = i
        while i < len(lines) and not lines[i].startswith("$ "):
            i += 1
        commands.append((cmd, lines[out_start:i], first))
    return commands


def evaluate_console(example) -> None:
    page, body = _page(example), str(example.parsed)
    start, _ = _body_span(example)
    offsets = [0]
    for line in body.split("\n"):
        offsets.append(offsets[-1] + len(line) + 1)
    for cmd, expected, first in console_commands(body):
        where = f"{_where(example)} (+{first + 1})"
        run = _without_installs(cmd)
        if not run:
            continue
        actual = clean(run_shell(run, page, where))
        n_cmd = cmd.count("\n") + 1
        lo, hi = offsets[first + n_cmd], offsets[first + n_cmd + len(expected)]
        page.expect((start + lo, start + hi), "\n".join(expected), actual, where)


def evaluate_bash(example) -> None:
    page = _page(example)
    lines = [_without_installs(line) if "pip install" in line else line for line in str(example.parsed).split("\n")]
    run_shell("set -euo pipefail\n" + "\n".join(lines), page, _where(example))


def code_ranges(text: str) -> list[tuple[int, int]]:
    """Character ranges of fenced blocks and inline code: directives shown there are examples."""
    ranges, opened = [], None
    for m in FENCE.finditer(text):
        if opened is None:
            opened = m
        elif m.group(1).startswith(opened.group(1)[0] * len(opened.group(1))) and not m.group(2).strip():
            ranges.append((opened.start(), m.end()))
            opened = None
    for m in re.finditer(r"(?<!`)`[^`\n]+`(?!`)", text):
        if not any(lo <= m.start() < hi for lo, hi in ranges):
            ranges.append((m.start(), m.end()))
    return ranges


def _outside_code(document: Document, regions):
    ranges = code_ranges(document.text)
    return (r for r in regions if not any(lo <= r.start < hi for lo, hi in ranges))


class ValueParser:
    """``<!-- value: EXPR -->TEXT<!-- /value -->``: prose that the page's own code produces."""

    def __call__(self, document: Document):
        ranges = code_ranges(document.text)
        for m in VALUE.finditer(document.text):
            if any(lo <= m.start() < hi for lo, hi in ranges):
                continue
            yield Region(m.start(), m.end(), (m.group("expr"), m.group("text"), m.start("text"), m.end("text")),
                         evaluate_value)


def evaluate_value(example) -> None:
    expr, text, lo, hi = example.parsed
    page = _page(example)
    value = page.python("eval", expr, _where(example))["value"]
    value = "" if value is None else value
    if page.update:
        if value != text:
            page.replacements.append((lo, hi, value))
        return
    problem = line_problem(text, value)
    if problem:
        raise AssertionError(f"{_where(example)}: <!-- value: {expr} --> {problem}")


def missing(*modules: str) -> bool:
    """True if any of ``modules`` cannot be imported (for ``skip: next if(missing(...))``)."""
    return any(importlib.util.find_spec(m) is None for m in modules)


def no_gpu() -> bool:
    """True if JAX sees no GPU (for ``skip: next if(no_gpu())``)."""
    import jax

    return jax.default_backend() != "gpu"


class ShownSkipParser(SkipParser):
    """Sybil's skip directives, except those shown inside code (as on docs/contributing.md)."""

    def __call__(self, document: Document):
        return _outside_code(document, super().__call__(document))


PARSERS = [
    CodeBlockParser("python", evaluate_python),
    CodeBlockParser("output", evaluate_output),
    CodeBlockParser("console", evaluate_console),
    CodeBlockParser("bash", evaluate_bash),
    ValueParser(),
    ShownSkipParser(),
]


def unlabelled_fences(text: str) -> list[int]:
    """Line numbers of opening fences without an info string."""
    lines, inside, bad = [], None, []
    for m in FENCE.finditer(text):
        fence, info = m.group(1), m.group(2).strip()
        line = text.count("\n", 0, m.start()) + 1
        if inside is None:
            inside = fence[0] * len(fence)
            if not info:
                bad.append(line)
        elif fence.startswith(inside) and not info:
            inside = None
    return bad


def git_status() -> str | None:
    try:
        return subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True,
                              timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return None


def run_page(page: str, workdir: Path, *, update: bool = False) -> Page:
    """Run one page top to bottom in ``workdir``; raise AssertionError at the first failure."""
    path = ROOT / page
    bad = unlabelled_fences(path.read_text(encoding="utf-8"))
    if bad:
        raise AssertionError(f"{page}: code fences without an info string at lines {bad} (python, console, "
                             "output, bash, text, ...: tests/docs_blocks.py)")
    for folder in LINKED:  # the repository's scripts, as a reader in the checkout runs them
        (workdir / folder).symlink_to(ROOT / folder, target_is_directory=True)
    state = Page(path, workdir, update)
    document = Document.parse(str(path), *PARSERS)
    document.namespace.update(_page=state, missing=missing, no_gpu=no_gpu)
    try:
        for example in document:
            try:
                example.evaluate()
            except unittest.SkipTest as skip:
                state.skipped.append((example.line, str(skip)))
    finally:
        if state.worker is not None:
            state.worker.close()
    return state


def rewrite(page: Page) -> int:
    """Apply an update run's replacements to the page, atomically; the number of places changed."""
    text = page.path.read_text(encoding="utf-8")
    for lo, hi, new in sorted(page.replacements, reverse=True):
        text = text[:lo] + new + text[hi:]
    tmp = page.path.with_name(f".{page.path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, page.path)
    return len(page.replacements)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Run the docs' code blocks; with --update, rewrite what the pages "
                                "show from the real output.")
    p.add_argument("pages", nargs="*", help="pages relative to the repository (default: all)")
    p.add_argument("--update", action="store_true", help="rewrite expected outputs and values in place")
    args = p.parse_args(argv)
    status = 0
    for page in args.pages or pages():
        with tempfile.TemporaryDirectory(prefix="meanfield-docs-") as tmp:
            try:
                state = run_page(page, Path(tmp), update=args.update)
            except AssertionError as e:
                print(f"FAILED {page}: {e}", file=sys.stderr)
                status = 1
                continue
        changed = rewrite(state) if args.update and state.replacements else 0
        skips = "".join(f"\n  skipped line {line}: {why}" for line, why in state.skipped)
        print(f"{page}: ok" + (f", {changed} place(s) rewritten" if args.update else "") + skips)
    return status


if __name__ == "__main__":
    sys.exit(main())
