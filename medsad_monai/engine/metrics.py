"""The one metrics module: every number MedSAD reports is computed here.

Per 2D image (a slice) a model gives a lesion probability map ``prob`` (H, W) in [0, 1] and an
image anomaly score in [0, 1]. :class:`MetricAccumulator` streams batches of those against the
ground truth and reports (docs/decisions.md, "What the report says"):

- ``dice``: mean per-image Dice at ``threshold`` over the abnormal images (label 1) whose mask
  has lesion pixels, computed with :func:`monai.metrics.compute_dice`;
- ``dice_global``: Dice of all pixels of all images pooled (normal images included, so their
  false positives count);
- ``accuracy``, ``balanced_accuracy``, ``sensitivity``, ``specificity`` of ``score >= threshold``
  against the image label, and ``baseline_accuracy``: the accuracy of always predicting the
  majority class (slice accuracy means little without it; docs/maintainers.md);
- ``image_auroc``: :func:`monai.metrics.compute_roc_auc` of score against label;
- ``pixel_auroc``: streamed from per-class histograms of the pixel probabilities (see
  :func:`auroc_from_histograms`); no pixel is kept after :meth:`MetricAccumulator.update`;
- ``threshold_sweep``: Dice, global Dice and accuracy at each sweep threshold.

Per volume, :func:`lesion_detection` counts lesions (connected components, face connectivity)
the way lesion challenges do (ISLES, MSSEG): a true lesion is *detected* when a predicted lesion
overlaps it, a predicted lesion that overlaps no true lesion is a *false-positive lesion*;
:func:`volume_metrics` pools them into ``lesion_recall`` and ``lesion_f1`` (``2 TP / (2 TP + FN + FP)``).

Conventions (decided here, used everywhere):

- A pixel or an image is predicted positive when its value is ``>= threshold``.
- An undefined metric is ``None`` (JSON ``null``), never 0 and never NaN, and ``reasons[name]``
  says why in a sentence (``None`` is the JSON-safe spelling of NaN).
- :func:`dice_score` of two empty masks is 1.0 (perfect agreement), of an empty ground truth
  with a non-empty prediction 0.0. The ``dice`` metric never meets that case: it averages over
  abnormal images with a non-empty mask only; abnormal images with an empty mask are counted in
  ``n_abnormal_without_mask`` and left out of ``dice`` (they still count in ``dice_global``).
- A normal image (label 0) whose mask has lesion pixels is contradictory input: ValueError.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from monai.metrics import compute_dice, compute_roc_auc
from scipy import ndimage

__all__ = [
    "MetricAccumulator",
    "auroc",
    "auroc_from_histograms",
    "best_threshold",
    "dice_score",
    "lesion_detection",
    "lesion_f1",
    "rates_at",
    "volume_metrics",
]

ArrayLike = np.ndarray | torch.Tensor | float | int | Sequence[float]


def _to_numpy(x: Any, name: str) -> np.ndarray:
    """Return ``x`` as a NumPy array (tensors are detached and moved to the CPU)."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        if x.dtype in (torch.bfloat16, torch.float16):
            x = x.float()
        return x.numpy()
    try:
        return np.asarray(x)
    except Exception as exc:  # pragma: no cover - exotic inputs
        raise ValueError(f"{name} could not be read as an array ({type(x).__name__}): {exc}") from exc


def _check_unit_interval(a: np.ndarray, name: str) -> np.ndarray:
    """Validate that ``a`` is numeric, NaN-free and inside [0, 1]; return it as float."""
    if a.dtype == bool:
        return a.astype(np.float32)
    if not np.issubdtype(a.dtype, np.number):
        raise ValueError(f"{name} must be numeric, got dtype {a.dtype}")
    a = a.astype(np.float64 if a.dtype == np.float64 else np.float32, copy=False)
    if a.size == 0:
        return a
    n_nan = int(np.isnan(a).sum())
    if n_nan:
        raise ValueError(f"{name} contains {n_nan} NaN value(s); check the model output")
    lo, hi = float(a.min()), float(a.max())
    if lo < 0.0 or hi > 1.0:
        raise ValueError(
            f"{name} must lie in [0, 1] (a probability), got values in [{lo:.4g}, {hi:.4g}]; "
            "apply softmax/sigmoid before the metrics"
        )
    return a


def _check_binary(a: np.ndarray, name: str) -> np.ndarray:
    """Validate that ``a`` holds only 0 and 1; return it as bool."""
    if a.dtype == bool:
        return a
    if not np.issubdtype(a.dtype, np.number):
        raise ValueError(f"{name} must be numeric or bool, got dtype {a.dtype}")
    bad = ~((a == 0) | (a == 1))
    if bad.any():
        examples = np.unique(a[bad])[:5].tolist()
        raise ValueError(f"{name} must contain only 0 and 1, found e.g. {examples}; threshold or binarise it first")
    return a.astype(bool)


def _binary_pair(pred_bin: ArrayLike, gt_bin: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """A prediction and its ground truth as bool arrays of one shape, or ValueError."""
    pred = _check_binary(_to_numpy(pred_bin, "pred_bin"), "pred_bin")
    gt = _check_binary(_to_numpy(gt_bin, "gt_bin"), "gt_bin")
    if pred.shape != gt.shape:
        raise ValueError(f"pred_bin shape {pred.shape} != gt_bin shape {gt.shape}")
    return pred, gt


def dice_score(pred_bin: ArrayLike, gt_bin: ArrayLike) -> float:
    """Dice of one binary prediction against one binary ground truth, any equal shapes.

    Computed with :func:`monai.metrics.compute_dice` (``ignore_empty=False``).

    Args:
        pred_bin: predicted mask, values in {0, 1} (or bool).
        gt_bin: ground-truth mask of the same shape, values in {0, 1} (or bool).

    Returns:
        ``2|P∩G| / (|P| + |G|)``; 1.0 when both masks are empty, 0.0 when only the ground truth
        is empty. (The ``dice`` metric of :class:`MetricAccumulator` skips empty ground truths,
        so this convention matters only to callers ranking single cases.)

    Raises:
        ValueError: on a shape mismatch or values other than 0 and 1.
    """
    pred, gt = _binary_pair(pred_bin, gt_bin)
    p = torch.from_numpy(pred.reshape(1, 1, -1).astype(np.float64))  # (1, 1, N)
    g = torch.from_numpy(gt.reshape(1, 1, -1).astype(np.float64))
    return float(compute_dice(p, g, include_background=True, ignore_empty=False)[0, 0])


def lesion_detection(pred_bin: ArrayLike, gt_bin: ArrayLike) -> dict[str, int]:
    """Lesion-wise counts of one volume (or image): connected components, face connectivity.

    Returns:
        ``lesions`` (true lesions), ``lesions_detected`` (true lesions that a predicted lesion
        overlaps) and ``fp_lesions`` (predicted lesions that overlap no true lesion).

    Raises:
        ValueError: on a shape mismatch or values other than 0 and 1.
    """
    pred, gt = _binary_pair(pred_bin, gt_bin)
    structure = ndimage.generate_binary_structure(gt.ndim, 1)
    true_labels, n_true = ndimage.label(gt, structure=structure)
    pred_labels, n_pred = ndimage.label(pred, structure=structure)
    detected = np.unique(true_labels[pred & gt])
    hit = np.unique(pred_labels[pred & gt])
    return {
        "lesions": int(n_true),
        "lesions_detected": int(detected.size),
        "fp_lesions": int(n_pred - hit.size),
    }


def lesion_f1(detected: int, missed: int, fp_lesions: int) -> float | None:
    """Lesion-wise F1, ``2 TP / (2 TP + FN + FP)`` over lesions; None when there is nothing to
    count (no true and no predicted lesion)."""
    denominator = 2 * detected + missed + fp_lesions
    return 2 * detected / denominator if denominator else None


def auroc_from_histograms(pos_hist: np.ndarray, neg_hist: np.ndarray) -> tuple[float | None, float]:
    """AUROC from per-class histograms over the same ascending bins.

    The AUROC is P(positive value > negative value) + ½·P(tie). Pairs in different bins are
    ordered exactly; pairs that share a bin are counted as ties (½) — the trapezoid rule over
    the ROC curve with one operating point per bin edge.

    Binning error: only pairs sharing a bin can be mis-scored, each by at most ½, so
    ``|streamed - exact| <= bound = ½·Σ_b pos_b·neg_b / (P·N)``. For smooth score distributions
    it shrinks like 1/n_bins, and in practice the error is far below the bound because
    within-bin pairs are about half concordant anyway (1000 bins: typically < 1e-4).

    Args:
        pos_hist: (n_bins,) counts of positive samples per bin.
        neg_hist: (n_bins,) counts of negative samples per bin.

    Returns:
        ``(auroc, bound)``; ``auroc`` is None when one class has no samples.
    """
    pos = np.asarray(pos_hist, dtype=np.float64)
    neg = np.asarray(neg_hist, dtype=np.float64)
    n_pos, n_neg = pos.sum(), neg.sum()
    if n_pos == 0 or n_neg == 0:
        return None, 0.0
    neg_below = np.cumsum(neg) - neg
    pairs = n_pos * n_neg
    auroc = float(np.sum(pos * (neg_below + 0.5 * neg)) / pairs)
    bound = float(0.5 * np.sum(pos * neg) / pairs)
    return auroc, bound


def auroc(scores: ArrayLike, labels: ArrayLike) -> float | None:
    """AUROC of ``scores`` against binary ``labels`` (:func:`monai.metrics.compute_roc_auc`);
    None when one class is missing."""
    s = np.asarray(_to_numpy(scores, "scores"), dtype=np.float64).reshape(-1)
    y = _check_binary(np.asarray(_to_numpy(labels, "labels")).reshape(-1), "labels")
    if s.shape != y.shape:
        raise ValueError(f"scores {s.shape} and labels {y.shape} differ in length")
    if y.all() or not y.any():
        return None
    return float(compute_roc_auc(torch.from_numpy(s), torch.from_numpy(y.astype(np.int64))))


def rates_at(scores: ArrayLike, labels: ArrayLike, threshold: float) -> dict[str, float | None]:
    """Sensitivity, specificity, balanced accuracy and accuracy of ``score >= threshold``."""
    s = np.asarray(_to_numpy(scores, "scores"), dtype=np.float64).reshape(-1)
    y = _check_binary(np.asarray(_to_numpy(labels, "labels")).reshape(-1), "labels")
    pred = s >= threshold
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    sens = float((pred & y).sum() / n_pos) if n_pos else None
    spec = float((~pred & ~y).sum() / n_neg) if n_neg else None
    bal = (sens + spec) / 2 if sens is not None and spec is not None else None
    acc = float((pred == y).mean()) if y.size else None
    return {"sensitivity": sens, "specificity": spec, "balanced_accuracy": bal, "accuracy": acc}


def best_threshold(scores: ArrayLike, labels: ArrayLike) -> tuple[float | None, float | None]:
    """The threshold of best balanced accuracy (``score >= t`` is positive) and that accuracy.

    Candidates lie midway between consecutive distinct scores; among equally good ones the
    threshold in the middle of the widest gap between neighbouring scores wins (the decision
    least sensitive to small score shifts). None when one class is missing.
    """
    s = np.asarray(_to_numpy(scores, "scores"), dtype=np.float64).reshape(-1)
    y = _check_binary(np.asarray(_to_numpy(labels, "labels")).reshape(-1), "labels")
    if y.all() or not y.any():
        return None, None
    values = np.unique(s)
    edges = np.concatenate([[max(values[0] - 1e-3, 0.0)], values, [min(values[-1] + 1e-3, 1.0)]])
    # a threshold lies strictly inside (0, 1) (OperatingPoint): candidates are clipped before they
    # are judged, so the accuracy returned is the accuracy of the threshold returned
    candidates = np.clip((edges[:-1] + edges[1:]) / 2, 1e-4, 1 - 1e-4)
    gaps = edges[1:] - edges[:-1]
    n_pos, n_neg = y.sum(), (~y).sum()
    bal = np.array([((s >= t) & y).sum() / n_pos / 2 + ((s < t) & ~y).sum() / n_neg / 2 for t in candidates])
    best = bal.max()
    tied = np.flatnonzero(bal >= best - 1e-12)
    pick = tied[np.argmax(gaps[tied])]
    return float(candidates[pick]), float(best)


def _one_class_reason(n_abnormal: int, n_normal: int, what: str) -> str:
    if n_abnormal + n_normal == 0:
        return f"no {what} were seen"
    which = "all normal" if n_abnormal == 0 else "all abnormal"
    return f"only one class ({which}) among {n_abnormal + n_normal} {what}"


class MetricAccumulator:
    """Streams per-image predictions and ground truth; :meth:`compute` gives every metric.

    Memory stays bounded: per image only the score and the label are kept (for the exact image
    AUROC); Dice is kept as running sums per threshold and pixels as two ``pixel_bins``
    histograms.

    Args:
        threshold: the operating point for Dice and accuracy (default 0.5; ``medsad evaluate`` passes the
            checkpoint's calibrated one, docs/decisions.md).
        sweep: further thresholds for ``threshold_sweep``.
        pixel_bins: number of equal-width bins over [0, 1] for the streamed pixel AUROC.

    Raises:
        ValueError: on a threshold outside (0, 1] or fewer than 2 bins.

    Example::

        acc = MetricAccumulator()
        for prob, mask, score, label in batches:  # (B,H,W), (B,H,W), (B,), (B,)
            acc.update(prob, mask, score, label)
        metrics = acc.compute()
    """

    def __init__(
        self,
        threshold: float = 0.5,
        sweep: Sequence[float] = (0.3, 0.4, 0.5, 0.6, 0.7),
        pixel_bins: int = 1000,
        score_threshold: float | None = None,
    ) -> None:
        score_threshold = threshold if score_threshold is None else score_threshold
        for t in (threshold, score_threshold, *sweep):
            if not (isinstance(t, (int, float)) and 0.0 < float(t) <= 1.0):
                raise ValueError(f"thresholds must be numbers in (0, 1], got {t!r}")
        if int(pixel_bins) != pixel_bins or pixel_bins < 2:
            raise ValueError(f"pixel_bins must be an integer >= 2, got {pixel_bins!r}")
        self.threshold = float(threshold)
        self.score_threshold = float(score_threshold)
        self.sweep = [float(t) for t in sweep]
        self.pixel_bins = int(pixel_bins)
        self._thresholds = sorted({self.threshold, *self.sweep})
        self.reset()

    def reset(self) -> None:
        """Forget everything seen so far."""
        n_t = len(self._thresholds)
        self._scores: list[float] = []
        self._labels: list[int] = []
        self._dice_sum = np.zeros(n_t, dtype=np.float64)  # over abnormal images with a lesion
        self._n_dice = 0
        self._n_abnormal_without_mask = 0
        self._inter = np.zeros(n_t, dtype=np.int64)  # pooled over all images
        self._pred_sum = np.zeros(n_t, dtype=np.int64)
        self._gt_sum = 0
        self._n_pixels = 0
        self._pos_hist = np.zeros(self.pixel_bins, dtype=np.int64)
        self._neg_hist = np.zeros(self.pixel_bins, dtype=np.int64)

    # ------------------------------------------------------------------ update
    def _validate(
        self, prob: Any, mask: Any, score: Any, label: Any
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        p = _to_numpy(prob, "prob")
        m = _to_numpy(mask, "mask")
        s = _to_numpy(score, "score")
        y = _to_numpy(label, "label")
        if p.ndim == 2:  # a single image
            p, m, s, y = p[None], (m[None] if m.ndim == 2 else m), s.reshape(-1), y.reshape(-1)
        if p.ndim == 4 and p.shape[1] == 1:  # (B, 1, H, W) convenience
            p = p[:, 0]
        if m.ndim == 4 and m.shape[1] == 1:
            m = m[:, 0]
        if p.ndim != 3:
            raise ValueError(f"prob must have shape (B, H, W) or (H, W), got {p.shape}")
        if m.shape != p.shape:
            raise ValueError(f"mask shape {m.shape} does not match prob shape {p.shape}")
        s, y = s.reshape(-1) if s.ndim == 0 else s, y.reshape(-1) if y.ndim == 0 else y
        if s.shape != (p.shape[0],):
            raise ValueError(f"score must have shape ({p.shape[0]},) for {p.shape[0]} image(s), got {s.shape}")
        if y.shape != (p.shape[0],):
            raise ValueError(f"label must have shape ({p.shape[0]},) for {p.shape[0]} image(s), got {y.shape}")
        p = _check_unit_interval(p, "prob")
        s = _check_unit_interval(s, "score")
        m = _check_binary(m, "mask")
        y = _check_binary(y, "label")
        lesion_in_normal = np.flatnonzero(~y & m.reshape(m.shape[0], -1).any(axis=1))
        if lesion_in_normal.size:
            raise ValueError(
                f"image(s) {lesion_in_normal.tolist()} of this batch have label 0 (normal) but lesion "
                "pixels in their mask; fix the labels or the masks"
            )
        return p, m, s, y

    def update(
        self, prob: ArrayLike, mask: ArrayLike, score: ArrayLike, label: ArrayLike, pred: ArrayLike | None = None
    ) -> None:
        """Add a batch (or one image).

        Args:
            prob: (B, H, W) lesion probabilities in [0, 1]; (H, W) for one image; (B, 1, H, W)
                is accepted too.
            mask: ground truth of the same shape, values in {0, 1}.
            score: (B,) image anomaly scores in [0, 1]; a scalar for one image.
            label: (B,) image labels in {0, 1} (1 = abnormal); a scalar for one image.
            pred: optional binary prediction of ``prob``'s shape (a post-processed mask); the
                Dice figures at ``threshold`` use it instead of ``prob >= threshold``.

        Raises:
            ValueError: on shape mismatches, NaN, probabilities/scores outside [0, 1],
                non-binary masks/labels, or a normal label with lesion pixels.
        """
        p, m, s, y = self._validate(prob, mask, score, label)
        b = p.shape[0]
        if b == 0:
            return
        fixed = None
        if pred is not None:
            fixed = _check_binary(_to_numpy(pred, "pred"), "pred").reshape(b, -1)
            if fixed.shape != (b, p[0].size):
                raise ValueError(f"pred must have the shape of prob {p.shape}")
        flat_p = p.reshape(b, -1)  # (B, N)
        flat_m = m.reshape(b, -1)  # (B, N)
        gt_count = flat_m.sum(axis=1)  # (B,)
        with_lesion = y & (gt_count > 0)
        self._n_abnormal_without_mask += int((y & (gt_count == 0)).sum())
        self._n_dice += int(with_lesion.sum())

        gt_t = torch.from_numpy(flat_m[:, None].astype(np.float64))  # (B, 1, N)
        for i, t in enumerate(self._thresholds):
            pred = fixed if fixed is not None and t == self.threshold else flat_p >= t  # (B, N)
            self._inter[i] += int((pred & flat_m).sum())
            self._pred_sum[i] += int(pred.sum())
            if with_lesion.any():
                pred_t = torch.from_numpy(pred[:, None].astype(np.float64))  # (B, 1, N)
                # ignore_empty=True gives NaN for an empty ground truth: those images are
                # exactly the ones not selected by `with_lesion`.
                per_image = compute_dice(pred_t, gt_t, include_background=True, ignore_empty=True)[:, 0]
                self._dice_sum[i] += float(per_image.numpy()[with_lesion].sum())
        self._gt_sum += int(gt_count.sum())
        self._n_pixels += int(flat_p.size)

        idx = np.minimum((flat_p * self.pixel_bins).astype(np.int64), self.pixel_bins - 1)
        self._pos_hist += np.bincount(idx[flat_m], minlength=self.pixel_bins)
        self._neg_hist += np.bincount(idx[~flat_m], minlength=self.pixel_bins)
        self._scores.extend(float(v) for v in s)
        self._labels.extend(int(v) for v in y)

    # ----------------------------------------------------------------- compute
    def _dice_at(self, i: int) -> tuple[float | None, float | None]:
        dice = self._dice_sum[i] / self._n_dice if self._n_dice else None
        denom = self._pred_sum[i] + self._gt_sum
        dice_global = 2.0 * self._inter[i] / denom if denom else None
        return (None if dice is None else float(dice)), (None if dice_global is None else float(dice_global))

    def _accuracy_at(self, t: float, scores: np.ndarray, labels: np.ndarray) -> dict[str, float | None]:
        n = labels.size
        if n == 0:
            return {"accuracy": None, "sensitivity": None, "specificity": None, "balanced_accuracy": None}
        pred = scores >= t
        tp = int((pred & labels).sum())
        tn = int((~pred & ~labels).sum())
        n_pos = int(labels.sum())
        n_neg = n - n_pos
        sens = tp / n_pos if n_pos else None
        spec = tn / n_neg if n_neg else None
        bal = (sens + spec) / 2 if sens is not None and spec is not None else None
        return {"accuracy": (tp + tn) / n, "sensitivity": sens, "specificity": spec, "balanced_accuracy": bal}

    def compute(self) -> dict[str, Any]:
        """All metrics as plain Python types (JSON-serialisable); undefined ones are None.

        Returns:
            A dict with ``threshold``, ``dice``, ``dice_global``, ``accuracy``,
            ``balanced_accuracy``, ``sensitivity``, ``specificity``, ``baseline_accuracy``,
            ``baseline_prediction``, ``image_auroc``, ``pixel_auroc``,
            ``pixel_auroc_error_bound``, ``pixel_bins``, ``threshold_sweep`` (a list of
            ``{threshold, dice, dice_global, accuracy}``), the counts ``n_images``,
            ``n_abnormal``, ``n_normal``, ``n_abnormal_with_mask``, ``n_abnormal_without_mask``,
            ``n_pixels``, ``n_lesion_pixels``, and ``reasons`` (metric name -> why it is None).
        """
        scores = np.asarray(self._scores, dtype=np.float64)
        labels = np.asarray(self._labels, dtype=bool)
        n = int(labels.size)
        n_abn = int(labels.sum())
        n_nor = n - n_abn
        reasons: dict[str, str] = {}
        main = self._thresholds.index(self.threshold)
        dice, dice_global = self._dice_at(main)
        if dice is None:
            reasons["dice"] = f"no abnormal image with lesion pixels among {n} images" + (
                f" ({self._n_abnormal_without_mask} abnormal with an empty mask)"
                if self._n_abnormal_without_mask
                else ""
            )
        if dice_global is None:
            reasons["dice_global"] = (
                f"no lesion pixel in the ground truth or the prediction over {self._n_pixels} pixels"
            )

        acc = self._accuracy_at(self.score_threshold, scores, labels)
        if n == 0:
            for k in acc:
                reasons[k] = "no images were seen"
        else:
            if acc["sensitivity"] is None:
                reasons["sensitivity"] = f"no abnormal images among {n} images"
            if acc["specificity"] is None:
                reasons["specificity"] = f"no normal images among {n} images"
            if acc["balanced_accuracy"] is None:
                reasons["balanced_accuracy"] = _one_class_reason(n_abn, n_nor, "images")

        baseline = max(n_abn, n_nor) / n if n else None
        baseline_prediction = ("abnormal" if n_abn > n_nor else "normal") if n else None
        if baseline is None:
            reasons["baseline_accuracy"] = "no images were seen"

        image_auroc: float | None = None
        if n_abn and n_nor:
            image_auroc = float(compute_roc_auc(torch.from_numpy(scores), torch.from_numpy(labels.astype(np.int64))))
            if math.isnan(image_auroc):  # pragma: no cover - both classes present, MONAI should not give NaN
                image_auroc = None
                reasons["image_auroc"] = "MONAI compute_roc_auc returned NaN"
        else:
            reasons["image_auroc"] = _one_class_reason(n_abn, n_nor, "images")

        pixel_auroc, bound = auroc_from_histograms(self._pos_hist, self._neg_hist)
        if pixel_auroc is None:
            n_pos = int(self._pos_hist.sum())
            which = "no lesion pixels" if n_pos == 0 else "only lesion pixels"
            reasons["pixel_auroc"] = f"only one class of pixels ({which}) among {self._n_pixels} pixels"

        sweep = []
        for t in self.sweep:
            i = self._thresholds.index(t)
            d, dg = self._dice_at(i)
            sweep.append(
                {
                    "threshold": t,
                    "dice": d,
                    "dice_global": dg,
                    "accuracy": self._accuracy_at(t, scores, labels)["accuracy"],
                }
            )

        return {
            "threshold": self.threshold,
            "score_threshold": self.score_threshold,
            "dice": dice,
            "dice_global": dice_global,
            "accuracy": acc["accuracy"],
            "balanced_accuracy": acc["balanced_accuracy"],
            "sensitivity": acc["sensitivity"],
            "specificity": acc["specificity"],
            "baseline_accuracy": baseline,
            "baseline_prediction": baseline_prediction,
            "image_auroc": image_auroc,
            "pixel_auroc": pixel_auroc,
            "pixel_auroc_error_bound": bound if pixel_auroc is not None else None,
            "pixel_bins": self.pixel_bins,
            "threshold_sweep": sweep,
            "n_images": n,
            "n_abnormal": n_abn,
            "n_normal": n_nor,
            "n_abnormal_with_mask": self._n_dice,
            "n_abnormal_without_mask": self._n_abnormal_without_mask,
            "n_pixels": self._n_pixels,
            "n_lesion_pixels": self._gt_sum,
            "reasons": reasons,
        }


def volume_metrics(records: Sequence[dict[str, Any]], threshold: float) -> dict[str, Any]:
    """Volume-level figures from one record per volume (or image).

    Args:
        records: dicts with ``name``, ``score`` (volume score in [0, 1]), ``abnormal`` (has a
            lesion), ``true_voxels`` and ``predicted_voxels`` (post-processed lesion voxels);
            optionally the :func:`lesion_detection` counts.
        threshold: a volume is called abnormal when its score is ``>= threshold``.

    Returns:
        ``volume_auroc``, ``volume_sensitivity``, ``volume_specificity``,
        ``volume_balanced_accuracy``, ``volume_accuracy``, ``volume_ranking_separates`` (every
        lesion-free volume scores below every lesion volume), ``fp_voxels`` per lesion-free
        volume with their mean and max, ``mean_true_lesion_voxels``,
        ``fp_max_over_mean_lesion`` and the counts; with lesion counts in every record
        ``lesion_recall``, ``lesion_f1`` (pooled over the volumes) and
        ``fp_lesions_per_lesion_free_volume``; None with a reason where undefined.
    """
    scores = np.asarray([float(r["score"]) for r in records], dtype=np.float64)
    labels = np.asarray([bool(r["abnormal"]) for r in records], dtype=bool)
    reasons: dict[str, str] = {}
    n_abn, n_nor = int(labels.sum()), int((~labels).sum())
    out: dict[str, Any] = {
        "volume_threshold": float(threshold),
        "n_volumes": int(labels.size),
        "n_lesion_volumes": n_abn,
        "n_lesion_free_volumes": n_nor,
    }
    out["volume_auroc"] = auroc(scores, labels) if labels.size else None
    if out["volume_auroc"] is None:
        reasons["volume_auroc"] = _one_class_reason(n_abn, n_nor, "volumes")
    rates = rates_at(scores, labels, threshold) if labels.size else {}
    for k in ("sensitivity", "specificity", "balanced_accuracy", "accuracy"):
        out[f"volume_{k}"] = rates.get(k)
        if out[f"volume_{k}"] is None:
            reasons[f"volume_{k}"] = _one_class_reason(n_abn, n_nor, "volumes")
    out["volume_ranking_separates"] = bool(scores[~labels].max() < scores[labels].min()) if n_abn and n_nor else None
    fp = {r["name"]: int(r["predicted_voxels"]) for r in records if not r["abnormal"]}
    true = [int(r["true_voxels"]) for r in records if r["abnormal"]]
    out["fp_voxels"] = fp
    out["fp_voxels_mean"] = float(np.mean(list(fp.values()))) if fp else None
    out["fp_voxels_max"] = int(max(fp.values())) if fp else None
    out["mean_true_lesion_voxels"] = float(np.mean(true)) if true else None
    out["fp_max_over_mean_lesion"] = (
        out["fp_voxels_max"] / out["mean_true_lesion_voxels"]
        if fp and true and out["mean_true_lesion_voxels"]
        else None
    )
    for k in ("fp_voxels_mean", "fp_voxels_max", "fp_max_over_mean_lesion"):
        if out[k] is None:
            reasons[k] = "no lesion-free volume" if not fp else "no lesion volume"
    if records and all("lesions" in r for r in records):
        out.update(_lesion_figures(records, reasons))
    out["volume_reasons"] = reasons
    return out


def _lesion_figures(records: Sequence[dict[str, Any]], reasons: dict[str, str]) -> dict[str, Any]:
    """Lesion-wise figures pooled over the volumes' :func:`lesion_detection` counts."""
    lesions = sum(int(r["lesions"]) for r in records)
    detected = sum(int(r["lesions_detected"]) for r in records)
    fp = sum(int(r["fp_lesions"]) for r in records)
    free = [int(r["fp_lesions"]) for r in records if not r["abnormal"]]
    out: dict[str, Any] = {
        "n_lesions": lesions,
        "lesions_detected": detected,
        "fp_lesions": fp,
        "lesion_recall": detected / lesions if lesions else None,
        "lesion_f1": lesion_f1(detected, lesions - detected, fp),
        "fp_lesions_per_lesion_free_volume": float(np.mean(free)) if free else None,
    }
    if not lesions:
        reasons["lesion_recall"] = "no true lesion"
    if out["lesion_f1"] is None:
        reasons["lesion_f1"] = "no true and no predicted lesion"
    if not free:
        reasons["fp_lesions_per_lesion_free_volume"] = "no lesion-free volume"
    return out
