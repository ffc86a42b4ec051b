"""The Qt-free apply step of the MedSAD Segment Editor effect.

``apply_result_to_segment`` writes a MedSAD mask into a segment through
``vtkSlicerSegmentEditorLogic.ModifySegmentByLabelmap``, so the editor's masking settings
(editable area, editable intensity range, overwrite rules) are honoured and the previous state
is saved for undo. Scope: the whole volume, or one K slice (other slices untouched).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import slicer

from MedSADLib.backends import MedSADError, MedSADResult
from MedSADLib.nodes import oriented_image

__all__ = ["build_modifier_labelmap", "apply_result_to_segment"]

_MODES = {
    "set": "ModificationModeSet",
    "add": "ModificationModeAdd",
    "remove": "ModificationModeRemove",
}


def build_modifier_labelmap(volume_node: Any, mask_kji: np.ndarray, slice_index: int | None = None) -> Any:
    """A ``vtkOrientedImageData`` modifier in the volume's geometry (full extent); with
    ``slice_index`` the mask is zero outside that K slice (pass the slice as modification
    extent so that other slices of the segment are left alone)."""
    mask = np.asarray(mask_kji, dtype=np.uint8)
    if slice_index is None:
        return oriented_image(mask, volume_node)
    if not 0 <= slice_index < mask.shape[0]:
        raise MedSADError(f"slice {slice_index} is outside the volume (0..{mask.shape[0] - 1})")
    only = np.zeros_like(mask)
    only[slice_index] = mask[slice_index]
    return oriented_image(only, volume_node)


def apply_result_to_segment(editor_logic: Any, segment_id: str, volume_node: Any, result: MedSADResult,
                            threshold: float | None = None, slice_index: int | None = None,
                            mode: str = "set") -> int:
    """Write ``result``'s mask (at ``threshold``, default the result's) into ``segment_id`` of the
    editor logic's segmentation node, honouring its masking settings; saves undo state first.

    Args:
        editor_logic: a ``vtkSlicerSegmentEditorLogic`` with scene, segment editor node,
            segmentation node and source volume set.
        slice_index: only this K slice (``None``: the whole volume).
        mode: ``set`` (replace), ``add`` or ``remove``.

    Returns:
        Number of mask voxels offered to the segment (before masking).
    """
    if mode not in _MODES:
        raise MedSADError(f"mode {mode!r}: expected one of {sorted(_MODES)}")
    segmentation_node = editor_logic.GetSegmentationNode()
    if segmentation_node is None:
        raise MedSADError("no segmentation selected in the Segment Editor")
    if not segmentation_node.GetSegmentation().GetSegment(segment_id):
        raise MedSADError(f"segment {segment_id!r} is not in {segmentation_node.GetName()!r}")
    mask = result.mask_at(result.threshold if threshold is None else threshold)
    modifier = build_modifier_labelmap(volume_node, mask, slice_index)
    dims = modifier.GetDimensions()
    if slice_index is None:
        extent = [0, dims[0] - 1, 0, dims[1] - 1, 0, dims[2] - 1]
    else:
        extent = [0, dims[0] - 1, 0, dims[1] - 1, slice_index, slice_index]
    editor_logic.SaveStateForUndo()
    mode_value = getattr(slicer.vtkSlicerSegmentEditorLogic, _MODES[mode])
    editor_logic.ModifySegmentByLabelmap(segmentation_node, segment_id, modifier, mode_value, extent, False, False)
    return int(mask.sum() if slice_index is None else mask[slice_index].sum())
