"""The ``medsad`` infer task: volume -> slice-wise batches -> lesion mask + per-slice scores.

Calls :mod:`medsad_monai.engine.inference` (the one inference path); the mask is written with
the input file as geometry reference, so spacing, origin and direction equal the input's.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from monailabel.interfaces.tasks.infer_v2 import InferTask, InferType

from medsad_monai.data.volumes import save_volume_like, volume_suffix
from medsad_monai.engine.decision import DEFAULT_PROFILE
from medsad_monai.engine.inference import VolumeResult, save_mask

from ..errors import InputError, NotFoundError
from ..images import predict, read_image
from ..model_cache import ModelCache
from ..serve_config import CALIBRATED, InferParams

logger = logging.getLogger(__name__)

LABEL_NAMES = {"lesion": 1}


class MedSADInfer(InferTask):
    """Segmentation-type task (the stock Slicer plugin lists it) with the single label ``lesion``.

    Request keys: ``image`` (path, filled in by MONAI Label), optional ``threshold`` (lesion-map
    threshold 0-1), ``slice_threshold``, ``volume_threshold`` (each ``calibrated`` or empty = the
    checkpoint's operating point), ``min_lesion_mm3`` (connected lesions under this many mm³ are
    removed, 0 keeps every lesion; ``calibrated`` or empty = the checkpoint's), ``min_lesion_mean``
    (connected lesions whose mean probability is under this are removed; the same), ``profile``
    (the checkpoint's calibration profile to decide at: one site's or scanner's operating point;
    ``default`` its own; empty = the served one, ``--conf profile``), ``slice_axis`` (0/1/2) and
    ``skip_background`` (bool), validated by :class:`lib.serve_config.InferParams`; the other
    values override single values of the profile.
    Result JSON: ``slice_scores``, ``volume_score``, ``volume_abnormal``, ``worst_slice``,
    ``abnormal_slices``, the thresholds and ``operating_point`` they came from, ``label_names``,
    ``checkpoint_sha256`` (of the checkpoint whose model made this mask) and a few counts, all
    plain Python types.
    """

    def __init__(self, cache: ModelCache) -> None:
        super().__init__(
            type=InferType.SEGMENTATION,
            labels=dict(LABEL_NAMES),
            dimension=3,
            description="MedSAD-CLIP: lesion segmentation with per-slice anomaly scores",
            config={
                "threshold": _shown(cache.serve.threshold),
                "slice_threshold": CALIBRATED,
                "volume_threshold": CALIBRATED,
                "min_lesion_mm3": _shown(cache.serve.min_lesion_mm3),
                "min_lesion_mean": _shown(cache.serve.min_lesion_mean),
                "profile": cache.serve.profile or DEFAULT_PROFILE,
                "slice_axis": cache.serve.slice_axis,
                "skip_background": True,
            },
        )
        self.cache = cache

    def is_valid(self) -> bool:
        return self.cache.exists()

    def get_path(self, validate: bool = True) -> str | None:
        return str(self.cache.path) if (self.cache.exists() or not validate) else None

    def __call__(self, request: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        image = str(request.get("image") or "")
        if not image:
            raise NotFoundError("unknown image id (not in the datastore) and no file uploaded")
        path = Path(image)
        if not path.is_file():
            raise NotFoundError(f"image {image!r} not found")
        params = InferParams.from_request(request, self.cache.serve)
        start = time.perf_counter()
        data = read_image(path, params.slice_axis)
        loaded = self.cache.get()
        predictor = loaded.predictor
        try:
            op = predictor.profile_point(params.profile).with_overrides(
                map_threshold=params.threshold,
                slice_threshold=params.slice_threshold,
                volume_threshold=params.volume_threshold,
                min_lesion_mm3=params.min_lesion_mm3,
                min_lesion_mean=params.min_lesion_mean,
            )
        except ValueError as err:  # an unknown profile; a size in mm³ for a model without a voxel size
            raise InputError(str(err)) from None
        result = predict(predictor, data, params.slice_axis, params.skip_background).with_operating_point(op)
        suffix, dtype = _result_format(request, path)
        fd, out = tempfile.mkstemp(prefix="medsad_", suffix=suffix)
        os.close(fd)
        if isinstance(result, VolumeResult) and dtype is not None:
            save_volume_like(result.mask.astype(dtype), path, out)
        else:
            save_mask(result, path, out)
        summary = result.summary()
        summary.update(
            {
                "label_names": dict(LABEL_NAMES),
                "model": "medsad",
                "checkpoint_sha256": loaded.fingerprint,
                "latency_s": round(time.perf_counter() - start, 3),
            }
        )
        logger.info(
            "%s: volume_score %.3f (abnormal: %s), worst slice %d, %d lesion voxels",
            path.name,
            summary["volume_score"],
            summary["volume_abnormal"],
            summary["worst_slice"],
            summary.get("lesion_voxels", summary.get("lesion_pixels", 0)),
        )
        return out, summary


#: ``result_extension`` values a volume's mask can be written as (MONAI Label's Slicer plugin asks for ``.nrrd``).
RESULT_EXTENSIONS = (".nii.gz", ".nii", ".nrrd")
#: ``result_dtype`` values (as MONAI Label's writer takes them: numpy dtype names).
RESULT_DTYPES = ("uint8", "int8", "uint16", "int16", "int32", "uint32", "int64", "float32", "float64")


def _result_format(request: dict[str, Any], image: Path) -> tuple[str, str | None]:
    """The mask file's suffix and dtype, honouring ``result_extension`` and ``result_dtype`` as
    MONAI Label's basic infer task does (a volume; a 2-D image's mask is always a PNG)."""
    own = volume_suffix(image)
    extension, dtype = request.get("result_extension"), request.get("result_dtype")
    if own is None:
        return ".png", None
    if extension:
        extension = str(extension).lower()
        extension = extension if extension.startswith(".") else f".{extension}"
        if extension not in RESULT_EXTENSIONS:
            raise InputError(f"result_extension {extension!r}: use one of {', '.join(RESULT_EXTENSIONS)}")
    if dtype:
        dtype = str(dtype)
        if dtype not in RESULT_DTYPES or not np.dtype(dtype):
            raise InputError(f"result_dtype {dtype!r}: use one of {', '.join(RESULT_DTYPES)}")
    return extension or own, dtype or None


def _shown(value: float | None) -> float | str:
    return CALIBRATED if value is None else value
