"""Reading the files a client sends or stores: images to infer/score, uploads, labels.

Every problem with a file's content is an :class:`~lib.errors.InputError` (HTTP 422) naming the
file; reading happens before the model runs, so an error while the model runs is never blamed on
the input. :func:`predict` then runs :mod:`medsad_monai`'s predictor on what was read: the same two steps
(``read_input``, ``predict_input``) as ``medsad infer``.
"""

from __future__ import annotations

from pathlib import Path

from medsad_monai.data.layouts import IMAGE_SUFFIXES, load_image_2d, load_mask_2d
from medsad_monai.data.volumes import (
    check_label_matches,
    load_volume,
    read_volume_header,
    volume_suffix,
)
from medsad_monai.engine.inference import (
    ImageResult,
    InputImage,
    Predictor,
    VolumeResult,
    predict_input,
    read_input,
)

from .errors import InputError, as_input_error

_UNSUPPORTED = "unsupported file type; use .nii/.nii.gz/.nrrd volumes or .png/.jpg images"


def read_image(path: str | Path, axis: int) -> InputImage:
    """Read a NIfTI/NRRD volume (to be sliced along ``axis``) or a PNG/JPG image
    (:func:`medsad_monai.engine.inference.read_input`).

    Raises:
        InputError: naming the file: unsupported type, unreadable or truncated, not 3-D, NaN/inf
            voxels, slices along ``axis`` that are lines (one voxel wide).
    """
    with as_input_error():
        return read_input(path, axis)


def predict(
    predictor: Predictor, image: InputImage, axis: int, skip_background: bool = True
) -> VolumeResult | ImageResult:
    """The predictor's result for a read image (errors here are the server's, not the input's)."""
    return predict_input(predictor, image, axis, skip_background)


def check_image_file(path: str | Path, name: str) -> None:
    """Raise :class:`InputError` naming ``name`` if the file is not a usable image."""
    path = Path(path)
    if volume_suffix(path) is not None:
        with as_input_error():
            array, _ = load_volume(path)  # unreadable, truncated, 4-D, NaN -> ValueError
        if sorted(array.shape)[1] < 2:
            raise InputError(f"{name}: volume of shape {array.shape} is a line, not an image")
    elif path.suffix.lower() in IMAGE_SUFFIXES:
        with as_input_error():
            load_image_2d(path)
    else:
        raise InputError(f"{name}: {_UNSUPPORTED}")


def check_label_file(image: str | Path, label: str | Path, name: str) -> None:
    """Raise :class:`InputError` if ``label`` does not fit ``image`` (shape and geometry)."""
    image, label = Path(image), Path(label)
    if volume_suffix(image) is not None:
        if volume_suffix(label) is None:
            raise InputError(f"{name}: the label of a volume must be a .nii/.nii.gz/.nrrd volume")
        with as_input_error():
            shape, geom = read_volume_header(image)
            array, label_geom = load_volume(label)
            check_label_matches(geom, label_geom, shape, array.shape, name)
    else:
        with as_input_error():
            height, width = load_image_2d(image).shape[:2]
            load_mask_2d([label], (height, width))  # raises on another size
