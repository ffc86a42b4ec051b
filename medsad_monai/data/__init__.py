"""Dataset layouts, 2-D image and 3-D volume I/O, and ``check-data``."""

from __future__ import annotations

from medsad_monai.data.check import CheckReport, SplitCounts, check_data
from medsad_monai.data.images import IMAGE_SUFFIXES, load_image_2d, load_mask_2d
from medsad_monai.data.layouts import (
    LAYOUTS,
    DatasetIndex,
    Sample,
    case_tags,
    detect_layout,
    read_layout,
)
from medsad_monai.data.volumes import (
    VOLUME_SUFFIXES,
    Geometry,
    check_label_matches,
    iter_slices,
    load_volume,
    normalize_intensity,
    read_volume_header,
    save_volume_like,
    stack_slices,
    take_slab,
    take_slice,
    volume_suffix,
)

__all__ = [
    "CheckReport",
    "DatasetIndex",
    "Geometry",
    "IMAGE_SUFFIXES",
    "LAYOUTS",
    "Sample",
    "SplitCounts",
    "VOLUME_SUFFIXES",
    "case_tags",
    "check_data",
    "check_label_matches",
    "detect_layout",
    "iter_slices",
    "load_image_2d",
    "load_mask_2d",
    "load_volume",
    "normalize_intensity",
    "read_layout",
    "read_volume_header",
    "save_volume_like",
    "stack_slices",
    "take_slab",
    "take_slice",
    "volume_suffix",
]
