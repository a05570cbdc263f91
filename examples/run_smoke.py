"""Run every example with ``--smoke``, each into a fresh temporary folder; print a table.

Each example (every ``examples/*.py`` but ``_common.py`` and this file) runs as a subprocess of
this interpreter, from the current folder, as ``python examples/X.py --smoke --out TMP``, with the
repository this script belongs to first on ``PYTHONPATH`` (the examples run against this checkout).
Its status is ``ok`` (exit 0), ``skipped`` (exit 0 after a line ``skipped: needs ...``: an
optional module of its ``NEEDS`` is missing) or ``FAILED`` (any other exit, a timeout, or a file
written into the current folder instead of ``--out``). The repository checkout's
``git status --porcelain`` must be the same after the runs as before (checked where git and a
checkout are found). Exit status 1 if anything failed, after the tail of each failure's stderr.

Run:   python examples/run_smoke.py [--only NAME ...] [--json smoke.json]
CI:    cd "$scratch" && python "$root/examples/run_smoke.py" --json "$scratch/smoke.json"
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
NOT_EXAMPLES = {"_common.py", Path(__file__).name}
TAIL = 20  # stderr lines shown for a failure


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line and exit status 2, as every tool of the project
        self.exit(2, f"{self.prog}: error: {message}\n")


def examples() -> list[str]:
    """The example names (file stems), sorted."""
    return sorted(p.stem for p in HERE.glob("*.py") if p.name not in NOT_EXAMPLES and not p.name.startswith("_"))


def git_status():
    """``git status --porcelain`` of the checkout this script is in, or None (no git, no checkout)."""
    if shutil.which("git") is None:
        return None
    try:
        top = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--show-toplevel"], capture_output=True,
                             text=True, timeout=60)
        if top.returncode != 0 or Path(top.stdout.strip()).resolve() != ROOT:
            return None
        status = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain"], capture_output=True, text=True,
                                timeout=120)
    except (OSError, subprocess.SubprocessError):
        return None
    return status.stdout if status.returncode == 0 else None


def run_one(name: str, timeout: float) -> dict:
    """Run one example with --smoke into a fresh folder: its record (and its stderr, for a failure)."""
    folder = Path(tempfile.mkdtemp(prefix=f"smoke_{name}_"))
    env = dict(os.environ, MPLBACKEND="Agg")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    cwd_before = set(os.listdir("."))
    t0 = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, str(HERE / f"{name}.py"), "--smoke", "--out", str(folder)],
                              capture_output=True, text=True, timeout=timeout, env=env)
        rc, stdout, stderr = proc.returncode, proc.stdout, proc.stderr
    except subprocess.TimeoutExpired as e:
        rc, stdout = None, e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        stderr = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
    seconds = time.perf_counter() - t0
    outputs = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    shutil.rmtree(folder, ignore_errors=True)
    stray = sorted(set(os.listdir(".")) - cwd_before)
    skipped = [line for line in stdout.splitlines() if line.startswith("skipped: ")]
    if rc is None:
        status, reason = "FAILED", f"timed out after {timeout:g} s"
    elif rc != 0:
        status, reason = "FAILED", f"exit status {rc}"
    elif stray:
        status, reason = "FAILED", f"wrote into the current folder: {', '.join(stray)}"
    elif skipped:
        status, reason = "skipped", skipped[0][len("skipped: "):]
    else:
        status, reason = "ok", ""
    return {"example": name, "status": status, "seconds": round(seconds, 1), "outputs": outputs, "reason": reason,
            "_stderr": stderr}


def table(records) -> str:
    rows = [("example", "status", "seconds", "files written")]
    for r in records:
        status = r["status"] + (f" ({r['reason']})" if r["reason"] else "")
        rows.append((r["example"], status, f"{r['seconds']:.1f}", ", ".join(r["outputs"]) or "-"))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = [" | ".join(cell.ljust(w) for cell, w in zip(row[:3], widths)) + " | " + row[3] for row in rows]
    lines.insert(1, "-+-".join("-" * w for w in widths) + "-+-" + "-" * 13)
    return "\n".join(lines)


def main(argv=None) -> int:
    p = _Parser(prog="run_smoke.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--only", nargs="+", metavar="NAME", help="run only these examples (default: all)")
    p.add_argument("--json", type=Path, metavar="PATH", help="also write the records as JSON to PATH")
    p.add_argument("--overwrite", action="store_true", help="replace the --json file if it exists")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds before an example is stopped (default: 600)")
    args = p.parse_args(argv)
    names = examples()
    if args.only:
        wanted = [n[:-3] if n.endswith(".py") else n for n in args.only]
        unknown = [n for n in wanted if n not in names]
        if unknown:
            p.error(f"--only: no example {', '.join(unknown)}; expected some of: {', '.join(names)}")
        names = [n for n in names if n in wanted]
    if args.json is not None:
        if args.json.exists() and not args.overwrite:
            p.error(f"--json {args.json} exists; pass --overwrite to replace it")
        if not args.json.parent.is_dir():
            p.error(f"--json {args.json}: folder {args.json.parent} does not exist")
    if not args.timeout > 0:
        p.error(f"--timeout {args.timeout:g}: expected a number of seconds > 0")

    before = git_status()
    records = []
    for i, name in enumerate(names, 1):
        print(f"[{i}/{len(names)}] {name} ...", end=" ", flush=True)
        rec = run_one(name, args.timeout)
        print(f"{rec['status']} ({rec['seconds']:.1f} s){': ' + rec['reason'] if rec['reason'] else ''}", flush=True)
        records.append(rec)
    after = git_status()

    print()
    print(table(records))
    failed = [r for r in records if r["status"] == "FAILED"]
    for r in failed:
        tail = r["_stderr"].splitlines()[-TAIL:]
        print(f"\n--- {r['example']}: {r['reason']}; last {len(tail)} lines of stderr:")
        print("\n".join(tail))
    changed = before is not None and after != before
    if changed:
        print(f"\nthe examples changed the checkout {ROOT}:")
        print("before:\n" + (before or "(clean)\n") + "after:\n" + (after or "(clean)\n"), end="")
    elif before is None:
        print("\n(checkout not checked: no git, or this is not a git checkout)")
    if args.json is not None:
        tmp = args.json.with_name(f".{args.json.name}.tmp")
        tmp.write_text(json.dumps([{k: v for k, v in r.items() if not k.startswith("_")} for r in records],
                                  indent=1) + "\n")
        os.replace(tmp, args.json)
        print(f"wrote {args.json}")
    ok = sum(r["status"] == "ok" for r in records)
    skipped = sum(r["status"] == "skipped" for r in records)
    print(f"{len(records)} examples: {ok} ok, {skipped} skipped, {len(failed)} failed"
          + ("; the checkout changed" if changed else ""))
    return 1 if failed or changed else 0


if __name__ == "__main__":
    sys.exit(main())
