"""The ``medsad`` train task: trains on the datastore's ``final`` labels with
:func:`medsad_monai.engine.train.train` (same code as ``medsad train``) and publishes the
best-validation checkpoint to the served path.

By default a run fine-tunes the served model (same backbone and preset; ``from_scratch: true``
starts anew). After training, the served model and the new best are measured on the run's
validation volumes with the same metric (pooled Dice at each one's calibrated operating point);
the new one is published only when it is not worse (``force: true`` publishes anyway). The
published file is replaced atomically; the previous one is kept as ``*.prev.pt``.

Slices whose label is empty are normal samples; the split is by volume; the dataset is MONAI's
plain ``Dataset`` (no SmartCache). Each run lives in ``<checkpoint dir>/runs/<time>/``.
"""

from __future__ import annotations

import csv
import json
import logging
import tempfile
import time
from pathlib import Path
from types import MappingProxyType
from typing import Any

from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.train import TrainTask

from medsad_monai.atomic import atomic_write
from medsad_monai.checkpoint import context_slices_of, intensity_of, mirror_channel_of, read_checkpoint
from medsad_monai.configs import load_preset
from medsad_monai.data.images import IMAGE_SUFFIXES
from medsad_monai.data.layouts import image_sample, volume_samples
from medsad_monai.data.volumes import volume_suffix
from medsad_monai.engine.calibration import pooled_dice, predict_cases
from medsad_monai.engine.datasets import Split
from medsad_monai.engine.decision import DEFAULT_PROFILE
from medsad_monai.engine.inference import Predictor
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

#: Images with a final label a run needs (training splits them by volume into train and validation).
MIN_LABELLED = 2

#: Boolean switches of a run (not training hyper-parameters).
SWITCHES = ("from_scratch", "force")


def _check_switch(key: str, value: Any) -> bool:
    """A boolean request option (``true``/``false``, also as a string)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0"):
        return value.strip().lower() in ("true", "1")
    raise InputError(f"{key} must be true or false, got {value!r}")


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
            "from_scratch": False,
            "force": False,
        }

    def config(self) -> dict[str, Any]:
        return dict(self._config)

    @property
    def runs_dir(self) -> Path:
        return self.cache.path.parent / "runs"

    def stats(self) -> dict[str, Any]:
        """The latest run: live (``epoch``, ``total_epochs``, ``best_metric``, ``total_time``
        from its ``metrics.csv``) while it trains, its summary once it has finished (with the
        same keys, as MONAI Label's Slicer plugin reads them); empty before the first run."""
        runs = (
            sorted(p for p in self.runs_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
            if self.runs_dir.is_dir()
            else []
        )
        if not runs:
            return {}
        latest = runs[-1]
        try:
            if (latest / "summary.json").is_file():
                return json.loads((latest / "summary.json").read_text())
            return _live_stats(latest)
        except (OSError, ValueError, KeyError):
            return {}

    @staticmethod
    def require_labels(datastore: Datastore) -> list[dict[str, Any]]:
        """The datastore's (image, final label) pairs; :class:`InputError` when fewer than 2
        (training splits by volume). Also checked before an asynchronous run is queued."""
        datalist = datastore.datalist()
        if len(datalist) < MIN_LABELLED:
            raise InputError(
                f"training needs final labels for at least {MIN_LABELLED} images (split by volume); "
                f"the datastore has {len(datalist)}: label more images and submit them as final"
            )
        return datalist

    def __call__(self, request: dict[str, Any], datastore: Datastore) -> dict[str, Any]:
        opts = self._options(request)
        datalist = self.require_labels(datastore)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        run = self.runs_dir / stamp
        n = 1
        while run.exists():
            run, n = self.runs_dir / f"{stamp}-{n}", n + 1
        # the request first: /info reads the run's budget from it until the run's config.json exists;
        # the folder appears under its name (an atomic rename) with request.json already inside
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".starting-", dir=self.runs_dir))
        atomic_write(staging / "request.json", lambda fh: fh.write(json.dumps(opts, default=str)), binary=False)
        staging.rename(run)
        samples, layout = _samples(datalist, self.cache.serve.slice_axis)
        init_from, image_size, inherited = self._fine_tune_source(opts)
        logger.info(
            "training on %d labelled images (%s) into %s, %s",
            len(datalist),
            layout,
            run,
            f"fine-tuning {init_from}" if init_from else "from scratch",
        )
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
                image_size=image_size,
                init_from=str(init_from) if init_from else None,
                **inherited,
            ),
            samples=samples,
        )
        best = run / "best.pt"
        if not best.is_file():
            raise InputError(
                f"training finished without a validation-selected checkpoint in {run} "
                "(no validation metric was defined: label more volumes with lesions)"
            )
        val_samples = Split.from_json(run / "split.json").select(samples, "val")
        served_dice = self._val_dice(self.cache.path, val_samples, opts) if self.cache.path.is_file() else None
        new_dice = self._val_dice(best, val_samples, opts)
        better = served_dice is None or new_dice >= served_dice
        publish = better or opts["force"]
        logger.info(
            "validation pooled Dice: served %s, new %.4f -> %s",
            "none" if served_dice is None else f"{served_dice:.4f}",
            new_dice,
            "published" if publish else "not published (worse than the served model; force: true publishes)",
        )
        if publish:
            self._publish(best)
        result = {
            "run": str(run),
            "published": publish,
            "checkpoint": str(self.cache.path),
            "fine_tuned_from": str(init_from) if init_from else None,
            "served_val_dice": None if served_dice is None else round(served_dice, 5),
            "new_val_dice": round(new_dice, 5),
            "val_cases": sorted({s.group for s in val_samples}),
            "images": len(datalist),
            "best_epoch": summary["best_epoch"],
            "last_epoch": summary["last_epoch"],
            "best_val_selection": summary["best_selection"],
            "stop_reason": summary["stop_reason"],
            "seconds": round(time.time() - started, 1),
            "options": opts,
        }
        result.update(
            epoch=result["last_epoch"],
            total_epochs=opts["max_epochs"],
            best_metric=result["best_val_selection"],
            total_time=result["seconds"],
        )
        atomic_write(run / "summary.json", lambda fh: fh.write(json.dumps(result, indent=2, default=str)), binary=False)
        return json.loads(json.dumps(result, default=str))

    def _fine_tune_source(self, opts: dict[str, Any]) -> tuple[Path | None, int | None, dict[str, Any]]:
        """The served checkpoint to start from, its input size and the input settings a
        fine-tune keeps (its intensity normalisation, context slices and mirror channel), or ``(None, None, {})``
        for a run from scratch (asked for, or nothing served yet). A served model of another
        backbone or preset is refused with both names."""
        served = self.cache.path
        if opts["from_scratch"] or not served.is_file():
            return None, None, {}
        with as_input_error():
            payload = read_checkpoint(served)
        config = payload.get("config", {})
        if payload.get("model") != "medsad":
            raise InputError(
                f"the served model {served.name} is not a MedSAD-CLIP model; train with from_scratch: true"
            )
        given = {"clip_model": self.cache.serve.clip_model} if self.cache.serve.clip_model else {}
        wanted = load_preset(opts["preset"], **given)
        for key, mine in (("preset", wanted.preset), ("clip_model", wanted.clip_model)):
            if config.get(key) != mine:
                raise InputError(
                    f"cannot fine-tune: the served model has {key} {config.get(key)!r}, this run {mine!r}; "
                    f"pass {key} {config.get(key)!r} or from_scratch: true"
                )
        inherited = {
            "intensity": intensity_of(payload, served),
            "context_slices": context_slices_of(payload, served),
            "mirror_channel": mirror_channel_of(payload, served),
        }
        return served, config.get("image_size"), inherited

    def _val_dice(self, checkpoint: Path, val_samples: list, opts: dict[str, Any]) -> float:
        """Pooled validation Dice of ``checkpoint`` at its own calibrated operating point (the
        calibration's metric, lesion-free volumes included)."""
        predictor = Predictor.from_checkpoint(
            checkpoint, clip_pretrained=self.cache.serve.clip_pretrained, device=opts["device"]
        )
        cases = predict_cases(predictor, val_samples, self.cache.serve.slice_axis, desc="comparing")
        return pooled_dice(cases, predictor.operating_point)

    def _publish(self, best: Path) -> None:
        publish_checkpoint(best, self.cache.path)
        if self.cache.serve.profile not in (None, DEFAULT_PROFILE):  # a new model has no profiles yet
            logger.warning(
                "the published model has no calibration profile %r (--conf profile): inferences answer an "
                "error until it is fitted: POST /train/medsad_calibrate (profile %r), or medsad calibrate --ckpt %s "
                "--data <validation data> --profile %s",
                self.cache.serve.profile,
                self.cache.serve.profile,
                self.cache.path,
                self.cache.serve.profile,
            )

    def _options(self, request: dict[str, Any]) -> dict[str, Any]:
        opts = {**self._config, **{k: request[k] for k in self._config if k in request}}
        opts = {
            key: _check_switch(key, value) if key in SWITCHES else OPTION_CHECKS[key](key, value)
            for key, value in opts.items()
        }
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


def publish_checkpoint(best: Path, target: Path) -> None:
    """Copy ``best`` over the served ``target`` atomically (the file at ``target`` is always a
    whole, loadable checkpoint, even if the process dies mid-way); the previous one is kept as
    ``*.prev.pt`` (also written atomically)."""
    payload = best.read_bytes()
    if target.exists():
        previous = target.read_bytes()
        atomic_write(target.with_name(target.stem + ".prev.pt"), lambda fh: fh.write(previous))
    atomic_write(target, lambda fh: fh.write(payload))
    logger.info("published %s -> %s", best, target)


def _live_stats(run: Path) -> dict[str, Any]:
    """Progress of a run that is still training, from its ``metrics.csv`` and ``config.json``."""
    if (run / "config.json").is_file():
        total = json.loads((run / "config.json").read_text())["options"].get("epochs")
    elif (run / "request.json").is_file():  # the run is starting: the budget it was asked for
        total = json.loads((run / "request.json").read_text()).get("max_epochs")
    else:
        total = None
    rows = list(csv.DictReader((run / "metrics.csv").open())) if (run / "metrics.csv").is_file() else []
    selections = [float(r["selection"]) for r in rows if r.get("selection")]
    seconds = sum(float(r.get("seconds") or 0) for r in rows)
    return {
        "run": str(run),
        "running": True,
        "epoch": int(rows[-1]["epoch"]) if rows else 0,
        "total_epochs": total,
        "best_metric": max(selections) if selections else None,
        "total_time": round(seconds, 1),
    }
