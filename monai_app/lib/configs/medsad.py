"""The task config that builds the MedSAD tasks from ``--conf`` (the keys and their validation:
:mod:`lib.serve_config`)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from monailabel.interfaces.config import TaskConfig

from ..activelearning.medsad import MedSADUncertain
from ..infers.medsad import MedSADInfer
from ..model_cache import ModelCache
from ..scoring.medsad import MedSADScoring
from ..serve_config import CONF_KEYS, ServeConfig
from ..trainers.calibrate import MedSADCalibrate
from ..trainers.medsad import MedSADTrain

logger = logging.getLogger(__name__)

__all__ = ["CONF_KEYS", "MedSADTaskConfig", "ServeConfig"]


class MedSADTaskConfig(TaskConfig):
    """Builds the MedSAD infer task, trainer, scoring method and strategy from ``--conf``."""

    def init(self, name: str, model_dir: str, conf: dict[str, str], planner: Any, **kwargs: Any) -> None:
        super().init(name, model_dir, conf, planner, **kwargs)
        self.serve = ServeConfig.from_conf(conf, Path(model_dir).parent)
        self.path = [str(self.serve.checkpoint)]
        self.labels = {"lesion": 1}
        self.cache = ModelCache(self.serve)

    def infer(self):
        return {self.name: MedSADInfer(self.cache)}

    def trainer(self):
        return MedSADTrain(self.cache)

    def calibrator(self):
        return MedSADCalibrate(self.cache)

    def scoring_method(self):
        return {"medsad_anomaly": MedSADScoring(self.cache)}

    def strategy(self):
        return {"medsad_uncertain": MedSADUncertain(MedSADScoring(self.cache))}
