"""The project's cache folders: one root, private folders, files checked before anything in them is used.

The root is ``$MEANFIELD_CACHE_DIR`` (the one variable every cache reads; ``$MEANFIELD_CACHE`` is
a deprecated alias, honoured with a one-line warning when the new one is unset), else
``$XDG_CACHE_HOME/meanfield``, else ``~/.cache/meanfield``. What lives below it is loaded and run:
the native kernels (``native/``, a shared library), JAX's persistent compilation cache (``jax/``,
compiled executables) and converted weights (``onnx/``, ``.npz``). A folder or file another local
user can write would let them plant code or data that this user then runs, so:

* :func:`private_dir` creates its folders (and any missing parent of the root) with mode ``0700``
  whatever the umask, and refuses (:class:`UnsafeCache`, with the reason) a root or sub-folder
  that is not a plain folder owned by the user or that group or others may write to;
* :func:`publish` puts a finished file in place with its SHA-256 digest beside it
  (``<name>.sha256``): both written under temporary names in the same folder, made ``0600``,
  fsynced and renamed (the file first, then its digest);
* :func:`verify` says why a cached file must not be used (``None`` when it may): it must be a
  regular file owned by the user that group and others cannot write, with a digest file of the
  same kind whose digest equals the file's.

This module is the only reader of the variables (``solvers`` never imports ``meanfield``; the
package's tools use these helpers).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import tempfile
import warnings
from pathlib import Path

ENV = "MEANFIELD_CACHE_DIR"
OLD_ENV = "MEANFIELD_CACHE"  # deprecated alias of ENV, honoured for one release
DIGEST_SUFFIX = ".sha256"


class UnsafeCache(Exception):
    """A cache folder or file that must not be used; the message says why."""


def cache_root() -> Path:
    """``$MEANFIELD_CACHE_DIR``, else ``$MEANFIELD_CACHE`` (deprecated, with a warning), else
    ``$XDG_CACHE_HOME/meanfield``, else ``~/.cache/meanfield``."""
    root = os.environ.get(ENV)
    if not root and os.environ.get(OLD_ENV):
        root = os.environ[OLD_ENV]
        warnings.warn(f"{OLD_ENV} is deprecated and will be ignored in the next release; set {ENV} instead",
                      FutureWarning, stacklevel=2)
    if root:
        return Path(root).expanduser()
    base = os.environ.get("XDG_CACHE_HOME")
    return (Path(base).expanduser() if base else Path.home() / ".cache") / "meanfield"


def _uid() -> int | None:
    return os.getuid() if hasattr(os, "getuid") else None


def check_folder(folder: Path) -> None:
    """Raise :class:`UnsafeCache` unless ``folder`` is a plain folder (not a link) of this user
    that group and others cannot write."""
    folder = Path(folder)
    st = os.lstat(folder)
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise UnsafeCache(f"{folder} is not a plain folder")
    if _uid() is not None and st.st_uid != _uid():
        raise UnsafeCache(f"{folder} belongs to another user (uid {st.st_uid})")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise UnsafeCache(f"{folder} can be written by other users (mode {stat.S_IMODE(st.st_mode):04o})")


def check_file(path: Path) -> None:
    """Raise :class:`UnsafeCache` unless ``path`` is a regular file (not a link) of this user that
    group and others cannot write (``FileNotFoundError`` when it is absent)."""
    path = Path(path)
    st = os.lstat(path)
    if not stat.S_ISREG(st.st_mode):
        raise UnsafeCache(f"{path} is not a regular file")
    if _uid() is not None and st.st_uid != _uid():
        raise UnsafeCache(f"{path} belongs to another user (uid {st.st_uid})")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise UnsafeCache(f"{path} can be written by other users (mode {stat.S_IMODE(st.st_mode):04o})")


def _make(folder: Path) -> None:
    try:
        os.mkdir(folder, 0o700)
    except FileExistsError:
        return
    os.chmod(folder, 0o700)  # mkdir's mode is masked by the umask; a umask of 000 must not widen it


def make_private(folder: str | os.PathLike[str]) -> Path:
    """``folder`` and its missing parents created as ``0700`` folders whatever the umask; then
    ``folder`` itself checked (:func:`check_folder`)."""
    folder = Path(folder)
    missing = []
    p = folder
    while not os.path.lexists(p) and p != p.parent:
        missing.append(p)
        p = p.parent
    for q in reversed(missing):
        _make(q)
    check_folder(folder)
    return folder


def private_dir(name: str) -> Path:
    """``cache_root()/name``, created (with the root) as ``0700`` folders of this user, after
    checking that both are private; raises :class:`UnsafeCache` otherwise."""
    root = make_private(cache_root())
    return make_private(root / name)


def scratch_dir(prefix: str) -> Path:
    """A fresh private (``0700``) temporary folder: where a cache goes when its folder is refused."""
    return Path(tempfile.mkdtemp(prefix=prefix))  # mkdtemp creates 0700 whatever the umask


def file_digest(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def digest_path(path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    return path.with_name(path.name + DIGEST_SUFFIX)


def verify(path: str | os.PathLike[str]) -> str | None:
    """Why the cached file ``path`` must not be used, in a few words, or ``None`` when it may:
    checked as :func:`check_file`, with a digest file (:func:`publish`) that matches its content."""
    path = Path(path)
    if not os.path.lexists(path):
        return "missing"
    dig = digest_path(path)
    try:
        check_file(path)
        check_file(dig)
        recorded = dig.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        return f"{path.name} has no recorded digest"
    except UnsafeCache as exc:
        return str(exc)
    except (OSError, UnicodeDecodeError) as exc:
        return f"{dig} unreadable ({exc})"
    try:
        actual = file_digest(path)
    except OSError as exc:
        return f"{path} unreadable ({exc})"
    if actual != recorded:
        return f"{path.name} does not match its recorded SHA-256 digest"
    return None


def _fsync(path: str | os.PathLike[str]) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def publish(tmp: str | os.PathLike[str], target: str | os.PathLike[str]) -> str:
    """Rename the finished temporary file ``tmp`` (in ``target``'s folder) onto ``target`` and
    record its digest beside it; both made ``0600`` and fsynced first. Returns the digest."""
    tmp, target = Path(tmp), Path(target)
    os.chmod(tmp, 0o600)
    _fsync(tmp)
    digest = file_digest(tmp)
    fd, dtmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=DIGEST_SUFFIX + ".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as fh:
            fh.write(digest + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
        os.replace(dtmp, digest_path(target))
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(dtmp)
        raise
    with contextlib.suppress(OSError):  # the renames on disk too
        dfd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    return digest
