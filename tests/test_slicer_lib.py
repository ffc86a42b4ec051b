"""MedSADLib (the Qt-free part of the Slicer module) and the Segment Editor effect's Qt-free
part (its slice geometry and its one write path), against the real MRML classes of the
``slicer-core`` wheel."""

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

from MedSADLib import (
    LocalBackend,
    MedSADError,
    MedSADLogic,
    MedSADParameters,
    MedSADResult,
    ServerBackend,
    backends,
    describe_decision,
    make_backend,
    nodes,
)
from SegmentEditorMedSADLib.apply import (
    EffectTarget,
    LogicTarget,
    apply_result_to_segment,
    write_mask,
)
from SegmentEditorMedSADLib.geometry import current_slice, slice_axis_index

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


#: IJK-to-RAS directions whose columns run I anterior, J superior, K right: K is not axial
SAGITTAL_K = [[0, 0, 1], [1, 0, 0], [0, 1, 0]]
#: I anterior, J left, K superior: axial along K, the in-plane axes swapped (the four-view flip
#: averaging of the tiny preset makes an answer the same under in-plane flips, not under a swap)
SWAPPED_IJ = [[0, -1, 0], [1, 0, 0], [0, 0, 1]]


def _set_direction(node, rows) -> None:
    direction = vtk.vtkMatrix4x4()
    for r, row in enumerate(rows):
        for c, v in enumerate(row):
            direction.SetElement(r, c, v)
    node.SetIJKToRASDirectionMatrix(direction)


def test_local_run_gives_the_model_the_ras_view_whichever_axis_is_axial(scene, tiny_checkpoint):
    """K axial but stored with I and J swapped, and J axial (a sagittal acquisition): the model
    sees the RAS view, the answer is ``medsad_monai``'s with the node's affine, its scores run
    along the axial voxel axis and the table, the plot, the jump to the worst slice and the
    stored decision follow that axis."""
    from medsad_monai.engine.inference import Predictor

    logic = MedSADLogic(scene)
    backend = LocalBackend(str(tiny_checkpoint), batch_size=4, precision="fp32")
    direct = Predictor.from_checkpoint(tiny_checkpoint, batch_size=4, precision="fp32")
    for rows, axis in ((SWAPPED_IJ, 2), (SAGITTAL_K, 1)):
        volume = _volume(scene, "oriented")
        _set_direction(volume, rows)
        result = logic.run(volume, backend, threshold=0.3)
        ijk = slicer.util.arrayFromVolume(volume).transpose(2, 1, 0).astype(np.float32)
        affine = nodes.ijk_to_ras_array(volume)
        np.testing.assert_allclose(affine, _matrix(nodes.ijk_to_ras(volume)))
        expected = direct.predict_volume(direct.normalize_volume(ijk), spacing=volume.GetSpacing(), affine=affine)
        assert expected.axis == result.slice_axis == axis and result.axis_name == "IJK"[axis]
        assert len(result.slice_scores) == ijk.shape[axis]
        np.testing.assert_allclose(result.slice_scores, expected.slice_scores, atol=1e-6)
        np.testing.assert_allclose(result.probability, expected.probability.transpose(2, 1, 0), atol=1e-6)
        # the view mattered: slicing the stored order along K would answer otherwise
        as_stored = direct.predict_volume(direct.normalize_volume(ijk), spacing=volume.GetSpacing())
        assert not np.allclose(as_stored.probability, expected.probability, atol=1e-3)
        outputs = logic.create_outputs(volume, result)
        assert logic.slice_axis(outputs.table) == axis and outputs.table.GetNumberOfRows() == ijk.shape[axis]
        assert logic.worst_slice(outputs.table) == result.worst_slice
        assert outputs.plot_chart.GetXAxisTitle() == f"slice ({'IJK'[axis]})"
        # the jump lands on the worst slice along that axis, in the middle of the other two
        ras = logic.worst_slice_ras(volume, logic.worst_slice(outputs.table), logic.slice_axis(outputs.table))
        assert ras == logic.worst_slice_ras(volume, result)
        point = np.linalg.inv(affine) @ (*ras, 1.0)
        centre = (np.array(ijk.shape) - 1) / 2.0
        centre[axis] = result.worst_slice
        np.testing.assert_allclose(point[:3], centre, atol=1e-6)
        assert f"slice {'IJK'[axis]}={result.worst_slice}" in describe_decision(result)
        assert f"slice {'IJK'[axis]}={result.worst_slice}" in logic.stored_decision(outputs.segmentation)
    outputs.table.RemoveAttribute(nodes.SLICE_AXIS_ATTRIBUTE)  # a table of an earlier version: along K
    assert logic.slice_axis(outputs.table) == 2


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
    direct = Predictor.from_checkpoint(tiny_checkpoint, batch_size=4, precision=local.precision)
    direct = direct.predict_volume(normalize_intensity(array_ijk), spacing=tuple(volume.GetSpacing()))
    np.testing.assert_allclose(result.slice_scores, direct.slice_scores, atol=1e-6)
    np.testing.assert_allclose(result.probability, direct.probability.transpose(2, 1, 0), atol=1e-6)

    outputs = logic.create_outputs(volume, result)
    segment = nodes.segment_array(scene, outputs.segmentation, volume)
    np.testing.assert_array_equal(segment, result.mask)
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
    seg_id = outputs.segmentation.GetSegmentation().GetSegmentIdBySegmentName("Lesion")
    slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
        outputs.segmentation, [seg_id], labelmap, volume
    )
    np.testing.assert_allclose(_matrix(nodes.ijk_to_ras(labelmap)), _matrix(nodes.ijk_to_ras(volume)), atol=1e-6)

    table = outputs.table.GetTable()
    assert table.GetNumberOfRows() == SHAPE_KJI[0]
    assert table.GetColumnByName("slice").GetDataTypeAsString() == "int"  # int32, not uint8
    assert [table.GetColumnByName("slice").GetValue(k) for k in range(10)] == list(range(10))
    np.testing.assert_allclose(
        [table.GetColumnByName("score").GetValue(k) for k in range(10)], result.slice_scores, atol=1e-6
    )
    assert [table.GetColumnByName("abnormal").GetValue(k) for k in range(10)] == [int(a) for a in result.abnormal()]
    assert outputs.plot_series.GetTableNodeID() == outputs.table.GetID()
    assert outputs.plot_chart.HasPlotSeriesNodeID(outputs.plot_series.GetID())
    assert outputs.segmentation.GetAttribute("MedSAD.worstSlice") == str(result.worst_slice)

    ras = logic.worst_slice_ras(volume, result)
    dims = volume.GetImageData().GetDimensions()
    expected = _matrix(nodes.ijk_to_ras(volume)) @ np.array(
        [(dims[0] - 1) / 2, (dims[1] - 1) / 2, result.worst_slice, 1]
    )
    np.testing.assert_allclose(ras, expected[:3], atol=1e-6)


def test_local_backend_precision_is_medsad_infers(scene, tiny_checkpoint):
    """``auto`` (the default) runs what ``medsad infer`` would run on this machine and says so;
    bf16 and fp32 agree on the slice scores; an unknown precision is refused by name."""
    import torch

    from medsad_monai.engine.inference import resolve_precision

    volume = _volume(scene)
    logic = MedSADLogic(scene)
    auto = logic.run(volume, LocalBackend(str(tiny_checkpoint), batch_size=4))
    assert auto.info["precision"] == resolve_precision("auto", torch.device("cpu"))
    fp32 = logic.run(volume, LocalBackend(str(tiny_checkpoint), batch_size=4, precision="fp32"))
    bf16 = logic.run(volume, LocalBackend(str(tiny_checkpoint), batch_size=4, precision="bf16"))
    assert (fp32.info["precision"], bf16.info["precision"]) == ("fp32", "bf16")
    np.testing.assert_allclose(bf16.slice_scores, fp32.slice_scores, atol=0.01)
    with pytest.raises(MedSADError, match="precision 'fp16'"):
        LocalBackend(str(tiny_checkpoint), precision="fp16")


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
    op = OperatingPoint(
        map_threshold=0.3,
        min_lesion_voxels=20,
        slice_score="lesion_area",
        slice_threshold=0.2,
        volume_score="lesion_volume",
        volume_threshold=0.5,
        source="calibrate",
    )
    write_calibration(ckpt, op)
    volume = _volume(scene)
    logic = MedSADLogic(scene)
    result = logic.run(volume, LocalBackend(str(ckpt), batch_size=4))
    array_ijk = slicer.util.arrayFromVolume(volume).transpose(2, 1, 0).astype(np.float32)
    # the module's default precision is medsad infer's (auto)
    direct = Predictor.from_checkpoint(ckpt, batch_size=4, precision="auto")
    direct = direct.predict_volume(normalize_intensity(array_ijk), spacing=tuple(volume.GetSpacing()))
    assert result.threshold == 0.3 and result.slice_threshold == 0.2 and result.volume_threshold == 0.5
    np.testing.assert_array_equal(result.mask, direct.mask.transpose(2, 1, 0))
    np.testing.assert_allclose(result.slice_scores, direct.slice_scores, atol=1e-6)
    assert result.volume_abnormal == direct.volume_abnormal
    assert result.info["operating_point"]["source"] == "calibrate"
    outputs = logic.create_outputs(volume, result)
    logic.rethreshold(volume, result, 0.6, outputs)
    again = direct.with_operating_point(op.with_overrides(map_threshold=0.6))
    np.testing.assert_array_equal(
        nodes.segment_array(scene, outputs.segmentation, volume), again.mask.transpose(2, 1, 0)
    )
    np.testing.assert_allclose(
        [outputs.table.GetTable().GetColumnByName("score").GetValue(k) for k in range(10)],
        again.slice_scores,
        atol=1e-6,
    )
    assert outputs.segmentation.GetAttribute("MedSAD.volumeAbnormal") == str(again.volume_abnormal)


def test_a_minimum_lesion_size_in_mm3_set_in_slicer_re_decides_as_medsad_monai(scene, tiny_checkpoint, tmp_path):
    import shutil

    from medsad_monai.checkpoint import write_calibration
    from medsad_monai.data.volumes import normalize_intensity
    from medsad_monai.engine.decision import OperatingPoint
    from medsad_monai.engine.inference import Predictor

    volume = _volume(scene)
    voxel = float(np.prod(volume.GetSpacing()))
    ckpt = tmp_path / "calibrated.pt"
    shutil.copy2(tiny_checkpoint, ckpt)
    op = OperatingPoint(map_threshold=0.3, min_lesion_voxels=20, voxel_mm3=voxel, source="calibrate")
    write_calibration(ckpt, op)
    logic = MedSADLogic(scene)
    backend = LocalBackend(str(ckpt), batch_size=4)
    every = logic.run(volume, backend, min_lesion_mm3=0)  # 0 keeps every lesion
    array_ijk = slicer.util.arrayFromVolume(volume).transpose(2, 1, 0).astype(np.float32)
    direct = Predictor.from_checkpoint(ckpt, batch_size=4, precision="auto")
    direct = direct.predict_volume(normalize_intensity(array_ijk), spacing=tuple(volume.GetSpacing()))
    np.testing.assert_array_equal(
        every.mask, direct.with_operating_point(op.with_overrides(min_lesion_mm3=0)).mask.transpose(2, 1, 0)
    )
    assert every.min_lesion_mm3 == 0 and every.info["operating_point"]["min_lesion_voxels"] == 0
    assert every.source == "calibrate+override" and "set by hand" in describe_decision(every)
    outputs = logic.create_outputs(volume, every)
    size = 5.5 * voxel  # lesions of 6 voxels and more stay
    logic.rethreshold(volume, every, None, outputs, min_lesion_mm3=size)
    again = direct.with_operating_point(op.with_overrides(min_lesion_mm3=size))
    assert again.op.min_lesion_voxels == 6 and every.info["operating_point"]["min_lesion_voxels"] == 6
    np.testing.assert_array_equal(
        nodes.segment_array(scene, outputs.segmentation, volume), again.mask.transpose(2, 1, 0)
    )
    assert every.at(None, size) is every and every.at(None).info["operating_point"]["min_lesion_voxels"] == 20
    with pytest.raises(MedSADError, match="minimum lesion size -1"):
        logic.run(volume, backend, min_lesion_mm3=-1)
    write_calibration(ckpt, OperatingPoint(map_threshold=0.3, min_lesion_voxels=20, source="calibrate"))
    with pytest.raises(MedSADError, match="no voxel size"):  # an operating point in plain voxel counts
        logic.run(volume, LocalBackend(str(ckpt), batch_size=4), min_lesion_mm3=50)


def test_a_minimum_lesion_mean_set_in_slicer_re_decides_as_medsad_monai(scene, tiny_checkpoint, tmp_path):
    import shutil

    from medsad_monai.checkpoint import write_calibration
    from medsad_monai.data.volumes import normalize_intensity
    from medsad_monai.engine.decision import OperatingPoint, lesion_components
    from medsad_monai.engine.inference import Predictor

    volume = _volume(scene)
    ckpt = tmp_path / "calibrated.pt"
    shutil.copy2(tiny_checkpoint, ckpt)
    array_ijk = slicer.util.arrayFromVolume(volume).transpose(2, 1, 0).astype(np.float32)
    direct = Predictor.from_checkpoint(ckpt, batch_size=4, precision="auto")
    direct = direct.predict_volume(normalize_intensity(array_ijk), spacing=tuple(volume.GetSpacing()))
    # a threshold that outlines lesions of different mean probabilities, and a mean between them
    threshold = float(np.quantile(direct.probability, 0.9))
    _, sizes, means = lesion_components(direct.probability, threshold)
    means = np.sort(means[sizes > 0])
    assert means.size >= 2 and means[-1] > means[0], "the random model outlines too few lesions for this test"
    mean = float((means[0] + means[-1]) / 2)
    write_calibration(ckpt, OperatingPoint(map_threshold=threshold, min_lesion_mean=mean, source="calibrate"))
    logic = MedSADLogic(scene)
    backend = LocalBackend(str(ckpt), batch_size=4)
    calibrated = logic.run(volume, backend)
    every = logic.run(volume, backend, min_lesion_mean=0)  # 0 keeps every lesion the threshold outlines
    op = direct.op.with_overrides(map_threshold=threshold)
    np.testing.assert_array_equal(
        calibrated.mask, direct.with_operating_point(op.with_overrides(min_lesion_mean=mean)).mask.transpose(2, 1, 0)
    )
    np.testing.assert_array_equal(every.mask, (direct.probability >= threshold).astype(np.uint8).transpose(2, 1, 0))
    assert every.mask.sum() > calibrated.mask.sum() > 0  # the filter removed some lesions, not all
    assert every.min_lesion_mean == 0 and every.info["operating_point"]["min_lesion_mean"] == 0
    assert every.source == "calibrate+override" and "set by hand" in describe_decision(every)
    assert "mean probability" in describe_decision(calibrated) and "mean probability" not in describe_decision(every)
    assert calibrated.info["low_confidence"]["n_lesions"] > 0 and "confidence filter hid" in describe_decision(
        calibrated
    )
    outputs = logic.create_outputs(volume, every)
    higher = float((mean + means[-1]) / 2)
    logic.rethreshold(volume, every, None, outputs, min_lesion_mean=higher)
    again = direct.with_operating_point(op.with_overrides(min_lesion_mean=higher))
    assert every.min_lesion_mean == higher and every.info["operating_point"]["min_lesion_mean"] == higher
    np.testing.assert_array_equal(
        nodes.segment_array(scene, outputs.segmentation, volume), again.mask.transpose(2, 1, 0)
    )
    assert every.at(None, None, higher) is every
    np.testing.assert_array_equal(every.at(None).mask, calibrated.mask)  # None: back to the calibrated mean
    for bad in (1.0, -0.1, "high"):
        with pytest.raises(MedSADError, match="minimum lesion mean"):
            logic.run(volume, backend, min_lesion_mean=bad)


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
    full[
        offset[0] : offset[0] + voxels.shape[0],
        offset[1] : offset[1] + voxels.shape[1],
        offset[2] : offset[2] + voxels.shape[2],
    ] = voxels > 0
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


@pytest.mark.parametrize(
    "case,needle",
    [
        ("none", "no input volume"),
        ("flat", "2-D"),
        ("vector", "components"),
        ("labelmap", "not a scalar volume"),
        ("bad_checkpoint", "does not load"),
        ("missing_checkpoint", "not found"),
        ("threshold", "threshold"),
    ],
)
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
    # fp32 on both sides (`auto`, the server's default, is bf16 on CPUs with bf16 units)
    local = logic.run(volume, LocalBackend(str(tiny_checkpoint), batch_size=4, precision="fp32"), threshold=0.3)
    studies, checkpoint = app_studies
    from medsad_monai.checkpoint import write_calibration
    from medsad_monai.engine.decision import OperatingPoint

    site = OperatingPoint(map_threshold=0.25, min_lesion_voxels=2, source="calibrate", profile="site_b")
    write_calibration(checkpoint, site)  # a calibration profile beside the (uncalibrated) default
    conf = {"checkpoint": str(checkpoint), "precision": "fp32"}
    with monailabel_server(studies, conf, tmp_path / "server.log") as url:
        # the profile chosen in the module travels in the request; the local backend decides alike
        remote_site = logic.run(volume, ServerBackend(url, profile="site_b"))
        local_site = logic.run(volume, LocalBackend(str(checkpoint), batch_size=4, precision="fp32", profile="site_b"))
        assert (
            remote_site.info["operating_point"]["profile"] == local_site.info["operating_point"]["profile"] == "site_b"
        )
        assert remote_site.threshold == local_site.threshold == 0.25
        assert "(calibration profile site_b)" in describe_decision(remote_site)
        assert "calibration profile" not in describe_decision(logic.run(volume, ServerBackend(url)))
        np.testing.assert_array_equal(remote_site.mask, local_site.mask)
        with pytest.raises(MedSADError, match="this model has default, site_b"):
            logic.run(volume, ServerBackend(url, profile="site_x"))
        with pytest.raises(MedSADError, match="this model has default, site_b"):
            logic.run(volume, LocalBackend(str(checkpoint), batch_size=4, profile="site_x"))
        remote = logic.run(volume, ServerBackend(url), threshold=0.3)
        np.testing.assert_allclose(remote.slice_scores, local.slice_scores, atol=1e-5)
        np.testing.assert_array_equal(remote.mask, local.mask)
        assert remote.backend == "server" and remote.info["label_names"] == {"lesion": 1}
        # the same call, the same decision: the operating point and where it came from
        assert remote.source == local.source == "default+override"
        assert (remote.volume_abnormal, remote.volume_threshold) == (local.volume_abnormal, local.volume_threshold)
        calibrated = logic.run(volume, ServerBackend(url))
        assert calibrated.source == "default" and calibrated.threshold == calibrated.calibrated_threshold == 0.5
        # the minimum lesion size travels in the request: this default operating point has no voxel size
        with pytest.raises(MedSADError, match="no voxel size"):
            logic.run(volume, ServerBackend(url), min_lesion_mm3=50)
        # so does the minimum lesion mean: the server's mask is the local one at the same value
        strict = logic.run(volume, ServerBackend(url), threshold=0.3, min_lesion_mean=0.9)
        fp32 = LocalBackend(str(tiny_checkpoint), batch_size=4, precision="fp32")
        local_strict = logic.run(volume, fp32, threshold=0.3, min_lesion_mean=0.9)
        np.testing.assert_array_equal(strict.mask, local_strict.mask)
        assert strict.mask.sum() < remote.mask.sum()  # the value reached the server and removed lesions
        assert strict.info["operating_point"]["min_lesion_mean"] == 0.9 and strict.min_lesion_mean == 0.9
        assert not calibrated.can_rethreshold and "not calibrated" in describe_decision(calibrated)
        outputs = logic.create_outputs(volume, remote)
        np.testing.assert_array_equal(nodes.segment_array(scene, outputs.segmentation, volume), remote.mask)
        # a volume whose K axis is not the axial one: the server cuts the axial slices (along J),
        # as the local backend does
        sideways = _volume(scene, "sideways")
        _set_direction(sideways, SAGITTAL_K)
        remote_j = logic.run(sideways, ServerBackend(url), threshold=0.3)
        local_j = logic.run(sideways, LocalBackend(str(tiny_checkpoint), batch_size=4, precision="fp32"), threshold=0.3)
        assert remote_j.slice_axis == local_j.slice_axis == 1 and len(remote_j.slice_scores) == SHAPE_KJI[1]
        np.testing.assert_allclose(remote_j.slice_scores, local_j.slice_scores, atol=1e-5)
        np.testing.assert_array_equal(remote_j.mask, local_j.mask)
        before = _ids(scene)
        with pytest.raises(MedSADError, match="answered with an error"):
            logic.run(volume, ServerBackend(url, model="no_such_model"), threshold=0.3)
        assert _ids(scene) == before
    with pytest.raises(MedSADError, match="not reachable"):
        logic.run(volume, ServerBackend(f"http://127.0.0.1:{free_port()}"), threshold=0.3)
    assert _ids(scene) == before
    json.dumps(remote.info)


# --------------------------------------------------------------------------- the effect's write path


def _editor(scene, volume, intensity_range=None, geometry_volume=None):
    """A Segment Editor over ``volume`` (the segmentation's geometry from ``geometry_volume``,
    default the volume) with segments Lesion (selected), Region and Other."""
    logic = slicer.vtkSlicerSegmentationsModuleLogic()
    logic.SetMRMLScene(scene)
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "edit")
    segmentation.CreateDefaultDisplayNodes()
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(geometry_volume or volume)
    segment_id = segmentation.GetSegmentation().AddEmptySegment("", "Lesion")
    for name in ("Region", "Other"):
        segmentation.GetSegmentation().AddEmptySegment("", name)
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


def _segment(scene, segmentation, volume, name="Lesion"):
    """A segment on the volume's grid, (K, J, I) uint8."""
    segment_id = segmentation.GetSegmentation().GetSegmentIdBySegmentName(name)
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
    ids = vtk.vtkStringArray()
    ids.InsertNextValue(segment_id)
    assert slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(segmentation, ids, labelmap, volume)
    array = (slicer.util.arrayFromVolume(labelmap) > 0).astype(np.uint8)
    scene.RemoveNode(labelmap)
    return array


def _fill(segmentation, volume, name, mask):
    segment_id = segmentation.GetSegmentation().GetSegmentIdBySegmentName(name)
    assert slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
        nodes.oriented_image(mask, volume),
        segmentation,
        segment_id,
        slicer.vtkSlicerSegmentationsModuleLogic.MODE_REPLACE,
    )


def _known_mask():
    mask = np.zeros(SHAPE_KJI, np.uint8)
    mask[2:7, 10:30, 10:38] = 1  # larger than the bright blob (rows 15:22, columns 20:28 of slices 3:6)
    return mask


def _known_result(mask=None):
    """A server-like result (a fixed binary mask) with a known mask."""
    mask = _known_mask() if mask is None else mask
    return MedSADResult(
        slice_scores=[float(m.mean()) for m in mask],
        mask=mask,
        threshold=0.5,
        backend="server",
        info={"operating_point": {"source": "default", "map_threshold": 0.5}},
    )


def test_effect_apply_honours_the_editable_intensity_range_and_undo(scene):
    volume = _volume(scene)
    result = _known_result()
    editor, segmentation, segment_id = _editor(scene, volume, intensity_range=(900, 1000))
    offered = apply_result_to_segment(LogicTarget(editor, segment_id), volume, result)
    assert offered == int(result.mask.sum())
    array = slicer.util.arrayFromVolume(volume)
    got = nodes.segment_array(scene, segmentation, volume)
    expected = (result.mask > 0) & (array >= 900) & (array <= 1000)
    assert 0 < expected.sum() < result.mask.sum()
    np.testing.assert_array_equal(got, expected.astype(np.uint8))
    assert editor.CanUndo()
    editor.Undo()
    assert nodes.segment_array(scene, segmentation, volume).sum() == 0


def test_effect_apply_honours_the_editable_area(scene):
    volume = _volume(scene)
    editor, segmentation, _ = _editor(scene, volume)
    region = np.zeros(SHAPE_KJI, np.uint8)
    region[:, :20, :] = 1  # the upper half of the rows
    _fill(segmentation, volume, "Region", region)
    editor_node = editor.GetSegmentEditorNode()
    editor_node.SetMaskMode(slicer.vtkMRMLSegmentationNode.EditAllowedInsideSingleSegment)
    editor_node.SetMaskSegmentID(segmentation.GetSegmentation().GetSegmentIdBySegmentName("Region"))
    editor_node.SetOverwriteMode(slicer.vtkMRMLSegmentEditorNode.OverwriteNone)
    write_mask(LogicTarget(editor), volume, _known_mask())
    np.testing.assert_array_equal(_segment(scene, segmentation, volume), _known_mask() & region)
    np.testing.assert_array_equal(_segment(scene, segmentation, volume, "Region"), region)


@pytest.mark.parametrize("overwrite", ["all", "none"])
def test_effect_apply_overwrites_other_segments_as_the_editor_says(scene, overwrite):
    volume = _volume(scene)
    editor, segmentation, _ = _editor(scene, volume)
    other = np.zeros(SHAPE_KJI, np.uint8)
    other[:, 25:35, :] = 1  # overlaps the mask's rows 25:30
    _fill(segmentation, volume, "Other", other)
    mode = {
        "all": slicer.vtkMRMLSegmentEditorNode.OverwriteAllSegments,
        "none": slicer.vtkMRMLSegmentEditorNode.OverwriteNone,
    }[overwrite]
    editor.GetSegmentEditorNode().SetOverwriteMode(mode)
    mask = _known_mask()
    write_mask(LogicTarget(editor), volume, mask)
    np.testing.assert_array_equal(_segment(scene, segmentation, volume), mask)
    expected_other = other & (1 - mask) if overwrite == "all" else other
    np.testing.assert_array_equal(_segment(scene, segmentation, volume, "Other"), expected_other)
    editor.Undo()  # one undo step restores both segments
    assert _segment(scene, segmentation, volume).sum() == 0
    np.testing.assert_array_equal(_segment(scene, segmentation, volume, "Other"), other)


@pytest.mark.parametrize("slice_", [(2, 4), (0, 20), (1, 12)], ids=["K", "I", "J"])
def test_effect_apply_on_the_current_slice_changes_that_slice_only(scene, slice_):
    volume = _volume(scene)
    editor, segmentation, segment_id = _editor(scene, volume)
    before = np.zeros(SHAPE_KJI, np.uint8)
    before[1:9, 5:35, 5:43] = 1  # the segment already has voxels on every slice
    _fill(segmentation, volume, "Lesion", before)
    mask = _known_mask()
    write_mask(LogicTarget(editor, segment_id), volume, mask, slice_)
    axis, index = slice_
    where = [slice(None)] * 3
    where[2 - axis] = index  # (K, J, I) order
    expected = before.copy()
    expected[tuple(where)] = mask[tuple(where)]
    np.testing.assert_array_equal(_segment(scene, segmentation, volume), expected)
    editor.Undo()
    np.testing.assert_array_equal(_segment(scene, segmentation, volume), before)
    with pytest.raises(MedSADError, match="outside"):
        write_mask(LogicTarget(editor, segment_id), volume, mask, (axis, 99))


def test_effect_apply_on_a_segmentation_of_another_geometry(scene):
    """The segmentation's grid (the editor's) is larger than the volume's and shifted: the mask
    and the slice are resampled onto it, and the intensity mask still applies."""
    volume = _volume(scene)
    padded = np.zeros((SHAPE_KJI[0] + 4, SHAPE_KJI[1] + 4, SHAPE_KJI[2] + 4), np.float32)
    geometry = _volume(scene, "geometry", padded)
    ijk_to_ras = _matrix(nodes.ijk_to_ras(volume))
    geometry.SetOrigin(*(ijk_to_ras @ np.array([-2.0, -2.0, -2.0, 1.0]))[:3])
    editor, segmentation, segment_id = _editor(scene, volume, intensity_range=(900, 1000), geometry_volume=geometry)
    mask = _known_mask()
    write_mask(LogicTarget(editor, segment_id), volume, mask, (2, 4))
    array = slicer.util.arrayFromVolume(volume)
    expected = np.zeros_like(mask)
    expected[4] = mask[4] & (array[4] >= 900) & (array[4] <= 1000)
    assert expected.sum() > 0
    np.testing.assert_array_equal(_segment(scene, segmentation, volume), expected)


class _ScriptedEffectStandIn:
    """What ``qSlicerSegmentEditorScriptedEffect`` does for the calls ``EffectTarget`` makes, in
    Slicer >= 5.10 (``qSlicerSegmentEditorAbstractEffect.cxx``): forward to the editor widget's
    ``vtkSlicerSegmentEditorLogic`` (per-segment effect, masking on)."""

    def __init__(self, editor):
        self.editor = editor

    def parameterSetNode(self):
        return self.editor.GetSegmentEditorNode()

    def defaultModifierLabelmap(self):
        return self.editor.GetModifierLabelmap() if self.editor.ResetModifierLabelmapToDefault() else None

    def saveStateForUndo(self):
        self.editor.SaveStateForUndo()

    def modifySelectedSegmentByLabelmap(self, modifier, mode, extent=None):
        node = self.parameterSetNode()
        self.editor.ModifySegmentByLabelmap(
            node.GetSegmentationNode(),
            node.GetSelectedSegmentID(),
            modifier,
            mode,
            extent or [0, -1, 0, -1, 0, -1],
            True,
            False,
        )


def test_the_effect_target_writes_like_the_logic_target(scene):
    volume = _volume(scene)
    mask = _known_mask()
    results = []
    for make_target in (
        lambda editor: LogicTarget(editor),
        lambda editor: EffectTarget(_ScriptedEffectStandIn(editor), modes=slicer.vtkSlicerSegmentEditorLogic),
    ):
        editor, segmentation, _ = _editor(scene, volume, intensity_range=(900, 1000))
        assert editor.GetSegmentEditorNode().GetSegmentationNode() is segmentation
        before = np.zeros(SHAPE_KJI, np.uint8)
        before[:, :5, :] = 1
        _fill(segmentation, volume, "Lesion", before)
        write_mask(make_target(editor), volume, mask, (2, 4))
        write_mask(make_target(editor), volume, mask)
        results.append(_segment(scene, segmentation, volume))
        editor.Undo()
        editor.Undo()  # one undo step per write
        np.testing.assert_array_equal(_segment(scene, segmentation, volume), before)
    np.testing.assert_array_equal(results[0], results[1])
    assert results[0].sum() > 0


def test_write_mask_refuses_what_it_cannot_place(scene):
    volume = _volume(scene)
    editor, segmentation, _ = _editor(scene, volume)
    with pytest.raises(MedSADError, match="not on"):
        write_mask(LogicTarget(editor), volume, np.zeros((3, 3, 3), np.uint8))
    editor.GetSegmentEditorNode().SetSelectedSegmentID(None)
    with pytest.raises(MedSADError, match="no segment selected"):
        write_mask(LogicTarget(editor), volume, _known_mask())


# --------------------------------------------------------------------------- the slice a view shows


def _slice_to_ras(normal, centre, in_plane=None):
    """A SliceToRAS for a plane through ``centre`` with ``normal`` (in-plane axes completed)."""
    normal = np.asarray(normal, float) / np.linalg.norm(normal)
    x = np.asarray(in_plane if in_plane is not None else np.cross([0.3, 0.5, 0.81], normal), float)
    x -= normal * np.dot(x, normal)
    x /= np.linalg.norm(x)
    m = np.eye(4)
    m[:3, 0], m[:3, 1], m[:3, 2], m[:3, 3] = x, np.cross(normal, x), normal, centre
    return m


@pytest.mark.parametrize(
    "view,normal,axis", [("axial", (0, 0, 1), 2), ("sagittal", (1, 0, 0), 0), ("coronal", (0, 1, 0), 1)]
)
def test_slice_axis_index_for_the_standard_views(view, normal, axis):
    """An LPS-like volume (I to the left, J to the back) with anisotropic spacing."""
    ijk_to_ras = np.array([[-0.9, 0, 0, 30.0], [0, -0.8, 0, 40.0], [0, 0, 3.0, -10.0], [0, 0, 0, 1]])
    dims = (48, 40, 10)
    voxel = np.array([20, 13, 4, 1.0])
    centre = (ijk_to_ras @ voxel)[:3]
    centre += 0.3 * np.array([0.9, 0.8, 3.0])  # off the voxel centre, within the voxel
    ras_to_ijk = np.linalg.inv(ijk_to_ras)
    assert slice_axis_index(_slice_to_ras(normal, centre), ras_to_ijk, dims) == (axis, int(voxel[axis]))
    assert slice_axis_index(_slice_to_ras(-np.asarray(normal), centre), ras_to_ijk, dims) == (axis, int(voxel[axis]))
    far = (ijk_to_ras @ np.array([60, 50, 14, 1.0]))[:3]
    with pytest.raises(MedSADError, match="outside the volume"):
        slice_axis_index(_slice_to_ras(normal, far), ras_to_ijk, dims)


def test_slice_axis_index_refuses_an_oblique_view():
    ijk_to_ras = np.diag([0.9, 0.8, 3.0, 1.0])
    ras_to_ijk = np.linalg.inv(ijk_to_ras)
    centre = (ijk_to_ras @ np.array([20, 13, 4, 1.0]))[:3]
    with pytest.raises(MedSADError, match=r"oblique.*54\.7°.*Rotate to volume plane"):
        slice_axis_index(_slice_to_ras((1, 1, 1), centre), ras_to_ijk, (48, 40, 10))
    tilted = (np.sin(np.deg2rad(0.5)), 0, np.cos(np.deg2rad(0.5)))  # within the 1° tolerance
    assert slice_axis_index(_slice_to_ras(tilted, centre), ras_to_ijk, (48, 40, 10)) == (2, 4)
    with pytest.raises(MedSADError, match="oblique"):
        slice_axis_index(_slice_to_ras(tilted, centre), ras_to_ijk, (48, 40, 10), tolerance_deg=0.1)


def test_current_slice_of_real_slice_nodes_on_an_oblique_volume(scene):
    """The test volume is rotated 20° about S: an axial view shows its K slices; sagittal and
    coronal views do not until 'Rotate to volume plane' (vtkMRMLSliceNode.RotateToVolumePlane)."""
    slicer.vtkMRMLSliceNode.AddDefaultSliceOrientationPresets(scene)
    red = scene.AddNewNodeByClass("vtkMRMLSliceNode")
    red.SetLayoutName("Red")
    volume = _volume(scene)
    voxel = (20, 13, 4)  # (I, J, K)
    ras = nodes.ijk_to_ras(volume).MultiplyPoint((*voxel, 1.0))[:3]
    for orientation, axis in (("Axial", 2), ("Sagittal", 0), ("Coronal", 1)):
        assert red.SetOrientation(orientation)
        red.JumpSliceByCentering(*ras)
        if orientation != "Axial":
            with pytest.raises(MedSADError, match="20.0° from"):
                current_slice(red, volume)
            red.RotateToVolumePlane(volume)
            red.JumpSliceByCentering(*ras)
        assert current_slice(red, volume) == (axis, voxel[axis]), orientation

    # under a linear transform the view is compared with the transformed volume
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    moved = vtk.vtkMatrix4x4()
    moved.SetElement(2, 3, 3.0 * 2)  # two K slices up
    transform.SetMatrixTransformToParent(moved)
    volume.SetAndObserveTransformNodeID(transform.GetID())
    red.SetOrientation("Axial")
    red.JumpSliceByCentering(*ras)
    assert current_slice(red, volume) == (2, voxel[2] - 2)
    with pytest.raises(MedSADError, match="no slice view"):
        current_slice(None, volume)


# --------------------------------------------------------------------------- one backend interface


def test_both_backends_are_called_the_same_way(scene, local, tiny_checkpoint):
    import inspect

    local_signature = inspect.signature(LocalBackend.run)
    assert list(local_signature.parameters) == [
        "self",
        "volume_node",
        "threshold",
        "progress",
        "cancel",
        "min_lesion_mm3",
        "min_lesion_mean",
    ]
    assert inspect.signature(ServerBackend.run) == local_signature
    volume = _volume(scene)
    # the logic has no backend switch: anything with that run() is a backend
    calls = []

    class Recording:
        name = "recording"

        def run(self, volume_node, threshold=None, progress=None, cancel=None):
            calls.append((volume_node, threshold, progress, cancel))
            return local.run(volume_node, threshold, progress, cancel)

    progress, cancel = (lambda done, total: None), (lambda: False)
    result = MedSADLogic(scene).run(volume, Recording(), threshold=0.4, progress=progress, cancel=cancel)
    assert calls == [(volume, 0.4, progress, cancel)] and result.threshold == 0.4  # a backend without a size works

    class WrongShape(Recording):
        def run(self, volume_node, threshold=None, progress=None, cancel=None):
            return _known_result(np.zeros((2, 2, 2), np.uint8))

    with pytest.raises(MedSADError, match="shape"):
        MedSADLogic(scene).run(volume, WrongShape())
    with pytest.raises(MedSADError, match="not a MedSAD backend"):
        MedSADLogic(scene).run(volume, object())


def test_make_backend_is_shared_and_caches_the_local_model(tmp_path, tiny_checkpoint):
    import shutil

    backends.clear_backend_cache()
    ckpt = tmp_path / "model.pt"
    shutil.copy2(tiny_checkpoint, ckpt)
    first = make_backend("local", str(ckpt), "")
    assert isinstance(first, LocalBackend) and make_backend("local", str(ckpt), "") is first
    other = tmp_path / "other.pt"
    shutil.copy2(tiny_checkpoint, other)
    assert make_backend("local", str(other), "") is not first  # one model at a time
    # the calibration profile is a choice of the run, not a reason to load the model again
    site = make_backend("local", str(other), "", profile="site_b")
    assert site.profile == "site_b" and make_backend("local", str(other), "") is site and site.profile == ""
    assert make_backend("server", "", "http://host:9000", profile="site_b").profile == "site_b"
    with pytest.raises(MedSADError, match="calibration profile 'a b'"):
        make_backend("server", "", "http://host:9000", profile="a b")
    server = make_backend("server", "", "")
    assert isinstance(server, ServerBackend) and server.url == backends.DEFAULT_SERVER_URL
    for kind, checkpoint, url, needle in (
        ("local", "", "", "no checkpoint"),
        ("local", str(tmp_path / "x.pt"), "", "not found"),
        ("cloud", "", "", "unknown backend"),
        ("server", "", "ftp://x", "http"),
    ):
        with pytest.raises(MedSADError, match=needle):
            make_backend(kind, checkpoint, url)
    backends.clear_backend_cache()


def test_one_run_checks_the_volume_once_and_copies_the_voxels_once(scene, local, monkeypatch):
    import tracemalloc

    array = (np.random.default_rng(1).random(SHAPE_KJI) * 1000).astype(np.int16)
    volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "int16")
    image = vtk.vtkImageData()
    image.SetDimensions(SHAPE_KJI[2], SHAPE_KJI[1], SHAPE_KJI[0])
    image.AllocateScalars(vtk.VTK_SHORT, 1)
    volume.SetAndObserveImageData(image)
    slicer.util.updateVolumeFromArray(volume, array)

    # the one copy: (K, J, I) int16 -> (I, J, K) float32, allocating one float32 volume
    tracemalloc.start()
    ijk = nodes.voxels_ijk(volume)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert ijk.dtype == np.float32 and ijk.flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(ijk, array.transpose(2, 1, 0))
    assert ijk.nbytes <= peak < 1.5 * ijk.nbytes
    assert np.shares_memory(nodes.volume_array(volume), slicer.util.arrayFromVolume(volume))  # a view, no copy

    counts = {"check": 0, "copy": 0}
    check, copy = MedSADLogic.check_volume, nodes.voxels_ijk

    def counting_check(self, node):
        counts["check"] += 1
        return check(self, node)

    def counting_copy(node):
        counts["copy"] += 1
        return copy(node)

    monkeypatch.setattr(MedSADLogic, "check_volume", counting_check)
    monkeypatch.setattr(nodes, "voxels_ijk", counting_copy)
    logic = MedSADLogic(scene)
    result = logic.run(volume, local)
    logic.create_outputs(volume, result)
    assert counts == {"check": 1, "copy": 1}


# --------------------------------------------------------------------------- the module's state in the scene


def _save_scene(scene, folder):
    """Save the scene like Slicer's 'Save': every storable node to a file, then the .mrml."""
    for i in range(scene.GetNumberOfNodes()):
        node = scene.GetNthNode(i)
        if node.IsA("vtkMRMLStorableNode") and node.GetStorageNode() is None and node.AddDefaultStorageNode():
            extension = {"vtkMRMLSegmentationNode": "seg.nrrd", "vtkMRMLTableNode": "tsv"}.get(
                node.GetClassName(), "nrrd"
            )
            storage = node.GetStorageNode()
            storage.SetFileName(str(folder / f"{node.GetID()}.{extension}"))
            assert storage.WriteData(node), node.GetName()
    scene.SetRootDirectory(str(folder))
    scene.SetURL(str(folder / "scene.mrml"))
    assert scene.Commit()
    return folder / "scene.mrml"


def _load_scene(path):
    scene = slicer.vtkMRMLScene()
    slicer.vtkSlicerSegmentationsModuleLogic().SetMRMLScene(scene)  # segmentation converters
    scene.SetURL(str(path))
    assert scene.Connect()
    return scene


def test_parameter_node_defaults_and_validation(scene):
    assert MedSADParameters.find(scene) is None
    params = MedSADParameters.get_or_create(scene, backend="server", checkpoint="", server_url="http://host:9000")
    assert MedSADParameters.get_or_create(scene).node is params.node  # one per scene (singleton)
    assert params.node.GetAttribute("ModuleName") == "MedSAD" and params.node.GetSingletonTag() == "MedSAD"
    assert (params.backend, params.server_url, params.threshold, params.input_volume) == (
        "server",
        "http://host:9000",
        None,
        None,
    )
    assert not params.ready()
    with pytest.raises(MedSADError, match="threshold"):
        params.threshold = 1.5
    with pytest.raises(MedSADError, match="backend"):
        params.backend = "cloud"
    params.node.SetParameter("threshold", "nonsense")  # a scene edited by hand
    assert params.threshold is None
    params.server_url = ""
    assert params.server_url == backends.DEFAULT_SERVER_URL
    events = []
    params.node.AddObserver(vtk.vtkCommand.ModifiedEvent, lambda *_: events.append(1))
    with params.modify():
        params.backend = "local"
        params.checkpoint = "/models/best.pt"
        params.threshold = 0.25
    assert len(events) == 1 and params.threshold == 0.25 and params.checkpoint == "/models/best.pt"
    assert params.min_lesion_mm3 is None  # the model's calibrated size
    params.min_lesion_mm3 = 0
    assert params.min_lesion_mm3 == 0.0
    params.min_lesion_mm3 = 120.5
    assert params.min_lesion_mm3 == 120.5
    with pytest.raises(MedSADError, match="minimum lesion size"):
        params.min_lesion_mm3 = -3
    params.node.SetParameter("minLesionMm3", "lots")  # a scene edited by hand
    assert params.min_lesion_mm3 is None
    assert params.min_lesion_mean is None  # the model's calibrated minimum mean
    params.min_lesion_mean = 0
    assert params.min_lesion_mean == 0.0
    params.min_lesion_mean = 0.75
    assert params.min_lesion_mean == 0.75 and params.node.GetParameter("minLesionMean") == "0.75"
    for bad in (1.0, -0.2):
        with pytest.raises(MedSADError, match="minimum lesion mean"):
            params.min_lesion_mean = bad
    assert params.min_lesion_mean == 0.75
    params.node.SetParameter("minLesionMean", "2")  # a scene edited by hand
    assert params.min_lesion_mean is None
    assert params.profile == ""  # the model's own operating point
    params.profile = " site_b "
    assert params.profile == "site_b" and params.node.GetParameter("profile") == "site_b"
    for bad in ("a/b", "_x", "x" * 65):
        with pytest.raises(MedSADError, match="calibration profile"):
            params.profile = bad
    assert params.profile == "site_b"
    params.node.SetParameter("profile", "../etc")  # a scene edited by hand
    assert params.profile == ""


def test_parameter_node_round_trip_through_a_saved_scene(scene, local, tmp_path):
    volume = _volume(scene)
    logic = MedSADLogic(scene)
    result = logic.run(volume, local)
    outputs = logic.create_outputs(volume, result)
    params = MedSADParameters.get_or_create(scene)
    with params.modify():
        params.input_volume = volume
        params.backend = "local"
        params.checkpoint = local.checkpoint
        params.server_url = "http://127.0.0.1:8123"
        params.threshold = 0.35
        params.output_segmentation = outputs.segmentation
        params.output_table = outputs.table
    saved = params.as_dict()
    decision = logic.stored_decision(outputs.segmentation)
    assert "Last result" in decision and f"K={result.worst_slice}" in decision

    reloaded = _load_scene(_save_scene(scene, tmp_path))
    again = MedSADParameters.find(reloaded)
    assert again is not None and again.as_dict() == saved
    assert MedSADParameters.get_or_create(reloaded).node is again.node
    volume2, segmentation2, table2 = again.input_volume, again.output_segmentation, again.output_table
    assert (volume2.GetName(), segmentation2.GetName(), table2.GetName()) == (
        volume.GetName(),
        outputs.segmentation.GetName(),
        outputs.table.GetName(),
    )
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(volume2), slicer.util.arrayFromVolume(volume))
    np.testing.assert_array_equal(nodes.segment_array(reloaded, segmentation2, volume2), result.mask)
    logic2 = MedSADLogic(reloaded)
    assert logic2.worst_slice(table2) == result.worst_slice
    assert logic2.outputs_belong_to(table2, volume2) and logic2.outputs_belong_to(segmentation2, volume2)
    assert logic2.stored_decision(segmentation2) == decision
    assert again.ready()


# --------------------------------------------------------------------------- the calibrated decision


def test_the_decision_is_described_with_its_operating_point(scene, local):
    volume = _volume(scene)
    logic = MedSADLogic(scene)
    result = logic.run(volume, local)
    assert result.source == "default" and result.calibrated_threshold == 0.5 and result.can_rethreshold
    text = describe_decision(result)
    verdict = "ABNORMAL" if result.volume_abnormal else "normal"
    assert text.startswith(f"Volume {verdict}: score {result.volume_score:.3f}")
    assert f"threshold {result.volume_threshold:.3f}" in text and "not calibrated" in text
    assert f"lesion threshold {result.threshold:.2f}" in text
    n_lesions = result.info["n_lesions"]  # the mask's lesions, as the library counts them
    assert n_lesions == len(result.info["lesions"]) or n_lesions > 50
    assert ("No lesion remains" in text) if n_lesions == 0 else (f" {n_lesions} lesion" in text and " mm³" in text)
    outputs = logic.create_outputs(volume, result)
    logic.rethreshold(volume, result, 0.3, outputs)
    assert result.threshold == 0.3 and result.source == "default+override"
    assert "set by hand" in describe_decision(result)
    assert outputs.segmentation.GetAttribute("MedSAD.source") == "default+override"
    logic.rethreshold(volume, result, None, outputs)  # back to the calibrated threshold
    assert result.threshold == 0.5 and result.source == "default"
    # a server result keeps its mask and says so
    fixed = _known_result()
    fixed_outputs = logic.create_outputs(volume, fixed)
    assert logic.rethreshold(volume, fixed, 0.2, fixed_outputs) is fixed and fixed.threshold == 0.5
    assert "run again" in describe_decision(fixed)
    assert "mean probability" not in describe_decision(fixed)
    fixed.info["operating_point"]["min_lesion_mean"] = 0.8  # a calibrated confidence filter is said
    assert "lesions kept at a mean probability ≥ 0.80" in describe_decision(fixed)
    assert "Calibration warns" not in describe_decision(fixed) and "confidence filter" not in describe_decision(fixed)
    fixed.info["low_confidence"] = {
        "n_lesions": 1,
        "min_lesion_mean": 0.85,
        "lesions": [{"voxels": 1754, "volume_mm3": 14036.0, "slices": [40, 61], "mean_probability": 0.7891}],
    }
    assert (
        " The confidence filter hid 1 region under a mean probability of 0.85: the largest 14,036 mm³ (mean 0.79) "
        "on slices K=40–61; set Minimum lesion mean to 0 to see it." in describe_decision(fixed)
    )
    fixed.info["operating_point"]["warnings"] = ["validation holds 3 lesion(s): few", "pooled Dice 0.11 < 0.3"]
    assert (
        "Calibration warns: validation holds 3 lesion(s): few (and 1 more: see the model's calibration block)."
        in describe_decision(fixed)
    )
    # a scan unlike the training volumes is said, from a server's or the library's result JSON
    assert "unlike" not in describe_decision(fixed)
    summary = {"slice_scores": fixed.slice_scores, "operating_point": fixed.info["operating_point"]}
    familiarity = {"distance": 0.277, "threshold": 0.147, "familiar": False, "warning": "this scan is unlike theirs"}
    unfamiliar = MedSADResult.from_summary({**summary, "familiarity": familiarity}, fixed.mask, backend="server")
    assert unfamiliar.info["familiarity"] == familiarity
    assert " Warning: this scan is unlike theirs." in describe_decision(unfamiliar)
    familiar = MedSADResult.from_summary(
        {**summary, "familiarity": {**familiarity, "familiar": True, "warning": None}}, fixed.mask
    )
    assert "Warning:" not in describe_decision(familiar)


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


def test_the_shared_gui_helpers_import_without_the_slicer_application():
    """``MedSADLib.gui`` (settings and install dialogs, shared by the module and the effect)
    imports Qt only where it shows something."""
    from MedSADLib import gui

    assert gui.missing_modules(["json", "medsad_no_such_module"]) == ["medsad_no_such_module"]
    assert set(gui.LOCAL_PACKAGES) >= {"torch", "monai", "open_clip"} and "--no-deps" in gui.SERVER_REQUIREMENT
