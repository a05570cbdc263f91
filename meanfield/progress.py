"""Progress meters as small pluggable objects with ``init``/``step``/``close`` (cf. diffrax).

Off by default in the library (:class:`NoProgress`), on in the CLI (:class:`TqdmProgress`).
"""

from __future__ import annotations

import sys


class NoProgress:
    """Does nothing."""

    def init(self, total: int, desc: str = "") -> None:  # noqa: D401
        pass

    def step(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


class TqdmProgress:
    """A tqdm bar on stderr counting steps (layers)."""

    def __init__(self, **tqdm_kwargs):
        self._kw = tqdm_kwargs
        self._bar = None

    def init(self, total: int, desc: str = "") -> None:
        from tqdm.auto import tqdm

        self._bar = tqdm(total=total, desc=desc, unit="step", **self._kw)

    def step(self, n: int) -> None:
        self._bar.update(n)

    def write(self, line: str) -> None:
        """Print a line above the bar (stderr) without breaking it."""
        from tqdm.auto import tqdm

        tqdm.write(line, file=sys.stderr)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def make_progress(progress) -> object:
    """``False``/``None`` -> no bar, ``True`` -> tqdm bar, else an object with init/step/close."""
    if progress is True:
        return TqdmProgress()
    if not progress:
        return NoProgress()
    return progress
