"""``python -m meanfield.fit DATA``: see :mod:`meanfield.fit_cli`."""

import sys

from meanfield.fit_cli import main

if __name__ == "__main__":
    sys.exit(main())
