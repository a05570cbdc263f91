"""HDF5 attribute values to and from Python: the one helper behind results files (``meanfield.io.results``),
dumps (``meanfield.dump.format``) and the fit reader (``meanfield.fit.cli``).

HDF5 attributes hold scalars, strings and flat arrays, so nested values are stored as JSON strings
and ``None`` as a marker string.  The two formats differ in two details, kept as keyword arguments
so that files already written read back exactly as before:

- results files: ``None`` -> ``"null"``; on reading, ``"null"`` -> ``None`` and any string that
  starts with ``[`` or ``{`` and parses as JSON is decoded (``parse_json="auto"``, the default);
- dumps: ``None`` -> ``""`` (``none=""``), JSON with sorted keys (``sort_keys=True``, unknown objects
  via ``str``), and only the attributes named in ``meanfield.dump.format.JSON_ATTRS`` are decoded
  (``read_attrs(..., json_keys=JSON_ATTRS, null=None)``).

Reading always turns ``bytes`` into ``str`` and NumPy scalars into Python scalars; arrays are
returned as they are.  Only :func:`check_contained` imports h5py (lazily); the rest take values
and mappings.

Every reader calls :func:`check_contained` on the open file before reading anything: it refuses
external links, soft links that do not resolve inside the file, datasets with external storage and
virtual datasets, so that a reader only ever returns bytes stored in the file it was given.
"""

from __future__ import annotations

import json
import os
import posixpath

import numpy as np

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def encode_attr(value, *, as_json: bool = False, none: str = "null", sort_keys: bool = False,
                default=None):
    """A Python value as something h5py stores as an attribute.

    ``dict``/``list``/``tuple`` (or anything, with ``as_json``) become a JSON string
    (``json.dumps(value, sort_keys=sort_keys, default=default)``); ``None`` becomes ``none``;
    everything else is returned unchanged (h5py stores numbers, strings and arrays itself).
    """
    if as_json or isinstance(value, (dict, list, tuple)):
        return json.dumps(value, sort_keys=sort_keys, default=default)
    if value is None:
        return none
    return value


def decode_attr(value, *, parse_json="auto", null: str | None = "null"):
    """An attribute value read by h5py, back to Python.

    ``bytes`` -> ``str``; then for strings: equal to ``null`` -> ``None`` (``null=None`` disables
    this); ``parse_json=True`` -> ``json.loads`` (a malformed string raises ``ValueError``),
    ``"auto"`` -> decoded if it starts with ``[`` or ``{`` and parses, else kept as is, ``False`` ->
    kept as is.  NumPy scalars -> Python scalars (``.item()``); anything else unchanged.
    """
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, str):
        if null is not None and value == null:
            return None
        if parse_json is True:
            return json.loads(value)
        if parse_json == "auto" and value[:1] in ("[", "{"):
            try:
                return json.loads(value)
            except json.JSONDecodeError:
                return value
        return value
    if isinstance(value, np.generic):
        return value.item()
    return value


def read_attrs(obj, *, json_keys=None, null: str | None = "null") -> dict:
    """All attributes of an h5py object (file, group or dataset) decoded with :func:`decode_attr`.

    ``json_keys=None``: JSON detected automatically (``parse_json="auto"``) for every attribute;
    otherwise exactly the attributes named in ``json_keys`` are parsed as JSON.
    """
    attrs = obj.attrs if hasattr(obj, "attrs") else obj
    if json_keys is None:
        return {k: decode_attr(v, null=null) for k, v in attrs.items()}
    return {k: decode_attr(v, parse_json=k in json_keys, null=null) for k, v in attrs.items()}


def is_hdf5(path) -> bool:
    """True if the file at ``path`` starts with the HDF5 signature (user block of 0 bytes)."""
    with open(path, "rb") as fh:
        return fh.read(len(HDF5_SIGNATURE)) == HDF5_SIGNATURE


READ_ERRORS = (OSError, KeyError, TypeError, IndexError, AttributeError, RuntimeError, ValueError)
"""What h5py raises on damaged or foreign content; every loader turns these into one ``ValueError``."""


def read_limit() -> int:
    """Largest dataset (bytes) a loader reads: half the available memory (1 GiB if unknown)."""
    from meanfield.flow.resources import available_memory

    avail = available_memory()
    return max(2**26, avail // 2) if avail else 2**30


def read_array(ds, where: str, *, numeric: bool = True):
    """``ds[()]`` after checking that it is a dataset of a sane size (and a numeric dtype).

    A damaged or hostile file may declare a dataset of 2^40 elements in a few bytes; reading that
    would exhaust memory, so its declared size is checked against :func:`read_limit` first.
    """
    if not hasattr(ds, "shape") or not hasattr(ds, "dtype"):
        raise ValueError(f"{where} is not a dataset")
    if numeric and ds.dtype.kind not in "biuf":
        raise ValueError(f"{where} has dtype {ds.dtype}, expected numbers")
    nbytes = int(np.prod(ds.shape, dtype=np.float64) * ds.dtype.itemsize) if ds.shape is not None else 0
    if nbytes > read_limit():
        raise ValueError(f"{where} declares shape {ds.shape} ({nbytes / 2**30:.3g} GiB), more than this loader reads")
    return ds[()]


def check_contained(f, where=None) -> None:
    """Raise ``ValueError`` (one line naming the file and the object) unless everything in the open
    h5py file ``f`` is stored in that file.

    Refused: ``h5py.ExternalLink`` (data in another file); ``h5py.SoftLink`` whose target does not
    resolve inside the file (dangling, or a path that escapes); datasets with external storage
    (``dset.external``: raw bytes of an arbitrary file); virtual datasets (``dset.is_virtual``:
    mapped from other files).  And a declared size that the file cannot hold: a dataset without
    filters (no compression) stores its bytes in this file, so its shape x itemsize must not exceed
    the file size; compressed (filtered) data can legitimately expand, so it is bounded later, at
    read time, by :func:`read_limit` (half the available memory) in :func:`read_array`.

    The walk is over links (``visit_links``, which does not follow soft or external links, and
    visits each group once, so hard-link cycles end); soft-link targets are checked only after every
    link has been seen to be internal, so resolving them never opens another file.
    """
    import h5py

    where = where if where is not None else f.filename
    names = []
    try:  # the callback only collects names: an h5py error raised inside it would surface as SystemError
        f.visit_links(names.append)
    except SystemError as e:
        raise ValueError(f"{where}: damaged file ({e})".splitlines()[0]) from None
    links = [(name, f.get(name, getlink=True)) for name in names]
    for name, link in links:
        if isinstance(link, h5py.ExternalLink):
            raise ValueError(f"{where}: /{name} is an external link to {link.filename}:{link.path}; "
                             "readers only read data stored in the file")
        if not isinstance(link, (h5py.SoftLink, h5py.HardLink)):  # user-defined link classes
            raise ValueError(f"{where}: /{name} is a link of unknown class; readers only read data stored in the file")
    try:
        file_size = os.path.getsize(f.filename)
    except (OSError, TypeError):  # in-memory or file-object files: no size bound
        file_size = None
    for name, link in links:
        if isinstance(link, h5py.SoftLink):
            target = posixpath.normpath(posixpath.join("/", posixpath.dirname(name), link.path))
            try:  # resolve it (``in`` only checks the last link exists): dangling, cyclic and escaping fail
                resolved = f[target]
            except READ_ERRORS:
                resolved = None
            if resolved is None:
                raise ValueError(f"{where}: /{name} is a soft link to {link.path!r}, which is not inside the file")
            continue
        obj = f.get(name)
        if not isinstance(obj, h5py.Dataset):
            continue
        if obj.is_virtual:
            raise ValueError(f"{where}: /{name} is a virtual dataset (data mapped from other files); "
                             "readers only read data stored in the file")
        if obj.external:
            raise ValueError(f"{where}: /{name} has external storage in {obj.external[0][0]!r}; "
                             "readers only read data stored in the file")
        if file_size is not None and obj.shape is not None and not obj.id.get_create_plist().get_nfilters():
            nbytes = int(np.prod(obj.shape, dtype=np.float64) * obj.dtype.itemsize)
            if nbytes > file_size:
                raise ValueError(f"{where}: /{name} declares shape {obj.shape} ({nbytes} bytes, uncompressed), "
                                 f"more than this loader reads: the whole file holds {file_size} bytes")
