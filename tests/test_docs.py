"""README.md and every docs page run as a reader runs them (tests/docs_blocks.py): code blocks
execute, shown outputs and computed values match the code, no block is left unlabelled."""

import pytest

from tests import docs_blocks


@pytest.mark.parametrize("page", docs_blocks.pages())
def test_page_runs_and_shows_what_the_code_prints(page, tmp_path):
    before = docs_blocks.git_status()
    state = docs_blocks.run_page(page, tmp_path)
    assert docs_blocks.git_status() == before, f"{page} changed files of the checkout"
    for line, reason in state.skipped:
        print(f"{page}:{line} skipped: {reason}")


def test_harness_compares_numbers_to_their_printed_precision():
    assert docs_blocks.line_problem("rank 55.7037, 2.9e-03", "rank 55.7038, 3.0e-03") is None
    assert docs_blocks.line_problem("rank 55.7037", "rank 55.9103") is not None
    assert docs_blocks.line_problem("120 evaluations", "121 evaluations") is not None  # integers exactly
    assert docs_blocks.line_problem("done (2.6 s)", "done (31 ms)") is None             # durations masked
    assert docs_blocks.line_problem("a  b", "a b") is None                              # column widths


def test_harness_matches_elided_output():
    out = ["head", "x 1", "x 2", "middle 3.0", "x 4", "tail"]
    assert docs_blocks.align(["head", "...", "middle 3.0", "...", "tail"], out)[0] == []
    assert docs_blocks.align(["head", "...", "middle 3.5", "...", "tail"], out)[0] != []
    assert docs_blocks.align(["head", "x 1"], out)[0] != []                              # no gap: all lines
    assert docs_blocks.updated(["head", "...", "middle 9.0", "...", "tail"], out) == \
        ["head", "...", "middle 3.0", "...", "tail"]


def test_harness_strips_progress_bars():
    text = "run:  50%|#####     | 12/24 [00:01<00:00]\r   \restimated run time: 2 s\nlayer 1\n"
    assert docs_blocks.clean(text) == ["estimated run time: 2 s", "layer 1"]


def test_harness_keeps_carriage_returns_of_commands(tmp_path):
    page = docs_blocks.Page.__new__(docs_blocks.Page)
    page.cwd = tmp_path
    out = docs_blocks.run_shell(r"printf 'run:  50%%|#####     | 12/24 [00:01<00:00]\rlayer 1\n'", page, "test")
    assert "\r" in out and docs_blocks.clean(out) == ["layer 1"]


def test_readme_shows_the_two_commands_ci_runs_first():
    """.ci/run's first stage runs what .ci/readme_commands.py extracts: exactly two commands."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, str(docs_blocks.ROOT / ".ci" / "readme_commands.py")],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    commands = proc.stdout.splitlines()
    assert len(commands) == 2 and commands[0].startswith("pip install -e . && python -m meanfield.simulate")
    assert commands[1].startswith("pip install -e '.[test]' && pytest")
