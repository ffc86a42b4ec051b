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


def no_reference_message(ckpt: str | os.PathLike) -> str:
    return (
        f"checkpoint {str(ckpt)!r} has no familiarity reference: it was trained before MedSAD stored "
        "one, or on fewer than 3 training volumes (or images). Retrain it with this version (medsad train) "
        "to get one"
    )


def survey(ckpt: str | os.PathLike, input_path: str | os.PathLike) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The checkpoint's reference and one row per input of ``input_path`` (a file or a folder, as
    ``medsad infer`` reads them): ``input``, ``kind``, ``distance``, ``threshold``, ``familiar``
    (None where the reference is of the other kind) and the input's ``histogram``.

    Raises:
        ValueError: no reference in the checkpoint; an input that cannot be read (named).
        FileNotFoundError: no checkpoint or no input.
    """
    from medsad_monai.engine.inference import _collect_inputs, read_input

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
        image = read_input(item)
        unit = "volume" if image.is_volume else "image"
        array = normalize_intensity(image.array, method=method) if image.is_volume else grey(image.array)
        block = assess(array, reference, unit)
        rows.append(
            {
                "input": str(item),
                "kind": unit,
                "distance": None if block is None else block["distance"],
                "threshold": None if block is None else block["threshold"],
                "familiar": None if block is None else block["familiar"],
                "histogram": [round(float(x), 6) for x in intensity_histogram(array)],
            }
        )
    return reference, rows


def summary_line(reference: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    unit = reference.get("unit", "volume")
    checked = [r for r in rows if r["familiar"] is not None]
    unfamiliar = [r for r in checked if not r["familiar"]]
    line = (
        f"{len(unfamiliar)} of {len(checked)} input(s) are unlike the {len(reference['histograms'])} training "
        f"{unit}s (distance > {float(reference['threshold']):.3f})"
    )
    if len(checked) < len(rows):
        line += f"; {len(rows) - len(checked)} not checked (the model was trained on {unit}s, they are not)"
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
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    left.fill_between(
        centres, training.min(axis=0), training.max(axis=0), color="0.8", label=f"training {unit}s (range)"
    )
    left.plot(centres, np.median(training, axis=0), color="0.3", lw=1.5, label=f"training {unit}s (median)")
    for r in unfamiliar[:DRAWN]:
        left.plot(centres, r["histogram"], lw=1.2, label=f"{Path(r['input']).name} ({r['distance']:.2f})")
    more = len(unfamiliar) - DRAWN
    left.set_title(
        "Intensity histograms (normalised foreground)" + (f"; {more} more unfamiliar not drawn" if more > 0 else "")
    )
    left.set_xlabel("intensity as the model sees it")
    left.set_ylabel("share of foreground")
    left.legend(fontsize=7, loc="upper right")
    names = [Path(r["input"]).name for r in checked]
    distances = [r["distance"] for r in checked]
    colours = ["tab:red" if not r["familiar"] else "tab:green" for r in checked]
    y = np.arange(len(checked))
    right.barh(y, distances, color=colours)
    right.set_yticks(y, names, fontsize=7 if len(names) < 40 else 4)
    right.invert_yaxis()
    right.axvline(threshold, color="k", ls="--", lw=1, label=f"threshold {threshold:.3f}")
    loo = reference.get("training_distances") or []
    if loo:
        right.axvline(max(loo), color="0.5", ls=":", lw=1, label=f"largest training distance {max(loo):.3f}")
    right.set_xlabel("distance to the nearest training histogram")
    right.set_title(summary_line(reference, rows), fontsize=9)
    right.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=90, metadata={"Software": None})
    plt.close(fig)
