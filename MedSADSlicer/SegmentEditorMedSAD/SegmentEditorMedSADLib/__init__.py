"""MedSAD Segment Editor effect. ``apply`` is Qt-free (tested with slicer-core); the effect class
(``SegmentEditorEffect.py``) needs the Slicer application and is loaded by path at registration."""

from .apply import apply_result_to_segment, build_modifier_labelmap

__all__ = ["apply_result_to_segment", "build_modifier_labelmap"]
