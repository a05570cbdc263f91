"""Checkpoint and resume: a long run saves its state every K saves and continues from it exactly.

``solve_flow(..., checkpoint=Checkpoint("run.ckpt.h5", every=K))`` writes the complete state of
the run (tokens or grid values, the diagnostics recorded so far, counters) to one HDF5 file after
every ``K``-th save, atomically (``meanfield.io.atomic``: a kill during the write leaves the previous
checkpoint). ``Checkpoint("run.ckpt.h5", every=K, resume="run.ckpt.h5")`` (CLI ``--resume FILE``)
continues from it and goes on checkpointing; ``Checkpoint(resume=FILE)`` only continues. The run
must be the same (a fingerprint of its parameters, starting tokens and masses is compared), and
because every runner advances in the same chunks whether resumed or not, the final state equals an
uninterrupted run's bit for bit.

The runners receive the run's :class:`Session` as an argument (``meanfield.flow.driver.run`` opens it):
``run_particles(spec, session)``, ``method.run(spec, session)``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np

from meanfield.io.hdf5 import check_contained, decode_attr, read_array
from meanfield.io.atomic import atomic_path

FORMAT = "meanfield-checkpoint"
FORMAT_VERSION = 1


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """Where and how often to checkpoint, and where to resume from.

    ``path`` -- the checkpoint file (HDF5) written after every ``every``-th save (>= 1) [None: no
    checkpoints]; ``resume`` -- a checkpoint of this same run to continue from [None: a fresh run].
    At least one of the two.
    """

    path: str | None = None
    every: int = 1
    resume: str | None = None

    def __post_init__(self):
        from meanfield._validate import integer

        integer("checkpoint every", self.every, 1)
        for name in ("path", "resume"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, (str, Path)) or not str(v).strip()):
                raise ValueError(f"checkpoint {name} must be a file name, got {v!r}")
        if self.path is None and self.resume is None:
            raise ValueError("Checkpoint needs a path to write, a file to resume from, or both")

    @classmethod
    def of(cls, value) -> "Checkpoint | None":
        """A ``solve_flow(checkpoint=...)`` value as a Checkpoint: None, a path (``every=1``) or one."""
        if value is None or isinstance(value, Checkpoint):
            return value
        if isinstance(value, (str, Path)):
            return cls(str(value))
        raise ValueError(f"checkpoint must be a meanfield.Checkpoint(...) or a file name, got {value!r}")


def _fingerprint_params(spec) -> dict:
    """The run's parameters without the version, and without the precision options (docs/precision.md)
    at the values every run had before they existed, so those older checkpoints still resume."""
    params = {k: v for k, v in spec.params().items() if k != "meanfield_version"}
    if params.get("matmul_precision") == "highest":
        del params["matmul_precision"]
    if params.get("attention") in ("streaming", "moments"):
        del params["attention"]
    opts = dict(params.get("kernel_options") or {})
    if opts.get("matmul_precision") == "highest":
        del opts["matmul_precision"]
    if opts.get("attention") == "auto":
        del opts["attention"]
    params["kernel_options"] = opts
    return params


def fingerprint(spec) -> str:
    """Digest of everything that determines the run: parameters, save steps, start tokens, masses."""
    params = _fingerprint_params(spec)
    h = hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode())
    h.update(np.asarray(spec.save_steps, np.int64).tobytes())
    for arr in (spec.x0, spec.weights):
        if arr is not None:
            h.update(np.ascontiguousarray(arr).tobytes())
    if spec.schedule is not None:  # the kernels' arrays (weights of each layer) decide the run too
        import jax

        for leaf in jax.tree_util.tree_leaves(spec.schedule):
            h.update(np.ascontiguousarray(np.asarray(leaf)).tobytes())
    return h.hexdigest()


class Session:
    """The checkpoint policy and the resumed state (if any) of one run."""

    def __init__(self, spec, checkpoint: Checkpoint | None = None):
        checkpoint = Checkpoint.of(checkpoint)
        self.spec = spec
        self.checkpoint = None if checkpoint is None or checkpoint.path is None else checkpoint
        self.fingerprint = fingerprint(spec)
        resume = None if checkpoint is None else checkpoint.resume
        self.state = None if resume is None else load(resume, self.fingerprint)
        self.written = 0

    @property
    def start(self) -> int:
        """Index (into ``spec.save_steps``) of the save the run continues from (0: from the start)."""
        return 0 if self.state is None else self.state["save_index"]

    def due(self, save_index: int) -> bool:
        """True when the save ``save_index`` is a checkpoint (every K-th, not the last)."""
        c = self.checkpoint
        return c is not None and save_index % c.every == 0 and save_index < len(self.spec.save_steps) - 1

    def save(self, save_index: int, arrays: dict, records: dict) -> None:
        """Write the state after save ``save_index`` (``records``: name -> list of per-save dicts)."""
        write(self.checkpoint.path, self.fingerprint, self.spec.method.name, save_index, arrays, records)
        self.written += 1


def write(path, fp: str, method: str, save_index: int, arrays: dict, records: dict) -> None:
    import h5py

    with atomic_path(path, overwrite=True) as tmp, h5py.File(tmp, "w") as f:
        f.attrs.update({"format": FORMAT, "format_version": FORMAT_VERSION, "fingerprint": fp, "method": method,
                        "save_index": int(save_index)})
        g = f.create_group("arrays")
        for k, v in arrays.items():
            g.create_dataset(k, data=np.asarray(v))
        r = f.create_group("records")
        for name, rows in records.items():
            sub = r.create_group(name)
            sub.attrs["count"] = len(rows)
            for key in (rows[0] if rows else {}):
                sub.create_dataset(key, data=np.stack([np.asarray(row[key]) for row in rows]))


def load(path, fp: str | None = None) -> dict:
    """Read a checkpoint; ``ValueError`` if it is missing, damaged, or (``fp`` given) of another run."""
    import h5py

    if not Path(path).is_file():
        raise ValueError(f"no such checkpoint file: {path}")
    try:
        with h5py.File(path, "r") as f:
            check_contained(f, path)  # no links out of the file, external storage or virtual datasets
            if decode_attr(f.attrs.get("format")) != FORMAT:
                raise ValueError(f"{path} is not a meanfield checkpoint")
            if fp is not None and decode_attr(f.attrs.get("fingerprint")) != fp:
                raise ValueError(f"{path} is a checkpoint of a different run (parameters, seed or start differ); "
                                 "resume with exactly the options of the checkpointed run")
            state = {"save_index": int(f.attrs["save_index"]), "method": decode_attr(f.attrs["method"]),
                     "arrays": {k: read_array(f["arrays"][k], f"{path}: /arrays/{k}", numeric=False) for k in f["arrays"]}, "records": {}}
            for name, sub in f["records"].items():
                cols = {k: read_array(sub[k], f"{path}: /records/{name}/{k}", numeric=False) for k in sub}
                state["records"][name] = [{k: v[i] for k, v in cols.items()} for i in range(int(sub.attrs["count"]))]
            return state
    except (OSError, KeyError, TypeError, IndexError, AttributeError, RuntimeError) as e:  # damaged file
        raise ValueError(f"{path} is not a readable checkpoint ({type(e).__name__}: {e})") from None
