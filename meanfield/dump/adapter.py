"""Real-model adapters: the registry behind ``meanfield-dump`` and the skeleton they share.

An adapter is one subclass of :class:`Adapter` with a class attribute ``name`` (its sub-command);
defining the class registers it, and ``meanfield-dump`` builds its sub-commands from
:func:`adapters`. The class declares

* ``name``, ``help`` (the sub-command's one-line help) and ``summary`` (its words in the tool's
  description; default ``help``);
* ``add_arguments(parser)``: its own options (the options every dump takes -- ``--out``,
  ``--n-query``, ``--seed``, ``--layers``, ... -- are added after them by :func:`add_common_arguments`);
* ``run(args, common, text)``: load the model from the parsed ``args`` and return the
  :class:`~meanfield.dump.format.Dump`; ``common`` holds the keyword arguments every dump function
  takes (``n_query``, ``seed``, ``layers``, ``sample_rows``, ``sample_layers``, ``key_block``,
  ``self_check``), ``text`` the input text of a text adapter (``--text``/``--text-file``), read
  and checked by :func:`meanfield.dump._inputs.validate` before ``run`` is called.

The skeleton every adapter's dump function uses: :func:`self_check` (the hooked model's outputs
equal the plain ones), :func:`capture_check` (the recomputed attention reproduces the model's) and
:func:`metadata` (the attributes of the dump format, built once).

``meanfield-dump --help`` must not import torch, so the built-in adapters are found from the
static table :data:`BUILTIN` of module names, imported on first use of :func:`adapters`; those
modules import torch only inside their functions. A static table rather than a scan of the
package, because several modules here (``_torch``, ``merging_vit``) import torch at the top and
the table also fixes the order of the sub-commands. An adapter defined elsewhere registers when
its module is imported (``tests/test_extending.py`` defines one inside the test).
"""

from __future__ import annotations

import hashlib
import importlib
import os
import platform
import sys
from importlib import metadata as _metadata
from typing import ClassVar

from meanfield._version import __version__

BUILTIN = ("hf", "vggt", "dinov2", "timm")
"""Modules of ``meanfield.dump`` that define the built-in adapters, in sub-command order."""

_REGISTRY: dict[str, type[Adapter]] = {}

INSTALL_TORCH = ("pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu && "
                 "pip install -e '.[dump]' (docs/dumps.md)")  # fmt: skip


class Adapter:
    """Base class of the real-model adapters (see the module docstring); subclasses register by ``name``."""

    name: ClassVar[str] = ""
    help: ClassVar[str] = ""
    summary: ClassVar[str] = ""

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        if cls.__dict__.get("name"):
            _REGISTRY[cls.name] = cls

    @classmethod
    def description(cls) -> str:
        return f"{cls.name} ({cls.summary or cls.help})"

    @classmethod
    def add_arguments(cls, parser) -> None:
        """The adapter's own command-line options (none by default)."""

    def run(self, args, common: dict, text: str | None = None):
        """Load the model named by ``args``, run it and return a Dump."""
        raise NotImplementedError


def adapters() -> dict[str, type[Adapter]]:
    """``{name: class}`` of every registered adapter: the built-ins first (:data:`BUILTIN`), then
    those defined elsewhere, in the order they were defined."""
    for mod in BUILTIN:
        importlib.import_module(f"{__package__}.{mod}")
    first = [_REGISTRY[n] for n in BUILTIN if n in _REGISTRY]
    return {c.name: c for c in first + [c for n, c in _REGISTRY.items() if n not in BUILTIN]}


def unregister(name: str) -> None:
    """Remove the adapter ``name`` from the registry (tests that define one clean up with it)."""
    _REGISTRY.pop(name, None)


def add_common_arguments(parser) -> None:
    """The options every sub-command takes, after the adapter's own."""
    s = parser
    s.add_argument("--out", required=True, help="output dump (.h5 or .hdf5), written atomically")
    s.add_argument("--n-query", type=int, default=512, help="query rows (a seeded subset; all tokens if N <= n)")
    s.add_argument("--seed", type=int, default=0, help="seed of the query subset and row sample")
    s.add_argument("--layers", default=None, help="comma-separated block indices (default: all)")
    s.add_argument("--sample-rows", type=int, default=1024, help="float16 token rows kept, <= 1024")
    s.add_argument("--sample-layers", default="all", help="blocks whose token sample is kept: 'all' or comma-separated block indices")
    s.add_argument("--key-block", type=int, default=1024, help="keys per streamed block of the attention "
                   "statistics: memory, not results")
    s.add_argument("--no-self-check", action="store_true", help="skip the plain-vs-hooked comparison")
    s.add_argument("--overwrite", action="store_true", help="replace an existing OUT (default: refuse)")


def require(adapter: str, *modules) -> None:
    """One line naming what to install when an adapter's libraries are missing (before any import)."""
    import importlib.util

    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise ValueError(f"the {adapter} dump needs {' and '.join(missing)}: {INSTALL_TORCH}")


# --- the shared skeleton: self-check, capture check, metadata ---------------------------------


def self_check(enabled: bool, diff, what: str = "model"):
    """``diff`` (the largest |hooked - plain| output, a number or a function giving it) when the
    self-check is ``enabled``, else ``None``; ValueError unless it is exactly 0."""
    if not enabled:
        return None
    diff = diff() if callable(diff) else diff
    if diff != 0.0:
        raise ValueError(f"self-check failed: hooked {what} outputs differ from plain ones by {diff:g}")
    return diff


def capture_check(errors, tolerance: float, what: str = "recomputed attention differs from the model's",
                  show_tolerance: bool = False) -> None:  # fmt: skip
    """ValueError naming the layers whose capture error (``{layer: error}``; ``None``: not checked)
    exceeds ``tolerance``."""
    bad = {l: e for l, e in (errors or {}).items() if e > tolerance}
    if bad:
        raise ValueError(f"capture check failed: {what} by {bad}" + (f" > {tolerance}" if show_tolerance else ""))


def library_versions() -> dict:
    """Versions of the libraries that shaped the numbers (missing ones omitted)."""
    out = {"python": sys.version.split()[0], "platform": platform.platform(), "meanfield": __version__}
    for name in ("torch", "transformers", "timm", "vggt", "jax", "numpy", "h5py"):
        try:
            out[name] = _metadata.version(name)
        except _metadata.PackageNotFoundError:
            pass
    return out


def checkpoint_hash(source) -> str:
    """``sha256:<hex>`` of a checkpoint file, of the weight files in a folder, or of a module's tensors.

    For a module the hash runs over the state dict in its own order (names, dtypes, shapes and
    bytes), so two processes that loaded the same weights agree. An object with ``state_dict()``
    returning NumPy arrays is hashed the same way (torch is imported only for torch tensors).
    """
    h = hashlib.sha256()
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        files = [path]
        if os.path.isdir(path):
            ext = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")
            files = sorted(os.path.join(path, f) for f in os.listdir(path) if f.endswith(ext))
            if not files:
                raise ValueError(f"checkpoint folder {path} holds no weight file ({', '.join(ext)})")
        for fn in files:
            with open(fn, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 22), b""):
                    h.update(chunk)
        return "sha256:" + h.hexdigest()
    for name, t in source.state_dict().items():
        if hasattr(t, "detach"):
            import torch

            t = t.detach().cpu().contiguous()
            h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        else:
            import numpy as np

            t = np.ascontiguousarray(t)
            h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
            h.update(t.tobytes())
    return "sha256:" + h.hexdigest()


def metadata(adapter: str, rec, *, model_id: str, checkpoint, scale: float, S: int, P: int, N: int,
             patch_start_idx: int, num_heads: int, head_dim: int, d_model: int, seed: int, input_kind: str,
             merge=None, versions=None, extra=None) -> dict:  # fmt: skip
    """The dump's attributes (``meanfield.dump.format.REQUIRED_ATTRS`` less ``logit_precision``,
    which :func:`~meanfield.dump.stats.build_dump` adds, plus ``extra``), built the same way for
    every adapter. ``rec`` the filled :class:`~meanfield.dump.stats.Recorder` (its q/k dtype);
    ``checkpoint`` a file or folder to hash, or the module whose tensors are hashed; ``versions``
    library versions beyond :func:`library_versions`."""
    return {
        "model_id": model_id,
        "checkpoint_hash": checkpoint_hash(checkpoint),
        "adapter": adapter,
        "library_versions": library_versions() | (versions or {}),
        "qk_dtype": rec.qk_dtype,
        "softmax_scale": float(scale),
        "S": int(S), "P": int(P), "N": int(N), "patch_start_idx": int(patch_start_idx),
        "num_heads": int(num_heads), "head_dim": int(head_dim),
        "d_model": int(d_model),
        "query_seed": seed,
        "merge": merge,
        "input_kind": input_kind,
        "extra": dict(extra or {}),
    }  # fmt: skip
