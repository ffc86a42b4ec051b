"""The operating point: how a lesion probability map becomes a mask, slice and volume decisions.

A model gives, per slice, a lesion probability map and a score. What a user reads is a
*decision*: which voxels are lesion, which slices are abnormal, whether the volume is. The
:class:`OperatingPoint` holds every number of that decision; it is fitted on validation data
(:mod:`medsad_monai.engine.calibration`), stored in the checkpoint's ``calibration`` block and
applied here by every front-end (``medsad infer``/``evaluate``, the MONAI Label app, Slicer):

1. **Lesion mask**: ``probability >= map_threshold``, then connected lesions smaller than
   ``min_lesion_voxels`` removed (3-D components for a
   volume, 2-D for an image) — nnU-Net's post-processing, chosen on validation, never on test —
   and so are lesions whose voxels' mean probability is below ``min_lesion_mean`` (a lesion
   outlined at a low threshold stays only when the model is confident of it as a whole).
   The size is physical: it was fitted on validation voxels of ``voxel_mm3`` mm³, and a volume
   with another voxel size drops lesions under the same ``min_lesion_voxels * voxel_mm3`` mm³
   (:meth:`OperatingPoint.min_voxels_at`; 2-D images and older checkpoints count voxels).
2. **Slice score** (``slice_score``), one of:

   - ``model``: the model's own image score (the paper: P(abnormal) from the class token);
   - ``peak``: the peak of the 5×5-smoothed probability map of the slice;
   - ``lesion_area``: the probability mass of the *post-processed* lesion pixels of the slice,
     ``a / (a + AREA_SCALE)``; a slice where post-processing left nothing scores below
     ``NO_LESION_CEILING``, ordered by its ``peak`` (so a ranking does not tie every lesion-free
     slice at 0), and no slice threshold (at least 1e-4) flags it.

   A slice is abnormal when its score is ``>= slice_threshold``.
3. **Volume score** (``volume_score``): ``lesion_volume`` — the probability mass of the
   post-processed lesion voxels, ``v / (v + VOLUME_SCALE)`` — or ``max_slice`` — the highest
   slice score. The volume is abnormal when its score is ``>= volume_threshold``.

The scales only map a count into [0, 1] for display; every decision is a threshold on a
monotone score, so rankings (AUROC) do not depend on them. The default operating point
(``source="default"``) is the behaviour of checkpoints written before calibration existed:
0.5 everywhere, no size filter, the model's score.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

from medsad_monai.config import strict_from_dict

__all__ = [
    "AREA_SCALE",
    "scaled_min_voxels",
    "checked_spacing",
    "voxel_mm3",
    "pixel_mm2",
    "VOLUME_SCALE",
    "NO_LESION_CEILING",
    "SLICE_SCORES",
    "VOLUME_SCORES",
    "OperatingPoint",
    "lesion_components",
    "lesion_mask",
    "low_confidence_mask",
    "LOW_CONFIDENCE_LIMIT",
    "lesion_table",
    "LESION_TABLE_LIMIT",
    "slice_scores",
    "volume_score",
    "calibrated_probability",
    "check_threshold",
    "check_min_lesion_mean",
    "DEFAULT_PROFILE",
    "check_profile_name",
]

#: Pixels at which a ``lesion_area`` slice score reaches 0.5.
AREA_SCALE = 20.0
#: ``lesion_area`` of a slice without a post-processed lesion: ``NO_LESION_CEILING * peak``, below
#: every threshold (thresholds are at least 1e-4) and below any slice with a lesion pixel.
NO_LESION_CEILING = 5e-5
#: Voxels at which a ``lesion_volume`` volume score reaches 0.5.
VOLUME_SCALE = 200.0
SLICE_SCORES: tuple[str, ...] = ("model", "peak", "lesion_area")
VOLUME_SCORES: tuple[str, ...] = ("lesion_volume", "max_slice")


def checked_spacing(spacing: Any) -> tuple[float, float, float] | None:
    """``spacing`` (mm per voxel along the three array axes) as floats, or None; a spacing that
    is not three positive finite numbers counts as unknown (sizes are then voxel counts)."""
    if spacing is None:
        return None
    try:
        values = tuple(abs(float(v)) for v in spacing)
    except (TypeError, ValueError):
        return None
    if len(values) != 3 or not all(np.isfinite(v) and v > 0 for v in values):
        return None
    return values  # type: ignore[return-value]


def voxel_mm3(spacing: Any) -> float | None:
    """The volume of one voxel in mm³ (None when the spacing is unknown)."""
    checked = checked_spacing(spacing)
    return None if checked is None else float(np.prod(checked))


def pixel_mm2(spacing: Any, axis: int) -> float | None:
    """The area of one pixel of a slice across ``axis`` in mm² (None when the spacing is unknown)."""
    checked = checked_spacing(spacing)
    return None if checked is None else float(np.prod([v for i, v in enumerate(checked) if i != axis]))


def scaled_min_voxels(min_voxels: int, fitted_mm3: float | None, voxel_mm3: float | None) -> int:
    """``min_voxels`` fitted on voxels of ``fitted_mm3`` mm³, as a voxel count for voxels of
    ``voxel_mm3`` mm³ (the same physical size); unchanged when either is unknown."""
    if min_voxels <= 0 or not fitted_mm3 or not voxel_mm3:
        return int(min_voxels)
    return max(1, int(round(min_voxels * fitted_mm3 / voxel_mm3)))


#: The name of a checkpoint's own operating point (its ``calibration`` block); other names are
#: calibration profiles (``calibration_profiles``: one per site or scanner, ``medsad calibrate --profile``).
DEFAULT_PROFILE = "default"
_PROFILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def check_profile_name(value: Any) -> str:
    """A calibration profile's name: 1-64 letters, digits, ``_``, ``.`` or ``-``, starting with a
    letter or digit (it travels in URLs, JSON and file listings)."""
    if not isinstance(value, str) or not _PROFILE_NAME.fullmatch(value):
        raise ValueError(
            f"calibration profile {value!r}: use 1-64 letters, digits, '_', '.' or '-', starting with a letter "
            "or digit (e.g. site_b or scanner-3T)"
        )
    return value


def check_threshold(name: str, value: Any) -> float:
    """``value`` as a threshold strictly inside (0, 1), or ValueError naming ``name`` and the value."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} {value!r}: expected a number between 0 and 1") from None
    if not 0.0 < v < 1.0:
        raise ValueError(f"{name} {v}: must lie strictly between 0 and 1")
    return v


@dataclass(frozen=True)
class OperatingPoint:
    """Every number that turns model outputs into decisions (see the module docstring).

    Args:
        map_threshold: lesion probability at which a voxel is lesion.
        min_lesion_voxels: connected lesions with fewer voxels are removed (0 = keep all).
        slice_score: how a slice is scored (:data:`SLICE_SCORES`).
        slice_threshold: a slice is abnormal when its score is ``>=`` this.
        volume_score: how a volume is scored (:data:`VOLUME_SCORES`).
        volume_threshold: a volume is abnormal when its score is ``>=`` this.
        source: ``default`` (not calibrated: the 0.5 fallback), ``validation`` (fitted at the
            end of training) or ``calibrate`` (fitted by ``medsad calibrate``); ``override``
            is added when a request or option replaced a value.
        objective: what each value maximised, in words.
        validation: the validation cases and the figures reached on them.
        voxel_mm3: the voxel volume (mm³) of the validation volumes ``min_lesion_voxels`` and the
            ``lesion_volume`` score count in; ``None`` = plain voxel counts (2-D images,
            checkpoints before 2026-12-05).
        pixel_mm2: the in-slice pixel area (mm²) the ``lesion_area`` score counts in; ``None`` =
            plain pixel counts.
        min_lesion_mean: connected lesions whose voxels' mean probability is below this are
            removed (0 = no such filter: checkpoints calibrated before 2026-12-06).
        profile: which of the checkpoint's operating points this is: ``default`` (its
            ``calibration`` block) or the name of a calibration profile (fitted by ``medsad
            calibrate --profile NAME`` on one site's or scanner's validation data).
    """

    map_threshold: float = 0.5
    min_lesion_voxels: int = 0
    slice_score: str = "model"
    slice_threshold: float = 0.5
    volume_score: str = "max_slice"
    volume_threshold: float = 0.5
    source: str = "default"
    objective: dict[str, str] = field(default_factory=dict)
    validation: dict[str, Any] = field(default_factory=dict)
    voxel_mm3: float | None = None
    pixel_mm2: float | None = None
    min_lesion_mean: float = 0.0
    profile: str = DEFAULT_PROFILE

    def __post_init__(self) -> None:
        check_profile_name(self.profile)
        for name in ("voxel_mm3", "pixel_mm2"):
            value = getattr(self, name)
            if value is not None:
                try:
                    v = float(value)
                except (TypeError, ValueError):
                    v = float("nan")
                if not (np.isfinite(v) and v > 0):
                    raise ValueError(f"{name} {value!r}: expected a positive size in mm or None")
                object.__setattr__(self, name, v)
        for name in ("map_threshold", "slice_threshold", "volume_threshold"):
            object.__setattr__(self, name, check_threshold(name, getattr(self, name)))
        if int(self.min_lesion_voxels) != self.min_lesion_voxels or self.min_lesion_voxels < 0:
            raise ValueError(f"min_lesion_voxels {self.min_lesion_voxels!r}: expected a whole number >= 0")
        object.__setattr__(self, "min_lesion_voxels", int(self.min_lesion_voxels))
        object.__setattr__(self, "min_lesion_mean", check_min_lesion_mean(self.min_lesion_mean))
        if self.slice_score not in SLICE_SCORES:
            raise ValueError(f"slice_score {self.slice_score!r}: expected one of {', '.join(SLICE_SCORES)}")
        if self.volume_score not in VOLUME_SCORES:
            raise ValueError(f"volume_score {self.volume_score!r}: expected one of {', '.join(VOLUME_SCORES)}")

    def min_voxels_at(self, voxel_mm3: float | None) -> int:
        """The minimum lesion size in voxels of ``voxel_mm3`` mm³ (see :func:`scaled_min_voxels`)."""
        return scaled_min_voxels(self.min_lesion_voxels, self.voxel_mm3, voxel_mm3)

    def volume_factor(self, voxel_mm3: float | None) -> float:
        """Voxels of ``voxel_mm3`` mm³ in this operating point's voxels (1 when either is unknown)."""
        return voxel_mm3 / self.voxel_mm3 if voxel_mm3 and self.voxel_mm3 else 1.0

    def area_factor(self, pixel_mm2: float | None) -> float:
        """Pixels of ``pixel_mm2`` mm² in this operating point's pixels (1 when either is unknown)."""
        return pixel_mm2 / self.pixel_mm2 if pixel_mm2 and self.pixel_mm2 else 1.0

    @property
    def min_lesion_mm3(self) -> float | None:
        """The minimum lesion size in mm³ (None when it is a voxel count)."""
        return None if self.voxel_mm3 is None else round(self.min_lesion_voxels * self.voxel_mm3, 3)

    @property
    def calibrated(self) -> bool:
        return self.source != "default"

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python dict (the checkpoint's ``calibration`` block; JSON and weights_only safe)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> OperatingPoint:
        """Build from a ``calibration`` block, rejecting unknown keys."""
        return strict_from_dict(cls, data, "calibration")

    def min_voxels_for_mm3(self, min_lesion_mm3: Any) -> int:
        """``min_lesion_voxels`` (this operating point's voxels) that removes lesions under
        ``min_lesion_mm3`` mm³: the fewest voxels of ``voxel_mm3`` whose volume reaches it.

        Raises:
            ValueError: not a finite number ``>= 0``, or a size above 0 while this operating point
                has no voxel size (a 2-D model, or one calibrated before 2026-12-05).
        """
        try:
            mm3 = float(min_lesion_mm3)
        except (TypeError, ValueError):
            mm3 = float("nan")
        if isinstance(min_lesion_mm3, bool) or not (np.isfinite(mm3) and mm3 >= 0):
            raise ValueError(f"min_lesion_mm3 {min_lesion_mm3!r}: expected a size in mm³ >= 0 (0 keeps every lesion)")
        if mm3 == 0:
            return 0
        if self.voxel_mm3 is None:
            raise ValueError(
                f"min_lesion_mm3 {mm3:g}: this model's operating point has no voxel size (a 2-D model, or "
                "one calibrated before 2026-12-05), so a size in mm³ cannot be applied; recalibrate it "
                "with 'medsad calibrate' on volumes, or give 0 to keep every lesion"
            )
        return max(1, math.ceil(mm3 / self.voxel_mm3 - 1e-9))

    def with_overrides(self, min_lesion_mm3: Any = None, **values: Any) -> OperatingPoint:
        """A copy with the given values replaced (``None`` values are ignored); marks the source.

        ``min_lesion_mm3`` replaces the minimum lesion size by a physical one
        (:meth:`min_voxels_for_mm3`)."""
        if min_lesion_mm3 is not None:
            values["min_lesion_voxels"] = self.min_voxels_for_mm3(min_lesion_mm3)
        changes = {k: v for k, v in values.items() if v is not None}
        if not changes:
            return self
        changed = {k: v for k, v in changes.items() if getattr(self, k) != v}
        source = self.source if not changed or self.source.endswith("+override") else f"{self.source}+override"
        return dataclasses.replace(self, **changes, source=source)

    def summary(self) -> dict[str, Any]:
        """The values a result JSON reports (without the validation detail), and ``warnings``:
        what calibration said made them weakly determined (``validation.warnings``; empty for
        none, an uncalibrated model and checkpoints calibrated before 2026-12-06)."""
        values = {
            k: getattr(self, k)
            for k in (
                "map_threshold",
                "min_lesion_voxels",
                "min_lesion_mean",
                "slice_score",
                "slice_threshold",
                "volume_score",
                "volume_threshold",
                "source",
                "profile",
                "voxel_mm3",
                "pixel_mm2",
                "min_lesion_mm3",
            )
        }
        values["warnings"] = [str(w) for w in (self.validation or {}).get("warnings") or []]
        return values


def check_min_lesion_mean(value: Any) -> float:
    """``value`` as a minimum mean lesion probability in [0, 1), or ValueError naming the value."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = float("nan")
    if isinstance(value, bool) or not 0.0 <= v < 1.0:
        raise ValueError(f"min_lesion_mean {value!r}: expected a number >= 0 and below 1 (0 = no such filter)")
    return v


def lesion_components(probability: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The connected lesions of ``probability >= threshold`` (3-D for a volume, 2-D for an image,
    face connectivity): ``(labels, sizes, means)`` — the label image, and per label (index 0 the
    background, size 0) its voxel count and its voxels' mean probability. Calibration and
    :func:`lesion_mask` count lesions with this one function, so they agree to the last voxel."""
    prob = np.asarray(probability)
    binary = prob >= threshold
    labels, n = ndimage.label(binary, structure=ndimage.generate_binary_structure(binary.ndim, 1))
    where = np.flatnonzero(labels)  # the lesion voxels: counting them alone skips a clean scan's bulk
    owner = labels.ravel()[where]
    sizes = np.bincount(owner, minlength=n + 1)
    sums = np.bincount(owner, weights=prob.ravel()[where].astype(np.float64), minlength=n + 1)
    means = sums / np.maximum(sizes, 1)
    return labels, sizes, means


def lesion_mask(probability: np.ndarray, op: OperatingPoint, voxel_mm3: float | None = None) -> np.ndarray:
    """Binary lesion mask (uint8, same shape): threshold, then drop lesions below the minimum size
    and lesions whose mean probability is below ``min_lesion_mean``.

    Components are 3-D for a volume and 2-D for an image (face connectivity); a lesion of at
    least ``min_voxels`` voxels stays, exactly as calibration counts them. (MONAI's
    ``RemoveSmallObjects`` did this until scikit-image 0.26, whose deprecation of ``min_size``
    turned it into "at most ``min_size``" removed: a lesion of exactly the minimum size went.)
    ``voxel_mm3`` (this volume's voxel volume) turns the operating point's physical minimum into
    voxels (:meth:`OperatingPoint.min_voxels_at`).
    """
    mask = np.asarray(probability) >= op.map_threshold
    min_voxels = op.min_voxels_at(voxel_mm3)
    if (min_voxels > 1 or op.min_lesion_mean > op.map_threshold) and mask.any():
        labels, sizes, means = lesion_components(probability, op.map_threshold)
        keep = (sizes >= max(min_voxels, 1)) & (means >= op.min_lesion_mean)
        keep[0] = False
        mask = keep[labels]
    return mask.astype(np.uint8)


def low_confidence_mask(probability: np.ndarray, op: OperatingPoint, voxel_mm3: float | None = None) -> np.ndarray:
    """What the minimum mean removed (bool, same shape): the connected lesions of
    ``probability >= map_threshold`` that pass the minimum size but whose mean probability is
    below ``min_lesion_mean``. Empty without a mean filter. A result reports them (a model less sure
    of a new scanner or lesion type than of its validation data loses true lesions here), so a
    user sees what the filter hid; :func:`lesion_mask` at ``min_lesion_mean`` 0 is the two together."""
    prob = np.asarray(probability)
    if op.min_lesion_mean <= op.map_threshold:
        return np.zeros(prob.shape, bool)
    labels, sizes, means = lesion_components(prob, op.map_threshold)
    dropped = (sizes >= max(op.min_voxels_at(voxel_mm3), 1)) & (means < op.min_lesion_mean)
    dropped[0] = False
    return dropped[labels]


#: The most low-confidence regions a result lists (largest first).
LOW_CONFIDENCE_LIMIT = 5
#: The most lesions a result lists (largest first); ``n_lesions`` counts them all.
LESION_TABLE_LIMIT = 50


def lesion_table(
    mask: np.ndarray,
    probability: np.ndarray,
    axis: int | None,
    voxel_mm3: float | None = None,
    limit: int = LESION_TABLE_LIMIT,
) -> tuple[int, list[dict[str, Any]]]:
    """The lesions of a post-processed mask (connected components, face connectivity, as
    :func:`lesion_mask` removes them), largest first: how many there are, and up to ``limit`` of
    them as dicts with ``voxels``, ``volume_mm3`` (None without a voxel size), ``slices`` (first
    and last index along ``axis``, as ``slice_scores`` count them; left out for a 2-D image,
    ``axis`` None), ``centroid_voxel`` (array indices of the mask, one decimal) and the
    ``peak_probability`` and ``mean_probability`` of its voxels."""
    binary = np.asarray(mask) > 0
    labels, n = ndimage.label(binary, structure=ndimage.generate_binary_structure(binary.ndim, 1))
    if n == 0:
        return 0, []
    # Statistics over the lesion voxels only: scipy's per-label maximum sorts the whole volume
    # (about 1 s for a 155×240×240 volume, twice per result), a cost a clean scan should not pay.
    where = np.flatnonzero(labels)
    owner = labels.ravel()[where]
    prob = np.asarray(probability).ravel()[where].astype(np.float64)
    sizes = np.bincount(owner, minlength=n + 1)[1:]
    means = np.bincount(owner, weights=prob, minlength=n + 1)[1:] / sizes
    peaks = np.full(n + 1, -np.inf)
    np.maximum.at(peaks, owner, prob)
    peaks = peaks[1:]
    coords = np.unravel_index(where, binary.shape)
    centroids = np.stack(
        [np.bincount(owner, weights=c.astype(np.float64), minlength=n + 1)[1:] / sizes for c in coords], axis=1
    )
    boxes = ndimage.find_objects(labels)
    lesions = []
    for k in np.argsort(-sizes, kind="stable")[:limit]:
        lesion: dict[str, Any] = {
            "voxels": int(sizes[k]),
            "volume_mm3": None if not voxel_mm3 else round(float(sizes[k]) * voxel_mm3, 2),
        }
        if axis is not None:
            along = boxes[k][axis]
            lesion["slices"] = [int(along.start), int(along.stop) - 1]
        lesions.append(
            {
                **lesion,
                "centroid_voxel": [round(float(c), 1) for c in centroids[k]],
                "peak_probability": round(float(peaks[k]), 4),
                "mean_probability": round(float(means[k]), 4),
            }
        )
    return int(n), lesions


def _per_slice(values: np.ndarray, axis: int) -> np.ndarray:
    other = tuple(i for i in range(values.ndim) if i != axis)
    return values.sum(axis=other)


def _peaks(probability: np.ndarray, axis: int) -> np.ndarray:
    """Per slice along ``axis``: the peak of the 5×5-smoothed probability map."""
    size = [5, 5, 5]
    size[axis] = 1
    smoothed = ndimage.uniform_filter(np.asarray(probability, dtype=np.float32), size=size, mode="constant")
    other = tuple(i for i in range(3) if i != axis)
    return smoothed.max(axis=other).astype(np.float64)


def slice_scores(
    kind: str,
    probability: np.ndarray,
    mask: np.ndarray,
    model_scores: list[float] | np.ndarray,
    skipped: list[bool] | np.ndarray,
    axis: int,
    area_factor: float = 1.0,
) -> np.ndarray:
    """Per-slice scores (n_slices,) of ``kind`` for a 3-D ``probability`` / post-processed ``mask``.

    Skipped (background) slices score 0. ``area_factor`` turns this volume's pixels into the
    operating point's (:meth:`OperatingPoint.area_factor`) for ``lesion_area``.
    """
    if kind == "model":
        scores = np.asarray(model_scores, dtype=np.float64)
    elif kind == "peak":
        scores = _peaks(probability, axis)
    elif kind == "lesion_area":
        area = _per_slice(np.where(mask > 0, probability, 0.0).astype(np.float64), axis) * area_factor
        scores = area / (area + AREA_SCALE)
        empty = area <= 0
        if empty.any():  # ranked by their peak, below every threshold
            scores[empty] = NO_LESION_CEILING * np.clip(_peaks(probability, axis)[empty], 0.0, 1.0)
    else:
        raise ValueError(f"slice_score {kind!r}: expected one of {', '.join(SLICE_SCORES)}")
    scores = np.clip(scores, 0.0, 1.0)
    scores[np.asarray(skipped, dtype=bool)] = 0.0
    return scores


def volume_score(
    kind: str, probability: np.ndarray, mask: np.ndarray, scores: np.ndarray, volume_factor: float = 1.0
) -> float:
    """The volume's (or image's) score of ``kind`` from its post-processed mask or slice scores;
    ``volume_factor`` turns this volume's voxels into the operating point's
    (:meth:`OperatingPoint.volume_factor`) for ``lesion_volume``."""
    if kind == "lesion_volume":
        mass = float(np.where(mask > 0, probability, 0.0).sum(dtype=np.float64)) * volume_factor
        return mass / (mass + VOLUME_SCALE)
    if kind == "max_slice":
        return float(np.max(scores)) if len(scores) else 0.0
    raise ValueError(f"volume_score {kind!r}: expected one of {', '.join(VOLUME_SCORES)}")


def calibrated_probability(score: float, threshold: float) -> float:
    """A score mapped piecewise-linearly so that its decision threshold lands on 0.5.

    ``[0, threshold] -> [0, 0.5]`` and ``[threshold, 1] -> [0.5, 1]``: monotone, so rankings are
    kept, and "how sure" reads the same whatever the calibrated threshold (active learning's
    uncertainty uses it).
    """
    s, t = float(np.clip(score, 0.0, 1.0)), float(threshold)
    return 0.5 * s / t if s < t else 0.5 + 0.5 * (s - t) / (1.0 - t)
