"""The evaluation report: ``report.json``, ``report.md`` and best/worst case overlays.

:func:`write_report` takes the dict of :meth:`medsad_monai.engine.metrics.MetricAccumulator.compute`
plus the run's provenance (``meta``) and writes, inside ``out_dir`` only:

- ``report.json`` — ``{"meta": ..., "metrics": ...}``, plain JSON (written atomically);
- ``report.md`` — the headline metrics (accuracy beside its majority-class baseline, AUROC beside
  chance), the counts and the threshold sweep; an undefined metric reads ``n/a (reason)``;
- ``best_NN_<name>.png`` / ``worst_NN_<name>.png`` — abnormal cases with the highest and lowest
  Dice: the image in grey, the ground-truth contour in green, the predicted contour in red, the
  anomaly score and Dice in the title.

During evaluation keep only a bounded set of candidate cases with :class:`CaseKeeper`.
"""

from __future__ import annotations

import datetime as _dt
import heapq
import itertools
import json
import math
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from medsad_monai.atomic import atomic_write_text
from medsad_monai.engine.metrics import dice_score

__all__ = ["CaseKeeper", "CaseRecord", "write_report"]

_HEADLINE: list[tuple[str, str]] = [
    ("dice", "Dice (mean over abnormal images)"),
    ("dice_global", "Dice (all pixels pooled)"),
    ("accuracy", "Slice / image accuracy"),
    ("balanced_accuracy", "Slice balanced accuracy"),
    ("sensitivity", "Slice sensitivity"),
    ("specificity", "Slice specificity"),
    ("image_auroc", "Slice / image AUROC"),
    ("pixel_auroc", "Pixel AUROC (streamed)"),
]
_VOLUME: list[tuple[str, str]] = [
    ("volume_auroc", "Volume AUROC"),
    ("volume_balanced_accuracy", "Volume balanced accuracy"),
    ("volume_sensitivity", "Volume sensitivity"),
    ("volume_specificity", "Volume specificity"),
    ("volume_ranking_separates", "Every lesion-free volume scores below every lesion volume"),
    ("fp_voxels_mean", "False-positive voxels per lesion-free volume (mean)"),
    ("fp_voxels_max", "False-positive voxels per lesion-free volume (max)"),
    ("mean_true_lesion_voxels", "Mean true lesion voxels per lesion volume"),
    ("fp_max_over_mean_lesion", "Max false-positive voxels / mean true lesion voxels"),
    ("lesion_recall", "Lesions detected (lesion-wise recall)"),
    ("lesion_f1", "Lesion-wise F1"),
    ("fp_lesions_per_lesion_free_volume", "False-positive lesions per lesion-free volume"),
]
_GROUP_COLUMNS = [
    "dice",
    "dice_global",
    "image_auroc",
    "balanced_accuracy",
    "volume_auroc",
    "volume_accuracy",
    "fp_voxels_max",
    "lesion_f1",
]
_COUNTS = [
    "n_images",
    "n_abnormal",
    "n_normal",
    "n_abnormal_with_mask",
    "n_abnormal_without_mask",
    "n_pixels",
    "n_lesion_pixels",
]


def _as_array(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # torch.Tensor, without importing torch here
        x = x.detach().cpu().float().numpy()
    return np.array(x, copy=True)  # a copy: a view would keep a whole batch alive


@dataclass
class CaseRecord:
    """One evaluated 2D image kept for the overlays.

    Args:
        name: case name (used, sanitised, in the PNG file name).
        image: (H, W) image in [0, 1] for display.
        prob: (H, W) lesion probability.
        mask: (H, W) ground truth in {0, 1}.
        score: image anomaly score.
        label: image label (1 = abnormal).
        dice: Dice at the report threshold; computed by :func:`write_report` when None.

    Raises:
        ValueError: when the arrays are not 2D of one shape.
    """

    name: str
    image: np.ndarray
    prob: np.ndarray
    mask: np.ndarray
    score: float
    label: int
    dice: float | None = None

    def __post_init__(self) -> None:
        self.image, self.prob, self.mask = _as_array(self.image), _as_array(self.prob), _as_array(self.mask)
        if self.image.ndim != 2 or self.prob.shape != self.image.shape or self.mask.shape != self.image.shape:
            raise ValueError(
                f"CaseRecord {self.name!r}: image, prob and mask must be 2D of one shape, got "
                f"{self.image.shape}, {self.prob.shape}, {self.mask.shape}"
            )
        self.score, self.label = float(self.score), int(self.label)


def _push_bounded(heap: list, item: tuple, k: int) -> bool:
    """Keep the ``k`` largest items in a min-heap; True when ``item`` was kept."""
    if len(heap) < k:
        heapq.heappush(heap, item)
        return True
    if item > heap[0]:
        heapq.heapreplace(heap, item)
        return True
    return False


class CaseKeeper:
    """Keeps the ``k`` best and ``k`` worst abnormal cases by Dice while streaming.

    At most ``2k`` records are held whatever the number offered. Normal cases (label 0) and
    cases without a Dice (None) are refused. On equal Dice the case offered first stays.

    Args:
        k: how many best and how many worst cases to keep.

    Raises:
        ValueError: when ``k`` is negative.
    """

    def __init__(self, k: int) -> None:
        if int(k) != k or k < 0:
            raise ValueError(f"k must be a non-negative integer, got {k!r}")
        self.k = int(k)
        self._seq = itertools.count()
        self._best: list[tuple[float, int, CaseRecord]] = []  # min-heap on dice: root = weakest best
        self._worst: list[tuple[float, int, CaseRecord]] = []  # min-heap on -dice: root = least bad

    def offer(self, record: CaseRecord, dice: float | None) -> bool:
        """Consider one case; return True when it is kept (for now)."""
        if self.k == 0 or record.label != 1 or dice is None or math.isnan(dice):
            return False
        record = replace(record, dice=float(dice)) if record.dice != dice else record
        seq = next(self._seq)
        # later ties rank lower (-seq), so an equal later case never displaces an earlier one
        kept_best = _push_bounded(self._best, (float(dice), -seq, record), self.k)
        kept_worst = _push_bounded(self._worst, (-float(dice), -seq, record), self.k)
        return kept_best or kept_worst

    def best(self) -> list[CaseRecord]:
        """The kept best cases, highest Dice first."""
        return [r for _, _, r in sorted(self._best, reverse=True)]

    def worst(self) -> list[CaseRecord]:
        """The kept worst cases, lowest Dice first."""
        return [r for _, _, r in sorted(self._worst, reverse=True)]

    def cases(self) -> list[CaseRecord]:
        """Every kept case once (best first, then worst), for :func:`write_report`."""
        seen: set[int] = set()
        out = []
        for r in self.best() + self.worst():
            if id(r) not in seen:
                seen.add(id(r))
                out.append(r)
        return out


# ------------------------------------------------------------------ formatting
def _jsonable(obj: Any) -> Any:
    """Plain-JSON copy of ``obj``: NumPy scalars/arrays unwrapped, paths as str, NaN -> None."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if hasattr(obj, "detach") and hasattr(obj, "tolist"):  # torch.Tensor
        return _jsonable(obj.detach().cpu().tolist())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    return str(obj)


def _fmt(metrics: dict[str, Any], key: str, value: Any = "__missing__") -> str:
    value = metrics.get(key) if value == "__missing__" else value
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        reason = (metrics.get("reasons") or {}).get(key, "not computed")
        return f"n/a ({reason})".replace("|", "\\|")
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value).replace("|", "\\|")


def _markdown(metrics: dict[str, Any], meta: dict[str, Any], overlays: dict[str, Path]) -> str:
    t = metrics.get("threshold", 0.5)
    lines = ["# MedSAD evaluation report", ""]
    for key in ("checkpoint", "data", "split", "date", "package_version"):
        if key in meta:
            lines.append(f"- **{key}**: `{meta[key]}`")
    lines += ["", f"## Headline metrics (threshold {t})", "", "| Metric | Value | Compare with |", "|---|---|---|"]
    for key, title in _HEADLINE:
        ref = ""
        if key == "accuracy":
            pred = metrics.get("baseline_prediction") or "majority class"
            ref = f"baseline (always {pred}): {_fmt(metrics, 'baseline_accuracy')}"
        elif key in ("image_auroc", "pixel_auroc"):
            ref = "chance: 0.5000"
            if key == "pixel_auroc" and metrics.get("pixel_auroc_error_bound") is not None:
                ref += f"; binning error ≤ {metrics['pixel_auroc_error_bound']:.2g} ({metrics.get('pixel_bins')} bins)"
        elif key == "balanced_accuracy":
            ref = "chance: 0.5000"
        lines.append(f"| {title} | {_fmt(metrics, key)} | {ref} |")
    op = meta.get("operating_point")
    if op:
        lines += ["", f"## Operating point ({op.get('source')})", "", "| Value | Setting |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in op.items() if k not in ("source", "warnings")]
        if op.get("source") == "default":
            lines += ["", "Not calibrated: the 0.5 fallback (run `medsad calibrate` on validation data)."]
        warnings = (meta.get("operating_point_validation") or {}).get("warnings") or []
        if warnings:
            lines += ["", "**Calibration warnings** (the validation data it was fitted on):", ""]
            lines += [f"- {w}" for w in warnings]
    familiarity = meta.get("familiarity")
    if familiarity:
        n, k = familiarity["cases"], familiarity["unfamiliar"]
        lines += ["", f"**Familiarity**: {k} of {n} cases are unlike the model's training cases"]
        if k:
            shown = ", ".join(f"`{name}`" for name in familiarity["unfamiliar_cases"][:20])
            more = f" and {k - 20} more" if k > 20 else ""
            lines[-1] += (
                f" ({shown}{more}): its decisions were calibrated on other scans and may not hold on them "
                "(docs/decisions.md, familiarity)."
            )
        else:
            lines[-1] += "."
    if any(k in metrics for k, _ in _VOLUME):
        reasons = {**(metrics.get("reasons") or {}), **(metrics.get("volume_reasons") or {})}
        vm = {**metrics, "reasons": reasons}
        lines += [
            "",
            f"## Volumes (threshold {metrics.get('volume_threshold')})",
            "",
            "| Metric | Value |",
            "|---|---|",
        ]
        lines += [f"| {title} | {_fmt(vm, key)} |" for key, title in _VOLUME]
        fp = metrics.get("fp_voxels") or {}
        if fp:
            lines.append(
                "| False-positive voxels per lesion-free volume | "
                + ", ".join(f"{k}: {v}" for k, v in fp.items())
                + " |"
            )
    groups = metrics.get("groups") or {}
    if groups:
        lines += [
            "",
            "## Groups",
            "",
            "| Group | Volumes | " + " | ".join(_GROUP_COLUMNS) + " |",
            "|---|---|" + "---|" * len(_GROUP_COLUMNS),
        ]
        for name, g in groups.items():
            gm = {**g, "reasons": {**(g.get("reasons") or {}), **(g.get("volume_reasons") or {})}}
            cells = [_fmt(gm, k).split(" (")[0] for k in _GROUP_COLUMNS]
            lines.append(f"| {name} | {g.get('n_volumes')} | " + " | ".join(cells) + " |")
    per_case = meta.get("per_case") or {}
    if per_case:
        keys = ["style", "anatomy", "abnormal", "volume_abnormal", "score", "dice", "true_voxels", "predicted_voxels"]
        if any(c.get("familiar") is not None for c in per_case.values()):
            keys.append("familiar")  # the scan is like the training volumes (decisions.md)
        lines += ["", "## Cases", "", "| Case | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
        for name, c in per_case.items():
            lines.append(f"| {name} | " + " | ".join(_fmt(c, k, c.get(k, "")) for k in keys) + " |")
    lines += ["", "## Counts", "", "| Count | Value |", "|---|---|"]
    lines += [f"| {k} | {metrics[k]} |" for k in _COUNTS if k in metrics]
    sweep = metrics.get("threshold_sweep") or []
    if sweep:
        lines += ["", "## Threshold sweep", "", "| Threshold | Dice | Dice (global) | Accuracy |", "|---|---|---|---|"]
        for row in sweep:
            cells = [_fmt(metrics, k, row.get(k)) for k in ("dice", "dice_global", "accuracy")]
            lines.append(f"| {row.get('threshold')} | " + " | ".join(cells) + " |")
    if overlays:
        lines += ["", "## Overlays", "", "Grey: image; green: ground truth; red: prediction.", ""]
        lines += [f"![{key}]({path.name})" for key, path in overlays.items()]
    return "\n".join(lines) + "\n"


# -------------------------------------------------------------------- overlays
def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._")[:80] or "case"


def _save_overlay(path: Path, case: CaseRecord, threshold: float) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4, 4.4), dpi=100)
    FigureCanvasAgg(fig)  # the Agg backend, no pyplot global state
    ax = fig.add_subplot(1, 1, 1)
    ax.imshow(np.clip(case.image, 0.0, 1.0), cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    for arr, colour in ((case.mask > 0.5, "lime"), (case.prob >= threshold, "red")):
        if arr.any() and not arr.all():  # contour() warns on a constant field
            ax.contour(arr.astype(np.float32), levels=[0.5], colors=colour, linewidths=1.2)
    dice = "n/a" if case.dice is None else f"{case.dice:.3f}"
    ax.set_title(f"{case.name}\nscore {case.score:.3f}  Dice {dice}", fontsize=9)
    ax.set_axis_off()
    fig.savefig(path, bbox_inches="tight")


def _pick_overlays(cases: list[CaseRecord], k: int, threshold: float) -> tuple[list[CaseRecord], list[CaseRecord]]:
    """Best and worst abnormal cases by Dice, never the same case twice."""
    scored = []
    for c in cases:
        if c.label != 1 or not (c.mask > 0.5).any():
            continue
        d = c.dice if c.dice is not None else dice_score(c.prob >= threshold, c.mask > 0.5)
        scored.append(replace(c, dice=float(d)) if c.dice is None else c)
    order = sorted(scored, key=lambda c: c.dice, reverse=True)  # stable: earlier first on ties
    n_worst = min(k, len(order) // 2)
    n_best = min(k, len(order) - n_worst)
    worst = order[::-1][:n_worst]
    return order[:n_best], worst


def write_report(
    out_dir: str | os.PathLike[str],
    metrics: dict[str, Any],
    *,
    meta: dict[str, Any],
    cases: list[CaseRecord] | None = None,
    overlays: int = 4,
) -> dict[str, Path]:
    """Write ``report.json``, ``report.md`` and the overlay PNGs into ``out_dir``.

    Args:
        out_dir: the report folder; created when missing. Nothing outside it is written.
            Overlays of an earlier report in it (``best_*.png`` / ``worst_*.png``) are removed
            so the folder never mixes runs.
        metrics: the dict of ``MetricAccumulator.compute()``.
        meta: provenance — e.g. ``checkpoint``, ``data``, ``split``, ``seeds``; ``date`` (UTC)
            and ``package_version`` are added when absent, ``counts`` from ``metrics``.
        cases: candidate cases (e.g. ``CaseKeeper.cases()``); only abnormal ones with lesion
            pixels are drawn.
        overlays: at most this many best and this many worst cases are drawn.

    Returns:
        ``{"json": ..., "markdown": ..., "best_01": ..., "worst_01": ..., ...}`` paths.
    """
    from medsad_monai import __version__

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    metrics = _jsonable(metrics)
    meta = dict(meta)
    meta.setdefault("date", _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    meta.setdefault("package_version", __version__)
    meta.setdefault("counts", {k: metrics[k] for k in _COUNTS if k in metrics})
    meta = _jsonable(meta)

    for old in [*out.glob("best_*.png"), *out.glob("worst_*.png")]:
        old.unlink()
    written: dict[str, Path] = {}
    threshold = float(metrics.get("threshold", 0.5))
    best, worst = _pick_overlays(list(cases or []), max(0, int(overlays)), threshold)
    for kind, picked in (("best", best), ("worst", worst)):
        for i, case in enumerate(picked, start=1):
            key = f"{kind}_{i:02d}"
            path = out / f"{key}_{_safe_name(case.name)}.png"
            _save_overlay(path, case, threshold)
            written[key] = path

    json_path, md_path = out / "report.json", out / "report.md"
    atomic_write_text(json_path, json.dumps({"meta": meta, "metrics": metrics}, indent=2, allow_nan=False) + "\n")
    atomic_write_text(md_path, _markdown(metrics, meta, written))
    return {"json": json_path, "markdown": md_path, **written}
