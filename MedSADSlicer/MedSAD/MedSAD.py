"""MedSAD Slicer module: a thin Qt layer over the Qt-free ``MedSADLib``.

The widget reads its inputs from ``Resources/UI/MedSAD.ui``; its state lives in the scene's
MedSAD parameter node (``MedSADLib.parameters.MedSADParameters``: input volume, backend,
checkpoint, server URL, threshold, output segmentation and table), so it is saved with the scene
and restored on reload, as in Slicer's scripted-module template. Runs go through
``MedSADLib.MedSADLogic``; backends come from ``MedSADLib.make_backend`` and the settings and
install dialogs from ``MedSADLib.gui``, which the "MedSAD" Segment Editor effect shares.

Everything that can run without the Slicer application lives in ``MedSADLib`` and is tested
under pytest; this file and the ``.ui`` are checked statically there
(``tests/test_slicer_static.py``) and by ``MedSADTest`` inside Slicer.
"""

from __future__ import annotations

import logging
import os
import traceback

import qt
import slicer
import vtk
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

from MedSADLib import (
    BACKEND_LOCAL,
    BACKENDS,
    DEFAULT_SERVER_URL,
    CancelFlag,
    LocalBackend,
    MedSADError,
    MedSADLogic,
    MedSADParameters,
    ServerBackend,
    describe_decision,
    gui,
    make_backend,
)
from MedSADLib.logic import VOLUME_ATTRIBUTE

# --------------------------------------------------------------------------- module


class MedSAD(ScriptedLoadableModule):
    """Module metadata."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "MedSAD"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = []
        self.parent.contributors = ["MedSAD developers"]
        self.parent.helpText = (
            "Anomaly score for every slice of a volume and a lesion segmentation with MedSAD-CLIP, run on a "
            "local checkpoint or on a MONAI Label server running the MedSAD app. Research software: "
            "<b>not for clinical use</b>. See <a href='https://github.com/medsad/medsad'>the project page</a>."
        )
        self.parent.acknowledgementText = (
            "MedSAD builds on MONAI, MONAI Label and open_clip. The module layout follows 3D Slicer's "
            "scripted module template."
        )


# --------------------------------------------------------------------------- widget


class MedSADWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Inputs → Run → results (segmentation, table, plot, decision); state in the parameter node."""

    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameters = None  # MedSADParameters of the scene
        self._updatingGUI = False
        self._result = None  # the last run's in-memory result (probabilities: re-threshold without re-running)
        self._outputs = None
        self._resultVolume = None
        self._running = False
        self._cancel = CancelFlag()

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/MedSAD.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = MedSADLogic(slicer.mrmlScene)

        self.ui.inputVolumeSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onInputVolumeChanged)
        self.ui.backendComboBox.connect("currentIndexChanged(int)", self.updateParameterNodeFromGUI)
        self.ui.checkpointPathLineEdit.connect("currentPathChanged(QString)", self.updateParameterNodeFromGUI)
        self.ui.serverUrlLineEdit.connect("textChanged(QString)", self.updateParameterNodeFromGUI)
        self.ui.profileLineEdit.connect("editingFinished()", self.updateParameterNodeFromGUI)
        self.ui.outputSegmentationSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.updateParameterNodeFromGUI)
        self.ui.thresholdSliderWidget.connect("valueChanged(double)", self.onThresholdChanged)
        self.ui.calibratedThresholdCheckBox.connect("toggled(bool)", self.onCalibratedToggled)
        self.ui.minLesionSpinBox.connect("valueChanged(double)", self.onMinLesionChanged)
        self.ui.minLesionMeanSpinBox.connect("valueChanged(double)", self.onMinLesionMeanChanged)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancelButton)
        self.ui.goToWorstSliceButton.connect("clicked(bool)", self.onGoToWorstSliceButton)
        self.ui.exportSegButton.connect("clicked(bool)", self.onExportSegButton)
        self.ui.installDependenciesButton.connect("clicked(bool)", self.onInstallDependenciesButton)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.initializeParameterNode()

    def cleanup(self):
        self.removeObservers()

    def enter(self):
        self.initializeParameterNode()  # the Segment Editor effect may have changed the backend

    def exit(self):
        self.setParameterNode(None)

    def onSceneStartClose(self, caller, event):
        self.setParameterNode(None)
        self._forgetResult()

    def onSceneEndClose(self, caller, event):
        if self.parent.isEntered:
            self.initializeParameterNode()

    # ----------------------------------------------------------------- parameter node

    def initializeParameterNode(self):
        """The scene's MedSAD parameter node (created with the last session's backend choice);
        an input volume is picked when none is set."""
        parameters = gui.parameters(slicer.mrmlScene)
        if parameters.input_volume is None:
            volume = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if volume is not None and not volume.IsA("vtkMRMLLabelMapVolumeNode"):
                parameters.input_volume = volume
        self.setParameterNode(parameters)

    def setParameterNode(self, parameters):
        if self._parameters is not None:
            self.removeObserver(self._parameters.node, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromParameterNode)
        self._parameters = parameters
        if parameters is not None:
            self.addObserver(parameters.node, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromParameterNode)
        self.updateGUIFromParameterNode()

    def updateGUIFromParameterNode(self, caller=None, event=None):
        parameters = self._parameters
        if parameters is None or self._updatingGUI:
            return
        self._updatingGUI = True
        try:
            self.ui.inputVolumeSelector.setCurrentNode(parameters.input_volume)
            self.ui.backendComboBox.currentIndex = BACKENDS.index(parameters.backend)
            if self.ui.checkpointPathLineEdit.currentPath.strip() != parameters.checkpoint:
                self.ui.checkpointPathLineEdit.currentPath = parameters.checkpoint
            url = parameters.server_url
            if (self.ui.serverUrlLineEdit.text.strip() or DEFAULT_SERVER_URL) != url:  # not while the user types it
                self.ui.serverUrlLineEdit.text = "" if url == DEFAULT_SERVER_URL else url
            if self.ui.profileLineEdit.text.strip() != parameters.profile:
                self.ui.profileLineEdit.text = parameters.profile
            self.ui.outputSegmentationSelector.setCurrentNode(parameters.output_segmentation)
            self.ui.scoresTableView.setMRMLTableNode(parameters.output_table)
            threshold = parameters.threshold
            self.ui.calibratedThresholdCheckBox.checked = threshold is None
            if threshold is None and self._hasLiveResult():
                threshold = self._result.threshold
            if threshold is not None:
                self.ui.thresholdSliderWidget.value = threshold
            min_lesion = parameters.min_lesion_mm3  # None: calibrated (the spin box's special value)
            self.ui.minLesionSpinBox.value = self.ui.minLesionSpinBox.minimum if min_lesion is None else min_lesion
            min_mean = parameters.min_lesion_mean  # None: calibrated (the spin box's special value)
            self.ui.minLesionMeanSpinBox.value = self.ui.minLesionMeanSpinBox.minimum if min_mean is None else min_mean
            local = parameters.backend == BACKEND_LOCAL
            for widget in (self.ui.checkpointLabel, self.ui.checkpointPathLineEdit):
                widget.visible = local
            for widget in (self.ui.serverUrlLabel, self.ui.serverUrlLineEdit):
                widget.visible = not local
        finally:
            self._updatingGUI = False
        if not self._running:
            self._updateStatus()
        self.updateButtons()

    def updateParameterNodeFromGUI(self, *_):
        parameters = self._parameters
        if parameters is None or self._updatingGUI:
            return
        with parameters.modify():
            parameters.input_volume = self.ui.inputVolumeSelector.currentNode()
            parameters.backend = BACKENDS[max(0, self.ui.backendComboBox.currentIndex)]
            parameters.checkpoint = self.ui.checkpointPathLineEdit.currentPath
            parameters.server_url = self.ui.serverUrlLineEdit.text
            try:
                parameters.profile = self.ui.profileLineEdit.text
            except MedSADError as err:  # keep the last valid name; say why
                self.ui.statusLabel.text = str(err)
            parameters.output_segmentation = self.ui.outputSegmentationSelector.currentNode()
        gui.remember(parameters)

    def onInputVolumeChanged(self, volume):
        parameters = self._parameters
        if parameters is None or self._updatingGUI:
            return
        with parameters.modify():
            parameters.input_volume = volume
            # Don't overwrite another volume's results unless they are chosen again.
            for field in ("output_segmentation", "output_table"):
                node = getattr(parameters, field)
                if (
                    node is not None
                    and node.GetAttribute(VOLUME_ATTRIBUTE) is not None
                    and not self.logic.outputs_belong_to(node, volume)
                ):
                    setattr(parameters, field, None)

    # ----------------------------------------------------------------- state

    def _forgetResult(self):
        self._result = self._outputs = self._resultVolume = None

    def _hasLiveResult(self) -> bool:
        """An in-memory result whose volume and output nodes are still the module's."""
        parameters = self._parameters
        if self._result is None or self._outputs is None or parameters is None:
            return False
        nodes = (self._resultVolume, self._outputs.segmentation, self._outputs.table)
        return (
            all(node is not None and slicer.mrmlScene.IsNodePresent(node) for node in nodes)
            and parameters.output_segmentation is self._outputs.segmentation
            and parameters.output_table is self._outputs.table
        )

    def _resultsVolume(self):
        """The volume the module's output table was made from (the input volume if unknown)."""
        parameters = self._parameters
        table = parameters.output_table if parameters is not None else None
        volumeId = table.GetAttribute(VOLUME_ATTRIBUTE) if table is not None else None
        volume = slicer.mrmlScene.GetNodeByID(volumeId) if volumeId else None
        return volume if volume is not None else (parameters.input_volume if parameters is not None else None)

    def updateButtons(self, *_):
        parameters = self._parameters
        ready = parameters is not None and parameters.ready()
        self.ui.applyButton.enabled = ready and not self._running
        self.ui.cancelButton.enabled = self._running
        hasTable = parameters is not None and parameters.output_table is not None and self._resultsVolume() is not None
        self.ui.goToWorstSliceButton.enabled = hasTable and not self._running
        self.ui.exportSegButton.enabled = (
            parameters is not None and parameters.output_segmentation is not None and not self._running
        )

    def _updateStatus(self):
        parameters = self._parameters
        if self._hasLiveResult():
            self.ui.statusLabel.text = describe_decision(self._result)
        elif parameters is not None and parameters.output_segmentation is not None:
            self.ui.statusLabel.text = self.logic.stored_decision(parameters.output_segmentation)
        else:
            self.ui.statusLabel.text = ""

    # ----------------------------------------------------------------- run

    def _onProgress(self, done: int, total: int) -> None:
        self.ui.progressBar.maximum = max(1, total)
        self.ui.progressBar.value = done
        slicer.app.processEvents()

    def _setRunning(self, running: bool) -> None:
        self._running = running
        self._cancel = CancelFlag()
        if running:
            self.ui.progressBar.value = 0
            self.ui.statusLabel.text = "Running…"
        self.updateButtons()
        slicer.app.processEvents()

    def onCancelButton(self):
        self._cancel.request()
        self.ui.statusLabel.text = "Cancelling after the current batch…"

    def onApplyButton(self):
        parameters = self._parameters
        volume = parameters.input_volume
        try:
            if not gui.ensure_dependencies(parameters.backend):
                self.ui.statusLabel.text = "Not run: the backend's Python packages are not installed."
                return
            backend = make_backend(
                parameters.backend, parameters.checkpoint, parameters.server_url, profile=parameters.profile
            )
            self._setRunning(True)
            # threshold None: the model's calibrated operating point; the slider then re-decides the result
            result = self.logic.run(
                volume,
                backend,
                threshold=parameters.threshold,
                progress=self._onProgress,
                cancel=self._cancel,
                min_lesion_mm3=parameters.min_lesion_mm3,
                min_lesion_mean=parameters.min_lesion_mean,
            )
            table = parameters.output_table if self.logic.outputs_belong_to(parameters.output_table, volume) else None
            outputs = self.logic.create_outputs(
                volume, result, segmentation_node=parameters.output_segmentation, table_node=table
            )
        except MedSADError as err:
            cancelled = self._cancel()
            self._setRunning(False)
            self.ui.statusLabel.text = "Cancelled." if cancelled else f"Failed: {err}"
            if not cancelled:
                slicer.util.errorDisplay(str(err))
            return
        except Exception as err:  # noqa: BLE001 - a bug: show it with its traceback
            logging.exception("MedSAD failed")
            self._setRunning(False)
            self.ui.statusLabel.text = f"Failed: {err}"
            slicer.util.errorDisplay(f"MedSAD failed unexpectedly: {err}", detailedText=traceback.format_exc())
            return
        gui.remember(parameters)
        self._result, self._outputs, self._resultVolume = result, outputs, volume
        self._setRunning(False)
        with parameters.modify():  # the parameter node's observer then shows the result and its decision
            parameters.output_segmentation = outputs.segmentation
            parameters.output_table = outputs.table
        self.updateGUIFromParameterNode()
        slicer.modules.plots.logic().ShowChartInLayout(outputs.plot_chart)

    # ----------------------------------------------------------------- results

    def _rethreshold(self, threshold):
        """Re-decide the in-memory result at ``threshold`` (None: calibrated) and show it."""
        if self._running:
            return
        if not self._hasLiveResult():
            self._updateStatus()
            return
        try:
            self.logic.rethreshold(
                self._resultVolume,
                self._result,
                threshold,
                self._outputs,
                self._parameters.min_lesion_mm3,
                self._parameters.min_lesion_mean,
            )
        except MedSADError as err:
            slicer.util.errorDisplay(str(err))
            return
        self.updateGUIFromParameterNode()

    def onThresholdChanged(self, value: float) -> None:
        if self._updatingGUI or self._parameters is None:
            return
        self._parameters.threshold = value  # set by hand: overrides the calibrated threshold
        self._rethreshold(value)

    def onCalibratedToggled(self, checked: bool) -> None:
        if self._updatingGUI or self._parameters is None:
            return
        threshold = None if checked else self.ui.thresholdSliderWidget.value
        self._parameters.threshold = threshold
        self._rethreshold(threshold)

    def onMinLesionChanged(self, value: float) -> None:
        if self._updatingGUI or self._parameters is None:
            return
        self._parameters.min_lesion_mm3 = None if value < 0 else value  # below 0: "calibrated"
        self._rethreshold(self._parameters.threshold)

    def onMinLesionMeanChanged(self, value: float) -> None:
        if self._updatingGUI or self._parameters is None:
            return
        self._parameters.min_lesion_mean = None if value < 0 else value  # below 0: "calibrated"
        self._rethreshold(self._parameters.threshold)

    def onGoToWorstSliceButton(self):
        volume, table = self._resultsVolume(), self._parameters.output_table
        try:
            index = self.logic.worst_slice(table)
        except MedSADError as err:
            slicer.util.errorDisplay(str(err))
            return
        slicer.util.setSliceViewerLayers(background=volume)
        x, y, z = self.logic.worst_slice_ras(volume, index, self.logic.slice_axis(table))
        slicer.modules.markups.logic().JumpSlicesToLocation(x, y, z, True)

    def onExportSegButton(self):
        segmentation = self._parameters.output_segmentation
        if segmentation is None:
            return
        default = os.path.join(qt.QDir.homePath(), f"{segmentation.GetName()}.seg.nrrd")
        path = qt.QFileDialog.getSaveFileName(
            slicer.util.mainWindow(), "Export lesion segmentation", default, "Segmentation (*.seg.nrrd)"
        )
        if not path:
            return
        if not path.lower().endswith(".seg.nrrd"):
            path = (path[: -len(".nrrd")] if path.lower().endswith(".nrrd") else path) + ".seg.nrrd"
        try:
            self.logic.export_seg_nrrd(segmentation, path)
        except MedSADError as err:
            slicer.util.errorDisplay(str(err))
            return
        self.ui.statusLabel.text = f"Saved {path}"

    def onInstallDependenciesButton(self):
        kind = self._parameters.backend if self._parameters is not None else BACKEND_LOCAL
        try:
            if gui.ensure_dependencies(kind):
                self.ui.statusLabel.text = f"The Python packages of the {kind} backend are installed."
        except MedSADError as err:
            slicer.util.errorDisplay(str(err))


# --------------------------------------------------------------------------- self-test (inside Slicer)


class MedSADTest(ScriptedLoadableModuleTest):
    """Runs in Slicer (Reload and Test); CI checks MedSADLib with slicer-core instead."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        missing = gui.missing_modules(["torch", "medsad_monai"])
        if missing:
            self.delayDisplay(
                f"Skipping test_local_backend_on_synthetic_volume: {', '.join(missing)} not installed "
                "(use 'Install Python packages…' in the MedSAD module)"
            )
        else:
            self.setUp()
            self.test_local_backend_on_synthetic_volume()
        self.setUp()
        self.test_bad_input_keeps_scene()
        self.setUp()
        self.test_widget_follows_the_parameter_node()

    def test_local_backend_on_synthetic_volume(self):
        import tempfile

        import numpy as np

        from medsad_monai.checkpoint import save_checkpoint
        from medsad_monai.configs import load_preset
        from medsad_monai.networks import MedSADCLIP
        from MedSADLib.nodes import ijk_to_ras

        self.delayDisplay("MedSAD on a synthetic volume with an untrained tiny model")
        slices, rows, columns = 5, 40, 48
        voxels = np.zeros((slices, rows, columns), np.float32)
        voxels[:, 8:32, 10:38] = 100.0
        voxels[2, 15:22, 20:28] = 250.0  # a bright "lesion"
        angle = np.deg2rad(20.0)
        rotation = np.array(
            [[np.cos(angle), -np.sin(angle), 0.0], [np.sin(angle), np.cos(angle), 0.0], [0.0, 0.0, 1.0]]
        )
        ijkToRas = np.eye(4)
        ijkToRas[:3, :3] = rotation @ np.diag([0.8, 0.9, 3.0])  # anisotropic spacing, oblique directions
        ijkToRas[:3, 3] = (-20.0, 15.0, 7.5)
        volume = slicer.util.addVolumeFromArray(voxels, ijkToRAS=ijkToRas, name="MedSADTestVolume")

        with tempfile.TemporaryDirectory(prefix="MedSADTest_") as tmp:
            checkpoint = os.path.join(tmp, "tiny.pt")
            save_checkpoint(MedSADCLIP(load_preset("tiny", image_size=64)), checkpoint)
            logic = MedSADLogic(slicer.mrmlScene)
            result = logic.run(volume, LocalBackend(checkpoint, batch_size=8))
            outputs = logic.create_outputs(volume, result)

        self.assertEqual(len(result.slice_scores), slices)
        self.assertTrue(0 <= result.worst_slice < slices)
        self.assertEqual(result.source, "default")  # an uncalibrated checkpoint: the 0.5 fallback
        self.assertIn("not calibrated", describe_decision(result))
        self.assertEqual(outputs.table.GetNumberOfRows(), slices)
        volumeGeometry = slicer.vtkSegmentationConverter.SerializeImageGeometry(
            ijk_to_ras(volume), volume.GetImageData()
        )
        segmentationGeometry = outputs.segmentation.GetSegmentation().GetConversionParameter(
            slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName()
        )
        self.assertEqual(segmentationGeometry, volumeGeometry)
        segmentId = outputs.segmentation.GetSegmentation().GetSegmentIdBySegmentName("Lesion")
        self.assertTrue(segmentId)
        labelmap = slicer.util.arrayFromSegmentBinaryLabelmap(outputs.segmentation, segmentId, volume)
        self.assertEqual(labelmap.shape, voxels.shape)
        self.assertTrue(np.array_equal(labelmap > 0, result.mask > 0))
        rasToIjk = np.linalg.inv(slicer.util.arrayFromVTKMatrix(ijk_to_ras(volume)))
        k = (rasToIjk @ (*logic.worst_slice_ras(volume, result), 1.0))[2]
        self.assertAlmostEqual(k, result.worst_slice, places=3)
        self.assertEqual(logic.worst_slice(outputs.table), result.worst_slice)
        self.delayDisplay("Test passed")

    def test_bad_input_keeps_scene(self):
        self.delayDisplay("No input volume: a clear error and no new nodes")
        logic = MedSADLogic(slicer.mrmlScene)
        before = slicer.mrmlScene.GetNumberOfNodes()
        with self.assertRaises(MedSADError):
            logic.run(None, ServerBackend(DEFAULT_SERVER_URL))
        with self.assertRaises(MedSADError):
            make_backend(BACKEND_LOCAL, "", "")  # no checkpoint chosen
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), before)
        self.delayDisplay("Test passed")

    def test_widget_follows_the_parameter_node(self):
        """The widget shows the parameter node's state and writes its edits back into it."""
        import numpy as np

        self.delayDisplay("The module's state lives in its parameter node")
        settings = qt.QSettings()
        saved = {
            key: settings.value(key)
            for key in (gui.SETTINGS_BACKEND, gui.SETTINGS_CHECKPOINT, gui.SETTINGS_SERVER_URL, gui.SETTINGS_PROFILE)
        }
        try:
            volume = slicer.util.addVolumeFromArray(np.zeros((4, 8, 8), np.float32), name="MedSADTestParameters")
            slicer.util.selectModule("MedSAD")
            widget = slicer.util.getModuleWidget("MedSAD")
            parameters = MedSADParameters.find(slicer.mrmlScene)
            self.assertIsNotNone(parameters)
            with parameters.modify():
                parameters.input_volume = volume
                parameters.backend = "server"
                parameters.server_url = "http://127.0.0.1:8123"
                parameters.threshold = 0.3
                parameters.profile = "site_b"
            self.assertIs(widget.ui.inputVolumeSelector.currentNode(), volume)
            self.assertEqual(widget.ui.profileLineEdit.text, "site_b")
            widget.ui.profileLineEdit.text = "scanner-3T"
            widget.updateParameterNodeFromGUI()  # what editingFinished() calls
            self.assertEqual(parameters.profile, "scanner-3T")
            self.assertEqual(widget.ui.backendComboBox.currentIndex, BACKENDS.index("server"))
            self.assertEqual(widget.ui.serverUrlLineEdit.text, "http://127.0.0.1:8123")
            self.assertFalse(widget.ui.calibratedThresholdCheckBox.checked)
            self.assertAlmostEqual(widget.ui.thresholdSliderWidget.value, 0.3)
            widget.ui.calibratedThresholdCheckBox.checked = True
            self.assertIsNone(parameters.threshold)
            widget.ui.backendComboBox.currentIndex = BACKENDS.index(BACKEND_LOCAL)
            self.assertEqual(parameters.backend, BACKEND_LOCAL)
        finally:
            for key, value in saved.items():
                if value is None:
                    settings.remove(key)
                else:
                    settings.setValue(key, value)
        self.delayDisplay("Test passed")
