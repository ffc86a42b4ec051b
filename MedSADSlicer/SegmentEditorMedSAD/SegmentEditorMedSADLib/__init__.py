"""MedSAD Segment Editor effect. ``geometry`` (which voxel slice a view shows) and ``apply``
(the effect's one write path) are Qt-free and tested with slicer-core; the effect class
(``SegmentEditorEffect.py``) needs the Slicer application and is loaded by path at registration."""

from .apply import EffectTarget, LogicTarget, apply_result_to_segment, slice_mask, write_mask
from .geometry import ALIGNMENT_TOLERANCE_DEG, current_slice, slice_axis_index

__all__ = [
    "ALIGNMENT_TOLERANCE_DEG",
    "EffectTarget",
    "LogicTarget",
    "apply_result_to_segment",
    "current_slice",
    "slice_axis_index",
    "slice_mask",
    "write_mask",
]
