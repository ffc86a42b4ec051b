"""The ``medsad_calibrate`` train task: fit a calibration profile of the served model on the
datastore's ``final`` labels — one site's operating point in seconds, without training.

A model trained on other scans decides badly on a new scanner or population: its lesion maps
may still rank well while the operating point fitted on its own validation volumes throws most of
that away (docs/decisions.md). This task runs the served model on the labelled images of this
datastore that it was *not* trained on (the checkpoint records its training cases), fits an
operating point on them with the calibration of ``medsad calibrate`` and stores it in the served
checkpoint as the calibration profile ``profile`` (default: ``--conf profile``, else ``site``);
the checkpoint's own operating point is kept. Requests and ``--conf profile`` choose it.

The served file is replaced atomically (the previous one kept as ``*.prev.pt``), and only if it
is still the file the fit ran on: a training run that publishes meanwhile wins, and this task
says so. Each calibration's summary is kept in ``<checkpoint dir>/calibrations/``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.train import TrainTask

from medsad_monai.atomic import atomic_write
from medsad_monai.checkpoint import operating_point_of, read_checkpoint, trained_cases_of, write_calibration
from medsad_monai.data.volumes import volume_suffix
from medsad_monai.engine.calibration import MAP_OBJECTIVES, fit_profile, predict_cases
from medsad_monai.engine.decision import DEFAULT_PROFILE, check_profile_name
from medsad_monai.engine.inference import Predictor

from ..errors import InputError, NoModelError, as_input_error
from ..model_cache import ModelCache
from ..serve_config import check_device
from .medsad import _samples, publish_checkpoint

logger = logging.getLogger(__name__)

#: The profile a calibration writes when neither the request nor ``--conf profile`` names one.
SITE_PROFILE = "site"


class MedSADCalibrate(TrainTask):
    """Calibrate-only task. Request keys (defaults in ``/info``): ``profile`` (the name to store
    the fit under), ``images`` (datastore ids, a list or comma-separated; empty = every image with
    a final label that the served model was not trained on), ``objective`` (``dice`` or
    ``dice+lesion_f1``, as ``medsad calibrate --objective``), ``device``."""

    def __init__(self, cache: ModelCache) -> None:
        super().__init__(
            "MedSAD-CLIP: fit a calibration profile (this site's operating point) of the served model "
            "on the final labels of the datastore; no training"
        )
        self.cache = cache

    def config(self) -> dict[str, Any]:
        return {"profile": self.cache.serve.profile or SITE_PROFILE, "images": "", "objective": "dice"}

    @property
    def log_dir(self) -> Path:
        return self.cache.path.parent / "calibrations"

    def stats(self) -> dict[str, Any]:
        """The latest calibration's summary (empty before the first)."""
        done = sorted(self.log_dir.glob("*.json")) if self.log_dir.is_dir() else []
        try:
            return json.loads(done[-1].read_text()) if done else {}
        except (OSError, ValueError):
            return {}

    @staticmethod
    def require_labels(datastore: Datastore) -> None:
        """At least one image with a final label (checked before an asynchronous run is queued;
        which of them the served model was trained on is decided when the run starts)."""
        if not datastore.datalist():
            raise InputError(
                "calibration needs images with final labels (with lesions) of this site; the datastore has none: "
                "label scans and submit them as final"
            )

    def __call__(self, request: dict[str, Any], datastore: Datastore) -> dict[str, Any]:
        started = time.time()
        profile, objective, wanted = self._options(request)
        device = check_device("device", request.get("device") or self.cache.serve.device, require_available=True)
        served = self.cache.path
        if not served.is_file():
            raise NoModelError(f"no model at {served} to calibrate: train one (POST /train/medsad) first")
        with tempfile.TemporaryDirectory(prefix=".calibrate-", dir=served.parent) as tmp:
            work = Path(tmp) / served.name
            before = _stamp(served)
            shutil.copyfile(served, work)  # the fit runs on this copy; the served file is compared after
            if _stamp(served) != before:
                raise InputError(
                    f"the served model {served} changed while it was read (a training run published): calibrate again"
                )
            payload = read_checkpoint(work)
            trained_on, complete = trained_cases_of(payload)
            datalist, excluded = self._datalist(datastore, wanted, set(trained_on))
            samples, _ = _samples(datalist, self.cache.serve.slice_axis)
            if not any(s.label for s in samples):
                raise InputError(
                    f"none of the {len(datalist)} labelled image(s) ({', '.join(_ids(datalist))}) has a lesion: "
                    "an operating point weighs missed lesions against false positives, and lesion-free scans "
                    "alone cannot fit it; label scans with lesions from the same scanner and submit them as final"
                )
            predictor = Predictor.from_checkpoint(
                work,
                clip_pretrained=self.cache.serve.clip_pretrained,
                batch_size=self.cache.serve.batch_size,
                device=device,
                precision=self.cache.serve.precision,
            )
            kind = getattr(getattr(predictor.model, "config", None), "slice_score", "auto")
            cases = predict_cases(predictor, samples, self.cache.serve.slice_axis, desc="calibrating")
            op = fit_profile(
                cases,
                profile=profile,
                default=operating_point_of(payload, served),
                slice_score=kind,
                objective=objective,
            )
            write_calibration(work, op)
            published = hashlib.sha256(work.read_bytes()).hexdigest()
            if _stamp(served) != before:
                raise InputError(
                    f"the served model {served} changed while it was being calibrated (a training run published "
                    "a new one); nothing was written: calibrate again"
                )
            publish_checkpoint(work, served)
        warnings = list(op.validation.get("warnings", []))
        if not complete:
            warnings.append(
                "the served checkpoint does not record every case it was trained on"
                + (f" (it names {len(trained_on)})" if trained_on else "")
                + ": make sure none of these images trained it, or the profile is fitted in-sample"
            )
        result = {
            "profile": op.profile,
            "operating_point": op.to_dict(),
            "in_sample": op.validation.get("compared_with_default"),
            "images": _ids(datalist),
            "excluded_trained_on": excluded,
            "warnings": warnings,
            "checkpoint": str(served),
            "checkpoint_sha256": published[:16],
            "seconds": round(time.time() - started, 1),
        }
        for line in warnings:
            logger.warning("calibration profile %s: %s", op.profile, line)
        logger.info("calibration profile %r fitted on %d image(s) and written to %s", op.profile, len(datalist), served)
        result = json.loads(json.dumps(result, default=str))
        self.log_dir.mkdir(parents=True, exist_ok=True)
        now = time.time()  # names sort by time to the microsecond: stats() reads the last one
        name = f"{time.strftime('%Y%m%d-%H%M%S', time.localtime(now))}.{int(now % 1 * 1e6):06d}-{op.profile}.json"
        atomic_write(self.log_dir / name, lambda fh: fh.write(json.dumps(result, indent=2)), binary=False)
        return result

    def _options(self, request: dict[str, Any]) -> tuple[str, str, list[str] | None]:
        profile = request.get("profile") or self.config()["profile"]
        with as_input_error():
            profile = check_profile_name(profile.strip() if isinstance(profile, str) else profile)
        if profile == DEFAULT_PROFILE:
            raise InputError(
                "profile 'default' is the operating point fitted on the model's own validation volumes and is not "
                "replaced here; name this site's profile (e.g. 'site') and serve it with --conf profile NAME or "
                "a request's 'profile'"
            )
        objective = request.get("objective") or "dice"
        if objective not in MAP_OBJECTIVES:
            raise InputError(f"objective {objective!r}: expected one of {', '.join(MAP_OBJECTIVES)}")
        images = request.get("images")
        if images in (None, "", []):
            return profile, objective, None
        if isinstance(images, str):
            images = [i.strip() for i in images.split(",") if i.strip()]
        if not isinstance(images, list) or not all(isinstance(i, str) and i for i in images):
            raise InputError(f"images must be a list of image ids or a comma-separated string, got {images!r}")
        return profile, objective, images

    def _datalist(
        self, datastore: Datastore, wanted: list[str] | None, trained_on: set[str]
    ) -> tuple[list[dict[str, str]], list[str]]:
        """The (image, final label) pairs to calibrate on, and the ids left out because the served
        model was trained on them. Named images that the model trained on, that have no final
        label or do not exist are refused by name."""
        labelled = {_id(d): d for d in datastore.datalist()}
        if wanted is not None:
            unknown = [i for i in wanted if i not in labelled]
            if unknown:
                raise InputError(
                    f"images {', '.join(unknown)}: no such image with a final label in the datastore "
                    f"(labelled: {', '.join(sorted(labelled)) or 'none'})"
                )
            seen = [i for i in wanted if i in trained_on]
            if seen:
                raise InputError(
                    f"images {', '.join(seen)}: the served model was trained on them; an operating point fitted "
                    "on its training images is optimistic and would not hold on new scans"
                )
            return [labelled[i] for i in dict.fromkeys(wanted)], []
        excluded = sorted(i for i in labelled if i in trained_on)
        chosen = [d for i, d in sorted(labelled.items()) if i not in trained_on]
        if not chosen:
            raise InputError(
                f"no image with a final label that the served model was not trained on (labelled: "
                f"{', '.join(sorted(labelled)) or 'none'}; trained on: {', '.join(excluded) or 'none'}): label "
                "scans of this site and submit them as final, then calibrate"
            )
        return chosen, excluded


def _stamp(path: Path) -> tuple[int, int, int]:
    """``(inode, mtime_ns, size)``: a publish (``os.replace``) always changes it."""
    st = path.stat()
    return st.st_ino, st.st_mtime_ns, st.st_size


def _id(item: dict[str, str]) -> str:
    """The datastore id of a datalist entry (its image file name without the volume suffix)."""
    image = Path(item["image"])
    suffix = volume_suffix(image) or image.suffix
    return image.name[: -len(suffix)] if suffix else image.name


def _ids(datalist: list[dict[str, str]]) -> list[str]:
    return [_id(d) for d in datalist]
