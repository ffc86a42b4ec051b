"""2-D image and mask I/O (PNG, JPEG, BMP, TIFF): what the 2-D layouts, inference and the
MONAI Label app read."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["IMAGE_SUFFIXES", "load_image_2d", "load_mask_2d"]

IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
_LOSSY = (".jpg", ".jpeg")


def load_image_2d(path: str | Path) -> np.ndarray:
    """Load a 2-D image as ``(H, W, 3)`` float32 in ``[0, 1]``.

    Grey images are repeated to 3 channels; alpha is dropped; 16-bit images are divided by
    65535, 8-bit by 255; float images are min-max scaled if they leave ``[0, 1]``.

    Raises:
        ValueError: naming the file if it cannot be read.
    """
    path = Path(path)
    try:
        with Image.open(path) as img:
            mode = img.mode
            if mode in ("P", "PA", "CMYK", "YCbCr", "LAB", "HSV", "RGBA", "LA", "1"):
                img = img.convert("RGB" if mode not in ("LA", "1") else "L")
            array = np.asarray(img)
    except (OSError, SyntaxError) as err:
        raise ValueError(f"{path}: cannot read image ({err})") from err
    if array.dtype == np.uint8:
        out = array.astype(np.float32) / 255.0
    elif array.dtype.kind in "ui":
        out = array.astype(np.float32) / 65535.0
    else:
        out = array.astype(np.float32)
        lo, hi = float(out.min()), float(out.max())
        if lo < 0.0 or hi > 1.0:
            out = (out - lo) / (hi - lo) if hi > lo else np.zeros_like(out)
    out = np.clip(out, 0.0, 1.0)
    if out.ndim == 2:
        out = np.repeat(out[:, :, None], 3, axis=2)
    return np.ascontiguousarray(out[:, :, :3])  # (H, W, 3)


def _read_binary_mask(path: Path) -> np.ndarray:
    """Read one mask file as bool ``(H, W)``: any channel > 0 (> 127 for lossy JPEG)."""
    try:
        with Image.open(path) as img:
            if img.mode in ("P", "PA", "CMYK", "YCbCr", "LAB", "HSV", "RGBA", "LA"):
                img = img.convert("RGB")
            array = np.asarray(img)
    except (OSError, SyntaxError) as err:
        raise ValueError(f"{path}: cannot read mask ({err})") from err
    if array.ndim == 3:
        array = array.max(axis=2)
    threshold = 127 if path.suffix.lower() in _LOSSY and array.dtype == np.uint8 else 0
    return array > threshold


def load_mask_2d(paths: Sequence[str | Path], shape: tuple[int, int]) -> np.ndarray:
    """Load and OR-merge mask files into ``(H, W)`` uint8 in ``{0, 1}``.

    RGB/palette masks count a pixel as foreground when any channel is > 0 (> 127 for JPEG,
    whose compression noise would otherwise grow the mask).

    Args:
        paths: mask files (may be empty: an all-zero mask).
        shape: ``(H, W)`` of the image the masks belong to.

    Raises:
        ValueError: naming the file if it cannot be read or its size differs from ``shape``.
    """
    merged = np.zeros(tuple(shape), dtype=bool)
    for path in map(Path, paths):
        mask = _read_binary_mask(path)
        if mask.shape != merged.shape:
            raise ValueError(
                f"{path}: mask size {mask.shape[::-1]} (W, H) differs from its image's "
                f"{merged.shape[::-1]}; masks must match their image pixel for pixel"
            )
        merged |= mask
    return merged.astype(np.uint8)
