"""The left-right mirror channel (``--mirror-channel``): the reflection, the slabs inference
feeds, and the training dataset giving the model the same channels (painted lesions included)."""

from __future__ import annotations

import numpy as np
import pytest

from medsad_monai.data.mirror import FOREGROUND_LEVEL, mirror_rows, reflection_sum, take_mirror_slab
from medsad_monai.data.volumes import take_slice


def _brute_mirror(array: np.ndarray, k: int) -> np.ndarray:
    out = np.zeros_like(array)
    for i in range(array.shape[0]):
        if 0 <= k - i < array.shape[0]:
            out[i] = array[k - i]
    return out


@pytest.mark.parametrize("k", [-4, 0, 7, 19, 21, 30, 38, 39, 45])
def test_mirror_rows_reflects_i_to_k_minus_i_with_background_outside(k):
    rng = np.random.default_rng(k + 10)
    volume = rng.random((20, 6, 4)).astype(np.float32)
    assert np.array_equal(mirror_rows(volume, k), _brute_mirror(volume, k))
    assert np.array_equal(mirror_rows(volume[:, :, 1], k), _brute_mirror(volume[:, :, 1], k))


def test_the_midline_is_the_foreground_centre_along_right_left():
    volume = np.zeros((30, 8, 5), np.float32)
    volume[6:17] = 0.6  # rows 6..16: centre 11 -> k = 22
    assert reflection_sum(volume) == 22
    assert np.array_equal(mirror_rows(volume, 22) > FOREGROUND_LEVEL, volume > FOREGROUND_LEVEL)  # maps onto itself
    volume[:, :, :] += 0.1  # background under the level does not move it
    assert reflection_sum(volume) == 22
    assert reflection_sum(np.zeros((9, 4, 4), np.float32)) == 8  # no foreground: the array's middle
    with pytest.raises(ValueError, match="3-D volume"):
        reflection_sum(np.zeros((9, 4), np.float32))


def test_a_one_sided_lesion_shows_in_the_mirror_on_the_other_side():
    """Axial and coronal slices: the mirror is the slice flipped about the midline (what slicing
    the reflected volume gives); sagittal slices: the slice on the other side of the midline."""
    volume = np.zeros((24, 10, 6), np.float32)
    volume[2:21] = 0.5  # symmetric head, rows 2..20: k = 22
    volume[4:7, 3:5, 2] = 0.9  # a lesion on one side only
    k = reflection_sum(volume)
    assert k == 22
    reflected = mirror_rows(volume, k)
    for axis in (0, 1, 2):
        for index in range(volume.shape[axis]):
            slab = take_mirror_slab(volume, axis, index, k)
            assert slab.shape == take_slice(volume, axis, index).shape + (3,)
            assert np.array_equal(slab[..., 0], take_slice(volume, axis, index))
            assert np.array_equal(slab[..., 2], slab[..., 0])
            assert np.array_equal(slab[..., 1], take_slice(reflected, axis, index))
    axial = take_mirror_slab(volume, 2, 2, k)
    assert axial[5, 4, 0] == pytest.approx(0.9) and axial[5, 4, 1] == pytest.approx(0.5)
    assert axial[22 - 5, 4, 1] == pytest.approx(0.9)  # the lesion, seen from the other side
    assert np.abs(axial[..., 0] - axial[..., 1]).max() == pytest.approx(0.4)  # only the lesion differs
    outside = take_mirror_slab(volume, 0, 0, 30)  # partner 30 lies outside the volume: background
    assert not outside[..., 1].any()


def test_the_training_dataset_feeds_the_channels_inference_feeds(tiny_volumes):
    """For an unpainted slice the dataset's image is ``prepare_slice`` of ``take_mirror_slab``
    of the normalised RAS view, exactly; a painted lesion shows in the mirror channel too."""
    from medsad_monai.data.layouts import read_layout
    from medsad_monai.data.preprocess import prepare_slice
    from medsad_monai.engine.datasets import _volume, pixel_mm, slice_dataset

    samples = read_layout(tiny_volumes, "volumes").samples[:12]
    plain = slice_dataset(samples, 64, train=False, intensity="foreground", mirror=True)
    for i in (0, 5, 11):
        s = samples[i]
        volume = _volume(str(s.image), "foreground")
        want, _ = prepare_slice(take_mirror_slab(volume, 2, s.slice_index, reflection_sum(volume)), 64, pixel_mm(s, 2))
        got = plain[i]["image"]
        assert got.shape == (3, 64, 64)
        np.testing.assert_allclose(got.numpy(), np.asarray(want), atol=1e-6)
        assert not np.allclose(got[0].numpy(), got[1].numpy())  # the mirror is not a copy
    normal = [s for s in samples if s.label == 0]
    painted = slice_dataset(
        normal, 64, train=True, synthetic_lesions=1.0, intensity="foreground", mirror=True, augment="paper", seed=3
    )
    checked = 0
    for i in range(len(normal)):
        item = painted[i]
        if float(item["mask"].sum()) == 0:
            continue
        s = normal[i]
        clean = _volume(str(s.image), "foreground")
        want_clean, _ = prepare_slice(
            take_mirror_slab(clean, 2, s.slice_index, reflection_sum(clean)), 64, pixel_mm(s, 2)
        )
        painted_here = np.abs(item["image"][0].numpy() - np.asarray(want_clean)[0]) > 1e-3
        mirrored_too = np.abs(item["image"][1].numpy() - np.asarray(want_clean)[1]) > 1e-3
        assert painted_here.any() and mirrored_too.any()  # the lesion is painted before the mirror is taken
        assert abs(int(painted_here.sum()) - int(mirrored_too.sum())) <= 0.5 * painted_here.sum() + 8
        checked += 1
    assert checked >= 1


def test_the_mirror_channel_refuses_what_it_cannot_mirror(tmp_path):
    from pathlib import Path

    from medsad_monai.data.layouts import read_layout
    from medsad_monai.engine.datasets import slice_dataset

    bmad = Path(__file__).resolve().parents[1] / "sample_data" / "bmad"
    images = read_layout(bmad).samples[:2]
    with pytest.raises(ValueError, match="needs volumes"):
        slice_dataset(images, 64, train=False, mirror=True)
    with pytest.raises(ValueError, match="pick one"):
        slice_dataset(images, 64, train=False, mirror=True, context=1)
