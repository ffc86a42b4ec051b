"""The types every other ``MedSADLib`` module shares: the error, the result, the progress and
cancel callbacks and the backend interface. This module imports nothing from the package, so
no two ``MedSADLib`` modules import each other in a circle (``tests/test_slicer_static.py``
checks it).

Arrays are in Slicer's ``arrayFromVolume`` order (K, J, I). The scores are one per slice along
the voxel axis the model cut (``MedSADResult.slice_axis``: 0 = I, 1 = J, 2 = K), the volume's
axial axis for a model that slices the RAS view, whichever voxel axis that is.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

#: ``progress(done, total)``: called as slices (or the server request) complete.
ProgressFn = Callable[[int, int], None]
#: ``cancel()``: polled between batches; True stops the run with a :class:`MedSADError`.
CancelFn = Callable[[], bool]

#: Slicer's names of the voxel axes, by index (0, 1, 2)
AXIS_NAMES = "IJK"


def axis_name(axis: int) -> str:
    """``I``, ``J`` or ``K`` for a voxel axis index; :class:`MedSADError` for anything else."""
    if axis not in (0, 1, 2):
        raise MedSADError(f"slice axis {axis!r} is not a voxel axis (0 = I, 1 = J, 2 = K)")
    return AXIS_NAMES[axis]


class MedSADError(RuntimeError):
    """A problem the user can act on; the message says what and where."""


class CancelFlag:
    """A :data:`CancelFn` that a button sets: ``flag.request()``, then the run stops."""

    def __init__(self) -> None:
        self.requested = False

    def request(self) -> None:
        self.requested = True

    def __call__(self) -> bool:
        return self.requested


@dataclass
class MedSADResult:
    """Per-slice anomaly scores and the lesion mask of one volume.

    The decisions come from the model's calibrated operating point (``medsad calibrate``; the
    0.5 fallback for an uncalibrated checkpoint), as in ``medsad infer`` and the server.

    Args:
        slice_scores: one calibrated score per slice along ``slice_axis``.
        mask: (K, J, I) uint8 post-processed lesion mask at ``threshold``.
        threshold: the lesion-map threshold of ``mask``.
        slice_threshold: a slice is abnormal when its score is at or above it.
        volume_score: the volume's calibrated score.
        volume_abnormal: the volume decision (``volume_score >= volume_threshold``).
        volume_threshold: the volume decision threshold.
        probability: (K, J, I) float32 lesion probability when the backend returns it (local);
            then the mask can be re-thresholded without re-running.
        backend: ``"local"`` or ``"server"``.
        info: anything else the backend reported (plain types), notably ``operating_point``
            (``map_threshold``, ``slice_threshold``, ``volume_threshold``, ``source``...).
        calibrated_threshold: the lesion-map threshold of the model's own operating point
            (before any override): where "Calibrated" goes back to.
        redecide: local backend only: ``redecide(threshold, min_lesion_mm3, min_lesion_mean)``
            re-decides everything at another lesion-map threshold, minimum lesion size and minimum
            lesion mean probability (None: calibrated).
        min_lesion_mm3: the minimum lesion size (mm³) set by hand for this result; None = the
            model's calibrated one.
        min_lesion_mean: the minimum mean probability of a kept lesion set by hand for this
            result (0 keeps every lesion the threshold outlines); None = the model's calibrated one.
        slice_axis: the voxel axis the slices were cut along (0 = I, 1 = J, 2 = K): the volume's
            axial axis for a model that slices the RAS view.
    """

    slice_scores: list[float]
    mask: np.ndarray
    threshold: float
    slice_threshold: float = 0.5
    volume_score: float = 0.0
    volume_abnormal: bool = False
    volume_threshold: float = 0.5
    probability: np.ndarray | None = None
    backend: str = "local"
    info: dict[str, Any] = field(default_factory=dict)
    calibrated_threshold: float | None = None
    redecide: Callable[..., MedSADResult] | None = None
    min_lesion_mm3: float | None = None
    min_lesion_mean: float | None = None
    slice_axis: int = 2

    @property
    def worst_slice(self) -> int:
        """Index of the most anomalous slice along :attr:`slice_axis`."""
        return int(np.argmax(self.slice_scores)) if self.slice_scores else 0

    @property
    def axis_name(self) -> str:
        """``I``, ``J`` or ``K``: the voxel axis the slices were cut along."""
        return axis_name(self.slice_axis)

    @property
    def operating_point(self) -> dict[str, Any]:
        """The operating point the decisions were made at (empty when the backend gave none)."""
        return dict(self.info.get("operating_point") or {})

    @property
    def source(self) -> str:
        """Where the thresholds came from: ``default`` (not calibrated: 0.5), ``calibrate``,
        ``validation``..., with ``+override`` when a threshold was set by hand."""
        return str(self.operating_point.get("source", "default"))

    @property
    def can_rethreshold(self) -> bool:
        """True when another lesion-map threshold can be applied without running again."""
        return self.redecide is not None

    def abnormal(self, threshold: float | None = None) -> list[bool]:
        """Per-slice flags at ``threshold`` (default: the calibrated slice threshold)."""
        t = self.slice_threshold if threshold is None else threshold
        return [s >= t for s in self.slice_scores]

    def at(
        self, threshold: float | None, min_lesion_mm3: float | None = None, min_lesion_mean: float | None = None
    ) -> MedSADResult:
        """This result decided at another lesion-map threshold, minimum lesion size and minimum
        lesion mean probability (None: the model's calibrated ones), when it can re-decide (local
        backend); otherwise (a server's binary mask) itself."""
        t = self.calibrated_threshold if threshold is None else float(threshold)
        min_lesion_mm3 = check_min_lesion_mm3(min_lesion_mm3)
        min_lesion_mean = check_min_lesion_mean(min_lesion_mean)
        if t is None or self.redecide is None:
            return self
        same = (min_lesion_mm3, min_lesion_mean) == (self.min_lesion_mm3, self.min_lesion_mean)
        if abs(t - self.threshold) < 1e-12 and same:
            return self
        return self.redecide(t, min_lesion_mm3, min_lesion_mean)

    def mask_at(
        self, threshold: float | None, min_lesion_mm3: float | None = None, min_lesion_mean: float | None = None
    ) -> np.ndarray:
        """The post-processed mask at another lesion-map threshold, size and mean (see :meth:`at`)."""
        return self.at(threshold, min_lesion_mm3, min_lesion_mean).mask

    @classmethod
    def from_summary(cls, summary: dict[str, Any], mask: np.ndarray, **kwargs: Any) -> MedSADResult:
        """Build from a result summary (``medsad_monai``'s ``VolumeResult.summary()`` or the
        server's result JSON): scores, thresholds, decision and ``operating_point``."""
        info = dict(kwargs.pop("info", {}) or {})
        if "operating_point" in summary:
            info.setdefault("operating_point", dict(summary["operating_point"]))
        if "lesions" in summary:  # the post-processed mask's lesions, largest first
            info.setdefault("n_lesions", int(summary.get("n_lesions", len(summary["lesions"]))))
            info.setdefault("lesions", [dict(lesion) for lesion in summary["lesions"]])
        if "low_confidence" in summary:  # what the minimum mean removed
            info.setdefault("low_confidence", dict(summary["low_confidence"]))
        if summary.get("familiarity"):  # is the scan like the training volumes?
            info.setdefault("familiarity", dict(summary["familiarity"]))
        return cls(
            slice_scores=[float(s) for s in summary["slice_scores"]],
            mask=mask,
            threshold=float(summary.get("threshold", 0.5)),
            slice_threshold=float(summary.get("slice_threshold", summary.get("threshold", 0.5))),
            volume_score=float(summary.get("volume_score", max(summary["slice_scores"], default=0.0))),
            volume_abnormal=bool(summary.get("volume_abnormal", False)),
            volume_threshold=float(summary.get("volume_threshold", 0.5)),
            info=info,
            slice_axis=int(summary.get("slice_axis", 2)),
            **kwargs,
        )


def describe_source(source: str) -> str:
    """Plain words for an operating point's ``source``."""
    base, _, override = source.partition("+")
    words = {
        "default": "not calibrated: the 0.5 default",
        "calibrate": "calibrated with 'medsad calibrate'",
        "validation": "calibrated on the validation split",
    }.get(base, f"calibrated ({base})")
    return words + (", values set by hand" if override else "")


def describe_decision(result: MedSADResult) -> str:
    """The model's decision in one paragraph: the volume verdict with its score and operating
    threshold, where the thresholds came from, the most anomalous slice and how many slices are
    abnormal. Shown by the module and the Segment Editor effect."""
    verdict = "ABNORMAL" if result.volume_abnormal else "normal"
    op = result.operating_point
    relation = "≥" if result.volume_abnormal else "<"
    kind = f" ({op['volume_score']})" if op.get("volume_score") else ""
    min_voxels = int(op.get("min_lesion_voxels") or 0)
    size = f", minimum lesion {min_voxels} voxels" if min_voxels > 1 else ""
    if min_voxels > 1 and op.get("min_lesion_mm3"):
        size = f", minimum lesion {float(op['min_lesion_mm3']):g} mm³"
    mean = float(op.get("min_lesion_mean") or 0.0)
    if mean > result.threshold:
        size += f", lesions kept at a mean probability ≥ {mean:.2f}"
    abnormal = sum(result.abnormal())
    profile = str(op.get("profile") or "default")
    where = "" if profile == "default" else f" (calibration profile {profile})"
    text = (
        f"Volume {verdict}: score {result.volume_score:.3f} {relation} threshold {result.volume_threshold:.3f}"
        f"{kind}. Operating point: {describe_source(result.source)}{where}; lesion threshold {result.threshold:.2f}"
        f"{size}. Most anomalous slice {result.axis_name}={result.worst_slice}; {abnormal} of "
        f"{len(result.slice_scores)} slices at or above {result.slice_threshold:.3f}."
    )
    axis = result.axis_name
    text += describe_lesions(result.info, axis) + describe_low_confidence(result.info, axis)
    familiarity = result.info.get("familiarity") or {}
    if familiarity.get("warning"):
        text += f" Warning: {familiarity['warning']}."
    warnings = [str(w) for w in op.get("warnings") or []]
    if warnings:
        more = f" (and {len(warnings) - 1} more: see the model's calibration block)" if len(warnings) > 1 else ""
        text += f" Calibration warns: {warnings[0]}{more}."
    if not result.can_rethreshold:
        text += (
            f" The {result.backend} result's mask is fixed at {result.threshold:.2f}: run again to segment "
            "at another threshold."
        )
    return text


def describe_lesions(info: dict[str, Any], axis: str = "K") -> str:
    """The decision's lesion sentence (e.g. `` 2 lesions; the largest 1,234 mm³ on slices K=40–45.``)
    from a result's lesion table, its slices along ``axis`` (``I``, ``J`` or ``K``); empty when the
    result has none (an older server)."""
    if "n_lesions" not in info:
        return ""
    n = int(info["n_lesions"])
    if n == 0:
        return " No lesion remains after post-processing."
    size, where = _size_and_place((info.get("lesions") or [{}])[0], axis)
    return f" {n} lesion{'s' if n != 1 else ''}; the largest {size}{where}."


def _size_and_place(lesion: dict[str, Any], axis: str = "K") -> tuple[str, str]:
    """A lesion-table row's size (``1,234 mm³``, or voxels without a voxel size) and place
    (`` on slices K=40–45`` along ``axis``, empty without slices)."""
    size = (
        f"{float(lesion['volume_mm3']):,.0f} mm³"
        if lesion.get("volume_mm3") is not None
        else f"{int(lesion.get('voxels', 0)):,} voxels"
    )
    where = f" on slices {axis}={lesion['slices'][0]}–{lesion['slices'][1]}" if lesion.get("slices") else ""
    return size, where


def describe_low_confidence(info: dict[str, Any], axis: str = "K") -> str:
    """The sentence on what the minimum lesion mean removed (e.g. `` The confidence filter hid 1
    region under a mean probability of 0.85: the largest 14,036 mm³ (mean 0.79) on slices
    K=40–61; set Minimum lesion mean to 0 to see it.``); empty when it removed nothing."""
    hidden = info.get("low_confidence") or {}
    n = int(hidden.get("n_lesions") or 0)
    if n == 0:
        return ""
    largest = (hidden.get("lesions") or [{}])[0]
    size, where = _size_and_place(largest, axis)
    mean = f" (mean {float(largest['mean_probability']):.2f})" if largest.get("mean_probability") is not None else ""
    regions = f"{n} region{'s' if n != 1 else ''}"
    return (
        f" The confidence filter hid {regions} under a mean probability of "
        f"{float(hidden.get('min_lesion_mean') or 0):.2f}: the largest {size}{mean}{where}; set Minimum lesion "
        f"mean to 0 to see {'them' if n != 1 else 'it'}."
    )


def check_threshold(threshold: float | None) -> float | None:
    """``None`` (the model's calibrated threshold) or a number strictly inside (0, 1)."""
    if threshold is None:
        return None
    t = float(threshold)
    if not 0.0 < t < 1.0:
        raise MedSADError(f"threshold {t} must lie strictly between 0 and 1")
    return t


def _number(value: Any, what: str, expected: str) -> float:
    """``value`` as a float, or :class:`MedSADError` naming ``what`` and what was ``expected``."""
    try:
        return float(value)
    except (TypeError, ValueError):
        raise MedSADError(f"{what} {value!r}: expected {expected}") from None


def check_min_lesion_mm3(value: float | None) -> float | None:
    """``None`` (the model's calibrated minimum lesion size) or a size in mm³ ``>= 0`` (0 keeps
    every lesion)."""
    if value is None:
        return None
    size = _number(value, "minimum lesion size", "a number of mm³")
    if not (np.isfinite(size) and size >= 0):
        raise MedSADError(f"minimum lesion size {size:g} mm³: must be 0 (keep every lesion) or more")
    return size


_PROFILE_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")


def check_profile(value: str | None) -> str:
    """A calibration profile's name as typed (``""``: the model's own operating point, or the one
    the server is started with): letters, digits, ``_``, ``.``, ``-``, at most 64."""
    name = (value or "").strip()
    if len(name) > 64 or not set(name) <= _PROFILE_CHARS or name[:1] in ("_", ".", "-"):
        raise MedSADError(
            f"calibration profile {name!r}: use up to 64 letters, digits, '_', '.' or '-', starting with a "
            "letter or digit (empty: the model's own operating point)"
        )
    return name


def check_min_lesion_mean(value: float | None) -> float | None:
    """``None`` (the model's calibrated minimum lesion mean probability) or a probability in
    [0, 1) (0 keeps every lesion the threshold outlines)."""
    if value is None:
        return None
    mean = _number(value, "minimum lesion mean", "a probability between 0 and 1")
    if not 0.0 <= mean < 1.0:
        raise MedSADError(f"minimum lesion mean {mean:g}: must be 0 (keep every lesion) or more, and below 1")
    return mean


class Backend(Protocol):
    """Where the model runs. Every backend is called the same way; ``MedSADLogic.run`` checks
    the volume node first, so a backend may assume a 3-D scalar volume."""

    name: str

    def run(
        self,
        volume_node: Any,
        threshold: float | None = None,
        progress: ProgressFn | None = None,
        cancel: CancelFn | None = None,
        min_lesion_mm3: float | None = None,
        min_lesion_mean: float | None = None,
    ) -> MedSADResult:
        """Run ``volume_node`` slice by slice (along its axial axis for a model that slices the RAS
        view; the result says which, ``MedSADResult.slice_axis``); ``threshold`` (lesion map),
        ``min_lesion_mm3`` (connected lesions under it are removed) and ``min_lesion_mean``
        (connected lesions whose mean probability is under it are removed) override the model's
        calibrated ones, ``None`` keeps them. Raises :class:`MedSADError`."""
        ...
