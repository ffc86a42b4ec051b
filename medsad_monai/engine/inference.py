"""The one inference path: slices / images / volumes / files through a trained model.

The CLI (``medsad infer``), the MONAI Label app and the Slicer module all call this module.
Volumes run slice-wise in batches; background-only slices are skipped (score 0, empty mask);
only the output volumes are held in memory, never all slices' model inputs at once.

``monai.inferers.SliceInferer`` is not used: it cannot skip background slices, and our output
is a dict with per-slice scores next to the spatial mask.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from medsad_monai.atomic import atomic_write_text
from medsad_monai.checkpoint import FAMILIARITY_KEY
from medsad_monai.data.dicom import DicomSeries, find_dicom_series, is_dicom_file, load_dicom_series, series_of_file
from medsad_monai.data.images import IMAGE_SUFFIXES, load_image_2d
from medsad_monai.data.mirror import reflection_sum, take_mirror_slab
from medsad_monai.data.orientation import ORIENTATIONS, reorientation
from medsad_monai.data.preprocess import is_background, prepare_slice, restore_slice
from medsad_monai.data.volumes import (
    CONTEXT_SLICES,
    INTENSITY_METHODS,
    Geometry,
    load_volume,
    normalize_intensity,
    save_volume,
    save_volume_like,
    take_slab,
    take_slice,
    volume_suffix,
)
from medsad_monai.engine.decision import (
    DEFAULT_PROFILE,
    LOW_CONFIDENCE_LIMIT,
    OperatingPoint,
    check_profile_name,
    checked_spacing,
    lesion_mask,
    lesion_table,
    low_confidence_mask,
    pixel_mm2,
    slice_scores,
    volume_score,
    voxel_mm3,
)
from medsad_monai.engine.familiarity import assess

__all__ = [
    "PRECISIONS",
    "resolve_precision",
    "cpu_has_bf16",
    "store_matmul_weights_bf16",
    "InferenceCancelled",
    "Predictor",
    "VolumeResult",
    "ImageResult",
    "is_background",
    "infer_path",
    "InputImage",
    "read_input",
    "predict_input",
    "predict_file",
    "save_mask",
    "write_outputs",
]

logger = logging.getLogger(__name__)

ProgressFn = Callable[[int, int], None]
CancelFn = Callable[[], bool]


PRECISIONS = ("auto", "fp32", "bf16")
_CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")


@functools.lru_cache(maxsize=1)
def cpu_has_bf16() -> bool:
    """Whether this CPU has bf16 matrix units (``amx_bf16`` or ``avx512_bf16`` in
    ``/proc/cpuinfo``; elsewhere torch's detected capability ``AMX``). Detected, never guessed."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return any(flag in line.split() for flag in _CPU_BF16_FLAGS)
    except OSError:
        pass
    try:
        return "AMX" in str(torch.backends.cpu.get_cpu_capability()).upper()
    except Exception:  # pragma: no cover - very old torch
        return False


def resolve_precision(precision: str | None, device: torch.device) -> str:
    """``auto``/``fp32``/``bf16`` -> the precision that will run on ``device`` (``fp32`` or ``bf16``).

    ``auto`` = bf16 on CUDA with bf16 support or on a CPU with bf16 units
    (:func:`cpu_has_bf16`), fp32 otherwise. ``None`` (the :class:`Predictor` default) keeps the
    historical behaviour: bf16 on CUDA with bf16 support, fp32 on CPUs.

    Raises:
        ValueError: an unknown precision, or bf16 on a device that cannot run it.
    """
    if precision is None:
        return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    value = str(precision).strip().lower()
    if value not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    if value == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
        return "bf16" if device.type == "cpu" and cpu_has_bf16() else "fp32"
    if value == "bf16" and device.type not in ("cpu", "cuda"):
        raise ValueError(f"precision 'bf16' is not supported on device {device.type!r}; use fp32")
    return value


#: Modules whose weights feed the matmuls and convolutions that bf16 autocast runs in bf16.
_MATMUL_MODULES = (
    nn.Linear,
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
    nn.MultiheadAttention,
)


def store_matmul_weights_bf16(model: nn.Module) -> int:
    """Keep the weights of ``model``'s linear, convolution and attention layers in bf16, in place.

    For an inference-only model run under bf16 autocast: autocast would otherwise cast every
    fp32 weight to bf16 again on every forward (10 % of a ViT-B-16 forward on a 2-core CPU,
    issue 16), and the cast result is the same. Norms, embeddings and raw parameters (class and
    positional embeddings, projections) stay fp32, so the residual stream keeps fp32 as under
    plain autocast. Returns the number of tensors cast. Do not train the model afterwards.
    """
    count = 0
    for module in model.modules():
        if isinstance(module, _MATMUL_MODULES):
            for param in module.parameters(recurse=False):
                if param.dtype == torch.float32:
                    param.data = param.data.to(torch.bfloat16)
                    count += 1
    if hasattr(model, "_text_cache"):
        model._text_cache = None  # cached prompt features are recomputed with the cast weights
    return count


class InferenceCancelled(RuntimeError):
    """Raised when the caller's cancel callback asks to stop."""


def _low_confidence(probability: np.ndarray, op: OperatingPoint, axis: int | None, mm3: float | None) -> dict[str, Any]:
    """A result's ``low_confidence`` entry: what the minimum mean removed, largest first."""
    hidden = low_confidence_mask(probability, op, mm3)
    n, lesions = lesion_table(hidden, probability, axis, mm3, limit=LOW_CONFIDENCE_LIMIT)
    return {"n_lesions": n, "lesions": lesions, "min_lesion_mean": float(op.min_lesion_mean)}


@dataclass
class ImageResult:
    """Result for one 2-D image, decided at ``op`` (see :mod:`medsad_monai.engine.decision`)."""

    probability: np.ndarray  # (H, W) float32 lesion probability
    model_score: float
    op: OperatingPoint = field(default_factory=OperatingPoint)
    precision: str | None = None  # the precision the model ran in ("fp32" / "bf16")
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. ``familiarity`` (engine/familiarity.py)

    def with_operating_point(self, op: OperatingPoint) -> ImageResult:
        return dataclasses.replace(self, op=op)

    @property
    def threshold(self) -> float:
        return self.op.map_threshold

    @functools.cached_property
    def mask(self) -> np.ndarray:
        return lesion_mask(self.probability, self.op)

    @functools.cached_property
    def score(self) -> float:
        """The image's score (an image is its own slice and volume)."""
        prob3 = self.probability[..., None]
        slice_score = float(
            slice_scores(self.op.slice_score, prob3, self.mask[..., None], [self.model_score], [False], axis=2)[0]
        )
        return volume_score(self.op.volume_score, prob3, self.mask[..., None], np.asarray([slice_score]))

    @property
    def abnormal(self) -> bool:
        return self.score >= self.op.volume_threshold

    def summary(self) -> dict[str, Any]:
        return {
            "slice_scores": [round(self.score, 6)],
            "volume_score": round(self.score, 6),
            "volume_abnormal": bool(self.abnormal),
            "worst_slice": 0,
            "threshold": self.op.map_threshold,
            "abnormal": bool(self.abnormal),
            "lesion_pixels": int(self.mask.sum()),
            **dict(zip(("n_lesions", "lesions"), lesion_table(self.mask, self.probability, None))),
            "low_confidence": _low_confidence(self.probability, self.op, None, None),
            "operating_point": self.op.summary(),
            **({"precision": self.precision} if self.precision else {}),
            **self.extra,
        }


@dataclass
class VolumeResult:
    """Result for one volume; arrays have exactly the input volume's shape.

    ``probability`` and ``model_scores`` are what the model said; every decision (mask, slice
    and volume scores and flags) is derived at the operating point ``op``, so a new threshold
    re-decides without re-running the model (:meth:`with_operating_point`).
    """

    probability: np.ndarray  # float32 lesion probability
    model_scores: list[float]
    skipped: list[bool]
    axis: int
    op: OperatingPoint = field(default_factory=OperatingPoint)
    extra: dict[str, Any] = field(default_factory=dict)
    precision: str | None = None  # the precision the model ran in ("fp32" / "bf16")
    spacing: tuple[float, float, float] | None = None  # mm per voxel along the array axes (sizes are physical)

    def with_operating_point(self, op: OperatingPoint) -> VolumeResult:
        return dataclasses.replace(self, op=op)

    @property
    def voxel_mm3(self) -> float | None:
        return voxel_mm3(self.spacing)

    @property
    def pixel_mm2(self) -> float | None:
        return pixel_mm2(self.spacing, self.axis)

    @property
    def threshold(self) -> float:
        return self.op.map_threshold

    @functools.cached_property
    def mask(self) -> np.ndarray:
        """The post-processed binary lesion mask (uint8)."""
        return lesion_mask(self.probability, self.op, self.voxel_mm3)

    @functools.cached_property
    def slice_scores(self) -> list[float]:
        return [
            float(s)
            for s in slice_scores(
                self.op.slice_score,
                self.probability,
                self.mask,
                self.model_scores,
                self.skipped,
                self.axis,
                self.op.area_factor(self.pixel_mm2),
            )
        ]

    @functools.cached_property
    def volume_score(self) -> float:
        return volume_score(
            self.op.volume_score,
            self.probability,
            self.mask,
            np.asarray(self.slice_scores),
            self.op.volume_factor(self.voxel_mm3),
        )

    @property
    def volume_abnormal(self) -> bool:
        return self.volume_score >= self.op.volume_threshold

    @property
    def worst_slice(self) -> int:
        return int(np.argmax(self.slice_scores)) if self.slice_scores else 0

    @property
    def abnormal_slices(self) -> list[int]:
        return [i for i, s in enumerate(self.slice_scores) if s >= self.op.slice_threshold]

    @functools.cached_property
    def lesions(self) -> tuple[int, list[dict[str, Any]]]:
        """The post-processed mask's lesions: their number and the largest ones
        (:func:`~medsad_monai.engine.decision.lesion_table`)."""
        return lesion_table(self.mask, self.probability, self.axis, self.voxel_mm3)

    @functools.cached_property
    def low_confidence(self) -> dict[str, Any]:
        """What the operating point's minimum mean removed (:func:`~medsad_monai.engine.decision.low_confidence_mask`):
        ``n_lesions``, the largest ``lesions`` (as :attr:`lesions` lists them) and the ``min_lesion_mean``."""
        return _low_confidence(self.probability, self.op, self.axis, self.voxel_mm3)

    def summary(self) -> dict[str, Any]:
        """Plain-Python result (JSON / MONAI Label ``result`` ready)."""
        n_lesions, lesions = self.lesions
        return {
            "slice_scores": [round(float(s), 6) for s in self.slice_scores],
            "volume_score": round(float(self.volume_score), 6),
            "volume_abnormal": bool(self.volume_abnormal),
            "worst_slice": self.worst_slice,
            "threshold": float(self.op.map_threshold),
            "slice_threshold": float(self.op.slice_threshold),
            "volume_threshold": float(self.op.volume_threshold),
            "slice_axis": int(self.axis),
            "abnormal_slices": self.abnormal_slices,
            "skipped_slices": int(sum(self.skipped)),
            "lesion_voxels": int(self.mask.sum()),
            "n_lesions": n_lesions,
            "lesions": lesions,
            "min_lesion_voxels_applied": self.op.min_voxels_at(self.voxel_mm3),
            "low_confidence": self.low_confidence,
            "operating_point": self.op.summary(),
            **({"precision": self.precision} if self.precision else {}),
            **self.extra,
        }


class Predictor:
    """Batched slice-wise prediction with a MedSAD-CLIP (or baseline) model.

    Args:
        model: a model exposing ``image_size``, ``normalize`` and returning ``mask``/``score``.
        batch_size: slices per forward pass.
        threshold: lesion-map threshold; overrides the operating point's ``map_threshold``.
        device: torch device; default CUDA when available.
        operating_point: how outputs become decisions (a checkpoint's ``calibration`` block);
            default: the uncalibrated 0.5 fallback.
        intensity: the per-volume intensity normalisation the model was trained with (a
            checkpoint's ``intensity``); :meth:`normalize_volume` applies it.
        precision: ``"auto"``, ``"fp32"`` or ``"bf16"`` (autocast around the model forward, see
            :func:`resolve_precision`); ``None`` keeps the historical default (bf16 on CUDA
            with bf16 support, fp32 on CPUs). :attr:`precision` is what runs. A model loaded by
            :meth:`from_checkpoint` to run in bf16 keeps its matmul weights in bf16
            (:func:`store_matmul_weights_bf16`); a model passed in is left as it is.
        context_slices: neighbouring slices on each side the model sees as channels (a
            checkpoint's ``context_slices``); :meth:`predict_volume` feeds slabs
            (:func:`~medsad_monai.data.volumes.take_slab`) when it is 1.
        orientation: which voxel order the model slices (a checkpoint's ``orientation``):
            ``ras``, the RAS view of a volume whose affine :meth:`predict_volume` is given
            (:mod:`~medsad_monai.data.orientation`), or ``file``, the array as it is.
        mirror_channel: the model sees each volume slice beside its left-right mirror (a
            checkpoint's ``mirror_channel``; :func:`~medsad_monai.data.mirror.take_mirror_slab`,
            the midline estimated once per volume); such a model does not take 2-D images.

    :attr:`profiles` holds every operating point the model has by calibration-profile name
    (:meth:`from_checkpoint`: the checkpoint's ``default`` and its named profiles; otherwise the
    one given); :meth:`profile_point` picks one for a request.

    Raises:
        ValueError: bad ``batch_size``, ``intensity``, ``precision``, ``context_slices`` or
            ``orientation``.
    """

    def __init__(
        self,
        model: nn.Module,
        batch_size: int = 8,
        threshold: float | None = None,
        device: str | torch.device | None = None,
        operating_point: OperatingPoint | None = None,
        intensity: str = "percentile",
        precision: str | None = None,
        context_slices: int = 0,
        orientation: str = "ras",
        mirror_channel: bool = False,
    ) -> None:
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if intensity not in INTENSITY_METHODS:
            raise ValueError(f"intensity {intensity!r}: expected one of {', '.join(INTENSITY_METHODS)}")
        if context_slices not in CONTEXT_SLICES:
            raise ValueError(f"context_slices {context_slices!r}: expected one of {CONTEXT_SLICES}")
        if orientation not in ORIENTATIONS:
            raise ValueError(f"orientation {orientation!r}: expected one of {', '.join(ORIENTATIONS)}")
        if mirror_channel and (context_slices or orientation != "ras"):
            raise ValueError("the mirror channel needs the RAS view and no context slices")
        self.intensity = intensity
        self.context_slices = context_slices
        self.orientation = orientation
        self.mirror_channel = bool(mirror_channel)
        op = operating_point or OperatingPoint()
        self.operating_point = op.with_overrides(map_threshold=threshold)
        self.profiles: dict[str, OperatingPoint] = {op.profile: op}
        #: The training volumes' intensity histograms (a checkpoint's ``familiarity`` block): every
        #: volume result then says whether the scan is like them (:mod:`~medsad_monai.engine.familiarity`).
        self.familiarity_reference: dict[str, Any] | None = None
        #: Log each unfamiliar result's warning (batch paths count them once instead).
        self.warn_unfamiliar = True
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.precision = resolve_precision(precision, self.device)
        self.model = model.to(self.device).eval()
        self.batch_size = batch_size

    @property
    def threshold(self) -> float:
        return self.operating_point.map_threshold

    def profile_point(self, profile: str | None) -> OperatingPoint:
        """The operating point of calibration profile ``profile`` (None: :attr:`operating_point`).

        Raises:
            ValueError: a profile this model does not have (the message lists those it has).
        """
        if profile is None:
            return self.operating_point
        if profile not in self.profiles:
            check_profile_name(profile)
            raise ValueError(
                f"calibration profile {profile!r}: this model has {', '.join(self.profiles)} "
                f"(fit one with `medsad calibrate --profile {profile}`)"
            )
        return self.profiles[profile]

    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike,
        clip_pretrained: str | None = None,
        precision: str | None = None,
        profile: str | None = None,
        **kwargs: Any,
    ) -> Predictor:
        """Load a checkpoint written by ``medsad train`` (see :mod:`medsad_monai.checkpoint`),
        with its calibrated operating point (or the 0.5 fallback, said in the log), or that of
        its calibration profile ``profile``. ``precision`` and ``kwargs`` go to :class:`Predictor`.

        Raises:
            ValueError: ``profile`` is not in the checkpoint (the message lists those it holds)."""
        from medsad_monai.checkpoint import (
            calibration_profiles,
            context_slices_of,
            intensity_of,
            load_checkpoint,
            mirror_channel_of,
            operating_point_of,
            orientation_of,
        )

        resolve_precision(precision, torch.device("cpu"))  # refuse a bad name before loading the model
        kwargs["precision"] = precision
        if profile is not None:
            check_profile_name(profile)
        model, payload = load_checkpoint(path, clip_pretrained=clip_pretrained)
        profiles = calibration_profiles(payload, path)
        if kwargs.get("operating_point") is None:
            chosen = profile or DEFAULT_PROFILE
            known = chosen in profiles
            kwargs["operating_point"] = profiles[chosen] if known else operating_point_of(payload, path, chosen)
        kwargs.setdefault("intensity", intensity_of(payload, path))
        kwargs.setdefault("context_slices", context_slices_of(payload, path))
        kwargs.setdefault("orientation", orientation_of(payload, path))
        kwargs.setdefault("mirror_channel", mirror_channel_of(payload, path))
        predictor = cls(model, **kwargs)
        predictor.profiles = profiles
        predictor.familiarity_reference = payload.get(FAMILIARITY_KEY) or None
        if predictor.precision == "bf16":  # the model is this predictor's own: cast its weights once
            store_matmul_weights_bf16(predictor.model)
        return predictor

    def normalize_volume(self, volume: np.ndarray) -> np.ndarray:
        """A raw volume mapped to [0, 1] the way this model's training volumes were."""
        return normalize_intensity(volume, method=self.intensity)

    @torch.no_grad()
    def predict_slices(
        self, slices: Sequence[np.ndarray], pixel_mm: tuple[float, float] | None = None
    ) -> list[tuple[np.ndarray, float]]:
        """2-D slices/images in [0, 1] -> (probability on the slice's grid, score) each;
        ``pixel_mm`` (row, column mm of the slices) makes non-square pixels square first."""
        size = int(self.model.image_size)
        inputs, geoms = zip(*(prepare_slice(s, size, pixel_mm) for s in slices))
        batch = self.model.normalize(torch.stack(inputs).to(self.device))
        autocast = self.precision == "bf16"
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=autocast):
            out = self.model(batch)
        probs = out["mask"][:, 1].float().cpu()
        scores = out["score"].float().cpu().tolist()
        return [(restore_slice(p, g).numpy(), float(s)) for p, g, s in zip(probs, geoms, scores)]

    def predict_image(self, image: np.ndarray) -> ImageResult:
        """One 2-D image (H, W) or (H, W, 3) in [0, 1].

        Raises:
            ValueError: the model sees slices beside their left-right mirror (volumes only).
        """
        if self.mirror_channel:
            raise ValueError(
                "this model sees each volume slice beside its left-right mirror about the head's midline: it reads "
                "volumes (NIfTI, NRRD, DICOM), not 2-D images, whose left-right axis and midline are unknown"
            )
        prob, score = self.predict_slices([image])[0]
        result = ImageResult(prob.astype(np.float32), score, self.operating_point, precision=self.precision)
        self._add_familiarity(result, image, "image")
        return result

    def predict_volume(
        self,
        volume: np.ndarray,
        axis: int = 2,
        skip_background: bool = True,
        progress: ProgressFn | None = None,
        cancel: CancelFn | None = None,
        spacing: Sequence[float] | None = None,
        affine: np.ndarray | None = None,
    ) -> VolumeResult:
        """A normalised 3-D volume in [0, 1], slice by slice along ``axis``; ``spacing`` (mm per
        voxel along the array axes, from the file) makes the lesion sizes the decisions count
        physical (see :class:`~medsad_monai.engine.decision.OperatingPoint`).

        With the file's ``affine`` (voxel to RAS) a ``ras`` model slices the volume's RAS view,
        ``axis`` counting there (2: axial), and the result is mapped back to the file's voxels:
        its arrays have the input's shape and order, its ``axis`` is the file's axis the slices
        were cut along and its per-slice lists run in the file's order.

        Raises:
            ValueError: not 3-D, bad axis or non-finite voxels.
            InferenceCancelled: ``cancel()`` returned True.
        """
        result = self._predict_volume(volume, axis, skip_background, progress, cancel, spacing, affine)
        self._add_familiarity(result, volume, "volume")
        return result

    def _add_familiarity(self, result: ImageResult | VolumeResult, array: np.ndarray, unit: str) -> None:
        """Put the ``familiarity`` block in ``result.extra`` (when the checkpoint has a reference
        of this ``unit``) and log its warning."""
        familiarity = assess(array, self.familiarity_reference, unit)
        if familiarity is not None:
            result.extra["familiarity"] = familiarity
            if not familiarity["familiar"]:
                (logger.warning if self.warn_unfamiliar else logger.debug)("%s", familiarity["warning"])

    def _predict_volume(
        self,
        volume: np.ndarray,
        axis: int,
        skip_background: bool,
        progress: ProgressFn | None,
        cancel: CancelFn | None,
        spacing: Sequence[float] | None,
        affine: np.ndarray | None,
    ) -> VolumeResult:
        if volume.ndim == 3 and axis in (0, 1, 2):
            view = reorientation(affine, self.orientation)
            if not view.identity:
                result = self._predict_volume(
                    view.to_ras(volume), axis, skip_background, progress, cancel, view.spacing_to_ras(spacing), None
                )
                return VolumeResult(
                    view.to_file(result.probability),
                    view.slices_to_file(result.model_scores, axis),
                    view.slices_to_file(result.skipped, axis),
                    view.file_axis(axis),
                    self.operating_point,
                    precision=self.precision,
                    spacing=checked_spacing(spacing),
                )
        if volume.ndim != 3:
            raise ValueError(f"expected a 3-D volume, got shape {volume.shape}")
        if axis not in (0, 1, 2):
            raise ValueError(f"slice axis must be 0, 1 or 2, got {axis}")
        if not np.isfinite(volume).all():
            raise ValueError(f"volume contains {int((~np.isfinite(volume)).sum())} NaN/inf voxels")
        n = volume.shape[axis]
        probability = np.zeros(volume.shape, dtype=np.float32)
        scores = [0.0] * n
        skipped = [skip_background and is_background(take_slice(volume, axis, i)) for i in range(n)]
        todo = [i for i in range(n) if not skipped[i]]
        mm = checked_spacing(spacing)
        pixel_mm = None if mm is None else tuple(float(mm[d]) for d in range(3) if d != axis)  # (rows, columns)
        done = 0
        k = reflection_sum(volume) if self.mirror_channel else 0
        for start in range(0, len(todo), self.batch_size):
            if cancel is not None and cancel():
                raise InferenceCancelled(f"cancelled after {done} of {len(todo)} slices")
            chunk = todo[start : start + self.batch_size]
            slabs = [
                take_mirror_slab(volume, axis, i, k)
                if self.mirror_channel
                else take_slab(volume, axis, i, self.context_slices)
                for i in chunk
            ]
            results = self.predict_slices(slabs, pixel_mm)
            for i, (prob, score) in zip(chunk, results):
                index = [slice(None)] * 3
                index[axis] = i
                probability[tuple(index)] = prob
                scores[i] = score
            done += len(chunk)
            if progress is not None:
                progress(done, len(todo))
        return VolumeResult(
            probability,
            scores,
            skipped,
            axis,
            self.operating_point,
            precision=self.precision,
            spacing=checked_spacing(spacing),
        )


#: What ``medsad infer`` reads: a NIfTI/NRRD volume or PNG/JPG image file, or a DICOM series.
InputSource = Path | DicomSeries


def _outputs_for(source: InputSource, out_dir: Path) -> tuple[Path, Path]:
    if isinstance(source, DicomSeries):  # a series' mask is NIfTI
        return out_dir / f"{source.name}_mask.nii.gz", out_dir / f"{source.name}_scores.json"
    suffix = volume_suffix(source)
    if suffix is not None:
        stem = source.name[: -len(suffix)]
        return out_dir / f"{stem}_mask{suffix}", out_dir / f"{stem}_scores.json"
    return out_dir / f"{source.stem}_mask.png", out_dir / f"{source.stem}_scores.json"


_SUPPORTED = "NIfTI/NRRD volumes, PNG/JPG images or DICOM series"


def _collect_inputs(input_path: Path) -> list[InputSource]:
    """A file, or the supported files of a folder and the DICOM series among its files."""
    if input_path.is_dir():
        files: list[InputSource] = sorted(
            p
            for p in input_path.iterdir()
            if p.is_file() and (volume_suffix(p) is not None or p.suffix.lower() in IMAGE_SUFFIXES)
        )
        files += find_dicom_series(input_path)
        if not files:
            raise ValueError(f"no {_SUPPORTED} in folder {str(input_path)!r}")
        return files
    if not input_path.is_file():
        raise FileNotFoundError(f"input {str(input_path)!r} does not exist")
    if is_dicom_file(input_path):
        return [series_of_file(input_path)]
    if volume_suffix(input_path) is None and input_path.suffix.lower() not in IMAGE_SUFFIXES:
        raise ValueError(f"unsupported input {str(input_path)!r}: use {_SUPPORTED} (a folder or one of its files)")
    return [input_path]


def infer_path(
    predictor: Predictor,
    input_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    axis: int = 2,
    skip_background: bool = True,
    progress: ProgressFn | None = None,
    dicom_seg: bool = False,
) -> list[dict[str, Any]]:
    """Run a file or every supported file of a folder; write masks + ``<stem>_scores.json``.

    Volume masks keep exactly the input's geometry and format; 2-D masks are PNGs of the
    image's size (0/255); a DICOM series' mask is NIfTI, and with ``dicom_seg`` also a DICOM SEG
    referencing the series (:func:`~medsad_monai.data.dicom_seg.write_dicom_seg`). Input files are
    never written to.

    Returns:
        One summary dict per input (with ``input``, ``mask`` and ``scores`` paths).
    """
    inputs = _collect_inputs(Path(input_path))
    if dicom_seg and not any(isinstance(source, DicomSeries) for source in inputs):
        logger.warning("DICOM SEG: no DICOM series among the inputs, so none is written")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    bar = tqdm(inputs, desc="infer", unit="input", disable=len(inputs) < 2 or not sys.stderr.isatty())
    for source in bar:
        bar.set_postfix_str(source.name)
        _outputs_checked(source, out, "--out folder")
        image = read_input(source, axis, predictor.orientation)
        slices = _SliceBar(source.name, enabled=progress is None and sys.stderr.isatty())
        try:
            result = predict_input(
                predictor, image, axis=axis, skip_background=skip_background, progress=progress or slices
            )
        finally:
            slices.close()
        geometry = Geometry.from_affine(image.affine) if isinstance(source, DicomSeries) else None
        results.append(write_outputs(result, source, out, geometry=geometry, dicom_seg=dicom_seg))
    return results


class _SliceBar:
    """A progress bar over one volume's slices (on a terminal), fed by ``progress(done, total)``."""

    def __init__(self, name: str, enabled: bool) -> None:
        self.name, self.enabled = name, enabled
        self.bar: Any = None

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        if self.bar is None:
            self.bar = tqdm(total=total, desc=self.name, unit="slice", leave=False)
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _outputs_checked(source: InputSource, out: Path, what: str) -> tuple[Path, Path]:
    mask_path, scores_path = _outputs_for(source, out)
    inputs = [Path(f).resolve() for f in source.files] if isinstance(source, DicomSeries) else [source.resolve()]
    if any(p in inputs for p in (mask_path.resolve(), scores_path.resolve())):
        raise ValueError(f"refusing to overwrite input {str(source)!r}; choose another {what}")
    return mask_path, scores_path


def write_outputs(
    result: VolumeResult | ImageResult,
    input_path: str | os.PathLike | DicomSeries,
    out_dir: str | os.PathLike,
    what: str = "--out folder",
    geometry: Geometry | None = None,
    dicom_seg: bool = False,
) -> dict[str, Any]:
    """Write ``<stem>_mask.<ext>`` (the input's geometry and format) and ``<stem>_scores.json``
    for ``result`` into ``out_dir``, the files ``medsad infer`` writes; returns the summary. A
    DICOM series' mask is ``<series name>_mask.nii.gz`` on the series' ``geometry``.

    Raises:
        ValueError: an output would overwrite the input (``what`` names the option to change), or a
            DICOM series without its geometry.
    """
    source = input_path if isinstance(input_path, DicomSeries) else Path(input_path)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    mask_path, scores_path = _outputs_checked(source, out, what)
    summary: dict[str, Any]
    if isinstance(source, DicomSeries):
        if geometry is None or not isinstance(result, VolumeResult):
            raise ValueError(f"{source}: writing its mask needs the series' geometry (from read_input)")
        save_volume(result.mask, geometry, mask_path)
        series = {"identifier": source.identifier, "description": source.description, "files": len(source.files)}
        summary = {"input": str(source.folder), "dicom_series": series}
        if dicom_seg:  # None when there is no lesion: a SEG holds at least one frame
            from medsad_monai.data.dicom_seg import write_dicom_seg

            seg = write_dicom_seg(result.mask, geometry, source, out / f"{source.name}_seg.dcm")
            summary["dicom_seg"] = None if seg is None else str(seg)
    else:
        save_mask(result, source, mask_path)
        summary = {"input": str(source)}
    summary = {**summary, "mask": str(mask_path), "scores": str(scores_path), **result.summary()}
    atomic_write_text(scores_path, json.dumps(summary, indent=2))
    logger.info(
        "%s: volume_score=%.3f%s worst_slice=%d -> %s",
        source.name,
        summary["volume_score"],
        " (abnormal)" if summary.get("volume_abnormal") else "",
        summary["worst_slice"],
        mask_path,
    )
    return summary


@dataclass(frozen=True)
class InputImage:
    """A read input file: a 3-D volume (raw intensities, file voxel order) or a 2-D image
    ``(H, W, 3)`` in [0, 1]."""

    path: Path
    array: np.ndarray
    is_volume: bool
    spacing: tuple[float, float, float] | None = None  # a volume's mm per voxel along the array axes
    affine: np.ndarray | None = None  # a volume's voxel-to-RAS affine (the RAS view's)


def read_input(path: str | os.PathLike | DicomSeries, axis: int = 2, orientation: str = "ras") -> InputImage:
    """Read a NIfTI/NRRD volume or a DICOM series (to be run slice-wise along ``axis`` of the
    view a model of ``orientation`` slices: 2 is axial in the RAS view) or a 2-D PNG/JPG image.

    Raises:
        ValueError: naming the file: unsupported type, unreadable or truncated, not 3-D, NaN/inf
            voxels, slices along ``axis`` that are lines (one voxel wide).
    """
    if isinstance(path, DicomSeries):
        volume, geometry = load_dicom_series(path)
        return _volume_input(path.folder, str(path), volume, geometry, axis, orientation)
    path = Path(path)
    if volume_suffix(path) is not None:
        volume, geometry = load_volume(path)
        return _volume_input(path, repr(str(path)), volume, geometry, axis, orientation)
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise ValueError(f"unsupported input {str(path)!r}: use .nii/.nii.gz/.nrrd volumes or .png/.jpg images")
    return InputImage(path, load_image_2d(path), False)


def _volume_input(
    path: Path, what: str, volume: np.ndarray, geometry: Geometry, axis: int, orientation: str
) -> InputImage:
    """A read volume checked for slice-wise inference along ``axis`` (``what`` names it in errors)."""
    if volume.ndim != 3:
        raise ValueError(f"{what} is not a 3-D volume (shape {volume.shape})")
    if axis not in (0, 1, 2):
        raise ValueError(f"slice axis must be 0, 1 or 2, got {axis}")
    view = reorientation(geometry.affine, orientation)
    if min(n for i, n in enumerate(volume.shape) if i != view.file_axis(axis)) < 2:
        where = "" if view.identity else " of its RAS view"
        raise ValueError(
            f"{what}: its slices along axis {axis}{where} are lines, not images (shape {volume.shape}); "
            "pick another slice axis"
        )
    # one slice along the axis (nnU-Net's 2-D NIfTI) is fine
    return InputImage(path, volume, True, geometry.spacing, geometry.affine)


def predict_input(
    predictor: Predictor,
    image: InputImage,
    axis: int = 2,
    skip_background: bool = True,
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
) -> VolumeResult | ImageResult:
    """The predictor's result for a read input (:func:`read_input`): a volume is normalised with
    the checkpoint's intensity method and run slice-wise along ``axis``."""
    if image.is_volume:
        return predictor.predict_volume(
            predictor.normalize_volume(image.array),
            axis=axis,
            skip_background=skip_background,
            progress=progress,
            cancel=cancel,
            spacing=image.spacing,
            affine=image.affine,
        )
    return predictor.predict_image(image.array)


def predict_file(
    predictor: Predictor,
    path: str | os.PathLike,
    axis: int = 2,
    skip_background: bool = True,
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
) -> VolumeResult | ImageResult:
    """Predict one NIfTI/NRRD volume or 2-D PNG/JPG image file (:func:`read_input`, then
    :func:`predict_input`).

    Raises:
        ValueError: naming the file: unsupported type, unreadable, not 3-D, slices that are
            lines (one voxel wide), NaN/inf voxels.
    """
    image = read_input(path, axis, predictor.orientation)
    return predict_input(predictor, image, axis, skip_background, progress, cancel)


def save_mask(result: VolumeResult | ImageResult, input_path: str | os.PathLike, out_path: str | os.PathLike) -> Path:
    """Write a result's binary mask: volumes with exactly ``input_path``'s geometry and format,
    2-D images as a PNG of the image's size (0/255)."""
    out_path = Path(out_path)
    if isinstance(result, VolumeResult):
        return save_volume_like(result.mask, input_path, out_path)
    from PIL import Image

    Image.fromarray(result.mask * 255).save(out_path)
    return out_path
