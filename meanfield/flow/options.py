"""The option objects of :func:`meanfield.solve_flow` (in the spirit of diffrax's ``SaveAt``).

``solve_flow`` takes the problem flat (tokens, kernel, method, time) and groups what belongs
together into small frozen objects: :class:`SaveAt` (what is recorded and how often),
:class:`Fusion` (the paper's fusion strength as the mobility factor), beside
``meanfield.Checkpoint`` (where the state goes and where a run resumes from) and
``meanfield.Progress`` (the bar and the run-time estimate). Each is validated where it is used,
by ``meanfield.flow.driver.make_spec``, with the one-line messages of ``meanfield._validate``.
"""

from __future__ import annotations

import dataclasses

from meanfield.stats.diagnostics import DEFAULT_KEY_SAMPLE, DEFAULT_N_QUERY


@dataclasses.dataclass(frozen=True)
class SaveAt:
    """What a run records, and when.

    ``every`` -- steps between saves [every step up to 100 steps, else ~100 saves; per save the
    attention statistics cost O(n_query N d) for linear and O(n_query^2 N + n_query N d) for
    softmax/usa]. ``tokens`` -- keep the tokens at every save in ``sol.snapshots`` [False].
    ``n_query`` -- query tokens for the attention statistics [512; all tokens when N <= 512].
    ``diagnostics`` -- ``"sampled"``: when ``N > key_sample`` the attention statistics at each save
    are estimated from the query rows over a fixed, seeded subsample of ``key_sample`` keys;
    ``"exact"``: rows over all N keys [sampled; exact anyway when N <= key_sample]. The token
    statistics and the entropy rate are exact either way. ``key_sample`` -- keys in that
    subsample [4096].
    """

    every: int | None = None
    tokens: bool = False
    n_query: int = DEFAULT_N_QUERY
    diagnostics: str = "sampled"
    key_sample: int = DEFAULT_KEY_SAMPLE


@dataclasses.dataclass(frozen=True)
class Fusion:
    """The paper's fusion strength ``m in [0, 1)`` as a mobility: ``merge=Fusion(m)`` is the
    mobility factor ``M = 1/(1 - m)`` (``meanfield.stats.theory.merge_from_fusion``); the run records
    both ``merge`` and ``fusion``."""

    m: float


@dataclasses.dataclass(frozen=True)
class Schedule:
    """A kernel per stretch of ``every`` steps: ``kernel=Schedule([k0, k1, ...], every=K)`` runs
    ``k0`` for steps ``0 .. K-1``, ``k1`` for ``K .. 2K-1``, ...; a run has ``len(kernels) * K``
    steps (``layers`` defaults to that). ``kernel=[k0, k1, ...]`` is ``Schedule(..., every=1)``:
    one kernel per layer, as a real model's blocks (``meanfield.compare.own_weights``); ``every = tau/dt``
    redraws random weights every ``tau`` (``meanfield.studies.ensembles``). The kernels are objects of one
    class (the run's ``params["kernel"]``); particle schemes, no merging. The save at a layer
    records the attention statistics of the kernel of the step about to be taken (the last
    kernel at the end)."""

    kernels: tuple
    every: int = 1


__all__ = ["Fusion", "SaveAt", "Schedule"]
