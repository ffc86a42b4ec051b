"""``--conf`` keys of the MedSAD model and the task config that builds its tasks."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from monailabel.interfaces.config import TaskConfig

from medsad_monai.configs import PRESETS

from ..errors import ConfError

logger = logging.getLogger(__name__)

#: ``--conf`` keys this app reads (MONAI Label passes its own keys too, e.g. ``models``).
CONF_KEYS = ("clip_model", "clip_pretrained", "checkpoint", "preset", "threshold", "slice_axis", "batch_size", "device")


@dataclass(frozen=True)
class ServeConfig:
    """Validated ``--conf`` values.

    Args:
        checkpoint: the served model file; training publishes to the same path.
        clip_model: open_clip architecture for new training (default: the preset's); a
            checkpoint of another architecture is refused.
        clip_pretrained: open_clip tag, local weight file or ``none``; where the backbone
            weights are on this machine.
        preset: model preset for training.
        threshold: lesion-map threshold for every request (default None: the checkpoint's
            calibrated operating point; a request may override it).
        slice_axis: volume axis slices are taken along.
        batch_size: slices per forward pass.
        device: ``cpu``/``cuda``/``cuda:N``; default CUDA when available.
    """

    checkpoint: Path
    clip_model: str | None = None
    clip_pretrained: str | None = None
    preset: str = "tiny"
    threshold: float | None = None
    slice_axis: int = 2
    batch_size: int = 8
    device: str | None = None

    @classmethod
    def from_conf(cls, conf: dict[str, str], app_dir: str | os.PathLike) -> "ServeConfig":
        """Parse MONAI Label's ``--conf`` dict.

        Raises:
            ConfError: naming the key and the allowed values.
        """
        models = conf.get("models", "medsad")
        if any(m.strip() not in ("medsad", "all") for m in str(models).split(",")):
            raise ConfError(f"--conf models {models!r}: this app serves one model, 'medsad'")
        checkpoint = Path(conf.get("checkpoint") or Path(app_dir) / "model" / "medsad.pt").expanduser().resolve()
        if checkpoint.exists() and not checkpoint.is_file():
            raise ConfError(f"--conf checkpoint {str(checkpoint)!r} is not a file")
        preset = conf.get("preset", "tiny")
        if preset not in PRESETS:
            raise ConfError(f"--conf preset {preset!r}: choose one of {', '.join(PRESETS)}")
        threshold = _number(conf, "threshold", None, float)
        if threshold is not None and not 0.0 < threshold < 1.0:
            raise ConfError(f"--conf threshold {threshold}: must lie strictly between 0 and 1")
        slice_axis = _number(conf, "slice_axis", 2, int)
        if slice_axis not in (0, 1, 2):
            raise ConfError(f"--conf slice_axis {slice_axis}: must be 0, 1 or 2")
        batch_size = _number(conf, "batch_size", 8, int)
        if batch_size < 1:
            raise ConfError(f"--conf batch_size {batch_size}: must be at least 1")
        device = conf.get("device") or None
        if device is not None and not (device == "cpu" or device.startswith("cuda")):
            raise ConfError(f"--conf device {device!r}: use cpu, cuda or cuda:N")
        pretrained = conf.get("clip_pretrained") or None
        if pretrained not in (None, "none") and ("/" in pretrained or pretrained.endswith((".pt", ".bin", ".safetensors"))):
            if not Path(pretrained).expanduser().is_file():
                raise ConfError(f"--conf clip_pretrained {pretrained!r}: no such weight file")
        return cls(checkpoint=checkpoint, clip_model=conf.get("clip_model") or None, clip_pretrained=pretrained,
                   preset=preset, threshold=threshold, slice_axis=slice_axis, batch_size=batch_size, device=device)


def _number(conf: dict[str, str], key: str, default: Any, kind: type) -> Any:
    raw = conf.get(key)
    if raw is None or raw == "":
        return default
    try:
        return kind(raw)
    except (TypeError, ValueError):
        raise ConfError(f"--conf {key} {raw!r}: expected {'an integer' if kind is int else 'a number'}") from None


class MedSADTaskConfig(TaskConfig):
    """Builds the MedSAD infer task, trainer, scoring method and strategy from ``--conf``."""

    def init(self, name: str, model_dir: str, conf: dict[str, str], planner: Any, **kwargs: Any) -> None:
        super().init(name, model_dir, conf, planner, **kwargs)
        from ..model_cache import ModelCache

        self.serve = ServeConfig.from_conf(conf, Path(model_dir).parent)
        self.path = [str(self.serve.checkpoint)]
        self.labels = {"lesion": 1}
        self.cache = ModelCache(self.serve)

    def infer(self):
        from ..infers.medsad import MedSADInfer

        return {self.name: MedSADInfer(self.cache)}

    def trainer(self):
        from ..trainers.medsad import MedSADTrain

        return MedSADTrain(self.cache)

    def scoring_method(self):
        from ..scoring.medsad import MedSADScoring

        return {"medsad_anomaly": MedSADScoring(self.cache)}

    def strategy(self):
        from ..activelearning.medsad import MedSADUncertain
        from ..scoring.medsad import MedSADScoring

        return {"medsad_uncertain": MedSADUncertain(MedSADScoring(self.cache))}
