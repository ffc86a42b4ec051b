"""The ``medsad`` train task: trains on the datastore's ``final`` labels with
:func:`medsad_monai.engine.train.train` (same code as ``medsad train``) and publishes the
best-validation checkpoint to the served path.

Slices whose label is empty are normal samples; the split is by volume; the dataset is MONAI's
plain ``Dataset`` (no SmartCache). Each run lives in ``<checkpoint dir>/runs/<time>/``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path
from types import MappingProxyType
from typing import Any

from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.train import TrainTask

from medsad_monai.configs import load_preset
from medsad_monai.data.images import IMAGE_SUFFIXES
from medsad_monai.data.layouts import image_sample, volume_samples
from medsad_monai.data.volumes import volume_suffix
from medsad_monai.engine.train import TrainOptions, train

from ..errors import InputError, as_input_error
from ..model_cache import ModelCache
from ..serve_config import (
    check_batch_size,
    check_count,
    check_device,
    check_fraction,
    check_minutes,
    check_positive,
    check_preset,
    check_probability,
    check_seed,
)

logger = logging.getLogger(__name__)

#: The validator of each training option (``device`` is checked on its own: it may come from ``--conf``).
OPTION_CHECKS = MappingProxyType(
    {
        "max_epochs": check_count,
        "batch_size": check_batch_size,
        "lr": check_positive,
        "val_split": check_fraction,
        "preset": check_preset,
        "max_minutes": check_minutes,
        "synthetic_lesions": check_probability,
        "seed": check_seed,
    }
)


class MedSADTrain(TrainTask):
    """Train/publish task. Request keys (defaults shown in ``/info``): ``max_epochs``,
    ``batch_size``, ``lr``, ``val_split``, ``preset``, ``max_minutes`` (0 = no limit),
    ``synthetic_lesions``, ``seed``, ``device`` (each checked by :mod:`lib.serve_config`)."""

    def __init__(self, cache: ModelCache) -> None:
        super().__init__("MedSAD-CLIP: train on the final labels of the datastore")
        self.cache = cache
        preset = load_preset(cache.serve.preset)
        self._config = {
            "max_epochs": 10,
            "batch_size": 8,
            "lr": float(preset.lr),
            "val_split": 0.2,
            "preset": cache.serve.preset,
            "max_minutes": 0,
            "synthetic_lesions": 0.0,
            "seed": 0,
        }

    def config(self) -> dict[str, Any]:
        return dict(self._config)

    @property
    def runs_dir(self) -> Path:
        return self.cache.path.parent / "runs"

    def stats(self) -> dict[str, Any]:
        """Summary of the latest finished run (empty before the first)."""
        latest = sorted(self.runs_dir.glob("*/summary.json")) if self.runs_dir.is_dir() else []
        if not latest:
            return {}
        try:
            return json.loads(latest[-1].read_text())
        except (OSError, ValueError):
            return {}

    def __call__(self, request: dict[str, Any], datastore: Datastore) -> dict[str, Any]:
        opts = self._options(request)
        datalist = datastore.datalist()
        if len(datalist) < 2:
            raise InputError(
                f"training needs final labels for at least 2 images (split by volume); "
                f"the datastore has {len(datalist)}"
            )
        stamp = time.strftime("%Y%m%d-%H%M%S")
        run = self.runs_dir / stamp
        n = 1
        while run.exists():
            run, n = self.runs_dir / f"{stamp}-{n}", n + 1
        samples, layout = _samples(datalist, self.cache.serve.slice_axis)
        logger.info("training on %d labelled images (%s) into %s", len(datalist), layout, run)
        started = time.time()
        summary = train(
            TrainOptions(
                data=f"MONAI Label datastore ({len(datalist)} final labels)",
                out=str(run),
                layout=layout,
                preset=opts["preset"],
                clip_model=self.cache.serve.clip_model,
                clip_pretrained=self.cache.serve.clip_pretrained,
                epochs=opts["max_epochs"],
                batch_size=opts["batch_size"],
                lr=opts["lr"],
                seed=opts["seed"],
                max_minutes=opts["max_minutes"] or None,
                val_fraction=opts["val_split"],
                slice_axis=self.cache.serve.slice_axis,
                synthetic_lesions=opts["synthetic_lesions"],
                device=opts["device"],
            ),
            samples=samples,
        )
        best = run / "best.pt"
        if not best.is_file():
            raise InputError(
                f"training finished without a validation-selected checkpoint in {run} "
                "(no validation metric was defined: label more volumes with lesions)"
            )
        self._publish(best)
        result = {
            "run": str(run),
            "published": str(self.cache.path),
            "images": len(datalist),
            "best_epoch": summary["best_epoch"],
            "last_epoch": summary["last_epoch"],
            "best_val_selection": summary["best_selection"],
            "stop_reason": summary["stop_reason"],
            "seconds": round(time.time() - started, 1),
            "options": opts,
        }
        (run / "summary.json").write_text(json.dumps(result, indent=2, default=str))
        return json.loads(json.dumps(result, default=str))

    def _publish(self, best: Path) -> None:
        """Atomically replace the served checkpoint; the previous one is kept as ``*.prev.pt``."""
        target = self.cache.path
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".tmp")
        shutil.copyfile(best, tmp)
        if target.exists():
            shutil.copyfile(target, target.with_name(target.stem + ".prev.pt"))
        os.replace(tmp, target)
        logger.info("published %s -> %s", best, target)

    def _options(self, request: dict[str, Any]) -> dict[str, Any]:
        opts = {**self._config, **{k: request[k] for k in self._config if k in request}}
        opts = {key: OPTION_CHECKS[key](key, value) for key, value in opts.items()}
        opts["device"] = check_device(
            "device", request.get("device") or self.cache.serve.device, require_available=True
        )
        return opts


def _samples(datalist: list[dict[str, str]], slice_axis: int) -> tuple[list, str]:
    """The training samples of the datastore's (image, final label) pairs, read in place (the
    datastore's files are never written to): every slice of a volume, or one sample per 2-D image."""
    volumes = [volume_suffix(Path(d["image"])) is not None for d in datalist]
    images = [Path(d["image"]).suffix.lower() in IMAGE_SUFFIXES for d in datalist]
    if not (all(volumes) or all(images)):
        raise InputError("the datastore mixes volumes and 2-D images; train on one kind at a time")
    samples = []
    for item in datalist:
        image, label = Path(item["image"]), Path(item["label"])
        suffix = volume_suffix(image) or image.suffix
        case = image.name[: -len(suffix)]  # the datastore's image id: split.json names real cases
        with as_input_error():
            if all(volumes):
                samples += volume_samples(image, label, case, slice_axis)
            else:
                samples.append(image_sample(image, label, case))
    return samples, "volumes" if all(volumes) else "sricl"
