"""The "MedSAD" Segment Editor effect: fill the selected segment with MedSAD's lesion mask.

A thin Qt layer: the backend is the one chosen in the MedSAD module (its parameter node in the
scene, ``MedSADLib.parameters``; dependencies through ``MedSADLib.gui``), the run is
``MedSADLogic.run``, the voxel slice shown in the Red view is ``geometry.current_slice`` and the
mask is written by ``apply.write_mask`` — the effect's one write path, tested with slicer-core —
through this effect, so the editor's masking (editable area, editable intensity range,
overwrite of other segments) and undo apply.

Scope "Current slice" changes only the voxel slice shown at the centre of the Red slice view,
along whichever volume axis (I, J or K) the view is normal to; an oblique view is refused
(see ``geometry.py``).
"""

from __future__ import annotations

import os

import ctk
import qt
import slicer
from SegmentEditorEffects import AbstractScriptedSegmentEditorEffect

SCOPE_VOLUME = "WholeVolume"
SCOPE_SLICE = "CurrentSlice"
SCOPES = (SCOPE_VOLUME, SCOPE_SLICE)  # in the order of scopeComboBox's items


class SegmentEditorEffect(AbstractScriptedSegmentEditorEffect):
    """Fill the selected segment with MedSAD's lesion mask (whole volume or one slice)."""

    def __init__(self, scriptedEffect):
        scriptedEffect.name = "MedSAD"
        scriptedEffect.perSegment = True  # writes into the selected segment
        AbstractScriptedSegmentEditorEffect.__init__(self, scriptedEffect)
        # (key, asked (threshold, minimum lesion mm³), MedSADResult): re-use a run while nothing it depends on changed
        self._cache = None

    def clone(self):
        clonedEffect = slicer.qSlicerSegmentEditorScriptedEffect(None)
        clonedEffect.setPythonSource(__file__.replace("\\", "/"))
        return clonedEffect

    def icon(self):
        iconPath = os.path.join(os.path.dirname(__file__), "SegmentEditorEffect.png")
        return qt.QIcon(iconPath) if os.path.exists(iconPath) else qt.QIcon()

    def helpText(self):
        return (
            "<html>Fill the selected segment with the MedSAD-CLIP lesion mask of the source volume.<br>"
            "The model runs on the backend chosen in the <b>MedSAD</b> module (local checkpoint or MONAI Label "
            "server), at its calibrated threshold unless you set one. <b>Current slice</b> changes only the "
            "voxel slice shown in the Red view (the view must be parallel to the volume's slices). Masking "
            "settings and Undo apply. Research software: not for clinical use.</html>"
        )

    def setupOptionsFrame(self):
        self.scopeComboBox = qt.QComboBox()
        self.scopeComboBox.addItems(["Whole volume", "Current slice (Red view)"])
        self.scopeComboBox.toolTip = "Current slice: only the voxel slice at the centre of the Red view changes."
        self.scriptedEffect.addLabeledOptionsWidget("Scope:", self.scopeComboBox)

        self.backendComboBox = qt.QComboBox()
        self.backendComboBox.addItems(["Local checkpoint", "MONAI Label server"])
        self.backendComboBox.toolTip = "Shared with the MedSAD module, where the checkpoint and server URL are set."
        self.scriptedEffect.addLabeledOptionsWidget("Backend:", self.backendComboBox)
        self.backendLabel = qt.QLabel()
        self.backendLabel.wordWrap = True
        self.scriptedEffect.addLabeledOptionsWidget("", self.backendLabel)

        self.calibratedCheckBox = qt.QCheckBox("Calibrated")
        self.calibratedCheckBox.toolTip = "Use the model's calibrated lesion threshold (its operating point)."
        self.thresholdSlider = ctk.ctkSliderWidget()
        self.thresholdSlider.decimals = 2
        self.thresholdSlider.singleStep = 0.01
        self.thresholdSlider.minimum = 0.01
        self.thresholdSlider.maximum = 0.99
        self.thresholdSlider.value = 0.5
        self.thresholdSlider.toolTip = (
            "Lesion probability above which a voxel joins the segment (set by hand: overrides the calibrated one)."
        )
        thresholdRow = qt.QHBoxLayout()
        thresholdRow.addWidget(self.calibratedCheckBox)
        thresholdRow.addWidget(self.thresholdSlider)
        self.scriptedEffect.addLabeledOptionsWidget("Threshold:", thresholdRow)

        self.applyButton = qt.QPushButton("Apply")
        self.applyButton.objectName = self.__class__.__name__ + "Apply"
        self.applyButton.toolTip = "Run MedSAD and write its lesion mask into the selected segment."
        self.scriptedEffect.addOptionsWidget(self.applyButton)

        self.decisionLabel = qt.QLabel()
        self.decisionLabel.wordWrap = True
        self.scriptedEffect.addOptionsWidget(self.decisionLabel)

        self.scopeComboBox.connect("currentIndexChanged(int)", self.updateMRMLFromGUI)
        self.backendComboBox.connect("currentIndexChanged(int)", self.onBackendChanged)
        self.calibratedCheckBox.connect("toggled(bool)", self.updateMRMLFromGUI)
        self.thresholdSlider.connect("valueChanged(double)", self.onThresholdSliderChanged)
        self.applyButton.connect("clicked()", self.onApply)

    def createCursor(self, widget):
        return slicer.util.mainWindow().cursor

    def setMRMLDefaults(self):
        self.scriptedEffect.setParameterDefault("Scope", SCOPE_VOLUME)
        self.scriptedEffect.setParameterDefault("Threshold", 0.5)
        self.scriptedEffect.setParameterDefault("CalibratedThreshold", 1)

    def _threshold(self):
        """The lesion threshold to apply: None for the model's calibrated one."""
        if self.scriptedEffect.integerParameter("CalibratedThreshold"):
            return None
        return self.scriptedEffect.doubleParameter("Threshold")

    def updateGUIFromMRML(self):
        from MedSADLib import BACKEND_LOCAL, BACKENDS, gui

        params = gui.parameters()
        scope = self.scriptedEffect.parameter("Scope")
        calibrated = bool(self.scriptedEffect.integerParameter("CalibratedThreshold"))
        widgets = (self.scopeComboBox, self.thresholdSlider, self.calibratedCheckBox, self.backendComboBox)
        blocked = [widget.blockSignals(True) for widget in widgets]
        self.scopeComboBox.currentIndex = SCOPES.index(scope) if scope in SCOPES else 0
        self.thresholdSlider.value = self.scriptedEffect.doubleParameter("Threshold")
        self.calibratedCheckBox.checked = calibrated
        self.backendComboBox.currentIndex = BACKENDS.index(params.backend)
        for widget, wasBlocked in zip(widgets, blocked):
            widget.blockSignals(wasBlocked)
        where = (params.checkpoint or "no checkpoint chosen") if params.backend == BACKEND_LOCAL else params.server_url
        size = "calibrated" if params.min_lesion_mm3 is None else f"{params.min_lesion_mm3:g} mm³"
        mean = "calibrated" if params.min_lesion_mean is None else f"{params.min_lesion_mean:.2f}"
        self.backendLabel.text = (
            f"{where}; minimum lesion {size}, minimum lesion mean {mean} (all set in the MedSAD module)"
        )

    def updateMRMLFromGUI(self, *_):
        self.scriptedEffect.setParameter("Scope", SCOPES[max(0, self.scopeComboBox.currentIndex)])
        self.scriptedEffect.setParameter("Threshold", self.thresholdSlider.value)
        self.scriptedEffect.setParameter("CalibratedThreshold", 1 if self.calibratedCheckBox.checked else 0)

    def onThresholdSliderChanged(self, value):
        self.calibratedCheckBox.checked = False  # a threshold set by hand overrides the calibrated one
        self.updateMRMLFromGUI()

    def onBackendChanged(self, index):
        from MedSADLib import BACKENDS, gui

        params = gui.parameters()
        params.backend = BACKENDS[max(0, index)]
        gui.remember(params)
        self.updateGUIFromMRML()

    # ----------------------------------------------------------------- apply

    def _run(self, volumeNode, threshold):
        """MedSAD's result for the volume at ``threshold`` and the MedSAD module's minimum lesion
        size and mean, re-using the last run when nothing it depends on changed (a local result
        re-decides at any threshold, size and mean without running again)."""
        from MedSADLib import MedSADLogic, gui, make_backend

        params = gui.parameters()
        key = (
            volumeNode.GetID(),
            volumeNode.GetImageData().GetMTime(),
            params.backend,
            params.checkpoint,
            params.server_url,
            params.profile,
        )
        decision = (threshold, params.min_lesion_mm3, params.min_lesion_mean)
        if self._cache is not None and self._cache[0] == key:
            _, asked, result = self._cache
            if result.can_rethreshold or asked == decision:
                return result.at(*decision)
        if not gui.ensure_dependencies(params.backend):
            return None
        backend = make_backend(params.backend, params.checkpoint, params.server_url, profile=params.profile)
        with slicer.util.WaitCursor():
            result = MedSADLogic(slicer.mrmlScene).run(
                volumeNode,
                backend,
                threshold=threshold,
                min_lesion_mm3=params.min_lesion_mm3,
                min_lesion_mean=params.min_lesion_mean,
            )
        self._cache = (key, decision, result)
        return result

    def onApply(self):
        from MedSADLib import MedSADError, describe_decision
        from SegmentEditorMedSADLib.apply import EffectTarget, write_mask
        from SegmentEditorMedSADLib.geometry import AXIS_NAMES, current_slice

        volumeNode = self.scriptedEffect.parameterSetNode().GetSourceVolumeNode()
        try:
            if volumeNode is None:
                raise MedSADError("no source volume: select one in the Segment Editor")
            slice_ = None
            if SCOPES[max(0, self.scopeComboBox.currentIndex)] == SCOPE_SLICE:
                sliceWidget = slicer.app.layoutManager().sliceWidget("Red")
                slice_ = current_slice(sliceWidget.mrmlSliceNode() if sliceWidget is not None else None, volumeNode)
            result = self._run(volumeNode, self._threshold())
            if result is None:
                return  # the user declined to install the backend's packages
            write_mask(EffectTarget(self.scriptedEffect), volumeNode, result.mask, slice_)
        except MedSADError as err:
            slicer.util.errorDisplay(str(err))
            return
        where = "the whole volume" if slice_ is None else f"slice {AXIS_NAMES[slice_[0]]}={slice_[1]}"
        self.decisionLabel.text = describe_decision(result)
        slicer.util.showStatusMessage(
            f"MedSAD: lesion mask written to {where} (volume {'ABNORMAL' if result.volume_abnormal else 'normal'})",
            5000,
        )
