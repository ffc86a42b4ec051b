"""Active-learning scoring: run the model over unlabelled images and store, in each image's
info, ``anomaly_score`` (the calibrated volume score), ``anomaly_abnormal`` (the volume
decision) and ``anomaly_uncertainty``: the mean binary entropy, in bits, of the *calibrated*
slice probabilities of the slices with anatomy (a slice scoring exactly at its calibrated
threshold is 1 bit, undecided; see :func:`medsad_monai.engine.decision.calibrated_probability`).
With a model that knows its training scans (a checkpoint's ``familiarity`` block) also
``anomaly_familiar`` and ``anomaly_familiarity_distance`` (whether the scan is like them,
:mod:`medsad_monai.engine.familiarity`; None for a model without one), so the datastore's
listing shows which scans the model's decisions may not hold on.

Images already scored by the current checkpoint (same sha256) are not scored again.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.scoring import ScoringMethod

from medsad_monai.engine.decision import calibrated_probability
from medsad_monai.engine.inference import VolumeResult

from ..errors import InputError
from ..images import predict, read_image
from ..model_cache import ModelCache
from ..serve_config import check_choice, check_flag

logger = logging.getLogger(__name__)


def binary_entropy(p: float) -> float:
    """Entropy in bits of a Bernoulli(p)."""
    p = min(max(float(p), 1e-7), 1 - 1e-7)
    return -(p * math.log2(p) + (1 - p) * math.log2(1 - p))


def uncertainty(result: Any) -> float:
    """Mean binary entropy of the calibrated probabilities of the slices not skipped as background."""
    if isinstance(result, VolumeResult):
        scores = [s for s, skipped in zip(result.slice_scores, result.skipped) if not skipped]
        threshold = result.op.slice_threshold
    else:
        scores, threshold = [result.score], result.op.volume_threshold
    probs = [calibrated_probability(s, threshold) for s in scores]
    return float(sum(binary_entropy(p) for p in probs) / len(probs)) if probs else 0.0


class MedSADScoring(ScoringMethod):
    """Scoring method ``medsad_anomaly``. Request keys: ``images`` (``unlabeled`` (default) or
    ``all``), ``force`` (re-score images scored by the current model)."""

    def __init__(self, cache: ModelCache) -> None:
        super().__init__("MedSAD anomaly score and uncertainty of unlabelled images")
        self.cache = cache

    def __call__(self, request: dict[str, Any], datastore: Datastore) -> dict[str, Any]:
        which = check_choice("images", request.get("images", "unlabeled"), ("unlabeled", "all"))
        force = check_flag("force", request.get("force", False))
        ids = datastore.list_images() if which == "all" else datastore.get_unlabeled_images()
        return self.score(datastore, ids, force=force)

    def score(self, datastore: Datastore, image_ids: list[str], force: bool = False) -> dict[str, Any]:
        loaded = self.cache.get()  # one model for the whole run: every entry names the one that scored it
        model = loaded.fingerprint
        axis = self.cache.serve.slice_axis
        scored: dict[str, Any] = {}
        skipped, failed = [], {}
        for image_id in sorted(image_ids):
            info = datastore.get_image_info(image_id)
            # entries scored before familiarity was recorded are scored again
            if not force and info.get("anomaly_model") == model and "anomaly_familiar" in info:
                skipped.append(image_id)
                continue
            start = time.perf_counter()
            try:
                data = read_image(datastore.get_image_uri(image_id), axis)
            except InputError as err:  # one unreadable image must not stop the others
                logger.warning("scoring %s failed: %s", image_id, err)
                failed[image_id] = str(err)
                continue
            result = predict(loaded.predictor, data, axis)  # a model error is the server's: HTTP 500
            summary = result.summary()
            familiarity = summary.get("familiarity") or {}
            entry = {
                "anomaly_score": float(summary["volume_score"]),
                "anomaly_abnormal": bool(summary["volume_abnormal"]),
                "anomaly_uncertainty": round(uncertainty(result), 6),
                "anomaly_worst_slice": int(summary["worst_slice"]),
                "anomaly_familiar": familiarity.get("familiar"),
                "anomaly_familiarity_distance": familiarity.get("distance"),
                "anomaly_model": model,
                "anomaly_ts": int(time.time()),
            }
            datastore.update_image_info(image_id, entry)
            scored[image_id] = entry
            logger.info(
                "scored %s: score %.3f uncertainty %.3f (%.1f s)",
                image_id,
                entry["anomaly_score"],
                entry["anomaly_uncertainty"],
                time.perf_counter() - start,
            )
        return {"scored": scored, "skipped": skipped, "failed": failed, "model": model}
