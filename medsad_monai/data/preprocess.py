"""The one slice ↔ model-input mapping shared by training, evaluation and inference.

A 2-D slice (H, W) or (H, W, 3) in [0, 1] is centre-padded to a square as MONAI's
``SpatialPad(method="symmetric")`` pads and resized as MONAI's ``Resize`` resizes to the model's
side S; :func:`restore_slice` maps an (S, S) model output back onto the original (H, W) grid.
Keeping both directions here means the training data and the inference output can never
disagree on geometry.

A volume slice whose pixels are not square (rows and columns of different mm: the axial slices
of a sagittal or coronal acquisition with thick slices) is first resampled to square pixels,
its finer side kept (``pixel_mm``), so the model sees anatomy in its true proportions whatever
the acquisition; the inverse resamples back onto the slice's own grid.

Every training, validation and inference slice passes through here, so the common case runs as
the torch calls that MONAI's transforms make (``torch.nn.functional.pad`` / ``interpolate``)
without wrapping each slice in a ``MetaTensor``: a slice carries no metadata, and the wrapping
cost 2 ms a slice, about 4 s of each epoch of the sample recipe (2 AVX2 cores). Downsizing with
anti-aliasing (a slice larger than the model's side) still goes through MONAI's ``Resize``.
``tests/test_preprocess.py`` holds both paths to MONAI's transforms bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from monai.data import MetaTensor
from monai.transforms import Resize

__all__ = [
    "SliceGeometry",
    "is_background",
    "prepare_slice",
    "prepare_mask",
    "restore_slice",
    "square_pixel_shape",
    "PIXEL_TOLERANCE",
]

#: Pixels whose row and column sizes differ by at most this fraction count as square.
PIXEL_TOLERANCE = 0.01


def square_pixel_shape(height: int, width: int, pixel_mm: tuple[float, float] | None) -> tuple[int, int]:
    """The (H, W) of a slice of ``pixel_mm`` (row, column size in mm) resampled to square pixels of
    its finer size; the slice's own shape when the pixels are square (or their size unknown)."""
    if pixel_mm is None:
        return height, width
    row, col = float(pixel_mm[0]), float(pixel_mm[1])
    if not (np.isfinite(row) and np.isfinite(col) and row > 0 and col > 0):
        return height, width
    fine = min(row, col)
    if max(row, col) <= fine * (1 + PIXEL_TOLERANCE):
        return height, width
    return max(1, round(height * row / fine)), max(1, round(width * col / fine))


@dataclass(frozen=True)
class SliceGeometry:
    """How a slice was mapped to the model grid (for the inverse)."""

    height: int
    width: int
    side: int  # padded square side
    square_height: int = 0  # the slice's shape with square pixels (0: its own)
    square_width: int = 0

    @property
    def square(self) -> tuple[int, int]:
        """(H, W) after resampling to square pixels (the slice's own shape when they were square)."""
        return (self.square_height or self.height, self.square_width or self.width)

    @property
    def pad_top(self) -> int:
        return (self.side - self.square[0]) // 2

    @property
    def pad_left(self) -> int:
        return (self.side - self.square[1]) // 2


def _plain(x) -> torch.Tensor:
    """MONAI returns MetaTensors; the model path works on plain tensors."""
    return x.as_tensor() if isinstance(x, MetaTensor) else torch.as_tensor(x)


def _to_chw(image: np.ndarray | torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(image, dtype=np.float32))
    if t.ndim == 2:
        t = t[None].expand(3, -1, -1)
    elif t.ndim == 3 and t.shape[-1] in (1, 3):
        t = t.permute(2, 0, 1)
        if t.shape[0] == 1:
            t = t.expand(3, -1, -1)
    else:
        raise ValueError(f"expected a 2-D slice (H, W) or (H, W, 3), got shape {tuple(t.shape)}")
    return t.contiguous()


def _pad_square(chw: torch.Tensor) -> torch.Tensor:
    """(C, H, W) -> (C, side, side), zeros split as ``SpatialPad(method="symmetric")`` splits them."""
    h, w = int(chw.shape[-2]), int(chw.shape[-1])
    side = max(h, w)
    top, left = (side - h) // 2, (side - w) // 2
    if top == 0 and left == 0 and h == w:
        return chw
    return F.pad(chw, (left, side - w - left, top, side - h - top))


def _resize(chw: torch.Tensor, size: int, mode: str) -> torch.Tensor:
    """(C, H, W) float -> (C, size, size) as ``Resize((size, size), mode)`` without anti-aliasing."""
    if tuple(chw.shape[-2:]) == (size, size):
        return chw.float()
    return F.interpolate(chw.float()[None], size=(size, size), mode=mode)[0]


def _to_shape(chw: torch.Tensor, shape: tuple[int, int], mode: str) -> torch.Tensor:
    """(C, H, W) resampled to (C, *shape) (as MONAI's ``Resize`` without anti-aliasing)."""
    if tuple(chw.shape[-2:]) == shape:
        return chw
    return F.interpolate(chw.float()[None], size=shape, mode=mode)[0]


def prepare_slice(
    image: np.ndarray | torch.Tensor, size: int, pixel_mm: tuple[float, float] | None = None
) -> tuple[torch.Tensor, SliceGeometry]:
    """(H, W) or (H, W, 3) in [0, 1] -> (3, size, size) float tensor in [0, 1] and its geometry;
    ``pixel_mm`` (row, column mm) resamples non-square pixels to square first."""
    chw = _to_chw(image)
    h, w = int(chw.shape[1]), int(chw.shape[2])
    sh, sw = square_pixel_shape(h, w, pixel_mm)
    chw = _to_shape(chw, (sh, sw), "bilinear")
    side = max(sh, sw)
    padded = _pad_square(chw)
    if side > size:  # downsizing: MONAI's anti-aliased resize
        resized = _plain(Resize((size, size), mode="bilinear", anti_aliasing=True)(padded))
    else:
        resized = _resize(padded, size, "bilinear")
    square = (sh, sw) != (h, w)
    return resized.float().clamp_(0.0, 1.0), SliceGeometry(h, w, side, sh if square else 0, sw if square else 0)


def prepare_mask(
    mask: np.ndarray | torch.Tensor, size: int, pixel_mm: tuple[float, float] | None = None
) -> torch.Tensor:
    """(H, W) binary mask -> (1, size, size) float {0, 1} (nearest neighbour, the same square
    pixels and padding as :func:`prepare_slice`)."""
    m = torch.as_tensor(np.asarray(mask, dtype=np.float32))
    if m.ndim != 2:
        raise ValueError(f"expected a 2-D mask, got shape {tuple(m.shape)}")
    m = _to_shape(m[None], square_pixel_shape(int(m.shape[0]), int(m.shape[1]), pixel_mm), "nearest")
    return (_resize(_pad_square(m), size, "nearest") > 0.5).float()


def restore_slice(output: torch.Tensor, geometry: SliceGeometry) -> torch.Tensor:
    """(S, S) or (C, S, S) model output -> (H, W) / (C, H, W) on the slice's own grid (bilinear)."""
    squeeze = output.ndim == 2
    x = output[None] if squeeze else output
    x = _resize(_plain(x), geometry.side, "bilinear")
    top, left = geometry.pad_top, geometry.pad_left
    sh, sw = geometry.square
    x = _to_shape(x[:, top : top + sh, left : left + sw], (geometry.height, geometry.width), "bilinear")
    return x[0] if squeeze else x


def is_background(slice2d: np.ndarray, level: float = 0.02, min_fraction: float = 0.01) -> bool:
    """True when fewer than ``min_fraction`` of the pixels exceed ``level`` (normalised [0, 1]):
    a slice without anatomy, skipped by training, validation and inference alike."""
    return float((np.asarray(slice2d) > level).mean()) < min_fraction
