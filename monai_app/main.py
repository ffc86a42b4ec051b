"""MONAI Label app serving MedSAD-CLIP.

    monailabel start_server --app monai_app --studies DIR --conf models medsad \
        [--conf checkpoint PATH] [--conf clip_model NAME] [--conf clip_pretrained TAG|PATH|none] \
        [--conf preset tiny|full|…] [--conf threshold 0.5 (default: calibrated)] [--conf slice_axis 2] \
        [--conf min_lesion_mm3 50 (default: calibrated)] [--conf min_lesion_mean 0.8 (default: calibrated)]

Laid out like MONAI Label's radiology app: ``lib/configs`` (``--conf`` parsing, task config),
``lib/infers``, ``lib/trainers``, ``lib/scoring``, ``lib/activelearning``; ``lib/serve_config``
holds the served configuration and the one validator of each request/``--conf`` value,
``lib/images`` the readers of client files, ``lib/errors`` the error types and their HTTP codes.
Every task calls ``medsad_monai`` (the one model, inference and training path).
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

import monailabel
from fastapi import HTTPException
from monailabel.config import settings
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.datastore import Datastore
from monailabel.tasks.activelearning.first import First
from monailabel.tasks.activelearning.random import Random

import medsad_monai
from lib.configs import MedSADTaskConfig
from lib.datastore import MedSADDatastore
from lib.errors import ConfError, as_http_errors, remove_uploads
from lib.routes import serve_routes

logger = logging.getLogger(__name__)


class MyApp(MONAILabelApp):
    """The MedSAD app: one model, ``medsad`` (infer + train), scoring ``medsad_anomaly`` and the
    strategy ``medsad_uncertain``."""

    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]) -> None:
        self.model_dir = os.path.join(app_dir, "model")
        task = MedSADTaskConfig()
        try:
            task.init("medsad", self.model_dir, conf, None)
        except ConfError as err:
            logger.error("MedSAD app: %s", err)
            raise
        self.task = task
        self._infer_slots = threading.BoundedSemaphore(task.serve.infer_workers)
        logger.info(
            "MedSAD app: checkpoint %s (%s), preset %s, threshold %s, slice axis %d",
            task.serve.checkpoint,
            "present" if task.cache.exists() else "missing: train one first",
            task.serve.preset,
            task.serve.threshold,
            task.serve.slice_axis,
        )
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name=f"MedSAD - anomaly detection and lesion segmentation (MONAI Label {monailabel.__version__})",
            description="MedSAD-CLIP: per-slice anomaly scores and lesion masks "
            "(demo model: synthetic lesions, not for clinical use)",
            version=medsad_monai.__version__,
            labels={"lesion": 1},
        )

    def init_datastore(self) -> Datastore:
        if self.studies.startswith(("http://", "https://")):
            return super().init_datastore()
        return MedSADDatastore(
            self.studies,
            extensions=settings.MONAI_LABEL_DATASTORE_FILE_EXT,
            auto_reload=settings.MONAI_LABEL_DATASTORE_AUTO_RELOAD,
            read_only=settings.MONAI_LABEL_DATASTORE_READ_ONLY,
        )

    def init_infers(self) -> dict[str, Any]:
        return self.task.infer()

    def init_trainers(self) -> dict[str, Any]:
        return {"medsad": self.task.trainer(), "medsad_calibrate": self.task.calibrator()}

    def init_strategies(self) -> dict[str, Any]:
        return {"random": Random(), "first": First(), **self.task.strategy()}

    def init_scoring_methods(self) -> dict[str, Any]:
        return self.task.scoring_method()

    def server_mode(self, mode: bool) -> None:
        """Called by MONAI Label's server at start-up: serve the long routes (infer, batch infer,
        synchronous train/scoring, active learning, dataset zip) in worker threads, so ``/info/`` and other
        requests are answered while a volume is inferred, and answer client mistakes on every
        route with 4xx (lib/routes.py)."""
        super().server_mode(mode)
        if mode:
            from monailabel.app import app as server
            from monailabel.endpoints import (
                activelearning,
                batch_infer,
                datastore,
                infer,
                info,
                model,
                scoring,
                train,
                wsi_infer,
            )

            routers = (info, infer, batch_infer, wsi_infer, train, scoring, activelearning, datastore, model)
            # the check asks the app that is serving at request time (the routes are wrapped once
            # per process, and an app may be re-created behind them, as the tests do)
            train_check = {("POST", path): _check_train_request for path in ("/train/", "/train/{model}")}
            serve_routes(server, (r.router for r in routers), settings.MONAI_LABEL_API_STR, train_check)

    def check_train_request(self, kwargs: dict[str, Any]) -> None:
        """``POST /train/…``: refuse (422) a run that cannot start — fewer final labels than training
        needs — before MONAI Label queues it; an asynchronous run would fail seconds later with only
        a line in the task log to say why."""
        model = kwargs.get("model")
        names = [model] if model else list(self._trainers)
        with as_http_errors(f"train {model!r}" if model else "train"):
            for name in names:
                require = getattr(self._trainers.get(name), "require_labels", None)
                if require is not None:  # an unknown model: MONAI Label answers that itself
                    require(self.datastore())

    # MONAI Label has no exception handler: answer with a JSON message instead (lib/errors.py:
    # 422 for input errors, 404 unknown image, 503 no model, 500 + traceback in the log otherwise).
    def infer(self, request: dict[str, Any], datastore: Datastore | None = None) -> dict[str, Any]:
        try:
            with as_http_errors(f"infer {request.get('model')!r} on {request.get('image')!r}"):
                with self._infer_slots:  # --conf infer_workers at once; the others wait their turn
                    return super().infer(request, datastore)
        except BaseException:
            # MONAI Label removes an uploaded file in a background task that runs only after a
            # successful answer: on an error the upload would stay in the temp folder for good.
            remove_uploads(request)
            raise

    def batch_infer(self, request: dict[str, Any], datastore: Datastore | None = None) -> dict[str, Any]:
        """``POST /batch/infer/{model}``: MONAI Label's default body asks for ``device: cuda`` with
        ``multi_gpu``, and on a server without CUDA GPUs MONAI Label then divides by the number of
        GPUs (a 500). MedSAD infers every image on the device the server runs it on whatever the
        request says, so without CUDA the request is made a single-device CPU one."""
        import torch

        request = dict(request)
        if not torch.cuda.is_available():
            request.update(multi_gpu=False, device="cpu")
        with as_http_errors(f"batch infer {request.get('model')!r}"):
            return super().batch_infer(request, datastore)

    def infer_wsi(self, request: dict[str, Any], datastore: Datastore | None = None) -> dict[str, Any]:
        """MedSAD reads volumes and 2-D images, not whole-slide images: a clear 422 (and the
        upload removed) instead of MONAI Label's 500."""
        remove_uploads(request)
        raise HTTPException(
            422, detail="MedSAD serves 3-D volumes and 2-D images, not whole-slide images: use POST /infer/medsad"
        )

    def train(self, request: dict[str, Any]) -> dict[str, Any]:
        with as_http_errors(f"train {request.get('model')!r}"):
            return super().train(request)

    def scoring(self, request: dict[str, Any], datastore: Datastore | None = None) -> dict[str, Any]:
        with as_http_errors(f"scoring {request.get('method')!r}"):
            return super().scoring(request, datastore)

    def async_scoring(self, method: str | None, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """MONAI Label queues a full scoring job on every active-learning request; keep at most
        one job waiting (a waiting job scores every image not yet scored by the current model,
        so a second one would only repeat it)."""
        from monailabel.utils.async_tasks.utils import tasks

        waiting = [t for t in tasks("scoring") if t.get("status") == "SUBMITTED"]
        if self._server_mode and waiting:
            logger.info("scoring: a job is already waiting (%s); not queueing another", waiting[0].get("id"))
            return {}
        return super().async_scoring(method, params)

    def next_sample(self, request: dict[str, Any]) -> dict[str, Any]:
        with as_http_errors(f"active learning {request.get('strategy')!r}"):
            return super().next_sample(request)


def _check_train_request(kwargs: dict[str, Any]) -> None:
    """``POST /train/…`` precheck: :meth:`MyApp.check_train_request` of the serving app."""
    from monailabel.interfaces.utils.app import app_instance

    check = getattr(app_instance(), "check_train_request", None)  # MONAI Label may re-import this module
    if check is not None:
        check(kwargs)
