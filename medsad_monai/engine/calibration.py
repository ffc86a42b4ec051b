"""Fit the operating point on validation data (never test): ``medsad calibrate`` and end of training.

The validation volumes (or images) run through the one inference path
(:class:`~medsad_monai.engine.inference.Predictor`) at their own resolution; then, in order:

1. **Lesion map** — ``map_threshold`` × ``min_lesion_voxels`` × ``min_lesion_mean`` on a grid,
   maximising the Dice of all validation voxels pooled (lesion-free volumes included, so their
   false positives count), or with ``objective="dice+lesion_f1"`` the mean of that and the
   lesion-wise F1 (found and false lesions counted); ties go to the smaller size filter, the
   threshold nearer 0.5, then no mean filter, else the middle of the tied means.
2. **Slice score** — with that mask, each candidate slice score (``slice_score="auto"``: all of
   :data:`~medsad_monai.engine.decision.SLICE_SCORES`; otherwise the one named) is ranked by
   how well its threshold carries over to a volume it was not fitted on: leave one validation
   volume out, fit the threshold on the others, decide the held-out volume's slices, pool the
   decisions into one balanced accuracy (:func:`cross_validated_balanced_accuracy`; background
   slices left out, as at inference). The best wins — scores within :data:`CV_TIE` of it are
   tied and the mask-based ``lesion_area`` goes first, the model's own (often saturated) score
   last (:data:`PREFERENCE`). With fewer than 3 validation volumes the slice AUROC ranks them
   instead (:data:`AUROC_TIE`). Then ``slice_threshold`` maximises the slice balanced accuracy
   on all validation slices.
3. **Volume score** — the same on validation volumes: the best-ranking volume score, then the
   threshold of best balanced accuracy, placed in the middle of the widest gap between the
   classes. Without both lesion-free and lesion volumes in validation, a volume is called
   abnormal when any post-processed lesion remains, and the block says why.

The result is an :class:`~medsad_monai.engine.decision.OperatingPoint` with the objective in
words and the validation cases and figures it came from.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import logging
import os
import sys
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage
from tqdm.auto import tqdm

from medsad_monai.data.images import load_image_2d, load_mask_2d
from medsad_monai.data.layouts import Sample
from medsad_monai.data.volumes import load_volume, take_slice
from medsad_monai.engine.decision import (
    DEFAULT_PROFILE,
    SLICE_SCORES,
    VOLUME_SCALE,
    VOLUME_SCORES,
    OperatingPoint,
    check_profile_name,
    lesion_components,
    lesion_mask,
    pixel_mm2,
    scaled_min_voxels,
    slice_scores,
    volume_score,
    voxel_mm3,
)
from medsad_monai.engine.metrics import auroc, best_threshold
from medsad_monai.engine.shifts import apply_shift

__all__ = [
    "CaseOutput",
    "iter_cases",
    "predict_cases",
    "fit_operating_point",
    "calibrate_checkpoint",
    "fit_profile",
    "reference_sizes",
    "MAP_OBJECTIVES",
    "MAP_THRESHOLDS",
    "MIN_LESION_SIZES",
    "MIN_LESION_MEANS",
    "pooled_dice",
    "calibration_warnings",
    "FEW_VALIDATION_LESIONS",
    "WEAK_VALIDATION_DICE",
]

logger = logging.getLogger(__name__)

#: 0.10 … 0.95 (from 0.30 before 2026-12-06: with the mean filter a low threshold outlines a lesion
#: and the filter decides whether it stays, and the `tiny` recipe's optimum sat on the 0.30 edge).
MAP_THRESHOLDS: tuple[float, ...] = tuple(round(0.1 + 0.05 * i, 2) for i in range(18))
#: Doubling steps up to 512 voxels. Until 2026-12-05 the grid ended at 64, and the `tiny`
#: recipe's validation optimum sat on that edge with all three seeds (docs/experiments.md).
MIN_LESION_SIZES: tuple[int, ...] = (0, 4, 8, 16, 32, 64, 128, 256, 512)
#: Minimum mean probability of a kept lesion: 0 (none) and 0.50 … 0.95. Since 2026-12-06: on the
#: sample data the model's false-positive blobs are as large as small true lesions but less
#: confident as a whole (docs/experiments.md).
MIN_LESION_MEANS: tuple[float, ...] = (0.0,) + tuple(round(0.5 + 0.05 * i, 2) for i in range(10))
#: What the lesion map's threshold and minimum size maximise on validation: ``dice`` the pooled
#: Dice of all voxels (the default); ``dice+lesion_f1`` the mean of that and the lesion-wise F1
#: (lesion challenges' count of found and false lesions: fewer false-positive lesions, at some
#: cost in voxel overlap; docs/experiments.md, 2026-12-05).
MAP_OBJECTIVES: tuple[str, ...] = ("dice", "dice+lesion_f1")
#: Validation with fewer connected lesions than this fits the lesion filters (minimum size and
#: mean) to a handful of objects: the operating point says so (:func:`calibration_warnings`).
FEW_VALIDATION_LESIONS = 5
#: A fitted pooled validation Dice below this means the model barely finds the validation
#: lesions, so every value fitted on them is weakly determined (seed 2 of the recipe, 0.11 on
#: its 3 validation volumes, asked lesions for a mean probability of 0.85 and lost an unseen
#: head's large lesion on test: docs/experiments.md, 2026-12-06).
WEAK_VALIDATION_DICE = 0.3


@dataclass
class CaseOutput:
    """One validation volume (a 2-D image is an (H, W, 1) volume) and the model's raw outputs."""

    name: str
    probability: np.ndarray  # 3-D float32 lesion probability on the case's own grid
    truth: np.ndarray  # 3-D bool ground truth, same shape
    model_scores: np.ndarray  # (n_slices,) the model's image scores
    skipped: np.ndarray  # (n_slices,) background slices not run
    axis: int
    tags: dict[str, str] = field(default_factory=dict)
    image: np.ndarray | None = None  # the normalised input (kept for report overlays)
    spacing: tuple[float, float, float] | None = None  # a volume's mm per voxel (None for a 2-D image)
    familiarity: dict[str, Any] | None = None  # is the scan like the training volumes (engine/familiarity.py)

    @property
    def voxel_mm3(self) -> float | None:
        return voxel_mm3(self.spacing)

    @property
    def pixel_mm2(self) -> float | None:
        return pixel_mm2(self.spacing, self.axis)

    def image_slice(self, index: int) -> np.ndarray | None:
        return None if self.image is None else take_slice(self.image, self.axis, index)

    @property
    def slice_labels(self) -> np.ndarray:
        other = tuple(i for i in range(3) if i != self.axis)
        return self.truth.any(axis=other)

    @property
    def evaluated(self) -> np.ndarray:
        """Slices that count in slice metrics: those run, and any lesion slice."""
        return ~self.skipped | self.slice_labels

    @property
    def abnormal(self) -> bool:
        return bool(self.truth.any())


def _cases_of(samples: Sequence[Sample]) -> list[tuple[str, Path, Path | None, bool]]:
    """(name, image, mask, is_volume) per case: volume slices grouped by their volume."""
    seen: dict[str, tuple[str, Path, Path | None, bool]] = {}
    for s in samples:
        key = str(s.image)
        if key not in seen:
            mask = s.masks[0] if s.masks else None
            seen[key] = (s.group, Path(s.image), mask, s.slice_index is not None)
    return list(seen.values())


def iter_cases(
    predictor: Any,
    samples: Sequence[Sample],
    slice_axis: int = 2,
    tags: dict[str, dict[str, str]] | None = None,
    desc: str = "predicting",
    keep_image: bool = True,
    shift: str = "none",
) -> Iterator[CaseOutput]:
    """Run every volume / image of ``samples`` through ``predictor`` (the inference path), one
    case at a time, with a progress bar on a terminal. ``shift`` (:mod:`~medsad_monai.engine.shifts`)
    is applied to each raw input first, seeded by the case's name."""
    cases = _cases_of(samples)
    bar = tqdm(cases, desc=desc, disable=len(cases) < 2 or not sys.stderr.isatty(), leave=False)
    warn, predictor.warn_unfamiliar = getattr(predictor, "warn_unfamiliar", True), False  # one line at the end
    unfamiliar: list[str] = []
    try:
        for output in _iter_cases(predictor, bar, slice_axis, tags, keep_image, shift):
            if output.familiarity is not None and not output.familiarity["familiar"]:
                unfamiliar.append(output.name)
            yield output
    finally:
        predictor.warn_unfamiliar = warn
    if unfamiliar:
        logger.warning(
            "%d of %d case(s) are unlike the model's training cases (familiarity; e.g. %s): its decisions were "
            "calibrated on other scans and may not hold on them",
            len(unfamiliar),
            len(cases),
            ", ".join(unfamiliar[:5]),
        )


def _iter_cases(
    predictor: Any,
    bar: Any,
    slice_axis: int,
    tags: dict[str, dict[str, str]] | None,
    keep_image: bool,
    shift: str,
) -> Iterator[CaseOutput]:
    """The body of :func:`iter_cases`: one :class:`CaseOutput` per case of ``bar``."""
    for name, image, mask_path, is_volume in bar:
        case_tags = (tags or {}).get(name, {})
        if is_volume:
            array, geometry = load_volume(image)
            truth = (np.asarray(load_volume(mask_path)[0]) > 0) if mask_path else np.zeros(array.shape, bool)
            if truth.shape != array.shape:
                raise ValueError(f"label {str(mask_path)!r} has shape {truth.shape}, its image {array.shape}")
            if shift != "none":
                array = apply_shift(array, shift, seed=zlib.crc32(name.encode()))
            volume = predictor.normalize_volume(array)
            result = predictor.predict_volume(volume, axis=slice_axis, spacing=geometry.spacing, affine=geometry.affine)
            yield CaseOutput(
                name,
                result.probability,
                truth,
                np.asarray(result.model_scores, float),
                np.asarray(result.skipped, bool),
                result.axis,  # the file's axis the slices were cut along (the RAS view's slice_axis)
                case_tags,
                volume if keep_image else None,
                result.spacing,
                result.extra.get("familiarity"),
            )
        else:
            img = load_image_2d(image)
            truth = load_mask_2d([mask_path] if mask_path else [], img.shape[:2]) > 0
            if shift != "none":
                img = apply_shift(img, shift, seed=zlib.crc32(name.encode()), image_2d=True)
            result = predictor.predict_image(img)
            grey = img if img.ndim == 2 else img.mean(axis=-1)
            yield CaseOutput(
                name,
                result.probability[..., None],
                truth[..., None],
                np.asarray([result.model_score], float),
                np.zeros(1, bool),
                2,
                case_tags,
                grey[..., None] if keep_image else None,
                familiarity=result.extra.get("familiarity"),
            )


def predict_cases(
    predictor: Any,
    samples: Sequence[Sample],
    slice_axis: int = 2,
    tags: dict[str, dict[str, str]] | None = None,
    desc: str = "predicting",
) -> list[CaseOutput]:
    """All cases of ``samples`` with the model's outputs (without the input images)."""
    return list(iter_cases(predictor, samples, slice_axis, tags=tags, desc=desc, keep_image=False))


def reference_sizes(cases: Sequence[CaseOutput]) -> tuple[float | None, float | None]:
    """The voxel volume (mm³) and slice pixel area (mm²) the operating point's sizes count in:
    medians over the validation volumes (None when a case has no physical size, e.g. a 2-D image)."""
    if not cases or any(c.spacing is None for c in cases):
        return None, None
    return (
        float(np.median([c.voxel_mm3 for c in cases])),
        float(np.median([c.pixel_mm2 for c in cases])),
    )


def pooled_dice(cases: Sequence[CaseOutput], op: OperatingPoint) -> float:
    """The Dice of all voxels of ``cases`` pooled, their lesion maps post-processed at ``op``
    (:func:`~medsad_monai.engine.decision.lesion_mask`, each case at its own voxel size):
    the figure calibration maximises, lesion-free cases included."""
    inter = pred = truth = 0
    for c in cases:
        mask = lesion_mask(c.probability, op, c.voxel_mm3) > 0
        inter += int((mask & c.truth).sum())
        pred += int(mask.sum())
        truth += int(c.truth.sum())
    return 1.0 if pred + truth == 0 else 2 * inter / (pred + truth)


def _site_figures(cases: Sequence[CaseOutput], op: OperatingPoint) -> dict[str, Any]:
    """Pooled Dice and mean false-positive voxels per lesion-free case at ``op`` (None without one)."""
    free = [int((lesion_mask(c.probability, op, c.voxel_mm3) > 0).sum()) for c in cases if not c.abnormal]
    return {
        "dice_pooled": _r(pooled_dice(cases, op)),
        "fp_voxels_per_lesion_free_volume": round(float(np.mean(free)), 1) if free else None,
    }


def _grids(
    cases: Sequence[CaseOutput],
    thresholds: Sequence[float],
    sizes: Sequence[int],
    reference_mm3: float | None = None,
    means: Sequence[float] = (0.0,),
) -> tuple[np.ndarray, np.ndarray]:
    """Pooled Dice and lesion-wise F1 (each (T, M, Q)) of every (map threshold, minimum lesion
    size, minimum lesion mean probability) triple over all cases, the masks as
    :func:`~medsad_monai.engine.decision.lesion_mask` makes them and the lesions counted as
    :func:`~medsad_monai.engine.metrics.lesion_detection` counts (a true lesion is detected when
    a kept predicted lesion overlaps it; a kept predicted lesion overlapping none is a false
    positive); the sizes count voxels of ``reference_mm3`` mm³ (each case's own voxels are
    scaled to them). A mean at or below the threshold filters nothing (every kept voxel is above it)."""
    shape = (len(thresholds), len(sizes), len(means))
    inter, pred = np.zeros(shape), np.zeros(shape)
    detected, missed, false = np.zeros(shape), np.zeros(shape), np.zeros(shape)
    truth_total = sum(int(c.truth.sum()) for c in cases)
    structure = ndimage.generate_binary_structure(3, 1)  # face connectivity, as lesion_mask
    for c in cases:
        true_labels, n_true = ndimage.label(c.truth, structure=structure)
        for i, t in enumerate(thresholds):
            labels, size, mean = lesion_components(c.probability, t)
            hits = np.bincount(labels.ravel(), weights=c.truth.ravel().astype(np.float64), minlength=size.size)
            hits[0] = 0
            both = (labels > 0) & c.truth
            pairs = np.unique(np.stack([true_labels[both], labels[both]]), axis=1)  # (true, predicted) overlaps
            for j, m in enumerate(sizes):
                least = max(scaled_min_voxels(m, reference_mm3, c.voxel_mm3), 1)
                for k, q in enumerate(means):
                    keep = size >= least
                    if q > t:
                        keep &= mean >= q
                    keep[0] = False
                    pred[i, j, k] += size[keep].sum()
                    inter[i, j, k] += hits[keep].sum()
                    found = np.unique(pairs[0][keep[pairs[1]]]).size
                    detected[i, j, k] += found
                    missed[i, j, k] += n_true - found
                    false[i, j, k] += int((keep & (hits == 0)).sum())
    denom = pred + truth_total
    dice = np.where(denom > 0, 2 * inter / np.maximum(denom, 1), 1.0)
    counted = 2 * detected + missed + false
    f1 = np.where(counted > 0, 2 * detected / np.maximum(counted, 1), 1.0)
    return dice, f1


def calibration_warnings(cases: Sequence[CaseOutput], dice: float) -> list[str]:
    """What makes an operating point fitted on ``cases`` (reaching pooled Dice ``dice``) weakly
    determined, in words a user can act on; empty when nothing does."""
    structure = ndimage.generate_binary_structure(3, 1)
    n_lesions = sum(int(ndimage.label(c.truth, structure=structure)[1]) for c in cases)
    n_free = sum(not c.abnormal for c in cases)
    warnings = []
    if len(cases) < 3:
        warnings.append(
            f"only {len(cases)} validation case(s): the slice score is chosen by AUROC, not by how its "
            "threshold carries over between volumes"
        )
    if n_free == 0:
        warnings.append(
            "no lesion-free validation case: false positives on normal scans were not measured, and the "
            "volume decision falls back to 'any lesion left'"
        )
    if n_free == len(cases):
        warnings.append("no validation case has a lesion: the lesion threshold and filters only remove")
    elif n_lesions < FEW_VALIDATION_LESIONS:
        warnings.append(
            f"validation holds {n_lesions} lesion(s): the minimum lesion size and mean are fitted to few objects"
        )
    if n_free < len(cases) and dice < WEAK_VALIDATION_DICE:
        warnings.append(
            f"the model finds the validation lesions poorly (pooled Dice {dice:.2f} < {WEAK_VALIDATION_DICE}): "
            "every value fitted on them is weakly determined; check the masks before trusting them, and "
            "calibrate on more validation data from the scanners you serve"
        )
    return warnings


def _pick_map(
    score: np.ndarray, thresholds: Sequence[float], sizes: Sequence[int], means: Sequence[float] = (0.0,)
) -> tuple[float, int, float, tuple[int, int, int]]:
    """The (threshold, size, mean) of the best ``score`` (T, M, Q), and the grid index whose
    figures they reach. Ties: the smaller size filter,
    then the threshold nearer 0.5, then no mean filter if it ties, else the middle of the run of
    tied means (every lesion's mean lies outside it, so the validation figures are the same)."""
    best = float(score.max())
    tied = score >= best - 1e-9
    i, j = min(
        ((i, j) for i, j, _ in zip(*np.nonzero(tied))), key=lambda ij: (sizes[ij[1]], abs(thresholds[ij[0]] - 0.5))
    )
    useful = [k for k, q in enumerate(means) if q > thresholds[i]]  # means at or below the threshold filter nothing
    if not useful or any(tied[i, j, k] for k in range(len(means)) if k not in useful):
        k = next((k for k in range(len(means)) if k not in useful and tied[i, j, k]), 0)
        return float(thresholds[i]), int(sizes[j]), 0.0, (int(i), int(j), k)
    first = next(k for k in useful if tied[i, j, k])
    last = first
    while last + 1 < len(means) and last + 1 in useful and tied[i, j, last + 1]:
        last += 1
    return float(thresholds[i]), int(sizes[j]), round((means[first] + means[last]) / 2, 4), (int(i), int(j), first)


def _slices_per_case(cases: Sequence[CaseOutput], kind: str, op: OperatingPoint) -> list[tuple[np.ndarray, np.ndarray]]:
    """(slice scores, slice labels) of each case's evaluated slices."""
    out = []
    for c in cases:
        mask = lesion_mask(c.probability, op, c.voxel_mm3)
        s = slice_scores(kind, c.probability, mask, c.model_scores, c.skipped, c.axis, op.area_factor(c.pixel_mm2))
        keep = c.evaluated
        out.append((s[keep], c.slice_labels[keep]))
    return out


def _slice_table(cases: Sequence[CaseOutput], kind: str, op: OperatingPoint) -> tuple[np.ndarray, np.ndarray]:
    per_case = _slices_per_case(cases, kind, op)
    return np.concatenate([s for s, _ in per_case]), np.concatenate([y for _, y in per_case])


def cross_validated_balanced_accuracy(per_case: Sequence[tuple[np.ndarray, np.ndarray]]) -> float | None:
    """How well a slice score's threshold carries over to a volume it was not fitted on.

    Leave one validation volume out: the threshold of best balanced accuracy on the other
    volumes' slices decides the held-out volume's slices; the decisions of all held-out volumes
    are pooled into one balanced accuracy. None with fewer than 3 volumes or when a class of
    slices is missing. A score whose validation AUROC is high but whose scores shift from volume
    to volume (a saturated image score near 0.95) loses here, as it would on new volumes.
    """
    if len(per_case) < 3:
        return None
    tp = fn = tn = fp = 0
    for i, (scores, labels) in enumerate(per_case):
        rest = [pc for j, pc in enumerate(per_case) if j != i]
        threshold, _ = best_threshold(np.concatenate([s for s, _ in rest]), np.concatenate([y for _, y in rest]))
        if threshold is None:
            return None
        labels = np.asarray(labels, bool)
        called = np.asarray(scores) >= threshold
        tp, fn = tp + int((called & labels).sum()), fn + int((~called & labels).sum())
        tn, fp = tn + int((~called & ~labels).sum()), fp + int((called & ~labels).sum())
    if not (tp + fn) or not (tn + fp):
        return None
    return tp / (tp + fn) / 2 + tn / (tn + fp) / 2


def _volume_table(cases: Sequence[CaseOutput], kind: str, op: OperatingPoint) -> tuple[np.ndarray, np.ndarray]:
    scores, labels = [], []
    for c in cases:
        mask = lesion_mask(c.probability, op, c.voxel_mm3)
        s = slice_scores(
            op.slice_score, c.probability, mask, c.model_scores, c.skipped, c.axis, op.area_factor(c.pixel_mm2)
        )
        scores.append(volume_score(kind, c.probability, mask, s, op.volume_factor(c.voxel_mm3)))
        labels.append(c.abnormal)
    return np.asarray(scores), np.asarray(labels, bool)


#: Slice / volume scores in order of preference when validation cannot tell them apart: the
#: scores read from the post-processed lesion mask first (a flagged slice then shows its lesion,
#: and their thresholds sit on a count, not on the saturated top of a probability), the model's
#: own image score last.
PREFERENCE: tuple[str, ...] = ("lesion_area", "peak", "model", "lesion_volume", "max_slice")
#: Validation AUROCs closer than this are a tie: on a few validation volumes it is one or two slices.
AUROC_TIE = 0.01
#: Cross-validated slice balanced accuracies closer than this are a tie.
CV_TIE = 0.01


def _preferred(figures: dict[str, float | None], tie: float, candidates: Sequence[str]) -> str:
    """The candidate of the best figure; candidates within ``tie`` of it are tied and the first
    in :data:`PREFERENCE` wins."""
    ranked = [k for k in candidates if figures[k] is not None]
    if not ranked:
        return candidates[0]
    best = max(figures[k] for k in ranked)  # type: ignore[type-var]
    tied = [k for k in ranked if figures[k] >= best - tie]  # type: ignore[operator]
    return min(tied, key=lambda k: PREFERENCE.index(k) if k in PREFERENCE else len(PREFERENCE))


def _choose(candidates: Sequence[str], table, cases, op) -> tuple[str, dict[str, float | None]]:
    """The candidate of best validation AUROC; candidates within :data:`AUROC_TIE` of the best
    are tied and the first in :data:`PREFERENCE` wins."""
    aurocs = {k: auroc(*table(cases, k, op)) for k in candidates}
    return _preferred(aurocs, AUROC_TIE, candidates), aurocs


def _choose_slice_score(
    candidates: Sequence[str], cases: Sequence[CaseOutput], op: OperatingPoint
) -> tuple[str, dict[str, float | None], dict[str, float | None]]:
    """The slice score whose threshold carries over best between validation volumes
    (:func:`cross_validated_balanced_accuracy`, within :data:`CV_TIE` a tie broken by
    :data:`PREFERENCE`); with fewer than 3 usable validation volumes, the best AUROC
    (:func:`_choose`). Returns the choice, the AUROCs and the cross-validated accuracies."""
    kind, aurocs = _choose(candidates, _slice_table, cases, op)
    cv = {k: cross_validated_balanced_accuracy(_slices_per_case(cases, k, op)) for k in candidates}
    if all(v is None for v in cv.values()):
        return kind, aurocs, cv
    return _preferred(cv, CV_TIE, candidates), aurocs, cv


def _r(x: float | None) -> float | None:
    return None if x is None else round(float(x), 4)


def fit_operating_point(
    cases: Sequence[CaseOutput],
    *,
    slice_score: str = "auto",
    source: str = "validation",
    thresholds: Sequence[float] = MAP_THRESHOLDS,
    sizes: Sequence[int] = MIN_LESION_SIZES,
    means: Sequence[float] = MIN_LESION_MEANS,
    objective: str = "dice",
) -> OperatingPoint:
    """Fit the operating point on ``cases`` (validation data only; see the module docstring).

    Args:
        cases: validation volumes / images with the model's outputs (:func:`predict_cases`).
        slice_score: ``auto`` (the best-ranking of :data:`SLICE_SCORES` on validation) or one of them.
        source: recorded in the operating point (``validation`` or ``calibrate``).
        objective: what the lesion map's threshold and size maximise (:data:`MAP_OBJECTIVES`).

    Raises:
        ValueError: no cases, an unknown ``slice_score`` or ``objective``.
    """
    if not cases:
        raise ValueError("calibration needs at least one validation volume or image")
    if slice_score != "auto" and slice_score not in SLICE_SCORES:
        raise ValueError(f"slice_score {slice_score!r}: expected auto or one of {', '.join(SLICE_SCORES)}")
    if objective not in MAP_OBJECTIVES:
        raise ValueError(f"objective {objective!r}: expected one of {', '.join(MAP_OBJECTIVES)}")
    reference_mm3, reference_mm2 = reference_sizes(cases)
    dice_grid, f1_grid = _grids(cases, thresholds, sizes, reference_mm3, means)
    t, m, q, at = _pick_map(dice_grid if objective == "dice" else (dice_grid + f1_grid) / 2, thresholds, sizes, means)
    dice, lesion_f1 = float(dice_grid[at]), float(f1_grid[at])
    warnings = calibration_warnings(cases, dice)
    op = OperatingPoint(
        map_threshold=t,
        min_lesion_voxels=m,
        min_lesion_mean=q,
        source=source,
        voxel_mm3=reference_mm3,
        pixel_mm2=reference_mm2,
    )

    candidates = list(SLICE_SCORES) if slice_score == "auto" else [slice_score]
    kind, slice_aurocs, slice_cv = _choose_slice_score(candidates, cases, op)
    s_scores, s_labels = _slice_table(cases, kind, op)
    s_thr, s_bal = best_threshold(s_scores, s_labels)
    op = dataclasses.replace(op, slice_score=kind, slice_threshold=s_thr if s_thr is not None else 0.5)

    v_kind, volume_aurocs = _choose(list(VOLUME_SCORES), _volume_table, cases, op)
    v_scores, v_labels = _volume_table(cases, v_kind, op)
    v_thr, v_bal = best_threshold(v_scores, v_labels)
    volume_note = "threshold of best balanced accuracy on validation volumes, mid-gap"
    if v_thr is None:
        v_kind = "lesion_volume"
        least = max(m, 1) * max(t, q)  # the smallest mass a lesion that survives post-processing can have
        v_thr = float(np.clip(least / (least + VOLUME_SCALE), 1e-4, 1 - 1e-4))
        volume_note = (
            "validation holds only one class of volumes: a volume is abnormal when any post-processed lesion remains"
        )
        v_scores, v_labels = _volume_table(cases, v_kind, op)
    op = OperatingPoint(
        map_threshold=t,
        min_lesion_voxels=m,
        min_lesion_mean=q,
        slice_score=kind,
        slice_threshold=op.slice_threshold,
        volume_score=v_kind,
        volume_threshold=v_thr,
        source=source,
        voxel_mm3=reference_mm3,
        pixel_mm2=reference_mm2,
        objective={
            "map": (
                "pooled Dice of all validation voxels (lesion-free volumes included)"
                if objective == "dice"
                else "mean of the pooled Dice of all validation voxels (lesion-free volumes included) and the "
                "lesion-wise F1 (2 TP / (2 TP + FN + FP) over connected lesions)"
            )
            + f" over map_threshold {list(thresholds)} x min_lesion_voxels {list(sizes)} x min_lesion_mean "
            f"{list(means)} (ties: the smaller size, the threshold nearer 0.5, no mean filter, else the middle of "
            "the tied means)"
            + (f" (voxels of {reference_mm3:.4g} mm³; other voxel sizes keep the same mm³)" if reference_mm3 else ""),
            "slice": f"slice score among {candidates} whose threshold carries over best between validation "
            f"volumes: leave-one-volume-out balanced accuracy (within {CV_TIE} a tie, broken in the order "
            f"{[k for k in PREFERENCE if k in candidates]}; with fewer than 3 volumes the best slice AUROC, within "
            f"{AUROC_TIE} a tie); threshold of best slice balanced accuracy on all validation slices",
            "volume": f"volume score of best validation volume AUROC among {list(VOLUME_SCORES)} (within {AUROC_TIE} a "
            f"tie, broken in the order {[k for k in PREFERENCE if k in VOLUME_SCORES]}); {volume_note}",
        },
        validation={
            "cases": [c.name for c in cases],
            "n_volumes": len(cases),
            "n_lesion_volumes": int(sum(c.abnormal for c in cases)),
            "n_slices": int(s_labels.size),
            "n_lesion_slices": int(s_labels.sum()),
            "map_objective": objective,
            "dice_pooled": _r(dice),
            "lesion_f1": _r(lesion_f1),
            "slice_auroc": {k: _r(v) for k, v in slice_aurocs.items()},
            "slice_cv_balanced_accuracy": {k: _r(v) for k, v in slice_cv.items()},
            "slice_balanced_accuracy": _r(s_bal),
            "volume_auroc": {k: _r(v) for k, v in volume_aurocs.items()},
            "volume_balanced_accuracy": _r(v_bal),
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "warnings": warnings,
        },
    )
    logger.info(
        "operating point (%s, %d validation cases): map %.2f, min lesion %d voxels, min lesion mean %.3g, "
        "slice %s >= %.3f, volume %s >= %.3f; pooled Dice %.3f",
        source,
        len(cases),
        op.map_threshold,
        op.min_lesion_voxels,
        op.min_lesion_mean,
        op.slice_score,
        op.slice_threshold,
        op.volume_score,
        op.volume_threshold,
        dice,
    )
    for warning in warnings:
        logger.warning("operating point: %s", warning)
    return op


def fit_profile(
    cases: Sequence[CaseOutput],
    *,
    profile: str,
    default: OperatingPoint | None = None,
    slice_score: str = "auto",
    objective: str = "dice",
) -> OperatingPoint:
    """Fit an operating point on ``cases`` as ``medsad calibrate`` does (``source`` ``calibrate``)
    and name it ``profile``. For a profile other than ``default``, ``default`` (the checkpoint's
    own operating point) is compared with the new one on the same cases, in-sample, and the
    figures go into its ``validation`` block (``compared_with_default``) and the log."""
    op = dataclasses.replace(
        fit_operating_point(cases, slice_score=slice_score, source="calibrate", objective=objective),
        profile=check_profile_name(profile),
    )
    if op.profile == DEFAULT_PROFILE or default is None:
        return op
    compared = {"default": _site_figures(cases, default), op.profile: _site_figures(cases, op)}
    logger.info(
        "on these %d validation cases: the default operating point pooled Dice %s, %s false-positive voxels "
        "per lesion-free volume; profile %s %s, %s",
        len(cases),
        compared["default"]["dice_pooled"],
        compared["default"]["fp_voxels_per_lesion_free_volume"],
        op.profile,
        compared[op.profile]["dice_pooled"],
        compared[op.profile]["fp_voxels_per_lesion_free_volume"],
    )
    return dataclasses.replace(op, validation={**op.validation, "compared_with_default": compared})


def _without_training_cases(samples: list[Sample], ckpt: str | os.PathLike, data: str | os.PathLike) -> list[Sample]:
    """``samples`` less the cases that trained the checkpoint's model, when ``data`` is the folder
    it was trained from (an operating point fitted on its own training volumes is optimistic and
    would not hold on new scans): said in the log; refused when nothing else is left."""
    from medsad_monai.checkpoint import read_checkpoint, trained_cases_of, training_data_of

    payload = read_checkpoint(ckpt)
    trained, _ = trained_cases_of(payload)
    source = training_data_of(payload)
    if not trained or source is None or Path(data).resolve() != source:
        return samples
    excluded = sorted({s.group for s in samples if s.group in set(trained)})
    left = [s for s in samples if s.group not in set(trained)]
    if excluded and not left:
        raise ValueError(
            f"every case of {data} outside its test split trained this model ({len(excluded)} case(s)): an "
            "operating point fitted on them would be optimistic. Use --split val (the run's validation volumes) "
            "or a folder of other labelled scans"
        )
    if excluded:
        logger.warning(
            "%d case(s) of %s trained this model and are left out of the calibration (%s); it uses the other %d",
            len(excluded),
            data,
            ", ".join(excluded[:8]) + (", ..." if len(excluded) > 8 else ""),
            len({s.group for s in left}),
        )
    return left


def lesion_free_only_message(ckpt: str | os.PathLike, data: str | os.PathLike, n_cases: int) -> str:
    """Why a calibration on lesion-free scans alone is refused, and what to do instead."""
    return (
        f"none of the {n_cases} validation case(s) in {data} has a lesion: an operating point weighs missed "
        "lesions against false positives, and lesion-free scans alone cannot fit it (any threshold that "
        "leaves them clean would do, down to one that finds no lesion at all). Add labelled scans with "
        "lesions from the same scanner beside the lesion-free ones (four were enough for a new head, "
        "docs/decisions.md). To see what the model does on these normal scans, run: medsad evaluate "
        f"--ckpt {ckpt} --data {data} --split all (false-positive voxels per lesion-free volume)"
    )


def calibrate_checkpoint(
    ckpt: str | os.PathLike,
    data: str,
    *,
    split: str = "all",
    layout: str | None = None,
    slice_axis: int = 2,
    slice_score: str | None = None,
    batch_size: int = 8,
    clip_pretrained: str | None = None,
    device: str | None = None,
    out: str | os.PathLike | None = None,
    protocol: Any = None,
    objective: str = "dice",
    profile: str | None = None,
) -> OperatingPoint:
    """``medsad calibrate``: fit the operating point of ``ckpt`` on ``data`` and store it.

    Args:
        ckpt: a checkpoint of ``medsad train``.
        data: the validation data: ``split="all"`` uses every non-test case of the folder (a
            user's own validation set); ``split="val"`` the run's saved validation split.
        slice_score: ``auto`` / a slice score name; default: the model config's ``slice_score``.
        out: write the calibrated checkpoint here instead of updating ``ckpt`` in place.
        protocol: the data protocol (:class:`~medsad_monai.data.protocol.DataProtocol`) whose
            training pool holds the validation data; default: the one ``ckpt`` was trained
            under, so the run's test set never calibrates it.
        objective: what the lesion map's threshold and size maximise (:data:`MAP_OBJECTIVES`).
        profile: store the fit as the calibration profile of this name (one site's or
            scanner's operating point, chosen at inference with ``--profile`` / the request's
            ``profile``), leaving the checkpoint's default operating point as it is; None or
            ``default``: replace the default.

    Returns:
        The fitted operating point (also written into the checkpoint).
    """
    from medsad_monai.checkpoint import operating_point_of, read_checkpoint, write_calibration
    from medsad_monai.engine.datasets import saved_validation
    from medsad_monai.engine.inference import Predictor
    from medsad_monai.engine.train import training_pool

    if protocol is None:  # the protocol the checkpoint was trained under: its test set never calibrates
        from medsad_monai.data.protocol import DataProtocol

        protocol = DataProtocol.from_dict(read_checkpoint(ckpt).get("extra", {}).get("data_protocol"))
    if objective not in MAP_OBJECTIVES:  # before any model runs
        raise ValueError(f"objective {objective!r}: expected one of {', '.join(MAP_OBJECTIVES)}")
    profile = check_profile_name(profile) if profile is not None else DEFAULT_PROFILE
    if split == "val":
        samples, _ = saved_validation(Path(ckpt).parent / "split.json", data, layout, slice_axis, protocol)
    elif split == "all":
        samples, _ = training_pool(data, layout, slice_axis, protocol)
    else:
        raise ValueError(f"--split must be all or val (never test), got {split!r}")
    if split == "all":
        samples = _without_training_cases(samples, ckpt, data)
    if not samples:
        raise ValueError(f"no validation cases in {data} (split {split})")
    if not any(s.label for s in samples):
        raise ValueError(lesion_free_only_message(ckpt, data, len(_cases_of(samples))))
    predictor = Predictor.from_checkpoint(ckpt, clip_pretrained=clip_pretrained, batch_size=batch_size, device=device)
    kind = slice_score or getattr(getattr(predictor.model, "config", None), "slice_score", "auto")
    cases = predict_cases(predictor, samples, slice_axis, desc="calibrating")
    default = operating_point_of(read_checkpoint(ckpt), ckpt) if profile != DEFAULT_PROFILE else None
    op = fit_profile(cases, profile=profile, default=default, slice_score=kind, objective=objective)
    target = Path(ckpt)
    if out is not None:
        import shutil

        target = Path(out)
        if target.resolve() != Path(ckpt).resolve():
            read_checkpoint(ckpt)  # refuse to copy something that is not a checkpoint
            shutil.copyfile(ckpt, target)
    write_calibration(target, op)
    return op
