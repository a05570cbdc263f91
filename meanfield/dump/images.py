"""Photographs for the vision dumps: bundled scikit-image photos or the user's files, preprocessed.

Bundled (no download: the files are inside the scikit-image wheel), named ``skimage:NAME``:
``astronaut``, ``coffee``, ``chelsea``, ``rocket``, ``camera`` (grey, repeated to RGB) and the
rectified stereo pair ``motorcycle_left`` / ``motorcycle_right`` (two views of one scene, the
smallest VGGT-like multi-view input). Anything else is a path: an image file, or a folder whose
image files are taken in sorted name order.

Preprocessing follows VGGT's ``load_and_preprocess_images`` (mode ``crop``): resize with PIL
bicubic to width ``size`` (518 by default; 224 available) and the height that keeps the aspect
ratio, rounded to a multiple of the 14 px patch; a height above ``size`` is center-cropped.
Mode ``square`` resizes to ``size x size``. Pixel values in [0, 1] are then normalized with the
ImageNet mean and standard deviation, as DINOv2 expects. Needs Pillow; NumPy out, no torch.
"""

from __future__ import annotations

import os

import numpy as np

PATCH = 14
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
BUNDLED = {
    "astronaut": "astronaut.png",
    "coffee": "coffee.png",
    "chelsea": "chelsea.png",
    "rocket": "rocket.jpg",
    "camera": "camera.png",
    "motorcycle_left": "motorcycle_left.png",
    "motorcycle_right": "motorcycle_right.png",
}
PREFIX = "skimage:"
EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm")
MODES = ("crop", "square")


def bundled_path(name: str) -> str:
    """File of a bundled photograph inside the installed scikit-image."""
    if name not in BUNDLED:
        raise ValueError(f"unknown bundled image {PREFIX}{name}; available: {', '.join(PREFIX + b for b in BUNDLED)}")
    try:
        import skimage.data
    except ImportError:
        raise ValueError(f"{PREFIX}{name} needs scikit-image: pip install scikit-image") from None
    path = os.path.join(os.path.dirname(skimage.data.__file__), BUNDLED[name])
    if not os.path.isfile(path):
        raise ValueError(f"{PREFIX}{name}: {path} is missing from the installed scikit-image")
    return path


def expand(sources) -> list[tuple[str, str]]:
    """``(name, path)`` per frame: bundled names, files, and the image files of folders (sorted)."""
    out = []
    for src in sources:
        src = os.fspath(src)
        if src.startswith(PREFIX):
            out.append((src, bundled_path(src[len(PREFIX) :])))
        elif os.path.isdir(src):
            files = sorted(f for f in os.listdir(src) if f.lower().endswith(EXTENSIONS))
            if not files:
                raise ValueError(f"image folder {src} holds no image file ({', '.join(EXTENSIONS)})")
            out.extend((os.path.join(src, f), os.path.join(src, f)) for f in files)
        elif os.path.isfile(src):
            out.append((src, src))
        else:
            raise ValueError(f"image {src}: no such file or folder (bundled photos are named {PREFIX}NAME)")
    if not out:
        raise ValueError("no image given")
    return out


def _pil():
    try:
        import PIL.Image
    except ImportError:
        raise ValueError("reading images needs Pillow: pip install pillow") from None
    return PIL.Image


def read_rgb(path: str, name: str | None = None):
    """A PIL RGB image; one-line ValueError for unreadable files and images smaller than a patch."""
    Image = _pil()
    UnidentifiedImageError = Image.UnidentifiedImageError

    name = name or path
    try:
        with Image.open(path) as im:
            im.load()
            img = im.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ValueError(f"image {name}: not an image file Pillow can read ({type(exc).__name__})") from None
    w, h = img.size
    if min(w, h) < PATCH:
        raise ValueError(f"image {name} is {w}x{h} px, smaller than one {PATCH} px patch")
    return img


def target_size(width: int, height: int, size: int, mode: str) -> tuple[int, int, int]:
    """``(resized width, resized height, cropped height)``, all multiples of the patch."""
    if mode == "square":
        return size, size, size
    new_h = max(PATCH, int(round(height * (size / width) / PATCH)) * PATCH)
    return size, new_h, min(new_h, size)


def preprocess(img, size: int = 518, mode: str = "crop") -> np.ndarray:
    """(3, H, W) float32, ImageNet-normalized, H and W multiples of 14 (module docstring)."""
    Image = _pil()

    if size < PATCH or size % PATCH:
        raise ValueError(f"--size must be a positive multiple of {PATCH}, got {size}")
    if mode not in MODES:
        raise ValueError(f"resize mode must be one of {MODES}, got {mode!r}")
    w, h = img.size
    new_w, new_h, crop_h = target_size(w, h, size, mode)
    img = img.resize((new_w, new_h), Image.Resampling.BICUBIC)
    x = np.asarray(img, dtype=np.float32) / 255.0  # (H, W, 3)
    top = (new_h - crop_h) // 2
    x = x[top : top + crop_h]
    x = (x - np.asarray(IMAGENET_MEAN, np.float32)) / np.asarray(IMAGENET_STD, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def load_images(sources, size: int = 518, mode: str = "crop") -> tuple[np.ndarray, list[str]]:
    """``(pixels (S, 3, H, W) float32, names)``; all frames must come out the same size."""
    frames, names = [], []
    for name, path in expand(sources):
        frames.append(preprocess(read_rgb(path, name), size, mode))
        names.append(name)
    shapes = {f.shape for f in frames}
    if len(shapes) > 1:
        sizes = ", ".join(f"{n}: {f.shape[2]}x{f.shape[1]}" for n, f in zip(names, frames))
        raise ValueError(f"frames differ in size after preprocessing ({sizes}); use --resize square")
    return np.stack(frames), names
