"""``python -m meanfield.compare``: the same tool as ``meanfield-compare``."""

import sys

from meanfield.compare.cli import cli

if __name__ == "__main__":
    sys.exit(cli())  # the exit status (2 on bad input) must reach the shell
