"""Print the node ids whose setup + call took at least THRESHOLD seconds in a ``pytest --durations=0`` log.

    python tests/slow_from_durations.py DURATIONS.txt 8 > tests/slow_tests.txt   (then re-add the header)
"""

import collections
import re
import sys

totals = collections.defaultdict(float)
for line in open(sys.argv[1]):
    m = re.match(r"^([0-9.]+)s (?:call|setup|teardown)\s+(\S+)", line)
    if m:
        totals[m.group(2)] += float(m.group(1))
for node, seconds in sorted(totals.items()):
    if seconds >= float(sys.argv[2]):
        print(node)
