"""MRML helpers: volume arrays and geometry, the Lesion segment, the scores table and plot,
and file I/O with Slicer's own storage nodes (no ``slicer.app`` needed)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import slicer
import vtk
from vtk.util import numpy_support

from .results import MedSADError, axis_name

SEGMENT_NAME = "Lesion"
SEGMENT_COLOR = (0.9, 0.15, 0.1)
TABLE_COLUMNS = ("slice", "score", "abnormal")
#: attribute of a scores table: the voxel axis (0, 1, 2 for I, J, K) its slices run along
SLICE_AXIS_ATTRIBUTE = "MedSAD.sliceAxis"


def ijk_to_ras(volume_node: Any) -> vtk.vtkMatrix4x4:
    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(matrix)
    return matrix


def ijk_to_ras_array(volume_node: Any) -> np.ndarray:
    """The volume's IJK-to-RAS matrix as a 4×4 numpy array (the affine ``medsad_monai`` reads)."""
    matrix = ijk_to_ras(volume_node)
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)], dtype=np.float64)


def volume_array(volume_node: Any) -> np.ndarray:
    """The voxels as (K, J, I), like ``slicer.util.arrayFromVolume``: a view, not a copy."""
    return np.asarray(slicer.util.arrayFromVolume(volume_node))


def volume_shape(volume_node: Any) -> tuple[int, int, int]:
    """(K, J, I) dimensions of the volume's voxels."""
    i, j, k = volume_node.GetImageData().GetDimensions()
    return k, j, i


def voxels_ijk(volume_node: Any) -> np.ndarray:
    """The voxels as a C-contiguous (I, J, K) float32 array (the order ``medsad_monai`` reads):
    one copy of the volume, made here, whatever the volume's scalar type."""
    return volume_array(volume_node).transpose(2, 1, 0).astype(np.float32, order="C")


def oriented_image(mask_kji: np.ndarray, volume_node: Any) -> Any:
    """A ``vtkOrientedImageData`` (uint8) with exactly the volume's grid and IJK-to-RAS."""
    mask = np.ascontiguousarray(mask_kji, dtype=np.uint8)
    image = slicer.vtkOrientedImageData()
    image.SetDimensions(mask.shape[2], mask.shape[1], mask.shape[0])
    image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    image.SetImageToWorldMatrix(ijk_to_ras(volume_node))
    numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(mask.shape)[:] = mask
    image.Modified()
    return image


def set_segment(
    scene: Any, volume_node: Any, mask_kji: np.ndarray, segmentation_node: Any = None, name: str | None = None
) -> Any:
    """Write ``mask_kji`` into the ``Lesion`` segment (created if missing) of a segmentation node
    whose reference geometry is the volume's. Returns the segmentation node."""
    logic = slicer.vtkSlicerSegmentationsModuleLogic()
    logic.SetMRMLScene(scene)  # registers the segmentation converters
    if segmentation_node is None:
        segmentation_node = scene.AddNewNodeByClass(
            "vtkMRMLSegmentationNode", name or f"{volume_node.GetName()} MedSAD"
        )
        segmentation_node.CreateDefaultDisplayNodes()
    segmentation_node.SetReferenceImageGeometryParameterFromVolumeNode(volume_node)
    if volume_node.GetParentTransformNode() is not None:
        segmentation_node.SetAndObserveTransformNodeID(volume_node.GetParentTransformNode().GetID())
    segmentation = segmentation_node.GetSegmentation()
    segment_id = segmentation.GetSegmentIdBySegmentName(SEGMENT_NAME)
    if not segment_id:
        segment_id = segmentation.AddEmptySegment("", SEGMENT_NAME, SEGMENT_COLOR)
    ok = slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
        oriented_image(mask_kji, volume_node),
        segmentation_node,
        segment_id,
        slicer.vtkSlicerSegmentationsModuleLogic.MODE_REPLACE,
    )
    if not ok:
        raise MedSADError(f"could not write the {SEGMENT_NAME} segment into {segmentation_node.GetName()!r}")
    return segmentation_node


def segment_array(scene: Any, segmentation_node: Any, volume_node: Any) -> np.ndarray:
    """The ``Lesion`` segment resampled on the volume's grid, (K, J, I) uint8."""
    segment_id = segmentation_node.GetSegmentation().GetSegmentIdBySegmentName(SEGMENT_NAME)
    if not segment_id:
        raise MedSADError(f"{segmentation_node.GetName()!r} has no {SEGMENT_NAME!r} segment")
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "__medsad_tmp__")
    try:
        ids = vtk.vtkStringArray()
        ids.InsertNextValue(segment_id)
        if not slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
            segmentation_node, ids, labelmap, volume_node
        ):
            raise MedSADError("could not export the segment to a label map")
        return (volume_array(labelmap) > 0).astype(np.uint8)
    finally:
        scene.RemoveNode(labelmap)


def scores_table(
    scene: Any,
    scores: Sequence[float],
    abnormal: Sequence[bool],
    table_node: Any = None,
    name: str = "MedSAD scores",
    axis: int = 2,
) -> Any:
    """A table node: ``slice`` (int32, the index along voxel axis ``axis``: 0 = I, 1 = J, 2 = K,
    kept as the table's ``MedSAD.sliceAxis`` attribute), ``score`` (float), ``abnormal`` (int32 0/1)."""
    letter = axis_name(axis)
    if table_node is None:
        table_node = scene.AddNewNodeByClass("vtkMRMLTableNode", name)
    table_node.SetAttribute(SLICE_AXIS_ATTRIBUTE, str(axis))
    table_node.RemoveAllColumns()
    columns = (vtk.vtkIntArray(), vtk.vtkFloatArray(), vtk.vtkIntArray())
    for column, title in zip(columns, TABLE_COLUMNS):
        column.SetName(title)
    for k, (score, flag) in enumerate(zip(scores, abnormal)):
        columns[0].InsertNextValue(k)
        columns[1].InsertNextValue(float(score))
        columns[2].InsertNextValue(int(bool(flag)))
    for column in columns:
        table_node.AddColumn(column)
    table_node.SetColumnDescription("slice", f"index of the slice along the volume's {letter} axis")
    table_node.SetColumnDescription("score", "MedSAD anomaly score of the slice (0-1)")
    table_node.SetColumnDescription("abnormal", "1 if score >= the calibrated slice threshold")
    table_node.Modified()
    return table_node


def update_scores(table_node: Any, scores: Sequence[float], abnormal: Sequence[bool]) -> None:
    """Rewrite the ``score`` and ``abnormal`` columns in place (same number of slices)."""
    table = table_node.GetTable()
    score_col, flag_col = table.GetColumnByName("score"), table.GetColumnByName("abnormal")
    for k, (score, flag) in enumerate(zip(scores, abnormal)):
        score_col.SetValue(k, float(score))
        flag_col.SetValue(k, int(bool(flag)))
    score_col.Modified()
    flag_col.Modified()
    table_node.Modified()


def table_scores(table_node: Any) -> list[float]:
    """The ``score`` column of a scores table (empty when there is none)."""
    column = table_node.GetTable().GetColumnByName("score") if table_node is not None else None
    if column is None:
        return []
    return [float(column.GetValue(k)) for k in range(column.GetNumberOfTuples())]


def table_slice_axis(table_node: Any) -> int:
    """The voxel axis a scores table's slices run along (K for a table written before the
    attribute existed)."""
    value = table_node.GetAttribute(SLICE_AXIS_ATTRIBUTE) if table_node is not None else None
    return int(value) if value in ("0", "1", "2") else 2


def scores_plot(
    scene: Any, table_node: Any, series: Any = None, chart: Any = None, title: str = "MedSAD anomaly score per slice"
) -> tuple[Any, Any]:
    """A line plot of ``score`` over ``slice`` from the table, in a chart node. A series already
    plotting this table (and its chart) is reused, so re-runs do not pile up plot nodes."""
    if series is None:
        series = _find(scene, "vtkMRMLPlotSeriesNode", lambda n: n.GetTableNodeID() == table_node.GetID())
    if series is not None and chart is None:
        chart = _find(scene, "vtkMRMLPlotChartNode", lambda n: n.HasPlotSeriesNodeID(series.GetID()))
    if series is None:
        series = scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", "MedSAD score")
    series.SetAndObserveTableNodeID(table_node.GetID())
    series.SetXColumnName("slice")
    series.SetYColumnName("score")
    series.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeScatter)
    series.SetLineStyle(slicer.vtkMRMLPlotSeriesNode.LineStyleSolid)
    series.SetMarkerStyle(slicer.vtkMRMLPlotSeriesNode.MarkerStyleCircle)
    series.SetColor(*SEGMENT_COLOR)
    if chart is None:
        chart = scene.AddNewNodeByClass("vtkMRMLPlotChartNode", "MedSAD chart")
    if not chart.HasPlotSeriesNodeID(series.GetID()):
        chart.AddAndObservePlotSeriesNodeID(series.GetID())
    chart.SetTitle(title)
    chart.SetXAxisTitle(f"slice ({axis_name(table_slice_axis(table_node))})")
    chart.SetYAxisTitle("anomaly score")
    return series, chart


def _find(scene: Any, class_name: str, match: Any) -> Any:
    nodes_ = scene.GetNodesByClass(class_name)
    for i in range(nodes_.GetNumberOfItems()):
        node = nodes_.GetItemAsObject(i)
        if match(node):
            return node
    return None


def slice_centre_ras(volume_node: Any, index: int, axis: int = 2) -> tuple[float, float, float]:
    """RAS of the centre of slice ``index`` along voxel axis ``axis`` (0 = I, 1 = J, 2 = K)."""
    dims = volume_node.GetImageData().GetDimensions()
    ijk = [(n - 1) / 2.0 for n in dims] + [1.0]
    axis_name(axis)  # a voxel axis, or a clear error
    ijk[axis] = float(index)
    ras = ijk_to_ras(volume_node).MultiplyPoint(ijk)
    return float(ras[0]), float(ras[1]), float(ras[2])


def write_volume(volume_node: Any, path: str) -> None:
    """Write a scalar volume with Slicer's archetype storage node (its own scene, so the
    caller's scene is not touched)."""
    scene = slicer.vtkMRMLScene()
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    scene.AddNode(storage)
    storage.SetFileName(path)
    storage.SetWriteFileFormat("nrrd")
    storage.SetUseCompression(1)
    if not storage.WriteData(volume_node):
        raise MedSADError(f"could not write {volume_node.GetName()!r} to {path}")


def read_mask(path: str, volume_node: Any) -> np.ndarray:
    """Read a label volume written for ``volume_node`` and check it lies on the volume's grid."""
    scene = slicer.vtkMRMLScene()
    node = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "mask")
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    scene.AddNode(storage)
    storage.SetFileName(path)
    if not storage.ReadData(node):
        raise MedSADError(f"could not read the returned mask {path}")
    expected, got = ijk_to_ras(volume_node), ijk_to_ras(node)
    a = np.array([[expected.GetElement(i, j) for j in range(4)] for i in range(4)])
    b = np.array([[got.GetElement(i, j) for j in range(4)] for i in range(4)])
    array = volume_array(node)
    if array.shape != volume_shape(volume_node) or not np.allclose(a, b, atol=1e-4):
        raise MedSADError(
            "the returned mask does not lie on the input volume's grid "
            f"(shape {array.shape}, IJK-to-RAS {np.round(b, 4).tolist()})"
        )
    return (array > 0).astype(np.uint8)


def write_segmentation(segmentation_node: Any, path: str) -> None:
    """Write a ``.seg.nrrd`` with Slicer's segmentation storage node."""
    if not path.endswith(".seg.nrrd"):
        raise MedSADError(f"{path!r}: a segmentation is exported as .seg.nrrd")
    scene = segmentation_node.GetScene()
    storage = slicer.vtkMRMLSegmentationStorageNode()
    scene.AddNode(storage)
    try:
        storage.SetFileName(path)
        if not storage.WriteData(segmentation_node):
            raise MedSADError(f"could not write {path}")
    finally:
        scene.RemoveNode(storage)
