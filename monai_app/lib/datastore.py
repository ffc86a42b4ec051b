"""A local datastore that checks uploads before it stores them: a label must lie on exactly its
image's voxel grid, an image must be a readable 3-D volume or 2-D picture without NaN voxels.
A rejected upload leaves the datastore untouched (answered with HTTP 4xx; the checks:
:mod:`lib.images`)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from monailabel.datastore.local import LocalDatastore

from .errors import NotFoundError, as_http_errors, remove_uploads
from .images import check_image_file, check_label_file

logger = logging.getLogger(__name__)

__all__ = ["MedSADDatastore", "check_image_file", "check_label_file"]


class MedSADDatastore(LocalDatastore):
    """:class:`LocalDatastore` with upload checks (see module doc)."""

    _archive: Path | None = None

    def get_dataset_archive(self, limit_cases: int | None) -> str:
        """The ZIP of the labelled images (``GET /datastore/dataset``). MONAI Label writes it to
        the temp folder and never removes it; here only the latest one is kept (the previous
        one is deleted when a new one is made), and an empty datastore is a 404, not a 500."""
        with as_http_errors("dataset export"):
            if not self.datalist():
                raise NotFoundError("no image has a final label yet: there is no dataset to export")
            path = Path(super().get_dataset_archive(limit_cases))
        archive = path.with_name(path.name + ".medsad-dataset.zip")
        path.replace(archive)
        previous, MedSADDatastore._archive = MedSADDatastore._archive, archive
        if previous is not None and previous != archive:
            previous.unlink(missing_ok=True)
        return str(archive)

    def add_image(self, image_id: str, image_filename: str, image_info: dict[str, Any]) -> str:
        try:
            with as_http_errors(f"image {image_id!r} rejected"):
                check_image_file(image_filename, f"uploaded image {image_id!r}")
        except BaseException:
            remove_uploads({"image": image_filename})  # MONAI Label removes it only on success
            raise
        return super().add_image(image_id, image_filename, image_info)

    def save_label(self, image_id: str, label_filename: str, label_tag: str, label_info: dict[str, Any]) -> str:
        try:
            with as_http_errors(f"label for {image_id!r} rejected"):
                image = self.get_image_uri(image_id)
                if not image:
                    raise NotFoundError(f"image {image_id!r} is not in the datastore")
                check_label_file(image, label_filename, f"label for image {image_id!r}")
        except BaseException:
            remove_uploads({"label": label_filename})
            raise
        return super().save_label(image_id, label_filename, label_tag, label_info)
