"""MedSAD checkpoints: trainable weights + config + backbone identity, written atomically."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch

from medsad_monai.atomic import atomic_write
from medsad_monai.config import MedSADConfig
from medsad_monai.data.orientation import ORIENTATIONS
from medsad_monai.data.volumes import CONTEXT_SLICES, INTENSITY_METHODS
from medsad_monai.engine.decision import DEFAULT_PROFILE, OperatingPoint, check_profile_name
from medsad_monai.networks.medsad_clip import MedSADCLIP
from medsad_monai.networks.unet_baseline import UNetBaseline

__all__ = [
    "CHECKPOINT_FORMAT",
    "save_checkpoint",
    "load_checkpoint",
    "read_checkpoint",
    "atomic_torch_save",
    "operating_point_of",
    "intensity_of",
    "context_slices_of",
    "mirror_channel_of",
    "orientation_of",
    "trained_cases_of",
    "training_data_of",
    "write_calibration",
    "calibration_profiles",
    "remove_calibration_profile",
    "write_familiarity",
    "PROFILES_KEY",
    "FAMILIARITY_KEY",
]

#: The checkpoint key of the named calibration profiles (name -> ``calibration`` block), beside the
#: checkpoint's own ``calibration`` block (the ``default`` profile).
PROFILES_KEY = "calibration_profiles"
#: The training volumes' intensity histograms (``medsad_monai.engine.familiarity``), written at the end of training.
FAMILIARITY_KEY = "familiarity"

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "medsad-checkpoint/1"
_IDENTITY_KEYS = ("arch", "kind", "pretrained", "sha256", "quick_gelu", "image_size")


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary file in the same folder, then rename over ``path``.

    A crash mid-write leaves the previous file intact.
    """
    atomic_write(path, lambda fh: torch.save(obj, fh))


def _saved_backbone_prefix(config: MedSADConfig) -> str | None:
    """Which backbone weights a checkpoint must carry (None: rebuilt from the identity)."""
    if config.random_init:
        return "backbone."
    if config.train_backbone:
        return "backbone.clip.visual."
    return None


def save_checkpoint(
    model: MedSADCLIP | UNetBaseline,
    path: str | os.PathLike,
    extra: dict[str, Any] | None = None,
    intensity: str = "percentile",
    context_slices: int = 0,
    orientation: str = "ras",
    mirror_channel: bool = False,
) -> Path:
    """Save what is needed to rebuild ``model`` (MedSAD-CLIP, or the UNet baseline whole).

    Holds the config, the backbone identity (arch, pretrained tag or path + sha256), every
    non-backbone weight and buffer, and the backbone weights only when they cannot be rebuilt
    (random init: the whole backbone; a trained image tower: that tower).

    Args:
        model: the model.
        path: destination file (written atomically).
        extra: plain-Python / tensor metadata (epoch, metrics, optimizer state …).
        intensity: the per-volume intensity normalisation the model was trained with
            (:func:`medsad_monai.data.volumes.normalize_intensity`); inference uses the same.
        context_slices: neighbouring slices on each side the model sees as input channels
            (:func:`medsad_monai.data.volumes.take_slab`); inference uses the same.
        orientation: which voxel order the model was trained to slice (``ras``: the RAS view,
            :mod:`medsad_monai.data.orientation`); inference uses the same.
        mirror_channel: the model sees each slice beside its left-right mirror
            (:mod:`medsad_monai.data.mirror`); inference feeds the same.
    """
    if intensity not in INTENSITY_METHODS:
        raise ValueError(f"intensity {intensity!r}: expected one of {', '.join(INTENSITY_METHODS)}")
    if context_slices not in CONTEXT_SLICES:
        raise ValueError(f"context_slices {context_slices!r}: expected one of {CONTEXT_SLICES}")
    if orientation not in ORIENTATIONS:
        raise ValueError(f"orientation {orientation!r}: expected one of {', '.join(ORIENTATIONS)}")
    if mirror_channel and (context_slices or orientation != "ras"):
        raise ValueError("the mirror channel needs the RAS view and no context slices")
    if isinstance(model, UNetBaseline):
        payload = {
            "format": CHECKPOINT_FORMAT,
            "model": "unet",
            "config": model.config_dict(),
            "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "intensity": intensity,
            "context_slices": context_slices,
            "orientation": orientation,
            "mirror_channel": bool(mirror_channel),
            "extra": extra or {},
        }
        atomic_torch_save(payload, path)
        return Path(path)
    prefix = _saved_backbone_prefix(model.config)
    state = {
        k: v.detach().cpu()
        for k, v in model.state_dict().items()
        if not k.startswith("backbone.") or (prefix is not None and k.startswith(prefix))
    }
    payload = {
        "format": CHECKPOINT_FORMAT,
        "model": "medsad",
        "config": model.config.to_dict(),
        "backbone": dict(model.backbone.identity),
        "state_dict": state,
        "intensity": intensity,
        "context_slices": context_slices,
        "orientation": orientation,
        "mirror_channel": bool(mirror_channel),
        "extra": extra or {},
    }
    atomic_torch_save(payload, path)
    logger.info("saved checkpoint %s (%d tensors)", path, len(state))
    return Path(path)


def read_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read and validate a checkpoint file with ``torch.load(weights_only=True)``.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a readable MedSAD checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise ValueError(f"checkpoint {str(path)!r} cannot be read (corrupt or not a torch file): {exc}") from exc
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise ValueError(f"{str(path)!r} is not a MedSAD checkpoint (format {found!r}, expected {CHECKPOINT_FORMAT!r})")
    return payload


def _check_identity(saved: dict[str, Any], built: dict[str, Any], path: Path) -> None:
    diffs = [
        f"{k}: checkpoint has {saved.get(k)!r}, given backbone has {built.get(k)!r}"
        for k in _IDENTITY_KEYS
        if k != "pretrained" or saved.get("kind") == "tag"
        if saved.get(k) != built.get(k)
    ]
    if diffs:
        raise ValueError(
            f"checkpoint {str(path)!r} was trained on another CLIP backbone ({'; '.join(diffs)}). "
            f"Pass the same backbone weights it was trained with (clip_pretrained=<tag or path>)."
        )


def load_checkpoint(
    path: str | os.PathLike,
    clip_pretrained: str | None = None,
    map_location: str | torch.device = "cpu",
) -> tuple[MedSADCLIP | UNetBaseline, dict[str, Any]]:
    """Rebuild a model (MedSAD-CLIP or the UNet baseline) from a checkpoint.

    Args:
        path: checkpoint file.
        clip_pretrained: where the backbone weights are on this machine, when they differ from
            the path/tag recorded at training time; the file must hash to the recorded sha256.
        map_location: device for the tensors.

    Returns:
        The model (eval mode) and the checkpoint payload (``config``, ``backbone``, ``extra`` …).

    Raises:
        FileNotFoundError, ValueError: unreadable checkpoint, or a backbone that does not match.
    """
    path = Path(path)
    payload = read_checkpoint(path, map_location)
    if payload.get("model") == "unet":
        unet = UNetBaseline(**payload["config"])
        unet.load_state_dict(payload["state_dict"])
        return unet.to(map_location).eval(), payload
    config = MedSADConfig.from_dict(payload["config"])
    if clip_pretrained is not None:
        config = config.replace(clip_pretrained=clip_pretrained)
    model = MedSADCLIP(config)
    _check_identity(payload["backbone"], model.backbone.identity, path)
    result = model.load_state_dict(payload["state_dict"], strict=False)
    prefix = _saved_backbone_prefix(config)
    missing = [k for k in result.missing_keys if not k.startswith("backbone.") or (prefix and k.startswith(prefix))]
    if missing or result.unexpected_keys:
        raise ValueError(
            f"checkpoint {str(path)!r} does not fit the model built from its config: "
            f"missing {missing[:5]}, unexpected {list(result.unexpected_keys)[:5]}"
        )
    model.to(map_location).eval()
    return model, payload


def operating_point_of(
    payload: dict[str, Any], path: str | os.PathLike = "checkpoint", profile: str | None = None
) -> OperatingPoint:
    """The checkpoint's calibrated operating point, or that of its calibration profile ``profile``
    (None or ``default``: the ``calibration`` block). A checkpoint without a ``calibration`` block
    (written before calibration existed) gets the 0.5 fallback, and the log says so.

    Raises:
        ValueError: an invalid block, or a profile the checkpoint does not hold (the message
            lists those it holds and how to fit one).
    """
    if profile is not None and profile != DEFAULT_PROFILE:
        profiles = calibration_profiles(payload, path)
        if profile not in profiles:
            check_profile_name(profile)
            raise ValueError(
                f"calibration profile {profile!r} is not in {str(path)!r} (it holds: {', '.join(profiles)}); "
                f"fit it with `medsad calibrate --ckpt {path} --data <that site's validation data> "
                f"--profile {profile}`"
            )
        return profiles[profile]
    block = payload.get("calibration")
    if not block:
        logger.warning(
            "%s has no calibration block: using the uncalibrated 0.5 thresholds "
            "(run `medsad calibrate --ckpt %s --data <validation data>` to fit them)",
            path,
            path,
        )
        return OperatingPoint()
    try:
        return OperatingPoint.from_dict(dict(block))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"checkpoint {str(path)!r} has an invalid calibration block: {exc}") from exc


def calibration_profiles(payload: dict[str, Any], path: str | os.PathLike = "checkpoint") -> dict[str, OperatingPoint]:
    """Every operating point of the checkpoint by profile name, ``default`` (its ``calibration``
    block, or the 0.5 fallback) first, then the named profiles in the order they were added."""
    points = {DEFAULT_PROFILE: operating_point_of(payload, path)}
    stored = payload.get(PROFILES_KEY) or {}
    if not isinstance(stored, dict):
        raise ValueError(f"checkpoint {str(path)!r} has an invalid {PROFILES_KEY} entry (expected a mapping)")
    for name, block in stored.items():
        try:
            op = OperatingPoint.from_dict(dict(block))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"checkpoint {str(path)!r} has an invalid calibration profile {name!r}: {exc}") from exc
        if op.profile != name:
            raise ValueError(f"checkpoint {str(path)!r}: calibration profile {name!r} says it is {op.profile!r}")
        points[name] = op
    return points


def intensity_of(payload: dict[str, Any], path: str | os.PathLike = "checkpoint") -> str:
    """The checkpoint's per-volume intensity normalisation (``percentile`` for checkpoints
    written before the choice existed: what they were trained with)."""
    method = payload.get("intensity", "percentile")
    if method not in INTENSITY_METHODS:
        raise ValueError(
            f"checkpoint {str(path)!r} names an unknown intensity normalisation {method!r} "
            f"(this version knows {', '.join(INTENSITY_METHODS)})"
        )
    return method


def context_slices_of(payload: dict[str, Any], path: str | os.PathLike = "checkpoint") -> int:
    """How many neighbouring slices on each side the checkpoint's model sees (0 for checkpoints
    written before the choice existed: one slice, repeated to three channels)."""
    context = payload.get("context_slices", 0)
    if context not in CONTEXT_SLICES:
        raise ValueError(
            f"checkpoint {str(path)!r} asks for {context!r} context slices (this version knows {CONTEXT_SLICES})"
        )
    return int(context)


def mirror_channel_of(payload: dict[str, Any], path: str | os.PathLike = "checkpoint") -> bool:
    """Whether the checkpoint's model sees each slice beside its left-right mirror (False for
    checkpoints written before the choice existed: the slice repeated to three channels)."""
    mirror = payload.get("mirror_channel", False)
    if not isinstance(mirror, bool):
        raise ValueError(f"checkpoint {str(path)!r} has mirror_channel {mirror!r} (expected true or false)")
    return mirror


def trained_cases_of(payload: dict[str, Any]) -> tuple[list[str], bool]:
    """The names of the cases (volumes or images) the checkpoint's model was trained on, and
    whether that list is complete: ``extra.train_cases`` (written by training since 2026-12-08),
    else the cases of its familiarity reference (at most 64 volumes or 256 images of them: maybe
    not all), else ``([], False)`` (not recorded)."""
    cases = (payload.get("extra") or {}).get("train_cases")
    if isinstance(cases, list) and all(isinstance(c, str) for c in cases):
        return list(cases), True
    reference = (payload.get(FAMILIARITY_KEY) or {}).get("cases")
    if isinstance(reference, list) and all(isinstance(c, str) for c in reference):
        return list(reference), False
    return [], False


def training_data_of(payload: dict[str, Any]) -> Path | None:
    """The data folder the checkpoint's model was trained from (resolved; ``extra.train_data``,
    written by ``medsad train`` since 2026-12-08), or None (not recorded, or not a folder: e.g.
    the MONAI Label app's datastore)."""
    data = (payload.get("extra") or {}).get("train_data")
    return Path(data) if isinstance(data, str) and data else None


def orientation_of(payload: dict[str, Any], path: str | os.PathLike = "checkpoint") -> str:
    """Which voxel order the checkpoint's model slices (``file`` for checkpoints written before
    the RAS view existed: they were trained on the files' own voxel order)."""
    orientation = payload.get("orientation", "file")
    if orientation not in ORIENTATIONS:
        raise ValueError(
            f"checkpoint {str(path)!r} names an unknown orientation {orientation!r} "
            f"(this version knows {', '.join(ORIENTATIONS)})"
        )
    return str(orientation)


def write_calibration(path: str | os.PathLike, op: OperatingPoint) -> Path:
    """Store ``op`` in the checkpoint at ``path`` (atomically; the weights and everything else are
    kept as they are): as its ``calibration`` block when ``op.profile`` is ``default``, else as
    the calibration profile of that name (replacing one of the same name)."""
    payload = read_checkpoint(path)
    if op.profile == DEFAULT_PROFILE:
        payload["calibration"] = op.to_dict()
    else:
        profiles = dict(payload.get(PROFILES_KEY) or {})
        if op.profile in profiles:
            logger.info("calibration profile %r of %s is replaced", op.profile, path)
        profiles[op.profile] = op.to_dict()
        payload[PROFILES_KEY] = profiles
    atomic_torch_save(payload, path)
    logger.info("calibration (%s, profile %s) written to %s", op.source, op.profile, path)
    return Path(path)


def write_familiarity(path: str | os.PathLike, block: dict[str, Any]) -> Path:
    """Store the training volumes' (or images') familiarity reference (:mod:`medsad_monai.engine.familiarity`)
    in the checkpoint at ``path`` (atomically; everything else kept)."""
    payload = read_checkpoint(path)
    payload[FAMILIARITY_KEY] = block
    atomic_torch_save(payload, path)
    unit = block.get("unit", "volume")
    logger.info("familiarity reference (%d training %ss) written to %s", len(block["cases"]), unit, path)
    return Path(path)


def remove_calibration_profile(path: str | os.PathLike, profile: str) -> Path:
    """Remove the calibration profile ``profile`` from the checkpoint at ``path`` (atomically).

    Raises:
        ValueError: ``default`` (the checkpoint's own operating point cannot be removed, only
            refitted) or a profile the checkpoint does not hold.
    """
    if profile == DEFAULT_PROFILE:
        raise ValueError(
            "the default operating point cannot be removed; refit it with `medsad calibrate` (without --profile)"
        )
    payload = read_checkpoint(path)
    profiles = dict(payload.get(PROFILES_KEY) or {})
    if profile not in profiles:
        names = ", ".join([DEFAULT_PROFILE, *profiles])
        raise ValueError(f"calibration profile {profile!r} is not in {str(path)!r} (it holds: {names})")
    del profiles[profile]
    payload[PROFILES_KEY] = profiles
    atomic_torch_save(payload, path)
    logger.info("calibration profile %r removed from %s", profile, path)
    return Path(path)
