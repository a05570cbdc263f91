"""Every example runs: ``python examples/X.py --smoke --out DIR`` from a folder that is not the
repository exits with status 0 and writes the files it promises, each readable and non-empty, with
one number checked where that is cheap (a figure's pixel size is its figsize times its dpi; a rate
against its closed form; a count against the input it came from); run again without
``--overwrite`` it refuses in one line before doing any work and leaves the files as they were.
Examples whose ``NEEDS`` are missing skip with the reason. Then the shared command line
(``examples/_common.py``) and the runner (``examples/run_smoke.py``), in-process and fast.
Examples that take more than ~10 s are listed in tests/slow_tests.txt."""

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
sys.path.insert(0, str(EXAMPLES))

import _common  # noqa: E402
import run_smoke  # noqa: E402


def _env():
    """A reader's environment: this tree importable, no test-session settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "JAX_"))}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env["MPLBACKEND"] = "Agg"
    return env


def _needs(name):
    """The example's NEEDS tuple, read from its source (importing it would run it)."""
    for node in ast.parse((EXAMPLES / f"{name}.py").read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "NEEDS" for t in node.targets):
            return tuple(ast.literal_eval(node.value))
    return ()


def _run(name, cwd, *args, timeout=600):
    return subprocess.run([sys.executable, str(EXAMPLES / f"{name}.py"), *args], cwd=cwd, env=_env(),
                          capture_output=True, text=True, timeout=timeout)


def _png(path, width, height):
    """A valid PNG of the expected pixel size (figsize x dpi, no tight bounding box)."""
    import matplotlib.image

    img = matplotlib.image.imread(path)
    assert img.shape[:2] == (height, width), (path, img.shape)
    assert np.ptp(img) > 0, f"{path} is blank"


def _number(pattern, text):
    m = re.search(pattern, text)
    assert m, f"{pattern!r} not in the output:\n{text}"
    return float(m.group(1))


# --- per example: the files it promises, and a cheap independent check --------------------------
def check_bad_inputs(out, stdout):
    tried, good = map(int, re.search(r"(\d+) inputs tried, (\d+) with the expected outcome", stdout).groups())
    import bad_inputs

    kinds = {(tool, expected) for tool, _, _, expected in bad_inputs.cases()}
    assert tried == good == len(kinds)  # one case of each kind, each with its expected outcome


def check_circle_clusters(out, stdout):
    _png(out / "circle_clusters.png", 1650, 528)  # figsize (15, 4.8) at dpi 110


def check_dump_minilm(out, stdout):
    from meanfield.dump import read_dump

    dump = read_dump(out / "minilm_dump.h5")
    assert dump.meta["N"] == 64  # --smoke reads the first 64 tokens of a 314-token text
    assert list(dump.layers) == list(range(6))  # all six BERT layers of MiniLM-L6
    errors = re.search(r"per layer: \[(.*)\]", stdout).group(1).split()
    assert max(float(e) for e in errors) < 1e-4  # the captured attention is the model's


def check_dynamics(out, stdout):
    _png(out / "dynamics.png", 1100, 440)
    # closed forms (docs/theory.md "Normalisation placements"): post-LN 1 - rho ~ e^{-2t}, nGPT e^{-2at}, a = 0.5
    assert abs(_number(r"post_ln .* = ([-+.\d]+)", stdout) + 2.0) < 0.05
    assert abs(_number(r"ngpt .* = ([-+.\d]+)", stdout) + 1.0) < 0.05


def check_float32_collapse_rank(out, stdout):
    for dtype in ("float32", "float64"):
        last = float(re.search(rf"^{dtype} layers .*: (.*)$", stdout, re.M).group(1).split()[-1])
        assert 1.0 <= last < 1.01  # collapsed: effective rank -> 1


def check_float32_rank_bias(out, stdout):
    rows = [line.split() for line in stdout.splitlines() if line.split()[:1] in (["softmax"], ["linear"])]
    assert len(rows) == 3  # three kernels at d = 4
    for row in rows:  # float32 against float64 on the same tokens: a few float32 epsilons
        assert abs(float(row[5])) < 1e-4, row


def check_merging(out, stdout):
    for name in ("merging_collapse_softmax.png", "merging_collapse_linear.png"):
        _png(out / name, 363, 682)  # figsize (3.3 per configuration, 6.2) at dpi 110; --smoke: one configuration
    _png(out / "merging_cost.png", 880, 462)  # figsize (8, 4.2) at dpi 110
    results = json.loads((out / "merging_results.json").read_text())
    for m in (0.3, 0.6, 0.9):  # merging m of N tokens keeps N (1 - m) of them
        assert results["cost"][f"softmax/tome-prop/{m}"]["n_tokens"] == pytest.approx(1024 * (1 - m), abs=1)
    assert set(results["softmax/256/4/0"]) == {"none", "mobility/0.5", "tome-prop/0.5", "tome/0.5", "fastvggt/0.5"}


def check_merging_vit(out, stdout):
    _png(out / "merging_vit_table1.png", 1100, 440)
    _png(out / "merging_vit_cost.png", 825, 440)
    results = json.loads((out / "merging_vit_results.json").read_text())
    assert results["n_tokens"] == 1 + (112 // 14) ** 2  # class token + patches of 14 px
    assert len(results["exp2"]) == 2


def check_own_weights_replay(out, stdout):
    from meanfield.dump import read_dump

    dump = read_dump(EXAMPLES / "data" / "minilm_dump.h5")
    x = np.asarray(dump.sample[0], np.float64)
    radius = float(np.median(np.linalg.norm(x, axis=1)))  # the median token norm of the dump's layer 0
    assert _number(r"radius r = ([.\d]+)", stdout) == pytest.approx(radius, abs=6e-4)
    assert stdout.count("explained") == 8  # four statistics, two replays


def check_paper_tables(out, stdout):
    _png(out / "paper_tables.png", 1560, 456)  # figsize (13, 3.8) at dpi 120


def check_phase_diagram(out, stdout):
    _png(out / "phase_diagram.png", 1386, 396)  # figsize (3 x 4.2, 3.6) at dpi 110


def check_readme_figure(out, stdout):
    _png(out / "collapse.png", 990, 715)  # figsize (9, 6.5) at dpi 110


def check_vision_compare(out, stdout):
    _png(out / "dinov2_compare.png", 1100, 800)
    assert "| DINOv2 astronaut 518px | 1370 |" in stdout  # 1 + 37^2 tokens at 518 px
    assert "| MiniLM text | 314 |" in stdout


def check_zonal_collapse(out, stdout):
    _png(out / "zonal_collapse.png", 1540, 825)
    for d in (3, 64, 1024):  # late entropy slope against the closed form -(d-1)/M, M = 1
        slope = _number(rf"d=\s*{d}: late slope dH/dt =\s*([-.\d]+)", stdout)
        assert slope == pytest.approx(-(d - 1), rel=0.03)


CHECKS = {name[len("check_"):]: f for name, f in dict(globals()).items() if name.startswith("check_")}


def test_every_example_has_a_test():
    assert sorted(CHECKS) == run_smoke.examples()


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_example_smoke(name, tmp_path):
    lacking = _common.missing(_needs(name))
    if lacking:
        pytest.skip(f"needs {', '.join(lacking)}")
    out = tmp_path / "out"
    proc = _run(name, tmp_path, "--smoke", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(os.listdir(tmp_path)) == ["out"], "wrote outside --out"
    files = sorted(p for p in out.rglob("*") if p.is_file())
    assert all(p.stat().st_size > 0 for p in files)
    CHECKS[name](out, proc.stdout)
    if not files:
        return
    before = {p: p.read_bytes() for p in files}
    again = _run(name, tmp_path, "--smoke", "--out", str(out))
    assert again.returncode == 2 and again.stdout == "", (again.stdout, again.stderr)
    assert len(again.stderr.splitlines()) == 1 and "--overwrite" in again.stderr, again.stderr
    assert {p: p.read_bytes() for p in files} == before


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_docstring_shows_how_to_run(name):
    doc = ast.get_docstring(ast.parse((EXAMPLES / f"{name}.py").read_text()))
    assert re.search(rf"^Run:\s+python examples/{name}\.py", doc, re.M), doc
    assert re.search(rf"^Smoke:\s+python examples/{name}\.py --smoke", doc, re.M), doc


def test_missing_needs_skip_with_exit_0(tmp_path):
    script = tmp_path / "needy.py"
    script.write_text(f"import sys; sys.path.insert(0, {str(EXAMPLES)!r})\nimport _common\n"
                      "_common.parse('Needs a module.', outputs=['x.txt'], needs=('json', 'no_such_module_xyz'))\n"
                      "raise SystemExit('ran without its NEEDS')\n")
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=_env(), capture_output=True, text=True)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "skipped: needs no_such_module_xyz\n", "")


# --- examples/_common.py, in-process ------------------------------------------------------------
def _parse(capsys, *argv, outputs=("a.txt", "b.png")):
    try:
        return _common.parse("Doc.", outputs=list(outputs), argv=list(argv))
    except SystemExit as e:
        captured = capsys.readouterr()
        return e.code, captured.err


def test_out_folder_is_created_and_outputs_land_in_it(tmp_path, capsys):
    args, out = _parse(capsys, "--out", str(tmp_path / "new" / "folder"))
    assert (tmp_path / "new" / "folder").is_dir() and not args.overwrite and not args.smoke
    assert out("a.txt") == tmp_path / "new" / "folder" / "a.txt"
    out.text("a.txt", "hello")
    assert (tmp_path / "new" / "folder" / "a.txt").read_text() == "hello"
    with pytest.raises(KeyError, match="not among the declared outputs"):
        out("c.txt")


def test_default_out_is_the_current_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    args, out = _parse(capsys)
    assert out("b.png").resolve() == tmp_path / "b.png"


def test_existing_output_is_refused_in_one_line_and_left_alone(tmp_path, capsys):
    (tmp_path / "b.png").write_bytes(b"old")
    code, err = _parse(capsys, "--out", str(tmp_path))
    assert code == 2 and len(err.splitlines()) == 1
    assert f"{tmp_path / 'b.png'} exists; pass --overwrite" in err
    assert (tmp_path / "b.png").read_bytes() == b"old" and not (tmp_path / "a.txt").exists()


def test_overwrite_replaces(tmp_path, capsys):
    (tmp_path / "a.txt").write_text("old")
    args, out = _parse(capsys, "--out", str(tmp_path), "--overwrite")
    out.text("a.txt", "new")
    assert (tmp_path / "a.txt").read_text() == "new"
    assert not list(tmp_path.glob(".*tmp"))  # the atomic write left no temporary file


def test_a_file_written_by_this_run_may_be_rewritten(tmp_path, capsys):
    args, out = _parse(capsys, "--out", str(tmp_path), outputs=["r.json"])
    out.json("r.json", {"a": 1}, quiet=True)
    out.json("r.json", {"a": 2}, quiet=True)  # a results file saved after every step
    assert json.loads((tmp_path / "r.json").read_text()) == {"a": 2}


@pytest.mark.parametrize("argv, message", [
    (["--bogus"], "unrecognized arguments: --bogus"),
    (["--out"], "expected one argument"),
])
def test_bad_arguments_are_one_line(argv, message, capsys):
    code, err = _parse(capsys, *argv)
    assert code == 2 and len(err.splitlines()) == 1 and message in err


def test_out_that_is_a_file_is_refused(tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    code, err = _parse(capsys, "--out", str(tmp_path / "f"))
    assert code == 2 and "is not a folder" in err and len(err.splitlines()) == 1


def test_out_that_looks_like_a_file_name_is_refused(tmp_path, capsys):
    code, err = _parse(capsys, "--out", str(tmp_path / "figure.png"))  # --out was a file before issue 18
    assert code == 2 and "looks like a file name" in err and not (tmp_path / "figure.png").exists()
    (tmp_path / "run.v2").mkdir()
    args, out = _parse(capsys, "--out", str(tmp_path / "run.v2"))  # a folder with a dot in its name is fine
    assert out("a.txt") == tmp_path / "run.v2" / "a.txt"


def test_figure_is_a_png(tmp_path, capsys):
    import matplotlib.pyplot as plt

    args, out = _parse(capsys, "--out", str(tmp_path))
    fig = plt.figure(figsize=(2, 1))
    fig.add_subplot().plot([0, 1], [1, 0])
    out.figure("b.png", fig, dpi=50)
    _png(tmp_path / "b.png", 100, 50)


# --- examples/run_smoke.py, on stand-in examples ------------------------------------------------
STAND_INS = {
    "good": "import sys, pathlib\n"
            "(pathlib.Path(sys.argv[sys.argv.index('--out') + 1]) / 'x.txt').write_text('1')\n",
    "needy": "print('skipped: needs torch')\n",
    "broken": "import sys\nprint('a line of stderr', file=sys.stderr)\nraise SystemExit(3)\n",
    "litter": "open('litter.txt', 'w').write('1')\n",
}


def test_run_smoke_table_json_and_exit_status(tmp_path, monkeypatch, capsys):
    folder = tmp_path / "examples"
    folder.mkdir()
    for name, source in STAND_INS.items():
        (folder / f"{name}.py").write_text(source)
    (folder / "_common.py").write_text("raise SystemExit('not an example')\n")
    monkeypatch.setattr(run_smoke, "HERE", folder)
    monkeypatch.setattr(run_smoke, "ROOT", tmp_path)  # not a git checkout: the status check is skipped
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    assert run_smoke.examples() == ["broken", "good", "litter", "needy"]
    assert run_smoke.main(["--json", str(tmp_path / "smoke.json")]) == 1
    text = capsys.readouterr().out
    records = {r["example"]: r for r in json.loads((tmp_path / "smoke.json").read_text())}
    assert records["good"]["status"] == "ok" and records["good"]["outputs"] == ["x.txt"]
    assert (records["needy"]["status"], records["needy"]["reason"]) == ("skipped", "needs torch")
    assert (records["broken"]["status"], records["broken"]["reason"]) == ("FAILED", "exit status 3")
    assert records["litter"]["status"] == "FAILED" and "litter.txt" in records["litter"]["reason"]
    assert set(records["good"]) == {"example", "status", "seconds", "outputs", "reason"}
    assert "a line of stderr" in text and "4 examples: 1 ok, 1 skipped, 2 failed" in text
    (cwd / "litter.txt").unlink()
    assert run_smoke.main(["--only", "good", "needy.py", "--json", str(tmp_path / "smoke.json"), "--overwrite"]) == 0


def test_run_smoke_refuses_unknown_names_and_existing_json(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        run_smoke.main(["--only", "no_such_example"])
    assert e.value.code == 2 and "no example no_such_example" in capsys.readouterr().err
    (tmp_path / "s.json").write_text("[]")
    with pytest.raises(SystemExit) as e:
        run_smoke.main(["--json", str(tmp_path / "s.json")])
    assert e.value.code == 2 and "exists; pass --overwrite" in capsys.readouterr().err
    assert (tmp_path / "s.json").read_text() == "[]"


def test_needs_are_module_names():
    for name in CHECKS:
        for module in _needs(name):
            assert re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", module), (name, module)
