"""A local datastore that checks uploads before it stores them: a label must lie on exactly its
image's voxel grid, an image must be a readable 3-D volume or 2-D picture without NaN voxels.
A rejected upload leaves the datastore untouched (answered with HTTP 4xx)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from monailabel.datastore.local import LocalDatastore

from medsad_monai.data.layouts import IMAGE_SUFFIXES, load_image_2d, load_mask_2d
from medsad_monai.data.volumes import check_label_matches, load_volume, read_volume_header, volume_suffix

from .errors import as_http_errors

logger = logging.getLogger(__name__)


def check_image_file(path: str | Path, name: str) -> None:
    """Raise ValueError naming ``name`` if the file is not a usable image."""
    path = Path(path)
    if volume_suffix(path) is not None:
        array, _ = load_volume(path)  # unreadable, truncated, 4-D, NaN -> ValueError
        if min(array.shape) < 2:
            raise ValueError(f"{name}: volume of shape {array.shape} has a single slice; upload it as a 2-D image")
    elif path.suffix.lower() in IMAGE_SUFFIXES:
        load_image_2d(path)
    else:
        raise ValueError(f"{name}: unsupported file type; use .nii/.nii.gz/.nrrd volumes or .png/.jpg images")


def check_label_file(image: str | Path, label: str | Path, name: str) -> None:
    """Raise ValueError if ``label`` does not fit ``image`` (shape and geometry)."""
    image, label = Path(image), Path(label)
    if volume_suffix(image) is not None:
        if volume_suffix(label) is None:
            raise ValueError(f"{name}: the label of a volume must be a .nii/.nii.gz/.nrrd volume")
        shape, geom = read_volume_header(image)
        array, label_geom = load_volume(label)
        check_label_matches(geom, label_geom, shape, array.shape, name)
    else:
        height, width = load_image_2d(image).shape[:2]
        load_mask_2d([label], (height, width))  # raises on another size


class MedSADDatastore(LocalDatastore):
    """:class:`LocalDatastore` with upload checks (see module doc)."""

    def add_image(self, image_id: str, image_filename: str, image_info: dict[str, Any]) -> str:
        with as_http_errors(f"image {image_id!r} rejected"):
            check_image_file(image_filename, f"uploaded image {image_id!r}")
        return super().add_image(image_id, image_filename, image_info)

    def save_label(self, image_id: str, label_filename: str, label_tag: str, label_info: dict[str, Any]) -> str:
        with as_http_errors(f"label for {image_id!r} rejected"):
            image = self.get_image_uri(image_id)
            if not image:
                raise FileNotFoundError(f"image {image_id!r} is not in the datastore")
            check_label_file(image, label_filename, f"label for image {image_id!r}")
        return super().save_label(image_id, label_filename, label_tag, label_info)
