"""Which way a volume's voxels run, and the RAS view every model slices.

A scan's voxel order is whatever its scanner or converter chose: a 3-D T1 acquired sagittally
keeps its slices along the first voxel axis, a DICOM conversion may run left-to-right or
right-to-left. A slice-wise model sees what ``take_slice`` cuts, so the same head stored two
ways would be shown axial slices in one case and sagittal ones, mirrored or rotated, in the
other. Every model therefore works on the **RAS view** of a volume: its voxel axes permuted and
flipped (no resampling, nothing interpolated) so that they run, as closely as the affine
allows, towards Right, Anterior and Superior, the way ``nibabel.as_closest_canonical`` orders
them. ``slice_axis`` counts in that view (0 sagittal, 1 coronal, 2 axial), and every answer is
mapped back to the file's own voxels (:meth:`Reorientation.to_file`), so an output keeps its
input's geometry.

Checkpoints written before this (no ``orientation`` key) were trained on the file's voxel
order and keep it (``orientation="file"``, :func:`reorientation`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
from nibabel.orientations import apply_orientation, axcodes2ornt, io_orientation, ornt_transform

__all__ = ["ORIENTATIONS", "Reorientation", "reorientation", "ras_view"]

#: ``ras``: models slice the RAS view; ``file``: the file's voxel order (checkpoints before it).
ORIENTATIONS = ("ras", "file")

_RAS = axcodes2ornt(("R", "A", "S"))
T = TypeVar("T")


@dataclass(frozen=True)
class Reorientation:
    """The permutation and flips between a file's voxel axes and its RAS view.

    ``to_view[i] = (view axis, ±1)`` of file axis ``i`` (nibabel's orientation array from the file
    to the view). The identity for a file that already runs RAS, or for ``orientation="file"``.
    """

    to_view: tuple[tuple[int, int], ...] = ((0, 1), (1, 1), (2, 1))

    @classmethod
    def from_affine(cls, affine: np.ndarray) -> Reorientation:
        """The RAS view of a volume with this 4×4 voxel-to-RAS affine (closest axes for an oblique one)."""
        transform = ornt_transform(io_orientation(np.asarray(affine, dtype=np.float64)), _RAS)
        return cls(tuple((int(axis), int(flip)) for axis, flip in transform))

    @property
    def identity(self) -> bool:
        return self.to_view == ((0, 1), (1, 1), (2, 1))

    def _ornt(self) -> np.ndarray:
        return np.asarray(self.to_view, dtype=np.float64)

    def to_ras(self, array: np.ndarray) -> np.ndarray:
        """The RAS view of a file-order array (a contiguous copy unless it already runs RAS)."""
        return array if self.identity else np.ascontiguousarray(apply_orientation(array, self._ornt()))

    def to_file(self, array: np.ndarray) -> np.ndarray:
        """A RAS-view array back in the file's voxel order (the inverse of :meth:`to_ras`)."""
        if self.identity:
            return array
        back = np.zeros((3, 2))
        for i, (axis, flip) in enumerate(self.to_view):  # view axis `axis` is file axis i
            back[axis] = (i, flip)
        return np.ascontiguousarray(apply_orientation(array, back))

    def file_axis(self, view_axis: int) -> int:
        """The file's voxel axis that runs along ``view_axis`` of the view."""
        return next(i for i, (axis, _) in enumerate(self.to_view) if axis == view_axis)

    def reversed_along(self, view_axis: int) -> bool:
        """Whether slice ``k`` of the view is slice ``n - 1 - k`` of the file along that axis."""
        return self.to_view[self.file_axis(view_axis)][1] < 0

    def slices_to_file(self, values: Sequence[T], view_axis: int) -> list[T]:
        """Per-slice values along ``view_axis`` of the view, in the file's slice order."""
        return list(values)[::-1] if self.reversed_along(view_axis) else list(values)

    def spacing_to_ras(self, spacing: Sequence[float] | None) -> tuple[float, float, float] | None:
        """Voxel sizes along the file's axes, reordered along the view's."""
        if spacing is None:
            return None
        out = [0.0, 0.0, 0.0]
        for i, (axis, _) in enumerate(self.to_view):
            out[axis] = float(spacing[i])
        return (out[0], out[1], out[2])


def reorientation(affine: np.ndarray | None, orientation: str = "ras") -> Reorientation:
    """The view a model of ``orientation`` slices: the RAS view of a volume with this affine, or
    the file's own order (``orientation="file"``, or no affine: a bare array).

    Raises:
        ValueError: an unknown ``orientation``.
    """
    if orientation not in ORIENTATIONS:
        raise ValueError(f"orientation {orientation!r}: expected one of {', '.join(ORIENTATIONS)}")
    if orientation == "file" or affine is None:
        return Reorientation()
    return Reorientation.from_affine(affine)


def ras_view(array: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """``array`` (in its file's voxel order, with that file's affine) as its RAS view."""
    return Reorientation.from_affine(affine).to_ras(array)
