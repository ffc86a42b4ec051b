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

from monailabel.interfaces.tasks.infer_v2 import InferTask, InferType

from medsad_monai.data.volumes import volume_suffix
from medsad_monai.engine.inference import save_mask

from ..errors import NotFoundError
from ..images import predict, read_image
from ..model_cache import ModelCache
from ..serve_config import CALIBRATED, InferParams

logger = logging.getLogger(__name__)

LABEL_NAMES = {"lesion": 1}


class MedSADInfer(InferTask):
    """Segmentation-type task (the stock Slicer plugin lists it) with the single label ``lesion``.

    Request keys: ``image`` (path, filled in by MONAI Label), optional ``threshold`` (lesion-map
    threshold 0-1), ``slice_threshold``, ``volume_threshold`` (each ``calibrated`` or empty = the
    checkpoint's operating point), ``slice_axis`` (0/1/2) and ``skip_background`` (bool), validated
    by :class:`lib.serve_config.InferParams`.
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
        op = predictor.operating_point.with_overrides(
            map_threshold=params.threshold,
            slice_threshold=params.slice_threshold,
            volume_threshold=params.volume_threshold,
        )
        result = predict(predictor, data, params.slice_axis, params.skip_background).with_operating_point(op)
        suffix = volume_suffix(path) or ".png"
        fd, out = tempfile.mkstemp(prefix="medsad_", suffix=suffix)
        os.close(fd)
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


def _shown(value: float | None) -> float | str:
    return CALIBRATED if value is None else value
