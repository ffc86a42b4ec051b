"""DICOM series as ``medsad infer`` input: real series written by SimpleITK (GDCM), read back
through MONAI's ITKReader, against the same voxels as NIfTI."""

from __future__ import annotations

import contextlib
import json
import locale
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medsad_monai.cli import main
from medsad_monai.data.dicom import find_dicom_series, load_dicom_series
from medsad_monai.data.volumes import load_volume

sitk = pytest.importorskip("SimpleITK")


def write_dicom_series(
    array: np.ndarray,
    affine: np.ndarray,
    folder: Path,
    series_number: int = 1,
    description: str = "T1",
    skip: tuple[int, ...] = (),
) -> None:
    """An (I, J, K) array with a voxel-to-RAS affine as a DICOM MR series, one file per K slice
    (``skip``: slices left out), with the position and orientation tags a scanner writes."""
    folder.mkdir(parents=True, exist_ok=True)
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ np.asarray(affine, float)
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    direction = lps[:3, :3] / spacing
    image = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(array).transpose(2, 1, 0)).astype(np.int16))
    image.SetSpacing([float(s) for s in spacing])
    image.SetOrigin([float(o) for o in lps[:3, 3]])
    image.SetDirection([float(v) for v in direction.flatten()])
    uid = f"1.2.826.0.1.3680043.2.1125.{time.time_ns() % 10**12}.{series_number}"
    orientation = "\\".join(f"{v:.6f}" for v in (*direction[:, 0], *direction[:, 1]))
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    with _locale_kept():
        _write_slices(image, writer, folder, uid, series_number, description, orientation, spacing, skip)


@contextlib.contextmanager
def _locale_kept():
    """GDCM's writer sets the process locale to "C" (text files then default to ASCII in every
    later test of this process): put it back."""
    saved = locale.setlocale(locale.LC_ALL)
    try:
        yield
    finally:
        locale.setlocale(locale.LC_ALL, saved)


def _write_slices(image, writer, folder, uid, series_number, description, orientation, spacing, skip) -> None:
    for k in range(image.GetDepth()):
        if k in skip:
            continue
        piece = image[:, :, k]
        position = "\\".join(f"{v:.6f}" for v in image.TransformIndexToPhysicalPoint((0, 0, k)))
        for tag, value in (
            ("0008|0060", "MR"),
            ("0020|000d", "1.2.826.0.1.3680043.2.1125.1"),
            ("0020|000e", uid),
            ("0020|0011", str(series_number)),
            ("0008|103e", description),
            ("0020|0037", orientation),
            ("0020|0032", position),
            ("0020|0013", str(k + 1)),
            ("0018|0050", f"{spacing[2]:.6f}"),
            ("0008|0018", f"{uid}.{k + 1}"),
        ):
            piece.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"IM{series_number:03d}_{k:04d}.dcm"))
        writer.Execute(piece)


def _on_nifti_grid(array: np.ndarray, dicom_affine: np.ndarray, nifti_affine: np.ndarray) -> np.ndarray:
    """A DICOM-grid array on the NIfTI grid of the same voxels (ITK may run K the other way)."""
    transform = np.linalg.inv(nifti_affine) @ dicom_affine
    np.testing.assert_allclose(np.abs(transform[:3, :3]), np.eye(3), atol=1e-4)  # same axes, maybe flipped
    flips = tuple(a for a in range(3) if transform[a, a] < 0)
    return np.flip(array, axis=flips) if flips else array


def test_a_dicom_series_is_inferred_as_the_same_voxels_in_nifti(tiny_checkpoint, tiny_volumes, tmp_path, capsys):
    """Oblique, anisotropic voxels: the series reads as the NIfTI's voxels on the same world grid,
    and ``medsad infer`` on the series folder, on one of its files and on the NIfTI give one
    answer (mask in world space, slice scores, decisions); the series' mask is NIfTI."""
    nifti = sorted((tiny_volumes / "imagesTs").glob("*.nii.gz"))[0]
    voxels, geometry = load_volume(nifti)
    series_dir = tmp_path / "patient" / "T1_AX"
    write_dicom_series(voxels, geometry.affine, series_dir)

    encoding = locale.getpreferredencoding(False)
    (series,) = find_dicom_series(series_dir)
    assert (series.name, series.description, len(series.files)) == ("T1_AX", "T1", voxels.shape[2])
    read, read_geometry = load_dicom_series(series)
    np.testing.assert_array_equal(_on_nifti_grid(read, read_geometry.affine, geometry.affine), voxels)

    args = ["--ckpt", str(tiny_checkpoint), "--min-lesion-mm3", "0", "--threshold", "0.4"]
    assert main(["infer", *args, "--input", str(nifti), "--out", str(tmp_path / "from_nifti")]) == 0
    for source, out in ((series_dir, "from_folder"), (Path(series.files[3]), "from_file")):
        assert main(["infer", *args, "--input", str(source), "--out", str(tmp_path / out)]) == 0
        mask = nib.load(tmp_path / out / "T1_AX_mask.nii.gz")
        reference = nib.load(tmp_path / "from_nifti" / nifti.name.replace(".nii.gz", "_mask.nii.gz"))
        np.testing.assert_allclose(mask.affine, read_geometry.affine, atol=1e-4)  # the series' own geometry
        assert int(mask.header["sform_code"]) == 1
        on_grid = _on_nifti_grid(np.asarray(mask.dataobj), mask.affine, reference.affine)
        np.testing.assert_array_equal(on_grid, np.asarray(reference.dataobj))
        assert np.asarray(reference.dataobj).any()  # an answer with lesion voxels, not two empty masks
        got = json.loads((tmp_path / out / "T1_AX_scores.json").read_text())
        want = json.loads((tmp_path / "from_nifti" / nifti.name.replace(".nii.gz", "_scores.json")).read_text())
        assert got["input"] == str(series_dir) and got["dicom_series"]["files"] == voxels.shape[2]
        assert got["slice_axis"] == want["slice_axis"] == 2
        k_flipped = (np.linalg.inv(reference.affine) @ mask.affine)[2, 2] < 0
        scores = got["slice_scores"][::-1] if k_flipped else got["slice_scores"]
        np.testing.assert_allclose(scores, want["slice_scores"], atol=1e-6)
        for key in ("volume_score", "volume_abnormal", "lesion_voxels", "n_lesions"):
            assert got[key] == pytest.approx(want[key], abs=1e-6), key
    assert locale.getpreferredencoding(False) == encoding  # reading DICOM leaves the process's text encoding alone
    # the web viewer opens the series' scores file (input: the folder) and shows what the NIfTI's shows
    from web_viewer.data import load_case, slice_rgb

    from_dicom = load_case(series_dir, tmp_path / "from_folder" / "T1_AX_mask.nii.gz", got)
    stem = nifti.name.replace(".nii.gz", "")
    from_nifti = load_case(nifti, tmp_path / "from_nifti" / f"{stem}_mask.nii.gz", want)
    n = from_nifti.n_slices
    for k in range(n):
        np.testing.assert_array_equal(slice_rgb(from_dicom, n - 1 - k if k_flipped else k), slice_rgb(from_nifti, k))
    capsys.readouterr()


def test_every_series_of_a_folder_is_one_volume_and_bad_series_are_refused(tiny_checkpoint, tmp_path, capsys):
    rng = np.random.default_rng(0)
    affine = np.diag([0.9, 0.9, 3.0, 1.0])
    voxels = (rng.random((40, 48, 8)) * 300).astype(np.int16)
    folder = tmp_path / "study"
    write_dicom_series(voxels, affine, folder, series_number=3, description="T1 axial")
    write_dicom_series(voxels[::-1], affine, folder, series_number=7, description="FLAIR")
    assert [s.name for s in find_dicom_series(folder)] == ["study_s3", "study_s7"]
    out = tmp_path / "pred"
    assert main(["infer", "--ckpt", str(tiny_checkpoint), "--input", str(folder), "--out", str(out)]) == 0
    written = sorted(p.name for p in out.iterdir())
    assert written == ["study_s3_mask.nii.gz", "study_s3_scores.json", "study_s7_mask.nii.gz", "study_s7_scores.json"]
    assert json.loads((out / "study_s7_scores.json").read_text())["dicom_series"]["description"] == "FLAIR"

    # a missing slice: refused with a message, nothing written, the files untouched
    gap = tmp_path / "gap"
    write_dicom_series(voxels, affine, gap, skip=(4,))
    before = {p.name: p.read_bytes() for p in gap.iterdir()}
    assert main(["infer", "--ckpt", str(tiny_checkpoint), "--input", str(gap), "--out", str(tmp_path / "gap_out")]) == 2
    err = capsys.readouterr().err
    assert "not evenly spaced" in err and "Traceback" not in err
    assert not any((tmp_path / "gap_out").glob("*_mask.nii.gz"))
    assert {p.name: p.read_bytes() for p in gap.iterdir()} == before
    # text named .dcm: not DICOM, so an unsupported input
    fake = tmp_path / "fake" / "IM0001.dcm"
    fake.parent.mkdir()
    fake.write_text("not a scan")
    assert main(["infer", "--ckpt", str(tiny_checkpoint), "--input", str(fake), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "unsupported input" in err and "DICOM series" in err and "Traceback" not in err
    assert (
        main(["infer", "--ckpt", str(tiny_checkpoint), "--input", str(fake.parent), "--out", str(tmp_path / "x")]) == 2
    )
    assert "no NIfTI/NRRD volumes, PNG/JPG images or DICOM series" in capsys.readouterr().err


def test_odd_dicom_inputs_work_or_fail_with_one_message(tiny_checkpoint, tmp_path, capsys):
    """One slice (a 2-D image: its slice thickness is its extent), a colour secondary capture and a
    truncated file, each alone in its folder."""
    rng = np.random.default_rng(0)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    one = sitk.GetImageFromArray((rng.random((48, 40)) * 300).astype(np.int16))
    one.SetSpacing((0.8, 0.8))
    colour = sitk.GetImageFromArray((rng.random((48, 40, 3)) * 255).astype(np.uint8), isVector=True)
    tags = {"0020|0013": "1", "0020|0032": "0\\0\\0", "0020|0037": "1\\0\\0\\0\\1\\0"}
    with _locale_kept():
        for image, folder, extra in (
            (one, "single", {"0008|0060": "MR", "0020|000e": "1.2.826.0.1.3680043.2.1125.7.1", "0018|0050": "3"}),
            (colour, "colour", {"0008|0060": "OT", "0020|000e": "1.2.826.0.1.3680043.2.1125.7.2"}),
        ):
            for tag, value in {**tags, **extra}.items():
                image.SetMetaData(tag, value)
            (tmp_path / folder).mkdir()
            writer.SetFileName(str(tmp_path / folder / "IM0001.dcm"))
            writer.Execute(image)
    (tmp_path / "truncated").mkdir()
    (tmp_path / "truncated" / "IM0001.dcm").write_bytes((tmp_path / "single" / "IM0001.dcm").read_bytes()[:400])

    def infer(folder: str) -> tuple[int, str]:
        code = main(
            [
                "infer",
                "--ckpt",
                str(tiny_checkpoint),
                "--input",
                str(tmp_path / folder),
                "--out",
                str(tmp_path / f"{folder}_out"),
            ]
        )
        err = capsys.readouterr().err
        assert "Traceback" not in err, folder
        return code, err

    assert infer("single")[0] == 0
    mask = nib.load(tmp_path / "single_out" / "single_mask.nii.gz")
    assert mask.shape == (40, 48, 1) and np.allclose(np.abs(np.diag(mask.affine)[:3]), (0.8, 0.8, 3.0))
    code, err = infer("colour")
    assert code == 2 and "colour (multi-component) images are not supported" in err
    code, err = infer("truncated")
    assert code == 2 and "IM0001.dcm" in err and "no readable image series" in err
    assert "no NIfTI/NRRD volumes, PNG/JPG images or DICOM series" in err


def test_the_mask_as_a_dicom_seg_references_its_series(tiny_checkpoint, tiny_volumes, tmp_path, capsys):
    """``--dicom-seg``: a SEG of the *Lesion* segment that references the source series and, read
    back with pydicom-seg, covers the NIfTI mask's voxels; none for a result without lesion voxels."""
    pydicom = pytest.importorskip("pydicom")
    pydicom_seg = pytest.importorskip("pydicom_seg")
    nifti = sorted((tiny_volumes / "imagesTs").glob("*.nii.gz"))[0]
    voxels, geometry = load_volume(nifti)
    series_dir = tmp_path / "T1_AX"
    write_dicom_series(voxels, geometry.affine, series_dir)
    source_uid = pydicom.dcmread(next(series_dir.iterdir()), stop_before_pixels=True).SeriesInstanceUID
    out = tmp_path / "pred"
    args = ["infer", "--ckpt", str(tiny_checkpoint), "--input", str(series_dir), "--out", str(out), "--dicom-seg"]
    assert main([*args, "--min-lesion-mm3", "0", "--threshold", "0.4"]) == 0
    scores = json.loads((out / "T1_AX_scores.json").read_text())
    assert scores["dicom_seg"] == str(out / "T1_AX_seg.dcm") and scores["lesion_voxels"] > 0
    seg = pydicom.dcmread(out / "T1_AX_seg.dcm")
    assert seg.Modality == "SEG" and seg.ReferencedSeriesSequence[0].SeriesInstanceUID == source_uid
    assert seg.SegmentSequence[0].SegmentLabel == "Lesion" and seg.SeriesInstanceUID != source_uid
    segment = pydicom_seg.SegmentReader().read(seg).segment_image(1)  # only the frames with lesion voxels
    mask = nib.load(out / "T1_AX_mask.nii.gz")
    reference = sitk.ReadImage(str(out / "T1_AX_mask.nii.gz"))
    on_grid = sitk.Resample(segment, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(on_grid).transpose(2, 1, 0), np.asarray(mask.dataobj))
    # no lesion voxels: no SEG, and the scores say so
    assert main([*args, "--threshold", "0.999"]) == 0
    scores = json.loads((out / "T1_AX_scores.json").read_text())
    assert scores["lesion_voxels"] == 0 and scores["dicom_seg"] is None
    assert sorted(p.name for p in out.iterdir()) == ["T1_AX_mask.nii.gz", "T1_AX_scores.json", "T1_AX_seg.dcm"]
    capsys.readouterr()


def test_the_familiarity_survey_names_each_series_and_measures_what_infer_measures(
    tiny_checkpoint, tiny_volumes, tmp_path, capsys
):
    """``medsad familiarity`` on a folder of DICOM series: one row per series (its folder, output
    name and description, as ``medsad infer`` records them), the distance ``infer`` reports, and a
    series that cannot be read listed as an error while the others are still surveyed."""
    from conftest import with_familiarity_reference

    training = sorted((tiny_volumes / "imagesTr").glob("*.nii.gz"))
    ckpt = with_familiarity_reference(tiny_checkpoint, training, tmp_path / "model.pt")
    rng = np.random.default_rng(0)
    affine = np.diag([0.9, 0.9, 3.0, 1.0])
    voxels = (rng.random((40, 48, 8)) * 300).astype(np.int16)
    folder = tmp_path / "study"
    write_dicom_series(voxels, affine, folder, series_number=3, description="T1 axial")
    write_dicom_series(voxels[::-1] // 2, affine, folder, series_number=7, description="FLAIR")
    write_dicom_series(voxels, affine, folder, series_number=9, description="broken", skip=(4,))
    out = tmp_path / "pred"
    assert main(["infer", "--ckpt", str(ckpt), "--input", str(folder), "--out", str(out)]) == 2  # the broken one
    assert main(["familiarity", "--ckpt", str(ckpt), "--input", str(folder), "--out", str(tmp_path / "survey")]) == 0
    printed = capsys.readouterr().out
    rows = {r["name"]: r for r in json.loads((tmp_path / "survey" / "familiarity.json").read_text())["inputs"]}
    assert set(rows) == {"study_s3", "study_s7", "study_s9"}
    assert rows["study_s7"]["input"] == str(folder) and rows["study_s7"]["dicom_series"]["description"] == "FLAIR"
    assert "not evenly spaced" in rows["study_s9"]["error"] and rows["study_s9"]["familiar"] is None
    assert f"{folder} (DICOM series study_s9): error: " in printed and "1 could not be read" in printed
    for name in ("study_s3", "study_s7"):  # what `medsad infer` reports for the same series
        scores = json.loads((out / f"{name}_scores.json").read_text())
        assert rows[name]["distance"] == scores["familiarity"]["distance"]
        assert rows[name]["familiar"] == scores["familiarity"]["familiar"]
        assert f"{folder} (DICOM series {name}): distance={rows[name]['distance']:.3f}" in printed
