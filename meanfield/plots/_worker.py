"""The simulate tool's figure, drawn by a second process that was started before the run.

Importing matplotlib takes 0.6-0.8 s on a 2-core machine, as long as a short run itself. The tool
starts this worker first (``python -m meanfield.plots._worker``): it imports matplotlib, the
results reader and :func:`meanfield.plots.figures.plot_solution` (no JAX) on the other core while the
tool imports JAX and runs, then waits for one JSON line on stdin naming the results file the tool
has written and the figure to draw from it. The worker reads only that file, written by its
parent a moment before, through the same validated reader as ``meanfield.load_results``.

Nothing depends on the worker: when it cannot start, fails or dies, the tool draws the figure
itself, and an error (an unwritable path, say) is then raised there as it would be without it.
"""

from __future__ import annotations

import json
import subprocess
import sys

TIMEOUT_S = 120.0


class PlotWorker:
    """``with PlotWorker() as w: ...; w.plot(sol, results, png, overwrite)``."""

    def __init__(self):
        try:
            self._proc = subprocess.Popen([sys.executable, "-m", __name__], stdin=subprocess.PIPE,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        except OSError:
            self._proc = None

    def plot(self, sol, results, png, overwrite: bool) -> None:
        """Draw ``sol``'s figure (already saved as ``results``) into ``png``: by the worker when it
        can, else in this process."""
        if self._draw_in_worker(results, png, overwrite):
            return
        from meanfield.plots.figures import plot_solution

        plot_solution(sol, png, overwrite=overwrite)

    def _draw_in_worker(self, results, png, overwrite) -> bool:
        proc, self._proc = self._proc, None
        if proc is None:
            return False
        try:
            proc.communicate(json.dumps({"results": str(results), "png": str(png), "overwrite": bool(overwrite)}) + "\n",
                             timeout=TIMEOUT_S)
        except (OSError, ValueError, subprocess.TimeoutExpired):
            proc.kill()
            proc.wait()
            return False
        return proc.returncode == 0

    def close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            proc.kill()
            proc.wait()
            for stream in (proc.stdin, proc.stderr):
                if stream is not None:
                    stream.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _warm_up(plot_solution) -> None:
    """Draw a throwaway figure of the same kind, so that the first-use costs (fonts, text layout,
    the Agg canvas: ~0.2 s) are paid before the results arrive, not after."""
    import io
    from types import SimpleNamespace

    import numpy as np

    from meanfield.plots.figures import DPI, PANELS

    curve = np.array([0.01, 0.5, 1.0])
    fake = SimpleNamespace(layers=np.arange(3), diagnostics={name: curve for name, _, _ in PANELS}, warnings=(),
                           params={})
    plot_solution(fake, title="warm-up").savefig(io.BytesIO(), format="png", dpi=DPI)


def main() -> int:
    from meanfield.io.results import load_results
    from meanfield.plots.figures import plot_solution

    _warm_up(plot_solution)
    line = sys.stdin.readline()
    if not line.strip():  # the parent ended without a figure to draw
        return 0
    request = json.loads(line)
    plot_solution(load_results(request["results"]), request["png"], overwrite=request["overwrite"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
