"""Is a scan like the ones the model was trained on? An intensity-histogram check.

The operating point is fitted on validation scans of the training sources; a scan from another
scanner or anatomy can make its answers unreliable without anything looking wrong (measured on
a head no training volume came from: thousands of false-positive voxels per lesion-free scan,
docs/decisions.md). This module gives each volume result a ``familiarity`` block that says so.

The reference (a checkpoint's ``familiarity`` block, written at the end of training) holds the
normalised intensity histograms of the training volumes, as the model sees them (after its
per-volume intensity normalisation). A scan's *distance* is the total-variation distance between
its histogram and the nearest training histogram (:data:`NEIGHBOURS`); the *threshold*
is :data:`MARGIN` times the largest leave-one-out distance among the training volumes
themselves. Checked on validation sets only (docs/experiments.md, session 48): every volume of
the training anatomies (14, and 2 × 14 with lesions of unseen looks) fell under it, every
volume of a head no training volume came from (8) over it.

It looks at intensities only: a scan of the same scanner with unusual lesions may pass, a scan
with another field of view may not. It is a warning that the calibration may not carry over,
not a decision about the scan.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["intensity_histogram", "fit_reference", "assess", "unfamiliar_warning", "BINS", "MARGIN", "NEIGHBOURS"]

logger = logging.getLogger(__name__)

#: Histogram bins over the normalised foreground, ``[LOW, 1]``.
BINS = 24
#: Voxels at or below this (normalised background) are left out.
LOW = 0.05
#: Nearest training histograms a distance averages: the nearest one. With 3 a training source of
#: two or three volumes (one scanner among several) had its own volumes' leave-one-out distances
#: measured against other sources, which doubled the threshold and let a new head pass
#: (docs/experiments.md, session 48).
NEIGHBOURS = 1
#: The threshold is this many times the largest leave-one-out distance of the training volumes.
MARGIN = 2.0
#: Fewest training volumes a reference needs (a leave-one-out distance needs two).
MIN_VOLUMES = 3


def intensity_histogram(volume: np.ndarray) -> np.ndarray:
    """The normalised (sum 1) histogram of a volume's foreground, intensities in [0, 1] as the
    model sees them; all zeros for a volume without foreground."""
    values = np.asarray(volume, dtype=np.float32)
    values = values[values > LOW]
    counts, _ = np.histogram(values, bins=BINS, range=(LOW, 1.0))
    total = counts.sum()
    return counts / total if total else counts.astype(np.float64)


def _distance(histogram: np.ndarray, references: np.ndarray) -> float:
    tv = 0.5 * np.abs(references - histogram[None, :]).sum(axis=1)
    return float(np.sort(tv)[: min(NEIGHBOURS, tv.size)].mean())


def fit_reference(histograms: Sequence[np.ndarray], cases: Sequence[str]) -> dict[str, Any]:
    """The checkpoint's ``familiarity`` block from the training volumes' histograms.

    Raises:
        ValueError: fewer than :data:`MIN_VOLUMES` histograms, or mismatched lengths.
    """
    h = np.asarray(histograms, dtype=np.float64)
    if len(h) < MIN_VOLUMES or len(h) != len(cases) or h.ndim != 2 or h.shape[1] != BINS:
        raise ValueError(f"a familiarity reference needs at least {MIN_VOLUMES} training volumes with their names")
    loo = [_distance(h[i], np.delete(h, i, axis=0)) for i in range(len(h))]
    return {
        "method": "intensity_histogram",
        "bins": BINS,
        "low": LOW,
        "neighbours": NEIGHBOURS,
        "margin": MARGIN,
        "threshold": round(MARGIN * max(loo), 6),
        "training_distances": [round(d, 6) for d in loo],
        "cases": list(cases),
        "histograms": [[round(float(x), 6) for x in row] for row in h],
    }


def assess(volume: np.ndarray, reference: dict[str, Any] | None) -> dict[str, Any] | None:
    """The ``familiarity`` block of a result: ``distance``, ``threshold``, ``familiar`` and,
    when it is not, a ``warning``; None without a reference (older checkpoints, 2-D models)."""
    if not reference:
        return None
    distance = _distance(intensity_histogram(volume), np.asarray(reference["histograms"], dtype=np.float64))
    threshold = float(reference["threshold"])
    block: dict[str, Any] = {
        "distance": round(distance, 4),
        "threshold": round(threshold, 4),
        "familiar": bool(distance <= threshold),
        "training_volumes": len(reference["histograms"]),
    }
    if not block["familiar"]:
        block["warning"] = unfamiliar_warning(block)
    return block


def unfamiliar_warning(block: dict[str, Any]) -> str:
    """What an unfamiliar scan's result says (the CLI, the server's JSON, Slicer, the web viewer)."""
    return (
        f"this scan's intensities are unlike the {block['training_volumes']} training volumes' (distance "
        f"{block['distance']:.3f} > {block['threshold']:.3f}): the model's decisions were calibrated on other "
        "scans and may not hold here (false positives, missed lesions). Check them against the image, and for "
        "a new scanner or anatomy fit a calibration profile on a few of its labelled scans (medsad calibrate "
        "--profile)"
    )
