"""The one inference path: geometry kept, scores reported, background skipped, bad input refused."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch

from medsad_monai.data.volumes import load_volume, read_volume_header, save_volume_like
from medsad_monai.engine.inference import InferenceCancelled, Predictor, infer_path
from medsad_monai.networks import MedSADCLIP


@pytest.fixture(scope="module")
def predictor():
    from medsad_monai.configs import load_preset

    torch.manual_seed(0)
    return Predictor(MedSADCLIP(load_preset("tiny", image_size=64)), batch_size=4, threshold=0.5, device="cpu")


def _volume_with_background(rng):
    vol = np.zeros((30, 36, 9), np.float32)
    vol[5:25, 6:30, 2:7] = 0.5 + 0.1 * rng.random((20, 24, 5))
    return vol


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd"])
def test_mask_keeps_exact_input_geometry_and_format(predictor, tiny_volumes, tmp_path, suffix):
    src = sorted((tiny_volumes / "imagesTs").glob("*.nii.gz"))[0]
    volume = tmp_path / "in" / f"scan{suffix}"
    volume.parent.mkdir()
    array, _ = load_volume(src)
    save_volume_like(array, src, volume)  # same oblique, anisotropic geometry in either format
    results = infer_path(predictor, volume, tmp_path / "out")
    mask_path = tmp_path / "out" / f"scan_mask{suffix}"
    assert results[0]["mask"] == str(mask_path)
    in_shape, in_geom = read_volume_header(volume)
    out_shape, out_geom = read_volume_header(mask_path)
    assert out_shape == in_shape
    np.testing.assert_allclose(out_geom.affine, in_geom.affine, atol=1e-5)
    assert not np.allclose(np.abs(in_geom.direction), np.eye(3))  # really oblique
    scores = json.loads((tmp_path / "out" / "scan_scores.json").read_text())
    assert len(scores["slice_scores"]) == in_shape[2]
    assert scores["worst_slice"] == int(np.argmax(scores["slice_scores"]))
    assert scores["volume_score"] == pytest.approx(max(scores["slice_scores"]), abs=1e-6)
    assert sorted(p.name for p in volume.parent.iterdir()) == [volume.name]  # input folder untouched


def test_background_slices_are_skipped_unless_asked(predictor):
    vol = _volume_with_background(np.random.default_rng(0))
    skipping = predictor.predict_volume(vol, axis=2)
    assert skipping.skipped == [True, True, False, False, False, False, False, True, True]
    assert all(skipping.slice_scores[i] == 0.0 for i in (0, 1, 7, 8))
    assert not skipping.probability[..., 0].any()
    full = predictor.predict_volume(vol, axis=2, skip_background=False)
    assert not any(full.skipped)
    np.testing.assert_allclose(full.slice_scores[2:7], skipping.slice_scores[2:7], atol=1e-5)


def test_batch_size_does_not_change_results(predictor):
    vol = _volume_with_background(np.random.default_rng(1))
    a = predictor.predict_volume(vol, axis=0)
    predictor.batch_size = 1
    try:
        b = predictor.predict_volume(vol, axis=0)
    finally:
        predictor.batch_size = 4
    np.testing.assert_allclose(a.slice_scores, b.slice_scores, atol=1e-5)
    np.testing.assert_allclose(a.probability, b.probability, atol=1e-5)


def test_progress_is_reported_and_cancel_stops(predictor):
    vol = _volume_with_background(np.random.default_rng(2))
    seen = []
    predictor.predict_volume(vol, axis=2, progress=lambda done, total: seen.append((done, total)))
    assert seen[-1] == (5, 5)
    with pytest.raises(InferenceCancelled):
        predictor.predict_volume(vol, axis=2, cancel=lambda: True)


def test_png_input_gives_png_mask_of_the_same_size(predictor, tmp_path):
    from PIL import Image

    img = (np.random.default_rng(0).random((50, 70)) * 255).astype(np.uint8)
    Image.fromarray(img).save(tmp_path / "x.png")
    results = infer_path(predictor, tmp_path / "x.png", tmp_path / "out")
    mask = np.asarray(Image.open(results[0]["mask"]))
    assert mask.shape == (50, 70)
    assert set(np.unique(mask)) <= {0, 255}
    assert results[0]["slice_scores"] == [pytest.approx(results[0]["volume_score"])]


def test_bad_volumes_are_refused_clearly(predictor, tmp_path):
    with pytest.raises(ValueError, match="NaN/inf"):
        predictor.predict_volume(np.full((8, 8, 3), np.nan, np.float32))
    with pytest.raises(ValueError, match="3-D"):
        predictor.predict_volume(np.zeros((8, 8), np.float32))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        infer_path(predictor, tmp_path / "nope.nii.gz", tmp_path / "out")
    four_d = tmp_path / "4d.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 3, 2), np.float32), np.eye(4)), four_d)
    with pytest.raises(ValueError, match="4d.nii.gz"):
        infer_path(predictor, four_d, tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no NIfTI/NRRD volumes"):
        infer_path(predictor, tmp_path / "empty", tmp_path / "out")


def test_a_one_slice_volume_is_inferred_with_its_geometry(predictor, tmp_path):
    """nnU-Net stores 2-D images as (x, y, 1) NIfTI: one slice is a valid input, and its mask keeps
    the input's geometry; a volume whose slices are lines is refused by name."""
    rng = np.random.default_rng(0)
    affine = np.diag([0.7, 0.7, 3.0, 1.0])
    affine[:3, 3] = [-20.0, 15.0, 42.0]
    one = tmp_path / "one.nii.gz"
    nib.save(nib.Nifti1Image(_volume_with_background(rng)[:, :, 4:5], affine), one)
    result = infer_path(predictor, one, tmp_path / "out")[0]
    mask = nib.load(result["mask"])
    assert mask.shape == (30, 36, 1) and np.allclose(mask.affine, affine)
    assert len(result["slice_scores"]) == 1 and result["worst_slice"] == 0
    line = tmp_path / "line.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((16, 1, 4), np.float32), np.eye(4)), line)
    with pytest.raises(ValueError, match="line.nii.gz.*lines, not images"):
        infer_path(predictor, line, tmp_path / "out2")


def test_infer_shows_a_slice_progress_bar_on_a_terminal(tiny_checkpoint, tiny_volumes, tmp_path, monkeypatch, capsys):
    """On a terminal ``medsad infer`` shows how far one volume has got (slices); in a log or a
    pipe nothing is drawn."""
    import re
    import sys

    from medsad_monai.engine.inference import Predictor, infer_path

    predictor = Predictor.from_checkpoint(tiny_checkpoint, batch_size=2)
    volume = sorted((tiny_volumes / "imagesTs").glob("*.nii.gz"))[0]
    bar = re.compile(r"\d+/\d+ \[.*slice")  # tqdm's "8/10 [00:01<00:00, 6.5slice/s]" (logs may be on stderr too)
    infer_path(predictor, volume, tmp_path / "piped")
    assert not bar.search(capsys.readouterr().err)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    infer_path(predictor, volume, tmp_path / "terminal")
    err = capsys.readouterr().err
    assert bar.search(err) and volume.name in err


def test_training_and_inference_make_non_square_pixels_square_alike(tiny_checkpoint, tmp_path):
    """Axial slices of 1 x 3 mm pixels: the model input of a training slice (slice_dataset) and of
    the same slice at inference (predict_volume with the file's spacing) are the same picture, and
    a disc of the scan is round in it."""
    import nibabel as nib

    from medsad_monai.data.layouts import Sample
    from medsad_monai.engine.datasets import slice_dataset
    from medsad_monai.engine.inference import Predictor

    r = (np.arange(60) - 29.5) * 1.0
    c = (np.arange(20) - 9.5) * 3.0
    disc = ((r[:, None] ** 2 + c[None, :] ** 2) <= 25.0**2).astype(np.float32)
    volume = np.repeat((100 + 400 * disc)[..., None], 4, axis=2).astype(np.int16)
    affine = np.diag([1.0, 3.0, 2.0, 1.0])
    nib.save(nib.Nifti1Image(volume, affine), tmp_path / "scan.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros(volume.shape, np.uint8), affine), tmp_path / "label.nii.gz")

    predictor = Predictor.from_checkpoint(tiny_checkpoint, batch_size=4, precision="fp32")
    seen: list = []  # the model's input batches
    forward = predictor.model.forward
    predictor.model.forward = lambda x, *a, **k: (seen.append(x.detach().clone()), forward(x, *a, **k))[1]
    predictor.predict_volume(
        predictor.normalize_volume(volume), skip_background=False, spacing=(1.0, 3.0, 2.0), affine=affine
    )
    sample = Sample(tmp_path / "scan.nii.gz", (tmp_path / "label.nii.gz",), 0, "scan", None, slice_index=2)
    size = predictor.model.image_size
    item = slice_dataset([sample], size, train=False, intensity=predictor.intensity)[0]
    trained_on = predictor.model.normalize(item["image"][None])[0]
    np.testing.assert_allclose(seen[0][2].numpy(), trained_on.numpy(), atol=1e-5)
    rows, cols = np.nonzero(item["image"][0].numpy() > item["image"][0].numpy().mean())
    height, width = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
    assert abs(height - width) <= 0.1 * size, (height, width)  # round, not 3x taller than wide
