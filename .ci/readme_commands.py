"""Print README.md's "Two commands", one per line, exactly as the page shows them.

.ci/run's first stage runs these lines in a bare virtual environment, so the newcomer's path is
tested as written, not as retyped here. They are the ``$ `` lines of the console blocks under the
heading "## Two commands"; anything else there is output. Standard library only (it runs before
anything is installed).
"""

import re
import sys
from pathlib import Path

text = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
section = re.search(r"^## Two commands\n(.*?)(?=^## )", text, re.MULTILINE | re.DOTALL)
if section is None:
    sys.exit("README.md has no '## Two commands' section")
blocks = re.findall(r"^```console\n(.*?)^```", section.group(1), re.MULTILINE | re.DOTALL)
commands = [line[2:] for block in blocks for line in block.splitlines() if line.startswith("$ ")]
if len(commands) != 2:
    sys.exit(f"README.md's 'Two commands' section shows {len(commands)} commands, expected 2: {commands}")
print("\n".join(commands))
