"""``python -m meanfield.compare``: the same tool as ``meanfield-compare``."""

from meanfield.compare.cli import cli

if __name__ == "__main__":
    cli()
