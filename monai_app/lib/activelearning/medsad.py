"""Strategy ``medsad_uncertain``: serve the unlabelled image the model is least sure about
(highest ``anomaly_uncertainty``; ties broken by the higher anomaly score, then the id).
Unlabelled images not yet scored by the current model are scored first."""

from __future__ import annotations

import logging
from typing import Any

from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.strategy import Strategy
from monailabel.utils.others.generic import file_checksum

from ..errors import InputError
from ..scoring.medsad import MedSADScoring

logger = logging.getLogger(__name__)


class MedSADUncertain(Strategy):
    def __init__(self, scoring: MedSADScoring) -> None:
        super().__init__("Most uncertain unlabelled image (MedSAD per-slice score entropy)")
        self.scoring = scoring

    def __call__(self, request: dict[str, Any], datastore: Datastore) -> dict[str, Any] | None:
        unlabeled = datastore.get_unlabeled_images(request.get("label_tag"), request.get("labels"))
        if not unlabeled:
            return None
        report = self.scoring.score(datastore, unlabeled)
        candidates = []
        for image_id in unlabeled:
            info = datastore.get_image_info(image_id)
            if image_id in report["failed"] or "anomaly_uncertainty" not in info:
                continue
            candidates.append((float(info["anomaly_uncertainty"]), float(info.get("anomaly_score", 0.0)), image_id))
        if not candidates:
            raise InputError(f"none of the {len(unlabeled)} unlabelled images could be scored: {report['failed']}")
        candidates.sort(key=lambda c: (-c[0], -c[1], c[2]))
        u, s, image_id = candidates[0]
        logger.info("medsad_uncertain: %s (uncertainty %.3f, score %.3f) of %d", image_id, u, s, len(candidates))
        # as MONAI Label's strategies answer: the client checks its cached copy with it (/datastore/image?check_sum=)
        checksum = f"SHA256:{file_checksum(datastore.get_image_uri(image_id))}"
        return {"id": image_id, "checksum": checksum, "anomaly_uncertainty": u, "anomaly_score": s}
