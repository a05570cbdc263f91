"""The paper's Tables 1 and 2, shipped as package data (``meanfield/data/paper_table{1,2}.csv``).

Source: Li, Luo, Shi, Gu, "Analyzing the Mechanism of Attention Collapse in VGGT from a Dynamics
Perspective", arXiv:2512.21691, §5 (values copied as printed).

- Table 1 columns: ``m`` (fusion strength), ``entropy_exp``, ``entropy_theory`` (normalized
  singular-value entropy, measured / predicted), ``rank_exp``, ``rank_theory`` (effective rank).
- Table 2 columns: ``m``, ``relative_runtime`` (wall-clock time / VGGT's), ``speedup`` (as printed,
  rounded, = 1/relative_runtime to the printed digits).
"""

from __future__ import annotations

import csv
import io
from importlib import resources

import numpy as np

__all__ = ["PAPER_CITATION", "paper_table"]

PAPER_CITATION = ('Li, Luo, Shi, Gu, "Analyzing the Mechanism of Attention Collapse in VGGT from a '
                  'Dynamics Perspective", arXiv:2512.21691')


def paper_table(number: int) -> dict[str, np.ndarray]:
    """Table ``number`` (1 or 2) as a dict column name -> float64 array, in the printed order."""
    if number not in (1, 2):
        raise ValueError(f"the paper has Tables 1 and 2, got {number!r}")
    text = resources.files("meanfield").joinpath(f"data/paper_table{number}.csv").read_text()
    rows = [r for r in csv.reader(io.StringIO(text)) if r and not r[0].startswith("#")]
    header, body = rows[0], rows[1:]
    return {name: np.array([float(r[i]) for r in body]) for i, name in enumerate(header)}
