"""The "MedSAD" Segment Editor effect: fill the selected segment with MedSAD's lesion mask.

Runs the source volume through the backend chosen in the MedSAD module (same ``QSettings``
keys), then writes the mask with ``modifySelectedSegmentByLabelmap`` so the editor's masking
(editable area, editable intensity range, overwrite of other segments) and undo apply.

Scope "Current slice" changes only the volume slice (K index) shown in the Red slice view: the
Red view must show the volume's own slices (its normal along the volume's K axis, as after
"Rotate to volume plane"); the K index is that of the view's centre.
"""

from __future__ import annotations

import os

import ctk
import numpy as np
import qt
import slicer
import vtk
from SegmentEditorEffects import AbstractScriptedSegmentEditorEffect

SCOPE_VOLUME = "WholeVolume"
SCOPE_SLICE = "CurrentSlice"
SCOPES = (SCOPE_VOLUME, SCOPE_SLICE)  # in the order of scopeComboBox's items


def redSliceIndex(volumeNode) -> int:
    """K index of the volume slice shown at the centre of the Red slice view.

    Raises:
        MedSADError: no Red view, the view is oblique to the volume's slices, or outside the volume.
    """
    from MedSADLib import MedSADError

    sliceWidget = slicer.app.layoutManager().sliceWidget("Red")
    if sliceWidget is None:
        raise MedSADError("no Red slice view in this layout: choose a layout with the Red view or scope 'Whole volume'")
    sliceToRas = sliceWidget.mrmlSliceNode().GetSliceToRAS()
    centre = [sliceToRas.GetElement(i, 3) for i in range(3)]
    normal = [sliceToRas.GetElement(i, 2) for i in range(3)]
    transformNode = volumeNode.GetParentTransformNode()
    if transformNode is not None:  # world -> the volume's own coordinates
        fromWorld = transformNode.GetTransformFromWorld()
        normal = list(fromWorld.TransformVectorAtPoint(centre, normal))
        centre = list(fromWorld.TransformPoint(centre))
    ijkToRas = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(ijkToRas)
    kAxis = [ijkToRas.GetElement(i, 2) for i in range(3)]
    vtk.vtkMath.Normalize(kAxis)
    vtk.vtkMath.Normalize(normal)
    if abs(vtk.vtkMath.Dot(kAxis, normal)) < 0.99:
        raise MedSADError(f"the Red view is not parallel to the slices of {volumeNode.GetName()!r}: use the view's "
                          "'Rotate to volume plane' (or its axial/sagittal/coronal orientation that matches), "
                          "or scope 'Whole volume'")
    rasToIjk = vtk.vtkMatrix4x4()
    volumeNode.GetRASToIJKMatrix(rasToIjk)
    k = int(round(rasToIjk.MultiplyPoint((*centre, 1.0))[2]))
    slices = volumeNode.GetImageData().GetDimensions()[2]
    if not 0 <= k < slices:
        raise MedSADError(f"the Red view shows slice {k}, outside {volumeNode.GetName()!r} (0..{slices - 1})")
    return k


class SegmentEditorEffect(AbstractScriptedSegmentEditorEffect):
    """Fill the selected segment with MedSAD's lesion mask (whole volume or one slice)."""

    def __init__(self, scriptedEffect):
        scriptedEffect.name = "MedSAD"
        scriptedEffect.perSegment = True  # writes into the selected segment
        AbstractScriptedSegmentEditorEffect.__init__(self, scriptedEffect)
        self._cache = None  # (key, MedSADResult): re-use a run while volume and backend are unchanged

    def clone(self):
        clonedEffect = slicer.qSlicerSegmentEditorScriptedEffect(None)
        clonedEffect.setPythonSource(__file__.replace("\\", "/"))
        return clonedEffect

    def icon(self):
        iconPath = os.path.join(os.path.dirname(__file__), "SegmentEditorEffect.png")
        return qt.QIcon(iconPath) if os.path.exists(iconPath) else qt.QIcon()

    def helpText(self):
        return ("<html>Fill the selected segment with the MedSAD-CLIP lesion mask of the source volume.<br>"
                "The model runs on the backend chosen in the <b>MedSAD</b> module (local checkpoint or MONAI Label "
                "server). <b>Current slice</b> changes only the volume slice shown in the Red view. Masking "
                "settings and Undo apply. Research software: not for clinical use.</html>")

    def setupOptionsFrame(self):
        self.scopeComboBox = qt.QComboBox()
        self.scopeComboBox.addItems(["Whole volume", "Current slice"])
        self.scopeComboBox.toolTip = "Current slice: only the volume slice at the centre of the Red view changes."
        self.scriptedEffect.addLabeledOptionsWidget("Scope:", self.scopeComboBox)

        self.backendComboBox = qt.QComboBox()
        self.backendComboBox.addItems(["Local checkpoint", "MONAI Label server"])
        self.backendComboBox.toolTip = "Shared with the MedSAD module, where the checkpoint and server URL are set."
        self.scriptedEffect.addLabeledOptionsWidget("Backend:", self.backendComboBox)
        self.backendLabel = qt.QLabel()
        self.backendLabel.wordWrap = True
        self.scriptedEffect.addLabeledOptionsWidget("", self.backendLabel)

        self.thresholdSlider = ctk.ctkSliderWidget()
        self.thresholdSlider.decimals = 2
        self.thresholdSlider.singleStep = 0.01
        self.thresholdSlider.minimum = 0.01
        self.thresholdSlider.maximum = 0.99
        self.thresholdSlider.value = 0.5
        self.thresholdSlider.toolTip = "Lesion probability above which a voxel joins the segment."
        self.scriptedEffect.addLabeledOptionsWidget("Threshold:", self.thresholdSlider)

        self.applyButton = qt.QPushButton("Apply")
        self.applyButton.objectName = self.__class__.__name__ + "Apply"
        self.applyButton.toolTip = "Run MedSAD and write its lesion mask into the selected segment."
        self.scriptedEffect.addOptionsWidget(self.applyButton)

        self.scopeComboBox.connect("currentIndexChanged(int)", self.updateMRMLFromGUI)
        self.backendComboBox.connect("currentIndexChanged(int)", self.onBackendChanged)
        self.thresholdSlider.connect("valueChanged(double)", self.updateMRMLFromGUI)
        self.applyButton.connect("clicked()", self.onApply)

    def createCursor(self, widget):
        return slicer.util.mainWindow().cursor

    def setMRMLDefaults(self):
        self.scriptedEffect.setParameterDefault("Scope", SCOPE_VOLUME)
        self.scriptedEffect.setParameterDefault("Threshold", 0.5)

    def updateGUIFromMRML(self):
        import MedSAD

        kind, checkpoint, url = MedSAD.readBackendSettings()
        scope = self.scriptedEffect.parameter("Scope")
        widgets = (self.scopeComboBox, self.thresholdSlider, self.backendComboBox)
        blocked = [widget.blockSignals(True) for widget in widgets]
        self.scopeComboBox.currentIndex = SCOPES.index(scope) if scope in SCOPES else 0
        self.thresholdSlider.value = self.scriptedEffect.doubleParameter("Threshold")
        self.backendComboBox.currentIndex = MedSAD.BACKENDS.index(kind)
        for widget, wasBlocked in zip(widgets, blocked):
            widget.blockSignals(wasBlocked)
        where = (checkpoint or "no checkpoint chosen") if kind == MedSAD.BACKEND_LOCAL else url
        self.backendLabel.text = f"{where} (set in the MedSAD module)"

    def updateMRMLFromGUI(self, *_):
        self.scriptedEffect.setParameter("Scope", SCOPES[max(0, self.scopeComboBox.currentIndex)])
        self.scriptedEffect.setParameter("Threshold", self.thresholdSlider.value)

    def onBackendChanged(self, index):
        import MedSAD

        _, checkpoint, url = MedSAD.readBackendSettings()
        MedSAD.writeBackendSettings(MedSAD.BACKENDS[max(0, index)], checkpoint, url)
        self.updateGUIFromMRML()

    # ----------------------------------------------------------------- apply

    def _run(self, volumeNode, threshold):
        """MedSAD's result for the volume, re-using the last run when nothing it depends on changed."""
        import MedSAD
        from MedSADLib import MedSADLogic

        kind, checkpoint, url = MedSAD.readBackendSettings()
        key = (volumeNode.GetID(), volumeNode.GetImageData().GetMTime(), kind, checkpoint, url)
        if self._cache is not None and self._cache[0] == key:
            result = self._cache[1]
            if result.redecide is not None or abs(result.threshold - threshold) < 1e-9:
                return result
        if not MedSAD.ensureDependencies(kind):
            return None
        backend = MedSAD.makeBackend(kind, checkpoint, url)
        with slicer.util.WaitCursor():
            result = MedSADLogic(slicer.mrmlScene).run(volumeNode, backend, threshold=threshold)
        self._cache = (key, result)
        return result

    def _toEditorGeometry(self, volumeNode, labelmap):
        """Resample a labelmap in the volume's geometry onto the editor's modifier geometry."""
        segmentationNode = self.scriptedEffect.parameterSetNode().GetSegmentationNode()
        volumeToSegmentation = None  # both in the same coordinate system
        if volumeNode.GetParentTransformNode() is not segmentationNode.GetParentTransformNode():
            volumeToSegmentation = vtk.vtkGeneralTransform()
            slicer.vtkMRMLTransformNode.GetTransformBetweenNodes(
                volumeNode.GetParentTransformNode(), segmentationNode.GetParentTransformNode(), volumeToSegmentation)
        resampled = slicer.vtkOrientedImageData()
        slicer.vtkOrientedImageDataResample.ResampleOrientedImageToReferenceOrientedImage(
            labelmap, self.scriptedEffect.defaultModifierLabelmap(), resampled, False, False, volumeToSegmentation)
        return resampled

    def onApply(self):
        from MedSADLib import MedSADError
        from SegmentEditorMedSADLib.apply import build_modifier_labelmap

        volumeNode = self.scriptedEffect.parameterSetNode().GetSourceVolumeNode()
        threshold = self.thresholdSlider.value
        try:
            if volumeNode is None:
                raise MedSADError("no source volume: select one in the Segment Editor")
            sliceIndex = redSliceIndex(volumeNode) if SCOPES[self.scopeComboBox.currentIndex] == SCOPE_SLICE else None
            result = self._run(volumeNode, threshold)
            if result is None:
                return  # the user declined to install the backend's packages
            mask = result.mask_at(threshold)
            modifier = self._toEditorGeometry(volumeNode, build_modifier_labelmap(volumeNode, mask, sliceIndex))
            if sliceIndex is not None:
                wholeSlice = build_modifier_labelmap(volumeNode, np.ones_like(mask), sliceIndex)
                sliceArea = self._toEditorGeometry(volumeNode, wholeSlice)
        except MedSADError as err:
            slicer.util.errorDisplay(str(err))
            return

        self.scriptedEffect.saveStateForUndo()
        modes = slicer.qSlicerSegmentEditorAbstractEffect
        if sliceIndex is None:
            self.scriptedEffect.modifySelectedSegmentByLabelmap(modifier, modes.ModificationModeSet)
        else:
            # "Set" within one slice: clear the segment on that slice, then add the mask there. (A "Set"
            # with the whole-volume modifier would also clear every other slice.)
            self.scriptedEffect.modifySelectedSegmentByLabelmap(sliceArea, modes.ModificationModeRemove)
            self.scriptedEffect.modifySelectedSegmentByLabelmap(modifier, modes.ModificationModeAdd)
        where = "the whole volume" if sliceIndex is None else f"slice K={sliceIndex}"
        slicer.util.showStatusMessage(f"MedSAD: lesion mask applied to {where} (volume score {result.volume_score:.3f})",
                                      5000)
