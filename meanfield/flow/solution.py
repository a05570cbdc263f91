"""The types every method shares: the validated run (:class:`FlowSpec`) and its result
(:class:`FlowSolution`). Lowest layer of the driver: imports nothing else of the package."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from meanfield._version import __version__


@dataclasses.dataclass(frozen=True)
class FlowSpec:
    """Validated options of one run, handed to a method's runner (built by ``meanfield.flow.driver.make_spec``).

    ``kernel`` and ``method`` are objects (``solvers.AbstractKernel``, ``solvers.AbstractIntegrator``
    or a density method of ``meanfield.flow.density``), carrying their own options. ``merge`` is the
    mobility factor ``M`` (the velocity is multiplied by ``mobility = 1/M``); ``weights`` the token
    masses (``None``: unit masses).
    """

    init: Any
    x0: Any
    weights: np.ndarray | None
    N: int
    d: int
    kernel: Any
    method: Any
    merge: float
    fusion: float | None
    n_steps: int
    dt: float
    time_map: str
    save_steps: np.ndarray
    key: Any
    seed: int
    dtype: Any
    n_query: int
    progress: Any
    save_tokens: bool
    merging: Any = None  # a meanfield.flow.merged strategy (ToMe, FastVGGT) or None
    diagnostics: str = "sampled"
    key_sample: int = 4096
    estimate: Any = None  # run-time estimate: None (with progress), True (always), False (never)
    schedule: tuple | None = None  # kernels of a meanfield.Schedule (kernel is schedule[0]), or None
    schedule_every: int = 1

    def kernel_at(self, layer: int):
        """The kernel of the step from ``layer`` (the last one from the end of the schedule on)."""
        if self.schedule is None:
            return self.kernel
        return self.schedule[min(int(layer) // self.schedule_every, len(self.schedule) - 1)]

    @property
    def sampled(self) -> bool:
        """Whether the saved attention statistics are estimated on a key subsample (``N > key_sample``)."""
        return self.diagnostics == "sampled" and self.N > self.key_sample

    @property
    def mobility(self) -> float:
        """``1/M``: the factor on the velocity (the engines' one convention)."""
        return 1.0 / self.merge

    def params(self) -> dict:
        """JSON-able description of the run (stored with the results)."""
        import jax.numpy as jnp  # a spec is built with JAX loaded; loading results needs no JAX

        init = self.init.describe() if self.init is not None and hasattr(self.init, "describe") else {"name": "array"}
        kernel = self.kernel.describe()
        method = self.method.describe()
        return {
            "N": self.N, "d": self.d, "kernel": kernel.pop("name"), "alpha": kernel.pop("alpha"),
            "merge": self.merge, "fusion": self.fusion, "method": method.pop("name"), "dt": self.dt,
            "time_map": self.time_map, "n_steps": self.n_steps, "seed": self.seed,
            "precision": jnp.dtype(self.dtype).name, "n_query": self.n_query, "init": init,
            "kernel_options": kernel, "method_options": method, "weighted": self.weights is not None,
            "diagnostics": "sampled" if self.sampled else "exact", "key_sample": self.key_sample,
            "meanfield_version": __version__,
            "merging": None if self.merging is None else self.merging.describe(),
            **({} if self.schedule is None else
               {"kernel_schedule": {"kernels": len(self.schedule), "every": self.schedule_every}}),
            "matmul_precision": kernel.get("matmul_precision", "highest"), "attention": self.attention_path(),
        }

    def attention_path(self) -> str:
        """How the drive is evaluated on this backend: ``"streaming"``, ``"fused-dense"``,
        ``"fused-cudnn"`` (``solvers.fused``), or ``"moments"`` (moment kernels)."""
        from solvers.fused import fused_path, use_fused

        if self.kernel.family == "moments":
            return "moments"
        if not use_fused(getattr(self.kernel, "attention", "streaming")):
            return "streaming"
        return "fused-" + fused_path(self.d, self.weights, getattr(self.kernel, "matmul_precision", "highest"))


@dataclasses.dataclass(frozen=True)
class FlowSolution:
    """Result of :func:`meanfield.solve_flow`.

    ``t`` and ``layers`` are the saved times and step (layer) indices, both including 0 and the
    final step; ``diagnostics[name][i]`` is the value at ``t[i]``; ``x`` the final tokens (unit
    rows; ``None`` for grid solvers); ``weights`` the token masses (``None``: unit masses);
    ``snapshots`` the tokens at every save if requested.
    """

    t: np.ndarray
    layers: np.ndarray
    x: np.ndarray | None
    diagnostics: dict
    params: dict
    query_indices: np.ndarray | None = None
    snapshots: np.ndarray | None = None
    stats: dict = dataclasses.field(default_factory=dict)
    grid: dict | None = None
    density: np.ndarray | None = None
    warnings: list = dataclasses.field(default_factory=list)
    weights: np.ndarray | None = None
    merging: dict | None = None  # merged runs: strategy, schedule, final sizes and owner rows (meanfield.flow.merged)
