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


class Progress:
    """``solve_flow(..., progress=Progress(bar=..., estimate=...))``: the bar and the run-time estimate.

    ``bar`` -- ``True`` for a tqdm bar on stderr, ``False`` for none, or an object with
    ``init``/``step``/``close`` [True]. ``estimate`` -- print a run-time estimate
    (``meanfield.flow.eta``) to stderr, measured on the run's first chunks after compilation: ``None``
    -- when there is a bar and the estimate is >= 10 s; ``True`` -- always; ``False`` -- never
    [None]. Particle methods only (not the density methods, not runs with ``merging``). Results
    are unchanged bit for bit. ``progress=True`` is ``Progress()``, ``progress=False`` no bar and
    no estimate.
    """

    def __init__(self, bar=True, estimate=None):
        if estimate not in (None, True, False):
            raise ValueError(f"Progress estimate must be None, True or False, got {estimate!r}")
        if not isinstance(bar, bool) and not callable(getattr(bar, "step", None)):
            raise ValueError(f"Progress bar must be True, False or an object with init/step/close, got {bar!r}")
        self.bar, self.estimate = bar, estimate

    def __repr__(self) -> str:
        return f"Progress(bar={self.bar!r}, estimate={self.estimate!r})"


def split_progress(progress) -> tuple:
    """``(bar, estimate)`` of a ``solve_flow(progress=...)`` value: a bool, a bar object, or a
    :class:`Progress`."""
    if isinstance(progress, Progress):
        return progress.bar, progress.estimate
    if progress is None or isinstance(progress, bool):
        return bool(progress), None
    if callable(getattr(progress, "step", None)):
        return progress, None
    raise ValueError(f"progress must be True, False, a Progress(...) or an object with init/step/close, "
                     f"got {progress!r}")


def make_progress(progress) -> object:
    """``False``/``None`` -> no bar, ``True`` -> tqdm bar, else an object with init/step/close."""
    if progress is True:
        return TqdmProgress()
    if not progress:
        return NoProgress()
    return progress
