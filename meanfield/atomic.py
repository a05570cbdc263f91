"""Atomic file output: write to a temporary file in the target folder, then rename.

An interrupted run therefore never leaves a truncated file under the final name.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def check_writable(path, overwrite: bool = False) -> Path:
    """Fail early (before any work) if ``path`` exists and may not be replaced, or its folder is missing."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass --overwrite (CLI) or overwrite=True (Python) to replace it")
    if not path.parent.exists():
        raise ValueError(f"output folder {path.parent} does not exist")
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
        if path.exists() and not overwrite:
            raise FileExistsError(f"{path} appeared while writing; not replaced")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
