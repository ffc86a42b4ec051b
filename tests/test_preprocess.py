"""The slice <-> model-input mapping gives exactly what MONAI's ``SpatialPad`` + ``Resize`` give.

``medsad_monai.data.preprocess`` runs the common case as plain torch calls (no ``MetaTensor``
per slice); every checkpoint trained before that change saw MONAI's transforms, so the two
must agree bit for bit, in both directions and for every shape class: a slice smaller than the
model's side, equal, larger (anti-aliased), odd and even padding, grey and 3-channel slices.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Resize, SpatialPad

from medsad_monai.data.preprocess import prepare_mask, prepare_slice, restore_slice


def _plain(x) -> torch.Tensor:
    return x.as_tensor() if isinstance(x, MetaTensor) else torch.as_tensor(x)


def _monai_slice(chw: torch.Tensor, size: int) -> torch.Tensor:
    side = max(chw.shape[1:])
    padded = SpatialPad((side, side), method="symmetric")(chw)
    return _plain(Resize((size, size), mode="bilinear", anti_aliasing=side > size)(padded)).float().clamp(0.0, 1.0)


def _monai_mask(mask: torch.Tensor, size: int) -> torch.Tensor:
    side = max(mask.shape)
    padded = SpatialPad((side, side), method="symmetric")(mask[None])
    return (_plain(Resize((size, size), mode="nearest")(padded)) > 0.5).float()


SHAPES = [(117, 95), (95, 117), (128, 128), (99, 98), (64, 37), (256, 200), (240, 240), (1, 5)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("channels", [0, 3])
def test_prepare_slice_equals_monais_pad_and_resize(shape, channels):
    rng = np.random.default_rng(sum(shape) + channels)
    image = rng.random(shape if not channels else (*shape, channels), dtype=np.float32)
    chw = torch.as_tensor(image)
    chw = chw[None].expand(3, -1, -1).contiguous() if not channels else chw.permute(2, 0, 1).contiguous()
    for size in (128, 224):
        ours, geometry = prepare_slice(image, size)
        assert ours.shape == (3, size, size) and ours.dtype == torch.float32
        assert not isinstance(ours, MetaTensor)
        assert torch.equal(ours, _monai_slice(chw, size)), (shape, channels, size)
        assert (geometry.height, geometry.width, geometry.side) == (*shape, max(shape))


@pytest.mark.parametrize("shape", SHAPES)
def test_prepare_mask_equals_monais_nearest_resize(shape):
    mask = (np.random.default_rng(sum(shape)).random(shape) > 0.7).astype(np.uint8)
    for size in (128, 224):
        ours = prepare_mask(mask, size)
        assert ours.shape == (1, size, size)
        assert torch.equal(ours, _monai_mask(torch.as_tensor(mask, dtype=torch.float32), size)), (shape, size)


@pytest.mark.parametrize("shape", SHAPES)
def test_restore_slice_equals_monais_resize_and_crop(shape):
    size = 128
    _, geometry = prepare_slice(np.zeros(shape, np.float32), size)
    output = torch.rand(2, size, size, generator=torch.Generator().manual_seed(sum(shape)))
    expected = _plain(Resize((geometry.side, geometry.side), mode="bilinear")(output))
    top, left = geometry.pad_top, geometry.pad_left
    expected = expected[:, top : top + geometry.height, left : left + geometry.width]
    ours = restore_slice(output, geometry)
    assert ours.shape == (2, *shape) and torch.equal(ours, expected)
    assert torch.equal(restore_slice(output[0], geometry), expected[0])  # a 2-D map too
    half = restore_slice(output[0].bfloat16(), geometry)  # a bf16 model's map comes back as float32
    assert half.dtype == torch.float32 and half.shape == shape


def test_bad_shapes_are_refused_clearly():
    with pytest.raises(ValueError, match="2-D slice"):
        prepare_slice(np.zeros((4, 4, 4, 4), np.float32), 64)
    with pytest.raises(ValueError, match="2-D mask"):
        prepare_mask(np.zeros((4, 4, 4), np.uint8), 64)


def _extent(image: torch.Tensor) -> tuple[int, int]:
    """Rows and columns the bright region of a (C, S, S) model input spans."""
    rows, cols = np.nonzero(image[0].numpy() > 0.5)
    return int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)


def _disc(shape: tuple[int, int], pixel_mm: tuple[float, float], radius_mm: float) -> np.ndarray:
    """A bright disc of ``radius_mm`` at the centre of a grid of ``pixel_mm`` pixels."""
    r = (np.arange(shape[0]) - (shape[0] - 1) / 2) * pixel_mm[0]
    c = (np.arange(shape[1]) - (shape[1] - 1) / 2) * pixel_mm[1]
    return ((r[:, None] ** 2 + c[None, :] ** 2) <= radius_mm**2).astype(np.float32)


def test_non_square_pixels_are_made_square_so_a_disc_stays_round():
    """An axial slice of a coronal acquisition: 1 mm across, 3 mm front to back. The model sees the
    disc round; the mask lands where the image's disc is; the inverse returns to the slice's grid."""
    from medsad_monai.data.preprocess import prepare_mask, prepare_slice, restore_slice, square_pixel_shape

    pixel_mm, shape = (1.0, 3.0), (90, 30)  # a 90 x 90 mm field of view
    disc = _disc(shape, pixel_mm, radius_mm=30.0)
    assert square_pixel_shape(*shape, pixel_mm) == (90, 90)
    assert square_pixel_shape(*shape, (1.0, 1.005)) == shape and square_pixel_shape(*shape, None) == shape
    image, geometry = prepare_slice(disc, 64, pixel_mm)
    rows, cols = _extent(image)
    assert abs(rows - cols) <= 2, (rows, cols)  # round (3x taller than wide without the resampling)
    squashed, _ = prepare_slice(disc, 64)
    assert _extent(squashed)[0] > 2.5 * _extent(squashed)[1]

    def disagreement(mask: torch.Tensor) -> float:
        return float((mask[0] != (image[0] > 0.5).float()).float().mean())

    assert disagreement(prepare_mask(disc > 0.5, 64, pixel_mm)) < 0.03  # edge pixels only
    assert disagreement(prepare_mask(disc > 0.5, 64)) > 0.15  # a mask not made square would miss it
    back = restore_slice(image[0], geometry)
    assert tuple(back.shape) == shape
    assert float((back.numpy() > 0.5).astype(np.float32).__ne__(disc).mean()) < 0.02
