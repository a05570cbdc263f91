"""Run-time estimate of a particle run, measured on the run's own first chunks (issue 12).

The particle runner (:mod:`meanfield.flow.particles`) times the work it does anyway: each chunk of
steps and each save (the diagnostics of a saved state: attention statistics, the token
covariance's eigenvalues, ...). The first call of each jitted piece includes its compilation, so
the estimate uses the first *repeated* call of each (a chunk of steps after the first one, the
second save): per-step time ``s``, per-save time ``v``, and the compilation time ``c`` as what the
first calls took beyond that. The estimate of the whole run is ``c + n_steps s + n_saves v``.
Nothing extra is computed and the host synchronises where it did before, so the results are the
same bit for bit with or without an estimate.

The line is printed once, as soon as both rates are known (after the second save, typically 2% of
the run), e.g. ``estimated run time: 3 min 20 s (1 step 21 ms x 10000, 1 save 0.5 s x 101;
compile and setup 2.1 s)``. Short runs (fewer than two saves or a single chunk of steps) get none.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from typing import Callable


def format_duration(seconds: float) -> str:
    """``1.4 ms``, ``21 ms``, ``0.50 s``, ``3 min 20 s``, ``2 h 05 min``: two significant units at most."""
    s = float(seconds)
    if s < 1e-3:
        return f"{s * 1e6:.0f} us"
    if s < 1.0:
        if s < 0.01:
            return f"{s * 1e3:.1f} ms"
        return f"{s * 1e3:.0f} ms" if s < 0.1 else f"{s:.2f} s"
    if s < 60:
        return f"{s:.1f} s" if s < 10 else f"{s:.0f} s"
    if s < 3600:
        m, r = divmod(round(s), 60)
        return f"{m} min {r} s"
    h, r = divmod(round(s / 60), 60)
    return f"{h} h {r:02d} min"


@dataclasses.dataclass(frozen=True)
class Estimate:
    """Extrapolated run time: ``compile + n_steps * step + n_saves * save`` (seconds); ``compile``
    includes the setup before the first chunk."""

    step: float
    save: float
    compile: float
    n_steps: int
    n_saves: int

    @property
    def total(self) -> float:
        return self.compile + self.n_steps * self.step + self.n_saves * self.save

    def line(self) -> str:
        return (f"estimated run time: {format_duration(self.total)} (1 step {format_duration(self.step)} x "
                f"{self.n_steps}, 1 save {format_duration(self.save)} x {self.n_saves}; "
                f"compile and setup {format_duration(self.compile)})")


class Stopwatch:
    """Collects the run's step and save timings and reports one :class:`Estimate`.

    ``report(estimate)`` is called once, when a post-compilation rate of both steps and saves is
    known; ``clock`` is injectable (tests use a fake clock, never real time).
    """

    def __init__(self, n_steps: int, n_saves: int, report: Callable[[Estimate], None] | None = None,
                 clock: Callable[[], float] = time.perf_counter):
        self.n_steps, self.n_saves = int(n_steps), int(n_saves)
        self.report, self.clock = report, clock
        self._steps: list[tuple[int, float]] = []  # (steps, seconds) per chunk, first one compiles
        self._saves: list[float] = []  # seconds per save, first one compiles
        self._setup = 0.0
        self.estimate: Estimate | None = None

    def steps(self, k: int, seconds: float) -> None:
        """Record a chunk of ``k >= 1`` steps that took ``seconds``."""
        if k > 0:
            self._steps.append((int(k), float(seconds)))
            self._check()

    def setup(self, seconds: float) -> None:
        """Record the time spent before the first chunk (counted with the compilation)."""
        self._setup += float(seconds)

    def save(self, seconds: float) -> None:
        """Record one save (diagnostics) that took ``seconds``."""
        self._saves.append(float(seconds))
        self._check()

    def _check(self) -> None:
        if self.estimate is not None or len(self._steps) < 2 or len(self._saves) < 2:
            return
        (k0, t0), (k1, t1) = self._steps[:2]
        step = t1 / k1
        save = self._saves[1]
        comp = self._setup + max(0.0, t0 - k0 * step) + max(0.0, self._saves[0] - save)
        self.estimate = Estimate(step, save, comp, self.n_steps, self.n_saves)
        if self.report is not None:
            self.report(self.estimate)


def printer(progress, *, threshold: float = 10.0) -> Callable[[Estimate], None]:
    """A ``report`` that writes the estimate's line to stderr (through the progress bar's ``write``
    when it has one, so the bar is not broken) when the estimate is at least ``threshold`` s."""

    def report(est: Estimate) -> None:
        if est.total < threshold:
            return
        write = getattr(progress, "write", None)
        if write is not None:
            write(est.line())
        else:
            print(est.line(), file=sys.stderr, flush=True)

    return report


__all__ = ["Estimate", "Stopwatch", "format_duration", "printer"]
