"""Static input checks shared by the Python API and the command-line tools.

Each check raises ``ValueError`` with one line that names the bad value and what was expected;
the CLIs print that line and exit with status 2.
"""

from __future__ import annotations

import math
import numbers

import numpy as np


def integer(name: str, value, minimum: int) -> int:
    """An integer >= minimum (bools and non-integral floats rejected)."""
    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if isinstance(value, float) and value.is_integer():
        ok, value = True, int(value)
    if not ok or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def real(name: str, value, *, minimum=None, maximum=None, open_max=False, open_min=False) -> float:
    """A finite real number in the given range."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a finite number, got {value!r}") from None
    if not math.isfinite(v):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if maximum is None:
        want = f"{'>' if open_min else '>='} {minimum:g}" if minimum is not None else ""
    else:
        lo, hi = ("(" if open_min else "["), (")" if open_max else "]")
        want = f"in {lo}{minimum:g}, {maximum:g}{hi}"
    too_low = minimum is not None and (v < minimum or (open_min and v == minimum))
    too_high = maximum is not None and (v > maximum or (open_max and v == maximum))
    if too_low or too_high:
        raise ValueError(f"{name} must be a finite number {want}, got {value!r}")
    return v


def choice(name: str, value, options) -> str:
    if value not in options:
        raise ValueError(f"unknown {name} {value!r}; expected one of: {', '.join(options)}")
    return value


def merge_factor(merge=None, fusion=None) -> float:
    """The mobility factor ``M >= 1`` from either ``merge`` or the paper's ``fusion`` ``m``.

    The one place where user input becomes ``M``; the engines receive ``mobility = 1/M``
    (``FlowSpec.mobility``), and ``fusion -> M`` is :func:`meanfield.stats.theory.merge_from_fusion`.
    """
    from meanfield.stats.theory import merge_from_fusion

    if merge is not None and fusion is not None:
        raise ValueError("give merge or fusion, not both (M = 1/(1 - fusion))")
    if fusion is not None:
        return merge_from_fusion(real("fusion", fusion, minimum=0.0, maximum=1.0, open_max=True))
    if merge is None:
        return 1.0
    return real("merge", merge, minimum=1.0)


def tokens(x, d=None) -> np.ndarray:
    """An (N, d) array of finite, non-zero token rows (normalised onto the sphere by the caller)."""
    try:
        arr = np.asarray(x)
    except Exception:  # noqa: BLE001 - anything not array-like
        raise ValueError(f"tokens must be an (N, d) array of numbers, got {type(x).__name__}") from None
    if arr.dtype.kind not in "fiu":
        raise ValueError(f"tokens must be an (N, d) array of real numbers, got dtype {arr.dtype}")
    if arr.ndim != 2:
        raise ValueError(f"tokens must be an (N, d) array, got shape {arr.shape}")
    if arr.shape[0] < 1:
        raise ValueError(f"tokens must have at least one row, got shape {arr.shape}")
    if arr.shape[1] < 2:
        raise ValueError(f"tokens must have d >= 2 columns (points on S^(d-1)), got shape {arr.shape}")
    if d is not None and arr.shape[1] != d:
        raise ValueError(f"tokens have d = {arr.shape[1]} columns but d = {d} was expected")
    bad = ~np.isfinite(arr)
    if bad.any():
        i = int(np.argwhere(bad)[0, 0])
        raise ValueError(f"tokens contain NaN or Inf (first in row {i})")
    zero = np.linalg.norm(arr.astype(np.float64), axis=1) == 0
    if zero.any():
        raise ValueError(f"tokens contain {int(zero.sum())} zero row(s) (first: row {int(np.argmax(zero))}); "
                         "a zero vector has no direction on the sphere")
    return arr


def weights(w, n: int) -> np.ndarray:
    """Token masses: ``n`` finite numbers ``>= 0`` with a positive sum (float64 array)."""
    try:
        arr = np.asarray(w, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"weights must be an array of {n} non-negative numbers, got {type(w).__name__}") from None
    if arr.shape != (n,):
        raise ValueError(f"weights must have shape ({n},) (one mass per token), got shape {arr.shape}")
    if not np.all(np.isfinite(arr)) or np.any(arr < 0):
        i = int(np.argmax(~np.isfinite(arr) | (arr < 0)))
        raise ValueError(f"weights must be finite and >= 0, got {float(arr[i])!r} at index {i}")
    if not arr.sum() > 0:
        raise ValueError("weights must have a positive sum (at least one token with mass > 0)")
    return arr


def batch_tokens(x, *, name: str = "x0", min_n: int = 1) -> np.ndarray:
    """A (B, N, d) array of ``B`` systems of finite, non-zero token rows, ``N >= min_n``, ``d >= 2``
    (the batch drivers: ``simulate_batch``, ``phase_diagram``, ``advance_ensemble``)."""
    try:
        arr = np.asarray(x)
    except Exception:  # noqa: BLE001 - anything not array-like
        raise ValueError(f"{name} must be a (B, N, d) array of numbers, got {type(x).__name__}") from None
    if arr.dtype.kind not in "fiu":
        raise ValueError(f"{name} must be a (B, N, d) array of real numbers, got dtype {arr.dtype}")
    if arr.ndim != 3 or arr.shape[0] < 1 or arr.shape[1] < min_n or arr.shape[2] < 2:
        raise ValueError(f"{name} must be a (B, N, d) array with B >= 1, N >= {min_n} and d >= 2, got shape {arr.shape}")
    bad = ~np.isfinite(arr)
    if bad.any():
        b, i = (int(v) for v in np.argwhere(bad)[0, :2])
        raise ValueError(f"{name} contains NaN or Inf (first in system {b}, row {i})")
    zero = ~np.any(arr != 0, axis=-1)
    if zero.any():
        b, i = (int(v) for v in np.argwhere(zero)[0])
        raise ValueError(f"{name} contains {int(zero.sum())} zero row(s) (first: system {b}, row {i}); "
                         "a zero vector has no direction on the sphere")
    return arr


def alphas(name: str, value, size: int | None = None) -> np.ndarray:
    """Inverse temperatures ``>= 0`` as a float64 array: with ``size``, a number (broadcast) or a
    ``(size,)`` array, one per system; without, a non-empty 1-D array (a grid such as ``betas``)."""
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        arr = None
    if size is None:
        want = "a non-empty 1-D array of finite numbers >= 0"
        ok = arr is not None and arr.ndim <= 1 and arr.size > 0
        arr = arr.reshape(-1) if ok else arr
    else:
        want = f"a finite number >= 0 or a ({size},) array of them"
        ok = arr is not None and (arr.ndim == 0 or arr.shape == (size,))
        arr = np.broadcast_to(arr, (size,)).copy() if ok else arr
    if not ok:
        got = f"shape {arr.shape}" if arr is not None else f"{type(value).__name__}"
        raise ValueError(f"{name} must be {want}, got {got}")
    bad = ~np.isfinite(arr) | (arr < 0)
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(f"{name} must be {want}, got {float(arr[i])!r} at index {i}")
    return arr
