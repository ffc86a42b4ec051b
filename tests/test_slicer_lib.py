"""MedSADLib (the Qt-free part of the Slicer module) and the Segment Editor effect's apply
step, against the real MRML classes of the ``slicer-core`` wheel (no fakes)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")
vtk = pytest.importorskip("vtk")

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "MedSADSlicer" / "MedSAD"), str(ROOT / "MedSADSlicer" / "SegmentEditorMedSAD")]

from MedSADLib import LocalBackend, MedSADError, MedSADLogic, ServerBackend  # noqa: E402
from MedSADLib import nodes  # noqa: E402
from SegmentEditorMedSADLib.apply import apply_result_to_segment  # noqa: E402

SHAPE_KJI = (10, 40, 48)


def _matrix(m) -> np.ndarray:
    return np.array([[m.GetElement(i, j) for j in range(4)] for i in range(4)])


def _volume(scene, name="brain", array=None, spacing=(0.9, 0.8, 3.0)):
    """Anisotropic, oblique scalar volume with a bright blob in a few slices."""
    if array is None:
        rng = np.random.default_rng(0)
        k, j, i = np.meshgrid(*(np.linspace(-1, 1, n) for n in SHAPE_KJI), indexing="ij")
        head = (i**2 + j**2 + (k * 0.6) ** 2) < 0.8
        array = np.where(head, 450 + 50 * rng.standard_normal(SHAPE_KJI), 0.0).astype(np.float32)
        array[3:6, 15:22, 20:28] = 950.0
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    image = vtk.vtkImageData()
    image.SetDimensions(array.shape[2], array.shape[1], array.shape[0])
    image.AllocateScalars(vtk.VTK_FLOAT, 1)
    node.SetAndObserveImageData(image)
    slicer.util.updateVolumeFromArray(node, array)
    node.SetSpacing(*spacing)
    node.SetOrigin(10.0, -20.0, 5.0)
    theta = np.deg2rad(20)
    direction = vtk.vtkMatrix4x4()
    for r, row in enumerate([[np.cos(theta), -np.sin(theta), 0], [np.sin(theta), np.cos(theta), 0], [0, 0, 1]]):
        for c, v in enumerate(row):
            direction.SetElement(r, c, v)
    node.SetIJKToRASDirectionMatrix(direction)
    return node


def _ids(scene) -> list[str]:
    return [scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())]


@pytest.fixture
def scene():
    return slicer.vtkMRMLScene()


@pytest.fixture
def local(tiny_checkpoint):
    return LocalBackend(str(tiny_checkpoint), batch_size=4)


def test_local_run_gives_segment_in_the_volume_geometry_table_and_plot(scene, local, tiny_checkpoint):
    volume = _volume(scene)
    logic = MedSADLogic(scene)
    result = logic.run(volume, local, threshold=0.3)
    assert result.mask.shape == SHAPE_KJI and len(result.slice_scores) == SHAPE_KJI[0]

    # same numbers as medsad_monai's own inference on the (I, J, K) array: axes are not mixed up
    from medsad_monai.data.volumes import normalize_intensity
    from medsad_monai.engine.inference import Predictor

    array_ijk = slicer.util.arrayFromVolume(volume).transpose(2, 1, 0).astype(np.float32)
    direct = Predictor.from_checkpoint(tiny_checkpoint, batch_size=4).predict_volume(normalize_intensity(array_ijk))
    np.testing.assert_allclose(result.slice_scores, direct.slice_scores, atol=1e-6)
    np.testing.assert_allclose(result.probability, direct.probability.transpose(2, 1, 0), atol=1e-6)

    outputs = logic.create_outputs(volume, result)
    segment = nodes.segment_array(scene, outputs.segmentation, volume)
    np.testing.assert_array_equal(segment, result.mask)
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
    seg_id = outputs.segmentation.GetSegmentation().GetSegmentIdBySegmentName("Lesion")
    slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(outputs.segmentation, [seg_id], labelmap, volume)
    np.testing.assert_allclose(_matrix(nodes.ijk_to_ras(labelmap)), _matrix(nodes.ijk_to_ras(volume)), atol=1e-6)

    table = outputs.table.GetTable()
    assert table.GetNumberOfRows() == SHAPE_KJI[0]
    assert table.GetColumnByName("slice").GetDataTypeAsString() == "int"  # int32, not uint8
    assert [table.GetColumnByName("slice").GetValue(k) for k in range(10)] == list(range(10))
    np.testing.assert_allclose([table.GetColumnByName("score").GetValue(k) for k in range(10)],
                               result.slice_scores, atol=1e-6)
    assert [table.GetColumnByName("abnormal").GetValue(k) for k in range(10)] == [int(a) for a in result.abnormal()]
    assert outputs.plot_series.GetTableNodeID() == outputs.table.GetID()
    assert outputs.plot_chart.HasPlotSeriesNodeID(outputs.plot_series.GetID())
    assert outputs.segmentation.GetAttribute("MedSAD.worstSlice") == str(result.worst_slice)

    ras = logic.worst_slice_ras(volume, result)
    dims = volume.GetImageData().GetDimensions()
    expected = _matrix(nodes.ijk_to_ras(volume)) @ np.array([(dims[0] - 1) / 2, (dims[1] - 1) / 2, result.worst_slice, 1])
    np.testing.assert_allclose(ras, expected[:3], atol=1e-6)


def test_rethreshold_changes_mask_and_flags_without_running_again(scene, local, monkeypatch):
    volume = _volume(scene)
    logic = MedSADLogic(scene)
    result = logic.run(volume, local, threshold=0.5)
    outputs = logic.create_outputs(volume, result)
    monkeypatch.setattr(local, "_predictor", None)  # a re-run would now reload; forbid it
    monkeypatch.setattr(LocalBackend, "_load", lambda self: pytest.fail("re-threshold must not run the model"))
    low = float(np.quantile(result.probability, 0.9))
    logic.rethreshold(volume, result, low, outputs)
    segment = nodes.segment_array(scene, outputs.segmentation, volume)
    np.testing.assert_array_equal(segment, (result.probability >= low).astype(np.uint8))
    table = outputs.table.GetTable()
    flags = [int(s >= result.slice_threshold) for s in result.slice_scores]
    assert [table.GetColumnByName("abnormal").GetValue(k) for k in range(10)] == flags
    assert outputs.segmentation.GetAttribute("MedSAD.threshold") == str(low)


def test_calibrated_checkpoint_decides_in_slicer_as_in_medsad_monai(scene, tiny_checkpoint, tmp_path):
    """The module uses the checkpoint's operating point (size filter, slice and volume scores),
    and re-thresholding re-decides all of it with the same post-processing."""
    import shutil

    from medsad_monai.checkpoint import write_calibration
    from medsad_monai.data.volumes import normalize_intensity
    from medsad_monai.engine.decision import OperatingPoint
    from medsad_monai.engine.inference import Predictor

    ckpt = tmp_path / "calibrated.pt"
    shutil.copy2(tiny_checkpoint, ckpt)
    op = OperatingPoint(map_threshold=0.3, min_lesion_voxels=20, slice_score="lesion_area", slice_threshold=0.2,
                        volume_score="lesion_volume", volume_threshold=0.5, source="calibrate")
    write_calibration(ckpt, op)
    volume = _volume(scene)
    logic = MedSADLogic(scene)
    result = logic.run(volume, LocalBackend(str(ckpt), batch_size=4))
    array_ijk = slicer.util.arrayFromVolume(volume).transpose(2, 1, 0).astype(np.float32)
    direct = Predictor.from_checkpoint(ckpt, batch_size=4).predict_volume(normalize_intensity(array_ijk))
    assert result.threshold == 0.3 and result.slice_threshold == 0.2 and result.volume_threshold == 0.5
    np.testing.assert_array_equal(result.mask, direct.mask.transpose(2, 1, 0))
    np.testing.assert_allclose(result.slice_scores, direct.slice_scores, atol=1e-6)
    assert result.volume_abnormal == direct.volume_abnormal
    assert result.info["operating_point"]["source"] == "calibrate"
    outputs = logic.create_outputs(volume, result)
    logic.rethreshold(volume, result, 0.6, outputs)
    again = direct.with_operating_point(op.with_overrides(map_threshold=0.6))
    np.testing.assert_array_equal(nodes.segment_array(scene, outputs.segmentation, volume), again.mask.transpose(2, 1, 0))
    np.testing.assert_allclose([outputs.table.GetTable().GetColumnByName("score").GetValue(k) for k in range(10)],
                               again.slice_scores, atol=1e-6)
    assert outputs.segmentation.GetAttribute("MedSAD.volumeAbnormal") == str(again.volume_abnormal)


def test_seg_nrrd_written_by_slicer_reads_back_with_slicerio(scene, local, tmp_path):
    slicerio = pytest.importorskip("slicerio")
    volume = _volume(scene)
    logic = MedSADLogic(scene)
    result = logic.run(volume, local, threshold=0.2)
    assert result.mask.sum() > 0
    outputs = logic.create_outputs(volume, result)
    n_nodes = scene.GetNumberOfNodes()
    path = tmp_path / "lesion.seg.nrrd"
    logic.export_seg_nrrd(outputs.segmentation, str(path))
    assert scene.GetNumberOfNodes() == n_nodes
    seg = slicerio.read_segmentation(str(path))
    assert [s["name"] for s in seg["segments"]] == ["Lesion"]
    voxels = np.asarray(seg["voxels"])  # (I, J, K) on the segmentation's extent
    full = np.zeros(SHAPE_KJI[::-1], np.uint8)
    offset = [int(v) for v in seg.get("referenceImageExtentOffset", [0, 0, 0])]
    full[offset[0]:offset[0] + voxels.shape[0], offset[1]:offset[1] + voxels.shape[1],
         offset[2]:offset[2] + voxels.shape[2]] = voxels > 0
    np.testing.assert_array_equal(full.transpose(2, 1, 0), result.mask)
    lps_to_ras = np.diag([-1.0, -1.0, 1.0, 1.0])
    ijk_to_ras = lps_to_ras @ np.asarray(seg["ijkToLPS"])
    np.testing.assert_allclose(ijk_to_ras[:3, :3], _matrix(nodes.ijk_to_ras(volume))[:3, :3], atol=1e-5)
    expected_origin = _matrix(nodes.ijk_to_ras(volume)) @ np.array([*offset, 1.0])
    np.testing.assert_allclose(ijk_to_ras[:3, 3], expected_origin[:3], atol=1e-4)
    with pytest.raises(MedSADError, match="seg.nrrd"):
        logic.export_seg_nrrd(outputs.segmentation, str(tmp_path / "x.nrrd"))


def _vector_volume(scene):
    node = scene.AddNewNodeByClass("vtkMRMLVectorVolumeNode", "rgb")
    image = vtk.vtkImageData()
    image.SetDimensions(8, 8, 4)
    image.AllocateScalars(vtk.VTK_FLOAT, 3)
    node.SetAndObserveImageData(image)
    return node


@pytest.mark.parametrize("case,needle", [
    ("none", "no input volume"), ("flat", "2-D"), ("vector", "components"), ("labelmap", "not a scalar volume"),
    ("bad_checkpoint", "does not load"), ("missing_checkpoint", "not found"), ("threshold", "threshold"),
])
def test_bad_input_raises_a_clear_error_and_keeps_the_scene(scene, local, tmp_path, case, needle):
    volume = _volume(scene)
    backend, threshold, target = local, 0.5, volume
    if case == "none":
        target = None
    elif case == "flat":
        target = _volume(scene, "flat", np.ones((1, 16, 16), np.float32))
    elif case == "vector":
        target = _vector_volume(scene)
    elif case == "labelmap":
        target = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "labels")
    elif case == "bad_checkpoint":
        bad = tmp_path / "bad.pt"
        bad.write_bytes(b"not a checkpoint")
        backend = LocalBackend(str(bad))
    elif case == "missing_checkpoint":
        backend = LocalBackend(str(tmp_path / "nope.pt"))
    elif case == "threshold":
        threshold = 1.5
    before = _ids(scene)
    with pytest.raises(MedSADError, match=needle):
        MedSADLogic(scene).run(target, backend, threshold=threshold)
    assert _ids(scene) == before


def test_remote_backend_against_a_real_monai_label_server(scene, app_studies, tiny_checkpoint, tmp_path):
    pytest.importorskip("monailabel")
    from server_process import free_port, monailabel_server

    volume = _volume(scene)
    logic = MedSADLogic(scene)
    local = logic.run(volume, LocalBackend(str(tiny_checkpoint), batch_size=4), threshold=0.3)
    studies, checkpoint = app_studies
    with monailabel_server(studies, {"checkpoint": str(checkpoint)}, tmp_path / "server.log") as url:
        remote = logic.run(volume, ServerBackend(url), threshold=0.3)
        np.testing.assert_allclose(remote.slice_scores, local.slice_scores, atol=1e-5)
        np.testing.assert_array_equal(remote.mask, local.mask)
        assert remote.backend == "server" and remote.info["label_names"] == {"lesion": 1}
        outputs = logic.create_outputs(volume, remote)
        np.testing.assert_array_equal(nodes.segment_array(scene, outputs.segmentation, volume), remote.mask)
        before = _ids(scene)
        with pytest.raises(MedSADError, match="answered with an error"):
            logic.run(volume, ServerBackend(url, model="no_such_model"), threshold=0.3)
        assert _ids(scene) == before
    with pytest.raises(MedSADError, match="not reachable"):
        logic.run(volume, ServerBackend(f"http://127.0.0.1:{free_port()}"), threshold=0.3)
    assert _ids(scene) == before
    json.dumps(remote.info)


def _editor(scene, volume, intensity_range=None):
    logic = slicer.vtkSlicerSegmentationsModuleLogic()
    logic.SetMRMLScene(scene)
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "edit")
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    segment_id = segmentation.GetSegmentation().AddEmptySegment("", "Lesion")
    editor_node = scene.AddNewNodeByClass("vtkMRMLSegmentEditorNode")
    if intensity_range is not None:
        editor_node.SetSourceVolumeIntensityMask(True)
        editor_node.SetSourceVolumeIntensityMaskRange(*intensity_range)
    editor = slicer.vtkSlicerSegmentEditorLogic()
    editor.SetMRMLScene(scene)
    editor.SetSegmentEditorNode(editor_node)
    editor.SetSegmentationNode(segmentation)
    editor.SetSourceVolumeNode(volume)
    editor_node.SetSelectedSegmentID(segment_id)
    return editor, segmentation, segment_id


def test_effect_apply_honours_the_editable_intensity_range_and_undo(scene, local):
    volume = _volume(scene)
    result = MedSADLogic(scene).run(volume, local, threshold=0.5)
    result.mask = np.zeros(SHAPE_KJI, np.uint8)
    result.mask[2:7, 10:30, 10:38] = 1  # a known mask, larger than the bright blob
    result.probability, result.redecide = None, None
    editor, segmentation, segment_id = _editor(scene, volume, intensity_range=(900, 1000))
    offered = apply_result_to_segment(editor, segment_id, volume, result)
    assert offered == int(result.mask.sum())
    array = slicer.util.arrayFromVolume(volume)
    got = nodes.segment_array(scene, segmentation, volume)
    expected = (result.mask > 0) & (array >= 900) & (array <= 1000)
    assert 0 < expected.sum() < result.mask.sum()
    np.testing.assert_array_equal(got, expected.astype(np.uint8))
    assert editor.CanUndo()
    editor.Undo()
    assert nodes.segment_array(scene, segmentation, volume).sum() == 0


def test_effect_apply_on_the_current_slice_leaves_other_slices(scene, local):
    volume = _volume(scene)
    result = MedSADLogic(scene).run(volume, local, threshold=0.5)
    result.mask = np.zeros(SHAPE_KJI, np.uint8)
    result.mask[2:7, 10:30, 10:38] = 1
    result.probability, result.redecide = None, None
    editor, segmentation, segment_id = _editor(scene, volume)
    apply_result_to_segment(editor, segment_id, volume, result, slice_index=4)
    got = nodes.segment_array(scene, segmentation, volume)
    np.testing.assert_array_equal(got[4], result.mask[4])
    assert got[[k for k in range(SHAPE_KJI[0]) if k != 4]].sum() == 0
    with pytest.raises(MedSADError, match="outside"):
        apply_result_to_segment(editor, segment_id, volume, result, slice_index=99)


def test_progress_is_reported_and_cancel_stops_without_new_nodes(scene, local):
    volume = _volume(scene)
    logic = MedSADLogic(scene)
    calls: list[tuple[int, int]] = []
    logic.run(volume, local, progress=lambda done, total: calls.append((done, total)))
    assert calls and calls[-1][0] == calls[-1][1] and [c[0] for c in calls] == sorted(c[0] for c in calls)
    before = _ids(scene)
    with pytest.raises(MedSADError, match="cancelled"):
        logic.run(volume, local, cancel=lambda: True)
    assert _ids(scene) == before
