"""``medsad familiarity``: are a site's scans like the ones a model was trained on? Before any
inference, from intensities only (:mod:`~medsad_monai.engine.familiarity`): a table, a JSON
file and a picture of the histograms against the training ones.

It reads each input as ``medsad infer`` would, normalises a volume with the checkpoint's
intensity method and compares it with the checkpoint's ``familiarity`` reference. The model
itself is not loaded or run, so a folder of scans is surveyed in seconds on any machine.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from medsad_monai.checkpoint import FAMILIARITY_KEY, intensity_of, read_checkpoint
from medsad_monai.data.volumes import normalize_intensity
from medsad_monai.engine.familiarity import BINS, LOW, assess, grey, intensity_histogram

__all__ = ["survey", "write_survey", "no_reference_message"]

logger = logging.getLogger(__name__)

#: Most unfamiliar inputs drawn one by one in the picture (the rest are counted in its title).
DRAWN = 8
#: Most inputs in the picture's bar chart (the farthest ones; every input is in the JSON file).
BARS = 60


def no_reference_message(ckpt: str | os.PathLike) -> str:
    return (
        f"checkpoint {str(ckpt)!r} has no familiarity reference: it was trained before MedSAD stored "
        "one, or on fewer than 3 training volumes (or images). Retrain it with this version (medsad train) "
        "to get one"
    )


def _read(item: Any) -> tuple[np.ndarray, bool]:
    """An input's array and whether it is a volume, read as ``medsad infer`` reads it but
    without the checks of slice-wise inference (a histogram does not slice)."""
    from medsad_monai.data.dicom import DicomSeries, load_dicom_series
    from medsad_monai.data.images import load_image_2d
    from medsad_monai.data.volumes import load_volume, volume_suffix

    if isinstance(item, DicomSeries):
        volume = load_dicom_series(item)[0]
    elif volume_suffix(item) is not None:
        volume = load_volume(item)[0]
    else:
        return load_image_2d(item), False
    if volume.ndim != 3:
        raise ValueError(f"{item} is not a 3-D volume (shape {volume.shape})")
    return volume, True


def _row(item: Any) -> dict[str, Any]:
    """The identity of an input in the survey: a file's path and name; a DICOM series' folder,
    output name and series (as ``medsad infer``'s ``<stem>_scores.json`` records them)."""
    from medsad_monai.data.dicom import DicomSeries

    if isinstance(item, DicomSeries):
        return {
            "input": str(item.folder),
            "name": item.name,
            "dicom_series": {"identifier": item.identifier, "description": item.description, "files": len(item.files)},
        }
    return {"input": str(item), "name": Path(item).name}


def survey(ckpt: str | os.PathLike, input_path: str | os.PathLike) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The checkpoint's reference and one row per input of ``input_path`` (a file or a folder, as
    ``medsad infer`` reads them): ``input``, ``name``, ``kind``, ``distance``, ``threshold``,
    ``familiar`` (None where the reference is of the other kind or the input has no foreground:
    then a ``note``), the input's ``histogram``, or an ``error`` for an input that cannot be read
    (the others are still surveyed).

    Raises:
        ValueError: no reference in the checkpoint, nothing to read in ``input_path``.
        FileNotFoundError: no checkpoint or no input.
    """
    from medsad_monai.engine.inference import _collect_inputs

    payload = read_checkpoint(ckpt)
    reference = payload.get(FAMILIARITY_KEY)
    if not reference:
        raise ValueError(no_reference_message(ckpt))
    method = intensity_of(payload, ckpt)
    source = Path(input_path)
    if not source.exists():
        raise FileNotFoundError(f"no such file or folder: {str(source)!r}")
    inputs = _collect_inputs(source)  # raises for a folder without any
    rows = []
    for item in tqdm(inputs, desc="familiarity", unit="input", disable=len(inputs) < 2 or not sys.stderr.isatty()):
        row = _row(item)
        try:
            array, is_volume = _read(item)
        except ValueError as err:  # one unreadable input does not stop the survey
            logger.warning("%s", err)
            rows.append({**row, "kind": None, "distance": None, "threshold": None, "familiar": None, "error": str(err)})
            continue
        unit = "volume" if is_volume else "image"
        array = normalize_intensity(array, method=method) if is_volume else grey(array)
        block = assess(array, reference, unit)
        histogram = intensity_histogram(array)
        row.update(
            {
                "kind": unit,
                "distance": None if block is None else block["distance"],
                "threshold": None if block is None else block["threshold"],
                "familiar": None if block is None else block["familiar"],
                "histogram": [round(float(x), 6) for x in histogram],
            }
        )
        if block is None:
            row["note"] = (
                "no foreground (nothing above the background level)"
                if not histogram.any()
                else f"not checked: the model was trained on {reference.get('unit', 'volume')}s"
            )
        rows.append(row)
    return reference, rows


def summary_line(reference: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    """One line: how many inputs are unlike the training cases, and how many were not checked."""
    unit = reference.get("unit", "volume")
    checked = [r for r in rows if r["familiar"] is not None]
    unfamiliar = [r for r in checked if not r["familiar"]]
    line = (
        f"{len(unfamiliar)} of {len(checked)} input(s) are unlike the {len(reference['histograms'])} training "
        f"{unit}s (distance > {float(reference['threshold']):.3f})"
    )
    errors = sum(1 for r in rows if r.get("error"))
    unchecked = len(rows) - len(checked) - errors
    if unchecked:
        line += f"; {unchecked} not checked (another kind of input, or no foreground)"
    if errors:
        line += f"; {errors} could not be read"
    return line


def write_survey(reference: dict[str, Any], rows: list[dict[str, Any]], out: str | os.PathLike) -> list[Path]:
    """``familiarity.json`` (the rows, the reference's threshold and training cases) and
    ``familiarity.png`` in ``out``; returns their paths."""
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    data = {
        "summary": summary_line(reference, rows),
        "reference": {
            "unit": reference.get("unit", "volume"),
            "threshold": reference["threshold"],
            "training_cases": reference["cases"],
            "training_distances": reference["training_distances"],
        },
        "inputs": rows,
    }
    json_path = folder / "familiarity.json"
    tmp = json_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(json_path)
    png_path = folder / "familiarity.png"
    _plot(reference, rows, png_path)
    return [json_path, png_path]


def _plot(reference: dict[str, Any], rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    unit = reference.get("unit", "volume")
    training = np.asarray(reference["histograms"], dtype=np.float64)
    centres = LOW + (np.arange(BINS) + 0.5) * (1.0 - LOW) / BINS
    threshold = float(reference["threshold"])
    checked = [r for r in rows if r["familiar"] is not None]
    unfamiliar = sorted((r for r in checked if not r["familiar"]), key=lambda r: -r["distance"])
    shown = sorted(checked, key=lambda r: -r["distance"])[:BARS]  # the farthest first
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, max(4.5, 0.18 * len(shown) + 1.5)))
    left.fill_between(
        centres, training.min(axis=0), training.max(axis=0), color="0.8", label=f"training {unit}s (range)"
    )
    left.plot(centres, np.median(training, axis=0), color="0.3", lw=1.5, label=f"training {unit}s (median)")
    for r in unfamiliar[:DRAWN]:
        left.plot(centres, r["histogram"], lw=1.2, label=f"{r['name']} ({r['distance']:.2f})")
    more = len(unfamiliar) - DRAWN
    left.set_title(
        "Intensity histograms (normalised foreground)" + (f"; {more} more unfamiliar not drawn" if more > 0 else "")
    )
    left.set_xlabel("intensity as the model sees it")
    left.set_ylabel("share of foreground")
    left.legend(fontsize=7, loc="upper right")
    y = np.arange(len(shown))
    right.barh(y, [r["distance"] for r in shown], color=["tab:green" if r["familiar"] else "tab:red" for r in shown])
    right.set_yticks(y, [r["name"] for r in shown], fontsize=7)
    right.invert_yaxis()
    right.axvline(threshold, color="k", ls="--", lw=1, label=f"threshold {threshold:.3f}")
    loo = reference.get("training_distances") or []
    if loo:  # the training distance the threshold doubles (the largest for volumes, a quantile for images)
        q = float(reference.get("quantile", 1.0))
        what = "largest training distance" if q >= 1.0 else f"{q:g} quantile of the training distances"
        right.axvline(float(np.quantile(loo, q)), color="0.5", ls=":", lw=1, label=f"{what} {np.quantile(loo, q):.3f}")
    right.set_xlabel(
        "distance to the nearest training histogram"
        + (f" (the {BARS} farthest of {len(checked)})" if len(checked) > BARS else "")
    )
    right.set_title(summary_line(reference, rows), fontsize=9)
    right.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=90, metadata={"Software": None})
    plt.close(fig)
