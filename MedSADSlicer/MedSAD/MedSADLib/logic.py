"""``MedSADLogic``: check the input, run a backend, build and update the output nodes.

Every check happens before any node is created, and a failure while creating outputs removes
what was created: on error the scene keeps exactly the nodes it had. A run checks the volume
once (:meth:`MedSADLogic.run`); the backend copies its voxels at most once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import nodes
from .results import MedSADError, axis_name, check_min_lesion_mean, check_min_lesion_mm3, check_threshold

if TYPE_CHECKING:  # annotations only
    from .results import Backend, CancelFn, MedSADResult, ProgressFn

logger = logging.getLogger(__name__)

#: attribute of the output segmentation and table: the ID of the volume they were made from
VOLUME_ATTRIBUTE = "MedSAD.volumeID"


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

    def check_volume(self, volume_node: Any) -> tuple[int, int, int]:
        """The (K, J, I) shape of ``volume_node``; raises :class:`MedSADError` unless it is a
        3-D scalar volume with voxels."""
        if volume_node is None:
            raise MedSADError("no input volume selected")
        if not volume_node.IsA("vtkMRMLScalarVolumeNode") or volume_node.IsA("vtkMRMLLabelMapVolumeNode"):
            raise MedSADError(f"{volume_node.GetName()!r} is a {volume_node.GetClassName()}, not a scalar volume")
        image = volume_node.GetImageData()
        if image is None:
            raise MedSADError(f"{volume_node.GetName()!r} has no voxels")
        if image.GetNumberOfScalarComponents() != 1:
            raise MedSADError(
                f"{volume_node.GetName()!r} has {image.GetNumberOfScalarComponents()} components per voxel "
                "(a 4-D / vector / colour volume); pick one scalar volume"
            )
        dims = image.GetDimensions()
        if min(dims) < 2:
            raise MedSADError(
                f"{volume_node.GetName()!r} is 2-D (dimensions {tuple(dims)}); MedSAD needs a 3-D volume "
                "with at least 2 slices (run 2-D images with `medsad infer`)"
            )
        return nodes.volume_shape(volume_node)

    def run(
        self,
        volume_node: Any,
        backend: Backend,
        threshold: float | None = None,
        progress: ProgressFn | None = None,
        cancel: CancelFn | None = None,
        min_lesion_mm3: float | None = None,
        min_lesion_mean: float | None = None,
    ) -> MedSADResult:
        """Run ``volume_node`` through ``backend`` (slice by slice; the result's ``slice_axis`` says
        along which voxel axis). Creates no nodes.

        Every backend is called the same way (:class:`~MedSADLib.results.Backend`).
        ``threshold`` (lesion map), ``min_lesion_mm3`` (connected lesions under it are removed;
        0 keeps every lesion) and ``min_lesion_mean`` (connected lesions whose mean probability
        is under it are removed; 0 keeps every lesion) override the model's calibrated ones;
        None keeps them.

        Raises:
            MedSADError: bad input, a backend failure (checkpoint, server), or cancel.
        """
        shape = self.check_volume(volume_node)
        check_threshold(threshold)
        min_lesion_mm3 = check_min_lesion_mm3(min_lesion_mm3)
        min_lesion_mean = check_min_lesion_mean(min_lesion_mean)
        if not callable(getattr(backend, "run", None)):
            raise MedSADError(f"{backend!r} is not a MedSAD backend")
        # only the overrides given: backends written before an override existed keep working
        given = {"min_lesion_mm3": min_lesion_mm3, "min_lesion_mean": min_lesion_mean}
        overrides = {k: v for k, v in given.items() if v is not None}
        result = backend.run(volume_node, threshold, progress, cancel, **overrides)
        if result.mask.shape != shape:
            raise MedSADError(f"backend returned a mask of shape {result.mask.shape} for a volume of {shape}")
        n_slices = shape[2 - result.slice_axis] if result.slice_axis in (0, 1, 2) else -1  # shape is (K, J, I)
        if len(result.slice_scores) != n_slices:
            raise MedSADError(
                f"backend returned {len(result.slice_scores)} slice scores along axis {result.slice_axis!r} "
                f"of a volume of shape {shape} (K, J, I)"
            )
        logger.info(
            "%s: volume score %.3f (%s), worst slice %s=%d (%s backend, %s)",
            volume_node.GetName(),
            result.volume_score,
            "abnormal" if result.volume_abnormal else "normal",
            result.axis_name,
            result.worst_slice,
            result.backend,
            result.source,
        )
        return result

    def create_outputs(
        self, volume_node: Any, result: MedSADResult, segmentation_node: Any = None, table_node: Any = None
    ) -> OutputNodes:
        """Segmentation (segment ``Lesion`` in the volume's geometry), scores table and plot,
        for a result of :meth:`run` on ``volume_node`` (not checked again: only that the mask
        fits the volume).

        Given nodes are reused (updated in place); new ones are named after the volume. The
        decision is stored as ``MedSAD.*`` attributes of the segmentation (saved with the scene).
        """
        self._check_fits(volume_node, result)
        before = {self.scene.GetNthNode(i).GetID() for i in range(self.scene.GetNumberOfNodes())}
        try:
            name = volume_node.GetName()
            seg = nodes.set_segment(self.scene, volume_node, result.mask, segmentation_node, f"{name} MedSAD")
            table = nodes.scores_table(
                self.scene,
                result.slice_scores,
                result.abnormal(),
                table_node,
                f"{name} MedSAD scores",
                axis=result.slice_axis,
            )
            series, chart = nodes.scores_plot(self.scene, table)
        except Exception:
            for i in reversed(range(self.scene.GetNumberOfNodes())):
                node = self.scene.GetNthNode(i)
                if node is not None and node.GetID() not in before:
                    self.scene.RemoveNode(node)
            raise
        for node in (seg, table):
            node.SetAttribute(VOLUME_ATTRIBUTE, volume_node.GetID())
        _store_decision(seg, result)
        return OutputNodes(seg, table, series, chart)

    def rethreshold(
        self,
        volume_node: Any,
        result: MedSADResult,
        threshold: float | None,
        outputs: OutputNodes,
        min_lesion_mm3: float | None = None,
        min_lesion_mean: float | None = None,
    ) -> MedSADResult:
        """Apply a new lesion-map threshold, minimum lesion size in mm³ and minimum lesion mean
        probability (None: the model's calibrated ones) without running the model again: with the
        local backend the mask, slice scores, flags and volume decision are re-decided
        (post-processing included) and the nodes updated. A result that cannot re-decide (server:
        a binary mask) is returned unchanged: run again for a new mask."""
        threshold = check_threshold(threshold)
        min_lesion_mm3 = check_min_lesion_mm3(min_lesion_mm3)
        min_lesion_mean = check_min_lesion_mean(min_lesion_mean)
        if threshold is None:
            threshold = result.calibrated_threshold
        if not result.can_rethreshold or threshold is None:
            return result
        self._check_fits(volume_node, result)
        new = result.redecide(float(threshold), min_lesion_mm3, min_lesion_mean)
        names = ("mask", "threshold", "slice_scores", "volume_score", "volume_abnormal", "info")
        names += ("min_lesion_mm3", "min_lesion_mean")
        for name in names:
            setattr(result, name, getattr(new, name))
        nodes.set_segment(self.scene, volume_node, result.mask, outputs.segmentation)
        nodes.update_scores(outputs.table, result.slice_scores, result.abnormal())
        _store_decision(outputs.segmentation, result)
        return result

    def worst_slice_ras(
        self, volume_node: Any, result: MedSADResult | int, axis: int | None = None
    ) -> tuple[float, float, float]:
        """RAS of the centre of the most anomalous slice (of a result, or a slice index along
        ``axis``, K when not given; for ``JumpSlicesToLocation``)."""
        if isinstance(result, int):
            index, axis = result, 2 if axis is None else axis
        else:
            index, axis = result.worst_slice, result.slice_axis
        return nodes.slice_centre_ras(volume_node, index, axis)

    def worst_slice(self, table_node: Any) -> int:
        """Index of the highest score in a scores table, along the table's slice axis
        (:meth:`slice_axis`); works after the scene is reloaded, when the in-memory result is gone."""
        scores = nodes.table_scores(table_node)
        if not scores:
            name = repr(table_node.GetName()) if table_node is not None else "no table"
            raise MedSADError(f"{name} has no scores: run MedSAD first")
        return max(range(len(scores)), key=scores.__getitem__)

    def slice_axis(self, table_node: Any) -> int:
        """The voxel axis (0 = I, 1 = J, 2 = K) a scores table's slices run along."""
        return nodes.table_slice_axis(table_node)

    def outputs_belong_to(self, node: Any, volume_node: Any) -> bool:
        """True when ``node`` (an output segmentation or table) was made from ``volume_node``."""
        return (
            node is not None and volume_node is not None and node.GetAttribute(VOLUME_ATTRIBUTE) == volume_node.GetID()
        )

    def stored_decision(self, segmentation_node: Any) -> str:
        """The decision stored with an output segmentation (after a scene reload the in-memory
        result is gone, the attributes are not); empty when it has none."""
        get = (lambda key: segmentation_node.GetAttribute(f"MedSAD.{key}")) if segmentation_node is not None else None
        if get is None or get("volumeScore") is None:
            return ""
        verdict = "ABNORMAL" if get("volumeAbnormal") == "True" else "normal"
        axis = axis_name(int(get("sliceAxis") or 2))
        return (
            f"Last result ({get('backend')} backend): volume {verdict}, score {float(get('volumeScore')):.3f} "
            f"(threshold {float(get('volumeThreshold') or 0.5):.3f}; operating point "
            f"{get('source') or 'default'}, lesion threshold {float(get('threshold')):.2f}); most anomalous "
            f"slice {axis}={get('worstSlice')}. Run again to re-threshold: the probabilities are not saved "
            "with the scene."
        )

    def export_seg_nrrd(self, segmentation_node: Any, path: str) -> None:
        """Write the segmentation as ``.seg.nrrd`` with Slicer's own storage node."""
        if segmentation_node is None:
            raise MedSADError("no segmentation to export: run MedSAD first")
        nodes.write_segmentation(segmentation_node, path)

    @staticmethod
    def _check_fits(volume_node: Any, result: MedSADResult) -> None:
        if volume_node is None or volume_node.GetImageData() is None:
            raise MedSADError("no input volume: the result has nothing to be placed on")
        shape = nodes.volume_shape(volume_node)
        if result.mask.shape != shape:
            raise MedSADError(f"the result ({result.mask.shape}) is not of {volume_node.GetName()!r} {shape}")


def _store_decision(segmentation_node: Any, result: MedSADResult) -> None:
    """The decision as attributes of the segmentation node (saved with the scene)."""
    for key, value in (
        ("volumeScore", result.volume_score),
        ("volumeThreshold", result.volume_threshold),
        ("volumeAbnormal", result.volume_abnormal),
        ("worstSlice", result.worst_slice),
        ("sliceAxis", result.slice_axis),
        ("threshold", result.threshold),
        ("sliceThreshold", result.slice_threshold),
        ("source", result.source),
        ("backend", result.backend),
    ):
        segmentation_node.SetAttribute(f"MedSAD.{key}", str(value))
