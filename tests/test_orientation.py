"""The RAS view (``medsad_monai.data.orientation``): the same scan stored in any voxel order gets
the same answer, mapped back to its own voxels; training cuts the same slices; checkpoints from
before the view keep the file's order."""

from __future__ import annotations

import itertools
import json

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import oblique_affine
from nibabel.orientations import axcodes2ornt, io_orientation, ornt_transform

from medsad_monai.checkpoint import orientation_of, read_checkpoint
from medsad_monai.data.layouts import volume_samples
from medsad_monai.data.orientation import Reorientation, reorientation
from medsad_monai.engine.inference import Predictor, infer_path, predict_file

#: voxel orders a converter may write: flipped, permuted (sagittal / coronal slices along k), both
CODES = [("L", "P", "S"), ("P", "S", "R"), ("S", "R", "A"), ("A", "I", "L"), ("I", "L", "P")]


def _oblique_head(tmp_path) -> nib.Nifti1Image:
    """A RAS volume (anisotropic, slightly oblique) with an asymmetric bright blob, so any wrong
    flip or permutation changes the answer."""
    rng = np.random.default_rng(0)
    shape = (40, 48, 14)
    x, y, z = np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing="ij")
    head = (x**2 + y**2 + (0.8 * z) ** 2) < 0.8
    image = np.where(head, 0.4 + 0.05 * rng.standard_normal(shape), 0.0)
    image[((x - 0.3) ** 2 + (y + 0.2) ** 2 < 0.05) & (z > -0.3) & (z < 0.5)] = 0.95
    return nib.Nifti1Image((image * 1000).astype(np.int16), oblique_affine(8.0, (0.9, 1.1, 3.0)))


def _stored_as(img: nib.Nifti1Image, codes: tuple[str, str, str]) -> nib.Nifti1Image:
    return img.as_reoriented(ornt_transform(io_orientation(img.affine), axcodes2ornt(codes)))


@pytest.mark.parametrize("codes", list(itertools.permutations("RAS")) + CODES)
def test_the_ras_view_is_nibabels_closest_canonical_and_maps_back(tmp_path, codes):
    """For every axis order and some flips: the view equals ``nib.as_closest_canonical``, mapping
    back restores the file's array, and per-slice lists come back in the file's slice order."""
    ras = _oblique_head(tmp_path)
    stored = _stored_as(ras, tuple(codes))
    array = np.asarray(stored.dataobj)
    view = Reorientation.from_affine(stored.affine)
    canonical = np.asarray(nib.as_closest_canonical(stored).dataobj)
    assert np.array_equal(view.to_ras(array), canonical) and np.array_equal(canonical, np.asarray(ras.dataobj))
    assert np.array_equal(view.to_file(view.to_ras(array)), array)
    axis = view.file_axis(2)
    sums = [float(np.take(array, k, axis=axis).sum()) for k in range(array.shape[axis])]
    assert view.slices_to_file([float(canonical[:, :, k].sum()) for k in range(canonical.shape[2])], 2) == sums
    assert view.spacing_to_ras(stored.header.get_zooms()) == pytest.approx(ras.header.get_zooms())
    assert reorientation(stored.affine, "file").identity and reorientation(None).identity
    with pytest.raises(ValueError, match="orientation 'LPS'"):
        reorientation(stored.affine, "LPS")


def test_the_same_scan_in_any_voxel_order_gets_the_same_answer(tiny_checkpoint, tmp_path):
    """``medsad infer`` on one scan written RAS and in five other voxel orders: the masks are the
    same voxels of the world (each in its file's order and geometry), the slice scores the same
    list (in each file's slice order, along its axial axis), the volume score and lesions the same."""
    predictor = Predictor.from_checkpoint(tiny_checkpoint, device="cpu", precision="fp32")
    assert predictor.orientation == "ras"
    ras = _oblique_head(tmp_path)
    nib.save(ras, tmp_path / "ras.nii.gz")
    reference = predict_file(predictor, tmp_path / "ras.nii.gz")
    assert reference.axis == 2 and reference.mask.any()
    for codes in CODES:
        name = "".join(codes)
        stored = _stored_as(ras, codes)
        nib.save(stored, tmp_path / f"{name}.nii.gz")
        (summary,) = infer_path(predictor, tmp_path / f"{name}.nii.gz", tmp_path / "out")
        mask = nib.load(summary["mask"])
        assert mask.shape == stored.shape and np.allclose(mask.affine, stored.affine), name
        back = np.asarray(nib.as_closest_canonical(mask).dataobj)
        assert np.array_equal(back, reference.mask), name  # the same world voxels
        view = Reorientation.from_affine(stored.affine)
        scores = json.loads((tmp_path / "out" / f"{name}_scores.json").read_text())
        assert scores["slice_axis"] == view.file_axis(2), name
        assert scores["slice_scores"] == pytest.approx(view.slices_to_file(reference.slice_scores, 2), abs=1e-6), name
        assert scores["volume_score"] == pytest.approx(reference.volume_score, abs=1e-6)
        assert scores["n_lesions"] == reference.lesions[0]


def test_a_checkpoint_from_before_the_ras_view_slices_the_files_order(tiny_checkpoint, tmp_path):
    """No ``orientation`` key: the model was trained on the files' own voxel order and keeps it
    (the result's axis is the one asked for, in the file)."""
    payload = read_checkpoint(tiny_checkpoint)
    assert payload["orientation"] == "ras"
    del payload["orientation"]
    old = tmp_path / "old.pt"
    torch.save(payload, old)
    assert orientation_of(read_checkpoint(old)) == "file"
    predictor = Predictor.from_checkpoint(old, device="cpu", precision="fp32")
    assert predictor.orientation == "file"
    stored = _stored_as(_oblique_head(tmp_path), ("P", "S", "R"))
    nib.save(stored, tmp_path / "psr.nii.gz")
    result = predict_file(predictor, tmp_path / "psr.nii.gz")
    assert result.axis == 2 and len(result.slice_scores) == stored.shape[2]
    payload["orientation"] = "sideways"
    torch.save(payload, old)
    with pytest.raises(ValueError, match="unknown orientation 'sideways'"):
        Predictor.from_checkpoint(old, device="cpu")


def test_training_cuts_the_slices_of_the_ras_view(tmp_path):
    """The per-slice labels of a volume stored sagittally are those of its axial (RAS view) slices,
    as the slices training loads: slice k is abnormal exactly where the RAS label has lesion on k."""
    from medsad_monai.engine.datasets import load_sample

    ras = _oblique_head(tmp_path)
    label = nib.Nifti1Image((np.asarray(ras.dataobj) > 900).astype(np.uint8), ras.affine)
    per_slice = np.asarray(label.dataobj).any(axis=(0, 1))
    assert per_slice.any() and not per_slice.all()
    for codes in (("R", "A", "S"), ("S", "R", "A")):
        name = "".join(codes)
        nib.save(_stored_as(ras, codes), tmp_path / f"{name}.nii.gz")
        nib.save(_stored_as(label, codes), tmp_path / f"{name}_label.nii.gz")
        samples = volume_samples(tmp_path / f"{name}.nii.gz", tmp_path / f"{name}_label.nii.gz", name)
        expected = per_slice.astype(int).tolist()
        assert [s.label for s in samples] == expected, name
        image, mask = load_sample(samples[6], intensity="percentile")
        assert image.shape == ras.shape[:2] and np.array_equal(mask, np.asarray(label.dataobj)[:, :, 6])
