"""``python -m meanfield.fit DATA``, the same as the ``meanfield-fit`` script (:mod:`meanfield.fit.cli`)."""

import sys

from meanfield.fit.cli import cli

if __name__ == "__main__":
    sys.exit(cli())
