"""The one write path of the MedSAD Segment Editor effect (Qt-free).

:func:`write_mask` puts a MedSAD mask into the selected segment through the Segment Editor's
own modification call, so its masking settings (editable area, editable intensity range,
overwrite of other segments) are honoured, after saving the undo state (one undo step):

- whole volume: "set" with the mask;
- current slice ``(axis, index)``: "remove" on that voxel slice, then "add" the mask's slice,
  both limited to the slice's extent — so the segment changes on that slice only. (A "set"
  clears the whole segment before adding, whatever its extent.)

The mask is built on the volume's grid and resampled onto the editor's modifier geometry (the
segmentation's reference geometry, through the transforms between volume and segmentation),
which the intensity mask requires.

It talks to the editor through an :class:`EditorTarget`: :class:`EffectTarget` wraps the
effect's ``qSlicerSegmentEditorScriptedEffect`` (what ``SegmentEditorEffect.onApply`` uses),
:class:`LogicTarget` a ``vtkSlicerSegmentEditorLogic`` (tests and scripts). Since Slicer 5.10
the effect's calls are that logic's calls.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
import slicer
import vtk
from vtk.util import numpy_support

from MedSADLib.nodes import oriented_image
from MedSADLib.results import MedSADError, MedSADResult

from .geometry import AXIS_NAMES

__all__ = ["EditorTarget", "EffectTarget", "LogicTarget", "apply_result_to_segment", "slice_mask", "write_mask"]

MODES = ("Set", "Add", "Remove")


class EditorTarget(Protocol):
    """What :func:`write_mask` needs from a Segment Editor."""

    def segmentation_node(self) -> Any: ...

    def segment_id(self) -> str: ...

    def modifier_geometry(self) -> Any:
        """A ``vtkOrientedImageData`` with the editor's modifier labelmap geometry."""

    def save_state_for_undo(self) -> None: ...

    def modify(self, modifier: Any, mode: str, extent: list[int] | None) -> None:
        """Modify the selected segment (``mode`` one of :data:`MODES`) with masking."""


class LogicTarget:
    """A ``vtkSlicerSegmentEditorLogic`` with scene, segment editor node, segmentation and source
    volume set; the segment is ``segment_id`` or the editor node's selected segment."""

    def __init__(self, editor_logic: Any, segment_id: str | None = None) -> None:
        self.logic = editor_logic
        self._segment_id = segment_id

    def segmentation_node(self) -> Any:
        return self.logic.GetSegmentationNode()

    def segment_id(self) -> str:
        if self._segment_id:
            return self._segment_id
        editor_node = self.logic.GetSegmentEditorNode()
        return (editor_node.GetSelectedSegmentID() if editor_node is not None else None) or ""

    def modifier_geometry(self) -> Any:
        if not self.logic.ResetModifierLabelmapToDefault():
            return None
        return self.logic.GetModifierLabelmap()

    def save_state_for_undo(self) -> None:
        self.logic.SaveStateForUndo()

    def modify(self, modifier: Any, mode: str, extent: list[int] | None) -> None:
        value = getattr(slicer.vtkSlicerSegmentEditorLogic, f"ModificationMode{mode}")
        self.logic.ModifySegmentByLabelmap(
            self.segmentation_node(), self.segment_id(), modifier, value, extent or [0, -1, 0, -1, 0, -1], True, False
        )


class EffectTarget:
    """The running effect (``qSlicerSegmentEditorScriptedEffect``): the editor widget's undo
    stack, selected segment and masking. ``modes`` holds the ``ModificationMode*`` values
    (default ``slicer.qSlicerSegmentEditorAbstractEffect``)."""

    def __init__(self, scripted_effect: Any, modes: Any = None) -> None:
        self.effect = scripted_effect
        self.modes = modes

    def segmentation_node(self) -> Any:
        return self.effect.parameterSetNode().GetSegmentationNode()

    def segment_id(self) -> str:
        return self.effect.parameterSetNode().GetSelectedSegmentID() or ""

    def modifier_geometry(self) -> Any:
        return self.effect.defaultModifierLabelmap()

    def save_state_for_undo(self) -> None:
        self.effect.saveStateForUndo()

    def modify(self, modifier: Any, mode: str, extent: list[int] | None) -> None:
        modes = self.modes if self.modes is not None else slicer.qSlicerSegmentEditorAbstractEffect
        value = getattr(modes, f"ModificationMode{mode}")
        if extent is None:
            self.effect.modifySelectedSegmentByLabelmap(modifier, value)
        else:
            self.effect.modifySelectedSegmentByLabelmap(modifier, value, [int(e) for e in extent])


def slice_mask(mask_kji: np.ndarray, slice_: tuple[int, int] | None) -> np.ndarray:
    """``mask_kji`` (uint8) with everything outside the voxel slice ``(ijk_axis, index)`` zeroed;
    the whole mask when ``slice_`` is None."""
    mask = np.asarray(mask_kji, dtype=np.uint8)
    if slice_ is None:
        return mask
    axis, index = slice_
    if axis not in (0, 1, 2):
        raise MedSADError(f"slice axis {axis}: expected 0 (I), 1 (J) or 2 (K)")
    array_axis = 2 - axis  # (K, J, I) order
    if not 0 <= index < mask.shape[array_axis]:
        raise MedSADError(
            f"slice {AXIS_NAMES[axis]}={index} is outside the volume "
            f"({AXIS_NAMES[axis]} 0..{mask.shape[array_axis] - 1})"
        )
    only = np.zeros_like(mask)
    where = [slice(None)] * 3
    where[array_axis] = index
    only[tuple(where)] = mask[tuple(where)]
    return only


def _editor_geometry(target: EditorTarget) -> Any:
    """A private copy of the editor's modifier geometry (the effect's own labelmap is reused by
    the editor, so it is not kept)."""
    reference = target.modifier_geometry()
    if reference is None:
        raise MedSADError("the Segment Editor has no geometry to edit in: select a segmentation and source volume")
    image_to_world = vtk.vtkMatrix4x4()
    reference.GetImageToWorldMatrix(image_to_world)
    geometry = slicer.vtkOrientedImageData()
    geometry.SetExtent(reference.GetExtent())
    geometry.SetGeometryFromImageToWorldMatrix(image_to_world)
    return geometry


def _to_editor(labelmap: Any, volume_node: Any, segmentation_node: Any, reference: Any) -> Any:
    """A labelmap on the volume's grid resampled onto the editor's geometry (nearest neighbour),
    through the transforms between the volume and the segmentation."""
    volume_to_segmentation = None
    if volume_node.GetParentTransformNode() is not segmentation_node.GetParentTransformNode():
        volume_to_segmentation = vtk.vtkGeneralTransform()
        slicer.vtkMRMLTransformNode.GetTransformBetweenNodes(
            volume_node.GetParentTransformNode(), segmentation_node.GetParentTransformNode(), volume_to_segmentation
        )
    resampled = slicer.vtkOrientedImageData()
    if not slicer.vtkOrientedImageDataResample.ResampleOrientedImageToReferenceOrientedImage(
        labelmap, reference, resampled, False, False, volume_to_segmentation
    ):
        raise MedSADError("could not resample the mask onto the segmentation's geometry")
    return resampled


def _nonzero_extent(image: Any) -> list[int] | None:
    """The extent (in the image's IJK) of its non-zero voxels, None when there are none."""
    extent = image.GetExtent()
    dims = [extent[1] - extent[0] + 1, extent[3] - extent[2] + 1, extent[5] - extent[4] + 1]
    scalars = image.GetPointData().GetScalars()
    if scalars is None or min(dims) <= 0:
        return None
    array = numpy_support.vtk_to_numpy(scalars).reshape(dims[2], dims[1], dims[0])
    k, j, i = np.nonzero(array)
    if not len(i):
        return None
    return [
        int(i.min()) + extent[0],
        int(i.max()) + extent[0],
        int(j.min()) + extent[2],
        int(j.max()) + extent[2],
        int(k.min()) + extent[4],
        int(k.max()) + extent[4],
    ]


def write_mask(
    target: EditorTarget, volume_node: Any, mask_kji: np.ndarray, slice_: tuple[int, int] | None = None
) -> int:
    """Write ``mask_kji`` (on ``volume_node``'s grid) into the target's selected segment, whole
    volume or only the voxel slice ``slice_ = (ijk_axis, index)``; masking applies, undo state is
    saved first (one step).

    Returns:
        Number of mask voxels offered to the segment (before the editor's masking).

    Raises:
        MedSADError: no segmentation / segment, a mask not on the volume's grid, a slice outside.
    """
    segmentation_node = target.segmentation_node()
    if segmentation_node is None:
        raise MedSADError("no segmentation selected in the Segment Editor")
    segment_id = target.segment_id()
    if not segment_id or not segmentation_node.GetSegmentation().GetSegment(segment_id):
        raise MedSADError(f"no segment selected in {segmentation_node.GetName()!r}: add or select a segment")
    if volume_node is None or volume_node.GetImageData() is None:
        raise MedSADError("no source volume with voxels")
    i, j, k = volume_node.GetImageData().GetDimensions()
    if np.shape(mask_kji) != (k, j, i):
        raise MedSADError(f"mask of shape {np.shape(mask_kji)} is not on {volume_node.GetName()!r} ({k}, {j}, {i})")
    mask = slice_mask(mask_kji, slice_)
    reference = _editor_geometry(target)
    modifier = _to_editor(oriented_image(mask, volume_node), volume_node, segmentation_node, reference)
    if slice_ is None:
        target.save_state_for_undo()
        target.modify(modifier, "Set", None)
    else:
        area = _to_editor(
            oriented_image(slice_mask(np.ones((k, j, i), np.uint8), slice_), volume_node),
            volume_node,
            segmentation_node,
            reference,
        )
        extent = _nonzero_extent(area)
        if extent is None:
            raise MedSADError(f"slice {AXIS_NAMES[slice_[0]]}={slice_[1]} does not overlap the segmentation's geometry")
        target.save_state_for_undo()
        target.modify(area, "Remove", extent)
        target.modify(modifier, "Add", extent)
    return int(mask.sum())


def apply_result_to_segment(
    target: EditorTarget,
    volume_node: Any,
    result: MedSADResult,
    threshold: float | None = None,
    slice_: tuple[int, int] | None = None,
) -> int:
    """:func:`write_mask` with ``result``'s mask at ``threshold`` (None: the result's own)."""
    mask = result.mask if threshold is None else result.mask_at(threshold)
    return write_mask(target, volume_node, mask, slice_)
