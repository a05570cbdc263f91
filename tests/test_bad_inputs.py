"""Every bad input of docs/robustness.md (examples/bad_inputs.py) gives its expected outcome: exit
status 2 with one ``PROG: error:`` line, a ``ValueError``/``FileExistsError``, or success for the
valid edge cases. Listed in tests/slow_tests.txt (about 90 in-process runs)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

import bad_inputs  # noqa: E402


def test_every_bad_input_has_its_expected_outcome():
    rows = bad_inputs.run_all()
    assert len(rows) >= 60
    wrong = [(t, d, e, o, m) for t, d, e, o, m in rows if not bad_inputs.matches(e, o, m, t)]
    assert not wrong, wrong
