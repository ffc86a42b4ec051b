"""MedSAD Slicer module: a thin Qt layer over the Qt-free ``MedSADLib``.

The widget reads its inputs from ``Resources/UI/MedSAD.ui``, calls ``MedSADLib.MedSADLogic``
and shows the result (segment "Lesion", per-slice score table and plot). Everything that can run
without the Slicer application lives in ``MedSADLib`` and is tested under pytest; this file and the
``.ui`` are checked statically there (``tests/test_slicer_static.py``) and by ``MedSADTest`` inside
Slicer.

Module-level helpers (settings, dependency install, backend cache) are shared with the
"MedSAD" Segment Editor effect, which imports this module.
"""

from __future__ import annotations

import importlib
import logging
import os
import site
import sys
import traceback

import qt
import slicer
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

from MedSADLib import LocalBackend, MedSADError, MedSADLogic, ServerBackend

SETTINGS_BACKEND = "MedSAD/backend"
SETTINGS_CHECKPOINT = "MedSAD/checkpoint"
SETTINGS_SERVER_URL = "MedSAD/serverUrl"
BACKEND_LOCAL = "local"
BACKEND_SERVER = "server"
BACKENDS = (BACKEND_LOCAL, BACKEND_SERVER)  # in the order of backendComboBox's items
DEFAULT_SERVER_URL = "http://127.0.0.1:8000"

# import name -> pip requirement, for the local backend (medsad_monai is installed from a clone)
LOCAL_PACKAGES = {"torch": "torch", "torchvision": "torchvision", "monai": "monai", "open_clip": "open_clip_torch",
                  "nibabel": "nibabel", "nrrd": "pynrrd"}
# monailabel's declared dependencies pull a CUDA build of sam2; the client needs only requests.
SERVER_REQUIREMENT = "monailabel==0.8.5 --no-deps"

_backendCache: dict[tuple, LocalBackend] = {}


# --------------------------------------------------------------------------- shared helpers

def readBackendSettings() -> tuple[str, str, str]:
    """(backend kind, checkpoint path, server URL) as last chosen in the MedSAD module."""
    settings = qt.QSettings()
    kind = str(settings.value(SETTINGS_BACKEND, BACKEND_LOCAL))
    checkpoint = str(settings.value(SETTINGS_CHECKPOINT, "") or "")
    url = str(settings.value(SETTINGS_SERVER_URL, "") or "") or DEFAULT_SERVER_URL
    return (kind if kind in BACKENDS else BACKEND_LOCAL), checkpoint, url


def writeBackendSettings(kind: str, checkpoint: str, url: str) -> None:
    settings = qt.QSettings()
    settings.setValue(SETTINGS_BACKEND, kind)
    settings.setValue(SETTINGS_CHECKPOINT, checkpoint)
    settings.setValue(SETTINGS_SERVER_URL, url)


def makeBackend(kind: str, checkpoint: str, url: str) -> LocalBackend | ServerBackend:
    """A backend for the chosen settings. A local backend is kept per checkpoint file (and its
    modification time), so the model loads once for the module and the Segment Editor effect."""
    if kind == BACKEND_SERVER:
        return ServerBackend(url or DEFAULT_SERVER_URL)
    if not checkpoint:
        raise MedSADError("no checkpoint chosen: select a MedSAD checkpoint (.pt from 'medsad train') "
                          "in the MedSAD module, or switch to the MONAI Label server backend")
    if not os.path.isfile(checkpoint):
        raise MedSADError(f"checkpoint {checkpoint!r} not found: select an existing .pt file in the MedSAD module")
    key = (os.path.abspath(checkpoint), os.path.getmtime(checkpoint))
    if key not in _backendCache:
        _backendCache.clear()  # one model in memory at a time
        _backendCache[key] = LocalBackend(checkpoint, batch_size=8)
    return _backendCache[key]


def _missingModules(names) -> list[str]:
    importlib.invalidate_caches()
    missing = []
    for name in names:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - a broken install counts as missing
            missing.append(name)
    return missing


def _activateNewSitePackages() -> None:
    """Process .pth files written by pip since start-up (editable installs use them)."""
    for path in list(sys.path):
        if path.endswith("site-packages") and os.path.isdir(path):
            site.addsitedir(path)
    importlib.invalidate_caches()


def _installLocalPackages() -> bool:
    missing = _missingModules(LOCAL_PACKAGES)
    if missing:
        requirements = " ".join(LOCAL_PACKAGES[name] for name in missing)
        if not slicer.util.confirmOkCancelDisplay(
                f"The local backend needs Python packages that are not installed in Slicer: {', '.join(missing)}.\n\n"
                f"Install them now with pip ({requirements})? PyTorch is a download of several GB; if you use "
                "Slicer's PyTorch extension, install PyTorch with it first so that the build matches your GPU.",
                "MedSAD: install Python packages"):
            return False
        with slicer.util.WaitCursor():
            slicer.util.pip_install(requirements)
    if _missingModules(["medsad_monai"]):
        if not slicer.util.confirmOkCancelDisplay(
                "The local backend needs the MedSAD model package (medsad_monai), installed from a clone of the "
                "MedSAD repository (https://github.com/medsad/medsad).\n\nChoose that folder (the one with "
                "pyproject.toml) to install it with 'pip install -e'?", "MedSAD: install the model package"):
            return False
        repo = qt.QFileDialog.getExistingDirectory(slicer.util.mainWindow(), "MedSAD repository folder")
        if not repo:
            return False
        if not os.path.isfile(os.path.join(repo, "pyproject.toml")):
            raise MedSADError(f"{repo!r} has no pyproject.toml: choose the root folder of the MedSAD repository")
        with slicer.util.WaitCursor():
            slicer.util.pip_install(["-e", repo])
        _activateNewSitePackages()
    still = _missingModules(list(LOCAL_PACKAGES) + ["medsad_monai"])
    if still:
        raise MedSADError(f"still not importable after installing: {', '.join(still)}; restart Slicer and try again")
    return True


def _installServerPackages() -> bool:
    if not slicer.util.confirmOkCancelDisplay(
            "The MONAI Label server backend needs the 'monailabel' client, which is not installed in Slicer.\n\n"
            f"Install it now with pip ({SERVER_REQUIREMENT})?", "MedSAD: install Python packages"):
        return False
    with slicer.util.WaitCursor():
        slicer.util.pip_install(SERVER_REQUIREMENT)
    if _missingModules(["monailabel.client"]):
        raise MedSADError("monailabel.client is still not importable after installing; restart Slicer and try again")
    return True


def ensureDependencies(kind: str) -> bool:
    """True when the backend's Python packages import; else offer to install them (False: declined)."""
    if kind == BACKEND_SERVER:
        return not _missingModules(["monailabel.client"]) or _installServerPackages()
    return not _missingModules(["torch", "medsad_monai"]) or _installLocalPackages()


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
    """Inputs → Run → results (segmentation, table, plot); all computation in ``MedSADLogic``."""

    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._result = None
        self._outputs = None
        self._resultVolume = None
        self._running = False
        self._cancelRequested = False

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/MedSAD.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = MedSADLogic(slicer.mrmlScene)

        self.ui.backendComboBox.connect("currentIndexChanged(int)", self.onBackendChanged)
        self.ui.checkpointPathLineEdit.connect("currentPathChanged(QString)", self.onSettingsEdited)
        self.ui.serverUrlLineEdit.connect("textChanged(QString)", self.onSettingsEdited)
        self.ui.inputVolumeSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onInputVolumeChanged)
        self.ui.thresholdSliderWidget.connect("valueChanged(double)", self.onThresholdChanged)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancelButton)
        self.ui.goToWorstSliceButton.connect("clicked(bool)", self.onGoToWorstSliceButton)
        self.ui.exportSegButton.connect("clicked(bool)", self.onExportSegButton)
        self.ui.installDependenciesButton.connect("clicked(bool)", self.onInstallDependenciesButton)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self._loadSettings()

    def enter(self):
        self._loadSettings()  # the Segment Editor effect may have changed the backend

    def cleanup(self):
        self.removeObservers()

    def _loadSettings(self) -> None:
        kind, checkpoint, url = readBackendSettings()
        widgets = (self.ui.backendComboBox, self.ui.checkpointPathLineEdit, self.ui.serverUrlLineEdit)
        blocked = [widget.blockSignals(True) for widget in widgets]
        self.ui.backendComboBox.currentIndex = BACKENDS.index(kind)
        self.ui.checkpointPathLineEdit.currentPath = checkpoint
        self.ui.serverUrlLineEdit.text = "" if url == DEFAULT_SERVER_URL else url
        for widget, wasBlocked in zip(widgets, blocked):
            widget.blockSignals(wasBlocked)
        self.onBackendChanged()

    # ----------------------------------------------------------------- state

    def _backendChoice(self) -> tuple[str, str, str]:
        kind = BACKENDS[max(0, self.ui.backendComboBox.currentIndex)]
        url = self.ui.serverUrlLineEdit.text.strip() or DEFAULT_SERVER_URL
        return kind, self.ui.checkpointPathLineEdit.currentPath.strip(), url

    def _hasLiveResult(self) -> bool:
        """A result whose volume and output nodes are still in the scene."""
        if self._result is None or self._outputs is None:
            return False
        nodes = (self._resultVolume, self._outputs.segmentation, self._outputs.table)
        return all(node is not None and slicer.mrmlScene.IsNodePresent(node) for node in nodes)

    def updateButtons(self, *_):
        kind, checkpoint, _url = self._backendChoice()
        ready = self.ui.inputVolumeSelector.currentNode() is not None and (kind == BACKEND_SERVER or bool(checkpoint))
        self.ui.applyButton.enabled = ready and not self._running
        self.ui.cancelButton.enabled = self._running
        live = self._hasLiveResult() and not self._running
        self.ui.goToWorstSliceButton.enabled = live
        self.ui.exportSegButton.enabled = live

    def onInputVolumeChanged(self, volume) -> None:
        # Don't overwrite the last result's segmentation with another volume's unless chosen again.
        if (self._outputs is not None and volume is not self._resultVolume
                and self.ui.outputSegmentationSelector.currentNode() is self._outputs.segmentation):
            self.ui.outputSegmentationSelector.setCurrentNode(None)
        self.updateButtons()

    def onBackendChanged(self, *_):
        local = self._backendChoice()[0] == BACKEND_LOCAL
        for widget in (self.ui.checkpointLabel, self.ui.checkpointPathLineEdit):
            widget.visible = local
        for widget in (self.ui.serverUrlLabel, self.ui.serverUrlLineEdit):
            widget.visible = not local
        self.onSettingsEdited()

    def onSettingsEdited(self, *_):
        writeBackendSettings(*self._backendChoice())
        self.updateButtons()

    def onSceneStartClose(self, caller, event):
        self._result = self._outputs = self._resultVolume = None
        self.ui.scoresTableView.setMRMLTableNode(None)
        self.ui.statusLabel.text = ""
        self.updateButtons()

    # ----------------------------------------------------------------- run

    def _onProgress(self, done: int, total: int) -> None:
        self.ui.progressBar.maximum = max(1, total)
        self.ui.progressBar.value = done
        slicer.app.processEvents()

    def _setRunning(self, running: bool) -> None:
        self._running = running
        self._cancelRequested = False
        if running:
            self.ui.progressBar.value = 0
            self.ui.statusLabel.text = "Running…"
        self.updateButtons()
        slicer.app.processEvents()

    def onCancelButton(self):
        self._cancelRequested = True
        self.ui.statusLabel.text = "Cancelling after the current batch…"

    def onApplyButton(self):
        volume = self.ui.inputVolumeSelector.currentNode()
        kind, checkpoint, url = self._backendChoice()
        writeBackendSettings(kind, checkpoint, url)
        try:
            self.logic.check_volume(volume)
            if not ensureDependencies(kind):
                self.ui.statusLabel.text = "Not run: the backend's Python packages are not installed."
                return
            backend = makeBackend(kind, checkpoint, url)
            self._setRunning(True)
            # the model's calibrated thresholds; the slider then re-thresholds the result
            result = self.logic.run(volume, backend, threshold=None,
                                    progress=self._onProgress, cancel=lambda: self._cancelRequested)
            reuse = self._outputs if self._hasLiveResult() and self._resultVolume is volume else None
            outputs = self.logic.create_outputs(volume, result,
                                                segmentation_node=self.ui.outputSegmentationSelector.currentNode(),
                                                table_node=reuse.table if reuse else None)
        except MedSADError as err:
            cancelled = self._cancelRequested
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
        self._setRunning(False)
        self._showResult(volume, result, outputs)

    def _showResult(self, volume, result, outputs) -> None:
        self._result, self._outputs, self._resultVolume = result, outputs, volume
        self.ui.outputSegmentationSelector.setCurrentNode(outputs.segmentation)
        self.ui.scoresTableView.setMRMLTableNode(outputs.table)
        slicer.modules.plots.logic().ShowChartInLayout(outputs.plot_chart)
        if abs(self.ui.thresholdSliderWidget.value - result.threshold) > 1e-6:
            wasBlocked = self.ui.thresholdSliderWidget.blockSignals(True)
            self.ui.thresholdSliderWidget.value = result.threshold
            self.ui.thresholdSliderWidget.blockSignals(wasBlocked)
        self._updateStatus()
        self.updateButtons()

    def _updateStatus(self) -> None:
        result = self._result
        abnormal = sum(result.abnormal())
        verdict = "ABNORMAL" if result.volume_abnormal else "normal"
        source = (result.info.get("operating_point") or {}).get("source", "default")
        text = (f"Volume {verdict} (score {result.volume_score:.3f}, threshold {result.volume_threshold:.3f}); "
                f"most anomalous slice K={result.worst_slice}; {abnormal} of {len(result.slice_scores)} slices "
                f"at or above {result.slice_threshold:.3f}; lesion threshold {result.threshold:.2f} "
                f"({'calibrated' if source != 'default' else 'not calibrated: 0.5'}).")
        if result.probability is None:
            text += " The server's mask is fixed: run again to segment at another threshold."
        self.ui.statusLabel.text = text

    # ----------------------------------------------------------------- results

    def onThresholdChanged(self, value: float) -> None:
        if self._running or not self._hasLiveResult():
            return
        try:
            self.logic.rethreshold(self._resultVolume, self._result, value, self._outputs)
        except MedSADError as err:
            slicer.util.errorDisplay(str(err))
            return
        self._updateStatus()

    def onGoToWorstSliceButton(self):
        if not self._hasLiveResult():
            return
        slicer.util.setSliceViewerLayers(background=self._resultVolume)
        x, y, z = self.logic.worst_slice_ras(self._resultVolume, self._result)
        slicer.modules.markups.logic().JumpSlicesToLocation(x, y, z, True)

    def onExportSegButton(self):
        if not self._hasLiveResult():
            return
        segmentation = self._outputs.segmentation
        default = os.path.join(qt.QDir.homePath(), f"{segmentation.GetName()}.seg.nrrd")
        path = qt.QFileDialog.getSaveFileName(slicer.util.mainWindow(), "Export lesion segmentation", default,
                                              "Segmentation (*.seg.nrrd)")
        if not path:
            return
        if not path.lower().endswith(".seg.nrrd"):
            path = (path[:-len(".nrrd")] if path.lower().endswith(".nrrd") else path) + ".seg.nrrd"
        try:
            self.logic.export_seg_nrrd(segmentation, path)
        except MedSADError as err:
            slicer.util.errorDisplay(str(err))
            return
        self.ui.statusLabel.text = f"Saved {path}"

    def onInstallDependenciesButton(self):
        kind = self._backendChoice()[0]
        try:
            if ensureDependencies(kind):
                self.ui.statusLabel.text = f"The Python packages of the {kind} backend are installed."
        except MedSADError as err:
            slicer.util.errorDisplay(str(err))


# --------------------------------------------------------------------------- self-test (inside Slicer)

class MedSADTest(ScriptedLoadableModuleTest):
    """Runs in Slicer (Reload and Test); CI checks MedSADLib with slicer-core instead."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        missing = _missingModules(["torch", "medsad_monai"])
        if missing:
            self.delayDisplay(f"Skipping test_local_backend_on_synthetic_volume: {', '.join(missing)} not installed "
                              "(use 'Install Python packages…' in the MedSAD module)")
        else:
            self.setUp()
            self.test_local_backend_on_synthetic_volume()
        self.setUp()
        self.test_bad_input_keeps_scene()

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
        rotation = np.array([[np.cos(angle), -np.sin(angle), 0.0], [np.sin(angle), np.cos(angle), 0.0], [0.0, 0.0, 1.0]])
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
        self.assertEqual(outputs.table.GetNumberOfRows(), slices)
        volumeGeometry = slicer.vtkSegmentationConverter.SerializeImageGeometry(ijk_to_ras(volume), volume.GetImageData())
        segmentationGeometry = outputs.segmentation.GetSegmentation().GetConversionParameter(
            slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName())
        self.assertEqual(segmentationGeometry, volumeGeometry)
        segmentId = outputs.segmentation.GetSegmentation().GetSegmentIdBySegmentName("Lesion")
        self.assertTrue(segmentId)
        labelmap = slicer.util.arrayFromSegmentBinaryLabelmap(outputs.segmentation, segmentId, volume)
        self.assertEqual(labelmap.shape, voxels.shape)
        self.assertTrue(np.array_equal(labelmap > 0, result.mask > 0))
        rasToIjk = np.linalg.inv(slicer.util.arrayFromVTKMatrix(ijk_to_ras(volume)))
        k = (rasToIjk @ (*logic.worst_slice_ras(volume, result), 1.0))[2]
        self.assertAlmostEqual(k, result.worst_slice, places=3)
        self.delayDisplay("Test passed")

    def test_bad_input_keeps_scene(self):
        self.delayDisplay("No input volume: a clear error and no new nodes")
        logic = MedSADLogic(slicer.mrmlScene)
        before = slicer.mrmlScene.GetNumberOfNodes()
        with self.assertRaises(MedSADError):
            logic.run(None, ServerBackend(DEFAULT_SERVER_URL))
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), before)
        self.delayDisplay("Test passed")
