"""Hidden module that registers the "MedSAD" Segment Editor effect when Slicer has started."""

from __future__ import annotations

import os

import slicer
from slicer.ScriptedLoadableModule import ScriptedLoadableModule


class SegmentEditorMedSAD(ScriptedLoadableModule):
    """Registration only; the effect is ``SegmentEditorMedSADLib/SegmentEditorEffect.py``."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "SegmentEditorMedSAD"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = ["Segmentations", "MedSAD"]
        self.parent.contributors = ["MedSAD developers"]
        self.parent.hidden = True
        self.parent.helpText = (
            "Adds the MedSAD effect to the Segment Editor: fills the selected segment with MedSAD's lesion mask "
            "for the whole volume or the current slice. Research software: not for clinical use."
        )
        self.parent.acknowledgementText = "Registration follows Slicer's scripted Segment Editor effect pattern."
        slicer.app.connect("startupCompleted()", self.registerEditorEffect)

    def registerEditorEffect(self):
        effect = slicer.qSlicerSegmentEditorScriptedEffect(None)
        source = os.path.join(os.path.dirname(__file__), "SegmentEditorMedSADLib", "SegmentEditorEffect.py")
        effect.setPythonSource(source.replace("\\", "/"))
        slicer.qSlicerSegmentEditorEffectFactory.instance().registerEffect(effect)
