"""The ``medsad`` infer task: volume -> slice-wise batches -> lesion mask + per-slice scores.

Calls :mod:`medsad_monai.engine.inference` (the one inference path); the mask is written with
the input file as geometry reference, so spacing, origin and direction equal the input's.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from monailabel.interfaces.tasks.infer_v2 import InferTask, InferType

from medsad_monai.data.volumes import volume_suffix
from medsad_monai.engine.inference import predict_file, save_mask

from ..model_cache import ModelCache

logger = logging.getLogger(__name__)

LABEL_NAMES = {"lesion": 1}


class MedSADInfer(InferTask):
    """Segmentation-type task (the stock Slicer plugin lists it) with the single label ``lesion``.

    Request keys: ``image`` (path, filled in by MONAI Label), optional ``threshold`` (0-1),
    ``slice_axis`` (0/1/2) and ``skip_background`` (bool).
    Result JSON: ``slice_scores``, ``volume_score``, ``worst_slice``, ``threshold``,
    ``label_names`` and a few counts, all plain Python types.
    """

    def __init__(self, cache: ModelCache) -> None:
        super().__init__(
            type=InferType.SEGMENTATION,
            labels=dict(LABEL_NAMES),
            dimension=3,
            description="MedSAD-CLIP: lesion segmentation with per-slice anomaly scores",
            config={"threshold": cache.serve.threshold, "slice_axis": cache.serve.slice_axis, "skip_background": True},
        )
        self.cache = cache

    def is_valid(self) -> bool:
        return self.cache.exists()

    def get_path(self, validate: bool = True) -> str | None:
        return str(self.cache.path) if (self.cache.exists() or not validate) else None

    def __call__(self, request: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        image = str(request.get("image") or "")
        if not image:
            raise FileNotFoundError("unknown image id (not in the datastore) and no file uploaded")
        path = Path(image)
        if not path.is_file():
            raise FileNotFoundError(f"image {image!r} not found")
        threshold = _threshold(request.get("threshold", self.cache.serve.threshold))
        axis = _axis(request.get("slice_axis", self.cache.serve.slice_axis))
        skip = _flag(request.get("skip_background", True), "skip_background")
        start = time.perf_counter()
        predictor = self.cache.get()
        result = predict_file(predictor, path, axis=axis, skip_background=skip)
        result = dataclasses.replace(result, threshold=threshold)
        suffix = volume_suffix(path) or ".png"
        fd, out = tempfile.mkstemp(prefix="medsad_", suffix=suffix)
        os.close(fd)
        save_mask(result, path, out)
        summary = result.summary()
        summary.update({
            "label_names": dict(LABEL_NAMES),
            "model": "medsad",
            "checkpoint_sha256": self.cache.fingerprint(),
            "latency_s": round(time.perf_counter() - start, 3),
        })
        logger.info("%s: volume_score %.3f, worst slice %d, %d lesion voxels", path.name,
                    summary["volume_score"], summary["worst_slice"], summary.get("lesion_voxels", summary.get("lesion_pixels", 0)))
        return out, summary


def _threshold(value: Any) -> float:
    try:
        t = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"threshold {value!r}: expected a number between 0 and 1") from None
    if not 0.0 < t < 1.0:
        raise ValueError(f"threshold {t}: must lie strictly between 0 and 1")
    return t


def _axis(value: Any) -> int:
    try:
        axis = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"slice_axis {value!r}: expected 0, 1 or 2") from None
    if axis not in (0, 1, 2):
        raise ValueError(f"slice_axis {axis}: expected 0, 1 or 2")
    return axis


def _flag(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    if str(value).lower() in ("true", "1", "yes"):
        return True
    if str(value).lower() in ("false", "0", "no"):
        return False
    raise ValueError(f"{name} {value!r}: expected true or false")
