"""Which voxel slice of a volume a slice view shows (for the effect's scope "Current slice").

A slice view shows one voxel slice of a volume only when the view's plane is parallel to one of
the volume's voxel planes (I, J or K constant): axial, sagittal or coronal views of a volume
acquired in that orientation, or any view after "Rotate to volume plane". Then
:func:`slice_axis_index` returns that IJK axis and the index of the voxel slice through the
view's centre.

Decision for an oblique view (more than :data:`ALIGNMENT_TOLERANCE_DEG` from every voxel plane):
a clear :class:`MedSADError`, not the nearest axis. The voxels written would be a slice the user
does not see, cutting the view at an angle; the message says how far off the view is and to use
"Rotate to volume plane" or the scope "Whole volume".
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import vtk

from MedSADLib.results import MedSADError

#: A view this close (degrees) to a voxel plane counts as showing that plane.
ALIGNMENT_TOLERANCE_DEG = 1.0
AXIS_NAMES = ("I", "J", "K")


def _array(matrix: Any) -> np.ndarray:
    """A 4x4 numpy array from a numpy array, nested lists or a ``vtkMatrix4x4``."""
    if hasattr(matrix, "GetElement"):
        return np.array([[matrix.GetElement(i, j) for j in range(4)] for i in range(4)], dtype=float)
    array = np.asarray(matrix, dtype=float)
    if array.shape != (4, 4):
        raise MedSADError(f"expected a 4x4 matrix, got shape {array.shape}")
    return array


def _unit(vector: np.ndarray, what: str) -> np.ndarray:
    norm = float(np.linalg.norm(vector))
    if norm < 1e-12:
        raise MedSADError(f"degenerate {what}")
    return vector / norm


def slice_axis_index(
    slice_to_ras: Any, ras_to_ijk: Any, dimensions: tuple[int, int, int], tolerance_deg: float = ALIGNMENT_TOLERANCE_DEG
) -> tuple[int, int]:
    """The IJK axis (0 = I, 1 = J, 2 = K) normal to a slice view and the index along it of the
    voxel slice through the view's centre.

    Args:
        slice_to_ras: the slice node's ``SliceToRAS`` (columns 0 and 1: the view's in-plane
            directions, column 3: its centre), in the volume's RAS (see :func:`current_slice` for
            a volume under a transform).
        ras_to_ijk: the volume's ``RASToIJK`` matrix.
        dimensions: the volume's (I, J, K) dimensions.
        tolerance_deg: largest angle between the view and a voxel plane.

    Raises:
        MedSADError: the view is oblique to every voxel plane, or its centre lies outside the
            volume along that axis.
    """
    slice_to_ras, ras_to_ijk = _array(slice_to_ras), _array(ras_to_ijk)
    try:
        ijk_to_ras = np.linalg.inv(ras_to_ijk)
    except np.linalg.LinAlgError as err:
        raise MedSADError("the volume's RAS-to-IJK matrix is singular") from err
    # The plane's normal from its in-plane directions (right for any linear map, scaled or sheared).
    normal = _unit(np.cross(slice_to_ras[:3, 0], slice_to_ras[:3, 1]), "slice plane")
    columns = ijk_to_ras[:3, :3]
    cosines = []
    for axis in range(3):  # the plane "index along axis is constant" is spanned by the other two axes
        plane_normal = _unit(np.cross(columns[:, (axis + 1) % 3], columns[:, (axis + 2) % 3]), "volume axis")
        cosines.append(abs(float(np.dot(plane_normal, normal))))
    axis = int(np.argmax(cosines))
    angle = math.degrees(math.acos(min(1.0, cosines[axis])))
    if angle > tolerance_deg:
        raise MedSADError(
            f"the slice view is oblique to the volume: {angle:.1f}° from its nearest voxel plane "
            f"({AXIS_NAMES[axis]} constant), so it shows no single voxel slice. Use the view's 'Rotate to "
            "volume plane' (or the axial/sagittal/coronal orientation the volume was acquired in), or scope "
            "'Whole volume'"
        )
    position = (ras_to_ijk @ np.append(slice_to_ras[:3, 3], 1.0))[axis]
    index = int(math.floor(position + 0.5))
    if not 0 <= index < dimensions[axis]:
        raise MedSADError(
            f"the slice view shows {AXIS_NAMES[axis]}={index}, outside the volume "
            f"({AXIS_NAMES[axis]} 0..{dimensions[axis] - 1})"
        )
    return axis, index


def current_slice(slice_node: Any, volume_node: Any, tolerance_deg: float = ALIGNMENT_TOLERANCE_DEG) -> tuple[int, int]:
    """:func:`slice_axis_index` for a ``vtkMRMLSliceNode`` and a volume node, with the volume's
    parent transform taken into account (a non-linear one linearised at the view's centre)."""
    if slice_node is None:
        raise MedSADError("no slice view: choose a layout with the Red view, or scope 'Whole volume'")
    if volume_node is None or volume_node.GetImageData() is None:
        raise MedSADError("no source volume with voxels")
    slice_to_ras = _array(slice_node.GetSliceToRAS())
    transform_node = volume_node.GetParentTransformNode()
    if transform_node is not None:  # world -> the volume's own RAS
        if transform_node.IsTransformToWorldLinear():
            world_to_local = vtk.vtkMatrix4x4()
            transform_node.GetMatrixTransformFromWorld(world_to_local)
            slice_to_ras = _array(world_to_local) @ slice_to_ras
        else:
            from_world = transform_node.GetTransformFromWorld()
            centre = slice_to_ras[:3, 3].tolist()
            local = np.eye(4)
            for column in (0, 1):
                local[:3, column] = from_world.TransformVectorAtPoint(centre, slice_to_ras[:3, column].tolist())
            local[:3, 3] = from_world.TransformPoint(centre)
            slice_to_ras = local
    ras_to_ijk = vtk.vtkMatrix4x4()
    volume_node.GetRASToIJKMatrix(ras_to_ijk)
    return slice_axis_index(slice_to_ras, ras_to_ijk, volume_node.GetImageData().GetDimensions(), tolerance_deg)
