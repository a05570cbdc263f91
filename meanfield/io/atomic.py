"""Atomic file output: write to a temporary file in the target folder, then rename.

An interrupted run therefore never leaves a truncated file under the final name. Every tool calls
:func:`check_writable` on each of its outputs *before* any computation, so an unwritable folder, a
full disk, a wrong extension or an existing file is reported in one line before work is lost.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

DISK_MARGIN = 16 * 2**20
"""Free space kept in reserve beyond an output's expected size (bytes)."""


def _free_bytes(folder: Path) -> int:
    return shutil.disk_usage(folder).free


def check_writable(path, overwrite: bool = False, *, nbytes: int = 0, suffixes=None) -> Path:
    """Fail early (before any work) unless ``path`` can be written.

    Checks, each a one-line error: the path names a file (not ``""`` or a folder); its extension is
    one of ``suffixes`` (when given, e.g. ``(".h5", ".hdf5")``); it does not exist unless
    ``overwrite`` (``FileExistsError``); its folder exists and a file can be created there (tried,
    not guessed from permission bits); the folder's file system has ``nbytes`` (the expected size)
    plus :data:`DISK_MARGIN` free. Raises ``ValueError`` otherwise.
    """
    if path is None or not str(path).strip():
        raise ValueError(f"output path {str(path)!r} is empty; expected a file name")
    path = Path(path)
    if path.is_dir() or path.name in ("", ".", ".."):
        raise ValueError(f"output path {path} is a folder; expected a file name")
    if suffixes and path.suffix.lower() not in suffixes:
        raise ValueError(f"output file {path} should end in {' or '.join(suffixes)}, got {path.suffix or 'no extension'!r}")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass --overwrite (CLI) or overwrite=True (Python) to replace it")
    parent = path.parent
    if not parent.exists():
        raise ValueError(f"output folder {parent} does not exist")
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".probe", dir=parent)
    except OSError as e:
        raise ValueError(f"output folder {parent} is not writable ({e.strerror or e})") from None
    os.close(fd)
    os.unlink(probe)
    need = int(nbytes) + DISK_MARGIN
    free = _free_bytes(parent)
    if free < need:
        raise ValueError(f"not enough free disk space in {parent}: {free / 2**20:.0f} MiB free, "
                         f"about {need / 2**20:.0f} MiB needed for {path.name}")
    return path


@contextlib.contextmanager
def atomic_path(path, overwrite: bool = False):
    """Yield a temporary path beside ``path``; on success rename it onto ``path``, else delete it."""
    path = check_writable(path, overwrite)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file normal permissions
        with open(tmp, "rb+") as fh:  # on disk before the rename, so a crash never leaves an empty file
            os.fsync(fh.fileno())
        if path.exists() and not overwrite:
            raise FileExistsError(f"{path} appeared while writing; not replaced")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
