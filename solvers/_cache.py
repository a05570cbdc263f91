"""The project's cache folders: one root, private folders, checked before anything in them is used.

The root is ``$MEANFIELD_CACHE_DIR`` (default ``~/.cache/meanfield``). What lives below it is
loaded and run: the native kernels (``native/``, a shared library) and JAX's persistent
compilation cache (``jax/``, compiled executables). A folder another local user can write into
would let them plant code that runs as this user, so :func:`private_dir` creates its folders with
mode ``0700`` whatever the umask and refuses (:class:`UnsafeCache`, with the reason) a root or
sub-folder that is not owned by the user or that group or others may write to.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

ENV = "MEANFIELD_CACHE_DIR"


class UnsafeCache(Exception):
    """A cache folder that must not be used; the message says why."""


def cache_root() -> Path:
    """``$MEANFIELD_CACHE_DIR``, else ``~/.cache/meanfield``."""
    root = os.environ.get(ENV)
    return Path(root).expanduser() if root else Path.home() / ".cache" / "meanfield"


def _check(folder: Path) -> None:
    st = folder.lstat()
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise UnsafeCache(f"{folder} is not a plain folder")
    if hasattr(os, "getuid") and st.st_uid != os.getuid():
        raise UnsafeCache(f"{folder} belongs to another user (uid {st.st_uid})")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise UnsafeCache(f"{folder} can be written by other users (mode {stat.S_IMODE(st.st_mode):04o})")


def _make(folder: Path) -> None:
    try:
        folder.mkdir(mode=0o700)
    except FileExistsError:
        return
    os.chmod(folder, 0o700)  # mkdir's mode is masked by the umask; a umask of 000 must not widen it


def private_dir(name: str) -> Path:
    """``cache_root()/name``, created (with the root) as ``0700`` folders of this user, after
    checking that both are private; raises :class:`UnsafeCache` otherwise."""
    root = cache_root()
    if not root.exists():
        root.parent.mkdir(parents=True, exist_ok=True)
        _make(root)
    _check(root)
    folder = root / name
    _make(folder)
    _check(folder)
    return folder
