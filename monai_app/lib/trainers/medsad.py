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
from typing import Any

from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.train import TrainTask

from medsad_monai.configs import PRESETS, load_preset
from medsad_monai.data.layouts import IMAGE_SUFFIXES
from medsad_monai.data.volumes import volume_suffix
from medsad_monai.engine.train import TrainOptions, train

from ..model_cache import ModelCache

logger = logging.getLogger(__name__)


class MedSADTrain(TrainTask):
    """Train/publish task. Request keys (defaults shown in ``/info``): ``max_epochs``,
    ``batch_size``, ``lr``, ``val_split``, ``preset``, ``max_minutes`` (0 = no limit),
    ``synthetic_lesions``, ``seed``, ``device``."""

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
            raise ValueError(f"training needs final labels for at least 2 images (split by volume); "
                             f"the datastore has {len(datalist)}")
        stamp = time.strftime("%Y%m%d-%H%M%S")
        run = self.runs_dir / stamp
        n = 1
        while run.exists():
            run, n = self.runs_dir / f"{stamp}-{n}", n + 1
        data = run.with_name(run.name + "_data")
        layout = _link_dataset(datalist, data)
        logger.info("training on %d labelled images (%s layout) into %s", len(datalist), layout, run)
        started = time.time()
        try:
            summary = train(TrainOptions(
                data=str(data), out=str(run), layout=layout, preset=opts["preset"],
                clip_model=self.cache.serve.clip_model, clip_pretrained=self.cache.serve.clip_pretrained,
                epochs=opts["max_epochs"], batch_size=opts["batch_size"], lr=opts["lr"], seed=opts["seed"],
                max_minutes=opts["max_minutes"] or None, val_fraction=opts["val_split"],
                slice_axis=self.cache.serve.slice_axis, synthetic_lesions=opts["synthetic_lesions"],
                device=opts["device"],
            ))
        finally:
            shutil.rmtree(data, ignore_errors=True)
        best = run / "best.pt"
        if not best.is_file():
            raise ValueError(f"training finished without a validation-selected checkpoint in {run} "
                             "(no validation metric was defined: label more volumes with lesions)")
        self._publish(best)
        result = {
            "run": str(run), "published": str(self.cache.path), "images": len(datalist),
            "best_epoch": summary["best_epoch"], "last_epoch": summary["last_epoch"],
            "best_val_selection": summary["best_selection"], "stop_reason": summary["stop_reason"],
            "seconds": round(time.time() - started, 1), "options": opts,
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
        try:
            opts["max_epochs"] = int(opts["max_epochs"])
            opts["batch_size"] = int(opts["batch_size"])
            opts["lr"] = float(opts["lr"])
            opts["val_split"] = float(opts["val_split"])
            opts["max_minutes"] = float(opts["max_minutes"])
            opts["synthetic_lesions"] = float(opts["synthetic_lesions"])
            opts["seed"] = int(opts["seed"])
        except (TypeError, ValueError) as err:
            raise ValueError(f"bad training option: {err}") from None
        for key in ("max_epochs", "batch_size"):
            if opts[key] < 1:
                raise ValueError(f"{key} {opts[key]}: must be at least 1")
        if not opts["lr"] > 0:
            raise ValueError(f"lr {opts['lr']}: must be positive")
        if not 0.0 < opts["val_split"] < 1.0:
            raise ValueError(f"val_split {opts['val_split']}: must lie strictly between 0 and 1")
        if opts["max_minutes"] < 0:
            raise ValueError(f"max_minutes {opts['max_minutes']}: must be 0 (no limit) or positive")
        if opts["preset"] not in PRESETS:
            raise ValueError(f"preset {opts['preset']!r}: choose one of {', '.join(PRESETS)}")
        device = request.get("device") or self.cache.serve.device
        opts["device"] = device if isinstance(device, str) and device else None
        if opts["device"] and opts["device"].startswith("cuda"):
            import torch

            if not torch.cuda.is_available():
                raise ValueError(f"device {opts['device']!r}: this server has no CUDA device; use cpu")
        return opts


def _link_dataset(datalist: list[dict[str, str]], folder: Path) -> str:
    """Lay the datastore's (image, final label) pairs out as a ``volumes`` (Decathlon) or ``sricl``
    (2-D images) folder of symbolic links; the datastore's files are never written to."""
    volumes = [volume_suffix(Path(d["image"])) is not None for d in datalist]
    images = [Path(d["image"]).suffix.lower() in IMAGE_SUFFIXES for d in datalist]
    if all(volumes):
        layout, image_dir, label_dir = "volumes", folder / "imagesTr", folder / "labelsTr"
    elif all(images):
        layout, image_dir, label_dir = "sricl", folder / "images", folder / "masks"
    else:
        raise ValueError("the datastore mixes volumes and 2-D images; train on one kind at a time")
    image_dir.mkdir(parents=True)
    label_dir.mkdir(parents=True)
    for item in datalist:
        image, label = Path(item["image"]), Path(item["label"])
        suffix = volume_suffix(image) or image.suffix
        stem = image.name[: -len(suffix)]  # the datastore's image id: split.json names real cases
        (image_dir / (stem + (volume_suffix(image) or image.suffix))).symlink_to(image.resolve())
        (label_dir / (stem + (volume_suffix(label) or label.suffix))).symlink_to(label.resolve())
    return layout
