"""How far a checkpoint's answers hold up when the scanner changes (``medsad robustness``).

Runs :func:`~medsad_monai.engine.evaluate.evaluate_checkpoint` once per simulated scanner
shift (:mod:`~medsad_monai.engine.shifts`) on the same cases, at the same operating point, and
tabulates what a user decides on: lesion Dice, lesion recall, slice balanced accuracy, false
positives on lesion-free volumes, and how sure the model stays inside the true lesions (the mean
lesion probability, which a calibrated minimum lesion mean filters on). Meant for validation
data (the default split): a shift under which the answers fall apart is a reason to calibrate
on, or train with, scans of the new scanner before serving it.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medsad_monai.atomic import atomic_write_text
from medsad_monai.engine.evaluate import evaluate_checkpoint
from medsad_monai.engine.shifts import SHIFT_NAMES, describe_shift

logger = logging.getLogger(__name__)

__all__ = ["robustness_report", "filter_warnings", "ROBUSTNESS_COLUMNS"]

#: metric key → column heading
ROBUSTNESS_COLUMNS = {
    "dice": "lesion Dice (mean over lesion slices)",
    "dice_global": "pooled Dice",
    "lesion_recall": "lesion recall",
    "balanced_accuracy": "slice balanced accuracy",
    "image_auroc": "slice AUROC",
    "volume_balanced_accuracy": "volume balanced accuracy",
    "fp_voxels_mean": "false-positive voxels per lesion-free volume",
    "lesion_mean_probability": "mean probability inside true lesions",
    "unfamiliar": "cases flagged unlike the training scans",
}


def _row(shift: str, metrics: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
    """One shift's figures; ``unfamiliar``: how many cases its familiarity check flagged (None
    without a reference: does the warning notice this shift?)."""
    per_case = meta["per_case"]
    means = [c["lesion_mean_probability"] for c in per_case.values() if c.get("lesion_mean_probability") is not None]
    row: dict[str, Any] = {"shift": shift, "description": describe_shift(shift)}
    for key in ROBUSTNESS_COLUMNS:
        if key == "unfamiliar":
            familiarity = meta.get("familiarity")
            row[key] = None if not familiarity else int(familiarity["unfamiliar"])
            continue
        value = float(np.mean(means)) if key == "lesion_mean_probability" and means else metrics.get(key)
        row[key] = None if value is None or (isinstance(value, float) and not np.isfinite(value)) else float(value)
    return row


def _fmt(value: float | None, key: str) -> str:
    if value is None:
        return "—"
    return f"{value:,.0f}" if key in ("fp_voxels_mean", "unfamiliar") else f"{value:.3f}"


def _operating_point_text(op: dict[str, Any]) -> str:
    size = f"{op['min_lesion_voxels']} voxels"
    if op.get("min_lesion_mm3"):
        size = f"{op['min_lesion_mm3']:g} mm³ ({size})"
    return (
        f"lesion map ≥ {op['map_threshold']:g}, lesions ≥ {size}, lesion mean ≥ {op.get('min_lesion_mean') or 0:g}, "
        f"slice {op['slice_score']} ≥ {op['slice_threshold']:.4g}, volume {op['volume_score']} ≥ "
        f"{op['volume_threshold']:.4g} ({op['source']})"
    )


def filter_warnings(rows: list[dict[str, Any]], min_lesion_mean: float) -> list[str]:
    """One sentence per shift under which the mean probability inside the true lesions falls
    below the operating point's minimum lesion mean: there the filter removes real lesions."""
    if not min_lesion_mean:
        return []
    return [
        f"under {r['shift']} the mean probability inside the true lesions ({r['lesion_mean_probability']:.2f}) is "
        f"below the operating point's minimum lesion mean ({min_lesion_mean:g}): on such scans the filter removes "
        "real lesions; calibrate on them (medsad calibrate --data) or look with --min-lesion-mean 0"
        for r in rows
        if r["lesion_mean_probability"] is not None and r["lesion_mean_probability"] < min_lesion_mean
    ]


def _markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    head = "| shift | " + " | ".join(ROBUSTNESS_COLUMNS.values()) + " |"
    lines = [
        "# Robustness to scanner shifts",
        "",
        f"Checkpoint `{meta['checkpoint']}`, data `{meta['data']}` (split `{meta['split']}`, "
        f"{meta['n_cases']} cases), operating point: {_operating_point_text(meta['operating_point'])}.",
        "Each shift is applied to the raw input before the model's intensity normalisation; the "
        "operating point is the same in every row. A row far below `none` is a shift under which "
        "the answers should not be trusted without calibrating on such scans.",
        "",
        head,
        "|" + " --- |" * (len(ROBUSTNESS_COLUMNS) + 1),
    ]
    for r in rows:
        lines.append(f"| {r['shift']} | " + " | ".join(_fmt(r[k], k) for k in ROBUSTNESS_COLUMNS) + " |")
    if meta["warnings"]:
        lines += ["", "Warnings:", ""] + [f"- {w}" for w in meta["warnings"]]
    lines += ["", "Shifts:", ""] + [f"- `{r['shift']}`: {r['description']}" for r in rows]
    lines += ["", "One full evaluation report per shift is in the sub-folder of its name.", ""]
    return "\n".join(lines)


def _plot(rows: list[dict[str, Any]], min_lesion_mean: float, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    keys = ["dice_global", "lesion_recall", "balanced_accuracy", "lesion_mean_probability"]
    fig = Figure(figsize=(1.2 + 1.1 * len(rows), 3.6), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    x = np.arange(len(rows))
    width = 0.8 / len(keys)
    for i, key in enumerate(keys):
        values = [np.nan if r[key] is None else r[key] for r in rows]
        ax.bar(x + (i - (len(keys) - 1) / 2) * width, values, width, label=ROBUSTNESS_COLUMNS[key])
    if min_lesion_mean:
        ax.axhline(min_lesion_mean, ls="--", lw=0.9, color="tab:red", label="the operating point's lesion mean filter")
    ax.set_xticks(x, [r["shift"] for r in rows], rotation=20, fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_title("Answers under simulated scanner shifts (same operating point)", fontsize=9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.savefig(path, bbox_inches="tight")


def robustness_report(
    ckpt: str | os.PathLike,
    data: str,
    out: str | os.PathLike,
    *,
    split: str = "val",
    shifts: Sequence[str] = SHIFT_NAMES,
    **evaluate_kwargs: Any,
) -> list[dict[str, Any]]:
    """Evaluate ``ckpt`` on ``data``/``split`` under each of ``shifts`` (``none`` first, added if
    missing); write ``robustness.json``, ``robustness.md``, ``robustness.png`` and one evaluation
    report per shift into ``out``. ``evaluate_kwargs`` go to
    :func:`~medsad_monai.engine.evaluate.evaluate_checkpoint` (thresholds, layout, device, ...).

    Returns:
        One row per shift: the figures of :data:`ROBUSTNESS_COLUMNS`.
    """
    for name in shifts:
        describe_shift(name)  # every name checked before the first evaluation runs
    order = ["none"] + [s for s in dict.fromkeys(shifts) if s != "none"]
    out = Path(out)
    rows: list[dict[str, Any]] = []
    meta: dict[str, Any] = {}
    for i, shift in enumerate(order, 1):
        logger.info("robustness: shift %d/%d, %s (%s)", i, len(order), shift, describe_shift(shift))
        folder = out / shift
        metrics = evaluate_checkpoint(ckpt, data, folder, split=split, shift=shift, **evaluate_kwargs)
        report = json.loads((folder / "report.json").read_text())
        rows.append(_row(shift, metrics, report["meta"]))
        if not meta:
            meta = {
                "checkpoint": report["meta"]["checkpoint"],
                "data": report["meta"]["data"],
                "split": split,
                "n_cases": len(report["meta"]["per_case"]),
                "operating_point": report["meta"]["operating_point"],
            }
    min_mean = float(meta["operating_point"].get("min_lesion_mean") or 0.0)
    meta["warnings"] = filter_warnings(rows, min_mean)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "robustness.json", json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    atomic_write_text(out / "robustness.md", _markdown(rows, meta))
    _plot(rows, min_mean, out / "robustness.png")
    base = rows[0]
    for r in rows[1:]:
        if base["dice_global"] is not None and r["dice_global"] is not None:
            logger.info(
                "robustness: %s pooled Dice %.3f (none %.3f), lesion recall %s",
                r["shift"],
                r["dice_global"],
                base["dice_global"],
                _fmt(r["lesion_recall"], "lesion_recall"),
            )
    for warning in meta["warnings"]:
        logger.warning("robustness: %s", warning)
    logger.info("robustness report written to %s", out)
    return rows
