"""``MedSADLogic``: check the input, run a backend, build and update the output nodes.

Every check happens before any node is created, and a failure while creating outputs removes
what was created: on error the scene keeps exactly the nodes it had.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import nodes
from .backends import LocalBackend, MedSADError, MedSADResult, ServerBackend

logger = logging.getLogger(__name__)


@dataclass
class OutputNodes:
    """The nodes a run produces."""

    segmentation: Any
    table: Any
    plot_series: Any
    plot_chart: Any


class MedSADLogic:
    """Qt-free logic over an explicit MRML scene (``slicer.mrmlScene`` inside Slicer)."""

    def __init__(self, scene: Any) -> None:
        if scene is None:
            raise MedSADError("no MRML scene given")
        self.scene = scene

    def check_volume(self, volume_node: Any) -> None:
        """Raise :class:`MedSADError` unless ``volume_node`` is a 3-D scalar volume."""
        if volume_node is None:
            raise MedSADError("no input volume selected")
        if not volume_node.IsA("vtkMRMLScalarVolumeNode") or volume_node.IsA("vtkMRMLLabelMapVolumeNode"):
            raise MedSADError(f"{volume_node.GetName()!r} is a {volume_node.GetClassName()}, not a scalar volume")
        image = volume_node.GetImageData()
        if image is None:
            raise MedSADError(f"{volume_node.GetName()!r} has no voxels")
        if image.GetNumberOfScalarComponents() != 1:
            raise MedSADError(f"{volume_node.GetName()!r} has {image.GetNumberOfScalarComponents()} components per voxel "
                              "(a 4-D / vector / colour volume); pick one scalar volume")
        dims = image.GetDimensions()
        if min(dims) < 2:
            raise MedSADError(f"{volume_node.GetName()!r} is 2-D (dimensions {tuple(dims)}); MedSAD needs a 3-D volume "
                              "with at least 2 slices (run 2-D images with `medsad infer`)")

    def run(self, volume_node: Any, backend: LocalBackend | ServerBackend, threshold: float | None = None,
            progress: Callable[[int, int], None] | None = None,
            cancel: Callable[[], bool] | None = None) -> MedSADResult:
        """Run ``volume_node`` through ``backend`` (slices along K). Creates no nodes.

        ``threshold`` (lesion map) overrides the model's calibrated one; None keeps it.

        Raises:
            MedSADError: bad input, a backend failure (checkpoint, server), or cancel.
        """
        self.check_volume(volume_node)
        if isinstance(backend, LocalBackend):
            result = backend.run(nodes.volume_array(volume_node), threshold, progress, cancel)
        elif isinstance(backend, ServerBackend):
            result = backend.run(volume_node, threshold, progress, cancel)
        else:
            raise MedSADError(f"unknown backend {backend!r}")
        expected = nodes.volume_array(volume_node).shape
        if result.mask.shape != expected:
            raise MedSADError(f"backend returned a mask of shape {result.mask.shape} for a volume of {expected}")
        logger.info("%s: volume score %.3f, worst slice %d (%s backend)", volume_node.GetName(), result.volume_score,
                    result.worst_slice, result.backend)
        return result

    def create_outputs(self, volume_node: Any, result: MedSADResult, segmentation_node: Any = None,
                       table_node: Any = None) -> OutputNodes:
        """Segmentation (segment ``Lesion`` in the volume's geometry), scores table and plot.

        Given nodes are reused (updated in place); new ones are named after the volume.
        """
        self.check_volume(volume_node)
        before = {self.scene.GetNthNode(i).GetID() for i in range(self.scene.GetNumberOfNodes())}
        try:
            name = volume_node.GetName()
            seg = nodes.set_segment(self.scene, volume_node, result.mask, segmentation_node, f"{name} MedSAD")
            table = nodes.scores_table(self.scene, result.slice_scores, result.abnormal(), table_node,
                                       f"{name} MedSAD scores")
            series, chart = nodes.scores_plot(self.scene, table)
        except Exception:
            for i in reversed(range(self.scene.GetNumberOfNodes())):
                node = self.scene.GetNthNode(i)
                if node is not None and node.GetID() not in before:
                    self.scene.RemoveNode(node)
            raise
        for key, value in (("MedSAD.volumeScore", result.volume_score), ("MedSAD.worstSlice", result.worst_slice),
                           ("MedSAD.volumeAbnormal", result.volume_abnormal), ("MedSAD.threshold", result.threshold),
                           ("MedSAD.sliceThreshold", result.slice_threshold), ("MedSAD.backend", result.backend)):
            seg.SetAttribute(key, str(value))
        return OutputNodes(seg, table, series, chart)

    def rethreshold(self, volume_node: Any, result: MedSADResult, threshold: float, outputs: OutputNodes) -> MedSADResult:
        """Apply a new lesion-map threshold without running the model again: with the local
        backend the mask, slice scores, flags and volume decision are re-decided (post-processing
        included); a server result keeps its mask. Updates ``result`` and the nodes."""
        if not 0.0 < threshold < 1.0:
            raise MedSADError(f"threshold {threshold} must lie strictly between 0 and 1")
        if result.redecide is not None:
            new = result.redecide(float(threshold))
            for name in ("mask", "slice_scores", "volume_score", "volume_abnormal", "info"):
                setattr(result, name, getattr(new, name))
            nodes.set_segment(self.scene, volume_node, result.mask, outputs.segmentation)
            nodes.update_scores(outputs.table, result.slice_scores, result.abnormal())
        result.threshold = float(threshold)
        outputs.segmentation.SetAttribute("MedSAD.threshold", str(result.threshold))
        outputs.segmentation.SetAttribute("MedSAD.volumeAbnormal", str(result.volume_abnormal))
        return result

    def worst_slice_ras(self, volume_node: Any, result: MedSADResult) -> tuple[float, float, float]:
        """RAS of the centre of the most anomalous slice (for ``JumpSlicesToLocation``)."""
        return nodes.slice_centre_ras(volume_node, result.worst_slice)

    def export_seg_nrrd(self, segmentation_node: Any, path: str) -> None:
        """Write the segmentation as ``.seg.nrrd`` with Slicer's own storage node."""
        if segmentation_node is None:
            raise MedSADError("no segmentation to export: run MedSAD first")
        nodes.write_segmentation(segmentation_node, path)
